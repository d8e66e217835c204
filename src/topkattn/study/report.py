"""The study's report: ``study.json`` (config, verdicts, analyses, stage times), ``study.md``
(verdict table, one section per claim with its numbers) and one PNG plot per claim.

Plots (matplotlib, Agg): ``claim1.png`` accuracy vs k per task with Wilson intervals (full
attention dashed); ``claim2.png`` base / dense-SFT / Top-k-SFT accuracy under full attention
and each Top-k ratio; ``claim3.png`` accuracy vs precision and vs mass recall per setting;
``claim4.png`` per-layer attention entropy of the three models with 95% bands.
"""

from __future__ import annotations

import math
import platform
import subprocess
import time
from pathlib import Path

from topkattn.study.config import StudyConfig
from topkattn.study.stages import write_json_atomic
from topkattn.study.verdict import Verdict

JSON_FILE, MD_FILE = "study.json", "study.md"


def _f(x, fmt=".3f") -> str:
    return format(x, fmt) if isinstance(x, (int, float)) and math.isfinite(x) else "-"


def _ci(ci, fmt=".3f") -> str:
    if not ci or not all(isinstance(c, (int, float)) and math.isfinite(c) for c in ci):
        return "-"
    return f"[{format(ci[0], fmt)}, {format(ci[1], fmt)}]"


def _acc(a: dict) -> str:
    """``0.62 [0.41, 0.79] (n=20)``."""
    if not a or not a.get("n"):
        return "-"
    return f"{a['accuracy']:.2f} {_ci(a['ci95'], '.2f')} (n={a['n']})"


def _commit() -> str:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                              text=True, timeout=5, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _device(cfg: StudyConfig) -> str:
    try:
        import torch

        from topkattn.devices import check_device

        dev = check_device(cfg.device)
        if dev.type == "cuda":
            return torch.cuda.get_device_name(dev)
    except Exception:  # pragma: no cover - description only
        pass
    return f"CPU ({platform.processor() or platform.machine()})"


def provenance(cfg: StudyConfig) -> dict:
    """Where a stage runs: ``{"device": ..., "commit": ...}`` (stamped into its record)."""
    return {"device": _device(cfg), "commit": _commit()}


def _where(stages: dict[str, dict], key: str, fallback: str) -> str:
    """``"NVIDIA H100 80GB HBM3 (15 stages), CPU (x86_64) (2 stages)"``: the ``key`` field of
    the stage records, counted (``fallback`` for records made before stages were stamped)."""
    from collections import Counter

    counts = Counter(r.get(key) or fallback for r in stages.values())
    if len(counts) <= 1:
        return next(iter(counts), fallback)
    return ", ".join(f"{v} ({n} stages)" for v, n in counts.most_common())


# ---------------------------------------------------------------------------------------------
# Markdown


def _md_claim1(a: dict) -> list[str]:
    lines = ["| k | rho | n | cells | Top-k | full | Top-k - full | 95% CI | adj. CI | "
             "McNemar p |", "|---|---:|---:|---:|---|---|---:|---|---|---:|"]
    for k, p in a["pooled"].items():
        lines.append(f"| {k} | {_f(p['rho'], 'g') if p['rho'] else '-'} | {p['n']} | "
                     f"{p['cells']} | {_acc(p['topk'])} | {_acc(p['full'])} | "
                     f"{_f(p['diff'], '+.3f')} | {_ci(p['ci'])} | {_ci(p['ci_adj'])} | "
                     f"{_f(p['mcnemar']['p_exact'], '.3g')} |")
    lines += ["", "Per cell (Top-k - full, paired; * = informative cell):", "",
              "| task | length | k | n | Top-k | full | diff | 95% CI | McNemar p |",
              "|---|---:|---|---:|---|---|---:|---|---:|"]
    for c in a["cells"]:
        lines.append(f"| {c['task']}{' *' if c['informative'] else ''} | {c['length']} | "
                     f"{c['k']} | {c['n']} | {_acc(c['topk'])} | {_acc(c['full'])} | "
                     f"{_f(c['diff'], '+.3f')} | {_ci(c['ci'])} | "
                     f"{_f(c['mcnemar']['p_exact'], '.3g')} |")
    return lines


