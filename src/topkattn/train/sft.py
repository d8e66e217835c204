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

Checkpoints (``OUT/checkpoints/step-N``) hold the trainable weights, optimizer, scheduler, RNG
states and data position; rerunning the same command resumes from the newest one. The final
model is saved in Hugging Face format (``save_pretrained`` + tokenizer) in ``OUT``, readable by
`topkattn.models.load_model` and ``topkattn eval --model OUT``.

Several processes: launch the same command with ``torchrun --nproc_per_node N`` (DDP; NCCL on
GPU, gloo on CPU). Each optimizer step consumes ``batch_size x grad_accum x world_size``
sequences; rank r takes every world-th micro-batch of the global group.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch

from topkattn.config import TopKConfig, parse_k
from topkattn.train import distributed as D
from topkattn.train.data import IGNORE_INDEX, Example, batch_plan, collate, describe, load_examples
from topkattn.errors import InputError, MissingFileError

CKPT_DIR = "checkpoints"
STATE_FILE = "state.pt"
DONE_MARK = "COMPLETE"
# Fields that must agree between a checkpoint and the run that resumes from it: these of the
# config and these of its `TopKConfig` (the backend may change: it computes the same operator).
_RESUME_KEYS = ("data", "model", "max_length", "batch_size", "grad_accum", "lr", "seed", "lora",
                "lora_r", "max_steps", "warmup_steps")
_RESUME_TOPK_KEYS = ("k", "k_ratio", "sink", "local", "dense_layers", "min_context",
                     "granularity", "selector")


def _resume_view(d: dict) -> dict:
    """The settings of a saved `TrainConfig.to_dict` that a resuming run must share."""
    view = {k: d.get(k) for k in _RESUME_KEYS}
    topk = d.get("topk")
    if not isinstance(topk, dict):  # a checkpoint of an older version: k text, sink, local
        k, k_ratio = parse_k(d.get("k", "full"))
        topk = {"k": k, "k_ratio": k_ratio, "sink": d.get("sink", 0), "local": d.get("local", 0),
                "dense_layers": [], "min_context": 0, "granularity": "query_head",
                "selector": "exact"}
    view.update({k: topk.get(k) for k in _RESUME_TOPK_KEYS})
    return view


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
        need("lr", isinstance(self.lr, (int, float)) and 0 < self.lr <= 1, "a float in (0, 1]")
        need("weight_decay", isinstance(self.weight_decay, (int, float))
             and 0 <= self.weight_decay <= 1, "a float in [0, 1]")
        need("max_grad_norm", isinstance(self.max_grad_norm, (int, float))
             and self.max_grad_norm >= 0, "a float >= 0 (0 = no clipping)")
        need("lora_dropout", 0 <= self.lora_dropout < 1, "a float in [0, 1)")
        need("precision", self.precision in ("auto", "bf16", "fp32"), "auto, bf16 or fp32")
        need("gradient_checkpointing", self.gradient_checkpointing in ("auto", "on", "off"),
             "auto, on or off")
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

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else float("nan")


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
# Checkpoints


def _rng_state() -> dict:
    st = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        with contextlib.suppress(Exception):
            torch.cuda.set_rng_state_all(st["cuda"])


