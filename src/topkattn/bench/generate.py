"""Benchmark: end-to-end generation on a random-weight Llama-3-8B-shaped model (bf16).

For every context, one dense prefill at batch 1 (timed) fills the cache; each mode then starts
from a copy of that cache (repeated over the batch) and decodes greedily:

- ``dense-default``: no `sparsify`, transformers' default SDPA (on Hopper with torch 2.11 that
  is cuDNN, which rebuilds its plan for every new key length): eager with a DynamicCache, and
  compiled over a StaticCache (what ``generate(cache_implementation="static")`` runs);
- ``dense-flash``: the same with the flash backend preferred, eager;
- ``dense-ranges``: `sparsify(TopKConfig(k=None))`: full attention over key ranges, eager with a
  DynamicCache, and over a StaticCache with one decode step captured in a CUDA graph (the
  machinery Top-k uses, without Top-k);
- ``topk-kv_group`` / ``topk-query_head``: exact Top-k (k per run), DynamicCache eager and
  StaticCache + CUDA graph;
- ``topk-lightning``: a Lightning Indexer (untrained, 4 heads x 64: its speed does not depend
  on its weights) picks k keys per sequence from its own key cache (`LightningSelector`'s
  `range_indices` path), the same two paths.

Paths: ``eager`` (DynamicCache; inside `sparsify` it grows into buffers with room and each
layer's decode attention replays a CUDA graph, `TopKConfig.decode_graphs`), ``eager-plain``
(the sparsified modes with ``decode_graphs=False``: transformers' concatenated cache and the
kernels launched from Python at every layer and step), ``graph`` (StaticCache, one decode step captured by
hand in a CUDA graph and replayed) and ``compiled`` (StaticCache, the forward compiled with
``torch.compile(fullgraph=True, mode="reduce-overhead")`` as transformers' generate compiles
it; CUDA graphs through Inductor) for every mode; ``graph`` for the sparsified modes only.
Compiling a 32-layer model takes 35-60 s per mode and cell (H200).

Per mode: median ms per decode step after a warm-up that covers compilation, tokens/s, peak GPU
memory, and the attention share of a step (the attention op of one layer timed alone in a CUDA
graph, times the layers). Ratios are to the fastest dense mode of the same cell ("best dense")
and to ``dense-default`` (what a user gets today).
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from topkattn.bench.common import env_info, time_graph_ms, write_results
from topkattn.errors import InputError

WARMUP_STEPS = 4
STEPS = 16


def llama3_8b_random(layers: int, max_position: int):
    """A random-weight LlamaForCausalLM of Llama-3-8B shape (bf16, on the GPU): matrices and
    embeddings N(0, 0.02), RMSNorm weights 1, as transformers initialises a Llama (random norm
    weights would shrink every activation, and the attention scores to about 1e-4)."""
    import transformers as tf

    cfg = tf.LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                         max_position_embeddings=max_position, rope_theta=500000.0)
    cfg._attn_implementation = "sdpa"
    with torch.device("cuda"):
        model = tf.LlamaForCausalLM(cfg).to(torch.bfloat16)
    for p in model.parameters():
        if p.dim() >= 2:
            p.data.normal_(0.0, 0.02)
    return model.eval()


def _prefill(model, ctx: int, chunk: int = 8192):
    """Dense prefill of ``ctx`` random tokens at batch 1 in chunks: (per-layer K/V, seconds)."""
    from transformers import DynamicCache

    from topkattn.integrations.hf import _sdpa_priority

    ids = torch.randint(0, model.config.vocab_size, (1, ctx), device="cuda")
    cache = DynamicCache()
    torch.cuda.synchronize()
    t = time.perf_counter()
    with torch.no_grad(), _sdpa_priority():
        for s in range(0, ctx, chunk):
            model(ids[:, s:s + chunk], past_key_values=cache, use_cache=True)
    torch.cuda.synchronize()
    secs = time.perf_counter() - t
    kv = [(layer.keys, layer.values) for layer in cache.layers]
    return kv, secs


def _fill(cache, kv, B: int):
    for i, (k, v) in enumerate(kv):
        cache.update(k.repeat(B, 1, 1, 1), v.repeat(B, 1, 1, 1), i)
    return cache


def _timed_decode(fwd, cache, B: int, ctx: int, steps: int, mark_step: bool = False
                  ) -> list[float]:
    """ms of each of ``steps`` greedy decode steps through ``fwd`` (the model's forward, eager
    or compiled) over ``cache`` from position ``ctx``; ``mark_step``: tell CUDA-graph trees
    that a new step begins (compiled ``reduce-overhead``)."""
    tok = torch.zeros(B, 1, dtype=torch.long, device="cuda")
    times = []
    for i in range(steps):
        pos = torch.full((B, 1), ctx + i, device="cuda")
        if mark_step:
            torch.compiler.cudagraph_mark_step_begin()
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = fwd(input_ids=tok, past_key_values=cache, position_ids=pos, use_cache=True)
        tok = out.logits[:, -1:].argmax(-1)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    return times


def _eager_steps(model, cache, B: int, ctx: int) -> list[float]:
    """ms of each decode step (DynamicCache, eager), warm-up steps included."""
    return _timed_decode(model, cache, B, ctx, WARMUP_STEPS + STEPS)


def _graph_steps(model, cache, B: int, ctx: int) -> list[float]:
    """ms of each replay of one decode step captured in a CUDA graph (StaticCache)."""
    tok = torch.zeros(B, 1, dtype=torch.long, device="cuda")
    pos = torch.full((B, 1), ctx, device="cuda")
    counters = [layer.cumulative_length.clone() for layer in cache.layers]

    def step():
        out = model(input_ids=tok, past_key_values=cache, position_ids=pos, use_cache=True)
        tok.copy_(out.logits[:, -1:].argmax(-1))
        pos.add_(1)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            step()  # compiles the kernels
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=s):
        step()
    for layer, c in zip(cache.layers, counters):  # replay from the prefilled length
        layer.cumulative_length.copy_(c)
    pos.fill_(ctx)
    times = []
    for _ in range(WARMUP_STEPS + STEPS):
        torch.cuda.synchronize()
        t = time.perf_counter()
        g.replay()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    del g
    return times


def _compiled_steps(model, cache, B: int, ctx: int) -> list[float]:
    """ms of each decode step of the forward compiled as transformers' generate compiles it
    for a static cache (``fullgraph=True``, ``mode="reduce-overhead"``), warm-up included
    (the first steps compile and record the CUDA graph). One eager step first, as a prefill
    through `sparsify` would, lets selectors with their own caches (the Lightning Indexer's
    key cache) size them outside the trace."""
    _timed_decode(model, cache, B, ctx, 1)
    torch._dynamo.reset()
    fwd = torch.compile(model.forward, fullgraph=True, dynamic=False, mode="reduce-overhead")
    times = _timed_decode(fwd, cache, B, ctx + 1, 3 + WARMUP_STEPS + STEPS, mark_step=True)
    torch._dynamo.reset()
    return times


def _attention_ms(kind: str, B: int, ctx: int, k: int) -> float | None:
    """One layer's attention op alone in a CUDA graph (a cache of ctx + STEPS keys)."""
    from topkattn.bench.common import decode_inputs
    from topkattn.ops.topk.custom_ops import range_decode_op, topk_decode_op

    q, kk, vv = decode_inputs(B, ctx)
    lo = torch.zeros(B, dtype=torch.int32, device="cuda")
    hi = torch.full((B,), ctx, dtype=torch.int32, device="cuda")
    scale = q.shape[-1] ** -0.5
    if kind == "topk-lightning":
        return None  # the indexer's share is not timed alone
    if kind == "dense-flash" or kind == "dense-default":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def fn():
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                return torch.nn.functional.scaled_dot_product_attention(q, kk, vv, enable_gqa=True)
    elif kind == "dense-ranges":
        def fn():
            return range_decode_op(q, kk, vv, lo, hi, scale)
    else:
        group = kind.endswith("kv_group")

        def fn():
            return topk_decode_op(q, kk, vv, lo, hi, k, scale, 0, 0, group)
    return time_graph_ms(fn)


