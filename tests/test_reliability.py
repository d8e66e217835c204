"""Bad input is a clear error before any expensive work, never a silent wrong answer.

`test_bad_input` is a table of bad inputs at the Python API level (ops, devices, models and
their compatibility, output paths, the TOPKATTN_BACKEND variable): each must raise the given
type with a one-line message naming the bad value. The tests after it pin the behaviours that
are not errors: hidden picks are dropped, the reference's NaN policy matches SDPA's math path,
GPT-2 is supported, and the checks run before any weight is read.
"""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from topkattn.errors import InputError, MissingFileError, TopkattnError

NAN, INF = float("nan"), float("inf")


def _qkv(Lq=2, Lk=10, Hq=2, Hkv=1, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, Hq, Lq, D, generator=g), torch.randn(1, Hkv, Lk, D, generator=g),
            torch.randn(1, Hkv, Lk, D, generator=g))


def _attn(**kw):
    """topk_attention on tiny tensors with the keyword arguments replaced."""
    from topkattn.ops.topk import topk_attention

    q, k, v = _qkv()
    args = dict(q=q, k=k, v=v, topk=3, backend="reference")
    args.update(kw)
    return topk_attention(**args)


def _idx(*vals):
    return torch.tensor(vals).view(1, 1, 1, -1).expand(1, 1, 2, len(vals)).contiguous()


def _saved_config(ctx, make_config):
    """A model folder holding only config.json (no weights, no tokenizer)."""
    folder = ctx.tmp / "model"
    make_config().save_pretrained(folder)
    return str(folder)


def _load(ctx, make_config, **kw):
    from topkattn.models import load_model

    return load_model(_saved_config(ctx, make_config), **kw)


def _no_weights(ctx):
    """Make any attempt to read a tokenizer or weights fail the test."""
    import transformers

    def boom(*a, **k):
        raise AssertionError("weights or tokenizer were loaded before the check")

    ctx.monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    ctx.monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", boom)


def _tf():
    import transformers

    return transformers


def _gemma2():
    tf = _tf()
    return tf.Gemma2ForCausalLM(tf.Gemma2Config(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16)).eval()


def _gpt_oss_config():
    return _tf().GptOssConfig(vocab_size=97, hidden_size=32, intermediate_size=32,
                              num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                              head_dim=16, num_local_experts=2, num_experts_per_tok=1)


def _t5_config():
    return _tf().T5Config(num_layers=1, d_model=32, num_heads=2, d_kv=16, d_ff=64, vocab_size=97)


def _mamba_config():
    return _tf().MambaConfig(num_hidden_layers=1, hidden_size=32, vocab_size=97)


def _gemma2_config():
    return _tf().Gemma2Config(vocab_size=97, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                              head_dim=16)


def _gpt2(**kw):
    tf = _tf()
    return tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=97,
                                            n_positions=64, **kw)).eval()


def _check(model):
    from topkattn.compat import check_supported

    return check_supported(model)


def _sparsify(model):
    from topkattn import TopKConfig, sparsify

    with sparsify(model, TopKConfig(k=2)):
        pass


def _device(name):
    from topkattn.devices import check_device

    return check_device(name)


def _out_dir(path):
    from topkattn.paths import prepare_out_dir

    return prepare_out_dir(path)


def _out_file(path, **kw):
    from topkattn.paths import prepare_out_file

    return prepare_out_file(path, **kw)


def _a_file(ctx):
    f = ctx.tmp / "a_file.txt"
    f.write_text("x")
    return f


def _env(ctx, value, backend="auto"):
    from topkattn.ops.topk import resolve_backend

    ctx.monkeypatch.setenv("TOPKATTN_BACKEND", value)
    return resolve_backend(backend)


def _env_attn(ctx, value):
    ctx.monkeypatch.setenv("TOPKATTN_BACKEND", value)
    return _attn(backend="auto")


