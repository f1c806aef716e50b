"""Shape ops: act on payload and scales together and keep blocks whole.

A transpose transposes the block and the scale grid. A view, slice, select,
split or cat that would cut through a block cannot be expressed as a
ScaledTensor, so it falls back (dequantize, then the op in high precision).
4-bit payloads are packed along the last logical dim: a transpose that moves
that dim re-packs the codes (losslessly); slicing it needs even boundaries.
"""

from __future__ import annotations

import torch

from .. import formats
from ..layouts import Packed, Plain
from ..quantize import payload_shape
from ..recipes import WHOLE
from ..tensor import ScaledTensor
from . import implements
from .fallback import fallback

aten = torch.ops.aten

__all__ = ["plain", "transpose", "view_as", "slice_dim"]


def plain(st: ScaledTensor) -> ScaledTensor:
    """``st`` in the Plain layout (shape ops work on the canonical layout)."""
    if st.qlayout is Plain:
        return st
    from ..layouts import relayout

    return relayout(st, Plain)


def _packed(st: ScaledTensor) -> bool:
    return st.spec.fmt.packed


def _map_grid(st: ScaledTensor, fn) -> dict:
    """Apply ``fn`` to the scale grid and the zero-point grid (same shape)."""
    out = {"scale": fn(st.scale)}
    if st.zero_point is not None:
        out["zero_point"] = fn(st.zero_point)
    return out


# --------------------------------------------------------------------------- transpose


def transpose(st: ScaledTensor, d0: int, d1: int) -> ScaledTensor:
    if st.qlayout is Packed and st.dim() == 2 and d0 % 2 != d1 % 2:
        # metadata only: F.linear transposes the weight on every call
        from ..packing import transpose_packed

        return transpose_packed(st)
    st = plain(st)
    nd = st.dim()
    d0, d1 = d0 % nd, d1 % nd
    if d0 == d1:
        return st.with_inner()
    shape = list(st.shape)
    shape[d0], shape[d1] = shape[d1], shape[d0]
    block = list(st.block)
    block[d0], block[d1] = block[d1], block[d0]
    if _packed(st) and nd - 1 in (d0, d1):
        codes = formats.unpack_nibbles(st.qdata, st.shape[-1]).transpose(d0, d1).contiguous()
        qdata = formats.pack_nibbles(codes)
    else:
        qdata = st.qdata.transpose(d0, d1)
    return st.with_inner(
        qdata=qdata, shape=tuple(shape), block=tuple(block), **_map_grid(st, lambda g: g.transpose(d0, d1))
    )


@implements(aten.t.default)
def t(func, args, kwargs):
    st = args[0]
    if st.dim() < 2:
        return st.with_inner()
    return transpose(st, 0, 1)


@implements(aten.transpose.int)
def transpose_int(func, args, kwargs):
    return transpose(args[0], args[1], args[2])


# --------------------------------------------------------------------------- view / reshape


def _infer_size(size, numel: int) -> tuple:
    return tuple(torch.empty(numel, device="meta").view(*size).shape)


