"""Training checkpoints that resume with the same or a different number of processes.

A checkpoint is the folder ``OUT/checkpoints/step-N``:

- ``dcp/``: the trainable weights and the optimizer state, written by
  `torch.distributed.checkpoint` (DCP) from `get_state_dict` (keys are parameter names, not
  positions; sharded FSDP tensors are stored with their global shape, so any number of ranks,
  FSDP, DDP or one process, reads them back with `set_state_dict`);
- ``meta.pt``: step, scheduler, RNG state, data position, the losses so far, the run's config
  and its global batch (rank 0 writes it);
- ``COMPLETE``: written last; a folder without it is unfinished and ignored.

Every rank calls `save_checkpoint` and `load_checkpoint` (DCP is collective). The folder is built
as ``.tmp-step-N`` and renamed, so an interruption never leaves a half checkpoint that looks
whole. Checkpoints of older versions (one ``state.pt``, written by rank 0) are still read.

A run may resume with another number of processes when it keeps the global batch (sequences
per optimizer step = batch size x grad accumulation x processes): two processes with
``--grad-accum 1`` continue as one with ``--grad-accum 2``.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from topkattn.config import parse_k
from topkattn.errors import InputError

CKPT_DIR = "checkpoints"
STATE_FILE = "state.pt"  # the single-file format of older versions
META_FILE = "meta.pt"
DCP_DIR = "dcp"
DONE_MARK = "COMPLETE"
LOG_FILE = "train_log.jsonl"
SUMMARY_FILE = "train_summary.json"

# Fields that must agree between a checkpoint and the run that resumes from it: these of the
# config and these of its `TopKConfig` (the backend may change: it computes the same operator;
# grad_accum and the number of processes may change when their product keeps the global batch).
_RESUME_KEYS = ("data", "model", "max_length", "batch_size", "lr", "seed", "lora", "lora_r",
                "max_steps", "warmup_steps")
_RESUME_TOPK_KEYS = ("k", "k_ratio", "sink", "local", "dense_layers", "min_context",
                     "granularity", "selector")


def resume_view(d: dict) -> dict:
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


def global_batch(cfg: dict, world_size: int) -> int:
    """Sequences per optimizer step of a run with config dict ``cfg`` on ``world_size`` ranks."""
    return int(cfg["batch_size"]) * int(cfg["grad_accum"]) * int(world_size)


def check_same_run(saved: dict, now: dict, where: Path | str) -> None:
    """InputError naming every setting in which config dict ``now`` differs from ``saved``."""
    a, b = resume_view(saved), resume_view(now)
    diff = {k: (a[k], b[k]) for k in b if a[k] != b[k]}
    if diff:
        raise InputError(
            f"{where} was written by a different run "
            f"({', '.join(f'{k}: {x!r} -> {y!r}' for k, (x, y) in diff.items())}); "
            "use another --out or delete its checkpoints")


# --------------------------------------------------------------------------------------------
# RNG


def rng_state() -> dict:
    st = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        with contextlib.suppress(Exception):
            torch.cuda.set_rng_state_all(st["cuda"])


# --------------------------------------------------------------------------------------------
# Folders


def _step_of(p: Path) -> int:
    return int(p.name.split("-")[1])


def latest_checkpoint(out: str | Path) -> Path | None:
    """Newest complete checkpoint folder under ``out/checkpoints`` (None if there is none)."""
    root = Path(out) / CKPT_DIR
    if not root.is_dir():
        return None
    done = [p for p in root.glob("step-*") if (p / DONE_MARK).exists()]
    return max(done, key=_step_of, default=None)


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # LoRA: only the adapters are saved; the frozen base comes from the model itself
    return StateDictOptions(ignore_frozen_params=True)


def _config_dict(cfg) -> dict:
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)


@contextlib.contextmanager
def _quiet_dcp():
    with warnings.catch_warnings():  # DCP without a process group says it runs without one
        warnings.filterwarnings("ignore",
                                message=".*(single process|process group|no_dist|overwrit)")
        yield


def save_checkpoint(out: Path, step: int, model, optimizer, scheduler, data_pos: dict,
                    losses: list[float], cfg, keep: int, *, world_size: int = 1,
                    rng: dict | None = None) -> Path:
    """Write ``out/checkpoints/step-N`` atomically; every rank calls it.

    ``model`` is the unwrapped module (plain, or sharded by FSDP; not the DDP wrapper);
    ``rng`` the RNG state to store (default: now); ``keep`` newest checkpoints are kept.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    root = Path(out) / CKPT_DIR
    final, tmp = root / f"step-{step}", root / f".tmp-step-{step}"
    if _is_main():
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    _barrier()
    msd, osd = get_state_dict(model, optimizer, options=_options())
    with _quiet_dcp():
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp / DCP_DIR))
    _barrier()
    if _is_main():
        d = _config_dict(cfg)
        torch.save({"step": step, "scheduler": scheduler.state_dict(),
                    "rng": rng if rng is not None else rng_state(), "data_pos": data_pos,
                    "losses": list(losses), "config": d, "world_size": world_size,
                    "global_batch": global_batch(d, world_size)}, tmp / META_FILE)
        (tmp / DONE_MARK).write_text(str(step))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        old = sorted((p for p in root.glob("step-*") if p != final), key=_step_of)
        for p in old[: max(0, len(old) - (keep - 1))]:
            shutil.rmtree(p, ignore_errors=True)
    _barrier()
    return final


