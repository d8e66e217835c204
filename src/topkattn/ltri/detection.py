"""Triangle span detection (Ltri-LLM, arXiv 2412.04757, section 3).

Attention maps of a prefill are made of local "triangles": the tokens of a semantic span
attend to the earlier tokens of the same span. A candidate span [x, y] scores

    T(x, y) = sum over heads h, x <= j < i <= y of (A_h[i, j] - threshold),

its (strictly) lower triangle of the attention map minus a threshold per cell (the diagonal,
each token's attention to itself, is high at every token and says nothing about where a span
ends, so it is left out); non-maximum suppression
keeps non-overlapping spans of high score. Only cells within ``max_span`` of the diagonal
enter a span, so detection needs the *band* of the map, ``band[i, d] = sum_h A_h[i, i - d]``
for d < max_span, never the n x n map: `band_attention` computes it from q and k in blocks of
query rows (and of heads), the softmax normaliser of each row from all its visible keys.

Steps: `band_attention` -> `triangle_scores` -> `nms_spans` (`detect_spans` chains them).
Reference (loop) implementations are in `topkattn.ltri.naive`.
"""

from __future__ import annotations

import numpy as np
import torch

#: elements of one block of scores [heads, rows, keys] (bounds detection's scratch memory)
MAX_BLOCK_ELEMS = 2**25


