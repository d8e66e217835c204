"""When `decode_graphs.run` captures, replays and lets go of a layer's graph (CPU: the CUDA
capture replaced by a recording stand-in; the real graphs are tested on the GPU in
test_fast_generate.py)."""

import torch

from tests.helpers import fake_capture as _fake_capture
from topkattn.integrations import decode_graphs as dg
from topkattn.integrations.growing_cache import _new_buffer


def _body(q, k, v, r):
    """Full attention of q [B, H, 1, D] over keys [0, r[1]) of k, v [B, H, cap, D]."""
    n = int(r[1, 0, 0, 0])
    w = torch.softmax(q @ k[:, :, :n].transpose(-1, -2), -1)
    return (w @ v[:, :, :n]).transpose(1, 2).contiguous()


def _layer(cap):
    kb = _new_buffer(torch.randn(1, 2, 1, 8), cap).normal_()
    vb = _new_buffer(torch.randn(1, 2, 1, 8), cap).normal_()
    return kb, vb


def _ranges(n):
    r = torch.zeros(6, 1, 1, 1, dtype=torch.int32)
    r[1] = n
    return r


def test_capture_on_the_second_sight_then_replay(monkeypatch):
    monkeypatch.setattr(dg, "_capture", _fake_capture)
    slot = dg.GraphSlot()
    kb, vb = _layer(32)
    outs = []
    for n in range(10, 15):
        q = torch.randn(1, 2, 1, 8)
        k, v, r = kb.narrow(2, 0, n), vb.narrow(2, 0, n), _ranges(n)
        out = dg.run(slot, _body, q, k, v, r, settings=("dense",))
        outs.append(out)
        if out is not None:  # the graph's answer is the body's on this step's inputs
            torch.testing.assert_close(out, _body(q, k, v, r))
    assert outs[0] is None and all(o is not None for o in outs[1:])
    assert slot.captures == 1 and slot.graph.graph.replays == slot.graph.replays == 4


def test_graphs_that_pay_off_keep_a_layer_capturing(monkeypatch):
    """A new cache per prompt (an evaluation) moves the buffers every few dozen steps: each
    graph replays many times, so the layer never runs out of captures."""
    monkeypatch.setattr(dg, "_capture", _fake_capture)
    slot = dg.GraphSlot()
    q = torch.randn(1, 2, 1, 8)
    replayed = 0
    for prompt in range(3 * dg.MAX_CAPTURES):
        kb, vb = _layer(32)
        for n in range(10, 10 + dg.PAYOFF_REPLAYS + 2):
            out = dg.run(slot, _body, q, kb.narrow(2, 0, n), vb.narrow(2, 0, n), _ranges(n), ("d",))
            replayed += out is not None
    assert replayed == 3 * dg.MAX_CAPTURES * (dg.PAYOFF_REPLAYS + 1)


def test_a_moved_buffer_drops_the_graph_and_captures_again(monkeypatch):
    monkeypatch.setattr(dg, "_capture", _fake_capture)
    slot = dg.GraphSlot()
    q = torch.randn(1, 2, 1, 8)
    kb, vb = _layer(32)
    for _ in range(3):
        dg.run(slot, _body, q, kb.narrow(2, 0, 10), vb.narrow(2, 0, 10), _ranges(10), ("d",))
    assert slot.captures == 1
    kb2, vb2 = _layer(64)  # the cache grew: new buffers
    assert dg.run(slot, _body, q, kb2.narrow(2, 0, 33), vb2.narrow(2, 0, 33), _ranges(33),
                  ("d",)) is None
    assert slot.graph is None  # never replays a graph of the old buffers
    assert dg.run(slot, _body, q, kb2.narrow(2, 0, 34), vb2.narrow(2, 0, 34), _ranges(34),
                  ("d",)) is not None
    assert slot.captures == 2
    # other settings (a new k) are another graph, too
    assert dg.run(slot, _body, q, kb2.narrow(2, 0, 35), vb2.narrow(2, 0, 35), _ranges(35),
                  ("other",)) is None


