"""Property test: the Triton selection (interpreter on CPU, CUDA on the device) against the
reference on random rows, lengths, padding, sink / local and score distributions, one
workspace reused across all calls (its regions must come back zeroed after every call)."""

from dataclasses import replace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.ops.compare import dev

import topkattn.ops.select.triton_select as ts
from topkattn.ops.tuning import DEFAULT, tuned
from topkattn.ops.topk.naive import forced_mask, select_topk_mask

DISTS = ("gauss", "ties", "tiny", "huge", "mixed_sign_zero", "hot_block")


def _scores(g: torch.Generator, R: int, n: int, dist: str) -> torch.Tensor:
    if dist == "ties":
        return torch.randint(-4, 5, (R, n), generator=g).float() / 2
    if dist == "tiny":
        return torch.randn(R, n, generator=g) * 1e-5
    if dist == "huge":
        return torch.randn(R, n, generator=g) * 1e6
    if dist == "mixed_sign_zero":
        s = torch.randn(R, n, generator=g)
        s[:, ::3] = 0.0
        s[:, 1::5] = -0.0
        return s
    s = torch.randn(R, n, generator=g)
    if dist == "hot_block":
        s[:, n // 3: n // 3 + max(1, n // 20)] += 8.0  # correlated: a sampled histogram may misjudge
    return s


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


WORK = ts.select_workspace(8, torch.device(_device()))


# fewer examples under the CPU interpreter (each is a few seconds there; the GPU run keeps 60)
@settings(max_examples=25 if dev() == "cpu" else 60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    R2=st.integers(1, 4), n=st.integers(1, 2500), kfrac=st.floats(0.0, 1.2), dist=st.sampled_from(DISTS),
    sink=st.integers(0, 5), local=st.integers(0, 5), use_lens=st.booleans(), use_starts=st.booleans(),
    seed=st.integers(0, 2**16), sample=st.sampled_from([1, 4, 8]), dtype=st.sampled_from(["f32", "bf16"]),
    block=st.sampled_from([None, 256]),
)
def test_select_rows_matches_reference(R2, n, kfrac, dist, sink, local, use_lens, use_starts, seed,
                                       sample, dtype, block):
    # block 256: the finish's small register tiers and its blocked passes over the buffer
    with tuned(select=replace(DEFAULT.select, sample=sample)):
        g = torch.Generator().manual_seed(seed)
        R = 2 * R2  # two rows per length (query heads of one sequence)
        s = _scores(g, R, n, dist)
        if dtype == "bf16":
            s = s.bfloat16()
        k = max(1, int(kfrac * n))
        lens = torch.randint(0, n + 1, (R2,), generator=g, dtype=torch.int32) if use_lens else None
        starts = torch.randint(0, n + 1, (R2,), generator=g, dtype=torch.int32) if use_starts else None
        dev = _device()
        out = ts.select_rows(s.to(dev), k=k, ends=lens.to(dev) if lens is not None else None, rows_per_seq=2,
                             sink=sink, local=local, work=WORK, block=block,
                             starts=starts.to(dev) if starts is not None else None).cpu()
        v = ts.workspace_views(WORK)
        assert not v.hist.any() and not v.cnt.any() and not v.done.any()
        pos = torch.arange(n)
        for r in range(R):
            L = int(lens[r // 2]) if lens is not None else n
            st_ = min(int(starts[r // 2]), L) if starts is not None else 0
            vis = (pos >= st_) & (pos < L)
            ref = select_topk_mask(s[r].float(), k, vis, forced_mask(vis[None], sink, local)[0])
            got = out[r][out[r] >= 0].long()
            assert got.numel() == got.unique().numel(), "duplicate positions"
            assert torch.equal(got.sort().values, ref.nonzero().flatten()), (r, k, L, st_)

