"""Fidelity of approximate selectors against exact Top-k, and how fidelity drives accuracy.

`measure_fidelity` decodes each task sample greedily with dense attention (so every selector
is judged on the same trajectory) and, at every decode step, layer and query head, compares
each selector's set S with the exact top-k set E of q.k:

- precision = |S ∩ E| / k (recall@k of the exact set);
- attention-mass recall = sum_{j in S} p_j of the dense attention distribution p (the share of
  attention probability the set holds; the exact set's own mass recall is the ceiling);
- output error = ||o_S - o_E|| / ||o_E||, o_S the top-k attention output over S (softmax over
  S only) and o_E the exact Top-k output.

`run_downstream` then evaluates every selector (and the ``precision:p`` sweep, with and without
protecting the top member) on the task with Top-k decoding, by the same protocol as
``topkattn eval`` (`topkattn.generation.decode_branches`), and `correlate` / `plot_downstream` relate accuracy to
precision and to mass recall (Pearson r).

Selectors are given as objects or as specs of the one grammar of
`topkattn.selectors.registry` (``precision:0.75,protect=1``, ``lightning:runs/indexer.safetensors``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from topkattn.config import TopKConfig
from topkattn.errors import InputError
from topkattn.selectors import SelectionContext, Selector, parse_selector, split_specs

FIDELITY_ATTN = "topkattn_fidelity"
_REC_ATTR = "_topkattn_fidelity"
METRICS = ("precision", "mass_recall", "out_err")

#: the precision dial sweep of the downstream study
PRECISION_SWEEP = (0.2, 0.4, 0.6, 0.75, 0.9, 1.0)


# ---------------------------------------------------------------------------------------------
# Per-step metrics


def step_metrics(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, indices: torch.Tensor,
                 topk: int, scale: float, granularity: str = "query_head"
                 ) -> dict[str, torch.Tensor]:
    """Fidelity of one decode step.

    q [B, Hq, 1, D]; k, v [B, Hkv, Lk, D]; indices [B, Hq or Hkv, 1, n] (< 0 = padding).
    The exact set is the top-k of each query head's scores, or with ``granularity="kv_group"``
    of each KV group's summed scores (what exact Top-k selects at that granularity).
    Returns precision, mass_recall and out_err, each fp32 [B, Hq].
    """
    from topkattn.ops.topk.naive import indices_to_mask, select_topk_mask

    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    kk = k.float().repeat_interleave(G, 1) if G > 1 else k.float()
    vv = v.float().repeat_interleave(G, 1) if G > 1 else v.float()
    s = torch.matmul(q.float(), kk.transpose(-1, -2))[:, :, 0] * scale  # [B, Hq, Lk]
    p = torch.softmax(s, -1)
    n = min(topk, Lk)
    vis = torch.ones((), dtype=torch.bool, device=s.device)
    if granularity == "kv_group" and G > 1:
        exact = select_topk_mask(s.view(B, Hkv, G, Lk).sum(2), n, vis).repeat_interleave(G, 1)
    else:
        exact = select_topk_mask(s, n, vis).expand_as(s)
    sel = indices_to_mask(indices[:, :, 0], Lk)
    if sel.shape[1] != Hq:
        sel = sel.repeat_interleave(Hq // sel.shape[1], 1)

    def out(mask):
        w = torch.softmax(s.masked_fill(~mask, float("-inf")), -1).nan_to_num(0.0)
        return torch.einsum("bhl,bhld->bhd", w, vv)

    oe, os_ = out(exact), out(sel)
    return {
        "precision": (sel & exact).sum(-1).float() / n,
        "mass_recall": (p * sel).sum(-1),
        "out_err": (os_ - oe).norm(dim=-1) / oe.norm(dim=-1).clamp(min=1e-12),
    }


@dataclass
class _Acc:
    """Running sums per metric: [layers, heads] tensors and a step count per layer."""

    sums: dict = field(default_factory=dict)
    count: dict = field(default_factory=dict)

    def add(self, layer: int, m: dict[str, torch.Tensor]) -> None:
        for name, val in m.items():
            row = val.sum(0).double().cpu()  # over batch
            key = (name, layer)
            self.sums[key] = self.sums.get(key, 0) + row
        self.count[layer] = self.count.get(layer, 0) + next(iter(m.values())).shape[0]

    def merge(self, other: "_Acc") -> None:
        """Add the sums and counts of ``other`` (another prompt's) to these."""
        for key, row in other.sums.items():
            self.sums[key] = self.sums.get(key, 0) + row
        for layer, n in other.count.items():
            self.count[layer] = self.count.get(layer, 0) + n

    def to_json(self) -> dict:
        """{"sums": {metric: {layer: [heads]}}, "count": {layer: n}} (exact in JSON)."""
        sums: dict[str, dict[str, list[float]]] = {}
        for (name, layer), row in self.sums.items():
            sums.setdefault(name, {})[str(layer)] = row.tolist()
        return {"sums": sums, "count": {str(k): v for k, v in self.count.items()}}

    @classmethod
    def from_json(cls, d: dict) -> "_Acc":
        acc = cls()
        for name, per_layer in d["sums"].items():
            for layer, row in per_layer.items():
                acc.sums[(name, int(layer))] = torch.tensor(row, dtype=torch.float64)
        acc.count = {int(k): int(v) for k, v in d["count"].items()}
        return acc


def _fidelity_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                      **kwargs):
    """Attention function of the fidelity run: dense SDPA output, selectors measured aside."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rec = getattr(module, _REC_ATTR, None)
    if rec is not None:
        Lq, Lk = query.shape[2], key.shape[2]
        cfg: TopKConfig = rec["topk"]
        if Lq == Lk:
            for st in rec["stores"]:
                st.clear()
            scale = scaling if scaling is not None else query.shape[-1] ** -0.5
            for i, (label, sel) in enumerate(rec["selectors"]):  # selectors reading prefill
                if getattr(sel, "observes_dense_prefill", False):  # attention (ltri)
                    sel.observe_prefill(query, key, Lk, SelectionContext(
                        layer_idx=rec["layer"], topk=cfg.k_for(Lk), granularity=cfg.granularity,
                        scale=scale, phase="prefill", store=rec["stores"][i], module=module))
        elif Lq == 1 and cfg.applies_to(rec["layer"], "decode", Lk):
            scale = scaling if scaling is not None else query.shape[-1] ** -0.5
            n = cfg.k_for(Lk)
            for i, (label, sel) in enumerate(rec["selectors"]):
                ctx = SelectionContext(layer_idx=rec["layer"], topk=n,
                                       granularity=cfg.granularity, scale=scale, phase="decode",
                                       store=rec["stores"][i], module=module,
                                       hidden_states=rec.get("hidden"))
                with torch.no_grad():
                    idx = sel.select(query, key, ctx)
                    m = step_metrics(query, key, value, idx, n, scale, cfg.granularity)
                rec["acc"][label].add(rec["layer"], m)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                  scaling=scaling, **kwargs)


def _topk_of(topk: int | TopKConfig) -> TopKConfig:
    """A k (int) or a whole `TopKConfig` -> the `TopKConfig` (not dense)."""
    cfg = topk if isinstance(topk, TopKConfig) else TopKConfig(k=topk)
    if cfg.dense:
        raise InputError("fidelity compares selections of k keys: give a k, not k=full")
    return cfg


def measure_fidelity(model, tokenizer, prompts: list[str], topk: int | TopKConfig,
                     selectors: list[str] | dict[str, Selector], max_new_tokens: int = 8,
                     progress: bool = True) -> dict[str, dict]:
    """Per selector: mean and per-layer / per-head precision, mass recall and output error.

    Args:
        model, tokenizer: a Hugging Face causal LM (any `AttentionInterface` model).
        prompts: texts; each is decoded greedily (dense) for ``max_new_tokens`` steps.
        topk: k of the exact Top-k reference and of every selector, or a whole `TopKConfig`:
            its k or k_ratio (resolved per step), granularity, and the steps it applies to
            (`TopKConfig.applies_to`: dense layers, min_context, sink + local + k >= context
            are not measured); its own selector is not used.
        selectors: specs (`topkattn.selectors.parse_selector`) or label -> `Selector`.

    Returns:
        {label: {"precision": float, "mass_recall": float, "out_err": float,
                 "per_layer": {metric: [n_layers]}, "per_head": {metric: [[heads]...]},
                 "steps": decode steps measured per layer}}
    """
    cfg = _topk_of(topk)
    sels = selectors if isinstance(selectors, dict) else {s: parse_selector(s) for s in selectors}
    return summarize(_measure_accs(model, tokenizer, prompts, cfg, sels, max_new_tokens,
                                   progress))


def _measure_accs(model, tokenizer, prompts: list[str], cfg: TopKConfig,
                  sels: dict[str, Selector], max_new_tokens: int, progress: bool = True
                  ) -> dict[str, _Acc]:
    """The running sums of `measure_fidelity` (label -> `_Acc`) over ``prompts``."""
    from rich.progress import Progress

    from topkattn.integrations.hf import attention_override

    accs = {label: _Acc() for label in sels}

    def make_record(layer, module):
        return {"layer": layer, "topk": cfg, "selectors": list(sels.items()),
                "stores": [dict() for _ in sels], "acc": accs}

    def on_hidden(rec, hidden):
        rec["hidden"] = hidden

    dev = next(model.parameters()).device
    with attention_override(model, FIDELITY_ATTN, _fidelity_forward, make_record, _REC_ATTR,
                            on_hidden), Progress(disable=not progress, transient=True) as bar:
        job = bar.add_task(f"fidelity k={cfg.k_label}", total=len(prompts))
        for text in prompts:
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(dev)
            with torch.no_grad():
                model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id)
            bar.advance(job)
    return accs


def summarize(accs: dict[str, _Acc]) -> dict[str, dict]:
    out = {}
    for label, acc in accs.items():
        layers = sorted(acc.count)
        res: dict[str, Any] = {"per_layer": {}, "per_head": {}, "steps": acc.count}
        for name in METRICS:
            per_head = [(acc.sums[(name, l)] / acc.count[l]).tolist() for l in layers]
            res["per_head"][name] = per_head
            res["per_layer"][name] = [sum(h) / len(h) for h in per_head]
            res[name] = (sum(res["per_layer"][name]) / len(layers)) if layers else float("nan")
        res["steps"] = {str(k): v for k, v in acc.count.items()}
        out[label] = res
    return out


# ---------------------------------------------------------------------------------------------
# Downstream: accuracy with each selector


@dataclass
class DownstreamRow:
    selector: str
    accuracy: float
    n: int
    predictions: list[str] = field(default_factory=list)


def run_downstream(model, tokenizer, task, samples, topk: int | TopKConfig, selectors: list[str],
                   max_new_tokens: int = 12, include_full: bool = True,
                   progress: bool = True, on_row=None) -> list[DownstreamRow]:
    """Accuracy of Top-k decoding with each selector (and dense ``full`` as reference).

    The same protocol as ``topkattn eval`` (`topkattn.generation.decode_branches`):
    each sample is prefilled once densely (all but its last token); every selector decodes
    from its own deep copy of that cache inside ``sparsify(model, replace(base,
    selector=...))``, ``base`` being ``topk`` (a `TopKConfig`, or ``TopKConfig(k=topk)``), so
    even the first answer token comes from a Top-k step. ``task.score`` scores the generated
    text; ``on_row(sample, {label: (score, text)})`` sees each sample.
    """
    from rich.progress import Progress

    from topkattn.generation import decode_branches, eos_token_ids

    base = _topk_of(topk)
    settings: list[tuple[str, TopKConfig | None]] = [("full", None)] if include_full else []
    for lab in selectors:
        settings.append((lab, replace(base, selector=parse_selector(lab))))
    labels = [lab for lab, _ in settings]
    scores: dict[str, list[float]] = {lab: [] for lab in labels}
    preds: dict[str, list[str]] = {lab: [] for lab in labels}
    eos = eos_token_ids(model, tokenizer)
    with Progress(disable=not progress, transient=True) as bar:
        job = bar.add_task("downstream", total=len(samples) * len(labels))
        for smp in samples:
            for br in decode_branches(model, tokenizer, smp.prompt, settings, max_new_tokens,
                                      eos):
                scores[br.label].append(float(task.score(br.text, smp)))
                preds[br.label].append(br.text)
                bar.advance(job)
            if on_row is not None:
                on_row(smp, {lab: (scores[lab][-1], preds[lab][-1]) for lab in labels})
    return [DownstreamRow(lab, sum(scores[lab]) / max(1, len(scores[lab])), len(scores[lab]),
                          preds[lab]) for lab in labels]


def pearson(x: list[float], y: list[float]) -> float:
    """Pearson correlation coefficient (nan when undefined)."""
    n = len(x)
    if n < 2:
        return float("nan")
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sx = math.sqrt(sum((a - mx) ** 2 for a in x))
    sy = math.sqrt(sum((b - my) ** 2 for b in y))
    return sxy / (sx * sy) if sx > 0 and sy > 0 else float("nan")


def correlate(fidelity: dict[str, dict], accuracy: dict[str, float]) -> dict[str, float]:
    """Pearson r of accuracy vs precision and vs mass recall over the selectors in both."""
    labs = [l for l in accuracy if l in fidelity]
    acc = [accuracy[l] for l in labs]
    return {f"r_{m}": pearson([fidelity[l][m] for l in labs], acc)
            for m in ("precision", "mass_recall")} | {"n": len(labs)}


# ---------------------------------------------------------------------------------------------
# Reports


def markdown_table(fidelity: dict[str, dict], accuracy: dict[str, float] | None = None) -> str:
    head = "| selector | precision | mass recall | output rel. L2 |" + (
        " accuracy |" if accuracy else "")
    sep = "|---|---|---|---|" + ("---|" if accuracy else "")
    lines = [head, sep]
    for lab, r in fidelity.items():
        row = f"| {lab} | {r['precision']:.3f} | {r['mass_recall']:.3f} | {r['out_err']:.3f} |"
        if accuracy:
            a = accuracy.get(lab)
            row += f" {a:.2f} |" if a is not None else " - |"
        lines.append(row)
    if accuracy and "full" in accuracy:
        lines.append(f"| full (dense) | 1 | 1 | - | {accuracy['full']:.2f} |")
    return "\n".join(lines)


def plot_per_layer(fidelity: dict[str, dict], path: str | Path, title: str = "") -> Path:
    """PNG: per-layer precision, mass recall and output error, one line per selector."""
    from topkattn.analysis.plots import pyplot, save_figure

    plt = pyplot()

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for lab, r in fidelity.items():
        for ax, m in zip(axes, METRICS):
            ax.plot(r["per_layer"][m], marker=".", label=lab)
    for ax, m in zip(axes, ("precision vs exact top-k", "attention-mass recall",
                            "output rel. L2 vs exact top-k")):
        ax.set_title(m)
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_downstream(fidelity: dict[str, dict], accuracy: dict[str, float], path: str | Path,
                    title: str = "", full: float | None = None) -> Path:
    """PNG: accuracy vs precision and vs mass recall (one point per selector, r in titles)."""
    from topkattn.analysis.plots import pyplot, save_figure

    plt = pyplot()

    labs = [l for l in accuracy if l in fidelity]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, m in zip(axes, ("precision", "mass_recall")):
        xs = [fidelity[l][m] for l in labs]
        ys = [accuracy[l] for l in labs]
        for l, x, y in zip(labs, xs, ys):
            color = ("tab:red" if "protect" in l else "tab:blue") if l.startswith("precision") \
                else "tab:green"
            ax.scatter([x], [y], color=color, s=30)
            ax.annotate(l.replace("precision:", "p=").replace(",protect=", "+prot"),
                        (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if full is not None:
            ax.axhline(full, color="gray", ls="--", lw=1, label=f"full attention {full:.2f}")
            ax.legend(fontsize=8, loc="lower right")
        ax.set_xlabel(m.replace("_", " "))
        ax.set_ylabel("accuracy")
        ax.set_title(f"accuracy vs {m.replace('_', ' ')} (Pearson r = {pearson(xs, ys):.2f})")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title + "   (blue: precision:p, red: with protect, green: selectors)")
    return save_figure(fig, path)


def default_sweep(with_protect: int = 1) -> list[str]:
    """precision:p for p in `PRECISION_SWEEP`, without and with ``protect`` (p < 1 only)."""
    out = [f"precision:{p}" for p in PRECISION_SWEEP]
    out += [f"precision:{p},protect={with_protect}" for p in PRECISION_SWEEP if p < 1.0]
    return out


def write_json(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o)))
    return path


# ---------------------------------------------------------------------------------------------
# One run, as the command line does it

#: the selectors the command line compares by default
DEFAULT_SELECTORS = ("exact", "lightning", "quest", "spans", "window", "random")


@dataclass
class FidelityConfig:
    """What `run_fidelity` measures (validated on construction).

    Attributes:
        selectors: selector specs compared with exact Top-k (`topkattn.selectors.
            parse_selector`; a comma-separated string is split by `split_specs`). With
            ``downstream`` and ``sweep``, the ``precision:p`` sweep (`default_sweep`) is added.
        topk: the base `TopKConfig`: its k or k_ratio is that of the exact reference and of
            every selector, its granularity that of both, and the downstream runs use it whole
            (sink, local, dense_layers, min_context, backend) with each selector in place of
            its own. Not dense.
        task, length, samples, seed: the prompts (a synthetic task, tokens, how many, seed).
        steps: greedy decode steps measured per sample.
        downstream: also evaluate accuracy with every selector, and relate it to fidelity.
        sweep: with ``downstream``, add the precision:p sweep (with and without ``protect``).
        protect: top members the protected sweep keeps.
        max_new_tokens: answer tokens of the downstream runs.
        out: output folder (fidelity.json, fidelity.md, fidelity_layers.png and with
            ``downstream`` downstream.json, fidelity_downstream.png).
        progress: show progress bars.
    """

    selectors: tuple[str, ...] = DEFAULT_SELECTORS
    topk: TopKConfig = field(default_factory=lambda: TopKConfig(k=64))
    task: str = "niah_multikey"
    length: int = 2048
    samples: int = 8
    seed: int = 0
    steps: int = 8
    downstream: bool = False
    sweep: bool = True
    protect: int = 1
    max_new_tokens: int = 12
    out: str | Path = "runs/fidelity"
    progress: bool = True

    def __post_init__(self) -> None:
        from topkattn.evaluation.runner import parse_length
        from topkattn.tasks import get_task

        if not isinstance(self.topk, TopKConfig):
            raise InputError(f"topk must be a TopKConfig, got {self.topk!r}")
        _topk_of(self.topk)  # not dense
        for name, lo in (("samples", 1), ("steps", 1), ("max_new_tokens", 1), ("protect", 0),
                         ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise InputError(f"{name} must be an integer >= {lo}, got {name}={v!r}")
        specs = (split_specs(self.selectors) if isinstance(self.selectors, str)
                 else [str(x).strip() for x in self.selectors if str(x).strip()])
        if self.downstream and self.sweep:
            specs += [x for x in default_sweep(self.protect) if x not in specs]
        if not specs:
            raise InputError("selectors must name at least one selector")
        for spec in specs:
            parse_selector(spec)  # fail early on a bad name, key or value
        self.selectors = tuple(dict.fromkeys(specs))
        self.length = parse_length(self.length)
        get_task(self.task)  # names an unknown task and the allowed ones
        self.out = Path(self.out)

    @property
    def title(self) -> str:
        return f"{self.task}, {self.length} tokens, k={self.topk.k_label}, {self.samples} samples"

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["selectors"], d["out"] = list(self.selectors), str(self.out)
        d["topk"] = self.topk.to_json()
        d["topk"].pop("selector")  # each of selectors replaces it
        return d


@dataclass
class FidelityResult:
    """What `run_fidelity` measured and where it wrote it."""

    config: FidelityConfig
    fidelity: dict[str, dict]
    table: str
    files: dict[str, Path]
    accuracy: dict[str, float] | None = None
    correlation: dict[str, float] | None = None
    rows: list[DownstreamRow] = field(default_factory=list)


#: files of a run folder that keep finished work (one JSON line per sample) and its settings
SAMPLES_FILE = "fidelity_samples.jsonl"
DOWNSTREAM_FILE = "downstream_samples.jsonl"
SETTINGS_FILE = "fidelity_settings.json"


def _settings(cfg: FidelityConfig) -> dict[str, Any]:
    d = cfg.to_json()
    for name in ("out", "progress"):
        d.pop(name)
    return d


def run_fidelity(model, tokenizer, cfg: FidelityConfig) -> FidelityResult:
    """Fidelity of ``cfg.selectors`` against exact Top-k on ``cfg.task`` (and with
    ``cfg.downstream`` the accuracy with each); writes JSON, markdown and plots to ``cfg.out``.

    Resumable: each sample's sums (`SAMPLES_FILE`) and downstream scores (`DOWNSTREAM_FILE`)
    are appended to ``cfg.out`` as soon as they are measured, a rerun with the same settings
    (`SETTINGS_FILE`; other settings are refused) measures only the samples not there yet,
    and Ctrl-C raises `topkattn.analysis.resume.RunInterrupted` after the last finished one.
    """
    from topkattn.analysis.resume import (RunInterrupted, append_record, check_settings,
                                          read_records)
    from topkattn.tasks import get_task

    task = get_task(cfg.task)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out / SETTINGS_FILE, _settings(cfg), "fidelity")
    smp = task.samples(tokenizer, cfg.length, cfg.samples, cfg.seed)
    specs = list(cfg.selectors)
    sels = {spec: parse_selector(spec) for spec in specs}
    n = len(smp)
    rec_path = out / SAMPLES_FILE
    done = {r["sample"]: r for r in read_records(rec_path)
            if isinstance(r.get("sample"), int) and r["sample"] < n
            and set(r.get("selectors", {})) == set(specs)}
    from rich.progress import Progress

    try:
        with Progress(disable=not cfg.progress, transient=True) as bar:
            job = bar.add_task(f"fidelity k={cfg.topk.k_label}", total=n, completed=len(done))
            for i, s in enumerate(smp):
                if i in done:
                    continue
                accs = _measure_accs(model, tokenizer, [s.prompt], cfg.topk, sels, cfg.steps,
                                     progress=False)
                row = {"sample": i, "selectors": {lab: a.to_json() for lab, a in accs.items()}}
                append_record(rec_path, row)
                done[i] = row
                bar.advance(job)
    except KeyboardInterrupt:
        raise RunInterrupted("fidelity", len(done), n, rec_path) from None
    accs = {lab: _Acc() for lab in specs}
    for i in sorted(done):
        for lab in specs:
            accs[lab].merge(_Acc.from_json(done[i]["selectors"][lab]))
    fid = summarize(accs)
    k = cfg.topk.k if cfg.topk.k is not None else cfg.topk.k_label
    files = {"json": write_json({"task": cfg.task, "length": cfg.length, "k": k,
                                 "samples": cfg.samples, "seed": cfg.seed,
                                 "config": cfg.to_json(), "selectors": fid},
                                out / "fidelity.json"),
             "layers": plot_per_layer(fid, out / "fidelity_layers.png", cfg.title)}
    table = markdown_table(fid)
    res = FidelityResult(cfg, fid, table, files)
    if cfg.downstream:
        rows = _downstream_resumable(model, tokenizer, task, smp, cfg, specs, out)
        acc = {r.selector: r.accuracy for r in rows}
        sel_acc = {lab: a for lab, a in acc.items() if lab != "full"}
        corr = correlate(fid, sel_acc)
        files["downstream"] = write_json({"accuracy": acc, "correlation": corr, "rows": rows},
                                         out / "downstream.json")
        files["downstream_plot"] = plot_downstream(fid, sel_acc, out / "fidelity_downstream.png",
                                                   cfg.title, full=acc.get("full"))
        table = markdown_table(fid, acc) + (
            f"\n\nPearson r: accuracy vs precision {corr['r_precision']:.2f}, "
            f"vs mass recall {corr['r_mass_recall']:.2f} ({corr['n']} selectors)")
        res.accuracy, res.correlation, res.rows, res.table = acc, corr, rows, table
    files["md"] = out / "fidelity.md"
    files["md"].write_text(f"{cfg.title}\n\n{table}\n")
    return res


def _downstream_resumable(model, tokenizer, task, smp, cfg: FidelityConfig, specs: list[str],
                          out: Path) -> list[DownstreamRow]:
    """`run_downstream` sample by sample, each sample's scores appended to `DOWNSTREAM_FILE`
    and the samples already there skipped."""
    from topkattn.analysis.resume import RunInterrupted, append_record, read_records

    path = out / DOWNSTREAM_FILE
    labels = ["full"] + specs
    done = {r["sample"]: r for r in read_records(path)
            if isinstance(r.get("sample"), int) and r["sample"] < len(smp)
            and set(r.get("scores", {})) == set(labels)}
    index = {id(s): i for i, s in enumerate(smp)}

    def on_row(sample, row):
        i = index[id(sample)]
        rec = {"sample": i, "scores": {lab: sc for lab, (sc, _) in row.items()},
               "texts": {lab: t for lab, (_, t) in row.items()}}
        append_record(path, rec)
        done[i] = rec

    todo = [s for i, s in enumerate(smp) if i not in done]
    try:
        if todo:
            run_downstream(model, tokenizer, task, todo, cfg.topk, specs,
                           max_new_tokens=cfg.max_new_tokens, progress=cfg.progress,
                           on_row=on_row)
    except KeyboardInterrupt:
        raise RunInterrupted("fidelity --downstream", len(done), len(smp), path) from None
    order = sorted(done)
    return [DownstreamRow(lab, sum(done[i]["scores"][lab] for i in order) / max(1, len(order)),
                          len(order), [done[i]["texts"][lab] for i in order]) for lab in labels]


# ---------------------------------------------------------------------------------------------
# DeepSeek-V3.2's built-in indexer


@torch.no_grad()
def deepseek_v32_indexer_fidelity(model, input_ids: torch.Tensor, topk: int,
                                  min_pos: int | None = None) -> dict[str, Any]:
    """Precision of a ``deepseek_v32`` checkpoint's own Lightning Indexer vs exact top-k of the
    model's attention, measured the same way as our selectors.

    The model runs densely (``index_topk`` raised above the length, eager attention, so the
    returned attention weights are the dense distributions); each layer's indexer is re-run
    on its captured inputs with ``index_topk = topk``. The indexer picks one set per query row
    for all heads, so it is compared with the exact top-k of the head-summed attention
    (``precision``) and, per head, with each head's own top-k (``precision_per_head``).
    Rows at positions >= ``min_pos`` (default 2 * topk) are measured.

    Returns precision, precision_per_head, mass_recall (mean over heads), random_precision
    (the chance level, mean of topk / visible keys) and the same per layer.
    """
    cfg = model.config
    if cfg.model_type != "deepseek_v32":
        raise InputError(f"model must be a deepseek_v32 model, got model_type={cfg.model_type!r}")
    L = input_ids.shape[1]
    min_pos = 2 * topk if min_pos is None else min_pos
    if min_pos >= L:
        raise InputError(f"min_pos ({min_pos}) must be below the sequence length ({L})")
    captured: dict[int, tuple] = {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        ind = layer.self_attn.indexer

        def hook(mod, args, kwargs, i=i):
            captured[i] = (args, kwargs)

        hooks.append(ind.register_forward_pre_hook(hook, with_kwargs=True))
    prev_topk = cfg.index_topk
    prev_impl = cfg._attn_implementation
    try:
        for layer in model.model.layers:
            layer.self_attn.indexer.index_topk = max(prev_topk, L)
        model.set_attn_implementation("eager")
        out = model(input_ids=input_ids, output_attentions=True, use_cache=False)
        per_layer = []
        for i, layer in enumerate(model.model.layers):
            ind = layer.self_attn.indexer
            ind.index_topk = topk
            args, kwargs = captured[i]
            sel_idx = ind(*args, **kwargs).long()  # [B, S, topk]
            att = out.attentions[i].float()  # [B, H, S, S]
            rows = torch.arange(min_pos, L, device=att.device)
            a = att[:, :, rows]  # [B, H, R, S]
            vis = torch.arange(L, device=att.device)[None] <= rows[:, None]  # [R, S]
            sel = torch.zeros_like(a[:, 0], dtype=torch.bool).scatter(-1, sel_idx[:, rows], True)
            sel &= vis
            n = topk
            summed = a.sum(1)
            exact = torch.zeros_like(sel).scatter(
                -1, summed.masked_fill(~vis, -1).topk(n, -1).indices, True)
            exact_h = torch.zeros_like(a, dtype=torch.bool).scatter(
                -1, a.masked_fill(~vis, -1).topk(n, -1).indices, True)
            per_layer.append({
                "precision": float((sel & exact).sum(-1).float().mean() / n),
                "precision_per_head": float((sel[:, None] & exact_h).sum(-1).float().mean() / n),
                "mass_recall": float((a * sel[:, None]).sum(-1).mean()),
                "random_precision": float((n / (rows + 1).float()).mean()),
            })
    finally:
        for h in hooks:
            h.remove()
        for layer in model.model.layers:
            layer.self_attn.indexer.index_topk = prev_topk
        model.set_attn_implementation(prev_impl)
    res: dict[str, Any] = {m: sum(r[m] for r in per_layer) / len(per_layer) for m in per_layer[0]}
    res["per_layer"] = per_layer
    return res


__all__ = ["DEFAULT_SELECTORS", "DOWNSTREAM_FILE", "SAMPLES_FILE", "SETTINGS_FILE", "DownstreamRow", "FidelityConfig", "FidelityResult", "METRICS",
           "PRECISION_SWEEP", "correlate", "deepseek_v32_indexer_fidelity", "default_sweep",
           "markdown_table", "measure_fidelity", "pearson", "plot_downstream", "plot_per_layer",
           "run_downstream", "run_fidelity", "step_metrics", "summarize", "write_json"]
