"""The reference quantizer and dequantizer, in pure torch (any device).

These define breccia's numerics; fast kernels must reproduce them bit for bit.
Blocks are handled generically: the input is zero-padded to whole blocks and
viewed as ``(g0, b0, g1, b1, ...)`` so one reduction over the odd dims gives
the scale grid. A partial trailing block therefore takes its scale from its
own elements (zero padding never raises an amax), as DeepSeek does.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F

from . import formats
from .recipes import WHOLE, DelayedScaling, QuantSpec, _TINY

__all__ = [
    "Quantized",
    "block_for",
    "resolve_block",
    "scale_grid_shape",
    "payload_shape",
    "quantize_reference",
    "dequantize_reference",
    "expand_scale",
    "scale_from_amax_history",
]

_NVFP4_GLOBAL_DIVISOR = 448.0 * 6.0
_E4M3_TINY = torch.finfo(torch.float8_e4m3fn).tiny  # 2**-6, torchao's E4M3_EPS


class Quantized(NamedTuple):
    qdata: torch.Tensor
    scale: torch.Tensor
    global_scale: Optional[torch.Tensor]
    zero_point: Optional[torch.Tensor]


def block_for(spec_block: Sequence[int], ndim: int) -> tuple[int, ...]:
    """The block of an ``ndim``-D tensor, in shape-free form (``-1`` = whole dim).

    The spec's block is aligned to the trailing dims; leading dims get blocks
    of 1, except for tensorwise specs (all ``-1``), which stay whole."""
    spec_block = tuple(spec_block)
    if spec_block and all(b == WHOLE for b in spec_block):
        return (WHOLE,) * ndim
    tail = spec_block[-ndim:] if ndim else ()
    return (1,) * (ndim - len(tail)) + tail


def resolve_block(block: Sequence[int], shape: Sequence[int]) -> tuple[int, ...]:
    """Concrete ints: ``-1`` replaced by the dim's extent (at least 1)."""
    return tuple(max(int(s), 1) if b == WHOLE else int(b) for b, s in zip(block, shape))


