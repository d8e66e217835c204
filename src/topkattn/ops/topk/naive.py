"""Pure-PyTorch reference of Top-k attention: the oracle every kernel is tested against.

Definition (docs/design.md; Top-k Decoding from arXiv 2512.03494): for a query q over keys K,
scores s = q.K^T * scale; positions the query may not see (causality, padding) are removed
first; the selected set S is the ``sink`` first and ``local`` most recent visible positions
plus the ``topk`` highest-scoring visible positions among the rest; softmax runs over S only
and the output is sum_{j in S} p_j v_j. Positions outside S get exactly zero weight.

Ties at the k-th score keep exactly ``topk`` keys; among equal scores the lowest position wins.
With ``topk`` >= the number of visible keys the result equals dense (masked) attention.

Shapes: q [B, Hq, Lq, D]; k, v [B, Hkv, Lk, D] with Hq a multiple of Hkv; the Lq queries sit at
the last Lq key positions (query i is at position Lk - Lq + i). Scores and softmax are computed
in fp32; the output has q's dtype.

NaN / inf policy (like `torch.nn.functional.scaled_dot_product_attention`'s math path, tested
against it): a NaN score ranks above every other score (as in `torch.topk`), so a visible key
whose score is NaN, or +inf, is always selected and its row comes out NaN; a NaN in a query
makes its whole row NaN. A score of -inf is a selected key with zero weight. Only the selected
set matters: a NaN or inf in a key or value the query cannot see, or did not select, has no
effect (SDPA's math path lets such a value poison every row through 0 * NaN; its CPU flash path
even returns zeros for a NaN query). A NaN or inf in a selected value propagates as in the sum
p_j v_j (NaN, or +/-inf, in that output entry). A row with nothing selected is zero, lse -inf.
"""

from __future__ import annotations

import math
import numbers

import torch

from topkattn.errors import InputError

GRANULARITIES = ("query_head", "kv_group")