def load_checkpoint(path: Path, model, optimizer, scheduler, cfg, *,
                    world_size: int = 1) -> dict:
    """Restore weights, optimizer, scheduler and RNG on every rank; returns the metadata
    (step, losses, data_pos, config, ...). InputError when the checkpoint belongs to another
    run or another global batch."""
    path = Path(path)
    if (path / STATE_FILE).exists() and not (path / META_FILE).exists():
        return _load_legacy(path, model, optimizer, scheduler, cfg)
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    meta = torch.load(path / META_FILE, map_location="cpu", weights_only=False)
    now = _config_dict(cfg)
    check_same_run(meta["config"], now, f"checkpoint {path}")
    gb_now, need = global_batch(now, world_size), int(meta["global_batch"])
    if need != gb_now:
        per = int(now["batch_size"]) * world_size
        procs = f"{world_size} process" + ("es" if world_size > 1 else "")
        hint = (f"; with {procs} use --grad-accum {need // per}"
                if need % per == 0 else "")
        raise InputError(
            f"checkpoint {path} was trained with {need} sequences per optimizer step "
            f"({meta['world_size']} processes x grad_accum {meta['config']['grad_accum']} x "
            f"batch {meta['config']['batch_size']}), this run has {gb_now}{hint}")
    msd, osd = get_state_dict(model, optimizer, options=_options())
    state = {"model": msd, "optim": osd}
    try:
        with _quiet_dcp():
            dcp.load(state, checkpoint_id=str(path / DCP_DIR))
    except Exception as e:  # a checkpoint of another model: keys or shapes differ
        raise InputError(f"checkpoint {path} does not match the model: "
                         f"{str(e).strip().splitlines()[-1][:200]}") from e
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optim"], options=_options())
    scheduler.load_state_dict(meta["scheduler"])
    set_rng_state(meta["rng"])
    return meta


def _load_legacy(path: Path, model, optimizer, scheduler, cfg) -> dict:
    """A ``state.pt`` checkpoint of an older version (one process or DDP, rank 0's copy)."""
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    now = _config_dict(cfg)
    check_same_run(state["config"], now, f"checkpoint {path}")
    if state["config"].get("grad_accum") != now["grad_accum"]:
        raise InputError(f"checkpoint {path} was written with grad_accum="
                         f"{state['config'].get('grad_accum')}; this run has {now['grad_accum']}")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing = set(params) ^ set(state["model"])
    if missing:
        raise InputError(f"checkpoint {path} does not match the model "
                         f"(params {sorted(missing)[:3]})")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(state["model"][n].to(p.device, p.dtype))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state


# --------------------------------------------------------------------------------------------
# The log and the finished-run marker


def trim_log(path: Path, upto_step: int) -> int:
    """Keep the lines of the JSONL loss log ``path`` with ``step <= upto_step`` (a torn or
    unreadable line is dropped too), so a resumed run appends no step twice. Returns the number
    of lines dropped."""
    if not path.exists():
        return 0
    keep, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
            ok = isinstance(rec, dict) and int(rec["step"]) <= upto_step
        except (ValueError, KeyError, TypeError):
            ok = False
        if ok:
            keep.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(l + "\n" for l in keep), encoding="utf-8")
        tmp.replace(path)
    return dropped


def finished_summary(out: Path, cfg) -> dict[str, Any] | None:
    """The summary of a finished run of the same configuration in ``out`` (None when the run
    is not finished); InputError when ``out`` holds a finished run of another configuration."""
    p = Path(out) / SUMMARY_FILE
    if not p.is_file():
        return None
    try:
        summary = json.loads(p.read_text())
        saved = summary["config"]
    except (ValueError, KeyError, TypeError):
        return None  # unreadable: not a finished run's summary
    check_same_run(saved, _config_dict(cfg), f"{out} (a finished run)")
    return summary


__all__ = ["CKPT_DIR", "DONE_MARK", "LOG_FILE", "SUMMARY_FILE", "check_same_run",
           "finished_summary", "latest_checkpoint", "load_checkpoint", "resume_view",
           "save_checkpoint", "trim_log"]
