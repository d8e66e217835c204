"""Native Top-k supervised fine-tuning: SFT with the Top-k operator in the forward pass.

With a sparse ``topk`` (a `TopKConfig` whose phases include ``"prefill"``), the model trains
inside ``topkattn.sparsify(model, cfg.topk)``: every query row of a training sequence attends to its own top-k keys (exact
selection by q.k, plus optional sink/local positions), softmax over the selected keys only, and
gradients reach q, k and v through the selected entries only (Top-k Decoding, arXiv 2512.03494:
training with the operator used at inference). A dense ``topk`` (``TopKConfig(k=None)``, the
default; ``--k full``) is dense SFT with the identical recipe, for comparison.

Recipe: AdamW, linear warm-up then cosine decay
(`transformers.get_cosine_schedule_with_warmup`), gradient accumulation, gradient clipping,
bf16 autocast over fp32 master weights on GPU, gradient checkpointing, full fine-tuning or LoRA
(peft; merged into the saved model). The loss is the token mean over the loss tokens of all
micro-batches of an optimizer step (across ranks too), so accumulation and data parallelism do
not change the objective. Logits are computed only at loss positions (``logits_to_keep``).

Checkpoints (``OUT/checkpoints/step-N``, `topkattn.train.checkpoint`) hold the trainable weights
and optimizer state (torch.distributed.checkpoint), scheduler, RNG states and data position;
rerunning the same command resumes from the newest one, with the same or another number of
processes (same global batch), and the loss log keeps each step once. A rerun of a finished
run does nothing and says so. Ctrl-C (KeyboardInterrupt) in a one-process run saves a
checkpoint of the last finished step first, and `TrainInterrupted` says where it stopped.
The final model is saved in Hugging Face format (``save_pretrained`` + tokenizer) in ``OUT``,
readable by `topkattn.models.load_model` and ``topkattn eval --model OUT``.

Several processes: launch the same command with ``torchrun --nproc_per_node N`` (DDP; NCCL on
GPU, gloo on CPU), or add ``fsdp=True`` (``--fsdp``) to shard parameters, gradients and
optimizer state with FSDP2 (`topkattn.train.fsdp`). Each optimizer step consumes
``batch_size x grad_accum x world_size`` sequences; rank r takes every world-th micro-batch of
the global group.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch

from topkattn.config import TopKConfig
from topkattn.train import distributed as D
from topkattn.train import fsdp as F
from topkattn.train.checkpoint import (  # noqa: F401 (CKPT_DIR ... : names of older versions)
    CKPT_DIR, DONE_MARK, LOG_FILE, STATE_FILE, SUMMARY_FILE, finished_summary, latest_checkpoint,
    load_checkpoint, resume_view, rng_state, save_checkpoint, trim_log)
from topkattn.train.data import IGNORE_INDEX, Example, batch_plan, collate, describe, load_examples
from topkattn.errors import InputError, MissingFileError

_resume_view = resume_view  # the name of older versions


def _dense_sft() -> TopKConfig:
    return TopKConfig(k=None, phases=("decode", "prefill"))


@dataclass
class TrainConfig:
    """Everything a training run needs; validated in ``__post_init__``.

    Attributes:
        data: a JSONL path (chat ``messages`` or ``prompt``/``completion`` records) or a
            synthetic spec ``synthetic:TASK[,TASK][@LENGTH][xN]``.
        out: output folder (final HF model, logs, checkpoints).
        model: None/"default" (embedded SmolLM2-135M-Instruct), a Hub id or a local folder.
        topk: the Top-k attention of the forward pass, whole (k or k_ratio, sink, local,
            dense_layers, min_context, granularity, selector, backend); its phases must
            include "prefill" (a training sequence is one prefill), e.g.
            ``TopKConfig(k=64, phases=("decode", "prefill"))``. Dense (``k=None``, the
            default): dense SFT.
        max_length: longest training sequence in tokens (longer prompts are cut on the left).
        synthetic_length, synthetic_samples: defaults for synthetic specs without @LENGTH / xN.
        batch_size: sequences per micro-batch (per process).
        grad_accum: micro-batches per optimizer step.
        lr, weight_decay, max_grad_norm: AdamW and clipping.
        warmup_steps: linear warm-up steps, then cosine decay to zero at ``max_steps``.
        max_steps: optimizer steps in total.
        save_every: checkpoint every this many steps (0 = only at the end).
        keep_checkpoints: newest checkpoints kept on disk.
        log_every: steps between log lines in ``train_log.jsonl``.
        seed: seeds data order, synthetic training samples (disjoint from eval) and init.
        lora: train LoRA adapters instead of all weights; r, alpha, dropout, target modules.
        precision: "auto" (bf16 autocast on CUDA, fp32 on CPU), "bf16" or "fp32".
        gradient_checkpointing: "auto" (on with CUDA), "on" or "off".
        device: "cpu", "cuda", ... (default: CUDA when available).
        fsdp: with several processes, shard parameters, gradients and optimizer state with
            FSDP2 (per decoder layer, then the root) instead of replicating them (DDP). One
            process trains the unsharded model; checkpoints are the same either way.
    """

    data: str
    out: str
    model: str | None = None
    topk: TopKConfig = field(default_factory=_dense_sft)
    max_length: int = 2048
    synthetic_length: int | None = None
    synthetic_samples: int = 256
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 2e-5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    warmup_steps: int = 10
    max_steps: int = 100
    save_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 1
    seed: int = 0
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    precision: str = "auto"
    gradient_checkpointing: str = "auto"
    device: str | None = None
    fsdp: bool = False

    def __post_init__(self) -> None:
        def need(name, ok, allowed):
            if not ok:
                raise InputError(f"{name}={getattr(self, name)!r} is not allowed: {allowed}")

        need("data", isinstance(self.data, str) and bool(self.data), "a JSONL path or synthetic:...")
        need("out", isinstance(self.out, str) and bool(self.out), "an output folder")
        for name in ("max_length", "batch_size", "grad_accum", "max_steps", "synthetic_samples",
                     "lora_r", "lora_alpha", "keep_checkpoints", "log_every"):
            v = getattr(self, name)
            need(name, isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                 "an integer >= 1")
        for name in ("warmup_steps", "save_every", "seed"):
            v = getattr(self, name)
            need(name, isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                 "an integer >= 0")
        need("warmup_steps", self.warmup_steps <= self.max_steps,
             f"at most max_steps={self.max_steps}")
        if self.synthetic_length is not None:
            need("synthetic_length", isinstance(self.synthetic_length, int)
                 and 1 <= self.synthetic_length <= self.max_length,
                 f"an integer in [1, max_length={self.max_length}]")
        if self.data.startswith("synthetic:"):  # unknown task names: before any model load
            from topkattn.train.data import parse_synthetic

            parse_synthetic(self.data, self.max_length, self.synthetic_samples)
        need("lr", isinstance(self.lr, (int, float)) and 0 < self.lr <= 1, "a float in (0, 1]")
        need("weight_decay", isinstance(self.weight_decay, (int, float))
             and 0 <= self.weight_decay <= 1, "a float in [0, 1]")
        need("max_grad_norm", isinstance(self.max_grad_norm, (int, float))
             and self.max_grad_norm >= 0, "a float >= 0 (0 = no clipping)")
        need("lora_dropout", 0 <= self.lora_dropout < 1, "a float in [0, 1)")
        need("precision", self.precision in ("auto", "bf16", "fp32"), "auto, bf16 or fp32")
        need("gradient_checkpointing", self.gradient_checkpointing in ("auto", "on", "off"),
             "auto, on or off")
        need("fsdp", isinstance(self.fsdp, bool), "True or False")
        if self.fsdp and self.lora:
            raise InputError("fsdp=True with lora=True is not supported (the adapters could not "
                             "be merged into the sharded model): train LoRA with DDP")
        self.lora_targets = tuple(self.lora_targets)
        # the Top-k values themselves were checked by TopKConfig; here only how training uses it
        t = self.topk
        need("topk", isinstance(t, TopKConfig), "a TopKConfig")
        if t.dense and (t.sink or t.local):
            raise InputError(f"sink={t.sink}/local={t.local} need a k, not k=full")
        if not t.dense and "prefill" not in t.phases:
            raise InputError(f"topk.phases={t.phases!r} must include 'prefill': a training "
                             "sequence runs as one prefill (e.g. phases=('decode', 'prefill'))")

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["lora_targets"] = list(self.lora_targets)
        d["topk"] = self.topk.to_json()
        d["k"] = self.topk.k_label  # the k label alone, for readers of older summaries
        return d


@dataclass
class TrainResult:
    """What a run did: per-step losses, tokens/s, where the model is."""

    out: str
    steps: int
    losses: list[float]
    tokens_per_s: float
    resumed_from: int | None
    seconds: float
    already_done: bool = False  # True: ``out`` held this finished run; nothing was trained

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else float("nan")


class TrainInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C; ``str(e)`` is one line: where it stopped, which checkpoint
    a rerun resumes from."""

    def __init__(self, message: str, step: int, checkpoint: str | None):
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint

    def __str__(self) -> str:
        return str(self.args[0])


