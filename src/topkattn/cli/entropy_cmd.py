"""``topkattn entropy``: per layer/head attention entropy and top-k mass at decode steps."""

from __future__ import annotations

from typing import Optional

import typer

from topkattn.cli.topk_options import KListOpt
from topkattn.evaluation.runner import parse_length


def entropy_command(
    model: str = typer.Option("default", "--model", help="'default', a Hub id or a folder"),
    task: str = typer.Option("niah_multikey", "--task", help="synthetic task name"),
    length: str = typer.Option("1k", "--length", help="prompt length in tokens (1024, 2k)"),
    samples: int = typer.Option(4, "--samples", help="prompts"),
    steps: int = typer.Option(8, "--steps", help="decode steps measured per prompt"),
    seed: int = typer.Option(0, "--seed", help="task seed"),
    compare: Optional[str] = typer.Option(None, "--compare", help="a second model, side by "
                                          "side (e.g. after Top-k SFT)"),
    label: Optional[str] = typer.Option(None, "--label", help="name of --model in outputs"),
    compare_label: Optional[str] = typer.Option(None, "--compare-label"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda"),
    out: str = typer.Option("runs/entropy", "--out", help="output folder"),
    k: KListOpt = "16,64",
) -> None:
    """Shannon entropy of each layer's and head's attention, renormalised top-k entropy and the
    attention mass the top k keys hold (for each --k, integers or ratios); JSON, markdown
    table, heatmap and per-layer plot."""
    from rich.console import Console

    from topkattn.analysis.entropy import (SETTINGS_FILE, EntropyConfig, _settings,
                                           output_paths, run_entropy)
    from topkattn.analysis.resume import RunInterrupted, check_settings

    common = dict(task=task, length=parse_length(length), samples=samples, decode_steps=steps,
                  ks=k, seed=seed, device=device)
    from topkattn.devices import check_device
    from topkattn.paths import prepare_out_dir

    prepare_out_dir(out)  # before any model is loaded
    if device is not None:
        check_device(device)
    cfg = EntropyConfig(model=model, label=label, **common)
    cmp = EntropyConfig(model=compare, label=compare_label, **common) if compare else None
    from pathlib import Path

    check_settings(Path(out) / SETTINGS_FILE, _settings([cfg] + ([cmp] if cmp else [])),
                   "entropy")  # a resumed run's settings must match, before any model loads
    try:
        results = run_entropy(cfg, cmp, out=out)
    except RunInterrupted as e:
        import sys

        print(str(e), file=sys.stderr)
        raise typer.Exit(130) from None
    paths = output_paths(out)
    con = Console()
    for r in results:
        pl = r["per_layer"]
        k0 = next(iter(pl["topk"]))
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        con.print(f"{r['label']}: mean entropy {mean(pl['entropy']):.3f} nats "
                  f"(uniform {r['log_context']:.3f}), top-{k0} mass "
                  f"{mean(pl['topk'][k0]['mass']):.3f}, accuracy {r['accuracy']:.2f}")
    con.print("wrote " + ", ".join(str(p) for p in paths.values()))


def register(app: typer.Typer) -> None:
    app.command("entropy")(entropy_command)
