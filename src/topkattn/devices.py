"""The device a command or `models.load_model` runs on, checked before anything is loaded.

`check_device` turns a user's device name into a `torch.device`, or raises `InputError` naming
the value and what is allowed: a name torch does not know ("bogus"), CUDA on a machine without
it, a CUDA index past the devices present, or a device type topkattn does not run on.
"""

from __future__ import annotations

import torch

from topkattn.errors import InputError

ALLOWED = "'cpu', 'cuda' or 'cuda:N'"


def check_device(name: str | torch.device | None) -> torch.device:
    """``name`` as a `torch.device` that exists here; None picks cuda when available, else cpu.

    Raises `InputError` (before any model or tensor is made) for a name that is not a device,
    a device type other than cpu / cuda, CUDA without a CUDA device, or an index out of range.
    """
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(name, torch.device):
        dev = name
    else:
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"device must be {ALLOWED}, got {name!r}")
        try:
            dev = torch.device(name.strip())
        except (RuntimeError, ValueError):
            raise InputError(f"device {name!r} is not a device name; use {ALLOWED}") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise InputError(f"device {name!r}: topkattn runs on cpu or cuda devices; use {ALLOWED}")
    if not torch.cuda.is_available():
        raise InputError(f"device {name!r}: CUDA is not available on this machine (torch "
                         f"{torch.__version__}); use 'cpu'")
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise InputError(f"device {name!r}: this machine has {count} CUDA device(s) "
                         f"(cuda:0 .. cuda:{count - 1})")
    return dev


__all__ = ["check_device"]
