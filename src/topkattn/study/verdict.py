"""Decision rules: each claim's analysis (`topkattn.study.claims`) -> a `Verdict`.

Outcomes are ``confirmed``, ``not confirmed`` or ``inconclusive`` (``not run`` for a claim
left out). Every rule reads an interval, never a point estimate alone:

- Claim 1 (non-inferiority): at a ratio rho, Top-k decoding is *close* to full attention when
  the lower end of the Bonferroni-adjusted interval of the pooled paired difference
  (Top-k - full) lies above ``-margin``, and *worse* when its upper end lies below
  ``-margin``. Confirmed when some rho <= ``max_rho`` is close; not confirmed when every such
  rho is worse; inconclusive otherwise (or when no cell is informative).
- Claim 2 (superiority): the paired difference Top-k-SFT - dense-SFT under Top-k decoding.
  Confirmed when its interval lies above 0; not confirmed when it lies below ``min_gain``
  (a gain that large is ruled out), unless dense SFT is saturated (then inconclusive);
  inconclusive otherwise.
- Claim 3 (positive correlation): Spearman's rho of accuracy against precision over the
  selector settings (the mean over lengths). Confirmed when its interval lies above 0; not
  confirmed when it lies below ``min_corr``; inconclusive otherwise.
- Claim 4 (entropy drop): dense-SFT - Top-k-SFT mean attention entropy (nats). Confirmed
  when its interval lies above 0; not confirmed when it lies below ``min_drop``;
  inconclusive otherwise.

Whatever the interval, fewer than ``min_n`` independent units (paired samples; prompts for
claim 4) are inconclusive, and so is claim 2 when both fine-tunes sit at the floor (below
``1 - saturated``) under Top-k decoding and the gain is not shown.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from topkattn.study.config import Rules

CONFIRMED, NOT_CONFIRMED, INCONCLUSIVE, NOT_RUN = (
    "confirmed", "not confirmed", "inconclusive", "not run")
OUTCOMES = (CONFIRMED, NOT_CONFIRMED, INCONCLUSIVE, NOT_RUN)

CLAIM_TEXT = {
    1: "exact Top-k decoding keeps accuracy close to full attention",
    2: "Top-k SFT helps Top-k decoding more than dense SFT",
    3: "accuracy rises with the fidelity of an approximate top-k",
    4: "Top-k SFT lowers attention entropy",
}


@dataclass
class Verdict:
    """One claim's outcome, the sentence that says why, and the statistics that decided it."""

    claim: int
    outcome: str
    reason: str
    statistic: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return CLAIM_TEXT[self.claim]

    def to_json(self) -> dict:
        return asdict(self) | {"text": self.text}


