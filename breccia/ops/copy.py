"""Copy ops: act on payload and scales together."""

from __future__ import annotations

import torch

from ..layouts import Plain
from . import implements

aten = torch.ops.aten


def _map_inner(st, fn):
    return st.with_inner(**{k: fn(v) for k, v in st.inner_tensors().items()})


def _map_inner_keep_layout(st, fn):
    """Like ``_map_inner`` for copies: padded layouts (whose scale views hide
    padding a plain copy would drop) are copied through Plain and rebuilt."""
    if st.qlayout is Plain:
        return _map_inner(st, fn)
    from ..layouts import relayout

    return relayout(_map_inner(relayout(st, Plain), fn), st.qlayout)


@implements(aten.detach.default, aten.alias.default)
def detach(func, args, kwargs):
    return _map_inner(args[0], func)


@implements(aten.clone.default)
def clone(func, args, kwargs):
    mf = kwargs.get("memory_format")
    if mf not in (None, torch.preserve_format, torch.contiguous_format):
        from .fallback import fallback

        return fallback(func, args, kwargs)
    return _map_inner_keep_layout(args[0], lambda t: t.clone())


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

    out = _map_inner_keep_layout(st, move)
    if dtype is not None:
        out = out.with_inner(orig_dtype=dtype)
    return out


@implements(aten.copy_.default)
def copy_(func, args, kwargs):
    """``dst.copy_(src)``. Into a ScaledTensor: payload and scales are copied
    (``load_state_dict``); a source of another recipe or in high precision is
    quantized by the destination's recipe and role first. Into a plain tensor:
    the source's dequantized values."""
    from ..api import cast, dequantize
    from ..tensor import ScaledTensor

    dst, src = args[0], args[1]
    if not isinstance(dst, ScaledTensor):
        return dst.copy_(dequantize(src))
    if tuple(src.shape) != tuple(dst.shape):
        raise ValueError(f"copy_: shape mismatch: destination {tuple(dst.shape)}, source {tuple(src.shape)}")
    same = (
        isinstance(src, ScaledTensor)
        and src.spec_key == dst.spec_key
        and src.block == dst.block
        and src.qlayout is dst.qlayout
    )
    if not same:
        hp = dequantize(src, torch.float32) if isinstance(src, ScaledTensor) else src
        src = cast(hp.to(device=dst.device), dst.recipe, dst.role)
        if dst.qlayout is not src.qlayout:
            from ..layouts import relayout

            src = relayout(src, dst.qlayout)
    for name, t in dst.inner_tensors().items():
        t.copy_(getattr(src, name))
    return dst


@implements(aten.empty_like.default)
def empty_like(func, args, kwargs):
    st = args[0]
    device = kwargs.get("device")
    out = _map_inner(st, lambda t: torch.empty_like(t, device=device))
    dtype = kwargs.get("dtype")
    return out.with_inner(orig_dtype=dtype) if dtype is not None and dtype.is_floating_point else out


@implements(aten.new_zeros.default)
def new_zeros(func, args, kwargs):
    """Zeros of ``size`` in the same recipe: zero payload, unit scales."""
    from ..quantize import block_for, payload_shape, scale_grid_shape
    from ..tensor import ScaledTensor

    st, size = args[0], tuple(args[1])
    dtype = kwargs.get("dtype") or st.dtype
    device = kwargs.get("device") or st.device
    if not dtype.is_floating_point:
        return torch.zeros(size, dtype=dtype, device=device)
    spec = st.spec
    block = block_for(spec.block, len(size)) if size != tuple(st.shape) else st.block
    grid = scale_grid_shape(size, block)
    scale = torch.ones(grid, dtype=torch.float32, device=device).to(spec.scale_torch_dtype)
    return ScaledTensor(
        torch.zeros(payload_shape(size, spec.fmt), dtype=torch.uint8, device=device).view(spec.fmt.storage),
        scale,
        global_scale=torch.ones((), device=device) if st.global_scale is not None else None,
        zero_point=torch.zeros(grid, dtype=torch.uint8, device=device) if st.zero_point is not None else None,
        recipe=st.recipe,
        role=st.role,
        block=block,
        shape=size,
        orig_dtype=dtype,
    )


@implements(aten.is_same_size.default)
def is_same_size(func, args, kwargs):
    return tuple(args[0].shape) == tuple(args[1].shape)


@implements(aten._pin_memory.default)
def pin_memory(func, args, kwargs):
    return _map_inner(args[0], lambda t: t.pin_memory())


@implements(aten.as_strided.default)
def as_strided(func, args, kwargs):
    """Legal only as the identity view (what some generic code paths emit)."""
    st, size, stride = args[0], tuple(args[1]), tuple(args[2])
    offset = args[3] if len(args) > 3 else kwargs.get("storage_offset") or 0
    if size == tuple(st.shape) and stride == tuple(st.stride()) and not offset:
        return st.with_inner()
    from .fallback import fallback

    return fallback(func, args, kwargs)