# --------------------------------------------------------------------------------------------
# Model set-up


def _strip_gguf(model) -> None:
    """Drop the GGUF 'quantization' marker so save_pretrained writes a plain model folder."""
    cfg = model.config
    if getattr(cfg, "quantization_config", None) is not None:
        with contextlib.suppress(AttributeError):
            del cfg.quantization_config
    for attr in ("hf_quantizer",):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
    if getattr(model, "is_quantized", False):
        with contextlib.suppress(AttributeError):
            model.is_quantized = False


def build_model(cfg: TrainConfig, device: torch.device):
    """(model to train, base model to sparsify, tokenizer): fp32 weights, LoRA if asked."""
    from topkattn.models import load_model

    if not cfg.data.startswith("synthetic:") and not Path(cfg.data).is_file():
        # fail before the (slow) model load, not after it
        raise MissingFileError(f"training data file {cfg.data!r} does not exist")
    model, tok = load_model(cfg.model, dtype=torch.float32, device=str(device))
    _strip_gguf(model)
    model.config.use_cache = False
    gc = cfg.gradient_checkpointing == "on" or (
        cfg.gradient_checkpointing == "auto" and device.type == "cuda")
    if gc:
        kw = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
    base = model
    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=list(cfg.lora_targets), task_type="CAUSAL_LM")
        model = get_peft_model(model, lcfg)
    model.train()
    return model, base, tok


