"""Property test: Top-k prefill / training attention (interpreter on CPU, CUDA on the device)
against the reference, forward and gradients, on random shapes, GQA layouts, k, causal or not,
sink / local and both granularities (fp32)."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.ops.compare import dev, rel_rms
from topkattn.ops.topk.naive import topk_attention_reference
from topkattn.ops.topk.triton_prefill import topk_prefill


# on CUDA each example compiles the six prefill kernels for its shape (minutes for 12)
@settings(max_examples=12 if dev() == "cpu" else 5, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(
    Hkv=st.sampled_from([1, 2]), G=st.sampled_from([1, 2]), Lq=st.integers(1, 48),
    extra=st.integers(0, 24), D=st.sampled_from([16, 32]), kfrac=st.floats(0.0, 1.1),
    sink=st.integers(0, 2), local=st.integers(0, 2), causal=st.booleans(),
    gran=st.sampled_from(["query_head", "kv_group"]), seed=st.integers(0, 2**16),
)
def test_topk_prefill_matches_reference(Hkv, G, Lq, extra, D, kfrac, sink, local, causal, gran, seed):
    g = torch.Generator().manual_seed(seed)
    Hq, Lk = Hkv * G, Lq + extra
    q = torch.randn(1, Hq, Lq, D, generator=g).to(dev()).requires_grad_()
    k = torch.randn(1, Hkv, Lk, D, generator=g).to(dev()).requires_grad_()
    v = torch.randn(1, Hkv, Lk, D, generator=g).to(dev()).requires_grad_()
    topk = max(1, int(kfrac * Lk))
    kw = dict(causal=causal, sink=sink, local=local, granularity=gran, return_lse=True)
    out, lse = topk_prefill(q, k, v, topk=topk, **kw)
    ref, rlse = topk_attention_reference(q, k, v, topk, **kw)
    assert rel_rms(out, ref, floor=1e-6) < 1e-4
    fin = torch.isfinite(rlse)
    assert torch.equal(torch.isfinite(lse), fin)
    if fin.any():
        assert (lse[fin] - rlse[fin]).abs().max() < 1e-4
    do = torch.randn(out.shape, generator=g).to(dev())
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref_grads = torch.autograd.grad(ref, (q, k, v), do)
    for a, b, name in zip(grads, ref_grads, "qkv"):
        assert rel_rms(a, b, floor=1e-6) < 1e-3, name
