"""The fallback: any op without a scaled implementation dequantizes its
ScaledTensor arguments, runs in high precision and warns once per op.

An in-place op on a ScaledTensor would have to requantize silently and lose
precision, so it raises a clear error instead."""

from __future__ import annotations

import warnings

from torch.utils._pytree import tree_map

__all__ = ["fallback", "dequantize_args", "FallbackWarning"]


class FallbackWarning(UserWarning):
    """An op ran on dequantized ScaledTensors (high precision, no speed-up)."""


_warned: set = set()


def dequantize_args(args, kwargs):
    from ..api import dequantize
    from ..tensor import ScaledTensor

    def unwrap(t):
        return dequantize(t) if isinstance(t, ScaledTensor) else t

    return tree_map(unwrap, args), tree_map(unwrap, kwargs)


def _mutates_scaled(func, args, kwargs) -> bool:
    from ..tensor import ScaledTensor

    schema = func._schema
    for i, a in enumerate(schema.arguments):
        if a.alias_info is not None and a.alias_info.is_write:
            v = args[i] if i < len(args) else kwargs.get(a.name)
            if isinstance(v, ScaledTensor):
                return True
    return False


def fallback(func, args, kwargs):
    if _mutates_scaled(func, args, kwargs):
        raise RuntimeError(
            f"{func}: in-place ops on a ScaledTensor would silently requantize and lose "
            "precision; dequantize it first (breccia.dequantize) or use the out-of-place op"
        )
    if func not in _warned:
        _warned.add(func)
        warnings.warn(
            f"breccia: {func} has no scaled implementation; it ran on dequantized "
            "(high-precision) values",
            FallbackWarning,
            stacklevel=3,
        )
    a, k = dequantize_args(args, kwargs)
    return func(*a, **k)