def _call_first(obj, names: tuple[str, ...], **kwargs):
    """Call the first method of ``names`` that ``obj`` has (transformers renamed some)."""
    for n in names:
        fn = getattr(obj, n, None)
        if fn is not None:
            return fn(**kwargs)
    raise AttributeError(f"{type(obj).__name__} has none of {names}")


def _trainable(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


# --------------------------------------------------------------------------------------------
# The loop


class _Stream:
    """Global micro-batch groups over epochs; position (epoch, pos) is what resume restores."""

    def __init__(self, examples: list[Example], cfg: TrainConfig, world: int):
        self.examples = examples
        self.lengths = [len(e) for e in examples]
        self.cfg = cfg
        self.group = cfg.grad_accum * world
        self.epoch, self.pos = 0, 0
        self._plan_epoch = -1
        self._plan: list[list[int]] = []
        nb = math.ceil(len(examples) / cfg.batch_size)
        if nb < self.group:
            raise InputError(
                f"{len(examples)} examples make {nb} batches of {cfg.batch_size}, fewer than one "
                f"optimizer step needs (grad_accum x processes = {self.group}); add data or "
                "lower --batch-size/--grad-accum"
            )

    def plan(self) -> list[list[int]]:
        if self._plan_epoch != self.epoch:
            self._plan = batch_plan(self.lengths, self.cfg.batch_size, self.cfg.seed, self.epoch)
            self._plan_epoch = self.epoch
        return self._plan

    def next_group(self) -> list[list[int]]:
        if self.pos + self.group > len(self.plan()):
            self.epoch, self.pos = self.epoch + 1, 0
        g = self.plan()[self.pos:self.pos + self.group]
        self.pos += self.group
        return g

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def restore(self, st: dict) -> None:
        self.epoch, self.pos = int(st["epoch"]), int(st["pos"])


def _loss_sum(model, batch: dict[str, torch.Tensor], autocast) -> torch.Tensor:
    """Summed next-token cross-entropy over the batch's loss tokens (logits only there)."""
    labels = batch["labels"]
    target = labels[:, 1:]
    keep = (target != IGNORE_INDEX).any(0).nonzero().squeeze(-1)  # positions predicting labels
    with autocast():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    logits_to_keep=keep, use_cache=False)
    logits = out.logits.float()  # [B, P, V]
    tgt = target[:, keep]
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=IGNORE_INDEX,
        reduction="sum")


