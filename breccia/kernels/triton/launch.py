"""How breccia's Triton kernels are launched, host side.

A launch is ``launch(kernel, grid, key)(*args, **meta)``, one of:

- :func:`direct`: Triton's own ``kernel[grid]`` (the interpreter, benchmarks);
- :func:`wrapped`: ``torch.library.wrap_triton`` (inside ``triton_op``
  bodies, where ``torch.compile`` traces the launch);
- :func:`fast`: eager calls on a GPU. After the first launch of a key, the
  compiled kernel is called directly, skipping Triton's per-launch argument
  binding and specialization (tens of microseconds of host time a call, as
  long as a small kernel).

Host arithmetic uses :func:`cdiv`, not ``triton.cdiv`` (a constexpr
function: microseconds a call from Python).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

import torch

__all__ = ["FAST_LAUNCH", "Launch", "cdiv", "direct", "wrapped", "fast", "for_tensor", "arg_class"]

#: eager launches after the first skip Triton's argument binding (see :func:`fast`)
FAST_LAUNCH = True

Launch = Callable[..., Callable]

#: launch key -> (compiled kernel, constexpr values in parameter order)
_COMPILED: dict = {}


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def direct(kernel, grid, key=None):
    return kernel[grid]


def wrapped(kernel, grid, key=None):
    return torch.library.wrap_triton(kernel)[grid]


def for_tensor(t: torch.Tensor) -> Launch:
    """:func:`fast` for an operand on a GPU, :func:`direct` under the interpreter."""
    return fast if t.is_cuda and os.environ.get("TRITON_INTERPRET", "0") != "1" else direct


def arg_class(a: Any) -> Any:
    """What Triton specializes a launch argument on: an int's width, whether
    it is 1 or a multiple of 16; a tensor's dtype and 16-byte alignment; a
    tensor descriptor's base dtype, block shape and layout; other values
    (None, bools, floats' types) as themselves."""
    if isinstance(a, bool) or a is None:
        return a
    if isinstance(a, int):
        return (a == 1, a % 16 == 0, -(2**31) <= a < 2**31)
    if isinstance(a, float):
        return float
    if isinstance(a, torch.Tensor):
        return (a.dtype, a.data_ptr() % 16 == 0)
    return (type(a), a.base.dtype, tuple(a.block_shape), getattr(a, "layout", None))


def _stream(index: int):
    return torch._C._cuda_getCurrentRawStream(index)


def fast(kernel, grid, key: Optional[tuple] = None):
    """``kernel[grid]`` for eager calls on a GPU: the first launch of ``key``
    goes through Triton (specialization, compile), later ones call the
    compiled kernel directly. ``key`` must hold everything Triton specializes
    on and end with the device index; None derives it from the arguments
    (:func:`arg_class`), the constexprs and the current device. Any surprise
    turns the shortcut off for good."""

    def go(*args, **meta):
        global FAST_LAUNCH
        k = key
        if k is None and FAST_LAUNCH:
            k = (kernel, *map(arg_class, args), *meta.items(), torch.cuda.current_device())
        entry = _COMPILED.get(k) if FAST_LAUNCH else None
        if entry is not None:
            ck, consts = entry
            try:
                ck.run(grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1,
                       _stream(k[-1]), ck.function, ck.packed_metadata, None, None, None, *args, *consts)
                return None
            except Exception:  # a Triton whose launcher differs: use its own path
                FAST_LAUNCH = False
        ck = kernel[grid](*args, **meta)
        if FAST_LAUNCH and k is not None and hasattr(ck, "packed_metadata") and hasattr(ck, "function"):
            names = kernel.arg_names
            _COMPILED[k] = (ck, tuple(meta[n] for n in names[len(args):]))
        return ck

    return go
