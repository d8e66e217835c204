"""Property test: the fused Top-k decode (interpreter on CPU, CUDA on the device) against the
reference on random shapes, GQA layouts, k, per-sequence key ranges (left / right padding) and
sink / local, fp32 (the selected sets must agree, so the outputs match to fp32 rounding)."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.ops.compare import dev, rel_rms
from topkattn.ops.topk.naive import topk_attention_reference
from topkattn.ops.topk.triton_decode import topk_decode


# fewer examples under the CPU interpreter (each is a few seconds there; the GPU run keeps 40)
@settings(max_examples=16 if dev() == "cpu" else 40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    B=st.integers(1, 3), Hkv=st.sampled_from([1, 2]), G=st.sampled_from([1, 2, 4]),
    n=st.integers(1, 400), D=st.sampled_from([16, 32]), kfrac=st.floats(0.0, 1.1),
    sink=st.integers(0, 3), local=st.integers(0, 3), gran=st.sampled_from(["query_head", "kv_group"]),
    padded=st.booleans(), seed=st.integers(0, 2**16),
)
def test_topk_decode_matches_reference(B, Hkv, G, n, D, kfrac, sink, local, gran, padded, seed):
    g = torch.Generator().manual_seed(seed)
    Hq = Hkv * G
    q = torch.randn(B, Hq, 1, D, generator=g)
    k = torch.randn(B, Hkv, n, D, generator=g)
    v = torch.randn(B, Hkv, n, D, generator=g)
    topk = max(1, int(kfrac * n))
    st_ = en = None
    mask = None
    if padded:
        en = torch.randint(1, n + 1, (B,), generator=g)
        st_ = (torch.rand(B, generator=g) * en).long()  # start < end: at least one visible key
        pos = torch.arange(n)
        mask = ((pos[None] >= st_[:, None]) & (pos[None] < en[:, None]))[:, None, None]
    d = dev()
    out, lse = topk_decode(q.to(d), k.to(d), v.to(d), topk=topk, sink=sink, local=local, granularity=gran,
                           ends=en.to(d) if en is not None else None,
                           starts=st_.to(d) if st_ is not None else None, return_lse=True)
    ref, rlse = topk_attention_reference(q, k, v, topk, sink=sink, local=local, granularity=gran,
                                         attn_mask=mask, return_lse=True)
    assert rel_rms(out.cpu(), ref) < 1e-4
    fin = torch.isfinite(rlse)
    assert torch.equal(torch.isfinite(lse.cpu()), fin)
    if fin.any():  # rows with nothing selected have lse -inf on both sides
        assert (lse.cpu()[fin] - rlse[fin]).abs().max() < 1e-4
