"""Attention entropy at decode steps: how concentrated is each layer's and head's attention?

For a model and a task, every sample's prompt is prefilled (dense) and a few tokens are decoded
greedily. At each decode step, for every layer and query head, the dense attention distribution
p over the visible keys is computed from the captured query and keys (scores q.K^T * scale,
masked, softmax in fp32) and summarised:

- ``entropy``: Shannon entropy H(p) = -sum p log p in nats (0 for one-hot, log n for uniform
  over n keys);
- for each k: ``mass`` = sum of the k largest p (the share of attention Top-k keeps) and
  ``topk_entropy`` = H of the renormalised top-k distribution p_S / mass.

Low entropy and high top-k mass are what make Top-k attention (arXiv 2512.03494) lossless;
comparing a model before and after Top-k SFT shows whether training made attention sparser.

Capture: `capture_entropy` registers its own `AttentionInterface` function (``"topkattn_
entropy"``) that computes these statistics from query/key and then calls transformers' SDPA,
so no ``output_attentions`` tensor of the whole model is ever materialised (memory stays
O(heads x context) per layer, fine at long context).
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from topkattn.errors import InputError

CAPTURE_NAME = "topkattn_entropy"
_ATTR = "_topkattn_entropy"


# --------------------------------------------------------------------------------------------
# The statistics (pure functions; tests check uniform -> log n, one-hot -> 0)


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats over the last dim of a probability tensor (0 log 0 = 0)."""
    return torch.special.entr(p.double() if p.dtype == torch.float64 else p.float()).sum(-1)


