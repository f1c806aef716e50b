"""CUDA routes of the kernel router: block-scaled FP8 and MXFP8 GEMMs.

Each route is a predicate (``*_applies(a, b)``: shape, dtype, layout and
device-capability checks only, never a look at tensor values) and a runner
(``run_*(a, b, bias, out_dtype)``), for ``a`` (M, K) and ``b`` (K, N)
ScaledTensors; :mod:`breccia.kernels` lists them in its ROUTES table.

| operands | route | where |
| --- | --- | --- |
| FP8 1x128 x 128x128 | ``torch._scaled_mm`` blockwise (cuBLAS) | sm90, K % 512 == 0, N % 128 == 0, M > 16 |
| FP8 1x128 x 128x1 (grad-weight) | same (cuBLAS 1x128 x 1x128) | sm90, K % 128 == 0, N % 16 == 0, M > 16 |
| same | Triton block-scaled GEMM (:mod:`.triton.gemm_blockwise`) | sm89+, any shape |
| MXFP8 (e8m0, 1x32) | ``torch._scaled_mm`` with Swizzled scales | sm100+, K multiple of 32, N of 16 |
| same | Triton MXFP8 GEMM: FP8 dots + scale fold, or bf16 dots (:mod:`.triton.gemm_mx`) | sm89+, any shape |

Runners relayout and pad with plain torch ops on the device (no ``.item()``,
no host sync), so they are CUDA-graph safe; operands already in the layout a
kernel wants pass through without a copy. The Triton kernels are wrapped as
``torch.library`` custom ops (``breccia::fp8_blockwise_mm``,
``breccia::mxfp8_mm``) with fake implementations, so ``torch.compile``
traces through them.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Optional

import torch
import torch.nn.functional as F

from ..layouts import Plain, ScaleColumnMajor, Swizzled, swizzle_scales
from ..library import custom_op
from ..tensor import ScaledTensor
from .triton.launch import device_facts

__all__ = [
    "capability",
    "blockwise_cublas_applies",
    "run_blockwise_cublas",
    "blockwise_triton_applies",
    "run_blockwise_triton",
    "mx_scaled_mm_applies",
    "run_mx_scaled_mm",
    "mx_triton_applies",
    "run_mx_triton",
    "cublas_blockwise_scales",
    "cublas_outer_blockwise_scales",
    "cublas_mx_scales",
]

_FP8 = ("e4m3", "e5m2")
_BLOCK = 128
_MX = 32

#: the fewest rows that take cuBLAS blockwise. Below, the Triton kernel (no
#: row padding, no scale relayout) was faster on an H100 (N = K = 8192, CUDA
#: graphs: M = 1 43.3 vs 44.3 us, M = 16 40.2 vs 42.3 us; at M = 128 cuBLAS
#: won, 43.2 vs 45.6 us; benchmarks/results/gemm-h100.md)
CUBLAS_BLOCKWISE_MIN_M = 17


def capability(device: torch.device) -> Optional[tuple[int, int]]:
    """The CUDA compute capability of ``device``, or None off CUDA (tests
    mock this to pick routes for a pretend GPU)."""
    if device.type != "cuda":
        return None
    return device_facts(device)[0]


@functools.lru_cache(maxsize=None)
def _have_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


# --------------------------------------------------------------------------- operand kinds


def _blockwise_pair(a: ScaledTensor, b: ScaledTensor) -> bool:
    """FP8 ``a`` (M, K) in 1x128 blocks times an FP8 (K, N) ``b`` in 128x128
    blocks (a weight: forward, grad-input) or 128x1 blocks (blocked along K
    too: grad-weight ``dy^T x``), both with fp32 scale grids."""
    sa, sb = a.spec, b.spec
    return (
        sa.element in _FP8
        and sb.element in _FP8
        and sa.scale_format == sb.scale_format == "fp32"
        and a.block == (1, _BLOCK)
        and b.block in ((_BLOCK, _BLOCK), (_BLOCK, 1))
        and a.qlayout in (Plain, ScaleColumnMajor)
        and b.qlayout in (Plain, ScaleColumnMajor)
    )


def _scale_n(b: ScaledTensor) -> int:
    """Columns of ``b`` per scale: 128 (128x128 blocks) or 1 (128x1)."""
    return b.block[1]


def _mx_pair(a: ScaledTensor, b: ScaledTensor) -> bool:
    """MXFP8 activations (1x32 e8m0) times an MXFP8 (K, N) weight (32x1:
    the transpose of a 1x32 (N, K) weight)."""
    sa, sb = a.spec, b.spec
    return (
        sa.element in _FP8
        and sb.element in _FP8
        and sa.scale_format == sb.scale_format == "e8m0"
        and a.block == (1, _MX)
        and b.block == (_MX, 1)
    )


def _both_e5m2(a: ScaledTensor, b: ScaledTensor) -> bool:
    return a.spec.element == b.spec.element == "e5m2"  # cuBLAS refuses e5m2 x e5m2


# --------------------------------------------------------------------------- FP8 blockwise, cuBLAS


def blockwise_cublas_applies(a: ScaledTensor, b: ScaledTensor) -> bool:
    """cuBLAS blockwise (torch ``_scaled_mm``) is Hopper-only. With 128x128
    weight blocks N must be whole 128 blocks and K whole 512s: torch 2.11
    checks the weight scale's leading dimension to be exactly K/128, while
    cuBLAS reads it as roundup(K/128, 4) (wrong results otherwise,
    benchmarks/results/gemm-gpu-check-h100.md). With 128x1 blocks (1x128 x
    1x128 in cuBLAS's terms) K must be whole 128 blocks and N a multiple of 4
    (the (K/128, N) scale grid's rows 16-byte aligned). M from
    CUBLAS_BLOCKWISE_MIN_M up: the runner pads rows to a multiple of 4."""
    cap = capability(a.device)
    if cap is None or cap[0] != 9 or not _blockwise_pair(a, b) or _both_e5m2(a, b):
        return False
    m, k, n = a.shape[0], a.shape[1], b.shape[1]
    if m < CUBLAS_BLOCKWISE_MIN_M:
        return False
    if _scale_n(b) == 1:
        return k % _BLOCK == 0 and n % 16 == 0
    return k % (4 * _BLOCK) == 0 and n % _BLOCK == 0


def _zeros(rows: int, cols: int, like: torch.Tensor) -> Optional[torch.Tensor]:
    """A cached all-zero (rows, cols) tensor of ``like``'s dtype and device,
    for padding by ``cat`` (one kernel instead of fill + copy). None while a
    CUDA graph is being captured and none is cached yet: the caller pads the
    slow way rather than cache memory from the graph's pool."""
    key = (rows, cols, like.dtype, like.device)
    z = _ZEROS.get(key)
    if z is None and not (like.is_cuda and torch.cuda.is_current_stream_capturing()):
        z = _ZEROS[key] = torch.zeros((rows, cols), dtype=like.dtype, device=like.device)
    return z


_ZEROS: dict[tuple, torch.Tensor] = {}


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """``t`` (R, C) with zero rows appended up to ``rows`` (a fresh tensor)."""
    if rows == t.shape[0]:
        return t
    z = _zeros(rows - t.shape[0], t.shape[1], t)
    if z is None:
        return F.pad(t, (0, 0, 0, rows - t.shape[0]))
    return torch.cat([t, z])


def cublas_blockwise_scales(
    a_scale: torch.Tensor, b_scale: torch.Tensor, m_pad: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scales ``torch._scaled_mm`` takes for 1x128 x 128x128 on sm90.

    ``a_scale`` (M, K/128) -> (m_pad, K/128) with strides (1, m_pad):
    outer-dim-major (ScaleColumnMajor), rows past M zero. ``b_scale``
    (K/128, N/128), the grid of the (K, N) operand -> the same grid with
    strides (1, K/128): the transposed Plain weight's own grid, so no copy
    (with K/128 a multiple of 4 this is also the weight's ScaleColumnMajor
    form, 16-byte aligned). Already-right tensors pass through uncopied."""
    sa = _cublas_a_scale(a_scale, m_pad)
    kb, nb = b_scale.shape
    if b_scale.stride(0) == 1 and (nb <= 1 or b_scale.stride(1) == kb):
        sb = b_scale
    else:
        sb = b_scale.t().contiguous().t()
    return sa, sb


def cublas_outer_blockwise_scales(
    a_scale: torch.Tensor, b_scale: torch.Tensor, m_pad: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scales ``torch._scaled_mm`` takes for 1x128 x 1x128 on sm90 (``b``
    (K, N) in 128x1 blocks): ``a_scale`` as in :func:`cublas_blockwise_scales`;
    ``b_scale`` (K/128, N) row-major (the outer-dim-major grid of the (N, K)
    operand that ``b`` transposes)."""
    return _cublas_a_scale(a_scale, m_pad), b_scale.contiguous()


def _cublas_a_scale(a_scale: torch.Tensor, m_pad: int) -> torch.Tensor:
    """``a_scale`` (M, K/128) -> (m_pad, K/128) with strides (1, m_pad)."""
    m, kb = a_scale.shape
    if m_pad == m and (m <= 1 or a_scale.stride(0) == 1) and (kb <= 1 or a_scale.stride(1) == m):
        return a_scale
    return _pad_cols_t(a_scale, m_pad)


def _pad_cols_t(grid: torch.Tensor, rows_pad: int) -> torch.Tensor:
    """``grid`` (R, C) as a (rows_pad, C) view of a contiguous (C, rows_pad)
    storage, rows past R zero: one copy kernel (a cat with cached zeros)."""
    r, c = grid.shape
    gt = grid.t()
    if rows_pad == r:
        return gt.contiguous().t()
    z = _zeros(c, rows_pad - r, grid)
    if z is None:
        return F.pad(gt, (0, rows_pad - r)).t()
    return torch.cat([gt, z], dim=1).t()


def _k_major(q: torch.Tensor) -> torch.Tensor:
    """``q`` (K, N) as a column-major view (what cuBLAS FP8 wants for B)."""
    return q if q.stride(0) == 1 else q.t().contiguous().t()


def _add_bias(out: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    if bias is None:
        return out
    return (out.float() + bias.float()).to(out.dtype)


def run_blockwise_cublas(a: ScaledTensor, b: ScaledTensor, bias, out_dtype: torch.dtype) -> torch.Tensor:
    m = a.shape[0]
    m_pad = _round_up(max(m, 1), 4)  # scale_a's stride must be M, 16-byte aligned
    qa = a.qdata if a.qdata.stride(1) == 1 else a.qdata.contiguous()
    if m_pad != m:
        qa = _pad_rows(qa.view(torch.uint8), m_pad).view(qa.dtype)
    scales = cublas_outer_blockwise_scales if _scale_n(b) == 1 else cublas_blockwise_scales
    sa, sb = scales(a.scale, b.scale, m_pad)
    # cuBLAS fuses a bias of the output's dtype (bf16/fp16; not with fp32 out)
    fuse = bias is not None and bias.dtype == out_dtype and out_dtype != torch.float32
    out = torch._scaled_mm(qa, _k_major(b.qdata), sa, sb, bias=bias if fuse else None, out_dtype=out_dtype)
    if m_pad != m:
        out = out[:m]
    return out if fuse else _add_bias(out, bias)


# --------------------------------------------------------------------------- FP8 blockwise, Triton


def blockwise_triton_applies(a: ScaledTensor, b: ScaledTensor) -> bool:
    cap = capability(a.device)
    return cap is not None and cap >= (8, 9) and _have_triton() and _blockwise_pair(a, b)


@custom_op("breccia::fp8_blockwise_mm")
def fp8_blockwise_mm(
    qa: torch.Tensor,
    sa: torch.Tensor,
    qb: torch.Tensor,
    sb: torch.Tensor,
    bias: Optional[torch.Tensor],
    out_dtype: torch.dtype,
    scale_n: int = _BLOCK,
) -> torch.Tensor:
    """The Triton block-scaled GEMM (:func:`.triton.gemm_blockwise.blockwise_mm`)."""
    from .triton.gemm_blockwise import blockwise_mm

    return blockwise_mm(qa, sa, qb, sb, out_dtype, bias, scale_n=scale_n)


@fp8_blockwise_mm.register_fake
def _(qa, sa, qb, sb, bias, out_dtype, scale_n=_BLOCK):
    return qa.new_empty((qa.shape[0], qb.shape[1]), dtype=out_dtype)


def run_blockwise_triton(a: ScaledTensor, b: ScaledTensor, bias, out_dtype: torch.dtype) -> torch.Tensor:
    return fp8_blockwise_mm(a.qdata, a.scale, b.qdata, b.scale, bias, out_dtype, _scale_n(b))


# --------------------------------------------------------------------------- MXFP8, cuBLAS (sm100)


def mx_scaled_mm_applies(a: ScaledTensor, b: ScaledTensor) -> bool:
    """sm100 has MX tensor cores: ``torch._scaled_mm`` with 128x4-swizzled e8m0
    scales. The weight must come in Plain (its grid is re-swizzled per N)."""
    cap = capability(a.device)
    if cap is None or cap[0] < 10 or not _mx_pair(a, b) or _both_e5m2(a, b):
        return False
    if a.qlayout not in (Plain, Swizzled) or b.qlayout is not Plain:
        return False
    k, n = a.shape[1], b.shape[1]
    return k % _MX == 0 and n % 16 == 0


def cublas_mx_scales(a: ScaledTensor, b: ScaledTensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale_a, scale_b)`` for ``torch._scaled_mm`` MX: ``a``'s (M, K/32)
    grid and the (N, K/32) grid of the weight that ``b`` (K, N) transposes,
    each in the cuBLAS 128x4 swizzle (1-D, e8m0)."""
    sa = a.scale if a.qlayout is Swizzled else swizzle_scales(a.scale)
    sb = swizzle_scales(b.scale.t())
    return sa, sb


def run_mx_scaled_mm(a: ScaledTensor, b: ScaledTensor, bias, out_dtype: torch.dtype) -> torch.Tensor:
    sa, sb = cublas_mx_scales(a, b)
    qa = a.qdata if a.qdata.stride(1) == 1 else a.qdata.contiguous()
    out = torch._scaled_mm(qa, _k_major(b.qdata), sa, sb, out_dtype=out_dtype)
    return _add_bias(out, bias)


# --------------------------------------------------------------------------- MXFP8, Triton (sm89, sm90)


def mx_triton_applies(a: ScaledTensor, b: ScaledTensor) -> bool:
    cap = capability(a.device)
    return (
        cap is not None
        and cap >= (8, 9)
        and _have_triton()
        and _mx_pair(a, b)
        and a.qlayout is Plain
        and b.qlayout is Plain
    )


@custom_op("breccia::mxfp8_mm")
def mxfp8_mm(
    qa: torch.Tensor,
    ea: torch.Tensor,
    qb: torch.Tensor,
    eb: torch.Tensor,
    bias: Optional[torch.Tensor],
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """The Triton MXFP8 GEMM (:func:`.triton.gemm_mx.mx_mm`)."""
    from .triton.gemm_mx import mx_mm

    return mx_mm(qa, ea, qb, eb, out_dtype, bias)


@mxfp8_mm.register_fake
def _(qa, ea, qb, eb, bias, out_dtype):
    return qa.new_empty((qa.shape[0], qb.shape[1]), dtype=out_dtype)


def run_mx_triton(a: ScaledTensor, b: ScaledTensor, bias, out_dtype: torch.dtype) -> torch.Tensor:
    return mxfp8_mm(a.qdata, a.scale, b.qdata, b.scale, bias, out_dtype)
