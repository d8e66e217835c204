"""``topkattn fidelity``: how close approximate selectors come to exact Top-k, and (with
``--downstream``) how that closeness drives task accuracy."""

from __future__ import annotations

from typing import Optional

import typer

from topkattn.cli.topk_options import (BackendOpt, DenseLayersOpt, GranularityOpt, KOpt,
                                       LocalOpt, MinContextOpt, SinkOpt, topk_config)

DEFAULT_SELECTORS = "exact,lightning,quest,spans,window,random"


def fidelity_command(
    selector: str = typer.Option(DEFAULT_SELECTORS, "--selector",
                                 help="comma-separated specs name[:value][,key=value...], e.g. "
                                 "lightning:runs/indexer.safetensors, precision:0.75,protect=1"),
    model: Optional[str] = typer.Option(None, "--model", help="'default', a Hub id or a folder"),
    task: str = typer.Option("niah_multikey", "--task", help="synthetic task"),
    length: str = typer.Option("2k", "--length", help="prompt length in tokens (2048, 2k)"),
    samples: int = typer.Option(8, "--samples", help="task samples"),
    seed: int = typer.Option(0, "--seed"),
    steps: int = typer.Option(8, "--steps", help="decode steps measured per sample"),
    downstream: bool = typer.Option(False, "--downstream/--no-downstream",
                                    help="also evaluate accuracy with every selector and the "
                                    "precision:p sweep, and plot accuracy vs fidelity"),
    sweep: bool = typer.Option(True, "--sweep/--no-sweep", help="with --downstream: add the "
                               "precision:p sweep (p=0.2..1, with and without --protect)"),
    protect: int = typer.Option(1, "--protect", help="top members the protected sweep keeps"),
    max_new_tokens: int = typer.Option(12, "--max-new-tokens", help="answer tokens (downstream)"),
    out: str = typer.Option("runs/fidelity", "--out", help="output folder"),
    device: Optional[str] = typer.Option(None, "--device"),
    quiet: bool = typer.Option(False, "--quiet"),
    k: KOpt = "64",
    sink: SinkOpt = 0,
    local: LocalOpt = 0,
    dense_layers: DenseLayersOpt = "",
    min_context: MinContextOpt = 0,
    granularity: GranularityOpt = "query_head",
    backend: BackendOpt = "auto",
) -> None:
    """Per-layer/head precision, attention-mass recall and output error vs exact Top-k (--k is
    that of the reference and of every selector)."""
    from rich.console import Console

    from topkattn.analysis.fidelity import FidelityConfig, run_fidelity
    from topkattn.models import load_model

    topk = topk_config(k, sink=sink, local=local, dense_layers=dense_layers,
                       min_context=min_context, granularity=granularity, selector=None,
                       backend=backend)
    cfg = FidelityConfig(selectors=selector, topk=topk, task=task, length=length,
                         samples=samples, seed=seed, steps=steps, downstream=downstream,
                         sweep=sweep, protect=protect, max_new_tokens=max_new_tokens, out=out,
                         progress=not quiet)
    from topkattn.devices import check_device
    from topkattn.paths import prepare_out_dir

    prepare_out_dir(out)  # before the model is loaded
    from pathlib import Path

    from topkattn.analysis.fidelity import SETTINGS_FILE, _settings
    from topkattn.analysis.resume import check_settings

    check_settings(Path(out) / SETTINGS_FILE, _settings(cfg), "fidelity")  # a resumed run's
    if device is not None:
        check_device(device)
    from topkattn.evaluation.context import check_model_lengths

    check_model_lengths(model, [cfg.length], "--length")  # from the config, before the weights
    from topkattn.analysis.resume import RunInterrupted

    m, tok = load_model(model, device=device)
    try:
        res = run_fidelity(m, tok, cfg)
    except RunInterrupted as e:
        import sys

        print(str(e), file=sys.stderr)
        raise typer.Exit(130) from None
    con = Console()
    con.print(res.table)
    con.print(f"results in {cfg.out}/ (" + ", ".join(p.name for p in res.files.values()) + ")")


def register(app: typer.Typer) -> None:
    app.command("fidelity")(fidelity_command)