def _env_direct(ctx, value):
    from topkattn.ops.topk import env_backend

    ctx.monkeypatch.setenv("TOPKATTN_BACKEND", value)
    return env_backend()


no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
root = os.geteuid() == 0 if hasattr(os, "geteuid") else False

# (call(ctx), exception type, text the message must contain: the bad value)
CASES = [
    # ---- ops: topk_attention
    pytest.param(lambda c: _attn(sink=-1), InputError, "sink=-1", id="ops-sink-negative"),
    pytest.param(lambda c: _attn(local=-2), InputError, "local=-2", id="ops-local-negative"),
    pytest.param(lambda c: _attn(sink=1.5), InputError, "sink=1.5", id="ops-sink-float"),
    pytest.param(lambda c: _attn(local=True), InputError, "local=True", id="ops-local-bool"),
    pytest.param(lambda c: _attn(scale=NAN), InputError, "scale=nan", id="ops-scale-nan"),
    pytest.param(lambda c: _attn(scale=INF), InputError, "scale=inf", id="ops-scale-inf"),
    pytest.param(lambda c: _attn(scale=0.0), InputError, "scale=0.0", id="ops-scale-zero"),
    pytest.param(lambda c: _attn(scale=-0.5), InputError, "scale=-0.5", id="ops-scale-negative"),
    pytest.param(lambda c: _attn(scale="0.1"), InputError, "'0.1'", id="ops-scale-string"),
    pytest.param(lambda c: _attn(topk=None, indices=_idx(1, -2)), InputError, "-2",
                 id="ops-indices-negative"),
    pytest.param(lambda c: _attn(topk=None, indices=_idx(1, 10)), InputError, "10",
                 id="ops-indices-equal-Lk"),
    pytest.param(lambda c: _attn(topk=None, indices=_idx(99, 0)), InputError, "99",
                 id="ops-indices-past-Lk"),
    pytest.param(lambda c: _attn(topk=None, indices=_idx(1, 2).float()), InputError,
                 "torch.float32", id="ops-indices-float"),
    pytest.param(lambda c: _attn(topk=None, indices=torch.zeros(1, 1, 5, 2, dtype=torch.long)),
                 InputError, "(1, 1, 5, 2)", id="ops-indices-shape"),
    pytest.param(lambda c: _attn(topk=0), InputError, "got 0", id="ops-topk-zero"),
    pytest.param(lambda c: _attn(topk=-3), InputError, "-3", id="ops-topk-negative"),
    pytest.param(lambda c: _attn(topk=2.5), InputError, "2.5", id="ops-topk-float"),
    pytest.param(lambda c: _attn(backend="bogus"), InputError, "'bogus'", id="ops-backend"),
    pytest.param(lambda c: _attn(granularity="per_head"), InputError, "'per_head'",
                 id="ops-granularity"),
    pytest.param(lambda c: _attn(q=torch.randn(2, 2, 8)), InputError, "(2, 2, 8)", id="ops-q-3d"),
    pytest.param(lambda c: _attn(q=torch.randn(1, 3, 2, 8), k=torch.randn(1, 2, 10, 8),
                                 v=torch.randn(1, 2, 10, 8)), InputError, "(3)",
                 id="ops-heads-not-multiple"),
    pytest.param(lambda c: _attn(q=torch.randn(1, 2, 2, 8).double()), InputError,
                 "torch.float64", id="ops-dtype-mismatch"),
    pytest.param(lambda c: _attn(attn_mask=torch.ones(1, 1, 2, 10)), InputError,
                 "torch.float32", id="ops-mask-float"),
    pytest.param(lambda c: _attn(q=torch.randn(1, 2, 11, 8)), InputError, "(11)",
                 id="ops-more-queries-than-keys"),
    # ---- TOPKATTN_BACKEND, wherever it is read
    pytest.param(lambda c: _env(c, "bogus"), InputError, "TOPKATTN_BACKEND='bogus'",
                 id="env-auto"),
    pytest.param(lambda c: _env(c, "Triton", backend="reference"), InputError,
                 "TOPKATTN_BACKEND='Triton'", id="env-explicit-backend"),
    pytest.param(lambda c: _env_direct(c, "cuda"), InputError, "TOPKATTN_BACKEND='cuda'",
                 id="env-direct"),
    pytest.param(lambda c: _env_attn(c, "fast"), InputError, "TOPKATTN_BACKEND='fast'",
                 id="env-topk-attention"),
    # ---- devices
    pytest.param(lambda c: _device("bogus"), InputError, "'bogus'", id="device-bogus"),
    pytest.param(lambda c: _device(""), InputError, "''", id="device-empty"),
    pytest.param(lambda c: _device(3), InputError, "3", id="device-int"),
    pytest.param(lambda c: _device("mps"), InputError, "'mps'", id="device-other-type"),
    pytest.param(lambda c: _device("cuda"), InputError, "'cuda'", id="device-cuda-missing",
                 marks=no_cuda),
    pytest.param(lambda c: _device("cuda:7"), InputError, "'cuda:7'", id="device-cuda-index"),
    pytest.param(lambda c: (_no_weights(c), _load(c, _tf().LlamaConfig, device="bogus")),
                 InputError, "'bogus'", id="load-model-device-bogus"),
    pytest.param(lambda c: (_no_weights(c), _load(c, _tf().LlamaConfig, device="cuda")),
                 InputError, "'cuda'", id="load-model-device-cuda", marks=no_cuda),
    pytest.param(lambda c: __import__("topkattn.models", fromlist=["x"]).load_model(
        "/no/such/model", device="gpu0"), InputError, "'gpu0'", id="load-model-device-first"),
    # ---- models: folders and configs (refused before any weight or tokenizer is read)
    pytest.param(lambda c: (_no_weights(c), __import__("topkattn.models", fromlist=["x"])
                            .load_model(str(c.tmp), device="cpu")),
                 MissingFileError, "config.json", id="load-model-empty-folder"),
    pytest.param(lambda c: (_no_weights(c), _load(c, _t5_config, device="cpu")), InputError,
                 "'t5' is an encoder-decoder", id="load-model-t5"),
    pytest.param(lambda c: (_no_weights(c), _load(c, _mamba_config, device="cpu")), InputError,
                 "'mamba' has no attention", id="load-model-mamba"),
    pytest.param(lambda c: (_no_weights(c), _load(c, _gemma2_config, device="cpu")), InputError,
                 "attn_logit_softcapping=50.0", id="load-model-gemma2-softcap"),
    pytest.param(lambda c: (_no_weights(c), _load(c, _gpt_oss_config, device="cpu")), InputError,
                 "'gpt_oss'", id="load-model-gpt-oss-sinks"),
    pytest.param(lambda c: (_no_weights(c), _load(c, lambda: _tf().ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2), device="cpu")),
                 InputError, "'vit'", id="load-model-no-causal-lm-class"),
    # ---- compat: built models
    pytest.param(lambda c: _check(_gemma2()), InputError, "attn_logit_softcapping=50.0",
                 id="compat-gemma2-softcap"),
    pytest.param(lambda c: _sparsify(_gemma2()), InputError, "attn_logit_softcapping=50.0",
                 id="sparsify-gemma2-softcap"),
    pytest.param(lambda c: _check(_tf().FalconForCausalLM(_tf().FalconConfig(
        num_hidden_layers=1, hidden_size=32, num_attention_heads=4, vocab_size=97, alibi=True))),
                 InputError, "ALiBi position biases", id="compat-falcon-alibi"),
    pytest.param(lambda c: _check(_tf().GptOssForCausalLM(_gpt_oss_config())), InputError,
                 "'gpt_oss'", id="compat-gpt-oss-sinks"),
    pytest.param(lambda c: _check(_tf().T5ForConditionalGeneration(_t5_config())), InputError,
                 "'t5' is an encoder-decoder", id="compat-t5"),
    pytest.param(lambda c: _check(_tf().MambaForCausalLM(_mamba_config())), InputError,
                 "'mamba' has no attention", id="compat-mamba"),
    pytest.param(lambda c: _check(_tf().BloomForCausalLM(_tf().BloomConfig(
        n_layer=1, hidden_size=32, n_head=2, vocab_size=97))), InputError,
                 "BloomForCausalLM (bloom) computes attention inside its own layers",
                 id="compat-bloom-own-attention"),
    pytest.param(lambda c: _check(_tf().GPT2Model(_tf().GPT2Config(
        n_layer=1, n_embd=32, n_head=2, vocab_size=97))), InputError, "GPT2Model (gpt2)",
                 id="compat-base-model"),
    pytest.param(lambda c: _check(_gpt2(add_cross_attention=True)), InputError,
                 "GPT2Attention) is cross-attention", id="compat-cross-attention"),
    pytest.param(lambda c: _check(torch.nn.Linear(2, 2)), InputError, "Linear",
                 id="compat-not-hf"),
    # ---- output paths
    pytest.param(lambda c: _out_dir(_a_file(c)), InputError, "a_file.txt' is an existing file",
                 id="out-dir-is-file"),
    pytest.param(lambda c: _out_dir(_a_file(c) / "sub" / "dir"), InputError,
                 "a_file.txt', which is a file", id="out-dir-under-file"),
    pytest.param(lambda c: _out_dir("/proc/topkattn-out"), InputError, "'/proc/topkattn-out'",
                 id="out-dir-cannot-create"),
    pytest.param(lambda c: _out_dir("/proc"), InputError, "'/proc' is not writable",
                 id="out-dir-not-writable"),
    pytest.param(lambda c: _out_dir(""), InputError, "''", id="out-dir-empty"),
    pytest.param(lambda c: _out_file(c.tmp), InputError, "is an existing folder",
                 id="out-file-is-folder"),
    pytest.param(lambda c: _out_file(c.tmp / "w.txt", suffixes=(".safetensors", ".pt")),
                 InputError, "w.txt' must end in .safetensors or .pt", id="out-file-suffix"),
    pytest.param(lambda c: _out_file(_a_file(c) / "w.pt"), InputError, "a_file.txt",
                 id="out-file-under-file"),
]


