"""Low-precision training: every GEMM of a linear layer scaled, in one
autograd function.

Forward ``y = x W^T``, grad-input ``dx = dy W`` and grad-weight ``dW = dy^T x``
each quantize their operands by the recipe's roles (``"input"`` for x,
``"weight"`` for W, ``"grad_output"`` for dy) with blocks along that GEMM's
reduction dim, and go through the kernel router. The activation is saved for
backward in low precision (its columnwise copy, for recipes whose blocks are
not tensorwise): that is the memory win. Weight-only recipes (INT4) train
with fake-quantized weights and a straight-through gradient.

``DelayedScaling`` keeps its state in per-module amax-history buffers
(:class:`AmaxHistory`): each cast takes its scale from the history, then the
current amax is pushed in (newest at index 0).
"""

from __future__ import annotations

from typing import Optional

import torch

from .api import cast, cast_with_transpose, dequantize, rowcol_spec
from .recipes import WHOLE, DelayedScaling, Recipe
from .tensor import ScaledTensor

__all__ = ["scaled_linear", "AmaxHistory", "cast_ste", "cast_ste_clipped"]


class AmaxHistory(torch.nn.Module):
    """The DelayedScaling state of one linear layer: an amax history (newest
    first) per GEMM role, as buffers (so they live in ``state_dict``)."""

    def __init__(self, length: int, device=None):
        super().__init__()
        for role in ("input", "weight", "grad_output"):
            self.register_buffer(role, torch.zeros(length, dtype=torch.float32, device=device))

    def get(self, role: str) -> torch.Tensor:
        return getattr(self, role)


def _push_amax(history: torch.Tensor, t: torch.Tensor) -> None:
    """Record ``t``'s amax as the newest entry (no host sync)."""
    with torch.no_grad():
        amax = t.detach().abs().amax().to(torch.float32)
        history.copy_(torch.cat([amax.reshape(1), history[:-1]]))


def _tensorwise(recipe: Recipe, role: str) -> bool:
    return recipe.spec(role).tensorwise


def _square_block(recipe: Recipe, role: str) -> bool:
    b = recipe.spec(role).block
    return len(b) == 2 and b[0] == b[1] and b[0] != WHOLE


def _cast_columnwise(t: torch.Tensor, recipe: Recipe, role: str) -> ScaledTensor:
    """2-D ``t`` (R, C) quantized with its blocks along dim 0: the cast of
    ``t.T``, transposed back (a view). The transpose is made contiguous here,
    in traced code, so that under torch.compile Inductor writes it (fused
    with ``t``'s producer where it can) rather than the quantizer copying a
    strided input."""
    return cast(t.t().contiguous(), recipe, role).t()


def _cast_both(t: torch.Tensor, recipe: Recipe, role: str, history: Optional[torch.Tensor] = None):
    """``t`` quantized along dim 1 (rowwise) and along dim 0 (the
    grad-weight copy, a transposed view of a (C, R) payload: the layout the
    backward GEMM wants): one cast pass for tensorwise and (1, B) FP8
    recipes, else two casts."""
    if rowcol_spec(recipe.spec(role)):
        # (a tensorwise amax stays inside the op, the kernel's own pass: as a
        # torch reduction, Inductor recomputed the GELU for it rather than
        # fusing it into the GELU's kernel; training-h200.md)
        q, qt = cast_with_transpose(t, recipe, role, amax_history=history)
        return q, qt.t()
    return cast(t, recipe, role, amax_history=history), _cast_columnwise(t, recipe, role)


