"""Native Top-k SFT on a tiny random model: learning, k >= n equivalence, resume, LoRA."""

from __future__ import annotations

import json

import pytest
import torch

from topkattn.config import TopKConfig, parse_k
from topkattn.train.sft import TrainConfig, latest_checkpoint, train


def _overfit_data(tmp_path, n: int = 8):
    """Prompt/completion pairs with a fixed answer per prompt (easy to memorise)."""
    recs = [{"prompt": f"Item {i}: the colour of box {i} is", "completion": f" {c}"}
            for i, c in enumerate(["red", "blue", "green", "amber", "teal", "grey", "pink",
                                   "gold"][:n])]
    p = tmp_path / "overfit.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    return str(p)


def _topk(k: str = "full", **kw) -> TopKConfig:
    """The TopKConfig of training with k given as on the command line."""
    k, k_ratio = parse_k(k)
    return TopKConfig(k=k, k_ratio=k_ratio, phases=("decode", "prefill"), **kw)


def _cfg(tiny_model_dir, data, out, k: str = "full", backend: str = "reference", **kw):
    # the conftest sets TRITON_INTERPRET=1 on CPU: backend "auto" would run the Triton kernels
    # in the (slow) interpreter; their tests live in tests/ops
    base = dict(data=data, out=str(out), model=tiny_model_dir, max_length=64, batch_size=4,
                lr=3e-3, warmup_steps=1, max_steps=8, save_every=0, device="cpu",
                topk=_topk(k, backend=backend))
    base.update(kw)
    return TrainConfig(**base)


def _weights(path):
    from safetensors.torch import load_file

    return load_file(f"{path}/model.safetensors")


@pytest.mark.parametrize("bad,match", [
    (dict(batch_size=0), "batch_size"), (dict(lr=0.0), "lr"), (dict(lr=5.0), "lr"),
    (dict(warmup_steps=50, max_steps=10), "warmup_steps"), (dict(precision="fp8"), "precision"),
    (dict(gradient_checkpointing="maybe"), "gradient_checkpointing"),
    (dict(max_length=-3), "max_length"),
    (dict(topk="64"), "topk='64' is not allowed: a TopKConfig"),
    (dict(topk=TopKConfig(k=4)), r"topk.phases=\('decode',\) must include 'prefill'"),
    (dict(topk=TopKConfig(k=None, phases=("decode", "prefill"), sink=2)),
     "sink=2/local=0 need a k"),
])
def test_config_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(data="x.jsonl", out="o", **bad)


def test_config_carries_the_topk_config_whole():
    topk = _topk("5%", sink=1, local=2, min_context=16, granularity="kv_group",
                 dense_layers=(0,))
    cfg = TrainConfig(data="x.jsonl", out="o", topk=topk)
    assert cfg.topk is topk  # carried whole, not rebuilt
    d = cfg.to_dict()
    assert d["topk"]["k_ratio"] == pytest.approx(0.05) and d["topk"]["min_context"] == 16
    assert d["topk"]["granularity"] == "kv_group" and d["topk"]["phases"] == ["decode", "prefill"]
    assert d["k"] == "0.05"
    dense = TrainConfig(data="x.jsonl", out="o")
    assert dense.topk.dense and dense.to_dict()["k"] == "full"


@pytest.mark.parametrize("k,ckpt", [("full", "off"), ("6", "on")])
def test_training_changes_weights_and_lowers_loss(tiny_model_dir, tmp_path, k, ckpt):
    data = _overfit_data(tmp_path)
    res = train(_cfg(tiny_model_dir, data, tmp_path / "run", k=k, max_steps=10, lr=1e-2,
                     gradient_checkpointing=ckpt),
                progress=False)
    assert res.steps == 10
    assert res.losses[-1] < 0.75 * res.losses[0], res.losses
    before, after = _weights(tiny_model_dir), _weights(tmp_path / "run")
    changed = [n for n in after if not torch.equal(before[n], after[n])]
    assert len(changed) >= len(after) // 2
    # the saved folder is a normal HF model that load_model reads
    from topkattn.models import load_model

    m, tok = load_model(str(tmp_path / "run"), device="cpu")
    assert type(m).__name__ == "LlamaForCausalLM" and tok.eos_token == "<|im_end|>"