def latest_checkpoint(out: str | Path) -> Path | None:
    """Newest complete checkpoint folder under ``out/checkpoints`` (None if there is none)."""
    root = Path(out) / CKPT_DIR
    if not root.is_dir():
        return None
    done = [p for p in root.glob("step-*") if (p / DONE_MARK).exists()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def save_checkpoint(out: Path, step: int, model, optimizer, scheduler, data_pos: dict,
                    losses: list[float], cfg: TrainConfig, keep: int) -> Path:
    """Write ``out/checkpoints/step-N`` atomically (temp folder, then rename)."""
    root = out / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    state = {
        "step": step,
        "model": {n: p.detach().cpu() for n, p in _trainable(model).items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": _rng_state(),
        "data_pos": data_pos,
        "losses": losses,
        "config": cfg.to_dict(),
    }
    torch.save(state, tmp / STATE_FILE)
    (tmp / DONE_MARK).write_text(str(step))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    old = sorted((p for p in root.glob("step-*") if p != final),
                 key=lambda p: int(p.name.split("-")[1]))
    for p in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model, optimizer, scheduler, cfg: TrainConfig) -> dict:
    """Restore weights, optimizer, scheduler and RNG; returns the checkpoint dict."""
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    saved, now = _resume_view(state["config"]), _resume_view(cfg.to_dict())
    diff = {k: (saved[k], now[k]) for k in now if saved[k] != now[k]}
    if diff:
        raise InputError(
            f"checkpoint {path} was written by a different run ({', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in diff.items())}); "
            "use another --out or delete its checkpoints"
        )
    params = _trainable(model)
    missing = set(params) ^ set(state["model"])
    if missing:
        raise InputError(f"checkpoint {path} does not match the model (params {sorted(missing)[:3]})")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(state["model"][n].to(p.device, p.dtype))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    return state


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
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    out = Path(cfg.out)
    device = info.device
    model, base, tok = build_model(cfg, device)
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    if use_bf16:
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
        st = load_checkpoint(ck, model, optimizer, scheduler, cfg)
        step, losses, resumed = st["step"], list(st["losses"]), st["step"]
        stream.restore(st["data_pos"])

    ddp_model = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(
            {"config": cfg.to_dict(), "data": stats, "world_size": info.world_size}, indent=2))
    log = (out / "train_log.jsonl").open("a") if info.is_main else None
    sparse = contextlib.nullcontext() if cfg.topk.dense else _sparsify(base, cfg.topk)
    tokens_seen, t_loop = 0, time.time()
    try:
        with sparse, _progress(progress and info.is_main) as bar:
            task = bar.add_task("train", total=cfg.max_steps, completed=step, loss="-", tps="-")
            while step < cfg.max_steps:
                group = stream.next_group()
                mine = group[info.rank::info.world_size]
                batches = [collate([examples[i] for i in b], pad_id) for b in mine]
                n_local = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
                n_global = float(D.all_reduce_sum(torch.tensor([n_local], dtype=torch.float64),
                                                  info)[0])
                optimizer.zero_grad(set_to_none=True)
                loss_acc = torch.zeros((), dtype=torch.float64)
                for j, b in enumerate(batches):
                    b = {k: v.to(device) for k, v in b.items()}
                    last = j == len(batches) - 1
                    sync = ddp_model.no_sync() if (info.enabled and not last) else contextlib.nullcontext()
                    with sync:
                        ls = _loss_sum(ddp_model, b, autocast)
                        # DDP averages gradients over ranks: scale so the result is the global
                        # token mean of this optimizer step
                        (ls * (info.world_size / n_global)).backward()
                    loss_acc += ls.detach().double().cpu()
                    tokens_seen += int(b["attention_mask"].sum())
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                step += 1
                loss = float(D.all_reduce_sum(loss_acc, info)) / n_global
                losses.append(loss)
                dt = max(time.time() - t_loop, 1e-9)
                tps = tokens_seen * info.world_size / dt
                bar.update(task, completed=step, loss=f"{loss:.4f}", tps=f"{tps:,.0f}")
                if log is not None and (step % cfg.log_every == 0 or step == cfg.max_steps):
                    log.write(json.dumps({"step": step, "loss": loss,
                                          "lr": scheduler.get_last_lr()[0],
                                          "tokens_per_s": round(tps, 1),
                                          "epoch": stream.epoch}) + "\n")
                    log.flush()
                if cfg.save_every and step % cfg.save_every == 0 and step < cfg.max_steps:
                    if info.is_main:
                        save_checkpoint(out, step, model, optimizer, scheduler, stream.state(),
                                        losses, cfg, cfg.keep_checkpoints)
                    D.barrier(info)
                if on_step is not None:
                    on_step(step, loss)
    finally:
        if log is not None:
            log.close()
    tps = tokens_seen * info.world_size / max(time.time() - t_loop, 1e-9)
    digests = D.gather_strings(weights_digest(model), info)
    if info.is_main:
        save_final(model, tok, out, cfg)
        summary = {"steps": step, "final_loss": losses[-1] if losses else None,
                   "first_loss": losses[0] if losses else None, "losses": losses,
                   "tokens_per_s": round(tps, 1), "resumed_from": resumed,
                   "world_size": info.world_size, "rank_weight_digests": digests,
                   "data": stats, "config": cfg.to_dict(),
                   "seconds": round(time.time() - t_start, 2)}
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    D.barrier(info)
    return TrainResult(str(out), step, losses, tps, resumed, time.time() - t_start)


def weights_digest(model) -> str:
    """SHA-256 of all parameters' bytes (ranks of a DDP run must agree)."""
    import hashlib

    h = hashlib.sha256()
    for n, p in sorted(model.named_parameters()):
        h.update(n.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def _sparsify(base, topk: TopKConfig):
    from topkattn.integrations.hf import sparsify

    return sparsify(base, topk)


def save_final(model, tokenizer, out: Path, cfg: TrainConfig) -> None:
    """Save the trained model in HF format (LoRA adapters merged; adapter kept in ``adapter/``)."""
    if cfg.lora:
        model.save_pretrained(out / "adapter")
        model = model.merge_and_unload()
    if getattr(model, "supports_gradient_checkpointing", False):
        _call_first(model, ("activation_checkpointing_disable", "gradient_checkpointing_disable"))
    model.config.use_cache = True
    _strip_gguf(model)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


__all__ = ["TrainConfig", "TrainResult", "build_model", "latest_checkpoint", "train"]
