"""Gradients of Top-k attention reach only the selected keys (what Top-k SFT relies on)."""

from __future__ import annotations

import torch

from topkattn.ops.topk import topk_attention
from topkattn.ops.topk.naive import topk_selection_mask


def test_gradients_zero_outside_selected_set():
    torch.manual_seed(0)
    B, Hq, Hkv, L, D, k = 1, 4, 2, 23, 8, 3
    q = torch.randn(B, Hq, L, D, dtype=torch.float64, requires_grad=True)
    kk = torch.randn(B, Hkv, L, D, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, Hkv, L, D, dtype=torch.float64, requires_grad=True)
    out = topk_attention(q, kk, v, topk=k, backend="reference")
    out.pow(2).sum().backward()
    sel = topk_selection_mask(q.detach(), kk.detach(), k)  # [B, Hq, L, L]
    # a key/value position gets gradient only if some query of its KV group selected it
    used = sel.view(B, Hkv, Hq // Hkv, L, L).any(2).any(2)  # [B, Hkv, L]
    assert (~used).any()
    assert torch.all(v.grad[~used] == 0) and torch.all(kk.grad[~used] == 0)
    assert (v.grad[used].abs().sum(-1) > 0).all()
    # one query row: its gradient w.r.t. v is zero outside its own selected set
    q1 = q.detach()[:, :, -1:].clone().requires_grad_(True)
    v1 = v.detach().clone().requires_grad_(True)
    o1 = topk_attention(q1, kk.detach(), v1, topk=k, backend="reference")
    o1.sum().backward()
    s1 = topk_selection_mask(q1.detach(), kk.detach(), k)[0, :, 0]  # [Hq, L]
    used1 = s1.view(Hkv, Hq // Hkv, L).any(1)
    assert torch.all(v1.grad[0][~used1] == 0)
    assert (v1.grad[0][used1].abs().sum(-1) > 0).all()


def test_model_level_gradients_only_through_selected():
    """1-layer model under sparsify: the last token's loss sends gradient to at most
    k x (query heads per KV head) value positions of each KV head; dense reaches all."""
    from tests.helpers import tiny_causal_lm
    from topkattn import TopKConfig
    from topkattn.integrations.hf import sparsify

    L, k = 17, 3
    ids = torch.randint(3, 90, (1, L), generator=torch.Generator().manual_seed(1))

    def value_grad_positions(cfg):
        model = tiny_causal_lm("llama", layers=1).train()
        attn = model.model.layers[0].self_attn
        held = {}

        def hook(mod, inp, out):
            out.retain_grad()
            held["v"] = out

        h = attn.v_proj.register_forward_hook(hook)
        ctx = sparsify(model, cfg) if cfg is not None else torch.enable_grad()
        with ctx:
            model(input_ids=ids).logits[0, -1].logsumexp(-1).backward()
        h.remove()
        g = held["v"].grad[0].view(L, 2, -1)  # [L, Hkv, D]
        return (g.abs().sum(-1) > 0).sum(0)  # positions with gradient, per KV head

    sparse = value_grad_positions(TopKConfig(k=k, phases=("decode", "prefill"),
                                             backend="reference"))
    dense = value_grad_positions(None)
    assert (sparse <= k * 2).all() and (sparse >= 1).all()
    assert (dense == L).all()