class _ScaledLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, recipe, hist_x, hist_w, hist_g):
        x2 = x.reshape(-1, x.shape[-1])
        delayed = hist_x is not None
        # a tensor-parallel input arrives quantized (all-gathered as payload + scales)
        x_given = isinstance(x2, ScaledTensor)
        if x_given:
            xq = x2
            # grad-weight reduces over tokens: x quantized along M (the
            # tensorwise cast already serves both directions)
            x_wgrad = xq if _tensorwise(recipe, "input") else _cast_columnwise(dequantize(x2), recipe, "input")
        else:
            xq, x_wgrad = _cast_both(x2, recipe, "input", hist_x)
        # under FSDP2 the weight arrives already quantized (the all-gather
        # moved payload and scales: breccia.distributed.fsdp)
        gathered = isinstance(weight, ScaledTensor)
        w_dgrad = None
        if gathered:
            wq = weight
        elif _tensorwise(recipe, "weight"):
            # the grad-input GEMM wants W (N, K) column-major: written by the same cast pass
            wq, w_dgrad = _cast_both(weight, recipe, "weight", hist_w)
        else:
            wq = cast(weight, recipe, "weight", amax_history=hist_w)
        # torch ops on ScaledTensors: the op table routes them (and traced
        # code reaches the same route through the dispatcher)
        y = torch.addmm(bias, xq, wq.t()) if bias is not None else torch.mm(xq, wq.t())
        # grad-input reduces over N: tensorwise and square blocks serve both
        # directions; otherwise backward requantizes wq along N. (Always from
        # wq, never from the high-precision weight: under FSDP2 only wq exists,
        # and sharded and single-device training must compute the same thing.)
        w_dgrad_ready = _tensorwise(recipe, "weight") or _square_block(recipe, "weight")
        if w_dgrad is None:
            w_dgrad = wq
        if delayed and not x_given:
            _push_amax(hist_x, x2)
            if not gathered:  # (FSDP2 pushed each rank's amax before the all-gather)
                _push_amax(hist_w, weight)
        ctx.recipe = recipe
        ctx.x_shape = x.shape
        ctx.has_bias = bias is not None
        ctx.hist_g = hist_g
        ctx.w_dgrad_ready = w_dgrad_ready
        ctx.weight_dtype = weight.dtype
        ctx.save_for_backward(x_wgrad, w_dgrad)
        return y.reshape(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        recipe = ctx.recipe
        x_wgrad, wq = ctx.saved_tensors  # (wq: the weight's grad-input copy where the forward made one)
        g = grad_out.reshape(-1, grad_out.shape[-1])
        hist_g = ctx.hist_g
        grad_x = grad_w = grad_b = None
        # dy is quantized along N for grad-input and along M for grad-weight
        if ctx.needs_input_grad[1]:
            gq, g_wgrad = _cast_both(g, recipe, "grad_output", hist_g)
        else:
            gq = cast(g, recipe, "grad_output", amax_history=hist_g)
        if ctx.needs_input_grad[0]:
            w_dgrad = wq if ctx.w_dgrad_ready else _cast_columnwise(dequantize(wq), recipe, "weight")
            grad_x = torch.mm(gq, w_dgrad).reshape(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            # (M, N) along M, transposed: the (N, M) operand blocked along M
            grad_w = torch.mm(g_wgrad.t().to(ctx.weight_dtype), x_wgrad)  # accumulate in the weight's dtype
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0).to(grad_out.dtype)
        if hist_g is not None:
            _push_amax(hist_g, g)
        return grad_x, grad_w, grad_b, None, None, None, None


class _FakeQuantLinear(torch.autograd.Function):
    """Weight-only recipes: forward with the dequantized weight, gradients
    straight through to the high-precision weight."""

    @staticmethod
    def forward(ctx, x, weight, bias, recipe):
        wq = weight if isinstance(weight, ScaledTensor) else cast(weight, recipe, "weight")  # (FSDP2: gathered)
        w_hat = dequantize(wq, x.dtype)
        ctx.save_for_backward(x, w_hat)
        ctx.has_bias = bias is not None
        return torch.nn.functional.linear(x, w_hat, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, w_hat = ctx.saved_tensors
        g = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = (grad_out @ w_hat) if ctx.needs_input_grad[0] else None
        grad_w = (g.t() @ x.reshape(-1, x.shape[-1])).to(w_hat.dtype) if ctx.needs_input_grad[1] else None
        grad_b = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None


def scaled_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    recipe: Recipe,
    history: Optional[AmaxHistory] = None,
) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` with every GEMM (forward and both
    gradients) scaled by ``recipe``. ``history``: the DelayedScaling state."""
    if recipe.weight_only:
        return _FakeQuantLinear.apply(x, weight, bias, recipe)
    if isinstance(recipe, DelayedScaling):
        if history is None:
            raise ValueError("history: DelayedScaling needs the layer's AmaxHistory")
        hx, hw, hg = history.get("input"), history.get("weight"), history.get("grad_output")
    else:
        hx = hw = hg = None
    return _ScaledLinear.apply(x, weight, bias, recipe, hx, hw, hg)


# --------------------------------------------------------------------------- STE


def cast_ste(x: torch.Tensor, recipe: Recipe, role: str = "weight") -> torch.Tensor:
    """Quantization-aware training: forward ``dequantize(cast(x))``, backward
    the identity (straight-through estimator)."""
    fq = dequantize(cast(x.detach(), recipe, role), x.dtype)
    return x + (fq - x).detach()


def cast_ste_clipped(
    x: torch.Tensor, recipe: Recipe, clip_min: float, clip_max: float, role: str = "weight"
) -> torch.Tensor:
    """Like :func:`cast_ste` on ``x`` clipped to ``[clip_min, clip_max]``; the
    gradient is zero outside the clip range."""
    if not clip_min < clip_max:
        raise ValueError(f"clip_min, clip_max: expected clip_min < clip_max, got {clip_min} and {clip_max}")
    return cast_ste(torch.clamp(x, clip_min, clip_max), recipe, role)
