"""Where the Triton kernels can run: CUDA tensors, or any tensor under Triton's CPU
interpreter (``TRITON_INTERPRET=1``, read once at import like Triton itself does)."""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") in ("1", "true", "True")
HAS_TRITON = importlib.util.find_spec("triton") is not None


def num_sms(device: torch.device, default: int = 132) -> int:
    """Streaming multiprocessors of a CUDA device; ``default`` elsewhere (the interpreter: 132,
    an H100's / H200's count, gives grids split as on those GPUs)."""
    if device.type == "cuda":
        return _cuda_properties(device)[1]
    return default


@functools.lru_cache(maxsize=None)
def _cuda_properties(device: torch.device) -> tuple[int, int]:
    """(compute capability major, SM count) of a CUDA device, read once (a property query
    costs microseconds on the host, and decode launches several kernels per layer)."""
    props = torch.cuda.get_device_properties(device)
    return props.major, props.multi_processor_count


def compute_major(device: torch.device) -> int:
    """Compute capability major of a CUDA device (0 elsewhere)."""
    return _cuda_properties(device)[0] if device.type == "cuda" else 0


def kernels_run_on(t: torch.Tensor) -> bool:
    """Whether the Triton kernels can take tensors like ``t``."""
    return HAS_TRITON and (t.is_cuda or INTERPRET)
