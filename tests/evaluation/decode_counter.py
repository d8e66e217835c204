"""Count the greedy decodes of an evaluation run (one per result line), and stop it after a
given number of them with KeyboardInterrupt, as Ctrl-C would."""

import topkattn.generation as G
from topkattn.generation import greedy_decode as _REAL_DECODE


def count_decodes(monkeypatch, fail_after=None) -> list:
    """Patch `generation.greedy_decode`; returns a list that grows by one per decode."""
    calls = []

    def counted(*a, **k):
        if fail_after is not None and len(calls) >= fail_after:
            raise KeyboardInterrupt
        calls.append(1)
        return _REAL_DECODE(*a, **k)

    monkeypatch.setattr(G, "greedy_decode", counted)
    return calls
