"""Sharded evaluation: which samples one process of several evaluates.

The samples of a run are numbered in one fixed order: task by task (as given), length by
length, and within each the task's own sample order (fixed by the seed). Shard ``i`` of ``n``
evaluates the samples whose number is ``i`` modulo ``n`` (round robin, so each shard gets every
task and length in nearly equal parts), and appends its lines to its own file
``results.shard-<i>-of-<n>.jsonl``. The shards of one run are disjoint and together cover every
sample, whatever the order in which they run or finish.

The shard comes from ``--shard i/n`` (or ``run_eval(..., shard=Shard(i, n))``), or from the
environment that ``torchrun`` and ``accelerate launch`` set up (``RANK`` and ``WORLD_SIZE``,
`Shard.from_env`). No process group is needed: the shards share nothing but the output folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from topkattn.errors import InputError


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0 <= index < count)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        for name in ("index", "count"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise InputError(f"shard {name} must be an integer, got {v!r}")
        if self.count < 1 or not 0 <= self.index < self.count:
            raise InputError(f"shard must be i/n with 0 <= i < n, got {self.index}/{self.count}")

    @property
    def sharded(self) -> bool:
        return self.count > 1

    def owns(self, number: int) -> bool:
        """Whether the sample with this running number (module docstring) is this shard's."""
        return number % self.count == self.index

    @property
    def results_name(self) -> str:
        """This shard's results file: ``results.jsonl`` unsharded, else
        ``results.shard-<i>-of-<n>.jsonl``."""
        if not self.sharded:
            return "results.jsonl"
        return f"results.shard-{self.index}-of-{self.count}.jsonl"

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    @classmethod
    def parse(cls, text: "str | Shard | None") -> "Shard":
        """``"1/4"`` -> Shard(1, 4); ``None``, ``""`` or ``"auto"`` -> `from_env`."""
        if isinstance(text, Shard):
            return text
        t = "" if text is None else str(text).strip().lower()
        if t in ("", "auto"):
            return cls.from_env()
        i, sep, n = t.partition("/")
        try:
            if not sep:
                raise ValueError
            return cls(int(i), int(n))
        except ValueError:
            raise InputError(f"--shard must be i/n with 0 <= i < n (e.g. 0/2), or auto, got "
                             f"{text!r}") from None

    @classmethod
    def from_env(cls) -> "Shard":
        """The shard of a process started by torchrun or accelerate launch (``RANK`` of
        ``WORLD_SIZE``); a single shard when they are not set."""
        world, rank = os.environ.get("WORLD_SIZE", "1"), os.environ.get("RANK", "0")
        try:
            return cls(int(rank), int(world))
        except (ValueError, InputError):
            raise InputError(f"RANK={rank!r} and WORLD_SIZE={world!r} in the environment are "
                             "not a shard i/n with 0 <= i < n") from None


def local_device(device: str | None) -> str | None:
    """The device of this process under torchrun/accelerate: ``cuda:<LOCAL_RANK>`` (modulo the
    GPU count, so more processes than GPUs share them) when the device is unset or plain
    ``cuda`` and CUDA is there, else ``device`` unchanged."""
    local = os.environ.get("LOCAL_RANK")
    if local is None or device not in (None, "cuda"):
        return device
    import torch

    if not torch.cuda.is_available():
        return device
    return f"cuda:{int(local) % max(1, torch.cuda.device_count())}"


__all__ = ["Shard", "local_device"]
