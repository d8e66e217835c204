"""Benchmark: Ltri-LLM's two-tier KV cache against dense decoding (random-weight
Llama-3-8B-shaped model, bf16, batch 1).

Per context (default 32k and 128k):
- ``dense``: a dense prefill (chunks of 8192) into a DynamicCache, then eager decode steps with
  flash / memory-efficient SDPA (no cuDNN); KV bytes = the dense cache;
- ``ltri``: `LtriRun.prefill` streams the context in chunks of ``chunk_size`` through the
  model (tier 2 in pinned CPU memory, tier 1 on the GPU: sink + ``budget_tokens`` retrieved
  + recent tokens), then eager decode steps (collaborative retrieval every step, newly
  retrieved spans copied on a side stream); ``ltri-m8``: retrieval every 8 decode steps.
Then ``scale`` contexts (default 256k), Ltri only: contexts whose dense KV cache would not fit
``gpu_kv_budget`` (checked for tier 1 before the model runs); the largest that completes is
reported with its per-token latency.

Reported per row: median ms per decode step (after warm-up), prefill seconds, device KV bytes
(dense: the cache; ltri: tier 1, allocated once, the same for every context), the measured
peak of device memory above the weights while decoding (activations and the span index
included), tier-2 (host) bytes, index bytes, tokens copied to tier 1 per step, and the ratios
to dense at the same context (``kv_ratio`` target <= 0.10 at 128k, ``latency_ratio`` target
<= 2.0). A mode that fails records a note and the run goes on; each row is printed as it
finishes and appended to ``ltri.jsonl``; at the end ``ltri.json``, ``ltri.md`` and
``ltri.png`` are written. On a machine with a per-command time limit, run the contexts in
separate calls (``--ctx 32k``, then ``--ctx 128k``; ``scale=()`` skips the scale contexts):
at 32 layers a 128k streaming prefill takes minutes.

Command: ``topkattn bench --op ltri --ctx 32k,128k --k 2048 --batch 1`` (the budget is 2048
when the k list holds it, else its first value).
"""

from __future__ import annotations

import json
import statistics
import time

import torch

from topkattn.bench.common import env_info, write_results

WARMUP_STEPS = 4
STEPS = 16
DEFAULT_GPU_KV_BUDGET = "2GiB"
COLUMNS = ["ctx", "mode", "step_ms", "latency_ratio", "prefill_s", "kv_device_gb", "kv_ratio",
           "peak_above_weights_gb", "tier2_gb", "index_mb", "moved_per_step", "dense_kv_gb",
           "note"]


def dense_kv_bytes(model, ctx: int) -> int:
    """Bytes of a dense KV cache of ``ctx`` tokens (keys and values, all layers)."""
    c = model.config
    D = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    item = next(model.parameters()).element_size()
    return 2 * c.num_hidden_layers * c.num_key_value_heads * D * item * ctx


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _decode_steps(model, cache, tok, device, steps: int) -> list[float]:
    """ms of each eager decode step from ``cache`` (argmax feeding)."""
    times = []
    for _ in range(steps):
        _sync(device)
        t = time.perf_counter()
        out = model(input_ids=tok, past_key_values=cache, use_cache=True)
        tok = out.logits[:, -1:].argmax(-1)
        _sync(device)
        times.append((time.perf_counter() - t) * 1e3)
    return times


