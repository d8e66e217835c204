"""Is the bf16 compiled Top-k decode step off because of a wrong key set, or because a random
bf16 model amplifies rounding? Prints, for exact Top-k kv_group at several k and for full
attention over key ranges, the relative RMS distance of the first decode step's logits between
eager bf16, compiled bf16 (Inductor, CUDA graphs) and the fp32 model (eager), all fed the same
tokens. A wrong key set shows as compiled far from fp32 while eager is close.

    PYTHONPATH=src:. python scripts/device_bf16_compiled_check.py
"""

import warnings

import torch

from tests.integrations.test_fast_generate import _decode_loop, _gpu_model
from topkattn import TopKConfig, sparsify


def rel(a, b):
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()).item()


def first_logits(model, x, cfg, compiled):
    logits = []
    torch._dynamo.reset()
    with torch.no_grad(), sparsify(model, cfg), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fwd = torch.compile(model.forward, fullgraph=True, mode="reduce-overhead") if compiled else model
        forced = torch.zeros(x.shape[0], 4, dtype=torch.long, device=x.device)
        _decode_loop(model, x, fwd, 3, max_cache_len=1600, forced=forced, logits=logits)
    return logits[0]


def main():
    x = torch.randint(0, 1000, (1, 1500), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    for cfg in [TopKConfig(k=None)] + [TopKConfig(k=k, granularity="kv_group", phases=("decode",))
                                        for k in (128, 512, 1024)]:
        ref = first_logits(_gpu_model().float(), x, cfg, False)
        model = _gpu_model()  # bf16
        eager = first_logits(model, x, cfg, False)
        comp = first_logits(model, x, cfg, True)
        print(f"k={cfg.k}: eager-vs-fp32 {rel(eager, ref):.4f}  compiled-vs-fp32 {rel(comp, ref):.4f}"
              f"  compiled-vs-eager {rel(comp, eager):.4f}", flush=True)


if __name__ == "__main__":
    main()
