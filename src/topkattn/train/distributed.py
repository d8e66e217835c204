"""Process-group set-up for multi-GPU (or multi-process CPU) training.

Launch with ``torchrun --nproc_per_node N ...`` (or ``accelerate launch``): both set
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. With a world size
of one nothing is initialised. The backend is NCCL on CUDA and gloo on CPU (what the tests use).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    """Where this process sits: rank, world size, local rank and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialised_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str | None = None) -> DistInfo:
    """Initialise the default process group when launched with WORLD_SIZE > 1.

    ``device`` "cpu" forces CPU (gloo); otherwise CUDA is used when available, one GPU per
    local rank.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    use_cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if use_cuda:
        dev = torch.device(device) if device and ":" in str(device) else torch.device(
            "cuda", local if world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(device or "cpu")
    info = DistInfo(rank, world, local, dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        info.initialised_here = True
    return info


def all_reduce_sum(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of ``x`` over all ranks (``x`` itself when not distributed)."""
    if info.enabled:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def gather_strings(text: str, info: DistInfo) -> list[str]:
    """Every rank's ``text``, in rank order (a one-element list when not distributed)."""
    if not info.enabled:
        return [text]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, text)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def teardown(info: DistInfo) -> None:
    """Destroy the process group if `setup` created it."""
    if info.initialised_here and dist.is_initialized():
        dist.destroy_process_group()
