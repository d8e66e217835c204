"""Top-k selection kernels (indices of the k largest scores per row) and their reference.

`topk_select` (Triton, radix select over the fp32 bit pattern, not a sort) and
`topk_select_reference` (PyTorch) return the same set of positions; ties keep the lowest
position.
"""

from topkattn.ops.select.reference import topk_select_mask_reference, topk_select_reference

__all__ = ["topk_select", "topk_select_reference", "topk_select_mask_reference"]


def __getattr__(name):  # lazy: importing triton is slow and optional
    if name == "topk_select":
        from topkattn.ops.select.triton_select import topk_select

        return topk_select
    raise AttributeError(name)
