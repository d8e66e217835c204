"""Helpers shared by the approximate selectors (not public API).

- `check_int`, `check_float`: validation of selector fields (strings from a spec parsed).
- `PrefixStore`: per-position state kept in ``ctx.store`` next to the model's KV cache and
  validated against the cached keys, so that branches decoded from one deep-copied prefill
  (the evaluation runner does this) never read another branch's entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from topkattn.errors import InputError


#: dims of the first KV head's key used as a per-position fingerprint
FINGERPRINT_DIMS = 4


def check_int(name: str, value, lo: int = 0) -> int:
    """``value`` as an int >= ``lo`` (strings from a spec like ``"quest:32"`` are parsed)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        v = int(value)
        if isinstance(value, float) and v != value:
            raise TypeError
    except (TypeError, ValueError):
        raise InputError(f"{name} must be an integer >= {lo}, got {value!r}") from None
    if v < lo:
        raise InputError(f"{name} must be an integer >= {lo}, got {value!r}")
    return v


def check_float(name: str, value, lo: float, hi: float) -> float:
    """``value`` as a float in [lo, hi] (strings are parsed)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number in [{lo}, {hi}], got {value!r}") from None
    if not (lo <= v <= hi):
        raise InputError(f"{name} must be a number in [{lo}, {hi}], got {value!r}")
    return v


def fingerprint(k: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """A cheap per-position fingerprint of the cached keys: k[:, 0, start:stop, :4] (fp32).

    Keys of a position differ between branches that decoded different tokens, and are
    bit-identical within one cache, so comparing fingerprints tells which stored positions are
    still valid. Shape [B, n, FINGERPRINT_DIMS].
    """
    return k[:, 0, start:stop, :FINGERPRINT_DIMS].float()


@dataclass
class PrefixStore:
    """Per-position tensors for positions 0..n-1 of one layer's cache, plus fingerprints.

    ``data`` is [B, n, ...]; ``fp`` is [B, n, FINGERPRINT_DIMS]. `valid_prefix` returns how
    many leading positions still match the current keys; callers truncate to it and compute the
    rest from what they have (recompute missing).
    """

    data: torch.Tensor
    fp: torch.Tensor

    @property
    def n(self) -> int:
        return self.data.shape[1]

    def valid_prefix(self, fp_now: torch.Tensor) -> int:
        """Leading stored items whose fingerprint equals ``fp_now`` [B, m, F] (the current
        keys' fingerprints of the same items)."""
        n = min(self.n, fp_now.shape[1])
        if n == 0 or self.data.shape[0] != fp_now.shape[0]:
            return 0
        same = (self.fp[:, :n] == fp_now[:, :n]).all(-1).all(0)  # [n]
        bad = (~same).nonzero()
        return n if bad.numel() == 0 else int(bad[0])

    @classmethod
    def empty(cls, B: int, item_shape: tuple[int, ...], device, dtype=torch.float32) -> "PrefixStore":
        return cls(torch.zeros(B, 0, *item_shape, device=device, dtype=dtype),
                   torch.zeros(B, 0, FINGERPRINT_DIMS, device=device))

    def truncate(self, n: int) -> None:
        self.data = self.data[:, :n]
        self.fp = self.fp[:, :n]

    def append(self, data: torch.Tensor, fp: torch.Tensor) -> None:
        self.data = torch.cat([self.data, data], dim=1)
        self.fp = torch.cat([self.fp, fp], dim=1)

