"""`topkattn bench`: GPU kernel benchmarks vs PyTorch SDPA and FlexAttention."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the ``bench`` command to the app."""

    @app.command("bench")
    def bench(
        op: str = typer.Option("decode", help="select, decode, sparse, prefill, indexer_decode, generate, ltri (comma list)"),
        ctx: str = typer.Option("8k,32k,128k", help="context lengths, e.g. 8k,32k,128k"),
        k: str = typer.Option("256,2048,8192", help="top-k values"),
        batch: str = typer.Option("1,8", help="batch sizes"),
        out: str = typer.Option("runs/bench", help="output folder (JSON, markdown, PNG)"),
        layers: int = typer.Option(32, help="generate: layers of the random Llama-3-8B-shaped model"),
        modes: str = typer.Option("", help="generate: comma list of modes (dense-default, dense-flash, "
                                  "dense-ranges, topk-kv_group, topk-query_head, topk-lightning; default all)"),
        paths: str = typer.Option("", help="generate: comma list of eager, eager-plain, graph, compiled (default all)"),
    ) -> None:
        """Time the Triton kernels against SDPA dense / FlexAttention on this GPU."""
        from topkattn.bench.run import run_ops
        from topkattn.paths import prepare_out_dir

        prepare_out_dir(out)
        run_ops([o.strip() for o in op.split(",") if o.strip()], ctx, k, batch, out, layers,
                modes or None, paths or None)
