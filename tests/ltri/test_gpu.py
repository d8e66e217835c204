"""Ltri on CUDA: tier 2 in pinned CPU memory, tier 1 on the GPU, side-stream copies; with a
budget covering the context the tokens equal dense decoding (fp32 tiny model)."""

import pytest
import torch

from tests.selectors.tiny import tiny_llama
from topkattn.ltri.config import LtriConfig
from topkattn.ltri.context import ltri_context

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("threads", [4, 0])
def test_offloaded_tiers_on_cuda(threads):
    model = tiny_llama(layers=4).cuda()
    ids = torch.randint(3, 120, (1, 700), device="cuda",
                        generator=torch.Generator("cuda").manual_seed(0))
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=12, do_sample=False)[0, 700:].tolist()
    cfg = LtriConfig(budget_tokens=1024, sink=4, recent=64, max_span=16, chunk_size=128,
                     retrieval_layers=(1,), gpu_kv_budget="64MiB", gather_threads=threads)
    with ltri_context(model, cfg) as run:
        out = run.generate(ids, 12)
    cache = run.cache
    layer = cache.layers[2]
    assert layer.t2k.device.type == "cpu" and layer.t2k.is_pinned()
    assert layer.t1k.device.type == "cuda" and layer.copy_stream is not None
    assert out == ref
    # a small budget: decoding runs and copies spans in
    before = torch.cuda.memory_allocated()
    small = cfg.with_(budget_tokens=64)
    with ltri_context(model, small) as run:
        out = run.generate(ids, 12)
    assert len(out) == 12 and run.cache.tier1_bytes() < 64 * 2**20
    assert run.cache.moved_tokens() > 64
    assert torch.cuda.memory_allocated() - before < 64 * 2**20


def test_gathers_in_worker_threads_equal_gathers_in_the_calling_thread():
    model = tiny_llama(layers=4).cuda()
    ids = torch.randint(3, 120, (1, 700), device="cuda",
                        generator=torch.Generator("cuda").manual_seed(1))
    outs, rows = [], []
    for threads in (4, 0):
        cfg = LtriConfig(budget_tokens=64, sink=4, recent=64, max_span=16, chunk_size=128,
                         retrieval_layers=(1,), gather_threads=threads)
        with ltri_context(model, cfg) as run:
            outs.append(run.generate(ids, 12))
        rows.append(run.cache.layers[3].t1k.clone())
    assert outs[0] == outs[1]
    torch.testing.assert_close(rows[0], rows[1], atol=0, rtol=0)
