"""``cast``, ``dequantize`` and ``requantize``: the type's core operations."""

from __future__ import annotations

from typing import Any, Optional

import torch

from .formats import rounding_noise
from .layouts import Plain
from .library import dequantize_op, quantize_op, quantize_rowcol_op
from .quantize import block_for
from .recipes import ROLES, WHOLE, DelayedScaling, Recipe
from .tensor import ScaledTensor

__all__ = ["cast", "cast_with_transpose", "dequantize", "requantize", "as_tensor"]

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def as_tensor(x: Any, name: str = "x") -> torch.Tensor:
    """A torch tensor from a torch tensor or any DLPack array (zero-copy)."""
    if isinstance(x, torch.Tensor):
        return x
    if hasattr(x, "__dlpack__"):
        return torch.from_dlpack(x)
    raise TypeError(
        f"{name}: expected a torch.Tensor or an array with __dlpack__ (NumPy, JAX, MLX, ...), "
        f"got {type(x).__name__}"
    )


def _check_recipe(recipe: Any) -> None:
    if not isinstance(recipe, Recipe):
        raise TypeError(
            "recipe: expected a breccia recipe (e.g. breccia.Float8CurrentScaling()), "
            f"got {type(recipe).__name__}"
        )


def cast(
    x: Any,
    recipe: Recipe,
    role: str = "weight",
    *,
    amax_history: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    amax: Optional[torch.Tensor] = None,
    block_amax: Optional[torch.Tensor] = None,
) -> ScaledTensor:
    """Quantize ``x`` by ``recipe``'s numerics for ``role``.

    ``x``: a float tensor (fp32/bf16/fp16/fp64) of any shape (blocks run along
    the last dim; 2-D weight blocks cover the last two), or any DLPack array.
    ``amax_history``: for DelayedScaling, the history (newest first) whose
    amax sets the scale; without it the tensor's own amax is used.
    ``generator``: drives stochastic rounding where the recipe asks for it.
    ``amax`` / ``block_amax``: a precomputed tensor amax (tensorwise FP8, the
    NVFP4 global scale) or amax per block, e.g. reduced across ranks that
    each hold part of the tensor. A given tensor amax (a calibrated one, say)
    also spares the CUDA kernels their amax pass over ``x``: one read instead
    of two (``docs/kernels.md``).
    """
    x = as_tensor(x)
    _check_recipe(recipe)
    if role not in ROLES:
        raise ValueError(f"role: expected one of {ROLES}, got {role!r}")
    if isinstance(x, ScaledTensor):
        raise TypeError("x: already a ScaledTensor; use breccia.requantize(x, recipe) to change its recipe")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"x: expected a floating-point tensor (float32, bfloat16, float16 or float64), got {x.dtype}"
        )
    if x.dim() == 0:
        raise ValueError("x: expected at least one dimension, got a 0-d tensor")
    spec = recipe.spec(role)
    amax = _given_amax(recipe, amax_history, amax)
    noise = rounding_noise(x.shape, x.device, generator) if spec.stochastic else None
    qdata, scale, gs, zp = quantize_op(x, spec.to_key(), amax, noise, block_amax)
    return _scaled_tensor(qdata, scale, gs, zp, recipe, role, tuple(x.shape), x.dtype)


def _given_amax(recipe: Recipe, amax_history: Optional[torch.Tensor], amax: Optional[torch.Tensor]):
    """The amax a cast is given: ``amax``, or DelayedScaling's from its history
    (one of the two), or ``None`` (the cast reduces its own)."""
    if amax_history is None:
        return amax
    if not isinstance(recipe, DelayedScaling):
        raise ValueError(f"amax_history: only DelayedScaling takes one, not {recipe.name}")
    if amax is not None:
        raise ValueError("amax: give either amax_history or amax, not both")
    return recipe.history_amax(amax_history)


def _scaled_tensor(qdata, scale, gs, zp, recipe: Recipe, role: str, shape: tuple, in_dtype) -> ScaledTensor:
    """The ScaledTensor of a quantizer's outputs for an input of ``shape`` and
    ``in_dtype`` (float64 input reports float32: no kernel produces float64)."""
    spec = recipe.spec(role)
    return ScaledTensor(
        qdata,
        scale,
        global_scale=gs if spec.has_global_scale else None,
        zero_point=zp if spec.has_zero_point else None,
        recipe=recipe,
        role=role,
        block=block_for(spec.block, len(shape)),
        shape=shape,
        orig_dtype=torch.float32 if in_dtype == torch.float64 else in_dtype,
    )


