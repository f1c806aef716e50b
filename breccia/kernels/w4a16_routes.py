"""Routes for 4-bit weights: W4A16 (Triton) and NVFP4 x NVFP4 (``_scaled_mm``).

| operands | route | where |
| --- | --- | --- |
| bf16/fp16 activation x INT4 weight (any layout) | W4A16: the MMA kernel for M <= 16 (:mod:`.triton.w4a16_mma`), else the tensor-core kernel (:mod:`.triton.w4a16`) | CUDA sm80+ |
| bf16/fp16 activation x NVFP4 weight in ``Packed`` | same | CUDA sm80+ |
| NVFP4 x NVFP4 (1x16 blocks) | ``torch._scaled_mm`` fp4, Swizzled scales | CUDA sm100+ |

**Which NVFP4 products are weight-only.** The layout decides, the same on
every device: an NVFP4 weight in the ``Packed`` layout is weight-only (the
activation stays in high precision -- on CUDA the W4A16 kernel, elsewhere the
reference), exactly like INT4. In ``Plain`` or ``Swizzled`` it is W4A4 as the
recipe says (the activation is quantized to NVFP4; ``_scaled_mm`` fp4 on
sm100, the reference elsewhere). ``breccia.convert`` picks: ``Packed`` on CUDA
GPUs without FP4 tensor cores (sm < 100, e.g. the H100) and ``Swizzled`` on
sm100; its ``layout=`` argument overrides. So numerics never depend on which
machine runs a given tensor, and Hopper gets a real 4-bit kernel instead of
an emulated W4A4.

Predicates look at shapes, dtypes, layouts and the device capability only,
never at tensor values (no host sync). The Triton kernel is the custom op
``breccia::w4a16_mm`` (opaque to torch.compile, with a fake implementation):
its split-K workspace is a persistent, self-cleaning buffer, which a
functional ``triton_op`` could not express without a memset per call.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..layouts import Packed, Plain, Swizzled, relayout, swizzle_scales
from ..library import custom_op
from ..packing import packed_incompatibility, packed_operands
from ..tensor import ScaledTensor
from .cuda_routes import _have_triton, capability

__all__ = [
    "is_weight_only",
    "w4a16_applies",
    "run_w4a16",
    "w4a16_mm",
    "nvfp4_scaled_mm_applies",
    "nvfp4_scaled_mm_operands",
    "run_nvfp4_scaled_mm",
]

_ACT_DTYPES = (torch.bfloat16, torch.float16)
_OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def is_weight_only(t: torch.Tensor) -> bool:
    """Whether a ScaledTensor operand keeps the other operand in high
    precision: INT4 always, any tensor in the Packed layout (NVFP4 too)."""
    return isinstance(t, ScaledTensor) and (t.recipe.weight_only or t.qlayout is Packed)


# --------------------------------------------------------------------------- W4A16


def w4a16_applies(a: torch.Tensor, b: torch.Tensor) -> bool:
    """A plain bf16/fp16 activation ``a`` (M, K) times a 4-bit weight ``b``
    (K, N) -- the transpose of an (N, K) weight, as ``F.linear`` passes it --
    on CUDA sm80+ with Triton. ``b`` Packed, or Plain for INT4 (relayout per
    call: ``convert`` does it once instead)."""
    if isinstance(a, ScaledTensor) or not isinstance(b, ScaledTensor):
        return False
    if a.dtype not in _ACT_DTYPES or a.dim() != 2 or b.dim() != 2:
        return False
    cap = capability(b.device)
    if cap is None or cap < (8, 0) or not _have_triton():
        return False
    if b.qlayout is not Packed and not (b.qlayout is Plain and b.recipe.weight_only):
        return False
    # K must run along b's dim 0 (its groups (g, 1)); Packed's own checks
    return b.block[1] == 1 and packed_incompatibility(b) is None


@custom_op("breccia::w4a16_mm")
def w4a16_mm(
    x: torch.Tensor,
    qdata: torch.Tensor,
    scale: torch.Tensor,
    zero_point: Optional[torch.Tensor],
    global_scale: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    kind: str,
    group: int,
    n: int,
    k: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """``x (M, K) @ W.T (+ bias)`` for a Packed 4-bit ``W`` (N, K); see
    :func:`breccia.kernels.triton.w4a16.w4a16_mm`."""
    from .triton.w4a16 import w4a16_mm as _launch

    return _launch(x, qdata, scale, zero_point, global_scale, bias, kind, group, n, k, out_dtype)


@w4a16_mm.register_fake
def _(x, qdata, scale, zero_point, global_scale, bias, kind, group, n, k, out_dtype):
    return x.new_empty((x.shape[0], n), dtype=out_dtype)


def run_w4a16(a: torch.Tensor, b: ScaledTensor, bias: Optional[torch.Tensor], out_dtype: torch.dtype) -> torch.Tensor:
    if b.qlayout is not Packed:
        b = relayout(b, Packed)
    op = packed_operands(b)
    if isinstance(bias, ScaledTensor):
        from ..api import dequantize

        bias = dequantize(bias)
    if out_dtype not in _OUT_DTYPES:
        return w4a16_mm(a, *op[:4], bias, op.kind, op.group, op.n, op.k, torch.float32).to(out_dtype)
    return w4a16_mm(a, op.qdata, op.scale, op.zero_point, op.global_scale, bias, op.kind, op.group, op.n, op.k, out_dtype)


# --------------------------------------------------------------------------- NVFP4 x NVFP4, sm100


def _nvfp4_pair(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        isinstance(a, ScaledTensor)
        and isinstance(b, ScaledTensor)
        and a.spec.element == b.spec.element == "e2m1"
        and a.block == (1, 16)
        and b.block == (16, 1)
        and a.qlayout in (Plain, Swizzled)
        and b.qlayout in (Plain, Swizzled)
    )


def nvfp4_scaled_mm_applies(a: torch.Tensor, b: torch.Tensor) -> bool:
    """sm100 has FP4 tensor cores: ``torch._scaled_mm`` on e2m1 pairs with
    128x4-swizzled e4m3 block scales; K a multiple of 32 (16-byte rows of
    packed pairs), N of 16."""
    cap = capability(a.device)
    if cap is None or cap[0] < 10 or not _nvfp4_pair(a, b):
        return False
    return a.shape[1] % 32 == 0 and b.shape[1] % 16 == 0


def _weight_codes_nk(b: ScaledTensor) -> torch.Tensor:
    """The (N, K/2) e2m1 pairs, packed along K, of the weight that ``b``
    (K, N) transposes (``b``'s Plain payload is packed along N)."""
    from .. import formats

    codes = formats.unpack_nibbles(b.qdata, int(b.shape[1]))  # (K, N)
    return formats.pack_nibbles(codes.t().contiguous())


def nvfp4_scaled_mm_operands(a: ScaledTensor, b: ScaledTensor) -> tuple:
    """``(qa, qb, scale_a, scale_b, alpha)`` as ``torch._scaled_mm`` takes
    NVFP4: ``qa`` (M, K/2) and ``qb`` (K/2, N) column-major, as uint8 (the
    caller views them as ``float4_e2m1fn_x2``); each scale grid -- ``a``'s
    (M, K/16) and the (N, K/16) grid of the weight ``b`` transposes -- in the
    cuBLAS 128x4 swizzle (1-D e4m3, :func:`breccia.layouts.swizzle_scales`);
    ``alpha`` the product of the two fp32 global scales (a 0-d tensor)."""
    a = relayout(a, Plain) if a.qlayout is Swizzled else a
    b = relayout(b, Plain) if b.qlayout is Swizzled else b
    qa = a.qdata if a.qdata.is_contiguous() else a.qdata.contiguous()
    qb = _weight_codes_nk(b).t()
    sa = swizzle_scales(a.scale)
    sb = swizzle_scales(b.scale.t())
    alpha = (a.global_scale * b.global_scale).reshape(())
    return qa, qb, sa, sb, alpha


def run_nvfp4_scaled_mm(a: ScaledTensor, b: ScaledTensor, bias, out_dtype: torch.dtype) -> torch.Tensor:
    qa, qb, sa, sb, alpha = nvfp4_scaled_mm_operands(a, b)
    fp4 = torch.float4_e2m1fn_x2
    out = torch._scaled_mm(qa.view(fp4), qb.view(fp4), sa, sb, out_dtype=torch.float32)
    out = out * alpha  # the global scales: one fp32 multiply, before any rounding
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)
