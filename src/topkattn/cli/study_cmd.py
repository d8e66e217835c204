"""``topkattn study``: the four claims of arXiv 2512.03494 in one resumable command."""

from __future__ import annotations

import shlex
import sys
from typing import Optional

import typer


def study_command(
    model: str = typer.Option("default", "--model",
                              help="'default' (embedded SmolLM2-135M-Instruct), a Hub id, a "
                              "model folder or a .gguf file"),
    out: str = typer.Option("runs/study", "--out",
                            help="output folder; a rerun with the same folder and options "
                            "reuses every finished stage"),
    claims: str = typer.Option("1,2,3,4", "--claims", help="comma-separated claims to test "
                               "(1: Top-k vs full, 2: Top-k SFT vs dense SFT, 3: fidelity vs "
                               "accuracy, 4: entropy)"),
    budget: str = typer.Option("quick", "--budget", help="quick (every stage, minutes on a "
                               "CPU) or full (>= 100 samples per cell; for a GPU)"),
    device: Optional[str] = typer.Option(None, "--device",
                                         help="cpu, cuda, cuda:N (default: cuda when "
                                         "available)"),
    seed: int = typer.Option(0, "--seed", help="task seed of every evaluation"),
    lengths: Optional[str] = typer.Option(None, "--lengths", help="override claim 1 and 3 "
                                          "prompt lengths, e.g. 2k,4k"),
    samples: Optional[int] = typer.Option(None, "--samples", help="override every sample "
                                          "count of the budget"),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="override claim 1's synthetic "
                                        "tasks, e.g. passkey,niah_multikey"),
    file_tasks: str = typer.Option("", "--file-tasks", help="LongBench v2 / HELMET tasks "
                                   "added to claim 1 (comma-separated): longbench_v2:PATH, "
                                   "helmet:<category>:PATH or helmet:<category>@<setting>:PATH"),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens",
                                                 help="override every answer budget"),
    steps: Optional[int] = typer.Option(None, "--steps", help="override claim 2's "
                                        "fine-tuning steps"),
    train_seeds: Optional[str] = typer.Option(None, "--train-seeds", help="override claim "
                                              "2's training seeds, e.g. 0,1,2"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="samples per forward "
                                             "of the claim 1 and 2 evaluations (results do "
                                             "not depend on it; default: 8 on CUDA, 1 on a "
                                             "CPU)"),
    stages: Optional[str] = typer.Option(None, "--stages", help="run only these stages "
                                         "(comma-separated shell patterns, e.g. 'claim3-*' "
                                         "or '*-topk-s0'); the others are reused or left "
                                         "pending, so several processes can share --out"),
    shard: Optional[str] = typer.Option(None, "--shard", help="i/n: this process evaluates "
                                        "every n-th sample from the i-th (all but the "
                                        "training stages; "
                                        "processes with 0/n ... n-1/n share --out; the "
                                        "last to finish a stage writes it)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress output"),
    report_only: bool = typer.Option(False, "--report-only", help="only rewrite the report "
                                     "from the finished stages in --out (no model is loaded)"),
) -> None:
    """Test the study's four claims; writes study.md, study.json and plots to --out."""
    from rich.console import Console

    from topkattn.cli import CLIError
    from topkattn.paths import prepare_out_dir
    from topkattn.study import StudyConfig, run_study
    from topkattn.study.runner import report_only as make_report

    if threads is not None and threads < 1:
        raise CLIError(f"--threads must be >= 1, got {threads}")
    cfg = StudyConfig.build(model=model, out=out, claims=claims, budget=budget, seed=seed,
                            device=device, lengths=lengths, samples=samples, tasks=tasks,
                            file_tasks=file_tasks, max_new_tokens=max_new_tokens,
                            steps=steps, seeds=train_seeds, progress=not quiet,
                            batch_size=batch_size, shard=shard)
    command = "topkattn " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    con = Console(quiet=quiet)
    if report_only:
        _show(con, make_report(cfg, command=command))
        return
    from topkattn.models import resolve_model_source

    resolve_model_source(None if model == "default" else model)  # a missing path: one line
    prepare_out_dir(out)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    con.print(f"[bold]study[/] model {cfg.model}, budget {cfg.budget.name}, claims "
              f"{','.join(map(str, cfg.claims))}, out {cfg.out}")
    res = run_study(cfg, log=lambda text: con.print(f"[bold]study[/] {text}"), command=command,
                    stages=stages)
    _show(con, res)


def _show(con, res) -> None:
    for v in res.verdicts:
        con.print(f"claim {v.claim} ({v.text}): [bold]{v.outcome}[/] - {v.reason}")
    con.print(f"report: {res.files['md']} (+ {res.files['json'].name}, "
              + ", ".join(p.name for k, p in res.files.items() if k.startswith("claim")) + ")")
    if res.pending:
        con.print(f"pending stages (the report leaves them out): {', '.join(res.pending)}; "
                  "rerun when they have finished, or --report-only")


def register(app: typer.Typer) -> None:
    """Add ``study`` to the app."""
    app.command("study")(study_command)
