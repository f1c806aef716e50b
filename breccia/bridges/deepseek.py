"""DeepSeek-V3 FP8 weights <-> ScaledTensor.

DeepSeek-V3 stores each quantized linear weight as ``weight`` (e4m3, shape
``(N, K)``) plus ``weight_scale_inv`` (float32, ``[ceil(N/128), ceil(K/128)]``),
one scale per 128x128 block, edge blocks partial. ``weight_scale_inv`` is the
dequantization multiplier -- ``weight.float() * weight_scale_inv`` expanded
over each block -- which is exactly breccia's ``scale``: no reciprocal is
taken in either direction, so conversion is bit-exact and zero-copy.

``scale_fmt == "ue8m0"`` (DeepSeek-V3.1 and later configs) means the scales
are powers of two: breccia's ``Float8BlockScaling(power_of_2_scale=True)``.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..layouts import Plain
from ..recipes import Float8BlockScaling
from ..tensor import ScaledTensor

__all__ = ["from_deepseek_v3", "to_deepseek_v3", "DEEPSEEK_BLOCK", "SCALE_FMTS"]

#: DeepSeek-V3's weight block (``weight_block_size`` in its config)
DEEPSEEK_BLOCK = (128, 128)
#: the ``scale_fmt`` values DeepSeek configs use (None: plain fp32 scales)
SCALE_FMTS = (None, "ue8m0")


def _grid(n: int, k: int) -> tuple[int, int]:
    b0, b1 = DEEPSEEK_BLOCK
    return (n + b0 - 1) // b0, (k + b1 - 1) // b1


def _is_pow2(t: torch.Tensor) -> torch.Tensor:
    m, _ = torch.frexp(t)
    return (m == 0.5) | (m == -0.5)


def from_deepseek_v3(
    weight: torch.Tensor,
    weight_scale_inv: torch.Tensor,
    *,
    scale_fmt: Optional[str] = None,
    orig_dtype: torch.dtype = torch.bfloat16,
) -> ScaledTensor:
    """A DeepSeek-V3 FP8 weight as a ScaledTensor (sharing its storage).

    ``weight``: ``torch.float8_e4m3fn`` of shape ``(N, K)``;
    ``weight_scale_inv``: float32 ``[ceil(N/128), ceil(K/128)]``;
    ``scale_fmt``: the config's ``quantization_config["scale_fmt"]`` (None or
    ``"ue8m0"``: then every scale must be a power of two);
    ``orig_dtype``: the outer dtype (DeepSeek-V3 models run in bfloat16)."""
    if not isinstance(weight, torch.Tensor) or not isinstance(weight_scale_inv, torch.Tensor):
        raise TypeError(
            f"weight, weight_scale_inv: expected torch.Tensors, got "
            f"{type(weight).__name__} and {type(weight_scale_inv).__name__}"
        )
    if weight.dtype != torch.float8_e4m3fn or weight.dim() != 2:
        raise ValueError(
            f"weight: expected a 2-D torch.float8_e4m3fn tensor (N, K), got {weight.dim()}-D {weight.dtype}"
        )
    grid = _grid(*weight.shape)
    if weight_scale_inv.dtype != torch.float32 or tuple(weight_scale_inv.shape) != grid:
        raise ValueError(
            f"weight_scale_inv: expected float32 of shape {list(grid)} (ceil of {list(weight.shape)} / 128), "
            f"got {weight_scale_inv.dtype} of shape {list(weight_scale_inv.shape)}"
        )
    if weight_scale_inv.device != weight.device:
        raise ValueError(
            f"weight_scale_inv: expected it on weight's device {weight.device}, got {weight_scale_inv.device}"
        )
    if scale_fmt not in SCALE_FMTS:
        raise ValueError(f"scale_fmt: expected one of {SCALE_FMTS}, got {scale_fmt!r}")
    pow2 = scale_fmt == "ue8m0"
    if pow2 and not bool(_is_pow2(weight_scale_inv).all()):
        raise ValueError('weight_scale_inv: scale_fmt="ue8m0" but some scales are not powers of two')
    if orig_dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"orig_dtype: expected bfloat16, float16 or float32, got {orig_dtype}")
    return ScaledTensor(
        weight.contiguous(),
        weight_scale_inv.contiguous(),
        recipe=Float8BlockScaling(power_of_2_scale=pow2),
        role="weight",
        block=DEEPSEEK_BLOCK,
        shape=tuple(weight.shape),
        orig_dtype=orig_dtype,
    )


def deepseek_incompatibility(st: ScaledTensor) -> Optional[str]:
    """Why ``st`` has no DeepSeek-V3 form, or None if it has one."""
    if not isinstance(st.recipe, Float8BlockScaling):
        return f"DeepSeek-V3 weights are Float8BlockScaling, got {st.recipe.name}"
    spec = st.spec
    if spec.element != "e4m3":
        return f"DeepSeek-V3 weights are e4m3, got {spec.element}"
    if st.dim() != 2 or tuple(st.block) != DEEPSEEK_BLOCK:
        return f"DeepSeek-V3 weights are 2-D with 128x128 blocks, got shape {tuple(st.shape)} block {st.block}"
    return None


def to_deepseek_v3(st: ScaledTensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, weight_scale_inv)`` of a 2-D Float8BlockScaling e4m3 weight
    with 128x128 blocks (any layout; returned row-major, Plain)."""
    if not isinstance(st, ScaledTensor):
        raise TypeError(f"st: expected a ScaledTensor, got {type(st).__name__}")
    why = deepseek_incompatibility(st)
    if why is not None:
        raise ValueError(f"st: {why}")
    if st.qlayout is not Plain:
        from ..layouts import relayout

        st = relayout(st, Plain)
    return st.qdata.contiguous(), st.scale.contiguous()


def is_power_of_2_recipe(st: ScaledTensor) -> bool:
    """Whether ``st``'s scales are powers of two by construction (``ue8m0``)."""
    return isinstance(st.recipe, Float8BlockScaling) and st.recipe.power_of_2_scale
