"""Reference implementations (loops over the definitions) of Ltri's fast paths, for tests.

- `attention_map`: the full softmax map [H, L, L] of one sequence (causal).
- `band_reference`: the band of a full map, summed over heads.
- `triangle_scores_reference`: T(x, y) = sum_{x <= j < i <= y} (A[i, j] - threshold).
- `nms_reference`: greedy NMS over every candidate (x, l), then gaps cut into max_span pieces.
- `attend_positions`: dense attention of one query to a set of key positions.
"""

from __future__ import annotations

import torch


def attention_map(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """q [Hq, L, D], k [Hkv, L, D] -> causal softmax maps fp32 [Hq, L, L]."""
    G = q.shape[0] // k.shape[0]
    s = torch.matmul(q.float(), k.float().repeat_interleave(G, 0).transpose(-1, -2)) * scale
    L = q.shape[1]
    s = s.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s, -1)


def band_reference(amap: torch.Tensor, width: int) -> torch.Tensor:
    """amap [H, L, L] (or [L, L]) -> [L, width]: sum_h A[i, i - d] (0 before position 0)."""
    a = amap if amap.dim() == 3 else amap[None]
    L = a.shape[-1]
    out = torch.zeros(L, width)
    for i in range(L):
        for d in range(width):
            if i - d >= 0:
                out[i, d] = a[:, i, i - d].sum()
    return out


def triangle_scores_reference(amap: torch.Tensor, threshold: float, max_span: int
                              ) -> torch.Tensor:
    """amap [L, L] (heads already summed) -> [L, max_span] by the definition."""
    L = amap.shape[0]
    out = torch.full((L, max_span), float("-inf"))
    for x in range(L):
        for ln in range(1, max_span + 1):
            y = x + ln - 1
            if y >= L:
                break
            tot = 0.0
            for i in range(x, y + 1):
                for j in range(x, i):
                    tot += float(amap[i, j]) - threshold
            out[x, ln - 1] = tot
    return out


def nms_reference(scores: torch.Tensor, min_span: int, max_span: int
                  ) -> list[tuple[int, int]]:
    """Greedy NMS over each start's best length (as `detection.nms_spans` defines it), by
    plain Python loops; gaps become max_span pieces."""
    L = scores.shape[0]
    props = []
    for x in range(L):
        best, bl = float("-inf"), None
        for ln in range(min(min_span, L), max_span + 1):
            v = float(scores[x, ln - 1])
            if v > best:
                best, bl = v, ln
        props.append((best, x, bl))
    props.sort(key=lambda t: (-t[0], t[1]))
    used = [False] * L
    spans = []
    for s, x, ln in props:
        if not s > 0:
            break
        if x + ln > L or any(used[x:x + ln]):
            continue
        for i in range(x, x + ln):
            used[i] = True
        spans.append((x, x + ln))
    out, pos = [], 0
    for a, b in sorted(spans) + [(L, L)]:
        while pos < a:
            e = min(a, pos + max_span)
            out.append((pos, e))
            pos = e
        if b > a:
            out.append((a, b))
        pos = max(pos, b)
    return out


def attend_positions(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     positions: torch.Tensor, scale: float) -> torch.Tensor:
    """q [Hq, D] (one query), k, v [Hkv, L, D], positions int [n] -> fp32 [Hq, D]."""
    G = q.shape[0] // k.shape[0]
    kk = k[:, positions].float().repeat_interleave(G, 0)
    vv = v[:, positions].float().repeat_interleave(G, 0)
    w = torch.softmax((kk @ q.float()[..., None])[..., 0] * scale, -1)
    return (w[..., None] * vv).sum(1)


__all__ = ["attend_positions", "attention_map", "band_reference", "nms_reference",
           "triangle_scores_reference"]