def test_topk_with_k_ge_n_equals_dense_step_for_step(tiny_model_dir, tmp_path, monkeypatch):
    """k >= every context: through the reference operator (forced on) == dense SDPA."""
    data = _overfit_data(tmp_path)
    dense = train(_cfg(tiny_model_dir, data, tmp_path / "dense", k="full", max_steps=5),
                  progress=False)
    # sparsify would fall back to SDPA for k >= context; force the Top-k operator instead.
    calls = {"n": 0}
    real = TopKConfig.applies_to

    def always(self, layer_idx, phase, context):
        calls["n"] += 1
        return True

    monkeypatch.setattr(TopKConfig, "applies_to", always)
    topk = train(_cfg(tiny_model_dir, data, tmp_path / "topk", k="64", backend="reference",
                      max_steps=5), progress=False)
    monkeypatch.setattr(TopKConfig, "applies_to", real)
    assert calls["n"] > 0
    assert topk.losses == pytest.approx(dense.losses, rel=1e-4, abs=1e-5)
    wd, wt = _weights(tmp_path / "dense"), _weights(tmp_path / "topk")
    for n in wd:
        torch.testing.assert_close(wt[n], wd[n], rtol=1e-3, atol=1e-4)
    # and without forcing, k >= n takes transformers' SDPA path: identical to dense
    again = train(_cfg(tiny_model_dir, data, tmp_path / "topk2", k="64", max_steps=5),
                  progress=False)
    assert again.losses == dense.losses


def test_small_k_differs_from_dense(tiny_model_dir, tmp_path):
    data = _overfit_data(tmp_path)
    dense = train(_cfg(tiny_model_dir, data, tmp_path / "d", k="full", max_steps=2),
                  progress=False)
    sparse = train(_cfg(tiny_model_dir, data, tmp_path / "s", k="2", max_steps=2),
                   progress=False)
    assert sparse.losses[0] != pytest.approx(dense.losses[0], rel=1e-6)


def test_resume_after_interruption_matches_uninterrupted(tiny_model_dir, tmp_path):
    data = _overfit_data(tmp_path)
    full = train(_cfg(tiny_model_dir, data, tmp_path / "a", k="4", max_steps=6, save_every=2,
                      batch_size=2, grad_accum=2), progress=False)

    class Killed(Exception):
        pass

    def kill_at_3(step, loss):
        if step == 3:
            raise Killed

    cfg = _cfg(tiny_model_dir, data, tmp_path / "b", k="4", max_steps=6, save_every=2,
               batch_size=2, grad_accum=2)
    with pytest.raises(Killed):
        train(cfg, on_step=kill_at_3, progress=False)
    assert latest_checkpoint(tmp_path / "b").name == "step-2"
    assert not (tmp_path / "b" / "model.safetensors").exists()
    resumed = train(cfg, progress=False)
    assert resumed.resumed_from == 2
    assert resumed.losses == pytest.approx(full.losses, rel=1e-6, abs=1e-7)
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    for n in wa:
        torch.testing.assert_close(wb[n], wa[n], rtol=1e-6, atol=1e-7)
    # a different run configuration refuses the checkpoint instead of mixing runs
    other = _cfg(tiny_model_dir, data, tmp_path / "c", k="4", max_steps=6, save_every=2,
                 batch_size=2, grad_accum=2)
    with pytest.raises(Killed):
        train(other, on_step=kill_at_3, progress=False)
    with pytest.raises(ValueError, match="different run"):
        train(_cfg(tiny_model_dir, data, tmp_path / "c", k="8", max_steps=6, save_every=2,
                   batch_size=2, grad_accum=2), progress=False)


def test_lora_trains_and_saves_merged_model(tiny_model_dir, tmp_path):
    pytest.importorskip("peft")
    data = _overfit_data(tmp_path)
    res = train(_cfg(tiny_model_dir, data, tmp_path / "lora", k="4", lora=True, lora_r=4,
                     lora_alpha=8, max_steps=6, lr=1e-2), progress=False)
    assert res.losses[-1] < res.losses[0]
    assert (tmp_path / "lora" / "adapter").is_dir()
    before, after = _weights(tiny_model_dir), _weights(tmp_path / "lora")
    assert set(before) == set(after)  # merged: plain weights, no lora_ names
    changed = {n for n in after if not torch.equal(before[n], after[n])}
    assert changed and all(any(t in n for t in ("q_proj", "k_proj", "v_proj", "o_proj"))
                           for n in changed)


def test_chat_jsonl_training(tiny_model_dir, tmp_path):
    p = tmp_path / "chat.jsonl"
    p.write_text("\n".join(json.dumps({"messages": [
        {"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": w}]})
        for w in ["alpha", "beta", "gamma", "delta"]) + "\n")
    res = train(_cfg(tiny_model_dir, str(p), tmp_path / "chat", k="3", max_steps=4),
                progress=False)
    assert res.steps == 4 and all(l == l for l in res.losses)
    summary = json.loads((tmp_path / "chat" / "train_summary.json").read_text())
    assert summary["steps"] == 4 and summary["data"]["examples"] == 4


def test_missing_data_file_fails_before_loading_the_model(tmp_path):
    from topkattn.train.sft import build_model

    cfg = TrainConfig(data=str(tmp_path / "nope.jsonl"), out=str(tmp_path / "o"),
                      model=str(tmp_path / "no-model"))
    # the data error comes first: the (also missing) model is never looked at
    with pytest.raises(FileNotFoundError, match="nope.jsonl.*does not exist"):
        build_model(cfg, torch.device("cpu"))
