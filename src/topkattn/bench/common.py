"""Shared benchmark helpers: GPU timing (CUDA events via triton.testing.do_bench, median),
size parsing, device/version info and writing JSON + markdown + PNG results."""

from __future__ import annotations

import datetime as _dt
import json
import platform
import time
from pathlib import Path
from typing import Callable

import torch

from topkattn.errors import InputError

LLAMA3_8B = {"Hq": 32, "Hkv": 8, "D": 128, "dtype": torch.bfloat16}


def decode_inputs(B: int, n: int, device: str = "cuda") -> tuple[torch.Tensor, ...]:
    """Random decode inputs at Llama-3-8B attention shapes: q [B, Hq, 1, D] and a KV cache k, v
    [B, Hkv, n, D], all in LLAMA3_8B's dtype."""
    Hq, Hkv, D, dt = LLAMA3_8B["Hq"], LLAMA3_8B["Hkv"], LLAMA3_8B["D"], LLAMA3_8B["dtype"]
    q = torch.randn(B, Hq, 1, D, device=device, dtype=dt)
    k = torch.randn(B, Hkv, n, D, device=device, dtype=dt)
    v = torch.randn(B, Hkv, n, D, device=device, dtype=dt)
    return q, k, v


def parse_sizes(text: str) -> list[int]:
    """'8k,32k,128k' -> [8192, 32768, 131072]; '1,8' -> [1, 8]. ValueError on bad items."""
    out = []
    for item in str(text).split(","):
        t = item.strip().lower()
        if not t:
            continue
        mult = 1
        if t.endswith("k"):
            mult, t = 1024, t[:-1]
        elif t.endswith("m"):
            mult, t = 1024 * 1024, t[:-1]
        if not t.isdigit() or int(t) <= 0:
            raise InputError(f"size {item!r} must be a positive integer, optionally with k/m suffix")
        out.append(int(t) * mult)
    if not out:
        raise InputError(f"no sizes in {text!r}")
    return out


def time_ms(fn: Callable[[], object], warmup: int = 25, rep: int = 100) -> float:
    """Median milliseconds of ``fn`` on the GPU (CUDA events; warm-up and repeat in ms)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def host_us(fn: Callable[[], object], n: int = 100, repeats: int = 5) -> float:
    """Host microseconds per call of ``fn``: the best of ``repeats`` means over ``n`` calls,
    synchronised between repeats so that the GPU queue never fills."""
    best = float("inf")
    for _ in range(repeats):
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) * 1e6 / n)
        torch.cuda.synchronize()
    return best


def time_graph_ms(fn: Callable[[], object], warmup: int = 25, rep: int = 100) -> float | None:
    """Median ms of replaying ``fn`` captured in a CUDA graph (no host launch gaps), or None
    when capture fails. ``fn`` is run a few times first (compilation)."""
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=s):  # the warm-up stream: its cached scratch is reused
            fn()
        return time_ms(g.replay, warmup, rep)
    except Exception as e:  # pragma: no cover
        print(f"graph capture failed: {e}")
        return None


def copy_bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth (read + write bytes / time) in GB/s, measured now."""
    a = torch.empty(nbytes // 2, dtype=torch.int16, device="cuda").random_()
    b = torch.empty_like(a)
    ms = time_ms(lambda: b.copy_(a))
    del a, b
    return 2 * nbytes / (ms * 1e-3) / 1e9


def env_info() -> dict:
    """Device name, versions, date."""
    import triton

    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    return info


def fmt(x: float | None, nd: int = 3) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def write_results(op: str, rows: list[dict], columns: list[str], out_dir: str | Path,
                  meta: dict, plot: tuple[str, str, list[str]] | None = None) -> Path:
    """Write ``{op}.json`` (meta + rows), ``{op}.md`` (table of ``columns``) and, when
    ``plot=(x, title, y_columns)`` is given and matplotlib is available, ``{op}.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{op}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(
            fmt(r.get(c)) if isinstance(r.get(c), float) else str(r.get(c, "-")) for c in columns) + " |")
    md = f"### {op}\n\n{meta.get('device', '')}, torch {meta.get('torch')}, triton " \
         f"{meta.get('triton')}, {meta.get('date')}\n\n" + "\n".join(lines) + "\n"
    (out / f"{op}.md").write_text(md)
    if plot is not None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            x, title, ys = plot
            fig, ax = plt.subplots(figsize=(7, 4))
            labels = [str(r[x]) for r in rows]
            width = 0.8 / max(len(ys), 1)
            for j, y in enumerate(ys):  # grouped bars: the cases are categories, not a series
                ax.bar([i + (j - (len(ys) - 1) / 2) * width for i in range(len(rows))],
                       [r.get(y) or float("nan") for r in rows], width, label=y)
            ax.set_xticks(range(len(rows)))
            ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
            vals = [r[y] for r in rows for y in ys if isinstance(r.get(y), (int, float)) and r[y] > 0]
            log = bool(vals) and max(vals) > 20 * min(vals)  # bars on a log axis only when needed
            ax.set_ylabel("ms (lower is better" + (", log scale)" if log else ")"))
            if log:
                ax.set_yscale("log")
            ax.set_title(f"{title}\n{meta.get('device', '')}, torch {meta.get('torch')}, "
                         f"{meta.get('date')}", fontsize=10)
            ax.legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(out / f"{op}.png", dpi=110)
            plt.close(fig)
        except ImportError:  # pragma: no cover
            pass
    print(md, flush=True)
    return out / f"{op}.md"