def _md_claim2(a: dict) -> list[str]:
    ks = a.get("ks", [])
    lines = ["Accuracy, 95% Wilson interval and n (for the fine-tunes n counts samples x seeds "
             f"{a.get('seeds')}); training length {a.get('train_length')}:", "",
             "| model | length | " + " | ".join("full" if k == "full" else f"k={k}" for k in ks)
             + " |", "|---|---|" + "---|" * len(ks)]
    by = {(r["group"], str(r["length"]), r["k"]): r for r in a.get("accuracy", [])}
    rows = list(dict.fromkeys((r["group"], str(r["length"])) for r in a.get("accuracy", [])))
    for g, L in rows:
        lines.append(f"| {g} | {L} | " + " | ".join(_acc(by.get((g, L, k), {})) for k in ks)
                     + " |")
    if a.get("base_cost"):
        lines += ["", "What Top-k decoding costs the base model (full - Top-k, paired):", "",
                  "| k | n | full - Top-k | 95% CI |", "|---|---:|---:|---|"]
        for k, c in a["base_cost"].items():
            lines.append(f"| {k} | {c['n']} | {_f(c['diff'], '+.3f')} | {_ci(c['ci'])} |")
    if a.get("primary"):
        lines += ["", "Top-k-SFT - dense-SFT under Top-k decoding (paired samples, seeds "
                  "averaged):", "", "| subset | n | Top-k SFT | dense SFT | diff | 95% CI |",
                  "|---|---:|---:|---:|---:|---|"]
        subsets = [("all", a["primary"]), ("inside training length", a.get("inside")),
                   ("beyond training length", a.get("beyond"))]
        subsets += [(f"k={k}", v) for k, v in a.get("by_k", {}).items()]
        subsets += [(f"length {L}", v) for L, v in a.get("by_length", {}).items()]
        for name, v in subsets:
            if v and v.get("n"):
                lines.append(f"| {name} | {v['n']} | {_f(v['topk_sft'])} | "
                             f"{_f(v['dense_sft'])} | {_f(v['diff'], '+.3f')} | "
                             f"{_ci(v['ci'])} |")
        lines += ["", "Per seed (McNemar on the paired Top-k decoding outcomes):", "",
                  "| seed | pairs | Top-k SFT only right | dense SFT only right | diff | p |",
                  "|---|---:|---:|---:|---:|---:|"]
        for s, m in a.get("per_seed", {}).items():
            lines.append(f"| {s} | {m['n']} | {m['a_only']} | {m['b_only']} | "
                         f"{_f(m['diff'], '+.3f')} | {_f(m['p_exact'], '.3g')} |")
    if a.get("training"):
        lines += ["", "| fine-tune | steps | first loss | final loss | seconds |",
                  "|---|---:|---:|---:|---:|"]
        for n, t in a["training"].items():
            lines.append(f"| {n} | {t.get('steps')} | {_f(t.get('first_loss'), '.4f')} | "
                         f"{_f(t.get('final_loss'), '.4f')} | {_f(t.get('seconds'), '.0f')} |")
    return lines


def _md_claim3(a: dict) -> list[str]:
    if not a.get("primary"):
        return ["No samples."]
    lines = ["| correlation | value | 95% CI (bootstrap over samples) |", "|---|---:|---|"]
    for name, c in a["correlation"].items():
        lines.append(f"| {name.replace('_', ' of accuracy vs ', 1)} | {_f(c['value'], '+.2f')} | "
                     f"{_ci(c['ci'], '+.2f')} |")
    for L in a["lengths"]:
        full = a.get("full", {}).get(str(L["length"]))
        lines += ["", f"{a.get('task')}, {L['length']} tokens, k = {a.get('rho')} of the "
                  f"context, {L['n']} samples; full attention {_acc(full)}", "",
                  "| setting | precision | mass recall | accuracy |", "|---|---:|---:|---|"]
        for st in L["settings"]:
            lines.append(f"| {st['spec']} | {st['precision']:.3f} | {st['mass_recall']:.3f} | "
                         f"{_acc(st)} |")
    return lines


