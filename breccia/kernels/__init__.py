"""The kernel router: what runs where, in one place.

Every matmul on a ScaledTensor (``mm``, ``addmm``, ``bmm``, ``linear``,
``matmul``, ``breccia.matmul``) ends in :func:`scaled_mm`, which picks a route
from this table:

| operands                              | route                                               |
| ------------------------------------- | --------------------------------------------------- |
| FP8 x FP8, tensorwise or rowwise      | ``torch._scaled_mm`` (CPU and CUDA sm89+); forward  |
|                                       | GEMM fast-accumulated (``fast_accum_forward``)      |
| FP8 1x128 x 128x128 (block scaling)   | ``_scaled_mm`` blockwise, sm90, K%512, N%128, M>16  |
| FP8 1x128 x 128x1 (grad-weight)       | ``_scaled_mm`` 1x128 x 1x128, sm90, K%128, N%16, M>16 |
| FP8 1x128 x 128x128 or 128x1, the rest | Triton block-scaled GEMM (CUDA sm89+)              |
| MXFP8 x MXFP8                         | ``torch._scaled_mm``, Swizzled scales (sm100+)      |
| MXFP8 x MXFP8, sm89/sm90              | Triton MXFP8 GEMM (FP8 dots + fold, or bf16 dots)   |
| bf16/fp16 x INT4, or x NVFP4 Packed   | Triton W4A16, dequant in registers, split-K (sm80+) |
| NVFP4 x NVFP4 (1x16)                  | ``torch._scaled_mm`` fp4, Swizzled scales (sm100+)  |
| everything else (blocks, MX, 4-bit)   | reference: dequantize to fp32, ``torch.mm``         |

The CUDA rows live in :mod:`breccia.kernels.cuda_routes` (predicates and
runners: relayout and padding happen there, on the device, no host sync);
the 4-bit rows in :mod:`breccia.kernels.w4a16_routes`, which also says which
NVFP4 products are weight-only (a weight in the Packed layout).

GPU kernels (blockwise ``_scaled_mm``, Triton MXFP8 and W4A16 GEMMs) plug in
as new rows of :data:`ROUTES`, ahead of the reference.

A high-precision operand meeting a ScaledTensor is quantized by that
tensor's recipe (the ``"input"`` role for an activation, ``"weight"`` for a
right-hand operand); weight-only recipes (INT4) keep activations in high
precision.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch

from ..api import cast, dequantize
from ..layouts import Plain
from ..recipes import WHOLE
from ..tensor import ScaledTensor
from . import cuda_routes as _cuda
from . import w4a16_routes as _w4

__all__ = ["scaled_mm", "matmul", "ROUTES", "Route", "route_for"]

_FP8 = ("e4m3", "e5m2")


class Route(NamedTuple):
    name: str
    applies: Callable[[ScaledTensor, ScaledTensor], bool]
    run: Callable[..., torch.Tensor]


# --------------------------------------------------------------------------- FP8 _scaled_mm


def _fp8_rowwise_or_tensorwise(a: ScaledTensor, b: ScaledTensor) -> bool:
    sa, sb = a.spec, b.spec
    if not (sa.element in _FP8 and sb.element in _FP8 and sa.scale_format == sb.scale_format == "fp32"):
        return False
    if a.qlayout is not Plain or b.qlayout is not Plain:
        return False
    # a (M, K): one scale per tensor or per row; b (K, N): per tensor or per column
    if a.block not in ((WHOLE, WHOLE), (1, WHOLE)) or b.block not in ((WHOLE, WHOLE), (WHOLE, 1)):
        return False
    dev = a.device
    if dev.type == "cpu":
        return True
    if dev.type == "cuda":
        k, n = a.shape[1], b.shape[1]
        both_e5m2 = sa.element == sb.element == "e5m2"
        return _cuda.capability(dev) >= (8, 9) and k % 16 == 0 and n % 16 == 0 and not both_e5m2
    return False


def _run_fp8_scaled_mm(a: ScaledTensor, b: ScaledTensor, bias, out_dtype):
    qa = a.qdata if a.qdata.is_contiguous() else a.qdata.contiguous()
    qb = b.qdata if b.qdata.t().is_contiguous() else b.qdata.t().contiguous().t()  # column-major
    m, n = a.shape[0], b.shape[1]
    sa, sb = a.scale, b.scale
    rowwise = a.block == (1, WHOLE) or b.block == (WHOLE, 1)
    if rowwise:  # cuBLAS/CPU take both scales per row/column, or both per tensor
        sa = sa.expand(m, 1).contiguous()
        sb = sb.expand(1, n).contiguous()
    else:
        sa, sb = sa.reshape(()), sb.reshape(())
    fuse_bias = bias is not None and bias.dtype == out_dtype and out_dtype != torch.float32
    fast = a.recipe.fast_accum_forward and a.role == "input" and b.role == "weight"
    out = torch._scaled_mm(
        qa, qb, sa, sb, bias=bias if fuse_bias else None, out_dtype=out_dtype, use_fast_accum=fast
    )
    if bias is not None and not fuse_bias:
        out = (out.float() + bias.float()).to(out_dtype)
    return out


# --------------------------------------------------------------------------- reference


def _run_reference(a: torch.Tensor, b: torch.Tensor, bias, out_dtype):
    fa = dequantize(a, torch.float32) if isinstance(a, ScaledTensor) else a.float()
    fb = dequantize(b, torch.float32) if isinstance(b, ScaledTensor) else b.float()
    out = fa @ fb
    if bias is not None:
        out = out + (dequantize(bias, torch.float32) if isinstance(bias, ScaledTensor) else bias.float())
    return out.to(out_dtype)


#: weight-only pairs (INT4, or a Packed weight) consider only these two
W4A16 = Route("w4a16_triton", _w4.w4a16_applies, _w4.run_w4a16)
REFERENCE = Route("reference", lambda a, b: True, _run_reference)

#: the routes, tried in order; the reference always applies
ROUTES: list[Route] = [
    W4A16,
    Route("fp8_scaled_mm", _fp8_rowwise_or_tensorwise, _run_fp8_scaled_mm),
    Route("fp8_blockwise_scaled_mm", _cuda.blockwise_cublas_applies, _cuda.run_blockwise_cublas),
    Route("fp8_blockwise_triton", _cuda.blockwise_triton_applies, _cuda.run_blockwise_triton),
    Route("mxfp8_scaled_mm", _cuda.mx_scaled_mm_applies, _cuda.run_mx_scaled_mm),
    Route("mxfp8_triton", _cuda.mx_triton_applies, _cuda.run_mx_triton),
    Route("nvfp4_scaled_mm", _w4.nvfp4_scaled_mm_applies, _w4.run_nvfp4_scaled_mm),
    REFERENCE,
]


def route_for(a: torch.Tensor, b: torch.Tensor) -> Route:
    if _w4.is_weight_only(a) or _w4.is_weight_only(b):
        return W4A16 if W4A16.applies(a, b) else REFERENCE
    return next(r for r in ROUTES if r.applies(a, b))


# --------------------------------------------------------------------------- entry point


def _check_operands(a: torch.Tensor, b: torch.Tensor, op: str) -> None:
    if a.dim() != 2 or b.dim() != 2:
        raise ValueError(f"{op}: expected 2-D operands, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(
            f"{op}: inner dimensions differ: a is {tuple(a.shape)}, b is {tuple(b.shape)} "
            f"(a.shape[1] must equal b.shape[0])"
        )
    if a.device != b.device:
        raise ValueError(f"{op}: operands on different devices: a on {a.device}, b on {b.device}")


def scaled_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    out_dtype: Optional[torch.dtype] = None,
    op: str = "mm",
) -> torch.Tensor:
    """``a @ b (+ bias)`` for 2-D ``a`` (M, K) and ``b`` (K, N), either or both
    ScaledTensors; returns a plain tensor of ``out_dtype``."""
    _check_operands(a, b, op)
    a_st, b_st = isinstance(a, ScaledTensor), isinstance(b, ScaledTensor)
    if out_dtype is None:
        out_dtype = b.dtype if not a_st else a.dtype
    recipe = (a if a_st else b).recipe
    if a_st and b_st and a.recipe is not b.recipe and a.recipe != b.recipe:
        raise ValueError(
            f"{op}: operands quantized with different recipes ({a.recipe!r} and {b.recipe!r}); "
            "requantize one of them (breccia.requantize) or dequantize both"
        )
    if recipe.weight_only or _w4.is_weight_only(a) or _w4.is_weight_only(b):
        # weight-only (INT4, or any weight in the Packed layout): the
        # high-precision operand stays high precision
        return route_for(a, b).run(a, b, bias, out_dtype)
    if not a_st:
        a = cast(a, recipe, "input")
    if not b_st:
        b = cast(b.t(), recipe, "weight").t()
    return route_for(a, b).run(a, b, bias, out_dtype)


def matmul(a: torch.Tensor, b: torch.Tensor, out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``a @ b`` on the same route as ``torch.mm`` / ``F.linear``: ``a`` is
    (..., K), ``b`` is (K, N); either may be a ScaledTensor."""
    if a.dim() < 2:
        raise ValueError(f"matmul: expected a of at least 2 dims, got shape {tuple(a.shape)}")
    lead = a.shape[:-1]
    out = scaled_mm(a.reshape(-1, a.shape[-1]), b, out_dtype=out_dtype, op="matmul")
    return out.reshape(*lead, out.shape[-1])
