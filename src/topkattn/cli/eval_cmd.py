"""``topkattn eval``: accuracy of Top-k decoding vs full attention on long-context tasks."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from topkattn.cli.topk_options import (BackendOpt, DecodeGraphsOpt, DenseLayersOpt, GranularityOpt, KListOpt,
                                       LocalOpt, MinContextOpt, SelectorOpt, SinkOpt, topk_sweep)
from topkattn.integrations.kvpress_baseline import PRESSES


def eval_command(
    ctx: typer.Context,
    model: str = typer.Option("default", "--model",
                              help="'default' (embedded SmolLM2-135M-Instruct), a Hub id, a "
                              "model folder or a .gguf file"),
    task: str = typer.Option("passkey,niah_multikey,vartrack,kv", "--task",
                             help="comma-separated tasks: passkey, niah_multikey, vartrack, kv, "
                             "cwe, fwe, longbench_v2:<file>, longbench_v2_cot:<file>, "
                             "helmet:<category>[@<length>]:<file> (docs/benchmark_suites.md)"),
    lengths: str = typer.Option("1k,2k,4k", "--lengths",
                                help="comma-separated prompt lengths in tokens of the model's "
                                "tokenizer, e.g. 1k,2k,4k or 1024,2048"),
    samples: int = typer.Option(10, "--samples",
                                help="samples per task and length (needle depths swept "
                                "evenly over them)"),
    seed: int = typer.Option(0, "--seed", help="task seed: the same seed gives the same "
                             "prompts"),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens",
                                                 help="greedy answer tokens per sample "
                                                 "(default: each task's own budget)"),
    device: Optional[str] = typer.Option(None, "--device",
                                         help="cpu, cuda, ... (default: cuda when available)"),
    out: str = typer.Option("runs/eval", "--out",
                            help="output folder; a rerun with the same folder resumes"),
    threads: Optional[int] = typer.Option(None, "--threads",
                                          help="CPU threads for torch (default: torch's "
                                          "choice; 1 is much faster on a busy shared CPU)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
    report_only: bool = typer.Option(False, "--report-only",
                                     help="only rewrite summary, table and plot from the "
                                     "finished lines of every results file in --out (no model "
                                     "is loaded); --task, --lengths and --k default to the "
                                     "folder's own"),
    shard: str = typer.Option("auto", "--shard",
                              help="evaluate shard i/n of the samples (e.g. 0/2) into "
                              "results.shard-i-of-n.jsonl; 'auto': RANK/WORLD_SIZE of "
                              "torchrun or accelerate launch, else everything"),
    followup_max_new_tokens: Optional[int] = typer.Option(
        None, "--followup-max-new-tokens",
        help="answer tokens of a two-turn task's second turn (longbench_v2_cot; default: the "
        "task's own, 128)"),
    batch_size: int = typer.Option(
        1, "--batch-size",
        help="samples of one task and length prefilled and decoded per forward (left padded; "
        "the answers equal those of 1). On a GPU, where a step of a small model costs mostly "
        "host time, 8 is expected to run close to 8 times faster; settings that cannot batch "
        "(selectors other than exact, Ltri, kvpress) fall back to 1 with a note. A rerun may "
        "change it"),
    press: list[str] = typer.Option(
        [], "--press",
        help="KV-cache compression baselines of NVIDIA kvpress, one more method each: "
        "kvpress:<press>@<compression ratio>, e.g. kvpress:snapkv@0.875 (repeat the option or "
        "give a comma list; presses: " + ", ".join(PRESSES) + "). Needs `pip install --no-deps "
        "kvpress`"),
    k: KListOpt = "8,32,128,full",
    sink: SinkOpt = 0,
    local: LocalOpt = 0,
    dense_layers: DenseLayersOpt = "",
    min_context: MinContextOpt = 0,
    granularity: GranularityOpt = "query_head",
    selector: SelectorOpt = "exact",
    backend: BackendOpt = "auto",
    decode_graphs: DecodeGraphsOpt = True,
) -> None:
    """Accuracy of Top-k decoding vs full attention: JSONL, summary, table and plot."""
    from rich.console import Console
    from rich.markdown import Markdown

    from topkattn.cli import CLIError
    from topkattn.evaluation import EvalConfig, report_only as make_report, run_eval

    from topkattn.evaluation import EvalInterrupted, Shard
    from topkattn.evaluation.context import check_model_lengths
    from topkattn.evaluation.shard import local_device

    topk, ks = topk_sweep(k, sink=sink, local=local, dense_layers=dense_layers,
                          min_context=min_context, granularity=granularity, selector=selector,
                          backend=backend, decode_graphs=decode_graphs)
    from topkattn.integrations.kvpress_baseline import parse_press_list, require_kvpress

    presses = parse_press_list(press)  # names a bad --press, before anything else
    ks = ks + tuple(p.label for p in presses)
    cfg = EvalConfig(
        tasks=tuple(t for t in task.split(",") if t.strip()),
        lengths=tuple(x for x in lengths.split(",") if x.strip()),
        ks=ks, topk=topk, samples=samples, seed=seed, max_new_tokens=max_new_tokens, out=out,
        progress=not quiet, followup_max_new_tokens=followup_max_new_tokens,
        batch_size=batch_size,
    )
    part = Shard.parse(shard)  # names a bad --shard or RANK/WORLD_SIZE
    from topkattn.devices import check_device
    from topkattn.paths import prepare_out_dir

    prepare_out_dir(out)  # before any model is loaded
    device = local_device(device)  # one GPU per process under torchrun / accelerate
    if device is not None:
        check_device(device)
    con = Console()
    if report_only:
        summary = make_report(_saved_settings(ctx, cfg))
        con.print(Markdown(summary.table()))
        con.print(f"reports in {summary.out}")
        return
    if threads is not None:
        if threads < 1:
            raise CLIError(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    check_model_lengths(model, cfg.lengths)  # from the config, before the weights
    if presses:
        require_kvpress()  # one line with the install command, before the weights
    from topkattn.models import load_model

    m, tok = load_model(model, device=device)
    try:
        summary = run_eval(m, tok, cfg, shard=part)
    except EvalInterrupted as e:
        print(str(e), file=sys.stderr)
        raise typer.Exit(130) from None
    if not summary.complete:
        con.print(f"shard {summary.shard} done in {summary.seconds:.0f} s "
                  f"({summary.files['results']}); {summary.missing} results of other shards "
                  "are not in the folder yet: the last shard to finish writes the table, or "
                  f"run `topkattn eval --report-only --out {out}`")
        return
    con.print(Markdown(summary.table()))
    con.print(f"results in {summary.out} ({summary.seconds:.0f} s): "
              + ", ".join(p.name for p in summary.files.values()))


def _saved_settings(ctx: typer.Context, cfg):
    """For ``--report-only``: ``cfg`` with the tasks, lengths, ks and the rest of the folder's
    ``eval_config.json`` wherever the command line left the option at its default."""
    import json
    from pathlib import Path

    from topkattn.evaluation import EvalConfig

    path = Path(cfg.out) / "eval_config.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return cfg
    # (by name: typer may bring its own copy of click's ParameterSource)
    given = {p for p in ("task", "lengths", "k", "samples", "seed")
             if getattr(ctx.get_parameter_source(p), "name", "DEFAULT") not in
             ("DEFAULT", "DEFAULT_MAP")}
    changes = {"out": cfg.out, "progress": cfg.progress}
    for opt, name in (("task", "tasks"), ("lengths", "lengths"), ("k", "ks"),
                      ("samples", "samples"), ("seed", "seed")):
        if opt in given:
            changes[name] = getattr(cfg, name)
    return EvalConfig.from_json(saved, **changes)


def register(app: typer.Typer) -> None:
    """Add ``eval`` to the app."""
    app.command("eval")(eval_command)


if __name__ == "__main__":  # torchrun --nproc_per_node N -m topkattn.cli.eval_cmd eval ...
    from topkattn.cli import main

    main()