def _progress(enabled: bool):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    return Progress(
        TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
        TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled, transient=False,
    )


def train(cfg: TrainConfig, on_step: Callable[[int, float], None] | None = None,
          progress: bool = True) -> TrainResult:
    """Run (or resume) SFT as configured; returns the losses and where the model was saved.

    ``on_step(step, loss)`` is called after every optimizer step (tests use it to interrupt a
    run). Launched under torchrun, every rank calls this; rank 0 writes files.
    """
    from transformers import get_cosine_schedule_with_warmup

    info = D.setup(cfg.device)
    try:
        return _train(cfg, info, on_step, progress, get_cosine_schedule_with_warmup)
    finally:
        D.teardown(info)


def _train(cfg, info, on_step, progress, make_sched) -> TrainResult:
    t_start = time.time()
    out = Path(cfg.out)
    done = finished_summary(out, cfg)  # before any model is loaded
    if done is not None:
        return TrainResult(str(out), int(done["steps"]), list(done.get("losses") or []),
                           float(done.get("tokens_per_s") or 0.0), done.get("resumed_from"),
                           0.0, already_done=True)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    device = info.device
    model, base, tok = build_model(cfg, device)
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    sharded = cfg.fsdp and info.enabled
    if use_bf16 and not sharded:  # FSDP: its mixed-precision policy casts instead
        def autocast():
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext

    examples = load_examples(tok, cfg.data, cfg.max_length, seed=cfg.seed,
                             synthetic_length=cfg.synthetic_length,
                             synthetic_n=cfg.synthetic_samples)
    stats = describe(examples)
    stream = _Stream(examples, cfg, info.world_size)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

    loop = None
    try:
        with contextlib.ExitStack() as stack:
            # Top-k on before sharding: sparsify reads the model's own (unwrapped) class
            if not cfg.topk.dense:
                stack.enter_context(_sparsify(base, cfg.topk))
            if sharded:
                F.shard_model(model, device, info.world_size, use_bf16)
            params = list(_trainable(model).values())
            decay = [p for p in params if p.dim() >= 2]
            no_decay = [p for p in params if p.dim() < 2]
            optimizer = torch.optim.AdamW(
                [{"params": decay, "weight_decay": cfg.weight_decay},
                 {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95),
                foreach=device.type == "cuda" or None)
            scheduler = make_sched(optimizer, cfg.warmup_steps, cfg.max_steps)

            step, losses, resumed = 0, [], None
            ck = latest_checkpoint(out)
            if ck is not None:
                st = load_checkpoint(ck, model, optimizer, scheduler, cfg,
                                     world_size=info.world_size)
                step, losses, resumed = st["step"], list(st["losses"]), st["step"]
                stream.restore(st["data_pos"])

            fwd = model
            if info.enabled and not sharded:
                from torch.nn.parallel import DistributedDataParallel as DDP

                fwd = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

            if info.is_main:
                out.mkdir(parents=True, exist_ok=True)
                (out / "train_config.json").write_text(json.dumps(
                    {"config": cfg.to_dict(), "data": stats, "world_size": info.world_size,
                     "fsdp": sharded}, indent=2))
                trim_log(out / LOG_FILE, step)  # steps after the checkpoint are trained again
            loop = _Loop(cfg, info, model, fwd, optimizer, scheduler, stream, examples, pad_id,
                         autocast, sharded, step, losses,
                         saved_step=step if ck is not None else -1)
            loop.run(on_step, progress)
        # the sparsify block has exited: the saved config keeps the model's own attention
        step, losses = loop.step, loop.losses
        # every rank's tokens (ranks' batches differ in length) and its peak GPU memory
        tokens = float(D.all_reduce_sum(torch.tensor([loop.tokens_seen], dtype=torch.float64),
                                        info)[0])
        tps = tokens / max(time.time() - loop.t0, 1e-9)
        peak = (round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
                if device.type == "cuda" else None)
        peaks = [json.loads(x) for x in D.gather_strings(json.dumps(peak), info)]
        full = F.full_state_dict(model) if sharded else None
        if sharded:
            digests = [_digest(sorted(full.items()))] if info.is_main else []
        else:
            digests = D.gather_strings(weights_digest(model), info)
        if info.is_main:
            save_final(model, tok, out, cfg, state_dict=full)
            summary = {"steps": step, "final_loss": losses[-1] if losses else None,
                       "first_loss": losses[0] if losses else None, "losses": losses,
                       "tokens_per_s": round(tps, 1), "resumed_from": resumed,
                       "world_size": info.world_size, "fsdp": sharded,
                       "peak_memory_gib_per_rank": peaks, "rank_weight_digests": digests,
                       "data": stats, "config": cfg.to_dict(),
                       "seconds": round(time.time() - t_start, 2)}
            tmp = out / (SUMMARY_FILE + ".tmp")  # written last: it marks a finished run
            tmp.write_text(json.dumps(summary, indent=2))
            tmp.replace(out / SUMMARY_FILE)
    except KeyboardInterrupt as e:
        if loop is None:
            raise
        raise loop.interrupted(out) from e
    D.barrier(info)
    return TrainResult(str(out), step, losses, tps, resumed, time.time() - t_start)


class _Loop:
    """The optimizer steps of one run, and what an interruption needs to save.

    ``boundary`` is the data position and RNG state at the start of the current step: a
    checkpoint written after a Ctrl-C in the middle of a step resumes exactly where an
    uninterrupted run is after ``step`` steps.
    """

    def __init__(self, cfg, info, model, fwd, optimizer, scheduler, stream, examples, pad_id,
                 autocast, sharded, step, losses, saved_step):
        self.cfg, self.info, self.model, self.fwd = cfg, info, model, fwd
        self.optimizer, self.scheduler, self.stream = optimizer, scheduler, stream
        self.examples, self.pad_id = examples, pad_id
        self.autocast, self.sharded = autocast, sharded
        self.step, self.losses, self.saved_step = step, losses, saved_step
        self.params = list(_trainable(model).values())
        self.in_step = False     # between a step's first micro-batch and its optimizer update
        self.consistent = True   # False only while the optimizer updates the weights
        self.boundary = (stream.state(), rng_state())
        self.tokens_seen, self.t0 = 0, time.time()

    def tokens_per_s(self) -> float:
        return self.tokens_seen * self.info.world_size / max(time.time() - self.t0, 1e-9)

    def save(self, out: Path, boundary: tuple[dict, dict] | None = None) -> Path:
        data_pos, rng = boundary or (self.stream.state(), None)
        p = save_checkpoint(out, self.step, self.model, self.optimizer, self.scheduler,
                            data_pos, self.losses, self.cfg, self.cfg.keep_checkpoints,
                            world_size=self.info.world_size, rng=rng)
        self.saved_step = self.step
        return p

    def run(self, on_step, progress: bool) -> None:
        cfg, info, stream = self.cfg, self.info, self.stream
        out = Path(cfg.out)
        log = (out / LOG_FILE).open("a") if info.is_main else None
        try:
            with _progress(progress and info.is_main) as bar:
                task = bar.add_task("train", total=cfg.max_steps, completed=self.step,
                                    loss="-", tps="-")
                while self.step < cfg.max_steps:
                    self.boundary = (stream.state(), rng_state())
                    self.in_step = True
                    loss = self._one_step(stream.next_group())
                    tps = self.tokens_per_s()
                    bar.update(task, completed=self.step, loss=f"{loss:.4f}", tps=f"{tps:,.0f}")
                    if log is not None and (self.step % cfg.log_every == 0
                                            or self.step == cfg.max_steps):
                        log.write(json.dumps({"step": self.step, "loss": loss,
                                              "lr": self.scheduler.get_last_lr()[0],
                                              "tokens_per_s": round(tps, 1),
                                              "epoch": stream.epoch}) + "\n")
                        log.flush()
                    if cfg.save_every and self.step % cfg.save_every == 0 \
                            and self.step < cfg.max_steps:
                        self.save(out)
                    if on_step is not None:
                        on_step(self.step, loss)
        finally:
            if log is not None:
                log.close()

    def _one_step(self, group: list[list[int]]) -> float:
        """One optimizer step over a global micro-batch group; returns its token-mean loss."""
        cfg, info = self.cfg, self.info
        mine = group[info.rank::info.world_size]
        batches = [collate([self.examples[i] for i in b], self.pad_id) for b in mine]
        n_local = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
        n_global = float(D.all_reduce_sum(torch.tensor([n_local], dtype=torch.float64), info)[0])
        self.optimizer.zero_grad(set_to_none=True)
        loss_acc = torch.zeros((), dtype=torch.float64)
        for j, b in enumerate(batches):
            b = {k: v.to(info.device) for k, v in b.items()}
            last = j == len(batches) - 1
            if self.sharded:
                sync = F.no_grad_sync(self.fwd, not last)
            elif info.enabled and not last:
                sync = self.fwd.no_sync()
            else:
                sync = contextlib.nullcontext()
            with sync:
                ls = _loss_sum(self.fwd, b, self.autocast)
                # DDP and FSDP average gradients over ranks: scale so the result is the
                # global token mean of this optimizer step
                (ls * (info.world_size / n_global)).backward()
            loss_acc += ls.detach().double().cpu()
            self.tokens_seen += int(b["attention_mask"].sum())
        loss = float(D.all_reduce_sum(loss_acc, info)) / n_global
        self.consistent = False
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.losses.append(loss)
        self.in_step, self.consistent = False, True
        return loss

    def interrupted(self, out: Path) -> TrainInterrupted:
        """After Ctrl-C: save the last finished step, then say where the run stopped.

        One process only: with several, the ranks may stop at different points (a collective
        save could hang), so the newest periodic checkpoint stands. Nothing is saved while the
        optimizer was updating the weights (they are neither step N nor N+1)."""
        where = f"interrupted at step {self.step} of {self.cfg.max_steps}"
        if not self.info.enabled and self.consistent and self.step > self.saved_step:
            # cut short inside a step: the data position and RNG of that step's start
            p = self.save(out, self.boundary if self.in_step else None)
            return TrainInterrupted(f"{where}; saved checkpoint {p}; rerun the same command "
                                    "to resume", self.step, str(p))
        ck = latest_checkpoint(out)
        if ck is None:
            return TrainInterrupted(f"{where}; no checkpoint yet, a rerun starts at step 0",
                                    self.step, None)
        return TrainInterrupted(f"{where}; rerun the same command to resume from {ck}",
                                self.step, str(ck))


def _digest(named) -> str:
    import hashlib

    h = hashlib.sha256()
    for n, p in named:
        h.update(n.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def weights_digest(model) -> str:
    """SHA-256 of all parameters' bytes (ranks of a DDP run must agree)."""
    return _digest(sorted(model.named_parameters()))


def _sparsify(base, topk: TopKConfig):
    from topkattn.integrations.hf import sparsify

    return sparsify(base, topk)


def save_final(model, tokenizer, out: Path, cfg: TrainConfig,
               state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Save the trained model in HF format (LoRA adapters merged; adapter kept in ``adapter/``).

    ``state_dict``: the full weights gathered from an FSDP-sharded ``model`` (rank 0).
    """
    if cfg.lora:
        model.save_pretrained(out / "adapter")
        model = model.merge_and_unload()
    if getattr(model, "supports_gradient_checkpointing", False):
        _call_first(model, ("activation_checkpointing_disable", "gradient_checkpointing_disable"))
    model.config.use_cache = True
    _strip_gguf(model)
    if state_dict is not None:
        # one entry per tensor: a tied LM head is saved once, under its first name
        names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
        state_dict = {k: v for k, v in state_dict.items() if k in names}
        model.save_pretrained(out, state_dict=state_dict, safe_serialization=True)
    else:
        model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


__all__ = ["TrainConfig", "TrainInterrupted", "TrainResult", "build_model", "latest_checkpoint",
           "load_checkpoint", "save_checkpoint", "train"]