def _md_claim4(a: dict) -> list[str]:
    lines = ["| model | prompts | mean entropy (nats) | 95% CI |" + "".join(
        f" H top-{k} | mass top-{k} |" for k in a.get("ks", [])),
        "|---|---:|---:|---|" + "---:|---:|" * len(a.get("ks", []))]
    for g, e in a.get("groups", {}).items():
        lines.append(f"| {g} | {e['prompts']} | {e['mean']:.4f} | {_ci(e['mean_ci'], '.4f')} |"
                     + "".join(f" {e['topk'][k]['mean']:.4f} | {e['topk'][k]['mass']:.3f} |"
                               for k in a.get("ks", [])))
    groups = a.get("groups", {})
    if groups:
        names = list(groups)
        k0 = (a.get("ks") or [None])[0]
        lines += ["", "Per layer: dense entropy (95% t interval over prompts)"
                  + (f" and top-{k0} entropy" if k0 else "") + ":", "",
                  "| layer | " + " | ".join(f"H {g}" for g in names)
                  + ("".join(f" | H top-{k0} {g}" for g in names) if k0 else "") + " |",
                  "|---:|" + "---|" * len(names) * (2 if k0 else 1)]
        for i in range(len(groups[names[0]]["per_layer"])):
            cells = []
            for g in names:
                e = groups[g]
                lo, hi = e["per_layer_ci"][0][i], e["per_layer_ci"][1][i]
                cells.append(f"{e['per_layer'][i]:.3f} {_ci([lo, hi])}")
            if k0:
                cells += [f"{groups[g]['topk'][k0]['per_layer'][i]:.3f}" for g in names]
            lines.append(f"| {i} | " + " | ".join(cells) + " |")
    if a.get("primary"):
        lines += ["", "| difference (paired over prompts x steps) | n | diff (nats) | 95% CI | "
                  "Wilcoxon p (prompt means) |", "|---|---:|---:|---|---:|"]
        rows = [("dense SFT - Top-k SFT, dense entropy", a["primary"])]
        rows += [(f"dense SFT - Top-k SFT, top-{k} entropy", v)
                 for k, v in a.get("topk_entropy", {}).items()]
        rows += [("base - Top-k SFT", a.get("base_minus_topk_sft")),
                 ("base - dense SFT", a.get("base_minus_dense_sft"))]
        for name, v in rows:
            if v:
                lines.append(f"| {name} | {v['n']} | {_f(v['diff'], '+.4f')} | "
                             f"{_ci(v['ci'], '+.4f')} | {_f(v['p_wilcoxon'], '.3g')} |")
    return lines


_MD = {1: _md_claim1, 2: _md_claim2, 3: _md_claim3, 4: _md_claim4}
_TITLE = {1: "Claim 1: exact Top-k decoding vs full attention",
          2: "Claim 2: Top-k SFT vs dense SFT under Top-k decoding",
          3: "Claim 3: approximate top-k fidelity and accuracy",
          4: "Claim 4: attention entropy after Top-k SFT"}


