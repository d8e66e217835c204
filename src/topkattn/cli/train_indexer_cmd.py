"""``topkattn train-indexer``: distil a Lightning Indexer from a frozen model's attention."""

from __future__ import annotations

from typing import Optional

import typer


def train_indexer_command(
    out: str = typer.Option("runs/indexer.safetensors", "--out",
                            help="indexer weights (.safetensors, or .pt for torch.save)"),
    model: Optional[str] = typer.Option(None, "--model", help="'default', a Hub id or a folder"),
    tasks: str = typer.Option("niah_multikey,passkey,vartrack,kv", "--tasks",
                              help="synthetic tasks whose prompts are the training text"),
    length: int = typer.Option(1024, "--length", help="prompt length in tokens"),
    samples: int = typer.Option(2, "--samples", help="sequences per task"),
    rows: int = typer.Option(64, "--rows", help="query rows distilled per sequence"),
    heads: int = typer.Option(4, "--heads", help="indexer heads"),
    head_dim: int = typer.Option(64, "--head-dim", help="indexer head width"),
    query_source: str = typer.Option("hidden", "--query-source", help="hidden or query"),
    steps: int = typer.Option(200, "--steps"),
    lr: float = typer.Option(3e-3, "--lr"),
    restrict_topk: int = typer.Option(0, "--restrict-topk",
                                      help="KL over the indexer's top-k set only (0: dense KL)"),
    seed: int = typer.Option(1234, "--seed", help="data seed (keep apart from eval seeds)"),
    device: Optional[str] = typer.Option(None, "--device"),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Fit a DeepSeek-V3.2-style Lightning Indexer (base model frozen, KL to its attention)."""
    from rich.console import Console

    from topkattn.models import load_model
    from topkattn.train.indexer import IndexerTrainConfig, train_indexer

    cfg = IndexerTrainConfig(out=out, tasks=tuple(tasks.split(",")), length=length,
                             samples=samples, rows=rows, n_heads=heads, head_dim=head_dim,
                             query_source=query_source, steps=steps, lr=lr,
                             restrict_topk=restrict_topk, seed=seed)
    from topkattn.paths import prepare_out_file

    prepare_out_file(out, suffixes=(".safetensors", ".pt"))  # before training, not after
    if device is not None:
        from topkattn.devices import check_device

        check_device(device)
    from topkattn.evaluation.context import check_model_lengths

    check_model_lengths(model, [cfg.length], "--length")  # from the config, before the weights
    from topkattn.analysis.resume import RunInterrupted
    from topkattn.train.indexer import check_run, parts_dir

    finished = check_run(cfg)  # other settings in a resumed run: refused before the load
    if finished is not None:
        Console().print(f"{out} is finished ({finished.sequences} sequences, "
                        f"{len(finished.losses)} steps, final KL {finished.losses[-1]:.3f}; "
                        f"its record in {parts_dir(out)}); nothing to do")
        return
    m, tok = load_model(model, device=device)
    try:
        res = train_indexer(cfg, m, tok, progress=not quiet)
    except RunInterrupted as e:
        import sys

        print(str(e), file=sys.stderr)
        raise typer.Exit(130) from None
    resumed = (f" (resumed: {res.recorded} sequences recorded, {res.fitted} steps fitted now)"
               if res.recorded < res.sequences or res.fitted < len(res.losses) else "")
    Console().print(f"indexer: {res.sequences} sequences, {len(res.losses)} steps, KL "
                    f"{res.losses[0]:.3f} -> {res.losses[-1]:.3f} in {res.seconds:.0f}s{resumed}; "
                    f"saved to {res.out} (use --selector lightning:{res.out})")


def register(app: typer.Typer) -> None:
    app.command("train-indexer")(train_indexer_command)
