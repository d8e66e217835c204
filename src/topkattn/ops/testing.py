"""Test hooks of the ops layer: faults the kernels' self-checks must survive, and the launcher
A/B switch. Production code reads `active()` (all off by default) and nothing else::

    from topkattn.ops import testing

    with testing.inject(poison=True, collect_programs=1):
        ...  # the prefill threshold search runs on poisoned scratch with one collect program
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator


@dataclass(frozen=True)
class FaultInjection:
    """What the kernels' host code is asked to break or force (defaults: nothing).

    - ``poison``: the prefill threshold search fills every scratch / state buffer with NaN /
      garbage before its kernels (nothing may read an entry that no kernel wrote).
    - ``estimate_mode``: prefill threshold search faults: 1 = one bin for all keys, 2 = estimate
      far above the k-th score, 3 = the collect kernel gets a bin map shifted by half a bin
      against the one the count kernel used (emulates count / collect scores that differ),
      4 = the collect kernel drops every other band store (emulates scratch writes that are not
      visible to the finalize).
    - ``collect_programs``: persistent collect programs of the prefill search (None: by SM count).
    - ``window_shift``: the row selection's histogram shifts its window by this many bins
      (forces the finish's fallback).
    - ``force_triton_launcher``: `ops/launch.py` always goes through Triton's own launcher
      (an A/B of the direct launch, e.g. scripts/device_launch_overhead.py).
    """

    poison: bool = False
    estimate_mode: int = 0
    collect_programs: int | None = None
    window_shift: int = 0
    force_triton_launcher: bool = False


NONE = FaultInjection()
_active = NONE  # the one mutable slot: set only by `inject`


def active() -> FaultInjection:
    """The hooks in force (`NONE` outside an `inject` block)."""
    return _active


@contextmanager
def inject(**changes) -> Iterator[FaultInjection]:
    """Run a block with the named `FaultInjection` fields set (on top of those in force);
    restores the previous hooks on exit."""
    global _active
    new = replace(_active, **changes)
    prev, _active = _active, new
    try:
        yield new
    finally:
        _active = prev
