"""``topkattn fidelity``: how close approximate selectors come to exact Top-k, and (with
``--downstream``) how that closeness drives task accuracy."""

from __future__ import annotations

from typing import Optional

import typer

DEFAULT_SELECTORS = "exact,lightning,quest,spans,window,random"


def fidelity_command(
    selector: str = typer.Option(DEFAULT_SELECTORS, "--selector",
                                 help="comma-separated specs name[:value][,key=value...], e.g. "
                                 "lightning:runs/indexer.safetensors, precision:0.75,protect=1"),
    k: int = typer.Option(64, "--k", help="keys per query (exact Top-k reference and selectors)"),
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
) -> None:
    """Per-layer/head precision, attention-mass recall and output error vs exact Top-k."""
    from pathlib import Path

    from rich.console import Console

    from topkattn.analysis import fidelity as F
    from topkattn.evaluation.runner import parse_length
    from topkattn.models import load_model
    from topkattn.tasks import get_task

    con = Console()
    from topkattn.selectors import parse_selector, split_specs

    specs = split_specs(selector)
    if downstream and sweep:
        specs += [s for s in F.default_sweep(protect) if s not in specs]
    for s in specs:
        parse_selector(s)  # fail early on a bad name, key or value
    length = parse_length(length)
    t = get_task(task)
    m, tok = load_model(model, device=device)
    smp = t.samples(tok, length, samples, seed)
    outdir = Path(out)
    fid = F.measure_fidelity(m, tok, [s.prompt for s in smp], k, specs, max_new_tokens=steps,
                             progress=not quiet)
    F.write_json({"task": task, "length": length, "k": k, "samples": samples, "seed": seed,
                  "selectors": fid}, outdir / "fidelity.json")
    title = f"{task}, {length} tokens, k={k}, {samples} samples"
    F.plot_per_layer(fid, outdir / "fidelity_layers.png", title)
    table = F.markdown_table(fid)
    acc = None
    if downstream:
        rows = F.run_downstream(m, tok, t, smp, k, specs, max_new_tokens=max_new_tokens,
                                progress=not quiet)
        acc = {r.selector: r.accuracy for r in rows}
        corr = F.correlate(fid, {l: a for l, a in acc.items() if l != "full"})
        F.write_json({"accuracy": acc, "correlation": corr, "rows": rows},
                     outdir / "downstream.json")
        F.plot_downstream(fid, {l: a for l, a in acc.items() if l != "full"},
                          outdir / "fidelity_downstream.png", title, full=acc.get("full"))
        table = F.markdown_table(fid, acc) + (
            f"\n\nPearson r: accuracy vs precision {corr['r_precision']:.2f}, "
            f"vs mass recall {corr['r_mass_recall']:.2f} ({corr['n']} selectors)")
    (outdir / "fidelity.md").write_text(f"{title}\n\n{table}\n")
    con.print(table)
    con.print(f"results in {outdir}/ (fidelity.json, fidelity.md, fidelity_layers.png"
              + (", downstream.json, fidelity_downstream.png)" if downstream else ")"))


def register(app: typer.Typer) -> None:
    app.command("fidelity")(fidelity_command)
