"""The indexer decode benchmark's pieces on CPU (the timing itself runs on the GPU)."""

import torch

from topkattn.bench.indexer_decode import IndexerDecodeStep, index_scores, index_scores_torch
from topkattn.ops.topk.naive import topk_attention_reference


def test_fused_scores_match_torch():
    g = torch.Generator().manual_seed(0)
    qi, w, ki = torch.randn(2, 4, 64, generator=g), torch.randn(2, 4, generator=g), torch.randn(2, 300, 64, generator=g)
    assert torch.allclose(index_scores(qi, w, ki, block=64), index_scores_torch(qi, w, ki), atol=1e-4)


def test_step_on_cpu_matches_reference():
    st = IndexerDecodeStep(B=2, L=256, k=32, Hq=4, Hkv=2, D=16, hidden=64, H=2, d=8,
                           dtype=torch.float32, device="cpu")
    out = st.step()
    qi, w = st.project()
    idx = index_scores_torch(qi, w, st.ki).topk(32, -1).indices
    idx = idx.view(2, 1, 1, 32).expand(2, 2, 1, 32)
    ref = topk_attention_reference(st.q, st.kc, st.vc, None, causal=False, indices=idx)
    assert out.shape == (2, 4, 1, 16)
    assert torch.allclose(out, ref, atol=1e-5)