def _ok(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def superiority(ci: list[float] | tuple[float, float], min_effect: float) -> str:
    """confirmed if the interval lies above 0, not confirmed if below ``min_effect``."""
    lo, hi = ci
    if not (_ok(lo) and _ok(hi)):
        return INCONCLUSIVE
    if lo > 0:
        return CONFIRMED
    if hi < min_effect:
        return NOT_CONFIRMED
    return INCONCLUSIVE


def noninferiority(ci: list[float] | tuple[float, float], margin: float) -> str:
    """"close" if the interval of (new - reference) lies above ``-margin``, "worse" if it
    lies below it, else "undecided"."""
    lo, hi = ci
    if not (_ok(lo) and _ok(hi)):
        return "undecided"
    if lo > -margin:
        return "close"
    if hi < -margin:
        return "worse"
    return "undecided"


def _f(x, fmt: str = ".3f") -> str:
    return format(x, fmt) if _ok(x) else "n/a"


def _ci(ci) -> str:
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if all(_ok(c) for c in ci) else "[undefined]"


def claim1(analysis: dict, rules: Rules) -> Verdict:
    """Claim 1 from ``analysis["pooled"]`` ({label: {"rho", "diff", "ci_adj", "n", ...}})."""
    pooled = analysis.get("pooled", {})
    tested = {lab: p for lab, p in pooled.items()
              if p.get("rho") is not None and p["rho"] <= rules.max_rho + 1e-12 and p["n"] > 0}
    if not tested:
        return Verdict(1, INCONCLUSIVE, "no informative cell: full attention scored below "
                       f"{rules.informative_full:.2f} everywhere, or no ratio <= "
                       f"{rules.max_rho:g} was run", {"pooled": pooled})
    status = {lab: noninferiority(p["ci_adj"], rules.margin) if p["n"] >= rules.min_n
              else "too few" for lab, p in tested.items()}
    close = sorted((tested[lab]["rho"], lab) for lab, s in status.items() if s == "close")
    stat = {"margin": rules.margin, "status": status,
            "level_adj": next(iter(tested.values())).get("level_adj")}
    desc = "; ".join(f"rho={lab}: {p['diff']:+.3f} {_ci(p['ci_adj'])} ({status[lab]}, n={p['n']})"
                     for lab, p in tested.items())
    if close:
        rho, lab = close[0]
        stat["smallest_close_rho"] = rho
        return Verdict(1, CONFIRMED, f"Top-k - full accuracy stays above -{rules.margin:g} "
                       f"from rho={lab} on ({desc})", stat)
    if all(s == "worse" for s in status.values()):
        return Verdict(1, NOT_CONFIRMED, f"Top-k decoding is more than {rules.margin:g} below "
                       f"full attention at every rho <= {rules.max_rho:g} ({desc})", stat)
    few = " (fewer than min_n=%d paired samples)" % rules.min_n if any(
        s == "too few" for s in status.values()) else ""
    return Verdict(1, INCONCLUSIVE, f"no rho is shown within {rules.margin:g} of full "
                   f"attention, nor all shown worse{few} ({desc})", stat)


def claim2(analysis: dict, rules: Rules) -> Verdict:
    """Claim 2 from ``analysis["primary"]`` ({"diff", "ci", "n", "dense_sft", "topk_sft"})."""
    p = analysis.get("primary")
    if not p or not p.get("n"):
        return Verdict(2, INCONCLUSIVE, "no paired evaluation of the two fine-tunes", {})
    out = superiority(p["ci"], rules.min_gain)
    dense = p.get("dense_sft")
    saturated = _ok(dense) and dense >= rules.saturated
    stat = {"diff": p["diff"], "ci": p["ci"], "n": p["n"], "min_gain": rules.min_gain,
            "saturated": saturated, "seeds": analysis.get("seeds")}
    desc = (f"Top-k-SFT - dense-SFT under Top-k decoding {p['diff']:+.3f} {_ci(p['ci'])}, "
            f"n={p['n']} paired samples over {len(analysis.get('seeds') or [])} seed(s); "
            f"dense SFT {_f(dense)}, Top-k SFT {_f(p.get('topk_sft'))}")
    floor = max(_ok(dense) and dense or 0.0, _ok(p.get("topk_sft")) and p["topk_sft"] or 0.0) \
        < 1 - rules.saturated
    stat["floor"] = floor
    if p.get("samples", p["n"]) < rules.min_n:
        return Verdict(2, INCONCLUSIVE, f"{desc}; fewer than min_n={rules.min_n} samples", stat)
    if out != CONFIRMED and floor:
        return Verdict(2, INCONCLUSIVE, f"{desc}; both fine-tunes score below "
                       f"{1 - rules.saturated:.2g} under Top-k decoding (floor), so no gain "
                       "could show", stat)
    if out == NOT_CONFIRMED and saturated:
        return Verdict(2, INCONCLUSIVE, f"{desc}; dense SFT is saturated (>= "
                       f"{rules.saturated:g}), so no gain could show", stat)
    why = {CONFIRMED: "the interval lies above 0",
           NOT_CONFIRMED: f"a gain of {rules.min_gain:g} or more is ruled out",
           INCONCLUSIVE: f"the interval holds 0 and gains up to {rules.min_gain:g} or more"}[out]
    costs = [c["diff"] for c in (analysis.get("base_cost") or {}).values() if _ok(c.get("diff"))]
    note = ""
    if costs and max(costs) < rules.min_gain:
        note = (f" (note: Top-k decoding costs the base model at most {max(costs):+.3f} here, "
                "so there was little for either fine-tune to recover)")
    stat["base_cost_max"] = max(costs) if costs else None
    return Verdict(2, out, f"{desc}: {why}{note}", stat)


def claim3(analysis: dict, rules: Rules) -> Verdict:
    """Claim 3 from ``analysis["primary"]`` ({"spearman", "ci", "n_settings"})."""
    p = analysis.get("primary")
    if not p or not _ok(p.get("spearman")):
        return Verdict(3, INCONCLUSIVE, "the correlation is undefined (accuracy or precision "
                       "constant over the settings)", dict(p or {}))
    out = superiority(p["ci"], rules.min_corr)
    stat = dict(p) | {"min_corr": rules.min_corr}
    desc = (f"Spearman rho of accuracy vs precision {p['spearman']:+.2f} {_ci(p['ci'])} over "
            f"{p.get('n_settings')} settings x {p.get('n_lengths')} lengths")
    if p.get("samples", 0) < rules.min_n:
        return Verdict(3, INCONCLUSIVE, f"{desc}; fewer than min_n={rules.min_n} samples", stat)
    why = {CONFIRMED: "the interval lies above 0",
           NOT_CONFIRMED: f"a correlation of {rules.min_corr:g} or more is ruled out",
           INCONCLUSIVE: "the interval holds 0"}[out]
    return Verdict(3, out, f"{desc}: {why}", stat)


def claim4(analysis: dict, rules: Rules) -> Verdict:
    """Claim 4 from ``analysis["primary"]`` ({"diff": dense-SFT - Top-k-SFT, "ci", "n"})."""
    p = analysis.get("primary")
    if not p or not p.get("n"):
        return Verdict(4, INCONCLUSIVE, "no entropy measurement of both fine-tunes", {})
    out = superiority(p["ci"], rules.min_drop)
    stat = {k: p[k] for k in ("diff", "ci", "n", "prompts", "p_wilcoxon") if k in p}
    stat["min_drop"] = rules.min_drop
    desc = (f"mean attention entropy dense-SFT - Top-k-SFT {p['diff']:+.4f} nats "
            f"{_ci(p['ci'])} over {p.get('prompts')} prompts x steps (n={p['n']})")
    if (p.get("prompts") or 0) < rules.min_n:
        return Verdict(4, INCONCLUSIVE, f"{desc}; fewer than min_n={rules.min_n} prompts", stat)
    why = {CONFIRMED: "Top-k SFT's entropy is lower (interval above 0)",
           NOT_CONFIRMED: f"a drop of {rules.min_drop:g} nats or more is ruled out",
           INCONCLUSIVE: "the interval holds 0"}[out]
    return Verdict(4, out, f"{desc}: {why}", stat)


RULES = {1: claim1, 2: claim2, 3: claim3, 4: claim4}


def decide(claim: int, analysis: dict | None, rules: Rules) -> Verdict:
    """The verdict of ``claim`` (``not run`` without an analysis)."""
    if analysis is None:
        return Verdict(claim, NOT_RUN, "left out of this run (--claims)", {})
    if analysis.get("missing"):
        return Verdict(claim, INCONCLUSIVE, "its stages have not finished (rerun the study "
                       "command to resume)", {})
    return RULES[claim](analysis, rules)


__all__ = ["CLAIM_TEXT", "CONFIRMED", "INCONCLUSIVE", "NOT_CONFIRMED", "NOT_RUN", "OUTCOMES",
           "Verdict", "decide", "noninferiority", "superiority"]
