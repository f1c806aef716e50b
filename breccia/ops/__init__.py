"""The op table: every aten op a ScaledTensor handles, in one place.

Each family lives in its own module and registers with ``@implements``:

- ``matmul.py``    -- mm, addmm, bmm, linear, matmul: to the kernel router
  (``breccia.kernels``)
- ``shape.py``     -- t, transpose, view/reshape, slice, select, split, cat,
  unsqueeze/squeeze: on payload and scales together, keeping blocks whole
- ``copy.py``      -- detach, clone, device and dtype moves, copy_,
  empty_like, new_zeros, is_same_size, pin_memory, as_strided (identity)
- ``fallback.py``  -- anything else: dequantize, run in high precision, warn
  once per op; in-place ops that would lose data raise instead
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["OP_TABLE", "implements", "dispatch"]

#: aten overload -> implementation(func, args, kwargs)
OP_TABLE: dict = {}


def implements(*ops) -> Callable:
    """Register an implementation for one or more aten ops (overload packets
    register every overload)."""

    def decorator(fn):
        for op in ops:
            if isinstance(op, torch._ops.OpOverloadPacket):
                for name in op.overloads():
                    OP_TABLE[getattr(op, name)] = fn
            else:
                OP_TABLE[op] = fn
        return fn

    return decorator


def dispatch(func, types, args, kwargs):
    impl = OP_TABLE.get(func)
    if impl is not None:
        return impl(func, args, kwargs)
    from .fallback import fallback

    return fallback(func, args, kwargs)


from . import copy, fallback, matmul, shape  # noqa: E402,F401  (registration side effects)
