"""Fixtures of the ops tests: tuning knobs and fault hooks set for one test."""

from contextlib import ExitStack
from dataclasses import replace

import pytest

from topkattn.ops import testing, tuning


class Knobs:
    """``knobs.tune("select", sample=1)``: that family's knobs replaced (on top of the ones in
    force) until the test ends; ``knobs.fault(window_shift=3)``: fault hooks likewise."""

    def __init__(self, stack: ExitStack):
        self._stack = stack

    def tune(self, family: str, **changes):
        base = getattr(tuning.current(), family)
        return self._stack.enter_context(tuning.tuned(**{family: replace(base, **changes)}))

    def fault(self, **changes):
        return self._stack.enter_context(testing.inject(**changes))


@pytest.fixture
def knobs():
    with ExitStack() as stack:
        yield Knobs(stack)
    assert tuning.current() is tuning.DEFAULT and testing.active() is testing.NONE