@torch.no_grad()
def band_attention(q: torch.Tensor, k: torch.Tensor, scale: float, width: int,
                   q_start: int | None = None, k_norm: torch.Tensor | None = None,
                   norm_visible: torch.Tensor | None = None, heads: tuple[int, ...] = (),
                   chunk: int = 1024, max_elems: int = MAX_BLOCK_ELEMS) -> torch.Tensor:
    """The attention band of one sequence, summed over heads, computed block by block.

    Args:
        q: [Hq, Lq, D] queries at key positions q_start .. q_start + Lq - 1 of ``k``.
        k: [Hkv, Lk, D] keys at consecutive positions 0 .. Lk - 1 (a prefix of the context,
            or a local window; positions are relative to its first key). Hq % Hkv == 0.
        scale: score scale.
        width: band width (max_span).
        q_start: position of the first query in ``k`` (default Lk - Lq: the last Lq keys).
        k_norm: [Hkv, N, D] keys the softmax normaliser runs over (default: ``k``, causal).
            Streaming prefill passes the keys the chunk attends to (tier 1).
        norm_visible: bool [Lq, N], which of ``k_norm`` each query sees (default causal over
            ``k``; required with ``k_norm``).
        heads: query heads summed (default all).
        chunk: query rows per block (shrunk so a block holds at most ``max_elems`` scores).

    Returns:
        fp32 [Lq, width]: band[r, d] = sum_h softmax_h(q_r . k / scale)[q_start + r - d],
        0 where that position is before k's first key.
    """
    Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[0], k.shape[1]
    G = Hq // Hkv
    q_start = Lk - Lq if q_start is None else q_start
    if q_start < 0 or q_start + Lq > Lk:
        raise ValueError(f"queries at [{q_start}, {q_start + Lq}) do not fit {Lk} keys")
    hs = list(heads) if heads else list(range(Hq))
    causal = k_norm is None
    kn = k if causal else k_norm
    N = kn.shape[1]
    out = torch.zeros(Lq, width, dtype=torch.float32, device=q.device)
    rows = max(1, min(chunk, Lq))
    hgroup = max(1, min(len(hs), max_elems // max(1, rows * N)))
    if hgroup == 1:
        rows = max(1, min(rows, max_elems // max(1, N)))
    ar_w = torch.arange(width, device=q.device)
    for r0 in range(0, Lq, rows):
        r1 = min(Lq, r0 + rows)
        c = r1 - r0
        i_abs = q_start + torch.arange(r0, r1, device=q.device)  # positions in k
        if causal:
            vis = torch.arange(N, device=q.device)[None, :] <= i_abs[:, None]
        else:
            vis = norm_visible[r0:r1]
        lo = max(0, q_start + r0 - width + 1)  # local keys of the band: [lo, q_start + r1)
        kl_idx = i_abs[:, None] - ar_w[None, :]  # [c, width] positions i - d
        valid = kl_idx >= 0
        rel = (kl_idx - lo).clamp(min=0)
        for g0 in range(0, len(hs), hgroup):
            hsel = hs[g0:g0 + hgroup]
            hidx = torch.tensor(hsel, device=q.device)
            qg = q[hidx, r0:r1].float()  # [h, c, D]
            kvh = hidx // G
            s = torch.matmul(qg, kn[kvh].float().transpose(-1, -2)) * scale  # [h, c, N]
            s = s.masked_fill(~vis[None], float("-inf"))
            lse = torch.logsumexp(s, dim=-1)  # [h, c]
            del s
            loc = torch.matmul(qg, k[kvh, lo:q_start + r1].float().transpose(-1, -2)) * scale
            band_logit = loc.gather(-1, rel[None].expand(len(hsel), c, width))
            p = torch.exp(band_logit - lse[..., None]).masked_fill(~valid[None], 0.0)
            out[r0:r1] += p.sum(0)
    return out


def triangle_scores(band: torch.Tensor, threshold: float, max_span: int) -> torch.Tensor:
    """Scores of every candidate span from a band.

    band [L, W] (W >= max_span; row i: attention of position i to positions i - d, summed
    over heads); threshold: subtracted from every cell (already multiplied by the number of
    heads summed). Returns fp32 [L, max_span]: scores[x, l - 1] = T(x, x + l - 1) (the cells
x <= j < i <= x + l - 1), -inf where
    the span runs past L.
    """
    L = band.shape[0]
    M = max_span
    bd = band[:, :M].float() - threshold
    bd[:, 0] = 0.0  # the diagonal is no evidence of a span
    ar = torch.arange(M, device=band.device)
    # a cell (i, i - d) with i - d < 0 is in no span [x >= 0, ...]: its value never enters
    rd = bd.cumsum(1)  # rd[i, d] = sum_{j = i - d}^{i} (A[i, j] - thr)
    pad = torch.cat([rd, rd.new_zeros(M, M)], 0)
    rows = torch.arange(L, device=band.device)[:, None] + ar[None, :]  # x + t
    g = pad[rows, ar[None, :].expand(L, M)]  # g[x, t] = rd[x + t, t]
    t = g.cumsum(1)
    return t.masked_fill(rows >= L, float("-inf"))


def nms_spans(scores: torch.Tensor, min_span: int, max_span: int, offset: int = 0
              ) -> list[tuple[int, int]]:
    """Non-maximum suppression of candidate spans, then gaps filled.

    scores [L, max_span] from `triangle_scores`. Each start x proposes its best length in
    [min_span, max_span]; proposals with a positive score are taken greedily, best first,
    when they overlap no taken span. Positions no span covers become spans of at most
    max_span tokens, so the result tiles [0, L). Returns sorted (start, end) pairs (end
    exclusive) shifted by ``offset``.
    """
    L = scores.shape[0]
    if L == 0:
        return []
    lo = min(min_span, L) - 1
    sub = scores[:, lo:max_span]
    best, arg = sub.max(1)
    length = (arg + lo + 1).cpu().numpy()
    best = best.cpu().numpy()
    order = np.argsort(-best, kind="stable")
    taken = np.zeros(L + 1, dtype=bool)
    spans: list[tuple[int, int]] = []
    for x in order:
        s = best[x]
        if not s > 0:
            break
        x = int(x)
        e = x + int(length[x])
        if e > L or taken[x:e].any():
            continue
        taken[x:e] = True
        spans.append((x, e))
    spans.sort()
    out: list[tuple[int, int]] = []
    pos = 0
    for a, b in spans + [(L, L)]:
        while pos < a:  # a gap: fixed pieces
            e = min(a, pos + max_span)
            out.append((pos, e))
            pos = e
        if b > a:
            out.append((a, b))
        pos = max(pos, b)
    return [(a + offset, b + offset) for a, b in out]


def detect_spans(band: torch.Tensor, threshold: float, min_span: int, max_span: int,
                 offset: int = 0) -> list[tuple[int, int]]:
    """Spans tiling the band's L positions: `triangle_scores` then `nms_spans`."""
    return nms_spans(triangle_scores(band, threshold, max_span), min_span, max_span, offset)


def fixed_spans(start: int, end: int, size: int) -> list[tuple[int, int]]:
    """[start, end) cut into spans of ``size`` (the last may be shorter)."""
    return [(a, min(end, a + size)) for a in range(start, end, size)]


def similarity_spans(k: torch.Tensor, start: int, end: int, min_span: int, max_span: int
                     ) -> list[tuple[int, int]]:
    """The ``spans`` selector's boundaries (drops of adjacent-key similarity) over keys
    k [Hkv, L, D] at positions start .. end - 1 (L = end - start)."""
    from topkattn.selectors.spans import adjacent_similarity, segment

    L = end - start
    if L <= 0:
        return []
    sim = adjacent_similarity(k[None])[0]
    starts = segment(sim, 0, L, min_span, max_span)
    ends = starts[1:] + [L]
    return [(a + start, b + start) for a, b in zip(starts, ends)]


def heads_count(heads: tuple[int, ...], n_heads: int) -> int:
    return len(heads) if heads else n_heads


__all__ = ["MAX_BLOCK_ELEMS", "band_attention", "detect_spans", "fixed_spans", "heads_count",
           "nms_spans", "similarity_spans", "triangle_scores"]
