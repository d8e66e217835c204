"""Cheap repeated launches of a Triton kernel: `cached_launch`.

``kernel[grid](*args, **kwargs)`` goes through Triton's Python launcher every time: it binds
the arguments, derives their specialisation, hashes a cache key, reads several knobs and
builds launch metadata before it calls the compiled kernel's launcher. On the H200 (triton
3.6) that is about 20 us for a kernel of 20 arguments and up to 50 us for ours, while the
compiled launcher alone takes about 6 us. Eager decoding launches six kernels per layer and
step, so that overhead decides the speed of a model that is bound by the host.

`cached_launch` wraps a ``@triton.jit`` kernel with the same ``[grid](...)`` call syntax. The
first launch of a given specialisation goes through Triton as usual (compiling if needed);
later launches whose arguments specialise the same way call the compiled kernel's launcher
directly. The specialisation key follows Triton's rules: a tensor's dtype and whether its
address is 16-byte aligned; an integer's width class and, unless the parameter is in
``do_not_specialize``, whether it equals 1 and whether it is divisible by 16; the keyword
arguments (constexprs and launch options) by value.

Triton's own path is kept (and used for every call) under the interpreter, when a launch
hook is set (profilers), when a runtime argument is passed by keyword, and when
``topkattn.ops.testing.FaultInjection.force_triton_launcher`` asks for it (an A/B switch:
``with testing.inject(force_triton_launcher=True): ...``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from topkattn.ops import testing
from topkattn.ops.topk.triton_env import HAS_TRITON, INTERPRET

if HAS_TRITON:
    import triton

_I32 = (-(2**31), 2**31)


def _int_class(a: int) -> int:
    """Triton's integer types: 0 = i32, 1 = i64, 2 = u64."""
    if _I32[0] <= a < _I32[1]:
        return 0
    return 2 if a >= 2**63 else 1


def arg_key(a: Any, specialize: bool) -> Any:
    """What of a runtime argument decides the kernel Triton compiles for it."""
    if isinstance(a, torch.Tensor):
        return (a.dtype, (a.data_ptr() & 15) == 0)
    if isinstance(a, bool):
        return bool
    if isinstance(a, int):
        if specialize:
            return (_int_class(a), a == 1, (a & 15) == 0)
        return _int_class(a)
    if isinstance(a, float):
        return float
    return a  # None, dtypes, constexpr values: by value


def _hooked(hook) -> bool:
    """Whether a Triton launch hook is set: a function, or a non-empty hook chain (Triton
    >= 3.5 keeps an empty `HookChain` there by default)."""
    return hook is not None and bool(getattr(hook, "calls", True))


class CachedLaunch:
    """A ``@triton.jit`` kernel launched as ``k[grid](*args, **kwargs)`` (runtime arguments by
    position, constexprs and launch options by keyword), through the compiled kernel's
    launcher once Triton has compiled that specialisation. See the module docstring."""

    def __init__(self, fn):
        self.fn = fn
        self._cache: dict[tuple, tuple[Any, tuple]] = {}
        self._specialize: tuple[bool, ...] | None = None
        self.fast_launches = 0  # counts launches that bypassed Triton's launcher (tests)

    def __getattr__(self, name: str):  # the JITFunction's attributes (src, params, ...)
        return getattr(self.fn, name)

    def __getitem__(self, grid) -> Callable[..., None]:
        return lambda *args, **kwargs: self.launch(grid, args, kwargs)

    def _param_flags(self) -> tuple[bool, ...]:
        if self._specialize is None:
            self._specialize = tuple(not p.do_not_specialize for p in self.fn.params)
        return self._specialize

    def launch(self, grid, args: tuple, kwargs: dict) -> None:
        """Launch on the current CUDA stream of the current device."""
        if (testing.active().force_triton_launcher or callable(grid) or not args
                or not isinstance(args[0], torch.Tensor) or not args[0].is_cuda):
            self.fn[grid](*args, **kwargs)
            return
        rt = triton.knobs.runtime
        if _hooked(rt.launch_enter_hook) or _hooked(rt.launch_exit_hook):
            self.fn[grid](*args, **kwargs)
            return
        flags = self._param_flags()
        device = torch._C._cuda_getDevice()  # what Triton launches on: the current device
        key = (device, tuple(kwargs.items()), tuple(map(arg_key, args, flags)))
        entry = self._cache.get(key)
        if entry is None:
            kernel = self.fn[grid](*args, **kwargs)
            self._remember(key, kernel, len(args), kwargs)
            return
        kernel, tail = entry
        if kernel is None:  # a call shape that has to go through Triton
            self.fn[grid](*args, **kwargs)
            return
        g0 = grid[0]
        g1 = grid[1] if len(grid) > 1 else 1
        g2 = grid[2] if len(grid) > 2 else 1
        stream = torch._C._cuda_getCurrentRawStream(device)
        kernel.run(g0, g1, g2, stream, kernel.function, kernel.packed_metadata, None, None, None,
                   *args, *tail)
        self.fast_launches += 1

    def _remember(self, key: tuple, kernel, n_args: int, kwargs: dict) -> None:
        """The values of the parameters after the positional ones (constexprs passed by
        keyword or left at their defaults), in the kernel's parameter order."""
        tail = []
        for p in self.fn.params[n_args:]:
            if not p.is_constexpr and p.name in kwargs:  # a runtime value by keyword
                self._cache[key] = (None, ())
                return
            if p.name in kwargs:
                tail.append(kwargs[p.name])
            else:
                default = p._param.default
                tail.append(None if default is p._param.empty else default)
        ok = kernel is not None and getattr(kernel, "function", None) is not None
        self._cache[key] = (kernel, tuple(tail)) if ok else (None, ())


def cached_launch(fn):
    """Wrap a ``@triton.jit`` kernel in a `CachedLaunch` (returned unchanged under the
    interpreter or without Triton)."""
    if INTERPRET or not HAS_TRITON:
        return fn
    return CachedLaunch(fn)
