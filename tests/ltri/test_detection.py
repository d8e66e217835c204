"""Triangle span detection: planted blocks are found; the chunked band and the vectorised
scores / NMS equal their reference loops."""

import pytest
import torch

from topkattn.ltri import detection as det
from topkattn.ltri import naive


def planted_map(sizes, c=0.06, noise=0.002, seed=0):
    """A causal attention map [L, L]: position 0 is an attention sink, every later row attends
    with weight ``c`` to each earlier token of its planted block (a triangle per block), the
    rest of its mass goes to the sink; plus noise. Rows sum to one."""
    L = 1 + sum(sizes)
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(L, L, generator=g) * noise
    s = 1
    for n in sizes:
        a[s:s + n, s:s + n] += c
        s += n
    a = a.tril()
    a[:, 0] += (1 - a.sum(1)).clamp(min=0)
    return a / a.sum(1, keepdim=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.02, 0.04])
def test_planted_blocks_are_found(seed, threshold):
    g = torch.Generator().manual_seed(100 + seed)
    sizes = [int(x) for x in torch.randint(5, 17, (10,), generator=g)]
    amap = planted_map(sizes, seed=seed)
    band = naive.band_reference(amap, 16)
    # detection runs after the sink (position 0), as the system does
    spans = det.detect_spans(band[1:], threshold, 4, 16, offset=1)
    bounds, s = [], 1
    for n in sizes:
        bounds.append((s, s + n))
        s += n
    assert spans == bounds
    # a threshold below the cross-block attention merges neighbours: the test can fail
    assert det.detect_spans(band[1:], 0.0, 4, 16, offset=1) != bounds


def test_no_triangle_gives_fixed_tiling():
    # a flat map (no cell above the threshold): every span scores < 0, gaps are cut into
    # max_span pieces
    L = 40
    amap = torch.ones(L, L).tril()
    amap = amap / amap.sum(1, keepdim=True)
    band = naive.band_reference(amap, 8)
    assert det.detect_spans(band, 1.0, 2, 8) == det.fixed_spans(0, L, 8)


def test_band_attention_matches_full_map_in_blocks():
    torch.manual_seed(0)
    q, k = torch.randn(4, 37, 8), torch.randn(2, 37, 8)
    amap = naive.attention_map(q, k, 0.4)
    ref = naive.band_reference(amap, 8)
    # tiny blocks (rows and heads) so every path of the blocking runs
    got = det.band_attention(q, k, 0.4, 8, chunk=5, max_elems=60)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # the last queries only (a prefill chunk), and a subset of heads
    got = det.band_attention(q[:, 20:], k, 0.4, 8, heads=(1, 3))
    torch.testing.assert_close(got, naive.band_reference(amap[[1, 3]], 8)[20:], atol=1e-5,
                               rtol=1e-5)


def test_band_with_explicit_normaliser_keys():
    # a chunk that sees only some earlier keys (streaming prefill): normaliser over k_norm
    torch.manual_seed(1)
    q, k = torch.randn(2, 30, 8), torch.randn(2, 30, 8)
    keep = torch.tensor([0, 1, 2, 5] + list(range(9, 30)))  # the band keys are all seen
    vis = keep[None, :] <= (14 + torch.arange(16))[:, None]
    got = det.band_attention(q[:, 14:], k, 0.5, 6, q_start=14, k_norm=k[:, keep],
                             norm_visible=vis)
    s = torch.einsum("hqd,hkd->hqk", q[:, 14:], k[:, keep]) * 0.5
    p = torch.softmax(s.masked_fill(~vis[None], float("-inf")), -1)
    full = torch.zeros(2, 16, 30)
    full[:, :, keep] = p
    for r in range(16):
        i = 14 + r
        for dd in range(6):
            assert got[r, dd] == pytest.approx(float(full[:, r, i - dd].sum()), abs=1e-5)


def test_triangle_scores_and_nms_match_reference():
    torch.manual_seed(2)
    q, k = torch.randn(4, 30, 8), torch.randn(2, 30, 8)
    amap = naive.attention_map(q, k, 0.6)
    band = det.band_attention(q, k, 0.6, 7)
    got = det.triangle_scores(band, 0.05, 7)
    ref = naive.triangle_scores_reference(amap.sum(0), 0.05, 7)
    fin = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(got), fin)
    torch.testing.assert_close(got[fin], ref[fin], atol=1e-4, rtol=1e-4)
    spans = det.nms_spans(got, 3, 7)
    assert spans == naive.nms_reference(got, 3, 7)
    assert spans[0][0] == 0 and spans[-1][1] == 30
    assert all(a == b for (_, a), (b, _) in zip(spans, spans[1:]))  # a tiling


def test_similarity_spans_tile():
    torch.manual_seed(3)
    k = torch.randn(2, 50, 8)
    sp = det.similarity_spans(k, 10, 60, 4, 12)
    assert sp[0][0] == 10 and sp[-1][1] == 60
    assert all(4 <= b - a <= 12 for a, b in sp[:-1])
