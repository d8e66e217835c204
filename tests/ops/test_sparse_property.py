"""Property test: Triton sparse attention by indices (interpreter on CPU, CUDA on the device)
against the reference on random shapes, index layouts (per query head or per KV head), padding
entries, duplicates, causal query blocks, sink / local, and split counts (fp32)."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.ops.compare import dev, rel_rms
from topkattn.ops.topk.naive import topk_attention_reference
from topkattn.ops.topk.triton_sparse import sparse_attention


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    B=st.integers(1, 2), Hkv=st.sampled_from([1, 2]), G=st.sampled_from([1, 2, 4]),
    Lq=st.integers(1, 4), extra=st.integers(0, 200), D=st.sampled_from([16, 32]),
    n_idx=st.integers(1, 80), per_kv=st.booleans(), sink=st.integers(0, 3), local=st.integers(0, 3),
    splits=st.sampled_from([None, 1, 3]), seed=st.integers(0, 2**16),
)
def test_sparse_attention_matches_reference(B, Hkv, G, Lq, extra, D, n_idx, per_kv, sink, local,
                                            splits, seed):
    g = torch.Generator().manual_seed(seed)
    Hq, Lk = Hkv * G, Lq + extra
    q = torch.randn(B, Hq, Lq, D, generator=g)
    k = torch.randn(B, Hkv, Lk, D, generator=g)
    v = torch.randn(B, Hkv, Lk, D, generator=g)
    H = Hkv if per_kv else Hq
    idx = torch.randint(-3, Lk, (B, H, Lq, n_idx), generator=g)  # padding and duplicates
    d = dev()
    out, lse = sparse_attention(q.to(d), k.to(d), v.to(d), idx.to(d), sink=sink, local=local,
                                return_lse=True, splits=splits)
    ref, rlse = topk_attention_reference(q, k, v, None, indices=idx, sink=sink, local=local,
                                         return_lse=True)
    assert rel_rms(out.cpu(), ref) < 1e-4
    fin = torch.isfinite(rlse)
    assert torch.equal(torch.isfinite(lse.cpu()), fin)
    if fin.any():  # rows with nothing selected have lse -inf on both sides
        assert (lse.cpu()[fin] - rlse[fin]).abs().max() < 1e-4
