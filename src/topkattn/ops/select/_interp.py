"""Compatibility shim for Triton's CPU interpreter (TRITON_INTERPRET=1) with NumPy >= 2.3.

The interpreter keeps scalars as 1-element arrays and turns them into Python ints with
``int(array)``, which recent NumPy refuses for arrays with ndim > 0; loops whose bounds are
computed in the kernel (``range(lo, hi, BLOCK)``) then fail. This wraps the interpreter's tensor
patch so ``__index__`` reads the single element. No effect when the interpreter is not used.
"""

from __future__ import annotations

from topkattn.ops.topk.triton_env import INTERPRET


def apply() -> None:
    """Install the shim once (idempotent); only when TRITON_INTERPRET=1."""
    if not INTERPRET:
        return
    try:
        import numpy as np
        from triton.runtime import interpreter
    except ImportError:  # pragma: no cover
        return
    if getattr(interpreter, "_topkattn_patched", False):
        return
    orig = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    interpreter._patch_lang_tensor = patched
    interpreter._topkattn_patched = True


apply()