def test_settings_that_change_every_step_stop_being_captured(monkeypatch):
    monkeypatch.setattr(dg, "_capture", _fake_capture)
    slot = dg.GraphSlot()
    q = torch.randn(1, 2, 1, 8)
    kb, vb = _layer(64)
    for step in range(4 * dg.MAX_CAPTURES):
        settings = (step // 2,)  # the same for two steps, then new (like k_ratio's k)
        dg.run(slot, _body, q, kb.narrow(2, 0, 10), vb.narrow(2, 0, 10), _ranges(10), settings)
    assert slot.captures == dg.MAX_CAPTURES


def test_a_cache_that_moves_every_step_is_never_captured(monkeypatch):
    monkeypatch.setattr(dg, "_capture", _fake_capture)
    slot = dg.GraphSlot()
    q = torch.randn(1, 2, 1, 8)
    for n in range(10, 16):  # transformers' concatenation: a new tensor of a new length
        k, v = torch.randn(1, 2, n, 8), torch.randn(1, 2, n, 8)
        assert dg.run(slot, _body, q, k, v, _ranges(n), ("d",)) is None
    assert dg.stable_base(torch.randn(1, 2, 20, 8)[:, :, :10]) is None  # a plain slice
    assert slot.captures == 0


def test_shared_ranges_copies_only_a_new_tensor():
    r = _ranges(7)
    buf = dg._shared_ranges(r)
    r[1] = 9  # the same tensor object is not copied again (one copy per forward) ...
    assert int(dg._shared_ranges(r)[1, 0, 0, 0]) == 7
    assert int(dg._shared_ranges(_ranges(11))[1, 0, 0, 0]) == 11  # ... a new one is
    assert dg._shared_ranges(_ranges(3)) is buf


def test_a_static_layer_replays_and_a_new_tensor_is_not_mistaken_for_it(monkeypatch):
    """A static cache's layer is its own storage: the step's fast check knows it by identity,
    and another tensor of the same shape gets the full signature check (a new graph)."""
    monkeypatch.setattr(dg, "_capture", _fake_capture)
    slot = dg.GraphSlot()
    q = torch.randn(1, 2, 1, 8)
    k, v = torch.randn(1, 2, 32, 8), torch.randn(1, 2, 32, 8)
    outs = [dg.run(slot, _body, q, k, v, _ranges(n), ("d",)) for n in (5, 6, 7)]
    assert outs[0] is None and outs[1] is not None and outs[2] is not None
    torch.testing.assert_close(outs[2], _body(q, k, v, _ranges(7)))
    k2, v2 = torch.randn(1, 2, 32, 8), torch.randn(1, 2, 32, 8)
    assert dg.run(slot, _body, q, k2, v2, _ranges(8), ("d",)) is None
    out = dg.run(slot, _body, q, k2, v2, _ranges(9), ("d",))
    torch.testing.assert_close(out, _body(q, k2, v2, _ranges(9)))


def test_extra_inputs_are_copied_in_at_every_replay(monkeypatch):
    """An extra input (a selector's hidden states) is a new tensor every step: the graph
    reads its own copy, refreshed before each replay, and a new shape is a new graph."""
    monkeypatch.setattr(dg, "_capture", _fake_capture)
    slot = dg.GraphSlot()
    kb, vb = _layer(32)

    def body(q, k, v, r, h):
        return _body(q * h, k, v, r)

    for n in range(10, 14):
        q, h = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8)
        k, v, r = kb.narrow(2, 0, n), vb.narrow(2, 0, n), _ranges(n)
        out = dg.run(slot, body, q, k, v, r, ("d",), (h,))
        if n > 10:
            torch.testing.assert_close(out, body(q, k, v, r, h))
    assert slot.captures == 1
    q, h = torch.randn(1, 2, 1, 8), torch.randn(2, 2, 1, 8)
    assert dg.run(slot, body, q, kb.narrow(2, 0, 14), vb.narrow(2, 0, 14), _ranges(14), ("d",),
                  (h,)) is None


def test_a_failed_capture_warns_once_and_leaves_the_layer_on_plain_launches(monkeypatch):
    import warnings

    def failing(*args):
        raise dg.CaptureFailed("RuntimeError: operation not permitted when stream is capturing")

    monkeypatch.setattr(dg, "_capture", failing)
    slot = dg.GraphSlot()
    kb, vb = _layer(32)
    q = torch.randn(1, 2, 1, 8)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        outs = [dg.run(slot, _body, q, kb.narrow(2, 0, n), vb.narrow(2, 0, n), _ranges(n), ("d",))
                for n in range(10, 20)]
    assert outs == [None] * 10
    assert slot.captures == dg.MAX_CAPTURES
    msgs = [str(w.message) for w in seen if "could not be captured" in str(w.message)]
    assert len(msgs) == 1 and "not permitted" in msgs[0]