def _peak_reset(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak(device, base: int) -> float | None:
    if torch.device(device).type != "cuda":
        return None
    return (torch.cuda.max_memory_allocated() - base) / 1e9


def dense_row(model, ctx: int, device, steps: int = WARMUP_STEPS + STEPS) -> dict:
    """Dense prefill + eager decode (flash SDPA preferred)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers import DynamicCache

    base = torch.cuda.memory_allocated() if torch.device(device).type == "cuda" else 0
    ids = torch.randint(0, model.config.vocab_size, (1, ctx), device=device)
    cache = DynamicCache()
    _sync(device)
    t = time.perf_counter()
    # flash / memory-efficient SDPA (cuDNN, which rebuilds its plan per key length, left out;
    # measured on the H200: 3.8 ms a step for 4 layers at 32k, against 55 under
    # hf._sdpa_priority)
    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    with torch.no_grad(), sdpa_kernel(backends):
        for s in range(0, ctx, 8192):
            out = model(ids[:, s:s + 8192], past_key_values=cache, use_cache=True,
                        logits_to_keep=1)
        _sync(device)
        prefill_s = time.perf_counter() - t
        _peak_reset(device)
        times = _decode_steps(model, cache, out.logits[:, -1:].argmax(-1), device, steps)
    kv = dense_kv_bytes(model, ctx)
    row = {"mode": "dense", "step_ms": statistics.median(times[WARMUP_STEPS:] or times),
           "prefill_s": prefill_s, "kv_device_gb": kv / 1e9,
           "peak_above_weights_gb": _peak(device, base)}
    del cache, out
    return row


def ltri_row(model, ctx: int, cfg, device, steps: int = WARMUP_STEPS + STEPS) -> dict:
    """Streaming prefill into the two-tier cache + eager decode."""
    from topkattn.ltri.context import ltri_context

    base = torch.cuda.memory_allocated() if torch.device(device).type == "cuda" else 0
    ids = torch.randint(0, model.config.vocab_size, (1, ctx), device=device)
    with torch.no_grad(), ltri_context(model, cfg) as run:
        cache = run.new_cache(ctx + steps + 8)  # gpu_kv_budget is checked here, before work
        _sync(device)
        t = time.perf_counter()
        logits, cache = run.prefill(ids, cache)
        _sync(device)
        prefill_s = time.perf_counter() - t
        moved0 = cache.moved_tokens()
        _peak_reset(device)
        times = _decode_steps(model, cache, logits[:, None].argmax(-1), device, steps)
        moved = (cache.moved_tokens() - moved0) / max(1, steps)
        row = {"step_ms": statistics.median(times[WARMUP_STEPS:] or times),
               "prefill_s": prefill_s, "kv_device_gb": cache.tier1_bytes() / 1e9,
               "peak_above_weights_gb": _peak(device, base),
               "tier2_gb": cache.tier2_bytes() / 1e9,
               "index_mb": cache.state.index.nbytes() / 1e6,
               "moved_per_step": moved, "spans": cache.state.index.n_spans}
    del cache
    return row


def _emit(rows: list[dict], row: dict, out_dir) -> None:
    """Keep, print and append a finished row to ``ltri.jsonl`` (a run cut short keeps it)."""
    from pathlib import Path

    rows.append(row)
    print(json.dumps(row), flush=True)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(out_dir) / "ltri.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def run(ctxs, batches, out_dir, layers: int = 32, budget_tokens: int = 2048,
        gpu_kv_budget: str | int = DEFAULT_GPU_KV_BUDGET, scale=(262144,), sink: int = 4,
        recent: int = 256, chunk_size: int = 512, refresh: tuple[int, ...] = (1, 8),
        model=None, device: str = "cuda") -> dict:
    """The Ltri benchmark (module docstring). ``batches``: batch sizes asked for (Ltri runs
    batch 1; others are recorded as skipped). ``refresh``: one Ltri mode per value of
    ``refresh_every`` (mode ``ltri`` for 1, ``ltri-m<m>`` otherwise; the scale contexts run
    the first). ``model``: a model to use instead of the random Llama-3-8B-shaped one
    (tests); ``device``: where it runs. Returns the JSON written."""
    from topkattn.ltri.config import LtriConfig, parse_bytes

    budget = parse_bytes(gpu_kv_budget)
    cfg = LtriConfig(budget_tokens=budget_tokens, sink=sink, recent=recent,
                     chunk_size=chunk_size, gpu_kv_budget=budget)
    if model is None:
        from topkattn.bench.generate import llama3_8b_random

        model = llama3_8b_random(layers, max(list(ctxs) + list(scale)) + 64)
    layers = model.config.num_hidden_layers
    rows: list[dict] = []
    for B in batches:
        if B != 1:
            _emit(rows, {"ctx": None, "B": B, "mode": "ltri", "note": "Ltri runs batch 1"},
                  out_dir)
    dense_ms: dict[int, float] = {}
    largest = None
    ltri_modes = {("ltri" if m == 1 else f"ltri-m{m}"): m for m in refresh}
    first = next(iter(ltri_modes))
    for ctx, kind in [(c, "cell") for c in ctxs] + [(c, "scale") for c in scale]:
        modes = ("dense", *ltri_modes) if kind == "cell" else (first,)
        for mode in modes:
            row = {"ctx": ctx, "B": 1, "layers": layers, "budget_tokens": budget_tokens,
                   "dense_kv_gb": dense_kv_bytes(model, ctx) / 1e9,
                   "dense_fits_budget": budget is None or dense_kv_bytes(model, ctx) <= budget}
            try:
                row.update(dense_row(model, ctx, device) if mode == "dense" else ltri_row(
                    model, ctx, cfg.with_(refresh_every=ltri_modes[mode]), device))
                if mode == "dense":
                    dense_ms[ctx] = row["step_ms"]
                else:
                    row["kv_ratio"] = row["kv_device_gb"] / row["dense_kv_gb"]
                    if ctx in dense_ms:
                        row["latency_ratio"] = row["step_ms"] / dense_ms[ctx]
                    if largest is None or ctx > largest["ctx"]:
                        largest = {"ctx": ctx, "step_ms": row["step_ms"],
                                   "dense_fits_budget": row["dense_fits_budget"]}
            except torch.OutOfMemoryError:
                row["note"] = "out of GPU memory"
            except Exception as e:  # noqa: BLE001 - one failing mode must not end the run
                row["note"] = f"{type(e).__name__}: {str(e)[:160]}"
            if torch.device(device).type == "cuda":
                torch.cuda.empty_cache()
            _emit(rows, row | {"mode": mode}, out_dir)
    try:
        info = env_info()
    except Exception:  # noqa: BLE001 - triton missing on a CPU machine
        info = {"device": str(device)}
    meta = info | {"op": "ltri", "layers": layers, "budget_tokens": budget_tokens,
                   "gpu_kv_budget": budget, "sink": sink, "recent": recent,
                   "chunk_size": chunk_size, "largest_ltri_context": largest,
                   "ltri_config": cfg.to_json()}
    for r in rows:
        r["label"] = f"{r.get('ctx')} {r.get('mode')}"
    write_results("ltri", rows, COLUMNS, out_dir, meta, plot=("label", "Ltri vs dense decode "
                                                              "(ms per step)", ["step_ms"]))
    return {"meta": meta, "rows": rows}


__all__ = ["DEFAULT_GPU_KV_BUDGET", "dense_kv_bytes", "dense_row", "ltri_row", "run"]
