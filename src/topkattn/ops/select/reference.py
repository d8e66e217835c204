"""Reference top-k selection (pure PyTorch): the oracle for the Triton selection kernel.

Per row, the positions of the ``k`` largest scores, compared in fp32; among equal scores the
lowest position wins (the same rule as `topkattn.ops.topk.naive.select_topk_mask`).
"""

from __future__ import annotations

import torch

from topkattn.errors import InputError


def topk_select_mask_reference(scores: torch.Tensor, k: int) -> torch.Tensor:
    """bool [R, n]: True at the ``k`` selected positions of each row (all when k >= n)."""
    from topkattn.ops.topk.naive import select_topk_mask

    check_select_args(scores, k)
    return select_topk_mask(scores, k, torch.ones((), dtype=torch.bool, device=scores.device))


def topk_select_reference(scores: torch.Tensor, k: int) -> torch.Tensor:
    """int32 [R, min(k, n)]: selected positions of each row in ascending order."""
    mask = topk_select_mask_reference(scores, k)
    n = scores.shape[-1]
    pos = torch.arange(n, device=scores.device).expand_as(mask)
    # ascending positions: sort selected first keeping order
    key = torch.where(mask, pos, pos + n)
    return key.sort(dim=-1).values[..., : min(k, n)].to(torch.int32)


def check_select_args(scores: torch.Tensor, k: int) -> None:
    if scores.dim() != 2:
        raise InputError(f"scores must be 2-D [rows, n]; got shape {tuple(scores.shape)}")
    if scores.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise InputError(f"scores dtype must be float32, float16 or bfloat16; got {scores.dtype}")
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise InputError(f"k must be a positive integer, got {k!r}")