@pytest.mark.parametrize("call, exc, needle", CASES)
def test_bad_input(call, exc, needle, tmp_path, monkeypatch):
    monkeypatch.delenv("TOPKATTN_BACKEND", raising=False)
    ctx = SimpleNamespace(tmp=tmp_path, monkeypatch=monkeypatch)
    with pytest.raises(exc) as info:
        call(ctx)
    assert isinstance(info.value, TopkattnError)
    msg = str(info.value)
    assert needle in msg, msg
    assert "\n" not in msg and len(msg) < 400, msg


def test_matrix_is_large_enough():
    assert len(CASES) >= 40


# ---- what is not an error


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_hidden_picks_are_dropped(backend):
    """Selections at positions the query cannot see count as padding (selectors rely on it)."""
    from topkattn.ops.topk import topk_attention

    q, k, v = _qkv(Lq=3, Lk=12, D=16)
    hidden = torch.tensor([[[[2, 11, 10], [3, 11, 5], [4, 9, 0]]]])  # query 0 sits at 9
    clean = torch.tensor([[[[2, -1, -1], [3, -1, 5], [4, 9, 0]]]])
    mask = torch.ones(1, 1, 3, 12, dtype=torch.bool)
    a = topk_attention(q, k, v, None, indices=hidden, backend=backend)
    b = topk_attention(q, k, v, None, indices=clean, backend=backend)
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b)
    mask[..., 4] = False  # masked out for every query: the pick of 4 by query 2 is dropped
    a = topk_attention(q, k, v, None, indices=hidden, attn_mask=mask, backend="reference")
    clean[0, 0, 2, 0] = -1
    b = topk_attention(q, k, v, None, indices=clean, attn_mask=mask, backend="reference")
    torch.testing.assert_close(a, b)


