"""How breccia's Triton kernels are launched, host side.

A launch is ``launch(kernel, grid, key)(*args, **meta)``, one of:

- :func:`direct`: Triton's own ``kernel[grid]`` (the interpreter, benchmarks);
- :func:`wrapped`: ``torch.library.wrap_triton`` (inside ``triton_op``
  bodies, where ``torch.compile`` traces the launch);
- :func:`fast`: eager calls on a GPU. After the first launch of a key, the
  compiled kernel is called directly, skipping Triton's per-launch argument
  binding and specialization (tens of microseconds of host time a call, as
  long as a small kernel).

Host arithmetic per call uses :func:`cdiv` and :func:`next_pow2`, not
``triton.cdiv`` / ``triton.next_power_of_2`` (constexpr functions:
microseconds a call from Python); device facts come from
:func:`device_facts`, read once per device. Nothing here imports Triton.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Optional

import torch

__all__ = [
    "FAST_LAUNCH", "Launch", "cdiv", "next_pow2", "device_facts", "interpreting", "direct", "wrapped", "fast",
    "for_tensor", "arg_class",
]  # fmt: skip

#: eager launches after the first skip Triton's argument binding (see :func:`fast`)
FAST_LAUNCH = True

Launch = Callable[..., Callable]

#: launch key -> (compiled kernel, constexpr values in parameter order)
_COMPILED: dict = {}


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The least power of two >= ``n`` (1 for ``n`` <= 1)."""
    return 1 << (max(n, 1) - 1).bit_length()


def interpreting() -> bool:
    """True under ``TRITON_INTERPRET=1`` (the kernels then run on the CPU)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def device_facts(device: torch.device) -> tuple[tuple[int, int], int]:
    """(compute capability, SM count) of a CUDA device, read once (a
    properties query costs microseconds; routes ask on every call)."""
    return _facts(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _facts(index: int) -> tuple[tuple[int, int], int]:
    props = torch.cuda.get_device_properties(index)
    return (props.major, props.minor), props.multi_processor_count


def direct(kernel, grid, key=None):
    return kernel[grid]


def wrapped(kernel, grid, key=None):
    return torch.library.wrap_triton(kernel)[grid]


def for_tensor(t: torch.Tensor) -> Launch:
    """:func:`fast` for an operand on a GPU, :func:`direct` under the interpreter."""
    return fast if t.is_cuda and not interpreting() else direct


def arg_class(a: Any) -> Any:
    """What Triton specializes a launch argument on: an int's width, whether
    it is 1 or a multiple of 16; a tensor's dtype and 16-byte alignment; a
    tensor descriptor's base dtype, block shape and layout; other values
    (None, bools, floats' types) as themselves."""
    t = type(a)
    if t is int:
        return (a == 1, a % 16 == 0, -(2**31) <= a < 2**31)
    if t is bool or a is None:
        return a
    if isinstance(a, torch.Tensor):
        return (a.dtype, a.data_ptr() % 16 == 0)
    if t is float:
        return float
    return (t, a.base.dtype, tuple(a.block_shape), getattr(a, "layout", None))


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