def view_as(st: ScaledTensor, size):
    """The ScaledTensor of logical shape ``size`` viewing ``st``'s elements,
    or None where blocks would not stay whole."""
    st = plain(st)
    old = tuple(st.shape)
    new = _infer_size(size, st.numel())
    if new == old:
        return st.with_inner()
    packed = _packed(st)
    b_last = st.block[-1] if st.block else WHOLE
    if b_last == WHOLE and old and all(b == 1 for b in st.block[:-1]):
        b_last = old[-1]  # rowwise: a row is one block
    if (
        new and old and b_last != WHOLE and b_last > 0
        and all(b == 1 for b in st.block[:-1])
        and old[-1] % b_last == 0 and new[-1] % b_last == 0
    ):
        # blocks are aligned runs of b_last elements in row-major order: any
        # shape whose last dim is a whole number of blocks keeps them whole
        grid = new[:-1] + (new[-1] // b_last,)
        block = (1,) * (len(new) - 1) + (b_last,)
        qdata = st.qdata.reshape(payload_shape(new, st.spec.fmt))
        return st.with_inner(qdata=qdata, shape=new, block=block, **_map_grid(st, lambda g: g.reshape(grid)))
    if packed and (not new or not old or new[-1] != old[-1]):
        return None
    if all(b == WHOLE for b in st.block):  # tensorwise: one scale for any shape
        grid = (1,) * len(new)
        block = (WHOLE,) * len(new)
    elif new[-1] == old[-1] and all(b == 1 for b in st.block[:-1]):
        # leading dims merge or split freely when their blocks are 1
        grid = new[:-1] + tuple(st.scale.shape[-1:])
        block = (1,) * (len(new) - 1) + st.block[-1:]
    elif [s for s in new if s != 1] == [s for s in old if s != 1]:
        # only size-1 dims come or go: the other dims keep their blocks
        kept = [(s, b) for s, b in zip(old, st.block) if s != 1]
        block, grid, it = [], [], iter(kept)
        for s in new:
            b = 1 if s == 1 else next(it)[1]
            block.append(b)
            grid.append(1 if (s == 1 or b == WHOLE) else -(-s // b))
        block, grid = tuple(block), tuple(grid)
        if packed and block[-1] != st.block[-1]:
            return None
    else:
        return None
    qdata = st.qdata.reshape(payload_shape(new, st.spec.fmt))
    return st.with_inner(qdata=qdata, shape=new, block=block, **_map_grid(st, lambda g: g.reshape(grid)))


@implements(aten.view.default, aten._unsafe_view.default, aten.reshape.default)
def view(func, args, kwargs):
    out = view_as(args[0], args[1])
    return out if out is not None else fallback(func, args, kwargs)


@implements(aten.unsqueeze.default)
def unsqueeze(func, args, kwargs):
    st, dim = args[0], args[1]
    dim = dim % (st.dim() + 1)
    return view_as(st, st.shape[:dim] + (1,) + st.shape[dim:])


@implements(aten.squeeze.dim, aten.squeeze.default, aten.squeeze.dims)
def squeeze(func, args, kwargs):
    st = args[0]
    if func is aten.squeeze.default:
        dims = range(st.dim())
    elif func is aten.squeeze.dim:
        dims = [args[1]]
    else:
        dims = args[1]
    dims = {d % max(st.dim(), 1) for d in dims}
    size = [s for i, s in enumerate(st.shape) if not (i in dims and s == 1)]
    out = view_as(st, size) if size else None
    return out if out is not None else fallback(func, args, kwargs)


# --------------------------------------------------------------------------- slice / select / split


def slice_dim(st: ScaledTensor, dim: int, start: int, end: int):
    """Elements ``start:end`` of ``dim``, or None where ``start`` is inside a block."""
    st = plain(st)
    nd = st.dim()
    dim = dim % nd
    size = st.shape[dim]
    b = st.block[dim]
    if b != WHOLE and start % b:
        return None
    last = dim == nd - 1
    packed = _packed(st)
    if packed and last and start % 2:
        return None
    shape = list(st.shape)
    shape[dim] = end - start
    if packed and last:
        qdata = st.qdata.narrow(dim, start // 2, (end + 1) // 2 - start // 2)
        if (end - start) % 2 and end < size:  # a half-used final byte: clear its high nibble
            qdata = qdata.clone()
            qdata[..., -1] &= 0xF
    else:
        qdata = st.qdata.narrow(dim, start, end - start)
    if b == WHOLE:
        grid_fn = lambda g: g  # noqa: E731  (one scale covers the whole dim)
    else:
        g0, g1 = start // b, -(-end // b)
        grid_fn = lambda g: g.narrow(dim, g0, max(g1 - g0, 0))  # noqa: E731
    return st.with_inner(qdata=qdata, shape=tuple(shape), **_map_grid(st, grid_fn))


def _norm_range(size: int, start, end):
    start = 0 if start is None else start
    end = size if end is None else end
    start = start + size if start < 0 else start
    end = end + size if end < 0 else end
    start = min(max(start, 0), size)
    end = min(max(end, start), size)
    return start, end


@implements(aten.slice.Tensor)
def slice_(func, args, kwargs):
    st = args[0]
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    start = args[2] if len(args) > 2 else kwargs.get("start")
    end = args[3] if len(args) > 3 else kwargs.get("end")
    step = args[4] if len(args) > 4 else kwargs.get("step", 1)
    if step != 1:
        return fallback(func, args, kwargs)
    start, end = _norm_range(st.shape[dim], start, end)
    out = slice_dim(st, dim, start, end)
    return out if out is not None else fallback(func, args, kwargs)


@implements(aten.select.int)
def select(func, args, kwargs):
    st, dim, index = plain(args[0]), args[1], args[2]
    nd = st.dim()
    dim = dim % nd
    if nd == 1 or (_packed(st) and dim == nd - 1):
        return fallback(func, args, kwargs)
    index = index % st.shape[dim]
    b = st.block[dim]
    gi = 0 if b == WHOLE else index // b
    shape = st.shape[:dim] + st.shape[dim + 1:]
    block = st.block[:dim] + st.block[dim + 1:]
    return st.with_inner(
        qdata=st.qdata.select(dim, index),
        shape=tuple(shape),
        block=block,
        **_map_grid(st, lambda g: g.select(dim, gi)),
    )


def _split(st: ScaledTensor, sizes, dim: int, func, args, kwargs):
    out, start = [], 0
    for s in sizes:
        piece = slice_dim(st, dim, start, start + s)
        if piece is None:
            return fallback(func, args, kwargs)
        out.append(piece)
        start += s
    return out


@implements(aten.split.Tensor)
def split(func, args, kwargs):
    st, size = args[0], args[1]
    dim = (args[2] if len(args) > 2 else kwargs.get("dim", 0)) % st.dim()
    n = st.shape[dim]
    sizes = [min(size, n - i) for i in range(0, n, size)] if n else [0]
    return _split(st, sizes, dim, func, args, kwargs)


@implements(aten.split_with_sizes.default)
def split_with_sizes(func, args, kwargs):
    st, sizes = args[0], args[1]
    dim = (args[2] if len(args) > 2 else kwargs.get("dim", 0)) % st.dim()
    return _split(st, sizes, dim, func, args, kwargs)


# --------------------------------------------------------------------------- cat


def _cat(tensors, dim: int):
    first = plain(tensors[0])
    nd = first.dim()
    dim = dim % nd
    parts = [plain(t) if isinstance(t, ScaledTensor) else None for t in tensors]
    if any(p is None for p in parts):
        return None
    keys = {(p.spec_key, p.recipe, p.role, p.block, p.orig_dtype) for p in parts}
    if len(keys) != 1:
        return None
    if any(p.shape[:dim] + p.shape[dim + 1:] != first.shape[:dim] + first.shape[dim + 1:] for p in parts):
        return None
    b = first.block[dim]
    packed = _packed(first)
    if b != WHOLE and any(p.shape[dim] % b for p in parts[:-1]):
        return None
    if packed and dim == nd - 1 and any(p.shape[dim] % 2 for p in parts[:-1]):
        return None
    # one scale shared along the cat dim (tensorwise, or a whole-dim block):
    # exact only where every part has the same scale (not a hot path: a sync is fine)
    shared = [d for d in range(nd) if first.block[d] == WHOLE]
    if dim in shared and not all(torch.equal(p.scale, first.scale) for p in parts):
        return None
    if first.global_scale is not None and not all(torch.equal(p.global_scale, first.global_scale) for p in parts):
        return None
    shape = list(first.shape)
    shape[dim] = sum(p.shape[dim] for p in parts)
    if packed and dim == nd - 1:
        qdata = torch.cat([p.qdata[..., : payload_shape(p.shape, p.spec.fmt)[-1]] for p in parts], dim)
    else:
        qdata = torch.cat([p.qdata for p in parts], dim)
    if dim in shared:
        grids = _map_grid(first, lambda g: g)
    else:
        grids = {"scale": torch.cat([p.scale for p in parts], dim)}
        if first.zero_point is not None:
            grids["zero_point"] = torch.cat([p.zero_point for p in parts], dim)
    return first.with_inner(qdata=qdata, shape=tuple(shape), **grids)


@implements(aten.cat.default)
def cat(func, args, kwargs):
    tensors = args[0]
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    out = _cat(list(tensors), dim)
    return out if out is not None else fallback(func, args, kwargs)