def markdown(cfg: StudyConfig, verdicts: list[Verdict], analyses: dict, plots: dict,
             meta: dict) -> str:
    lines = ["# Study: the four claims of arXiv 2512.03494", "",
             f"Model `{cfg.model}`, budget `{cfg.budget.name}`; stages run on {meta['device']}, "
             f"commit {meta['commit'] or '-'}; {meta['seconds']:.0f} s of stage time; report "
             f"written {meta['date']}.", "", f"Command: `{meta['command']}`", ""]
    if meta.get("pending"):
        lines += [f"Pending stages (not finished, left out of every analysis): "
                  f"{', '.join(meta['pending'])}. Rerun the command to resume them.", ""]
    lines += ["| claim | outcome | what decided it |", "|---|---|---|"]
    for v in verdicts:
        lines.append(f"| {v.claim}. {v.text} | **{v.outcome}** | {v.reason} |")
    for v in verdicts:
        a = analyses.get(v.claim)
        if a is None or a.get("missing"):
            continue
        lines += ["", f"## {_TITLE[v.claim]}", "", f"**{v.outcome}**: {v.reason}", ""]
        lines += _MD[v.claim](a)
        if v.claim in plots:
            lines += ["", f"![claim {v.claim}]({Path(plots[v.claim]).name})"]
    lines += ["", "Decision rules: docs/study.md (margin, minimum effects, interval levels are "
              "in study.json under config.budget.rules)."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Plots


def _plt():
    from topkattn.analysis.plots import pyplot

    return pyplot()


def plot_claim1(a: dict, path: Path) -> Path:
    from topkattn.analysis.plots import interval_yerr, save_figure

    plt = _plt()
    tasks = list(dict.fromkeys(c["task"] for c in a["cells"]))
    ks = list(dict.fromkeys(c["k"] for c in a["cells"]))
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(4.5 * max(1, len(tasks)), 3.8),
                             squeeze=False, sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, task in enumerate(tasks):
        ax = axes[0][i]
        lengths = sorted({c["length"] for c in a["cells"] if c["task"] == task})
        for j, L in enumerate(lengths):
            cs = {c["k"]: c for c in a["cells"] if c["task"] == task and c["length"] == L}
            xs = [x + (j - (len(lengths) - 1) / 2) * 0.08 for x in range(len(ks))]
            ys = [cs[k]["topk"]["accuracy"] if k in cs else float("nan") for k in ks]
            err = interval_yerr(ys, [cs[k]["topk"]["ci95"] if k in cs else None for k in ks])
            col = colors[j % len(colors)]
            ax.errorbar(xs, ys, yerr=err, marker="o", color=col, capsize=3,
                        label=f"{L} tok")
            full = next(iter(cs.values()))["full"]["accuracy"] if cs else None
            if full is not None:
                ax.axhline(full, color=col, ls="--", lw=1)
        ax.set_xticks(range(len(ks)), [f"k={k}" for k in ks])
        ax.set_title(task)
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        ax.set_xlabel("Top-k decoding (dashed: full attention)")
        if i == 0:
            ax.set_ylabel("accuracy (95% Wilson)")
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_claim2(a: dict, path: Path) -> Path:
    from topkattn.analysis.plots import interval_yerr, save_figure

    plt = _plt()
    rows = [r for r in a.get("accuracy", []) if r["length"] != "all"]
    lengths = sorted({r["length"] for r in rows})
    ks = a.get("ks", [])
    groups = ["base", "dense_sft", "topk_sft"]
    fig, axes = plt.subplots(1, max(1, len(lengths)), figsize=(5 * max(1, len(lengths)), 3.8),
                             squeeze=False, sharey=True)
    w = 0.8 / len(groups)
    for i, L in enumerate(lengths):
        ax = axes[0][i]
        for j, g in enumerate(groups):
            by = {r["k"]: r for r in rows if r["group"] == g and r["length"] == L}
            xs = [x + (j - 1) * w for x in range(len(ks))]
            ys = [by[k]["accuracy"] if k in by else 0 for k in ks]
            err = interval_yerr(ys, [by[k]["ci95"] if k in by else None for k in ks])
            ax.bar(xs, ys, width=w, yerr=err, capsize=2, label=g.replace("_", " "))
        ax.set_xticks(range(len(ks)), [f"k={k}" for k in ks])
        inside = "inside" if L <= a.get("train_length", 0) else "beyond"
        ax.set_title(f"{L} tokens ({inside} training length)")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3, axis="y")
        if i == 0:
            ax.set_ylabel("accuracy (95% Wilson)")
    # one legend above the panels: inside one it covers the bars
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", ncol=len(groups),
               bbox_to_anchor=(0.5, 0.98), fontsize=8, frameon=False)
    return save_figure(fig, path)


def plot_claim3(a: dict, path: Path) -> Path:
    from topkattn.analysis.plots import save_figure

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    markers = "osD^v"
    for ax, m in zip(axes, ("precision", "mass_recall")):
        labels: list[tuple[str, tuple[float, float]]] = []
        for li, L in enumerate(a.get("lengths", [])):
            for st in L["settings"]:
                spec = st["spec"]
                col = ("tab:red" if "protect" in spec else "tab:blue") \
                    if spec.startswith("precision") else "tab:green"
                ax.scatter([st[m]], [st["accuracy"]], color=col, marker=markers[li % 5], s=28)
                if li == 0:
                    labels.append((spec.replace("precision:", "p=").replace(",protect=", "+prot"),
                                   (st[m], st["accuracy"])))
        c = a.get("correlation", {})
        sp, pe = c.get(f"spearman_{m}", {}), c.get(f"pearson_{m}", {})
        ax.set_title(f"accuracy vs {m.replace('_', ' ')}: Spearman {_f(sp.get('value'), '+.2f')}"
                     f" {_ci(sp.get('ci'), '+.2f')}, Pearson {_f(pe.get('value'), '+.2f')}",
                     fontsize=9)
        ax.set_xlabel(m.replace("_", " "))
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        _annotate_apart(ax, labels, fontsize=6)
    fig.suptitle("blue: precision:p, red: with protect, green: selectors; marker = length "
                 + ", ".join(f"{markers[i % 5]}={L['length']}"
                             for i, L in enumerate(a.get("lengths", []))), fontsize=9)
    return save_figure(fig, path)


