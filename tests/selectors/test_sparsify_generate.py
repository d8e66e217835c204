import pytest
import torch

from .tiny import random_prompt
from topkattn.config import TopKConfig
from topkattn.integrations.hf import sparsify
from topkattn.selectors import LightningIndexer

SPECS = [("exact", {}), ("precision:0.5", {"protect": 1}), ("window", {}), ("random", {}),
         ("quest:8", {}), ("spans:8", {}), ("spans", {"boundary": "fixed", "score": "bound"}),
         ("lightning", {}), ("lightning", {"query_source": "query"})]


@pytest.mark.filterwarnings("ignore:lightning selector without trained weights")
@pytest.mark.parametrize("spec,args", SPECS, ids=[f"{s}{a}" for s, a in SPECS])
@pytest.mark.parametrize("phases", [("decode",), ("decode", "prefill")])
def test_every_selector_generates(llama, spec, args, phases):
    ids = torch.tensor([[int(t) for t in random_prompt(80).split()]])
    cfg = TopKConfig(k=12, selector=spec, selector_args=args, phases=phases)
    with sparsify(llama, cfg) as states:
        out = llama.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 85)
    assert sum(s.calls["sparse"] for s in states.values()) > 0


def test_trained_weights_through_config(llama, tmp_path):
    ind = LightningIndexer.for_model(llama, n_heads=2, head_dim=8)
    path = ind.save(tmp_path / "ind.safetensors")
    ids = torch.tensor([[int(t) for t in random_prompt(60).split()]])
    with sparsify(llama, TopKConfig(k=8, selector=f"lightning:{path}")):
        out = llama.generate(input_ids=ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 63)