def check_arguments(scale: float | None, sink: int, local: int) -> None:
    """The scalar arguments (host values only: no device synchronisation): ``sink`` and
    ``local`` integers >= 0, ``scale`` None or a finite number > 0."""
    for name, val in (("sink", sink), ("local", local)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 0:
            raise InputError(f"{name} must be an integer >= 0, got {name}={val!r}")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise InputError(f"scale must be None or a finite number > 0, got scale={scale!r}")
        if not (math.isfinite(scale) and scale > 0):
            raise InputError(f"scale must be None or a finite number > 0, got scale={scale!r}")


def check_indices_shape(indices: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> None:
    """``indices`` [B, Hq or Hkv, Lq, n] for q [B, Hq, Lq, D], k [B, Hkv, Lk, D] (shapes only:
    no device synchronisation)."""
    B, Hq, Lq = q.shape[:3]
    Hkv = k.shape[1]
    if (not isinstance(indices, torch.Tensor) or indices.dim() != 4 or indices.shape[0] != B
            or indices.shape[2] != Lq or indices.shape[1] not in (Hq, Hkv)):
        shape = tuple(indices.shape) if isinstance(indices, torch.Tensor) else type(indices).__name__
        raise InputError(f"indices must be [B={B}, Hq={Hq} or Hkv={Hkv}, Lq={Lq}, n]; got {shape}")


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk: int | None) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise InputError(
            f"q, k, v must be 4-D [B, H, L, D]; got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}"
        )
    B, Hq, Lq, D = q.shape
    Bk, Hkv, Lk, Dk = k.shape
    if Bk != B or v.shape[0] != B or v.shape[1] != Hkv or v.shape[2] != Lk or Dk != D:
        raise InputError(
            f"k and v must be [B={B}, Hkv, Lk, D={D}] with matching shapes; got k "
            f"{tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if Hq % Hkv != 0:
        raise InputError(f"query heads ({Hq}) must be a multiple of KV heads ({Hkv})")
    if Lq > Lk:
        raise InputError(f"more queries ({Lq}) than keys ({Lk}): queries sit at the last keys")
    if topk is not None and (isinstance(topk, bool) or not isinstance(topk, int) or topk <= 0):
        raise InputError(f"topk must be a positive integer, got {topk!r}")
    if not (q.dtype == k.dtype == v.dtype):
        raise InputError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise InputError(f"dtype must be float32, float16 or bfloat16; got {q.dtype}")
    if not (q.device == k.device == v.device):
        raise InputError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")


def visible_mask(
    Lq: int, Lk: int, causal: bool, attn_mask: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    """Keys each query may see: bool [B or 1, H or 1, Lq, Lk] (True = visible).

    ``attn_mask`` (bool, True = may attend, broadcastable to [B, H, Lq, Lk]) is intersected
    with causality.
    """
    if causal:
        qpos = torch.arange(Lk - Lq, Lk, device=device).unsqueeze(-1)
        vis = torch.arange(Lk, device=device).unsqueeze(0) <= qpos
    else:
        vis = torch.ones(Lq, Lk, dtype=torch.bool, device=device)
    vis = vis[None, None]
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool:
            raise InputError(f"attn_mask must be bool (True = may attend), got {attn_mask.dtype}")
        vis = vis & attn_mask
    return vis


def forced_mask(vis: torch.Tensor, sink: int, local: int) -> torch.Tensor:
    """Always-kept positions among the visible ones: the first ``sink`` positions and the
    ``local`` most recent visible positions of each row. bool, shape of ``vis``."""
    Lk = vis.shape[-1]
    pos = torch.arange(Lk, device=vis.device)
    forced = torch.zeros_like(vis)
    if sink > 0:
        forced = forced | (pos < sink)
    if local > 0:
        # rank of each visible key counted from the most recent one (0 = newest)
        from_end = vis.flip(-1).cumsum(-1).flip(-1) - 1
        forced = forced | (from_end < local)
    return forced & vis


def select_topk_mask(
    scores: torch.Tensor, topk: int, vis: torch.Tensor, forced: torch.Tensor | None = None
) -> torch.Tensor:
    """Exact top-k selection with deterministic ties.

    Args:
        scores: [..., Lk] selection scores (any float dtype; compared as given).
        topk: keys to select among the visible, non-forced positions of each row.
        vis: bool [..., Lk] (broadcastable): positions that may be selected.
        forced: bool [..., Lk] (broadcastable) positions always kept, or None.

    Returns:
        bool [..., Lk]: forced positions plus the ``topk`` highest-scoring remaining visible
        positions (all of them when fewer remain); among equal scores the lowest position wins.
        A NaN score ranks highest (like +inf, as in `torch.topk`).
    """
    cand = vis if forced is None else vis & ~forced
    s = scores.float()
    # NaN ranks above everything (torch.topk's order), so a NaN score is selected and shows
    s = torch.where(torch.isnan(s), float("inf"), s).masked_fill(~cand, float("-inf"))
    Lk = s.shape[-1]
    if topk >= Lk:
        sel = cand.expand_as(s)
    else:
        thresh = s.topk(topk, dim=-1).values[..., -1:]  # [..., 1] k-th largest value
        above = s > thresh
        tie = s == thresh
        need = topk - above.sum(-1, keepdim=True)
        sel = (above | (tie & (tie.cumsum(-1) <= need))) & cand
    if forced is not None:
        sel = sel | forced
    return sel


def topk_indices(scores: torch.Tensor, topk: int, vis: torch.Tensor | None = None) -> torch.Tensor:
    """Positions of `select_topk_mask`'s set: the ``topk`` highest ``scores`` [..., Lk] among
    visible ones (``vis`` bool, broadcastable; None: all), ties to the lowest position.

    Returns int64 [..., min(topk, Lk)] in ascending position order, -1 where a row has fewer
    visible positions."""
    Lk = scores.shape[-1]
    n = min(topk, Lk)
    vis = torch.ones((), dtype=torch.bool, device=scores.device) if vis is None else vis
    mask = select_topk_mask(scores, n, vis).expand_as(scores)
    pos = torch.arange(Lk, device=scores.device)
    key = torch.where(mask, Lk - pos, 0)  # selected positions, lowest first, then nothing
    vals, idx = key.topk(n, dim=-1)
    return torch.where(vals > 0, idx, -1)


def indices_to_mask(indices: torch.Tensor, Lk: int) -> torch.Tensor:
    """Selected positions [..., n_sel] (entries < 0 are padding) -> bool mask [..., Lk]."""
    if indices.dtype not in (torch.int32, torch.int64):
        raise InputError(f"indices must be int32 or int64, got {indices.dtype}")
    if indices.numel() and int(indices.max()) >= Lk:
        raise InputError(f"indices must be < the number of keys ({Lk}); got {int(indices.max())}")
    idx = indices.long()
    valid = idx >= 0
    mask = torch.zeros(*idx.shape[:-1], Lk + 1, dtype=torch.bool, device=idx.device)
    mask.scatter_(-1, torch.where(valid, idx, Lk), True)
    return mask[..., :Lk]


def topk_selection_mask(
    q: torch.Tensor,
    k: torch.Tensor,
    topk: int | None,
    *,
    causal: bool = True,
    scale: float | None = None,
    sink: int = 0,
    local: int = 0,
    granularity: str = "query_head",
    indices: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The set S each query attends to, as bool [B, Hq, Lq, Lk] (True = selected).

    ``topk=None`` keeps every visible key. ``indices`` [B, Hq or Hkv, Lq, n] replace exact
    selection (entries < 0 are padding); sink/local positions are added to them.
    """
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    vis = visible_mask(Lq, Lk, causal, attn_mask, q.device)
    forced = forced_mask(vis, sink, local) if (sink or local) else None
    if indices is not None:
        if indices.dim() != 4 or indices.shape[0] != B or indices.shape[2] != Lq:
            raise InputError(
                f"indices must be [B={B}, Hq={Hq} or Hkv={Hkv}, Lq={Lq}, n]; got "
                f"{tuple(indices.shape)}"
            )
        if indices.shape[1] not in (Hq, Hkv):
            raise InputError(f"indices head dim must be Hq={Hq} or Hkv={Hkv}, got {indices.shape[1]}")
        sel = indices_to_mask(indices, Lk)
        if sel.shape[1] != Hq:
            sel = sel.repeat_interleave(G, dim=1)
        sel = sel & vis
        return sel | forced if forced is not None else sel.expand(B, Hq, Lq, Lk)
    if topk is None:
        return vis.expand(B, Hq, Lq, Lk)
    if granularity not in GRANULARITIES:
        raise InputError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    scores = _scores(q, k, scale)  # [B, Hq, Lq, Lk] fp32
    if granularity == "kv_group" and G > 1:
        grouped = scores.view(B, Hkv, G, Lq, Lk).sum(2)  # [B, Hkv, Lq, Lk]
        vis_g = vis if vis.shape[1] == 1 else vis.view(B, Hkv, G, Lq, Lk)[:, :, 0]
        forced_g = None
        if forced is not None:
            forced_g = forced if forced.shape[1] == 1 else forced.view(B, Hkv, G, Lq, Lk)[:, :, 0]
        sel = select_topk_mask(grouped, topk, vis_g, forced_g)
        return sel.repeat_interleave(G, dim=1)
    return select_topk_mask(scores, topk, vis, forced)


def _scores(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """fp32 scores [B, Hq, Lq, Lk] with KV heads repeated over their query group."""
    G = q.shape[1] // k.shape[1]
    kk = k.float().repeat_interleave(G, dim=1) if G > 1 else k.float()
    return torch.matmul(q.float(), kk.transpose(-1, -2)) * scale


def topk_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    topk: int | None,
    *,
    causal: bool = True,
    scale: float | None = None,
    sink: int = 0,
    local: int = 0,
    granularity: str = "query_head",
    indices: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
    return_lse: bool = False,
    query_chunk: int = 1024,
):
    """Top-k attention, pure PyTorch (differentiable).

    Args:
        q: [B, Hq, Lq, D]; k, v: [B, Hkv, Lk, D].
        topk: keys kept per query besides sink/local; None (or >= visible keys) = dense.
        causal: query i (at position Lk - Lq + i) sees keys <= its position.
        scale: score scale, default 1/sqrt(D).
        sink, local: always kept: key slots 0 .. sink-1 where visible, and the ``local``
            most recent visible positions.
        granularity: "query_head" or "kv_group" (one set per KV head, summed group scores).
        indices: [B, Hq or Hkv, Lq, n] selected positions (< 0 = padding) replacing exact
            selection, e.g. from an approximate selector.
        attn_mask: bool, broadcastable to [B, Hq, Lq, Lk]; True = may attend (padding).
        return_lse: also return the log-sum-exp of the selected scores, fp32 [B, Hq, Lq].
        query_chunk: queries processed at once (bounds memory to chunk x Lk scores).

    Returns:
        out [B, Hq, Lq, D] in q's dtype (rows with no visible key are zero), and lse when asked.
    """
    check_inputs(q, k, v, topk)
    check_arguments(scale, sink, local)
    if indices is not None:
        check_indices_shape(indices, q, k)
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    outs, lses = [], []
    for start in range(0, Lq, query_chunk):
        stop = min(Lq, start + query_chunk)
        # chunk queries sit at positions Lk - Lq + start .. ; cut keys after the last one
        kv_end = Lk - Lq + stop if causal else Lk
        qc = q[:, :, start:stop]
        kc, vc = k[:, :, :kv_end], v[:, :, :kv_end]
        mc = None
        if attn_mask is not None:
            mc = attn_mask[..., start:stop, :kv_end] if attn_mask.shape[-2] > 1 else attn_mask[..., :kv_end]
        ic = indices[:, :, start:stop] if indices is not None else None
        sel = topk_selection_mask(qc, kc, topk, causal=causal, scale=scale, sink=sink, local=local,
                                  granularity=granularity, indices=ic, attn_mask=mc)
        s = _scores(qc, kc, scale).masked_fill(~sel, float("-inf"))
        lse = torch.logsumexp(s, dim=-1)  # [B, Hq, lq]; -inf where nothing selected
        # NaN / +inf lse (a selected NaN or +inf score) stays: those rows come out NaN
        p = torch.exp(s - torch.where(lse == float("-inf"), 0.0, lse).unsqueeze(-1))
        vv = vc.float().repeat_interleave(G, dim=1) if G > 1 else vc.float()
        outs.append(_weighted_values(p, vv, sel).to(q.dtype))
        lses.append(lse)
    out = torch.cat(outs, dim=2)
    return (out, torch.cat(lses, dim=2)) if return_lse else out


def _weighted_values(p: torch.Tensor, vv: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    """sum_{j in S} p_j v_j: p [B, H, lq, n] (zero outside S), vv [B, H, n, D] fp32, sel the
    set. Values outside S take no part even when NaN / inf (p_j = 0 would make 0 * NaN = NaN);
    non-finite selected values give NaN or +/-inf in their output entries."""
    if vv.device.type == "cpu" and bool(torch.isfinite(vv).all()):  # free on the host
        return torch.matmul(p, vv)
    finite = torch.isfinite(vv)
    out = torch.matmul(p, torch.where(finite, vv, 0.0))
    # how many selected (p > 0) entries of each output column are NaN, +inf, -inf
    taken = (sel & (p > 0)).float()
    flags = torch.cat([torch.isnan(vv), vv == float("inf"), vv == float("-inf")], -1).float()
    n_nan, n_pos, n_neg = torch.matmul(taken, flags).chunk(3, -1)
    out = torch.where(n_neg > 0, float("-inf"), out)
    out = torch.where(n_pos > 0, float("inf"), out)
    return torch.where((n_nan > 0) | ((n_pos > 0) & (n_neg > 0)), float("nan"), out)


def dense_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dense (masked) attention in fp32, out [B, Hq, Lq, D] in q's dtype: the k >= n oracle."""
    return topk_attention_reference(q, k, v, None, causal=causal, scale=scale, attn_mask=attn_mask)