def test_padding_minus_one_is_accepted():
    out = _attn(topk=None, indices=_idx(3, -1, 7))
    assert torch.isfinite(out).all()


def _sdpa_math(q, k, v, causal):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def _set(t, index, value):
    t = t.clone()
    t[index] = value
    return t


NAN_CASES = {
    # name: (mutate(q, k, v) -> (q, k, v)); every poisoned position is visible to every query
    "nan-query-row": lambda q, k, v: (_set(q, (0, 1, -1, 0), NAN), k, v),
    "nan-key-first": lambda q, k, v: (q, _set(k, (0, 0, 0, 3), NAN), v),
    "inf-key-first": lambda q, k, v: (q.abs(), _set(k, (0, 0, 0), INF), v),
    "neg-inf-score": lambda q, k, v: (q.abs(), _set(k, (0, 1, 0), -INF), v),
    "mixed-inf-key": lambda q, k, v: (q, _set(k, (0, 1, 0, 0), INF), v),
    "nan-value-first": lambda q, k, v: (q, k, _set(v, (0, 0, 0, 1), NAN)),
    "inf-value-first": lambda q, k, v: (q, k, _set(v, (0, 1, 0, 2), INF)),
}


@pytest.mark.parametrize("causal, Lq", [(True, 6), (False, 4), (False, 1)])  # SDPA: causal needs Lq == Lk
@pytest.mark.parametrize("case", sorted(NAN_CASES))
def test_reference_nan_policy_matches_sdpa(case, causal, Lq):
    """Dense (topk >= keys) reference against SDPA's math path on poisoned inputs."""
    from topkattn.ops.topk.naive import topk_attention_reference

    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, L, 8, generator=g) for L in (Lq, 6, 6))
    q, k, v = NAN_CASES[case](q, k, v)
    want = _sdpa_math(q, k, v, causal)
    got = topk_attention_reference(q, k, v, None, causal=causal)
    torch.testing.assert_close(got, want, equal_nan=True)
    got_k = topk_attention_reference(q, k, v, 100, causal=causal)
    torch.testing.assert_close(got_k, want, equal_nan=True)


