"""Run GPU benchmarks without the CLI: ``python -m topkattn.bench.run --op decode ...``.

Same options as ``topkattn bench``; needs a CUDA device."""

from __future__ import annotations

import argparse

from topkattn.errors import InputError

OPS = ("select", "decode", "sparse", "prefill", "indexer_decode", "generate", "ltri")


def _names(spec: str | None) -> tuple[str, ...] | None:
    """A comma list as a tuple of names (None or empty: None, i.e. all)."""
    names = tuple(x.strip() for x in (spec or "").split(",") if x.strip())
    return names or None


def run_ops(ops: list[str], ctx: str, k: str, batch: str, out: str, layers: int = 32,
            modes: str | None = None, paths: str | None = None) -> None:
    """Run each benchmark in ``ops`` (names in `OPS`; "indexer_decode" is the Lightning
    Indexer decode step: index scores, top-k selection, sparse attention; "generate" is
    end-to-end generation on a random model of ``layers`` Llama-3-8B layers, restricted to
    the comma lists ``modes`` and ``paths`` when given; "ltri" is Ltri-LLM's two-tier cache
    against dense decoding, the first k being its retrieved-token budget)."""
    import importlib

    import torch

    from topkattn.bench.common import parse_sizes

    bad = [o for o in ops if o not in OPS]
    if bad:
        raise InputError(f"--op must be among {OPS}; got {bad}")
    if isinstance(layers, bool) or not isinstance(layers, int) or layers <= 0:
        raise InputError(f"--layers must be a positive integer, got {layers!r}")
    if (modes or paths) and "generate" not in ops:
        raise InputError("--modes and --paths choose what the generate benchmark runs; add "
                         "generate to --op or leave them out")
    if "generate" in ops:
        from topkattn.bench.generate import mode_table

        mode_table(2048, _names(modes), _names(paths))  # unknown names fail here
    ctxs, ks, batches = parse_sizes(ctx), parse_sizes(k), parse_sizes(batch)  # bad sizes first
    if not torch.cuda.is_available():
        raise InputError("benchmarks need a CUDA device (none found)")
    for op in ops:
        if op == "ltri":  # Ltri's two-tier cache vs dense decode; k (2048 if listed): budget
            from topkattn.bench.ltri import run as run_ltri

            run_ltri(ctxs, batches, out, layers=layers,
                     budget_tokens=2048 if 2048 in ks else ks[0])
            continue
        extra = ({"layers": layers, "modes": _names(modes), "paths": _names(paths)}
                 if op == "generate" else {})
        importlib.import_module(f"topkattn.bench.{op}").run(ctxs, ks, batches, out, **extra)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--op", default="decode", help="comma list of " + ",".join(OPS))
    p.add_argument("--ctx", default="8k,32k,128k")
    p.add_argument("--k", default="256,2048,8192")
    p.add_argument("--batch", default="1,8")
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--layers", type=int, default=32, help="layers of the generate benchmark's model")
    p.add_argument("--modes", default=None, help="generate: comma list of modes (default all)")
    p.add_argument("--paths", default=None, help="generate: comma list of eager, eager-plain, graph, compiled")
    a = p.parse_args(argv)
    run_ops([o.strip() for o in a.op.split(",") if o.strip()], a.ctx, a.k, a.batch, a.out, a.layers,
            a.modes, a.paths)


if __name__ == "__main__":
    main()
