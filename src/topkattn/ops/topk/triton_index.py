"""Lightning-Indexer scores for one query per sequence, over the key ranges of a cache.

I[b, s] = sum_h w[b, h] * ReLU(q[b, h] . keys[b, s]) for s in [starts[b], ends[b]) of an
indexer key cache keys [B, cap, d] (the query already carries the 1/sqrt(d) scale). Positions
outside the range are left unwritten: the selection (`triton_select.select_rows` with the
same ranges) never reads them. Lengths come from device tensors, so a decode step of growing
length neither synchronises nor recompiles, and it can be captured in a CUDA graph.

Reference: `index_scores_reference` (pure PyTorch, every position written).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from topkattn.errors import InputError
from topkattn.ops.launch import cached_launch
from topkattn.ops.select import _interp  # noqa: F401  (interpreter shim)
from topkattn.ops.topk.triton_env import kernels_run_on
from topkattn.ops.tuning import current

# knobs: `topkattn.ops.tuning.IndexTuning` (read from `current().index` at each launch)


@cached_launch
@triton.jit(do_not_specialize=["cap", "skb"])
def _index_scores_kernel(KEYS, Q, W, OUT, STARTS, ENDS, cap, skb,
                         H: tl.constexpr, HP: tl.constexpr, DI: tl.constexpr,
                         BLOCK: tl.constexpr):
    """OUT[b, s] for one block of s of sequence b = program_id(1); keys rows of DI fp32
    (row stride DI, batch stride skb); Q [B, H, DI], W [B, H], OUT [B, cap] contiguous."""
    b = tl.program_id(1)
    b64 = b.to(tl.int64)
    lo = tl.load(STARTS + b)
    hi = tl.minimum(tl.load(ENDS + b), cap)
    first = tl.program_id(0) * BLOCK
    if first < hi and first + BLOCK > lo:
        s = first + tl.arange(0, BLOCK)
        m = (s >= lo) & (s < hi)
        d = tl.arange(0, DI)
        h = tl.arange(0, HP)
        kt = tl.load(KEYS + b64 * skb + s[:, None].to(tl.int64) * DI + d[None, :],
                     mask=m[:, None], other=0.0).to(tl.float32)  # [BLOCK, DI]
        q = tl.load(Q + b64 * (H * DI) + h[:, None] * DI + d[None, :], mask=h[:, None] < H,
                    other=0.0).to(tl.float32)  # [HP, DI]
        w = tl.load(W + b64 * H + h, mask=h < H, other=0.0).to(tl.float32)  # [HP]
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for j in tl.static_range(H):
            qj = tl.sum(tl.where(h[:, None] == j, q, 0.0), 0)  # [DI]
            wj = tl.sum(tl.where(h == j, w, 0.0), 0)
            acc += wj * tl.maximum(tl.sum(kt * qj[None, :], 1), 0.0)
        tl.store(OUT + b64 * cap + s, acc, mask=m)


def index_scores_reference(q: torch.Tensor, w: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """q [B, H, d] (scaled), w [B, H], keys [B, cap, d] -> fp32 [B, cap] at every position."""
    s = torch.relu(torch.einsum("bhd,bld->bhl", q.float(), keys.float()))
    return torch.einsum("bh,bhl->bl", w.float(), s)


def index_scores(q: torch.Tensor, w: torch.Tensor, keys: torch.Tensor, *, starts: torch.Tensor,
                 ends: torch.Tensor, block: int | None = None,
                 warps: int | None = None) -> torch.Tensor:
    """Index scores fp32 [B, cap] of q [B, H, d], w [B, H] over keys [B, cap, d] (last dim
    contiguous), written at positions [starts[b], ends[b]) only (int32 [B] on the device).
    The Triton kernel where it runs, else the reference (every position written).
    ``block``, ``warps``: the kernel's tiling (default: `IndexTuning` in force;
    `scripts/device_index_tiles.py` sweeps them)."""
    B, cap, d = keys.shape
    if q.dim() != 3 or q.shape[0] != B or q.shape[2] != d or w.shape != q.shape[:2]:
        raise InputError(f"index scores need q [B={B}, H, d={d}] and w [B, H]; got "
                         f"{tuple(q.shape)} and {tuple(w.shape)}")
    if not kernels_run_on(keys) or d & (d - 1):  # tl.arange needs a power-of-two width
        return index_scores_reference(q, w, keys)
    if keys.stride(2) != 1 or keys.stride(1) != d:
        keys = keys.contiguous()
    q, w = q.float().contiguous(), w.float().contiguous()
    out = torch.empty(B, cap, dtype=torch.float32, device=keys.device)
    H = q.shape[1]
    tune = current().index
    block = block or tune.block
    hp = max(2, triton.next_power_of_2(H))
    _index_scores_kernel[(triton.cdiv(cap, block), B)](
        keys, q, w, out, starts, ends, cap, keys.stride(0),
        H=H, HP=hp, DI=d, BLOCK=block, num_warps=warps or tune.warps,
    )
    return out