def scale_grid_shape(shape: Sequence, block: Sequence[int]) -> tuple:
    """``ceil(shape / block)``; whole dims have one scale. Works on SymInts."""
    return tuple(1 if b == WHOLE else (s + b - 1) // b for s, b in zip(shape, block))


def payload_shape(shape: Sequence, fmt: formats.ElementFormat) -> tuple:
    """Shape of ``qdata``: the logical shape, halved (rounded up) along the
    last dim for packed 4-bit formats. Works on SymInts."""
    shape = tuple(shape)
    if fmt.packed and shape:
        return shape[:-1] + ((shape[-1] + 1) // 2,)
    return shape


# --------------------------------------------------------------------------- block views


def _to_blocks(x: torch.Tensor, block: tuple[int, ...]) -> torch.Tensor:
    """Zero-pad ``x`` to whole blocks and view it as (g0, b0, g1, b1, ...)."""
    grid = scale_grid_shape(x.shape, block)
    pad = []
    for s, b, g in reversed(list(zip(x.shape, block, grid))):
        pad += [0, g * b - s]
    if any(pad):
        x = F.pad(x, pad)
    inter = [v for g, b in zip(grid, block) for v in (g, b)]
    return x.reshape(inter)


def _from_blocks(xb: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    nd = len(shape)
    padded = [xb.shape[2 * i] * xb.shape[2 * i + 1] for i in range(nd)]
    x = xb.reshape(padded)
    return x[tuple(slice(0, int(s)) for s in shape)]


def _block_dims(nd: int) -> tuple[int, ...]:
    return tuple(range(1, 2 * nd, 2))


def _grid_view(scale: torch.Tensor) -> torch.Tensor:
    """A scale grid (g0, g1, ...) as (g0, 1, g1, 1, ...) to broadcast over blocks."""
    return scale.reshape([v for g in scale.shape for v in (g, 1)])


def expand_scale(scale: torch.Tensor, block: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """A scale grid broadcast to one value per logical element."""
    grid = _grid_view(scale)
    inter = [v for g, b in zip(scale.shape, block) for v in (g, b)]
    return _from_blocks(grid.expand(inter), shape)


# --------------------------------------------------------------------------- scale rules


def _div(a: torch.Tensor, c: float) -> torch.Tensor:
    """``a / c``, correctly rounded on every device: CUDA turns division by a
    Python scalar into multiplication by its (rounded) reciprocal."""
    return a / torch.full_like(a, c)


def _fp32_scale(amax: torch.Tensor, fmax: float, rule: str, margin: int = 0) -> torch.Tensor:
    """Dequantization scale with ``amax / scale`` in (fmax/2, fmax].

    Zero blocks get scale 1; NaN/inf amax gives a NaN/inf scale (the block
    decodes to NaN rather than to silent finite values)."""
    if rule == "amax":
        s = _div(amax * (2.0**margin), fmax)
        # amax / s can round to one ulp above its target: nudge s up so the
        # top element never needs the saturating clamp.
        target = fmax * 2.0**-margin
        s = torch.where(amax / s > target, torch.nextafter(s, torch.full_like(s, math.inf)), s)
    else:  # "pow2": the least power of two with amax / s <= fmax
        m, e = torch.frexp(_div(amax, fmax))
        e = torch.where(m == 0.5, e - 1, e)
        s = torch.ldexp(torch.ones_like(amax), e)
        s = torch.where(torch.isfinite(amax), s, amax)
    s = torch.where(amax == 0, torch.ones_like(s), torch.clamp(s, min=_TINY))
    return s


def scale_from_amax_history(
    amax_history: torch.Tensor, recipe: DelayedScaling, role: str = "input"
) -> torch.Tensor:
    """The DelayedScaling rule: the dequantization scale (0-d float32) that
    ``cast(x, recipe, role, amax_history=amax_history)`` uses,
    ``history_amax * 2**margin / fp8_max``; an all-zero history gives 1."""
    spec = recipe.spec(role)
    return _fp32_scale(recipe.history_amax(amax_history), spec.fmt.max, "amax", spec.margin)


def _e8m0_exponent(amax: torch.Tensor, fmt: formats.ElementFormat, rule: str) -> torch.Tensor:
    """Unbiased e8m0 exponent (int32) of each block's scale."""
    if rule == "floor":
        # OCP MX: floor(log2(amax)) - emax_elem; frexp is exact on subnormals.
        m, e = torch.frexp(amax)
        exp = (e - 1) - fmt.emax
        return torch.where(amax == 0, torch.full_like(exp, -127), exp)
    # "rceil" (TransformerEngine): amax * (1/max) rounded up to a power of two.
    v = amax * torch.tensor(1.0 / fmt.max, dtype=torch.float32)
    bits = v.view(torch.int32)
    e_field = (bits >> 23) & 0xFF
    mant = bits & 0x7FFFFF
    up = (mant > 0) & (e_field != 0xFE) & ~((e_field == 0) & (mant <= 0x400000))
    return e_field + up.to(torch.int32) - 127


def _round_up_to(s: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``s`` in ``dtype``, rounded up rather than to nearest, so that a scale
    stored in bf16/fp16 never makes the group's extremes overflow the grid."""
    r = s.to(dtype)
    bumped = torch.nextafter(r, torch.full_like(r, math.inf))
    return torch.where(r.to(torch.float32) < s, bumped, r)


# --------------------------------------------------------------------------- quantize


def quantize_reference(
    x: torch.Tensor,
    spec: QuantSpec,
    *,
    amax: Optional[torch.Tensor] = None,
    noise: Optional[torch.Tensor] = None,
    block_amax: Optional[torch.Tensor] = None,
) -> Quantized:
    """Quantize ``x`` (any float dtype, any shape) by ``spec``.

    ``amax``: a precomputed tensor amax (one element) that replaces the
    tensor's own -- for tensorwise FP8 the delayed-scaling history's or one
    all-reduced across ranks; for NVFP4 the amax behind the global scale.
    ``block_amax``: a precomputed amax per block (the scale grid's shape),
    e.g. reduced across the shards that split a block. ``noise``: uniform
    [0, 1) of ``x``'s shape, for stochastic rounding."""
    fmt = spec.fmt
    shape = tuple(x.shape)
    block_form = block_for(spec.block, len(shape))
    block = resolve_block(block_form, shape)
    grid = scale_grid_shape(shape, block_form)
    sdtype = spec.scale_torch_dtype
    dev = x.device

    if x.numel() == 0:
        qdata = torch.empty(payload_shape(shape, fmt), dtype=fmt.storage, device=dev)
        scale = torch.ones(grid, dtype=sdtype, device=dev) if sdtype != torch.float8_e8m0fnu else (
            torch.full(grid, 127, dtype=torch.uint8, device=dev).view(sdtype)
        )
        gs = torch.ones((), dtype=torch.float32, device=dev) if spec.has_global_scale else None
        zp = torch.zeros(grid, dtype=torch.uint8, device=dev) if spec.has_zero_point else None
        if amax is not None:
            # a given amax still decides the scales (an empty shard must agree
            # with the other ranks): the same rule, on a stand-in element
            one = quantize_reference(torch.zeros([1] * len(shape), device=dev), spec, amax=amax)
            if spec.scale_format == "fp32" and math.prod(grid):
                scale = one.scale.reshape([1] * len(shape)).expand(grid).contiguous()
            gs = one.global_scale if spec.has_global_scale else gs
        return Quantized(qdata, scale, gs, zp)

    xf = x.to(torch.float32)
    xb = _to_blocks(xf, block)
    bdims = _block_dims(len(shape))
    given_amax = amax
    if block_amax is not None:
        amax = _grid_view(block_amax.to(device=dev, dtype=torch.float32).reshape(grid))
    else:
        amax = xb.abs().amax(dim=bdims, keepdim=True)
    global_scale = zero_point = None
    nb = None if noise is None else _to_blocks(noise.to(torch.float32), block)

    if spec.scale_format == "fp32":
        if given_amax is not None:
            amax = given_amax.to(device=dev, dtype=torch.float32).reshape([1] * amax.ndim).expand_as(amax)
        s = _fp32_scale(amax, fmt.max, spec.scale_rule, spec.margin)
        q = formats.encode_fp8(xb / s, fmt)
        scale = s
    elif spec.scale_format == "e8m0":
        exp = _e8m0_exponent(amax, fmt, spec.scale_rule)
        scale = formats.e8m0_from_exponent(exp, ~torch.isfinite(amax))
        q = formats.encode_fp8(xb / formats.decode_e8m0(scale), fmt)
    elif spec.scale_format == "e4m3":  # NVFP4 two-level
        t_amax = xf.abs().amax() if given_amax is None else given_amax.to(device=dev, dtype=torch.float32).reshape(())
        g = _div(t_amax, _NVFP4_GLOBAL_DIVISOR)
        g = torch.where(t_amax == 0, torch.ones_like(g), torch.clamp(g, min=_TINY))
        bs = torch.clamp(_div(amax, 6.0) / g, min=_E4M3_TINY, max=448.0).to(torch.float8_e4m3fn)
        # multiply by the reciprocal of the combined scale (torchao's numerics)
        recip = (1.0 / g) / bs.to(torch.float32)
        q = formats.encode_e2m1(torch.clamp(xb * recip, -6.0, 6.0), nb)
        scale, global_scale = bs, g
    else:  # INT4 groups, bf16/fp16 scales
        finfo = torch.finfo(sdtype)
        # scales clamp into the scale dtype's finite range: huge groups
        # saturate rather than decode to inf or NaN
        if spec.scale_rule == "symmetric":
            s = _round_up_to(torch.clamp(_div(amax, 7.5), min=finfo.tiny, max=finfo.max), sdtype)
            s = torch.where(amax == 0, torch.ones_like(s), s)
            sf = s.to(torch.float32)
            q = formats.encode_int4(xb / sf, signed=True, noise=nb)
        else:
            mn = torch.clamp(xb.amin(dim=bdims, keepdim=True), max=0.0)
            mx = torch.clamp(xb.amax(dim=bdims, keepdim=True), min=0.0)
            span = mx - mn  # may overflow float32 for finite extremes
            s = torch.where(torch.isinf(span) & torch.isfinite(mx) & torch.isfinite(mn), _div(mx, 15.0) - _div(mn, 15.0), _div(span, 15.0))
            s = _round_up_to(torch.clamp(s, min=finfo.tiny, max=finfo.max), sdtype)
            s = torch.where(mx == mn, torch.ones_like(s), s)
            sf = s.to(torch.float32)
            zp = torch.clamp(torch.round(-mn / sf), 0, 15)
            q = formats.encode_int4(xb / sf + zp, signed=False, noise=nb)
            zero_point = zp.to(torch.uint8).reshape(grid)
        scale = s  # a NaN group keeps its NaN scale: clamp propagates NaN

    q = _from_blocks(q, shape)
    if fmt.packed:
        q = formats.pack_nibbles(q)
    return Quantized(q.contiguous(), scale.reshape(grid).contiguous(), global_scale, zero_point)


# --------------------------------------------------------------------------- dequantize


def _decode(qdata: torch.Tensor, spec: QuantSpec, shape: Sequence[int]) -> torch.Tensor:
    fmt = spec.fmt
    if not fmt.packed:
        return formats.decode_fp8(qdata)
    codes = formats.unpack_nibbles(qdata, int(shape[-1]) if len(shape) else 0)
    if fmt.is_float:
        return formats.decode_e2m1(codes)
    return formats.decode_int4(codes, signed=spec.scale_rule == "symmetric")


def _scale_values(scale: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    if spec.scale_format == "e8m0":
        return formats.decode_e8m0(scale)
    return scale.to(torch.float32)


def dequantize_reference(
    qdata: torch.Tensor,
    scale: torch.Tensor,
    global_scale: Optional[torch.Tensor],
    zero_point: Optional[torch.Tensor],
    spec: QuantSpec,
    block: Sequence[int],
    shape: Sequence[int],
    dtype: torch.dtype,
) -> torch.Tensor:
    """``decode(qdata) * scale`` (``- zero_point`` first for asymmetric INT4,
    ``* global_scale`` for NVFP4), in float32, then cast to ``dtype``.
    ``block`` may hold ``-1`` (whole dim)."""
    shape = tuple(int(s) for s in shape)
    block = resolve_block(block, shape)
    if math.prod(shape) == 0:
        return torch.empty(shape, dtype=dtype, device=qdata.device)
    v = _decode(qdata, spec, shape)
    s = _scale_values(scale, spec)
    if zero_point is not None:
        v = v - expand_scale(zero_point.to(torch.float32), block, shape)
    if global_scale is not None:
        # combine the two levels first, as GEMMs (and torchao) do
        s = s * global_scale.to(torch.float32)
    return (v * expand_scale(s, block, shape)).to(dtype)