PATHS = ("eager", "eager-plain", "graph", "compiled")


def mode_table(k: int, modes: tuple[str, ...] | None = None,
               paths: tuple[str, ...] | None = None) -> list[tuple]:
    """The (mode name, TopKConfig or None, path, flash SDPA preferred) runs of the benchmark,
    only those of ``modes`` and ``paths`` when given (unknown names: InputError listing the
    allowed ones)."""
    from topkattn import TopKConfig
    from topkattn.selectors.lightning import LightningSelector

    exact = {g: TopKConfig(k=k, granularity=g) for g in ("kv_group", "query_head")}
    light = TopKConfig(k=k, selector=LightningSelector())
    dense = TopKConfig(k=None)
    mode_list = [  # (name, cfg or None, path, sdpa priority)
        ("dense-default", None, "eager", False),
        ("dense-default", None, "compiled", False),
        ("dense-flash", None, "eager", True),
        ("dense-flash", None, "compiled", True),
        ("dense-ranges", dense, "eager", False),
        ("dense-ranges", dense, "graph", False),
        ("dense-ranges", dense, "compiled", False),
        ("topk-kv_group", exact["kv_group"], "eager", False),
        ("topk-kv_group", exact["kv_group"], "graph", False),
        ("topk-kv_group", exact["kv_group"], "compiled", False),
        ("topk-query_head", exact["query_head"], "eager", False),
        ("topk-query_head", exact["query_head"], "graph", False),
        ("topk-query_head", exact["query_head"], "compiled", False),
        ("topk-lightning", light, "eager", False),
        ("topk-lightning", light, "graph", False),
        ("topk-lightning", light, "compiled", False),
    ]
    for label, chosen, allowed in (("modes", modes, {m[0] for m in mode_list}),
                                   ("paths", paths, set(PATHS))):
        if chosen is None:
            continue
        unknown = [m for m in chosen if m not in allowed]
        if unknown:
            raise InputError(f"unknown generate {label} {unknown}; allowed: {sorted(allowed)}")
    plain = [(name, cfg.with_(decode_graphs=False), "eager-plain", flash)
             for name, cfg, path, flash in mode_list if cfg is not None and path == "eager"]
    mode_list = mode_list + plain
    return [m for m in mode_list
            if (modes is None or m[0] in modes) and (paths is None or m[2] in paths)]


