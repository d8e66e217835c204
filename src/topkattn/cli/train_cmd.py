"""``topkattn train``: native Top-k SFT (or dense SFT with ``--k full``) of a causal LM.

Several GPUs: ``torchrun --nproc_per_node N -m topkattn.cli.train_cmd train ...`` (or
``torchrun --nproc_per_node N $(which topkattn) train ...``) runs the same command under DDP;
add ``--fsdp`` to shard parameters, gradients and optimizer state (FSDP2) instead.
Rerunning a command resumes from its newest checkpoint (also with another number of processes
when ``--grad-accum`` keeps the global batch); rerunning a finished run does nothing.
"""

from __future__ import annotations

from typing import Optional

import typer

from topkattn.cli.topk_options import (BackendOpt, DenseLayersOpt, GranularityOpt, KOpt, LocalOpt,
                                       MinContextOpt, SelectorOpt, SinkOpt, topk_config)


def train_command(
    data: str = typer.Option(..., "--data", help="JSONL file (chat 'messages' or "
                             "'prompt'/'completion' records) or synthetic:TASK[,TASK][@LEN][xN]"),
    out: str = typer.Option(..., "--out", help="output folder (final HF model, checkpoints)"),
    model: Optional[str] = typer.Option(None, "--model", help="'default' (embedded SmolLM2), "
                                        "a Hub id or a local folder"),
    max_length: int = typer.Option(2048, "--max-length", help="longest sequence in tokens"),
    synthetic_length: Optional[int] = typer.Option(None, "--synthetic-length",
                                                   help="prompt length of synthetic data"),
    synthetic_samples: int = typer.Option(256, "--synthetic-samples",
                                          help="samples per synthetic task"),
    batch_size: int = typer.Option(4, "--batch-size", help="sequences per micro-batch"),
    grad_accum: int = typer.Option(1, "--grad-accum", help="micro-batches per step"),
    lr: float = typer.Option(2e-5, "--lr"),
    weight_decay: float = typer.Option(0.0, "--weight-decay"),
    warmup_steps: int = typer.Option(10, "--warmup-steps"),
    max_steps: int = typer.Option(100, "--steps", help="optimizer steps"),
    save_every: int = typer.Option(50, "--save-every", help="checkpoint every N steps (0: none)"),
    seed: int = typer.Option(0, "--seed"),
    lora: bool = typer.Option(False, "--lora/--full-ft", help="LoRA adapters or all weights"),
    lora_r: int = typer.Option(16, "--lora-r"),
    lora_alpha: int = typer.Option(32, "--lora-alpha"),
    precision: str = typer.Option("auto", "--precision", help="auto, bf16 or fp32"),
    gradient_checkpointing: str = typer.Option("auto", "--grad-ckpt", help="auto, on or off"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: auto)"),
    fsdp: bool = typer.Option(False, "--fsdp/--no-fsdp", help="under torchrun: shard "
                              "parameters, gradients and optimizer state (FSDP2) instead of DDP"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
    k: KOpt = "full",
    sink: SinkOpt = 0,
    local: LocalOpt = 0,
    dense_layers: DenseLayersOpt = "",
    min_context: MinContextOpt = 0,
    granularity: GranularityOpt = "query_head",
    selector: SelectorOpt = "exact",
    backend: BackendOpt = "auto",
) -> None:
    """Supervised fine-tuning with Top-k attention in the forward pass (--k full: dense SFT;
    rerun to resume)."""
    from rich.console import Console

    from topkattn.devices import check_device
    from topkattn.paths import prepare_out_dir
    from topkattn.train.sft import TrainConfig, TrainInterrupted, train

    prepare_out_dir(out)  # before the model is loaded
    if device is not None:
        check_device(device)

    # every training sequence is one prefill: Top-k applies there (and at decode, for use after)
    topk = topk_config(k, sink=sink, local=local, dense_layers=dense_layers,
                       min_context=min_context, granularity=granularity, selector=selector,
                       backend=backend, phases=("decode", "prefill"))
    cfg = TrainConfig(
        data=data, out=out, model=model, topk=topk,
        max_length=max_length, synthetic_length=synthetic_length,
        synthetic_samples=synthetic_samples, batch_size=batch_size, grad_accum=grad_accum,
        lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps, max_steps=max_steps,
        save_every=save_every, seed=seed, lora=lora, lora_r=lora_r, lora_alpha=lora_alpha,
        precision=precision, gradient_checkpointing=gradient_checkpointing, device=device,
        fsdp=fsdp,
    )
    import os
    import sys

    main_rank = int(os.environ.get("RANK", "0")) == 0
    if fsdp and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        print("note: --fsdp with one process has nothing to shard; training the whole model "
              "(launch with torchrun --nproc_per_node N to shard)", file=sys.stderr)
    try:
        res = train(cfg, progress=not quiet)
    except TrainInterrupted as e:
        if main_rank:
            print(str(e), file=sys.stderr)
        raise typer.Exit(130) from None
    if main_rank and res.already_done:
        print(f"{res.out} holds this finished run ({res.steps} steps, final loss "
              f"{res.final_loss:.4f}): nothing to do; use another --out to train again")
    elif main_rank:
        con = Console()
        what = "dense SFT" if cfg.topk.dense else f"Top-k SFT (k={cfg.topk.k_label})"
        first = f"{res.losses[0]:.4f}" if res.losses else "-"
        con.print(f"{what}: {res.steps} steps, loss {first} -> {res.final_loss:.4f}, "
                  f"{res.tokens_per_s:,.0f} tok/s" +
                  (f", resumed from step {res.resumed_from}" if res.resumed_from else ""))
        con.print(f"model saved to {res.out} (topkattn eval --model {res.out})")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)


if __name__ == "__main__":  # torchrun --nproc_per_node N -m topkattn.cli.train_cmd train ...
    from topkattn.cli import main

    main()
