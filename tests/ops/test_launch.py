"""`ops.launch.CachedLaunch`: the specialisation key follows Triton's rules, the parameters
after the positional ones are filled in kernel order, calls that must go through Triton do,
and on a GPU the direct launches give the same results as Triton's launcher."""

import inspect

import pytest
import torch

from topkattn.ops.launch import CachedLaunch, arg_key


def test_arg_key_follows_triton_specialisation():
    t = torch.zeros(8)
    assert arg_key(t, True) == (torch.float32, True)
    assert arg_key(t[1:], True) == (torch.float32, False)  # 4 bytes off: not 16-byte aligned
    assert arg_key(t.to(torch.bfloat16), True)[0] == torch.bfloat16
    # specialised ints: == 1 and divisibility by 16 matter; unspecialised: only the width
    assert arg_key(1, True) != arg_key(2, True) != arg_key(16, True)
    assert arg_key(17, True) == arg_key(33, True)
    assert arg_key(1, False) == arg_key(16, False) == arg_key(12345, False)
    assert arg_key(2**31, False) != arg_key(2**31 - 1, False)  # i64 against i32
    assert arg_key(2**63, False) != arg_key(2**62, False)  # u64 against i64
    assert arg_key(True, True) == arg_key(False, True)
    assert arg_key(0.5, True) == arg_key(2.0, True)
    assert arg_key(None, True) is None


class _Param:
    def __init__(self, p: inspect.Parameter, dns: bool = False):
        self._param, self.name = p, p.name
        self.is_constexpr = p.annotation == "constexpr"
        self.do_not_specialize = dns


class _FakeJIT:
    """Stands in for a JITFunction: records the calls that go through 'Triton'."""

    def __init__(self, fn, dns=()):
        sig = inspect.signature(fn)
        self.params = [_Param(p, p.name in dns) for p in sig.parameters.values()]
        self.calls = []

    def __getitem__(self, grid):
        def call(*args, **kwargs):
            self.calls.append((grid, args, kwargs))
            return None
        return call


def _kernel(A, n, s, X: "constexpr", Y: "constexpr" = 7):  # noqa: F821
    pass


def test_tail_is_filled_in_parameter_order_with_defaults():
    launch = CachedLaunch(_FakeJIT(_kernel, dns=("n",)))

    class Compiled:
        function = object()

    launch._remember("key", Compiled(), 3, {"X": 5, "num_warps": 4})
    kernel, tail = launch._cache["key"]
    assert isinstance(kernel, Compiled) and tail == (5, 7)
    assert launch._param_flags() == (True, False, True, True, True)


def test_runtime_argument_by_keyword_always_goes_through_triton():
    launch = CachedLaunch(_FakeJIT(_kernel))

    class Compiled:
        function = object()

    launch._remember("key", Compiled(), 2, {"s": 3, "X": 1})
    assert launch._cache["key"] == (None, ())


def test_cpu_tensors_and_callable_grids_go_through_triton():
    fake = _FakeJIT(_kernel)
    launch = CachedLaunch(fake)
    a = torch.zeros(4)
    launch[(1,)](a, 3, 0.5, X=1)
    launch[lambda meta: (1,)](a, 3, 0.5, X=1)
    assert len(fake.calls) == 2 and launch.fast_launches == 0
    assert fake.calls[0][2] == {"X": 1}


def test_empty_hook_chains_are_no_hooks():
    """Triton >= 3.5 keeps empty HookChains as its launch hooks: they must not force every
    launch through Triton's launcher."""
    from topkattn.ops.launch import _hooked

    knobs = pytest.importorskip("triton.knobs")
    chain = knobs.HookChain()
    assert not _hooked(chain) and not _hooked(None)
    chain.add(print)
    assert _hooked(chain) and _hooked(print)


@pytest.mark.gpu
def test_direct_launches_match_triton_on_gpu():
    """The selection, decode and dense kernels launched directly give Triton's results, over
    pointers of both alignments and lengths that cross specialisation classes."""
    from topkattn.ops.launch import CachedLaunch as CL
    from topkattn.ops.testing import inject
    from topkattn.ops.topk import triton_decode, triton_dense, triton_sparse
    from topkattn.ops.select import triton_select
    from topkattn.ops.topk.triton_decode import topk_decode
    from topkattn.ops.topk.triton_dense import range_decode

    kernels = [triton_decode._scores_kernel, triton_sparse._sparse_fwd_kernel,
               triton_sparse._combine_kernel, triton_dense._range_decode_kernel,
               triton_select._hist_kernel, triton_select._scan_kernel, triton_select._finish_kernel]
    assert all(isinstance(k, CL) for k in kernels)
    torch.manual_seed(0)
    B, Hq, Hkv, D, n = 2, 8, 2, 128, 3000
    q = torch.randn(B, Hq, 1, D, device="cuda", dtype=torch.bfloat16)
    kv = torch.randn(2, B, Hkv, n + 8, D, device="cuda", dtype=torch.bfloat16)
    before = sum(k.fast_launches for k in kernels)
    for off in (0, 1, 0, 1):  # a view one row in: another key for the K/V pointers
        k, v = kv[0, :, :, off:off + n], kv[1, :, :, off:off + n]
        for length in (1, 16, 17, 2999, 3000, 17, 1):
            lo = torch.zeros(B, dtype=torch.int32, device="cuda")
            hi = torch.full((B,), length, dtype=torch.int32, device="cuda")
            got = topk_decode(q, k, v, topk=64, sink=1, local=2, granularity="kv_group", starts=lo, ends=hi)
            dense = range_decode(q, k, v, starts=lo, ends=hi, scale=D ** -0.5)
            with inject(force_triton_launcher=True):
                want = topk_decode(q, k, v, topk=64, sink=1, local=2, granularity="kv_group", starts=lo, ends=hi)
                want_dense = range_decode(q, k, v, starts=lo, ends=hi, scale=D ** -0.5)
            torch.testing.assert_close(got, want, rtol=0, atol=0)
            torch.testing.assert_close(dense, want_dense, rtol=0, atol=0)
    assert sum(k.fast_launches for k in kernels) > before