def run(ctxs, ks, batches, out_dir, layers: int = 32, modes: tuple[str, ...] | None = None,
        paths: tuple[str, ...] | None = None) -> None:
    """The generate benchmark (module docstring); ``modes`` / ``paths``: only the modes and
    paths of these names (default all)."""
    k = ks[0] if ks else 2048
    mode_list = mode_table(k, modes, paths)  # bad names fail before the model is built
    model = llama3_8b_random(layers, max(ctxs) + 64)
    weights_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
    meta = env_info() | {"k": k, "layers": layers, "weights_gb": weights_gb,
                         "warmup_steps": WARMUP_STEPS, "steps": STEPS}
    rows = []
    for ctx in ctxs:
        kv, prefill_s = _prefill(model, ctx)
        for B in batches:
            def cell_at(n: int) -> list[dict]:
                with first_layers(model, n):
                    return _run_cell(model, kv[:n], ctx, B, mode_list, k, prefill_s)

            cell = fitted_cell(cell_at, layers)
            timed = [r for r in cell if r.get("step_ms")]
            dense = [r["step_ms"] for r in timed if r["mode"].startswith("dense")]
            best = min(dense) if dense else None
            default = next((r["step_ms"] for r in timed if r["mode"] == "dense-default"), None)
            for r in cell:
                if r.get("step_ms") and best:
                    r["vs_best_dense"] = r["step_ms"] / best
                if r.get("step_ms") and default:
                    r["speedup_vs_default"] = default / r["step_ms"]
                r["case"] = f"{r['mode']} {r['path']} B{B} {ctx // 1024}k"
            rows += cell
            _write(rows, out_dir, meta)  # after every cell: a run cut off keeps what it finished
        del kv