def cast_with_transpose(
    x: torch.Tensor,
    recipe: Recipe,
    role: str,
    *,
    amax_history: Optional[torch.Tensor] = None,
    amax: Optional[torch.Tensor] = None,
) -> tuple[ScaledTensor, ScaledTensor]:
    """``(cast(x, recipe, role), cast(x.T, recipe, role))`` for a 2-D ``x``:
    the rowwise copy and the columnwise one (blocks along M) that a
    grad-weight GEMM wants. On CUDA one cast pass reads ``x`` for both where
    the recipe's FP8 blocks are tensorwise or (1, B) (Float8CurrentScaling,
    DelayedScaling, Float8BlockScaling's activations, MXFP8BlockScaling);
    the same bits as two casts everywhere. ``amax_history`` / ``amax``: as
    in :func:`cast` (a tensorwise recipe's amax; one of the two)."""
    _check_recipe(recipe)
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"x: expected a 2-D float tensor, got {getattr(x, 'shape', type(x).__name__)}")
    spec = recipe.spec(role)  # (raises for an unknown role)
    if not rowcol_spec(spec):
        raise ValueError(f"recipe: {recipe.name} blocks {spec.block} are neither tensorwise nor (1, B) FP8 blocks")
    if amax is not None and (not spec.tensorwise or not isinstance(amax, torch.Tensor) or amax.numel() != 1):
        raise ValueError(f"amax: expected a one-element tensor for a tensorwise recipe; got "
                         f"{getattr(amax, 'shape', type(amax).__name__)} for blocks {spec.block}")
    amax = _given_amax(recipe, amax_history, amax)
    q, s, qt, st = quantize_rowcol_op(x, spec.to_key(), amax)
    rows = _scaled_tensor(q, s, None, None, recipe, role, tuple(x.shape), x.dtype)
    return rows, _scaled_tensor(qt, st, None, None, recipe, role, tuple(x.shape[::-1]), x.dtype)


def rowcol_spec(spec) -> bool:
    """Whether :func:`cast_with_transpose` takes ``spec``: an 8-bit element,
    deterministic rounding, tensorwise or (1, B) blocks."""
    b = tuple(spec.block)
    if spec.fmt.bits != 8 or spec.stochastic:
        return False
    return spec.tensorwise or (len(b) == 2 and b[0] == 1 and b[1] >= 1)


def dequantize(st: ScaledTensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The high-precision values of ``st`` (``dtype`` defaults to its original
    dtype)."""
    if not isinstance(st, ScaledTensor):
        raise TypeError(f"st: expected a ScaledTensor, got {type(st).__name__}")
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise TypeError(f"dtype: expected a floating-point torch.dtype, got {dtype!r}")
    if st.qlayout is not Plain:
        from .layouts import relayout

        st = relayout(st, Plain)
    if st.qdata.dtype in _FP8_DTYPES and st.scale.dtype == torch.float32 and all(b in (1, WHOLE) for b in st.block):
        # tensorwise / rowwise FP8: the scale grid broadcasts against the
        # payload as it is, so decoding is a cast and a multiply in plain torch
        # ops (the reference's, the same bits eager and compiled), and under
        # torch.compile Inductor fuses it into the consumer, e.g. the
        # transposed copy of training's grad-input weight
        return (st.qdata.to(torch.float32) * st.scale).to(dtype or st.orig_dtype)
    return dequantize_op(
        st.qdata,
        st.scale,
        st.global_scale,
        st.zero_point,
        st.spec_key,
        list(st.block),
        list(st.shape),
        dtype or st.orig_dtype,
    )


def requantize(st: ScaledTensor, recipe: Recipe, role: Optional[str] = None) -> ScaledTensor:
    """``st`` re-expressed in another recipe (or role): dequantize in float32,
    then cast. The result keeps ``st``'s original dtype."""
    if not isinstance(st, ScaledTensor):
        raise TypeError(f"st: expected a ScaledTensor, got {type(st).__name__}")
    _check_recipe(recipe)
    out = cast(dequantize(st, torch.float32), recipe, role or st.role)
    return out.with_inner(orig_dtype=st.orig_dtype)
