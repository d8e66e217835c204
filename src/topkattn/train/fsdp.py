"""FSDP2 for `topkattn train --fsdp`: parameters, gradients and optimizer state sharded.

`shard_model` applies PyTorch's ``fully_shard`` to every decoder layer, then to the root (the
embeddings, final norm and the tied LM head live in the root group). Each rank then holds
1/world of every parameter as a ``DTensor``; a layer's full weights exist only while its forward
or backward runs. The optimizer is built on the sharded parameters, so its state is sharded
too. bf16: a `MixedPrecisionPolicy` computes in bf16 over fp32 sharded master weights and
reduces gradients in fp32. Activation checkpointing (transformers' non-reentrant
``gradient_checkpointing_enable``, applied before sharding) recomputes a layer in backward,
all-gathering its weights again.

`full_state_dict` gathers the unsharded weights (on CPU, rank 0) for the final Hugging Face save;
checkpoints stay sharded (`topkattn.train.checkpoint`, torch.distributed.checkpoint).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of ``model`` (a HF causal LM, or a peft model around one).

    Blocks are the modules whose class transformers names in ``_no_split_modules`` (e.g.
    ``LlamaDecoderLayer``); without that list, the children of the longest ``ModuleList``.
    """
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    found = [m for m in model.modules() if type(m).__name__ in names]
    if found:
        return found
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def shard_model(model: torch.nn.Module, device: torch.device, world_size: int,
                bf16: bool) -> torch.nn.Module:
    """``fully_shard`` each decoder layer, then the root, over a 1-D mesh of all ranks.

    The default process group must be initialised (world_size > 1). Returns ``model`` itself
    (fully_shard works in place; the module's class becomes an ``FSDPModule``).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
          if bf16 else MixedPrecisionPolicy())
    layers = decoder_layers(model)
    if not layers:
        raise RuntimeError(f"{type(model).__name__}: no decoder layers found to shard")
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def no_grad_sync(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient reduce-scatter of a micro-batch that is not an optimizer step's last
    (gradients accumulate unsharded locally; the last micro-batch reduces them all)."""
    if not enabled:
        yield
        return
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded weights of ``model`` on CPU (a collective: every rank calls it; the dict
    is full on rank 0 and empty elsewhere)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                 cpu_offload=True))


__all__ = ["decoder_layers", "full_state_dict", "is_sharded", "no_grad_sync", "shard_model"]