def test_nan_score_is_always_selected():
    """With top-k < keys a NaN score ranks first, so the row is NaN (never a finite answer
    that silently skipped a NaN key), like SDPA over the same keys."""
    from topkattn.ops.topk.naive import topk_attention_reference

    q, k, v = _qkv(Lq=1, Lk=10, Hq=2, Hkv=2)
    k = _set(k, (0, 0, 7, 0), NAN)
    out, lse = topk_attention_reference(q, k, v, 2, return_lse=True)
    assert torch.isnan(out[0, 0]).all() and torch.isnan(lse[0, 0]).all()
    assert torch.isfinite(out[0, 1]).all()  # the other head's key 7 is clean
    assert torch.isnan(_sdpa_math(q, k, v, False)[0, 0]).all()
    q_bad = _set(q, (0, 1, 0, 0), NAN)  # a NaN query: its row is NaN, not zeros
    out = topk_attention_reference(q_bad, k, v, 2)
    assert torch.isnan(out[0, 1]).all()
    assert torch.isnan(_sdpa_math(q_bad, k, v, False)[0, 1]).all()


def test_poison_outside_the_selection_has_no_effect():
    """A NaN key or value the query cannot see or did not select gets exactly zero weight
    (SDPA's math path would spread it to every row through 0 * NaN)."""
    from topkattn.ops.topk.naive import topk_attention_reference

    q, k, v = _qkv(Lq=3, Lk=8, Hq=2, Hkv=2)
    clean = topk_attention_reference(q, k, v, None)
    hidden_k, hidden_v = _set(k, (0, slice(None), 7), NAN), _set(v, (0, slice(None), 7), INF)
    got = topk_attention_reference(q, hidden_k, hidden_v, None)
    torch.testing.assert_close(got[..., :2, :], clean[..., :2, :])  # queries at 5, 6
    assert torch.isnan(got[..., 2, :]).all()  # query at 7 sees it
    idx = torch.tensor([[[[0, 1]]]]).expand(1, 2, 3, 2)
    v_bad = _set(v, (0, slice(None), 4), NAN)
    torch.testing.assert_close(topk_attention_reference(q, k, v_bad, None, indices=idx),
                               topk_attention_reference(q, k, v, None, indices=idx))


