"""FSDP2 training on CPU: 2 gloo processes (torch.multiprocessing spawn) against 1 process.

One spawn runs three FSDP jobs: a 4-step Top-k run with activation checkpointing, a resume
from a checkpoint written by 1 process, and a bf16 run. The test then resumes a checkpoint of
the 2-process run in 1 process. With the same global batch every curve is the 1-process one.
"""

from __future__ import annotations

import json
import os
import shutil
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.train.test_sft import _cfg, _overfit_data, _weights
from topkattn.errors import InputError
from topkattn.train.sft import TrainConfig, latest_checkpoint, train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cfgs: list[TrainConfig]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    # one process group for all jobs (train() uses it and leaves it to us)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for cfg in cfgs:
            train(cfg, progress=False)
    finally:
        dist.barrier()
        dist.destroy_process_group()


def _run(tiny_model_dir, data, out, **kw) -> TrainConfig:
    base = dict(k="4", max_steps=4, save_every=2, batch_size=2, lr=1e-2)
    base.update(kw)
    return _cfg(tiny_model_dir, data, out, **base)


def _summary(out):
    return json.loads((out / "train_summary.json").read_text())


def _copy_checkpoint(src_out, dst_out, step: int) -> None:
    """A fresh run folder holding only ``src_out``'s checkpoint of ``step``."""
    name = f"checkpoints/step-{step}"
    shutil.copytree(src_out / name, dst_out / name)


def test_fsdp_two_processes_match_one_and_resume_across_world_sizes(tiny_model_dir, tmp_path):
    data = _overfit_data(tmp_path)
    # the reference: 1 process, no FSDP, 2 micro-batches of 2 per step (global batch 4)
    ref = train(_run(tiny_model_dir, data, tmp_path / "ref", grad_accum=2), progress=False)
    dense = train(_run(tiny_model_dir, data, tmp_path / "dense", k="full", max_steps=1,
                       save_every=0, grad_accum=2), progress=False)
    assert ref.losses[0] != pytest.approx(dense.losses[0], rel=1e-6)  # Top-k, not dense
    _copy_checkpoint(tmp_path / "ref", tmp_path / "r12", 2)
    jobs = [
        # 2 processes x 1 micro-batch of 2: the same global batch, FSDP + activation ckpt
        _run(tiny_model_dir, data, tmp_path / "f2", grad_accum=1, fsdp=True,
             gradient_checkpointing="on"),
        # resume a 1-process checkpoint with 2 FSDP processes
        _run(tiny_model_dir, data, tmp_path / "r12", grad_accum=1, fsdp=True),
        # bf16 through FSDP's mixed-precision policy
        _run(tiny_model_dir, data, tmp_path / "bf16", grad_accum=1, fsdp=True, max_steps=2,
             save_every=0, precision="bf16"),
    ]
    mp.spawn(_worker, args=(2, _free_port(), jobs), nprocs=2, join=True)

    f2 = _summary(tmp_path / "f2")
    assert f2["world_size"] == 2 and f2["fsdp"] is True and f2["steps"] == 4
    assert f2["peak_memory_gib_per_rank"] == [None, None]  # CPU: no GPU memory to report
    assert f2["tokens_per_s"] > 0
    assert f2["losses"] == pytest.approx(ref.losses, rel=1e-5, abs=1e-6)
    # the final model is a plain HF folder with the 1-process weights
    wr, wf = _weights(tmp_path / "ref"), _weights(tmp_path / "f2")
    assert set(wf) == set(wr)
    for n in wr:
        torch.testing.assert_close(wf[n], wr[n], rtol=1e-4, atol=1e-5)
    from topkattn.models import load_model

    m, _ = load_model(str(tmp_path / "f2"), device="cpu")
    assert type(m).__name__ == "LlamaForCausalLM"

    r12 = _summary(tmp_path / "r12")
    assert r12["resumed_from"] == 2 and r12["world_size"] == 2
    assert r12["losses"] == pytest.approx(ref.losses, rel=1e-5, abs=1e-6)

    bf = _summary(tmp_path / "bf16")
    assert bf["losses"] == pytest.approx(ref.losses[:2], rel=2e-2)
    assert bf["losses"] != ref.losses[:2]  # computed in bf16, not fp32

    # a 2-process FSDP checkpoint resumed by 1 process (grad_accum 2 keeps the global batch)
    assert latest_checkpoint(tmp_path / "f2").name == "step-2"
    _copy_checkpoint(tmp_path / "f2", tmp_path / "r21", 2)
    r21 = train(_run(tiny_model_dir, data, tmp_path / "r21", grad_accum=2, fsdp=True),
                progress=False)
    assert r21.resumed_from == 2
    assert r21.losses == pytest.approx(ref.losses, rel=1e-5, abs=1e-6)
    w21 = _weights(tmp_path / "r21")
    for n in wr:
        torch.testing.assert_close(w21[n], wr[n], rtol=1e-4, atol=1e-5)

    # another global batch is refused, with the --grad-accum that would fit
    _copy_checkpoint(tmp_path / "f2", tmp_path / "bad", 2)
    with pytest.raises(InputError, match="4 sequences per optimizer step.*this run has 2; "
                                         "with 1 process use --grad-accum 2"):
        train(_run(tiny_model_dir, data, tmp_path / "bad", grad_accum=1), progress=False)


def test_fsdp_config_values():
    assert TrainConfig(data="x.jsonl", out="o", fsdp=True).to_dict()["fsdp"] is True
    with pytest.raises(InputError, match="fsdp=True with lora=True is not supported"):
        TrainConfig(data="x.jsonl", out="o", fsdp=True, lora=True)
    with pytest.raises(InputError, match="fsdp='yes' is not allowed"):
        TrainConfig(data="x.jsonl", out="o", fsdp="yes")


def test_decoder_layers_are_the_blocks(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from topkattn.train.fsdp import decoder_layers

    m = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    layers = decoder_layers(m)
    assert [type(x).__name__ for x in layers] == ["LlamaDecoderLayer"] * 2
    assert layers[0] is m.model.layers[0]


def test_fsdp_flag_with_one_process_says_nothing_is_sharded(tiny_model_dir, tmp_path,
                                                            monkeypatch, capsys):
    from tests.helpers import run_main

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    out = tmp_path / "run"
    code, stdout, err = run_main(
        monkeypatch, capsys, "train", "--data", _overfit_data(tmp_path, 4), "--out", str(out),
        "--model", tiny_model_dir, "--max-length", "64", "--steps", "1", "--warmup-steps", "0",
        "--save-every", "0", "--device", "cpu", "--quiet", "--k", "4", "--backend",
        "reference", "--fsdp")
    assert code == 0, err
    assert "note: --fsdp with one process has nothing to shard" in err
    s = _summary(out)
    assert s["fsdp"] is False and s["world_size"] == 1 and s["config"]["fsdp"] is True