def _annotate_apart(ax, labels: list[tuple[str, tuple[float, float]]], fontsize: float) -> None:
    """Write each (text, (x, y)) label just above and right of its point, raised line by line
    until its box (estimated from the text's length, in points) clears every label already
    written: close points' labels stack instead of printing over each other."""
    ax.figure.canvas.draw()  # settle the layout and limits, so data -> points is final
    to_pt = 72.0 / ax.figure.dpi
    line, char = fontsize * 1.25, fontsize * 0.6
    boxes: list[tuple[float, float, float, float]] = []  # x0, y0, x1, y1 in points
    for text, xy in sorted(labels, key=lambda t: (t[1][1], t[1][0])):
        px, py = (v * to_pt for v in ax.transData.transform(xy))
        w, dy = char * len(text), 3.0
        while any(px + 3 < x1 and x0 < px + 3 + w and py + dy < y1 and y0 < py + dy + line
                  for x0, y0, x1, y1 in boxes):
            dy += line
        boxes.append((px + 3, py + dy, px + 3 + w, py + dy + line))
        ax.annotate(text, xy, fontsize=fontsize, xytext=(3, dy), textcoords="offset points")


def plot_claim4(a: dict, path: Path) -> Path:
    from topkattn.analysis.plots import save_figure

    plt = _plt()
    fig, ax = plt.subplots(1, 1, figsize=(8, 4))
    for g, e in a.get("groups", {}).items():
        ys = e["per_layer"]
        xs = list(range(len(ys)))
        ax.plot(xs, ys, marker=".", label=f"{g.replace('_', ' ')} (mean {e['mean']:.3f})")
        lo, hi = e["per_layer_ci"]
        if all(isinstance(v, float) and math.isfinite(v) for v in lo + hi):
            ax.fill_between(xs, lo, hi, alpha=0.2)
    ax.set_xlabel("layer")
    ax.set_ylabel("dense attention entropy (nats)")
    ax.set_title("attention entropy at decode steps (95% bands over prompts)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


_PLOTS = {1: plot_claim1, 2: plot_claim2, 3: plot_claim3, 4: plot_claim4}


def write_report(cfg: StudyConfig, verdicts: list[Verdict], analyses: dict,
                 stages: dict[str, dict], command: str = "",
                 pending: list[str] = ()) -> dict[str, Path]:
    """Write study.json, study.md and the plots under ``cfg.out``; returns their paths."""
    out = Path(cfg.out)
    plots: dict[int, Path] = {}
    for v in verdicts:
        a = analyses.get(v.claim)
        if a is not None and not a.get("missing"):
            try:
                plots[v.claim] = _PLOTS[v.claim](a, out / f"claim{v.claim}.png")
            except (KeyError, ValueError, IndexError, TypeError) as e:  # a plot never stops
                print(f"warning: claim {v.claim} plot skipped ({type(e).__name__}: {e})")
    here = provenance(cfg)
    meta = {"device": _where(stages, "device", here["device"]),
            "commit": _where(stages, "commit", here["commit"]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": command or "topkattn study",
            "seconds": sum(r.get("seconds", 0) for r in stages.values()),
            "pending": list(pending)}
    files = {"json": write_json_atomic(out / JSON_FILE, {
        "config": cfg.to_json(), "meta": meta,
        "verdicts": [v.to_json() for v in verdicts],
        "analyses": {str(c): a for c, a in analyses.items() if a is not None},
        "stages": {n: {"seconds": r.get("seconds"), "finished": r.get("finished"),
                       "device": r.get("device"), "commit": r.get("commit")}
                   for n, r in stages.items()}})}
    md = out / MD_FILE
    md.write_text(markdown(cfg, verdicts, analyses, plots, meta))
    files["md"] = md
    files.update({f"claim{c}": p for c, p in plots.items()})
    return files


__all__ = ["JSON_FILE", "MD_FILE", "markdown", "plot_claim1", "plot_claim2", "plot_claim3",
           "plot_claim4", "write_report"]