def test_reference_nan_rows_keep_gradients_finite_elsewhere():
    from topkattn.ops.topk.naive import topk_attention_reference

    q, k, v = (t.requires_grad_() for t in _qkv(Lq=2, Lk=6, Hq=2, Hkv=2))
    v_bad = _set(v.detach(), (0, 0, 5, 0), NAN).requires_grad_()
    out = topk_attention_reference(q, k, v_bad, None, causal=True)
    out[0, 1].sum().backward()  # head 1 never sees the NaN
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()


def test_good_inputs_still_pass(tmp_path, monkeypatch):
    from topkattn.devices import check_device
    from topkattn.ops.topk import env_backend, resolve_backend
    from topkattn.paths import prepare_out_dir, prepare_out_file

    assert check_device("cpu") == torch.device("cpu")
    assert check_device(None).type in ("cpu", "cuda")
    monkeypatch.setenv("TOPKATTN_BACKEND", "reference")
    assert env_backend() == "reference" and resolve_backend("auto") == "reference"
    monkeypatch.setenv("TOPKATTN_BACKEND", "")
    assert env_backend() is None and resolve_backend("auto") == "auto"
    out = prepare_out_dir(tmp_path / "a" / "b")
    assert out.is_dir() and list(out.iterdir()) == []  # the probe file is gone
    assert prepare_out_dir(out) == out  # existing folder: fine
    f = prepare_out_file(tmp_path / "c" / "w.safetensors", suffixes=(".safetensors", ".pt"))
    assert f.parent.is_dir()
    _attn(sink=0, local=0, scale=0.125)
    _attn(sink=2, local=1, scale=1)


