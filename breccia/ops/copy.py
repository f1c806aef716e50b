"""Copy ops: act on payload and scales together."""

from __future__ import annotations

import torch

from . import implements

aten = torch.ops.aten


def _map_inner(st, fn):
    return st.with_inner(**{k: fn(v) for k, v in st.inner_tensors().items()})


@implements(aten.detach.default, aten.alias.default)
def detach(func, args, kwargs):
    return _map_inner(args[0], func)


@implements(aten.clone.default)
def clone(func, args, kwargs):
    mf = kwargs.get("memory_format")
    if mf not in (None, torch.preserve_format, torch.contiguous_format):
        from .fallback import fallback

        return fallback(func, args, kwargs)
    return _map_inner(args[0], lambda t: t.clone())


@implements(aten._to_copy.default)
def to_copy(func, args, kwargs):
    """Device moves keep the payload; a new ``dtype`` changes only the outer
    (dequantized) dtype -- the payload and scales are unchanged."""
    st = args[0]
    kwargs = dict(kwargs)
    dtype = kwargs.pop("dtype", None)
    device = kwargs.pop("device", None)
    non_blocking = kwargs.pop("non_blocking", False)
    kwargs.pop("layout", None)
    kwargs.pop("pin_memory", None)
    kwargs.pop("memory_format", None)
    if dtype is not None and not dtype.is_floating_point:
        from .fallback import fallback

        return fallback(func, args, {"dtype": dtype, "device": device})

    def move(t):
        return t.to(device=device, non_blocking=non_blocking) if device is not None else t.clone()

    out = _map_inner(st, move)
    if dtype is not None:
        out = out.with_inner(orig_dtype=dtype)
    return out
