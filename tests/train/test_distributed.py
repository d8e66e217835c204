"""Two CPU processes (gloo) through torchrun train in lock-step: identical final weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_two_process_gloo_ranks_end_identical(tiny_model_dir, tmp_path):
    recs = [{"prompt": f"Item {i}: the colour is", "completion": f" c{i}"} for i in range(8)]
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "topkattn.cli.train_cmd", "train", "--model", tiny_model_dir, "--data",
           str(data), "--out", str(out), "--k", "4", "--backend", "reference", "--steps", "3", "--batch-size", "2",
           "--max-length", "64", "--lr", "1e-2", "--warmup-steps", "1", "--save-every", "2",
           "--device", "cpu", "--quiet"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3
    d = summary["rank_weight_digests"]
    assert len(d) == 2 and d[0] == d[1]
    # and the weights did change from the initial model
    from topkattn.train.sft import weights_digest
    from transformers import AutoModelForCausalLM

    init = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert weights_digest(init) != d[0]
    assert (out / "checkpoints" / "step-2").is_dir()
