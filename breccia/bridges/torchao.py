"""torchao tensor subclasses <-> ScaledTensor (torchao 0.18).

=================  ======================================================================
torchao class      buffers and convention
=================  ======================================================================
``Float8Tensor``   ``qdata`` fp8 (logical shape), ``scale`` fp32 of shape ``shape // block_size``,
                   ``block_size`` list (PerTensor = the shape, PerRow = ``[1, .., K]``,
                   PerBlock); ``scale`` is the dequantization multiplier, as in breccia
``MXTensor``       ``qdata`` fp8, ``scale`` e8m0 ``(..., K/32)`` (or the 128x4 swizzle viewed
                   as ``(ceil(M/128)*32, ceil(K/128)*16)``), ``block_size`` 32
``NVFP4Tensor``    ``qdata`` uint8 (two e2m1, even element low), ``scale`` e4m3 ``(M, K/16)``
                   (or swizzled, viewed ``(ceil(M/128)*32, ceil(K/64)*16)``),
                   ``per_tensor_scale`` fp32 0-d = amax/(448*6): breccia's ``global_scale``
``Int4Tensor``     ``qdata`` int8 ``(N, K/2)`` (two's complement nibbles, even element low),
                   ``scale`` and ``zero_point`` ``(K/g, N)`` -- transposed -- in the weight
                   dtype; it dequantizes as ``q * scale + zero_point``: the zero point is a
                   float offset (mslk's ``min + 8 * scale``), not breccia's integer one
=================  ======================================================================

None of them stores a reciprocal, so payloads and scales convert bit-exactly
and mostly without copies (Int4Tensor's scales are transposed: a copy).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from ..layouts import Plain, Swizzled, relayout
from ..quantize import block_for, resolve_block, scale_grid_shape
from ..recipes import (
    WHOLE,
    Float8BlockScaling,
    Float8CurrentScaling,
    INT4Scaling,
    MXFP8BlockScaling,
    NVFP4BlockScaling,
    Recipe,
)
from ..tensor import ScaledTensor

__all__ = ["to_torchao", "from_torchao"]

_FP8 = {torch.float8_e4m3fn: "e4m3", torch.float8_e5m2: "e5m2"}
_FP8_DTYPE = {v: k for k, v in _FP8.items()}


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _role_recipe(
    recipe: Optional[Recipe], default: Recipe, role: str, block: tuple, element: str, shape: tuple
) -> tuple[Recipe, tuple]:
    """``(recipe, block)``: the given recipe, checked against what the tensor
    holds (blocks compared on ``shape``: ``(1, 128)`` on K=128 is rowwise), with
    its own block form; or ``default`` and ``block``."""
    if recipe is None:
        return default, block
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe: expected a breccia recipe or None, got {type(recipe).__name__}")
    spec = recipe.spec(role)
    theirs = block_for(spec.block, len(shape))
    if spec.element != element or resolve_block(theirs, shape) != resolve_block(block, shape):
        raise ValueError(
            f"recipe: {recipe!r} (role {role!r}) quantizes as element {spec.element} with block {theirs}, "
            f"but the torchao tensor holds {element} with block {block}"
        )
    return recipe, theirs


def _fp8_recipe(block2: tuple, element: str, role: str) -> Recipe:
    if block2 == (WHOLE, WHOLE):
        return Float8CurrentScaling(fp8_format=element)
    if block2 == (1, WHOLE):
        return Float8CurrentScaling(fp8_format=element, granularity="row")
    field = {"input": "input_block", "weight": "weight_block", "grad_output": "grad_block"}[role]
    return Float8BlockScaling(fp8_format=element, **{field: block2})


def _row_major(t: torch.Tensor, name: str) -> torch.Tensor:
    if not t.is_contiguous():
        raise ValueError(
            f"{name}: expected a row-major (contiguous) payload, got strides {t.stride()} for shape "
            f"{tuple(t.shape)}; transposed torchao tensors are not supported -- make it contiguous first"
        )
    return t


# --------------------------------------------------------------------------- breccia -> torchao


def to_torchao(st: ScaledTensor, *, act_quant_kwargs: Any = None) -> torch.Tensor:
    """``st`` as the matching torchao tensor: FP8 recipes -> ``Float8Tensor``,
    MXFP8 -> ``MXTensor``, NVFP4 -> ``NVFP4Tensor``, INT4 -> ``Int4Tensor``.

    ``act_quant_kwargs``: passed to torchao (how it quantizes activations in a
    matmul with this weight); None keeps activations high precision. A
    ``Swizzled`` MX/NVFP4 tensor becomes one with ``is_swizzled_scales=True``."""
    if not isinstance(st, ScaledTensor):
        raise TypeError(f"st: expected a breccia ScaledTensor, got {type(st).__name__}")
    fmt = st.spec.scale_format
    if st.qlayout is not Swizzled or fmt not in ("e8m0", "e4m3"):
        st = relayout(st, Plain)
    shape = tuple(st.shape)
    block = resolve_block(st.block, shape)
    if fmt == "fp32":
        return _to_float8(st, shape, block, act_quant_kwargs)
    if fmt == "e8m0":
        return _to_mx(st, shape, act_quant_kwargs)
    if fmt == "e4m3":
        return _to_nvfp4(st, shape, act_quant_kwargs)
    return _to_int4(st, shape)


def _to_float8(st: ScaledTensor, shape: tuple, block: tuple, act_quant_kwargs: Any) -> torch.Tensor:
    from torchao.quantization.quantize_.workflows.float8.float8_tensor import Float8Tensor

    if any(s % b for s, b in zip(shape, block)):
        raise ValueError(
            f"st: torchao's Float8Tensor needs every dim divisible by its block, got shape {shape} and block "
            f"{block} (breccia's partial edge blocks have no torchao equivalent)"
        )
    return Float8Tensor(
        st.qdata, st.scale, block_size=list(block), act_quant_kwargs=act_quant_kwargs, dtype=st.orig_dtype
    )


def _swizzled_2d(st: ScaledTensor, rows: int, cols: int) -> torch.Tensor:
    if st.dim() != 2:
        raise ValueError(f"st: swizzled scales convert for 2-D tensors only, got shape {tuple(st.shape)}")
    return st.scale.view(rows, cols)


def _to_mx(st: ScaledTensor, shape: tuple, act_quant_kwargs: Any) -> torch.Tensor:
    from torchao.prototype.mx_formats.mx_tensor import MXTensor
    from torchao.quantization.quantize_.common.kernel_preference import KernelPreference

    if st.block[-1] != 32 or any(b != 1 for b in st.block[:-1]) or shape[-1] % 32:
        raise ValueError(
            f"st: torchao's MXTensor takes 1x32 blocks along a last dim divisible by 32, got block {st.block} "
            f"and shape {shape}"
        )
    scale = st.scale
    swizzled = st.qlayout is Swizzled
    if swizzled:
        # torchao views the 128x4 tiles as 32x16 (its hp_data_dims_to_swizzled_scale_dims_mx)
        scale = _swizzled_2d(st, _cdiv(shape[0], 128) * 32, _cdiv(shape[1], 128) * 16)
    return MXTensor(
        st.qdata, scale, st.qdata.dtype, 32, st.orig_dtype, KernelPreference.EMULATED, act_quant_kwargs, swizzled
    )


def _to_nvfp4(st: ScaledTensor, shape: tuple, act_quant_kwargs: Any) -> torch.Tensor:
    from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor

    if st.dim() not in (2, 3) or shape[-1] % 16:
        raise ValueError(f"st: torchao's NVFP4Tensor takes 2-D or 3-D tensors with K divisible by 16, got {shape}")
    scale = st.scale
    swizzled = st.qlayout is Swizzled
    if swizzled:
        if st.block[-2] != 1:
            raise ValueError("st: relayout 16x16 NVFP4 blocks to Plain before converting (torchao has 1x16 only)")
        scale = _swizzled_2d(st, _cdiv(shape[0], 128) * 32, _cdiv(shape[1], 64) * 16)
    elif st.block[-2] != 1:  # 16x16 blocks: torchao has 1x16 only; repeat each scale row
        scale = scale.repeat_interleave(st.block[-2], dim=-2).narrow(-2, 0, shape[-2]).contiguous()
    return NVFP4Tensor(
        st.qdata, scale, 16, st.orig_dtype, st.global_scale.to(torch.float32).reshape(()),
        None, swizzled, False, act_quant_kwargs,
    )


def _to_int4(st: ScaledTensor, shape: tuple) -> torch.Tensor:
    from torchao.quantization.quantize_.workflows.int4.int4_tensor import Int4Tensor

    if st.dim() not in (2, 3):
        raise ValueError(f"st: torchao's Int4Tensor takes 2-D or 3-D weights, got shape {shape}")
    s = st.scale
    if st.zero_point is None:
        z = torch.zeros_like(s)
    else:
        # torchao dequantizes q * s + z with signed q = u - 8: z = (8 - zp) * s
        exact = (8.0 - st.zero_point.to(torch.float32)) * s.to(torch.float32)
        z = exact.to(s.dtype)
        if not torch.equal(z.to(torch.float32), exact):
            raise ValueError(
                f"st: torchao's Int4Tensor stores the zero point as a float offset (8 - zp) * scale in "
                f"{s.dtype}, which cannot hold this tensor's offsets exactly; only symmetric INT4, or "
                "asymmetric INT4 whose offsets are representable, converts bit-exactly"
            )
    qdata = st.qdata.view(torch.int8)
    if st.zero_point is not None:  # unsigned codes u -> signed u - 8: flip bit 3 of each nibble
        qdata = (st.qdata ^ 0x88).view(torch.int8)
    return Int4Tensor(
        qdata=qdata,
        scale=s.transpose(-2, -1).contiguous(),
        zero_point=z.transpose(-2, -1).contiguous(),
        block_size=[1] * (st.dim() - 1) + [st.block[-1]],
        shape=torch.Size(shape),
    )


# --------------------------------------------------------------------------- torchao -> breccia


def from_torchao(t: torch.Tensor, *, recipe: Optional[Recipe] = None, role: str = "weight") -> ScaledTensor:
    """A torchao ``Float8Tensor``, ``MXTensor``, ``NVFP4Tensor`` or
    ``Int4Tensor`` as a ScaledTensor with the same payload and scales.

    ``recipe``: the breccia recipe to attach (default: the one that quantizes
    with the tensor's element format and block); ``role``: its GEMM role. A
    swizzled MX/NVFP4 tensor comes back in breccia's ``Swizzled`` layout."""
    kind = type(t).__name__
    if kind == "Float8Tensor":
        st = _from_float8(t, recipe, role)
    elif kind == "MXTensor":
        st = _from_mx(t, recipe, role)
    elif kind == "NVFP4Tensor":
        st = _from_nvfp4(t, recipe, role)
    elif kind == "Int4Tensor":
        st = _from_int4(t, recipe, role)
    else:
        raise TypeError(
            f"t: expected a torchao Float8Tensor, MXTensor, NVFP4Tensor or Int4Tensor, got {type(t).__name__}"
        )
    if st.qlayout is Plain:
        try:
            st.check_consistent()
        except ValueError as e:
            raise ValueError(f"t: {kind} buffers do not fit its shape: {e}") from None
    return st


def _from_float8(t: Any, recipe: Optional[Recipe], role: str) -> ScaledTensor:
    q = _row_major(t.qdata, "t.qdata")
    if q.dtype not in _FP8:
        raise ValueError(f"t.qdata: expected float8_e4m3fn or float8_e5m2, got {q.dtype}")
    shape = tuple(t.shape)
    bs = list(t.block_size) if t.block_size else list(shape)
    nd = len(shape)
    if bs == list(shape):
        block = (WHOLE,) * nd
    elif nd >= 1 and bs[:-1] == [1] * (nd - 1) and bs[-1] == shape[-1]:
        block = (1,) * (nd - 1) + (WHOLE,)
    elif nd >= 2 and bs[:-2] == [1] * (nd - 2):
        block = (1,) * (nd - 2) + (bs[-2], bs[-1])
    else:
        raise ValueError(f"t.block_size: {bs} for shape {list(shape)} has no breccia block (at most 2 trailing dims)")
    element = _FP8[q.dtype]
    block2 = block[-2:] if nd >= 2 else (WHOLE, WHOLE)
    try:
        default = _fp8_recipe(block2, element, role)
    except ValueError as e:
        raise ValueError(f"t.block_size: {bs} has no breccia recipe ({e})") from None
    recipe, block = _role_recipe(recipe, default, role, block, element, shape)
    scale = t.scale.to(torch.float32).reshape(scale_grid_shape(shape, block))
    return ScaledTensor(q, scale, recipe=recipe, role=role, block=block, shape=shape, orig_dtype=t.dtype)


def _from_mx(t: Any, recipe: Optional[Recipe], role: str) -> ScaledTensor:
    q = _row_major(t.qdata, "t.qdata")
    if t.elem_dtype not in _FP8:
        raise ValueError(f"t.elem_dtype: breccia has MXFP8 (e4m3/e5m2) only, got {t.elem_dtype}")
    if t.block_size != 32:
        raise ValueError(f"t.block_size: OCP MX blocks hold 32 elements, got {t.block_size}")
    shape = tuple(t.shape)
    element = _FP8[t.elem_dtype]
    block = block_for((1, 32), len(shape))
    recipe, block = _role_recipe(recipe, MXFP8BlockScaling(fp8_format=element), role, block, element, shape)
    scale, layout = t.scale, Plain
    if t.is_swizzled_scales:
        scale, layout = scale.reshape(-1), Swizzled
    return ScaledTensor(
        q, scale, recipe=recipe, role=role, block=block, shape=shape, orig_dtype=t.orig_dtype, qlayout=layout
    )


def _from_nvfp4(t: Any, recipe: Optional[Recipe], role: str) -> ScaledTensor:
    q = _row_major(t.qdata, "t.qdata")
    if t.block_size != 16:
        raise ValueError(f"t.block_size: NVFP4 blocks hold 16 elements, got {t.block_size}")
    gs = t.per_tensor_scale
    if gs is None:  # single-level scaling: a global scale of one changes no value
        gs = torch.ones((), dtype=torch.float32, device=q.device)
    elif gs.numel() != 1:
        raise ValueError(f"t.per_tensor_scale: breccia has one global scale per tensor, got shape {tuple(gs.shape)}")
    shape = tuple(t.shape)
    block = block_for((1, 16), len(shape))
    recipe, block = _role_recipe(recipe, NVFP4BlockScaling(), role, block, "e2m1", shape)
    scale, layout = t.scale, Plain
    if t.is_swizzled_scales:
        scale, layout = scale.reshape(-1), Swizzled
    return ScaledTensor(
        q.view(torch.uint8), scale, recipe=recipe, role=role, block=block, shape=shape, orig_dtype=t.orig_dtype,
        global_scale=gs.to(torch.float32).reshape(()), qlayout=layout,
    )


def _from_int4(t: Any, recipe: Optional[Recipe], role: str) -> ScaledTensor:
    if getattr(t, "act_pre_scale", None) is not None:
        raise ValueError("t.act_pre_scale: breccia has no activation pre-scale; convert tensors without one")
    q = _row_major(t.qdata, "t.qdata").view(torch.uint8)
    shape = tuple(t.shape)
    g = int(t.block_size[-1])
    s = t.scale.transpose(-2, -1).contiguous()
    z = t.zero_point.transpose(-2, -1).contiguous()
    if s.dtype not in (torch.bfloat16, torch.float16):
        r = s.to(torch.bfloat16)
        if not torch.equal(r.to(s.dtype), s):
            raise ValueError(f"t.scale: breccia's INT4 scales are bf16/fp16; {s.dtype} values do not fit exactly")
        s, z = r, z.to(torch.bfloat16)
    zp = None
    if bool((z != 0).any()):
        # z = (8 - zp) * s for an integer zp in 0..15, else no breccia equivalent
        zpf = 8.0 - z.to(torch.float32) / s.to(torch.float32)
        zpi = torch.round(zpf)
        ok = (zpi >= 0) & (zpi <= 15) & ((8.0 - zpi) * s.to(torch.float32) == z.to(torch.float32))
        if not bool(ok.all()):
            raise ValueError(
                "t.zero_point: torchao's float zero points (min + 8 * scale) are not integer multiples of the "
                "scale here; breccia's asymmetric INT4 holds an integer zero point, so this tensor has no exact "
                "breccia equivalent"
            )
        zp = zpi.to(torch.uint8)
        q = q ^ 0x88  # signed nibble q -> unsigned code q + 8
    sfmt = "bf16" if s.dtype == torch.bfloat16 else "fp16"
    block = block_for((1, g), len(shape))
    try:
        default = INT4Scaling(group_size=g, symmetric=zp is None, scale_dtype=sfmt)
    except ValueError as e:
        raise ValueError(f"t.block_size: group size {g} has no breccia INT4 recipe ({e})") from None
    recipe, block = _role_recipe(recipe, default, role, block, "int4", shape)
    if recipe.spec(role).has_zero_point != (zp is not None) or recipe.spec(role).scale_format != sfmt:
        raise ValueError(f"recipe: {recipe!r} does not match the tensor's symmetry and {sfmt} scales")
    return ScaledTensor(
        q, s, recipe=recipe, role=role, block=block, shape=shape, orig_dtype=t.dtype, zero_point=zp
    )