OUT_OF_MEMORY = "out of GPU memory"


def fitted_cell(cell_at: Callable[[int], list[dict]], layers: int) -> list[dict]:
    """The rows of one (context, batch) cell, ``cell_at(n)`` running every mode with the
    model's first n layers: at ``layers``, and while any mode runs out of GPU memory, the
    whole cell again at half the layers (so that its ratios compare like with like), down
    to one. Rows of a cell that needed fewer layers say so in ``note``."""
    n = layers
    cell = cell_at(n)
    while n > 1 and any(r.get("note") == OUT_OF_MEMORY for r in cell):
        n = max(1, n // 2)
        torch.cuda.empty_cache()
        cell = cell_at(n)
    if n < layers:
        for r in cell:
            why = f"{n} of {layers} layers ({layers} do not fit in GPU memory)"
            r["note"] = why if not r.get("note") else f"{why}; {r['note']}"
    return cell


@contextlib.contextmanager
def first_layers(model, n: int):
    """The model with only its first ``n`` decoder layers inside the block (the others stay
    allocated but unused; config and layer list restored on exit)."""
    inner, cfg = model.model, model.config
    layers, count = inner.layers, cfg.num_hidden_layers
    types = getattr(cfg, "layer_types", None)
    if n == len(layers):
        yield model
        return
    inner.layers = torch.nn.ModuleList(list(layers)[:n])
    cfg.num_hidden_layers = n
    if isinstance(types, list):
        cfg.layer_types = types[:n]
    try:
        yield model
    finally:
        inner.layers, cfg.num_hidden_layers = layers, count
        if isinstance(types, list):
            cfg.layer_types = types


def _run_cell(model, kv, ctx: int, B: int, mode_list, k: int, prefill_s: float) -> list[dict]:
    """One row per mode of one (context, batch) cell on ``model`` (all its current layers),
    each starting from a copy of the prefill ``kv`` repeated over the batch."""
    from transformers import DynamicCache, StaticCache

    from topkattn import sparsify
    from topkattn.integrations.hf import _sdpa_priority

    layers = model.config.num_hidden_layers
    cell = []
    for name, cfg, path, flash in mode_list:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        row = {"ctx": ctx, "B": B, "layers": layers, "mode": name,
               "cache": "dynamic" if path.startswith("eager") else "static", "path": path,
               "k": None if cfg is None or cfg.dense else k, "prefill_s": prefill_s}
        cache = None
        try:
            if path.startswith("eager"):
                cache = DynamicCache()
            else:
                cache = StaticCache(config=model.config, max_cache_len=ctx + 64)
            with torch.no_grad():
                _fill(cache, kv, B)
                ctxm = sparsify(model, cfg) if cfg is not None else contextlib.nullcontext()
                with ctxm, (_sdpa_priority() if flash else contextlib.nullcontext()):
                    steps = {"eager": _eager_steps, "eager-plain": _eager_steps, "graph": _graph_steps,
                             "compiled": _compiled_steps}[path](model, cache, B, ctx)
            ms = statistics.median(steps[-STEPS:])
            row.update(step_ms=ms, tokens_per_s=B * 1e3 / ms, first_step_ms=steps[0],
                       peak_gb=torch.cuda.max_memory_allocated() / 1e9)
            att = _attention_ms(name, B, ctx, k)
            row["attention_share"] = None if att is None else min(1.0, att * layers / ms)
        except torch.OutOfMemoryError:
            row["note"] = OUT_OF_MEMORY
        except Exception as e:  # noqa: BLE001 - one failing mode must not end the run
            row["note"] = f"{type(e).__name__}: {str(e)[:120]}"
        cache = None
        cell.append(row)
        print(row, flush=True)
    return cell


def _write(rows: list[dict], out_dir, meta: dict) -> None:
    write_results("generate", rows, ["ctx", "B", "layers", "mode", "path", "prefill_s", "first_step_ms", "step_ms", "tokens_per_s",
                                     "peak_gb", "attention_share", "vs_best_dense",
                                     "speedup_vs_default", "note"],
                  out_dir, meta)
    plot_generate(rows, meta, Path(out_dir) / "generate.png")


def plot_generate(rows: list[dict], meta: dict, path: Path) -> None:
    """Grouped bars: ms per decode step for each (batch, context) cell, one bar per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = list(dict.fromkeys((r["B"], r["ctx"]) for r in rows))
    modes = list(dict.fromkeys(f"{r['mode']} {r['path']}" for r in rows))
    by = {}  # (cell, mode) -> its row (the first one)
    for r in rows:
        by.setdefault(((r["B"], r["ctx"]), f"{r['mode']} {r['path']}"), r)
    fig, ax = plt.subplots(figsize=(10, 5.4))
    width = 0.8 / max(len(modes), 1)

    def x(i: int, j: int) -> float:  # bar j of cell i
        return i + (j - (len(modes) - 1) / 2) * width

    for j, m in enumerate(modes):
        ys = [by.get((c, m), {}).get("step_ms") or float("nan") for c in cells]
        ax.bar([x(i, j) for i in range(len(cells))], ys, width, label=m)
    ax.set_xticks(range(len(cells)))
    cut = {(r["B"], r["ctx"]): r["layers"] for r in rows
           if r.get("layers") not in (None, meta.get("layers"))}  # cells run with fewer layers
    ax.set_xticklabels([f"B{b} {c // 1024}k" + (f"\n({cut[(b, c)]} layers)" if (b, c) in cut else "")
                        for b, c in cells])
    ax.set_xlim(-0.5, len(cells) - 0.5)  # a last cell without bars keeps its place
    timed = [r["step_ms"] for r in rows if r.get("step_ms")]
    log = bool(timed) and max(timed) > 20 * min(timed)  # e.g. transformers' static default
    if log:
        ax.set_yscale("log")
    for j, m in enumerate(modes):  # a missing bar says why (out of GPU memory, an error)
        for i, c in enumerate(cells):
            r = by.get((c, m))
            if r is not None and not r.get("step_ms"):
                why = "out of memory" if OUT_OF_MEMORY in str(r.get("note")) else "failed"
                ax.text(x(i, j), 0.02, why, rotation=90, ha="center", va="bottom", fontsize=7,
                        transform=ax.get_xaxis_transform())
    ax.set_ylabel("ms per decode step (lower is better" + (", log scale)" if log else ")"))
    ax.set_title(f"generate, random Llama-3-8B shape, {meta.get('layers')} layers, k={meta.get('k')}\n"
                 f"{meta.get('device')}, torch {meta.get('torch')}, {meta.get('date')}", fontsize=10)
    # below the axes: the bars of a 128k cell reach the top, where a legend would cover them
    ax.legend(fontsize=7, ncol=min(5, len(modes)), loc="upper center",
              bbox_to_anchor=(0.5, -0.1), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def replot(json_path: str | Path) -> Path:
    """Redraw generate.png beside a generate.json."""
    data = json.loads(Path(json_path).read_text())
    out = Path(json_path).with_suffix(".png")
    plot_generate(data["rows"], data["meta"], out)
    return out