def test_gpt2_is_supported_and_matches_dense():
    from topkattn import TopKConfig, sparsify

    model = _gpt2()
    _check(model)  # used to be refused as "not a decoder-only causal LM"
    ids = torch.randint(0, 97, (1, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(ids).logits
        with sparsify(model, TopKConfig(k=4096, phases=("prefill", "decode"))):
            got = model(ids).logits
        with sparsify(model, TopKConfig(k=2, phases=("prefill", "decode"))) as st:
            model(ids)
    torch.testing.assert_close(got, want)
    assert st[0].calls["sparse"] == 1


def test_load_model_refusal_is_one_line_for_t5(tmp_path):
    """transformers' own message for T5 under AutoModelForCausalLM is about 3 kB."""
    from topkattn.models import load_model

    _t5_config().save_pretrained(tmp_path)
    with pytest.raises(InputError) as info:
        load_model(str(tmp_path), device="cpu")
    assert len(str(info.value)) < 300 and math.isfinite(len(str(info.value)))


KERNEL_NAN_CASES = {
    # name: mutate(q, k, v) for q [1, 2, 16, 16], k, v [1, 1, 16, 16] (one group of two heads)
    "nan-query": lambda q, k, v: (_set(q, (0, 1, 5, 0), NAN), k, v),
    "nan-key-first": lambda q, k, v: (q, _set(k, (0, 0, 0, 3), NAN), v),
    "nan-key-middle": lambda q, k, v: (q, _set(k, (0, 0, 7, 3), NAN), v),
    "inf-key-first": lambda q, k, v: (q.abs(), _set(k, (0, 0, 0), INF), v),
    # scores +inf or -inf by the sign of q[..., 0]: a NaN group sum where the two heads differ
    "mixed-inf-key": lambda q, k, v: (q, _set(k, (0, 0, 3, 0), INF), v),
    # head 0's scores against key 3 are 0 * inf = NaN
    "inf-times-zero": lambda q, k, v: (_set(q, (0, 0, slice(None), 0), 0.0),
                                       _set(k, (0, 0, 3, 0), INF), v),
    # values: rows that select key 9 (12) get NaN (+/-inf) in that column, the others nothing
    "nan-value": lambda q, k, v: (q, k, _set(v, (0, 0, 9, 1), NAN)),
    "inf-values": lambda q, k, v: (q, k, _set(_set(v, (0, 0, 9, 2), INF), (0, 0, 12, 2), -INF)),
}
VALUE_CASES = ("nan-value", "inf-values")


def _kernel_qkv():
    g = torch.Generator().manual_seed(3)
    return tuple(torch.randn(1, h, 16, 16, generator=g) for h in (2, 1, 1))


def _triton_agrees_with_reference(q, k, v, topk, granularity):
    """Assert that `topk_attention` on the Triton backend gives the reference's output and lse
    (NaN where it has NaN) on poisoned q, k, v; returns the reference's output."""
    from topkattn.ops.topk import topk_attention
    from topkattn.ops.topk.naive import topk_attention_reference

    want, wlse = topk_attention_reference(q, k, v, topk, granularity=granularity,
                                          return_lse=True)
    got, lse = topk_attention(q, k, v, topk, granularity=granularity, backend="triton",
                              return_lse=True)
    assert not torch.isfinite(want).all()  # the case poisons something
    torch.testing.assert_close(got, want, equal_nan=True)
    torch.testing.assert_close(lse, wlse, equal_nan=True)
    return want


def _kernel_case(case, grad=False):
    return tuple(t.requires_grad_(grad) for t in KERNEL_NAN_CASES[case](*_kernel_qkv()))


@pytest.mark.parametrize("topk", [4, 100])
@pytest.mark.parametrize("granularity", ["query_head", "kv_group"])
@pytest.mark.parametrize("case", sorted(KERNEL_NAN_CASES))
def test_prefill_kernel_nan_policy_matches_the_reference(case, granularity, topk):
    """The Triton prefill path (interpreter on CPU) gives the reference's output and lse on
    poisoned inputs, NaN and inf exactly where it does: a NaN or +inf score is selected (with
    kv_group a NaN group sum ranks first, so a NaN query leaves the other heads of its group
    the reference's set, the lowest positions); a value outside the selection takes no part
    (no 0 * NaN), a selected one poisons its output column only."""
    _triton_agrees_with_reference(*_kernel_case(case), topk, granularity)


def test_prefill_kernel_unselected_values_take_no_part():
    """Rows that see the poisoned values but did not select them are finite and equal to the
    output with clean values (the kernel's p @ V used to give 0 * NaN = NaN there)."""
    from topkattn.ops.topk import topk_attention
    from topkattn.ops.topk.naive import topk_selection_mask

    for case in VALUE_CASES:
        q, k, v = _kernel_case(case)
        clean = _kernel_qkv()[2]
        sel = topk_selection_mask(q, k, 4)[0, :, :, [9, 12]].any(-1)  # [Hq, Lq]
        sees = torch.arange(16) >= 9
        skipped = ~sel & sees
        assert skipped.any()
        got = topk_attention(q, k, v, 4, backend="triton")[0]
        want = topk_attention(q, k, clean, 4, backend="triton")[0]
        torch.testing.assert_close(got[skipped], want[skipped])
        assert not torch.isfinite(got[sel]).all()


@pytest.mark.parametrize("granularity", ["query_head", "kv_group"])
@pytest.mark.parametrize("case", sorted(set(KERNEL_NAN_CASES) - {"nan-key-first", "inf-key-first"}))
def test_prefill_kernel_gradients_on_poisoned_inputs(case, granularity):  # (some row finite)
    """Training path: the forward agrees with the reference under autograd, and the gradients
    of a loss over the reference's finite outputs agree wherever both are finite; with poisoned
    values (the output finite apart from the columns that took them) every gradient is finite
    and equal. (Where a NaN / +inf score makes a row NaN, autograd's 0 * NaN spreads NaN
    through the reference's gradients in its own pattern; that pattern is not reproduced.)"""
    from topkattn.ops.topk import topk_attention

    w = torch.randn(1, 2, 16, 16, generator=torch.Generator().manual_seed(5))
    outs, grads = [], []
    for backend in ("reference", "triton"):
        q, k, v = _kernel_case(case, grad=True)
        out = topk_attention(q, k, v, 4, granularity=granularity, backend=backend)
        fin = torch.isfinite(out.detach()) if backend == "reference" else fin
        torch.where(fin, out * w, 0.0).sum().backward()
        outs.append(out.detach())
        grads.append((q.grad, k.grad, v.grad))
    torch.testing.assert_close(outs[1], outs[0], equal_nan=True)
    compared = 0
    for name, got, want in zip("qkv", *grads[::-1]):
        both = torch.isfinite(got) & torch.isfinite(want)
        torch.testing.assert_close(got[both], want[both], msg=name)
        compared += int(both.sum())
        if case in VALUE_CASES:
            assert both.all(), name
    assert compared > 0


DECODE_NAN_CASES = {**KERNEL_NAN_CASES,
                    "nan-query": lambda q, k, v: (_set(q, (0, 1, 0, 0), NAN), k, v)}


def _decode_case(case, n):
    """One query row per head (q [1, 2, 1, 16]) against n keys (k, v [1, 1, n, 16]) poisoned as
    ``DECODE_NAN_CASES[case]`` (its key positions lie below 16). The heads' scores against key
    3 have opposite signs (``mixed-inf-key``: +inf and -inf, a NaN group sum); key 9 scores high
    for both heads, so that topk=4 selects the poisoned value there and not the one at 12."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, h, L, 16, generator=g) for h, L in ((2, 1), (1, n), (1, n)))
    q[0, :, 0, 0] = torch.tensor([1.0, -1.0])
    k[0, 0, 9] = 2 * q[0, :, 0].sum(0)
    return DECODE_NAN_CASES[case](q, k, v)


@pytest.mark.parametrize("n", [16, 64, 200])  # 200: topk=100 splits the sparse pass in two
@pytest.mark.parametrize("topk", [4, 100])
@pytest.mark.parametrize("granularity", ["query_head", "kv_group"])
@pytest.mark.parametrize("case", sorted(DECODE_NAN_CASES))
def test_decode_kernel_nan_policy_matches_the_reference(case, granularity, topk, n):
    """The Triton decode path (Lq == 1: scores, selection, sparse attention; interpreter on CPU)
    gives the reference's output and lse on poisoned inputs, through `topk_attention` and the
    ``topkattn::topk_decode`` body: a NaN or +inf score is selected (with kv_group a NaN group
    sum ranks as +inf), lse is NaN / +inf where the reference's is, and a value outside the
    selection takes no part."""
    from topkattn.ops.topk.custom_ops import topk_decode_ranges

    q, k, v = _decode_case(case, n)
    want = _triton_agrees_with_reference(q, k, v, topk, granularity)
    ends, starts = torch.tensor([n], dtype=torch.int32), torch.zeros(1, dtype=torch.int32)
    ranged = topk_decode_ranges(q, k, v, starts, ends, topk, 0.25, 0, 0,
                                granularity == "kv_group")
    torch.testing.assert_close(ranged, want, equal_nan=True)