def topk_stats(p: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(entropy of the renormalised top-k distribution, attention mass of the top k keys).

    p: [..., n] probabilities (rows sum to 1; masked keys hold 0). k >= n keeps all keys.
    """
    k = max(1, min(int(k), p.shape[-1]))
    vals = p.topk(k, dim=-1).values
    mass = vals.sum(-1)
    q = vals / mass.clamp_min(torch.finfo(vals.dtype).tiny).unsqueeze(-1)
    return entropy(q), mass


def parse_ks(ks: str | list | tuple) -> list[str]:
    """``"16,64,5%"`` -> ["16", "64", "5%"] (validated with `topkattn.config.parse_k`; 'full'
    is refused: the top-k mass of all keys is 1)."""
    from topkattn.config import parse_k_list

    labels = []
    for label, setting in parse_k_list(ks):
        if setting.dense:
            raise InputError(f"entropy --k takes integers or ratios, not {label!r}")
        labels.append(label)
    return labels


def k_value(k: str, context: int) -> int:
    """Keys kept for a k string ("64" or "0.05"/"5%") at ``context`` keys."""
    from topkattn.config import parse_k, resolve_k

    return resolve_k(*parse_k(k), context)


# --------------------------------------------------------------------------------------------
# Accumulation


@dataclass
class EntropyAccumulator:
    """Running sums per layer and query head over decode steps (and batch rows)."""

    ks: list[str]
    sums: dict = field(default_factory=dict)  # layer -> {"entropy": [H], "count": int, ...}
    contexts: list[int] = field(default_factory=list)
    _values: dict = field(default_factory=dict, repr=False)  # k label -> (k, k_ratio)

    def keys_kept(self, k: str, context: int) -> int:
        """`k_value` with each label parsed once."""
        from topkattn.config import parse_k, resolve_k

        if k not in self._values:
            self._values[k] = parse_k(k)
        return resolve_k(*self._values[k], context)

    def add(self, layer: int, query: torch.Tensor, key: torch.Tensor,
            mask: torch.Tensor | None, scale: float) -> None:
        """One decode call: query [B, Hq, 1, D], key [B, Hkv, Lk, D], mask bool/additive/None."""
        B, Hq, Lq, D = query.shape
        G = Hq // key.shape[1]
        kk = key.float().repeat_interleave(G, dim=1) if G > 1 else key.float()
        s = torch.matmul(query.float(), kk.transpose(-1, -2)) * scale  # [B, Hq, 1, Lk]
        s = s[:, :, -1]  # [B, Hq, Lk]
        if mask is not None:
            m = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
            m = m[..., -1, : s.shape[-1]]  # [B or 1, 1 or H, Lk]
            s = s.masked_fill(~m.expand_as(s), float("-inf"))
            n_vis = int(m[0].reshape(-1, m.shape[-1])[0].sum())
        else:
            n_vis = s.shape[-1]
        p = torch.softmax(s, dim=-1)
        slot = self.sums.setdefault(layer, {"entropy": torch.zeros(Hq, dtype=torch.float64),
                                            "count": 0, "topk": {}})
        slot["entropy"] += entropy(p).double().sum(0).cpu()
        slot["count"] += B
        for k in self.ks:
            ent, mass = topk_stats(p, self.keys_kept(k, n_vis))
            t = slot["topk"].setdefault(k, {"entropy": torch.zeros(Hq, dtype=torch.float64),
                                            "mass": torch.zeros(Hq, dtype=torch.float64)})
            t["entropy"] += ent.double().sum(0).cpu()
            t["mass"] += mass.double().sum(0).cpu()
        if layer == min(self.sums):
            self.contexts.append(n_vis)

    def merge(self, other: "EntropyAccumulator") -> None:
        """Add the sums of ``other`` (another prompt's, same ks) to these."""
        for layer, o in sorted(other.sums.items()):
            slot = self.sums.setdefault(layer, {"entropy": torch.zeros_like(o["entropy"]),
                                                "count": 0, "topk": {}})
            slot["entropy"] += o["entropy"]
            slot["count"] += o["count"]
            for k, t in o["topk"].items():
                mine = slot["topk"].setdefault(k, {m: torch.zeros_like(v) for m, v in t.items()})
                for m, v in t.items():
                    mine[m] += v
        self.contexts.extend(other.contexts)

    def to_json(self) -> dict:
        """The sums as JSON (exact: float64 values written in full)."""
        return {"contexts": list(self.contexts),
                "sums": {str(layer): {"entropy": v["entropy"].tolist(), "count": v["count"],
                                      "topk": {k: {m: x.tolist() for m, x in t.items()}
                                               for k, t in v["topk"].items()}}
                         for layer, v in self.sums.items()}}

    @classmethod
    def from_json(cls, ks: list[str], d: dict) -> "EntropyAccumulator":
        def t(x):
            return torch.tensor(x, dtype=torch.float64)

        acc = cls(ks=list(ks))
        acc.contexts = [int(c) for c in d["contexts"]]
        for layer, v in d["sums"].items():
            acc.sums[int(layer)] = {
                "entropy": t(v["entropy"]), "count": int(v["count"]),
                "topk": {k: {m: t(x) for m, x in tk.items()} for k, tk in v["topk"].items()}}
        return acc

    def result(self) -> dict:
        """Means: entropy [L][H], topk[k] {entropy, mass} [L][H], per-layer means, contexts."""
        layers = sorted(self.sums)
        if not layers:
            raise InputError("no decode step was captured (decode_steps must be >= 1)")

        def mean(layer, t):
            return (t / self.sums[layer]["count"]).tolist()

        ent = [mean(L, self.sums[L]["entropy"]) for L in layers]
        topk = {k: {"entropy": [mean(L, self.sums[L]["topk"][k]["entropy"]) for L in layers],
                    "mass": [mean(L, self.sums[L]["topk"][k]["mass"]) for L in layers]}
                for k in self.ks}
        ctx = sum(self.contexts) / max(1, len(self.contexts))
        return {
            "layers": layers,
            "n_heads": len(ent[0]),
            "entropy": ent,
            "topk": topk,
            "per_layer": {
                "entropy": [sum(r) / len(r) for r in ent],
                "topk": {k: {m: [sum(r) / len(r) for r in v[m]] for m in ("entropy", "mass")}
                         for k, v in topk.items()},
            },
            "mean_context": ctx,
            "log_context": math.log(ctx) if ctx > 0 else 0.0,
            "decode_calls": len(self.contexts),
            "k_values": {k: self.keys_kept(k, max(1, round(ctx))) for k in self.ks},
        }


# --------------------------------------------------------------------------------------------
# Capture through transformers' AttentionInterface


def capture_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                              scaling: float | None = None, **kwargs):
    """Attention function ``"topkattn_entropy"``: record decode-step statistics, then SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    acc: EntropyAccumulator | None = getattr(module, _ATTR, None)
    if acc is not None and query.shape[2] == 1:
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        with torch.no_grad():
            acc.add(int(getattr(module, "layer_idx", 0) or 0), query, key, attention_mask, scale)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                  scaling=scaling, **kwargs)


@contextlib.contextmanager
def capture_entropy(model, ks: list[str]) -> Iterator[EntropyAccumulator]:
    """Inside the block, every decode step of ``model`` adds to the yielded accumulator."""
    from topkattn.integrations.hf import attention_override, check_supported

    check_supported(model)
    acc = EntropyAccumulator(ks=list(ks))
    with attention_override(model, CAPTURE_NAME, capture_attention_forward,
                            lambda layer_idx, module: acc, _ATTR):
        yield acc


# --------------------------------------------------------------------------------------------
# Running on a task


@dataclass
class EntropyConfig:
    """What to measure. Validated in ``__post_init__``.

    Attributes:
        model: "default", a Hub id or a local folder.
        task: a registered task name (see `topkattn.tasks.TASK_NAMES`).
        length: prompt length in tokens.
        samples: prompts.
        decode_steps: greedy decode steps measured per prompt (after the prefill).
        ks: k values for top-k mass / entropy ("64" or ratios "0.05" / "5%").
        seed: task seed (evaluation range).
        device: "cpu", "cuda" (default: CUDA when available).
        label: name in tables and plots (default: the model argument).
    """

    model: str | None = None
    task: str = "niah_multikey"
    length: int = 1024
    samples: int = 4
    decode_steps: int = 8
    ks: tuple[str, ...] = ("16", "64")
    seed: int = 0
    device: str | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        for name in ("length", "samples", "decode_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{name} must be an integer >= 1, got {name}={v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InputError(f"seed must be an integer >= 0, got seed={self.seed!r}")
        from topkattn.tasks import get_task

        get_task(self.task)  # names an unknown task and the allowed ones, before any load
        self.ks = tuple(parse_ks(self.ks))
        if not self.ks:
            raise InputError("ks must name at least one k (e.g. 16,64 or 5%)")
        if self.label is None:
            self.label = self.model or "default"


#: files of an output folder that keep finished work (one JSON line per sample) and settings
SAMPLES_FILE = "entropy_samples.jsonl"
SETTINGS_FILE = "entropy_settings.json"


def _settings(cfgs: list[EntropyConfig]) -> dict:
    """What must match for records to be resumed (not the device)."""
    return {"runs": [{k: v for k, v in asdict(c).items() if k != "device"} for c in cfgs]}


def _measure_sample(model, tokenizer, task, sample, cfg: EntropyConfig, device
                    ) -> tuple[EntropyAccumulator, float]:
    """One prompt: dense prefill, ``cfg.decode_steps`` measured greedy steps; its sums and
    score."""
    with capture_entropy(model, list(cfg.ks)) as acc, torch.no_grad():
        ids = tokenizer(sample.prompt, return_tensors="pt", add_special_tokens=False)
        ids = {k: v.to(device) for k, v in ids.items()}
        out = model(**ids, use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        gen = [nxt]
        mask = ids["attention_mask"]
        for _ in range(cfg.decode_steps):
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            out = model(input_ids=nxt, attention_mask=mask, past_key_values=past,
                        use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            gen.append(nxt)
    text = tokenizer.decode(torch.cat(gen, 1)[0], skip_special_tokens=True)
    return acc, float(task.score(text, sample))


def measure(model, tokenizer, cfg: EntropyConfig, progress: bool = True,
            records: str | Path | None = None, run: int = 0) -> dict:
    """Entropy statistics of ``model`` over ``cfg.samples`` prompts of ``cfg.task``.

    Returns the `EntropyAccumulator.result` dict plus config, greedy answers' accuracy and the
    label. Each prompt: one dense prefill (not measured), then ``decode_steps`` measured steps.
    With ``records`` (a JSONL file), each finished prompt's sums are appended to it under
    ``run`` (the model's place in a comparison) and the prompts already there are skipped;
    Ctrl-C then raises `topkattn.analysis.resume.RunInterrupted`.
    """
    from rich.progress import Progress

    from topkattn.analysis.resume import RunInterrupted, append_record
    from topkattn.tasks import get_task

    task = get_task(cfg.task)
    max_len = getattr(model.config, "max_position_embeddings", None)
    samples = task.samples(tokenizer, cfg.length, cfg.samples, seed=cfg.seed,
                           **({"max_length": max_len} if max_len else {}))
    device = next(model.parameters()).device
    done = _finished(records, run, len(samples)) if records is not None else {}
    was_training = model.training
    model.eval()
    try:
        with Progress(disable=not progress, transient=True) as bar:
            t = bar.add_task(f"entropy {cfg.label}", total=len(samples), completed=len(done))
            for i, s in enumerate(samples):
                if i in done:
                    continue
                acc, score = _measure_sample(model, tokenizer, task, s, cfg, device)
                row = {"run": run, "sample": i, "of": len(samples), "score": score,
                       "sums": acc.to_json()}
                if records is not None:
                    append_record(records, row)
                done[i] = row
                bar.advance(t)
    except KeyboardInterrupt:
        if records is None:
            raise
        raise RunInterrupted(f"entropy of {cfg.label}", len(done), len(samples),
                             records) from None
    finally:
        if was_training:
            model.train()
    return _result(cfg, done)


def _finished(records: str | Path, run: int, n: int | None = None) -> dict[int, dict]:
    """sample -> record of ``run`` in ``records`` (the first of each sample)."""
    from topkattn.analysis.resume import read_records

    done: dict[int, dict] = {}
    for r in read_records(records):
        i = r.get("sample")
        if r.get("run") == run and isinstance(i, int) and (n is None or i < n) \
                and i not in done:
            done[i] = r
    return done


def _result(cfg: EntropyConfig, done: dict[int, dict]) -> dict:
    acc = EntropyAccumulator(ks=list(cfg.ks))
    for i in sorted(done):
        acc.merge(EntropyAccumulator.from_json(list(cfg.ks), done[i]["sums"]))
    res = acc.result()
    scores = [done[i]["score"] for i in sorted(done)]
    res.update({"label": cfg.label, "config": asdict(cfg), "n_samples": len(scores),
                "accuracy": sum(scores) / len(scores)})
    return res


def run_entropy(cfg: EntropyConfig, compare: EntropyConfig | None = None,
                out: str | Path | None = None, progress: bool = True) -> list[dict]:
    """Measure one model (and a second with ``compare``); write JSON, markdown and PNGs.

    With ``out``, the run is resumable: every finished prompt is appended to
    ``out/entropy_samples.jsonl`` (`SAMPLES_FILE`), a rerun with the same settings
    (`SETTINGS_FILE`; other settings are refused) measures only the prompts not there yet and
    does not even load a model whose prompts are all there.
    """
    from topkattn.models import load_model

    cfgs = [cfg] + ([compare] if compare is not None else [])
    records = None
    if out is not None:
        from topkattn.analysis.resume import check_settings

        Path(out).mkdir(parents=True, exist_ok=True)
        check_settings(Path(out) / SETTINGS_FILE, _settings(cfgs), "entropy")
        records = Path(out) / SAMPLES_FILE
    results = []
    for run, c in enumerate(cfgs):
        if records is not None:
            done = _finished(records, run)
            of = {r.get("of") for r in done.values()}
            if len(of) == 1 and set(done) == set(range(of.pop())):  # every prompt measured
                results.append(_result(c, done))
                continue
        model, tok = load_model(c.model, device=c.device)
        results.append(measure(model, tok, c, progress=progress, records=records, run=run))
        del model
    if out is not None:
        write_outputs(results, out)
    return results


def markdown_table(results: list[dict]) -> str:
    """Per-layer table: dense entropy (nats), then top-k entropy and mass per k, per model."""
    ks = list(results[0]["topk"])
    head = ["layer"]
    for r in results:
        tag = f" ({r['label']})" if len(results) > 1 else ""
        head.append(f"H{tag}")
        for k in ks:
            head += [f"H top-{k}{tag}", f"mass top-{k}{tag}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    layers = results[0]["layers"]
    for i, L in enumerate(layers):
        row = [str(L)]
        for r in results:
            pl = r["per_layer"]
            row.append(f"{pl['entropy'][i]:.3f}")
            for k in ks:
                row += [f"{pl['topk'][k]['entropy'][i]:.3f}", f"{pl['topk'][k]['mass'][i]:.3f}"]
        lines.append("| " + " | ".join(row) + " |")
    row = ["mean"]
    for r in results:
        pl = r["per_layer"]
        row.append(f"{sum(pl['entropy']) / len(pl['entropy']):.3f}")
        for k in ks:
            e, m = pl["topk"][k]["entropy"], pl["topk"][k]["mass"]
            row += [f"{sum(e) / len(e):.3f}", f"{sum(m) / len(m):.3f}"]
    lines.append("| " + " | ".join(row) + " |")
    notes = []
    for r in results:
        kv = ", ".join(f"{k} -> {v} keys" for k, v in r["k_values"].items())
        notes.append(f"- {r['label']}: task {r['config']['task']}, {r['n_samples']} prompts of "
                     f"{r['config']['length']} tokens, {r['config']['decode_steps']} decode steps "
                     f"each; mean context {r['mean_context']:.0f} keys (log n = "
                     f"{r['log_context']:.3f} nats = uniform attention); k: {kv}; greedy "
                     f"answer accuracy {r['accuracy']:.2f}")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def output_paths(out: str | Path) -> dict[str, Path]:
    """The files `write_outputs` writes under ``out``."""
    d = Path(out)
    return {"json": d / "entropy.json", "md": d / "entropy.md",
            "heatmap": d / "entropy_heatmap.png", "layers": d / "entropy_layers.png"}


def write_outputs(results: list[dict], out: str | Path) -> dict[str, Path]:
    """entropy.json, entropy.md, entropy_heatmap.png, entropy_layers.png under ``out``."""
    from topkattn.analysis.plots import plot_entropy_heatmap, plot_entropy_layers

    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    paths = output_paths(d)
    paths["json"].write_text(json.dumps(results, indent=1))
    paths["md"].write_text("# Attention entropy at decode steps\n\n" + markdown_table(results))
    plot_entropy_heatmap(results, paths["heatmap"])
    plot_entropy_layers(results, paths["layers"])
    return paths


__all__ = ["CAPTURE_NAME", "EntropyAccumulator", "EntropyConfig", "SAMPLES_FILE",
           "SETTINGS_FILE", "capture_entropy", "entropy", "markdown_table", "measure",
           "output_paths", "run_entropy", "topk_stats", "write_outputs"]
