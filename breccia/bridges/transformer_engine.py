"""TransformerEngine quantized tensors <-> ScaledTensor, buffer for buffer.

TE (``transformer_engine.pytorch``) cannot be imported without a CUDA driver,
so this bridge speaks TE's *buffers*: :func:`to_transformer_engine` returns a
plain dict keyed by TE's attribute names, and :func:`from_transformer_engine`
reads such a dict or, duck-typed, a real TE tensor (or ``*Storage``) object.
Layouts follow TE's ``get_scale_shape`` / ``get_columnwise_shape``
(``M = prod(shape[:-1])``, ``K = shape[-1]``):

``Float8Tensor`` (delayed / current scaling)
    ``_data`` uint8 (logical shape), ``_transpose`` uint8 ``(K, *leading)``,
    ``_scale_inv`` fp32 ``(1,)`` = breccia's ``scale``, ``_fp8_dtype``.
``MXFP8Tensor``
    ``_rowwise_data`` uint8 (logical shape), ``_rowwise_scale_inv`` uint8 (e8m0
    bytes) ``(roundup(M,128), roundup(K/32,4))``; ``_columnwise_data`` uint8
    (logical shape, blocks of 32 down each column), ``_columnwise_scale_inv``
    ``(roundup(M/32,4), roundup(K,128))``; padding is zero bytes.
    ``_with_gemm_swizzled_scales``: rowwise scales in the cuBLAS 128x4 swizzle.
``Float8BlockwiseQTensor`` (128-element blocks, fp32 scales)
    ``_rowwise_data`` uint8 (logical shape); ``_columnwise_data`` transposed
    ``(K, *leading)``. 128x128 (``_is_2D_scaled``): rowwise scales
    ``(ceil(M/128), roundup(ceil(K/128),4))``, columnwise
    ``(ceil(K/128), roundup(ceil(M/128),4))``. 1x128, GEMM-ready: rowwise
    ``(ceil(K/128), roundup(M,4))`` -- transposed --, columnwise
    ``(ceil(M/128), roundup(K,4))``. 1x128 compact (``_data_format``
    ``COMPACT``, TE before 2.12): rowwise ``(M, ceil(K/128))``, columnwise
    data not transposed with scales ``(ceil(M/128), K)``.
``NVFP4Tensor``
    ``_rowwise_data`` uint8 ``(M, K/2)`` (two e2m1, even element low),
    ``_rowwise_scale_inv`` uint8 (e4m3 bytes) ``(roundup(M,128), roundup(K/16,4))``;
    ``_columnwise_data`` ``(K, M/2)`` (the transpose, quantized in 1x16 blocks
    along M), ``_columnwise_scale_inv`` ``(roundup(K,128), roundup(M/16,4))``;
    ``_amax_rowwise`` / ``_amax_columnwise`` fp32 ``(1,)``: TE keeps the
    tensor amax, not a global scale, and dequantizes ``q * s * amax / (6*448)``.

Payloads, block scales and FP8 scales convert bit-exactly both ways. The
NVFP4 amax is chosen so that ``amax / (448*6)`` rounds to breccia's global
scale exactly (breccia -> TE -> breccia is bit-exact); TE's own kernel forms
``s * amax * (1/2688)``, within one float32 ulp of breccia's ``s * global``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Union

import torch

from ..layouts import Plain, relayout, swizzle_scales, unswizzle_scales
from ..quantize import resolve_block
from ..recipes import WHOLE, Float8BlockScaling, Float8CurrentScaling, MXFP8BlockScaling, NVFP4BlockScaling, Recipe
from ..tensor import ScaledTensor

__all__ = ["to_transformer_engine", "from_transformer_engine", "amax_for_global_scale", "global_scale_from_amax"]

FLOAT8 = "Float8Tensor"
MXFP8 = "MXFP8Tensor"
BLOCKWISE = "Float8BlockwiseQTensor"
NVFP4 = "NVFP4Tensor"
KINDS = (FLOAT8, MXFP8, BLOCKWISE, NVFP4)

#: TE's DType names (transformer_engine.h: kNVTEFloat8E4M3 = 7, E5M2 = 8, E2M1 = 10)
_TE_NAME = {"e4m3": "kFloat8E4M3", "e5m2": "kFloat8E5M2", "e2m1": "kFloat4E2M1"}
_TE_CODE = {7: "e4m3", 8: "e5m2", 10: "e2m1"}
_TORCH_FP8 = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
_NVFP4_DIVISOR = 448.0 * 6.0
_INT = {1: torch.uint8, 4: torch.int32}


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _roundup(a: int, b: int) -> int:
    return _cdiv(a, b) * b


def _pad2d(grid: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """``grid`` zero-padded (as bytes/bits) to ``(rows, cols)``, same dtype."""
    bits = grid.view(_INT[grid.element_size()])
    out = bits.new_zeros((rows, cols))
    out[: grid.shape[0], : grid.shape[1]] = bits
    return out.view(grid.dtype)


def _u8(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8)


def _nibbles(packed: torch.Tensor, n: int) -> torch.Tensor:
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).flatten(-2)[..., :n]


def _pack(codes: torch.Tensor) -> torch.Tensor:
    if codes.shape[-1] % 2:
        codes = torch.nn.functional.pad(codes, (0, 1))
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).contiguous()


# --------------------------------------------------------------------------- NVFP4 amax


def amax_for_global_scale(global_scale: torch.Tensor) -> torch.Tensor:
    """TE's NVFP4 amax ``(1,)`` float32 for breccia's ``global_scale``: the
    float32 nearest ``global * 448 * 6`` that maps back to it exactly under
    :func:`global_scale_from_amax`. Every global scale that breccia (or
    torchao) derives, ``fl(amax / 2688)`` of a float32 amax, has one; for any
    other value the nearest amax is returned."""
    g = global_scale.detach().to(torch.float32).reshape(1)
    a = g * _NVFP4_DIVISOR
    if not bool(torch.isfinite(a).all()):
        return a
    bits = a.view(torch.int32)
    for step in (0, -1, 1, -2, 2, -3, 3):  # nearest first
        cand = (bits + step).view(torch.float32)
        if bool((global_scale_from_amax(cand).reshape(1) == g).all()):
            return cand
    return a


def global_scale_from_amax(amax: torch.Tensor) -> torch.Tensor:
    """breccia's NVFP4 ``global_scale`` (0-d float32) for a TE amax: its own rule
    ``amax / (448 * 6)``, and 1 for an all-zero tensor."""
    a = amax.detach().to(torch.float32).reshape(())
    g = a / torch.full_like(a, _NVFP4_DIVISOR)
    return torch.where(a == 0, torch.ones_like(g), g)


# --------------------------------------------------------------------------- breccia -> TE


def _direction(st: ScaledTensor) -> str:
    """``"rowwise"`` (blocks along the last dim, or 2-D / whole blocks) or
    ``"columnwise"`` (blocks down dim -2, one element wide)."""
    b = resolve_block(st.block, tuple(st.shape))
    if st.dim() >= 2 and b[-1] == 1 and b[-2] > 1:
        return "columnwise"
    return "rowwise"


def _flat_mk(shape: tuple) -> tuple[int, int]:
    return math.prod(shape[:-1]), shape[-1]


def to_transformer_engine(
    st: ScaledTensor,
    *,
    columnwise: Union[bool, ScaledTensor, None] = None,
    gemm_swizzled: bool = False,
    data_format: str = "gemm_ready",
) -> dict[str, Any]:
    """TE's buffers for ``st`` as a dict: ``"type"`` (TE class name),
    ``"shape"``, ``"dtype"`` (TE's fake dtype) and TE's attribute names.

    ``st`` fills the rowwise buffers, or the columnwise ones if its blocks run
    down dim -2 (``(32, 1)``, ``(128, 1)``, ``(16, 1)``). ``columnwise``: True
    derives the columnwise buffers from ``st`` where that is lossless
    (tensorwise FP8, 128x128 and 16x16 blocks: a transpose); a ScaledTensor
    supplies them (the same tensor quantized column-wise). ``gemm_swizzled``:
    MXFP8/NVFP4 rowwise scales in the 128x4 swizzle. ``data_format``:
    ``"gemm_ready"`` or ``"compact"`` (1x128 blockwise, TE < 2.12)."""
    if not isinstance(st, ScaledTensor):
        raise TypeError(f"st: expected a breccia ScaledTensor, got {type(st).__name__}")
    if not (columnwise is None or isinstance(columnwise, (bool, ScaledTensor))):
        raise TypeError(f"columnwise: expected None, a bool or a ScaledTensor, got {type(columnwise).__name__}")
    if data_format not in ("gemm_ready", "compact"):
        raise ValueError(f"data_format: expected 'gemm_ready' or 'compact', got {data_format!r}")
    st = relayout(st, Plain)
    fmt = st.spec.scale_format
    if st.dim() < 1:
        raise ValueError("st: expected at least one dimension")
    if fmt == "fp32":
        if all(b == WHOLE for b in st.block):
            out = _float8_buffers(st, columnwise)
        else:
            out = _blockwise_buffers(st, columnwise, data_format == "compact")
    elif fmt == "e8m0":
        out = _mx_buffers(st, columnwise, gemm_swizzled)
    elif fmt == "e4m3":
        out = _nvfp4_buffers(st, columnwise, gemm_swizzled)
    else:
        raise ValueError(f"st: TransformerEngine has no {st.spec.element} tensor ({st.recipe.name})")
    out["shape"], out["dtype"] = tuple(st.shape), st.orig_dtype
    return out


def _other(st: ScaledTensor, columnwise: Any, derivable: bool, what: str) -> Optional[ScaledTensor]:
    """The ScaledTensor that fills the other direction's buffers, or None."""
    if columnwise is None or columnwise is False:
        return None
    if columnwise is True:
        if not derivable:
            raise ValueError(
                f"columnwise: {what} column-wise data is a separate quantization; pass it as a ScaledTensor "
                "(e.g. breccia.cast(x.t().contiguous(), recipe).t())"
            )
        return None
    other = relayout(columnwise, Plain)
    if tuple(other.shape) != tuple(st.shape) or other.spec.scale_format != st.spec.scale_format:
        raise ValueError(
            f"columnwise: expected the same tensor ({tuple(st.shape)}, {st.spec.scale_format} scales) quantized "
            f"column-wise, got {tuple(other.shape)} with {other.spec.scale_format} scales"
        )
    if _direction(other) == _direction(st):
        raise ValueError(f"columnwise: expected a {what} ScaledTensor with blocks down dim -2, got block {other.block}")
    return other


def _float8_buffers(st: ScaledTensor, columnwise: Any) -> dict:
    if isinstance(columnwise, ScaledTensor):
        raise ValueError("columnwise: a Float8Tensor's transpose is derived from st; pass columnwise=True")
    data = _u8(st.qdata)
    return {
        "type": FLOAT8,
        "_data": data,
        "_transpose": data.movedim(-1, 0).contiguous() if columnwise else None,
        "_scale_inv": st.scale.reshape(1),
        "_fp8_dtype": _TE_NAME[st.spec.element],
    }


def _blockwise_buffers(st: ScaledTensor, columnwise: Any, compact: bool) -> dict:
    shape = tuple(st.shape)
    b = resolve_block(st.block, shape)
    two_d = st.dim() == 2 and b == (128, 128)
    one_d = tuple(b[-2:]) in ((1, 128), (128, 1)) if st.dim() >= 2 else b == (128,)
    if not (two_d or one_d):
        raise ValueError(
            f"st: TE's Float8BlockwiseQTensor takes 1x128 blocks (or 128x128 on 2-D tensors), got block {st.block}"
        )
    other = _other(st, columnwise, two_d, "1x128 blockwise")
    out: dict[str, Any] = {
        "type": BLOCKWISE, "_rowwise_data": None, "_rowwise_scale_inv": None, "_columnwise_data": None,
        "_columnwise_scale_inv": None, "_fp8_dtype": _TE_NAME[st.spec.element], "_is_2D_scaled": two_d,
        "_data_format": "COMPACT" if compact and not two_d else "GEMM_READY",
    }
    m, k = _flat_mk(shape)
    if two_d:
        out["_rowwise_data"] = _u8(st.qdata)
        out["_rowwise_scale_inv"] = _pad2d(st.scale, st.scale.shape[0], _roundup(st.scale.shape[1], 4))
        if columnwise is True:  # same 128x128 blocks: the transpose, bit for bit
            out["_columnwise_data"] = _u8(st.qdata).t().contiguous()
            out["_columnwise_scale_inv"] = _pad2d(st.scale.t(), st.scale.shape[1], _roundup(st.scale.shape[0], 4))
        return out
    for t in (st, other):
        if t is None:
            continue
        if _direction(t) == "rowwise":
            grid = t.scale.reshape(m, _cdiv(k, 128))
            out["_rowwise_data"] = _u8(t.qdata)
            out["_rowwise_scale_inv"] = grid.contiguous() if compact else _pad2d(grid.t(), grid.shape[1], _roundup(m, 4))
        else:
            if t.dim() != 2:
                raise ValueError(f"st: column-wise 128x1 blocks convert for 2-D tensors only, got {tuple(t.shape)}")
            grid = t.scale  # (ceil(M/128), K)
            data = _u8(t.qdata)
            out["_columnwise_data"] = data if compact else data.t().contiguous()
            out["_columnwise_scale_inv"] = grid.contiguous() if compact else _pad2d(grid, grid.shape[0], _roundup(k, 4))
    return out


def _mx_buffers(st: ScaledTensor, columnwise: Any, swizzle: bool) -> dict:
    other = _other(st, columnwise, False, "MXFP8")
    out: dict[str, Any] = {
        "type": MXFP8, "_rowwise_data": None, "_rowwise_scale_inv": None, "_columnwise_data": None,
        "_columnwise_scale_inv": None, "_fp8_dtype": _TE_NAME[st.spec.element], "_with_gemm_swizzled_scales": swizzle,
    }
    shape = tuple(st.shape)
    m, k = _flat_mk(shape)
    for t in (st, other):
        if t is None:
            continue
        b = resolve_block(t.block, shape)
        if _direction(t) == "rowwise":
            if b[-1] != 32 or k % 32:
                raise ValueError(f"st: TE's MXFP8 takes 1x32 blocks with K divisible by 32, got {t.block} on {shape}")
            grid = t.scale.reshape(m, k // 32).view(torch.uint8)
            rows, cols = _roundup(m, 128), _roundup(k // 32, 4)
            out["_rowwise_data"] = _u8(t.qdata)
            out["_rowwise_scale_inv"] = swizzle_scales(grid).view(rows, cols) if swizzle else _pad2d(grid, rows, cols)
        else:
            if swizzle:
                raise ValueError("gemm_swizzled: supported for rowwise scales only; keep columnwise scales compact")
            if t.dim() != 2 or b != (32, 1) or m % 32:
                raise ValueError(f"columnwise: TE's MXFP8 takes 32x1 blocks on 2-D (M % 32 == 0), got {t.block} on {shape}")
            grid = t.scale.view(torch.uint8)  # (M/32, K)
            out["_columnwise_data"] = _u8(t.qdata)
            out["_columnwise_scale_inv"] = _pad2d(grid, _roundup(m // 32, 4), _roundup(k, 128))
    return out


def _nvfp4_buffers(st: ScaledTensor, columnwise: Any, swizzle: bool) -> dict:
    shape = tuple(st.shape)
    if st.dim() != 2:
        raise ValueError(f"st: NVFP4 converts for 2-D tensors, got shape {shape}")
    m, k = shape
    b = resolve_block(st.block, shape)
    square = b == (16, 16)
    other = _other(st, columnwise, square, "NVFP4")
    out: dict[str, Any] = {
        "type": NVFP4, "_rowwise_data": None, "_rowwise_scale_inv": None, "_columnwise_data": None,
        "_columnwise_scale_inv": None, "_amax_rowwise": None, "_amax_columnwise": None,
        "_fp4_dtype": _TE_NAME["e2m1"], "_with_gemm_swizzled_scales": swizzle,
    }

    def rowwise_scales(grid: torch.Tensor) -> torch.Tensor:
        r, c = grid.shape
        g = grid.view(torch.uint8)
        return swizzle_scales(g).view(_roundup(r, 128), _roundup(c, 4)) if swizzle else _pad2d(g, _roundup(r, 128), _roundup(c, 4))

    for t in (st, other):
        if t is None:
            continue
        tb = resolve_block(t.block, shape)
        if _direction(t) == "rowwise":
            if k % 16 or tb not in ((1, 16), (16, 16)):
                raise ValueError(f"st: TE's NVFP4 takes 1x16 (or 16x16) blocks with K % 16 == 0, got {t.block} on {shape}")
            grid = t.scale if tb == (1, 16) else t.scale.repeat_interleave(16, dim=0)[:m]
            out["_rowwise_data"] = t.qdata.contiguous()
            out["_rowwise_scale_inv"] = rowwise_scales(grid)
            out["_amax_rowwise"] = amax_for_global_scale(t.global_scale)
        else:
            if m % 16 or tb != (16, 1):
                raise ValueError(f"columnwise: TE's NVFP4 takes 16x1 blocks with M % 16 == 0, got {t.block} on {shape}")
            if swizzle:
                raise ValueError("gemm_swizzled: supported for rowwise scales only; keep columnwise scales compact")
            codes = _nibbles(t.qdata, k)
            out["_columnwise_data"] = _pack(codes.t())
            out["_columnwise_scale_inv"] = _pad2d(t.scale.t().view(torch.uint8), _roundup(k, 128), _roundup(m // 16, 4))
            out["_amax_columnwise"] = amax_for_global_scale(t.global_scale)
    if columnwise is True:  # 16x16 blocks: the column-wise quantization is the transpose
        if m % 16:
            raise ValueError(f"columnwise: TE's NVFP4 column-wise data needs M % 16 == 0, got {shape}")
        if swizzle:
            raise ValueError("gemm_swizzled: supported for rowwise scales only; keep columnwise scales compact")
        codes = _nibbles(st.qdata, k)
        out["_columnwise_data"] = _pack(codes.t())
        grid = st.scale.t().repeat_interleave(16, dim=0)[:k]  # (K, M/16)
        out["_columnwise_scale_inv"] = _pad2d(grid.contiguous().view(torch.uint8), _roundup(k, 128), _roundup(m // 16, 4))
        out["_amax_columnwise"] = amax_for_global_scale(st.global_scale)
    return out


# --------------------------------------------------------------------------- TE -> breccia


class _Reader:
    """Uniform access to a buffer dict or a (duck-typed) TE tensor object."""

    def __init__(self, obj: Any):
        self.obj = obj
        self.is_map = isinstance(obj, Mapping)
        if self.is_map:
            kind = obj.get("type")
        else:
            kind = type(obj).__name__
            kind = kind[: -len("Storage")] if kind.endswith("Storage") else kind
        if kind not in KINDS:
            raise TypeError(
                f"obj: expected a TE {', '.join(KINDS)} (or *Storage) object, or a dict from "
                f"to_transformer_engine, got {type(obj).__name__}" + (f" of type {kind!r}" if self.is_map else "")
            )
        self.kind = kind

    def get(self, name: str) -> Any:
        return self.obj.get(name) if self.is_map else getattr(self.obj, name, None)

    def tensor(self, name: str) -> Optional[torch.Tensor]:
        t = self.get(name)
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"obj.{name}: expected a tensor or None, got {type(t).__name__}")
        return t

    def shape(self) -> tuple:
        s = self.get("shape")
        if s is None and not self.is_map:
            s = self.obj.size()
        if s is None:
            raise ValueError("obj: expected a 'shape' entry (the logical shape)")
        return tuple(int(v) for v in s)

    def dtype(self) -> torch.dtype:
        d = self.get("dtype") if self.is_map else getattr(self.obj, "dtype", None) or self.get("_dtype")
        return d if isinstance(d, torch.dtype) else torch.bfloat16

    def element(self, name: str) -> str:
        v = self.get(name)
        label = getattr(v, "name", v)  # TE's DType IntEnum, its name, or its integer code
        if isinstance(label, str):
            for el, te in _TE_NAME.items():
                if label.endswith(te) or label == te.removeprefix("k"):
                    return el
        elif isinstance(v, int) and int(v) in _TE_CODE:
            return _TE_CODE[int(v)]
        raise ValueError(f"obj.{name}: expected a TE DType (kFloat8E4M3, kFloat8E5M2, kFloat4E2M1), got {v!r}")


def _usage(r: _Reader, usage: Optional[str], row: str, col: str) -> str:
    if usage not in (None, "rowwise", "columnwise"):
        raise ValueError(f"usage: expected None, 'rowwise' or 'columnwise', got {usage!r}")
    has_row, has_col = r.tensor(row) is not None, r.tensor(col) is not None
    if usage is None:
        usage = "rowwise" if has_row else "columnwise"
    if not (has_row if usage == "rowwise" else has_col):
        raise ValueError(f"usage: the TE {r.kind} holds no {usage} data")
    return usage


def _check_recipe(recipe: Optional[Recipe], default: Recipe, role: str) -> Recipe:
    """``recipe`` if it quantizes with the buffers' element and scale format
    (those of ``default``), else an error; ``default`` if None."""
    if recipe is None:
        return default
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe: expected a breccia recipe or None, got {type(recipe).__name__}")
    got, want = recipe.spec(role), default.spec(role)
    if (got.element, got.scale_format) != (want.element, want.scale_format):
        raise ValueError(
            f"recipe: {recipe!r} (role {role!r}) quantizes as {got.element} with {got.scale_format} scales, "
            f"but the TE buffers hold {want.element} with {want.scale_format} scales"
        )
    return recipe


def from_transformer_engine(
    obj: Any, *, usage: Optional[str] = None, recipe: Optional[Recipe] = None, role: str = "weight"
) -> ScaledTensor:
    """The ScaledTensor held in TE buffers: a dict from
    :func:`to_transformer_engine` or a TE tensor object (duck-typed).

    ``usage``: ``"rowwise"`` or ``"columnwise"`` data (default: rowwise if
    present). Column-wise data comes back as the logical tensor with blocks
    down dim -2 (its payload made row-major). ``recipe``: attach this recipe
    instead of the one the buffers imply (its element and scale format must
    match)."""
    r = _Reader(obj)
    shape = r.shape()
    if r.kind == FLOAT8:
        st = _from_float8(r, shape, usage, recipe, role)
    elif r.kind == BLOCKWISE:
        st = _from_blockwise(r, shape, usage, recipe, role)
    elif r.kind == MXFP8:
        st = _from_mx(r, shape, usage, recipe, role)
    else:
        st = _from_nvfp4(r, shape, usage, recipe, role)
    try:
        st.check_consistent()
    except ValueError as e:
        raise ValueError(f"obj: the TE {r.kind} buffers do not fit shape {shape}: {e}") from None
    return st


def _make(q, scale, recipe, role, block, shape, dtype, gs=None) -> ScaledTensor:
    return ScaledTensor(q, scale, recipe=recipe, role=role, block=block, shape=shape, orig_dtype=dtype, global_scale=gs)


def _from_float8(r: _Reader, shape: tuple, usage, recipe, role) -> ScaledTensor:
    usage = _usage(r, usage, "_data", "_transpose")
    el = r.element("_fp8_dtype")
    q = r.tensor("_data") if usage == "rowwise" else r.tensor("_transpose").movedim(0, -1).contiguous()
    sinv = r.tensor("_scale_inv")
    if sinv is None or sinv.numel() != 1:
        raise ValueError(f"obj._scale_inv: expected one fp32 scale, got {None if sinv is None else tuple(sinv.shape)}")
    recipe = _check_recipe(recipe, Float8CurrentScaling(fp8_format=el), role)
    nd = len(shape)
    return _make(q.view(_TORCH_FP8[el]), sinv.to(torch.float32).reshape((1,) * nd), recipe, role,
                 (WHOLE,) * nd, shape, r.dtype())


def _from_blockwise(r: _Reader, shape: tuple, usage, recipe, role) -> ScaledTensor:
    usage = _usage(r, usage, "_rowwise_data", "_columnwise_data")
    el = r.element("_fp8_dtype")
    two_d = bool(r.get("_is_2D_scaled"))
    fmt = r.get("_data_format")
    compact = "COMPACT" in str(getattr(fmt, "name", fmt)).upper()
    m, k = _flat_mk(shape)
    fp8 = _TORCH_FP8[el]
    if usage == "rowwise":
        q = r.tensor("_rowwise_data").view(fp8)
        sinv = r.tensor("_rowwise_scale_inv")
        if two_d:
            scale, block = sinv[: _cdiv(m, 128), : _cdiv(k, 128)], (128, 128)
        elif compact:
            scale, block = sinv.reshape(*shape[:-1], _cdiv(k, 128)), (1,) * (len(shape) - 1) + (128,)
        else:
            scale = sinv[: _cdiv(k, 128), :m].t().reshape(*shape[:-1], _cdiv(k, 128))
            block = (1,) * (len(shape) - 1) + (128,)
        field_block = block[-2:] if len(block) >= 2 else (1, 128)
    else:
        data = r.tensor("_columnwise_data")
        sinv = r.tensor("_columnwise_scale_inv")
        if len(shape) != 2:
            raise ValueError(f"usage: column-wise blockwise data converts for 2-D tensors only, got shape {shape}")
        q = (data if compact and not two_d else data.t()).contiguous().view(fp8)
        if two_d:
            scale, block = sinv[: _cdiv(k, 128), : _cdiv(m, 128)].t(), (128, 128)
        else:
            scale, block = sinv[: _cdiv(m, 128), :k], (128, 1)
        field_block = block
    field = {"input": "input_block", "weight": "weight_block", "grad_output": "grad_block"}[role]
    default = Float8BlockScaling(fp8_format=el, **{field: tuple(field_block)})
    recipe = _check_recipe(recipe, default, role)
    return _make(q, scale.to(torch.float32).contiguous(), recipe, role, block, shape, r.dtype())


def _scales_2d(r: _Reader, name: str, rows: int, cols: int, swizzled: bool) -> torch.Tensor:
    sinv = r.tensor(name)
    if sinv is None:
        raise ValueError(f"obj.{name}: expected the scale buffer, found none")
    sinv = sinv.view(torch.uint8)
    if swizzled:
        return unswizzle_scales(sinv.reshape(-1), rows, cols)
    return sinv[:rows, :cols].contiguous()


def _from_mx(r: _Reader, shape: tuple, usage, recipe, role) -> ScaledTensor:
    usage = _usage(r, usage, "_rowwise_data", "_columnwise_data")
    el = r.element("_fp8_dtype")
    swizzled = bool(r.get("_with_gemm_swizzled_scales"))
    m, k = _flat_mk(shape)
    recipe = _check_recipe(recipe, MXFP8BlockScaling(fp8_format=el), role)
    if usage == "rowwise":
        q = r.tensor("_rowwise_data").view(_TORCH_FP8[el])
        grid = _scales_2d(r, "_rowwise_scale_inv", m, k // 32, swizzled)
        scale, block = grid.reshape(*shape[:-1], k // 32), (1,) * (len(shape) - 1) + (32,)
    else:
        if swizzled:
            raise ValueError("obj: swizzled column-wise MXFP8 scales are not supported; unswizzle them in TE first")
        if len(shape) != 2:
            raise ValueError(f"usage: column-wise MXFP8 converts for 2-D tensors only, got shape {shape}")
        q = r.tensor("_columnwise_data").view(_TORCH_FP8[el])
        scale, block = _scales_2d(r, "_columnwise_scale_inv", m // 32, k, False), (32, 1)
    return _make(q, scale.view(torch.float8_e8m0fnu), recipe, role, block, shape, r.dtype())


def _from_nvfp4(r: _Reader, shape: tuple, usage, recipe, role) -> ScaledTensor:
    usage = _usage(r, usage, "_rowwise_data", "_columnwise_data")
    r.element("_fp4_dtype")
    if len(shape) != 2:
        raise ValueError(f"obj: NVFP4 converts for 2-D tensors, got shape {shape}")
    m, k = shape
    swizzled = bool(r.get("_with_gemm_swizzled_scales"))
    amax = r.tensor("_amax_rowwise" if usage == "rowwise" else "_amax_columnwise")
    if amax is None or amax.numel() != 1:
        raise ValueError(
            f"obj: expected one fp32 {usage} amax, got {None if amax is None else tuple(amax.shape)} "
            "(row-scaled NVFP4 has no breccia equivalent)"
        )
    gs = global_scale_from_amax(amax)
    recipe = _check_recipe(recipe, NVFP4BlockScaling(), role)
    if usage == "rowwise":
        q = r.tensor("_rowwise_data")
        grid = _scales_2d(r, "_rowwise_scale_inv", m, _cdiv(k, 16), swizzled).view(torch.float8_e4m3fn)
        block = (1, 16)
        if resolve_block(recipe.spec(role).block, shape) == (16, 16):  # collapse repeated scale rows
            rows = grid[::16]
            if not torch.equal(rows.view(torch.uint8).repeat_interleave(16, dim=0)[:m], grid.view(torch.uint8)):
                raise ValueError("recipe: 16x16 NVFP4 blocks, but the TE scales differ within 16-row groups")
            grid, block = rows, (16, 16)
        return _make(q.contiguous(), grid, recipe, role, block, shape, r.dtype(), gs)
    if swizzled:
        raise ValueError("obj: swizzled column-wise NVFP4 scales are not supported; unswizzle them in TE first")
    codes = _nibbles(r.tensor("_columnwise_data"), m)  # (K, M) codes of the transpose
    q = _pack(codes.t())
    grid = _scales_2d(r, "_columnwise_scale_inv", k, _cdiv(m, 16), False).t().contiguous()
    return _make(q, grid.view(torch.float8_e4m3fn), recipe, role, (16, 1), shape, r.dtype(), gs)
