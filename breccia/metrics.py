"""Accuracy metrics and built-in test weights for the demo and the benchmarks.

Metrics run in float64 so that the error of an 8-bit format is not drowned in
the error of the metric itself. A :class:`~breccia.ScaledTensor` may be passed
as ``approx``: it is dequantized first.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch

__all__ = ["sqnr_db", "cosine", "builtin_weight", "WEIGHT_KINDS", "WEIGHT_STD"]

#: the kinds :func:`builtin_weight` generates
WEIGHT_KINDS = ("gaussian", "student_t")
#: standard deviation of the built-in weights (a typical transformer init)
WEIGHT_STD = 0.02
_STUDENT_T_DF = 3


def _as_float64(t: torch.Tensor, name: str) -> torch.Tensor:
    from .tensor import ScaledTensor

    if isinstance(t, ScaledTensor):
        from .api import dequantize

        t = dequantize(t, torch.float32)
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.is_complex():
        raise TypeError(f"{name}: expected a real tensor, got {t.dtype}")
    return t.detach().to(torch.float64)


def _pair(ref: torch.Tensor, approx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r = _as_float64(ref, "ref")
    a = _as_float64(approx, "approx")
    if r.shape != a.shape:
        raise ValueError(f"approx: expected the shape of ref {tuple(r.shape)}, got {tuple(a.shape)}")
    return r, a.to(r.device)


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(||ref||^2 / ||ref - approx||^2)``
    in dB, computed in float64.

    ``inf`` when ``approx`` equals ``ref`` exactly (including two all-zero
    tensors); ``-inf`` when ``ref`` is zero and ``approx`` is not; ``nan`` when
    either holds a NaN."""
    r, a = _pair(ref, approx)
    signal = float(r.square().sum())
    noise = float((r - a).square().sum())
    if math.isnan(signal) or math.isnan(noise):
        return math.nan
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def cosine(ref: torch.Tensor, approx: torch.Tensor) -> float:
    """Cosine similarity of the flattened tensors, in float64.

    ``nan`` when either tensor is all zeros (the angle is undefined) or holds
    a NaN."""
    r, a = _pair(ref, approx)
    r, a = r.reshape(-1), a.reshape(-1)
    nr, na = float(r.norm()), float(a.norm())
    if nr == 0.0 or na == 0.0:
        return math.nan
    # clamp: rounding can push |cos| a hair past 1 for near-identical inputs
    return max(-1.0, min(1.0, float(r @ a) / (nr * na)))


def builtin_weight(
    shape: Sequence[int] = (2048, 2048),
    kind: str = "gaussian",
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
    device: Optional[Union[torch.device, str]] = None,
) -> torch.Tensor:
    """A deterministic synthetic weight with standard deviation about 0.02.

    ``kind="gaussian"``: i.i.d. normal. ``kind="student_t"``: Student-t with 3
    degrees of freedom (``z / sqrt(chi2_3 / 3)``), scaled to the same standard
    deviation -- heavy tails, as in real LLM weights with outliers. The values
    are drawn on the CPU from a ``torch.Generator`` seeded with ``seed``, so
    they are identical on every machine and device, then moved to ``device``."""
    if kind not in WEIGHT_KINDS:
        raise ValueError(f"kind: expected one of {WEIGHT_KINDS}, got {kind!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {seed!r}")
    shape = tuple(shape)
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise ValueError(f"shape: expected a tuple of non-negative ints, got {shape!r}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype: expected a floating-point torch.dtype, got {dtype!r}")

    g = torch.Generator(device="cpu").manual_seed(seed)
    z = torch.randn(shape, generator=g, dtype=torch.float32)
    if kind == "gaussian":
        w = z * WEIGHT_STD
    else:
        df = _STUDENT_T_DF
        # chi2_df as a sum of df squared normals: torch.distributions.Chi2 takes
        # no generator, so it could not be made deterministic.
        chi2 = torch.randn((df,) + shape, generator=g, dtype=torch.float32).square().sum(0)
        chi2 = torch.clamp(chi2, min=torch.finfo(torch.float32).tiny)
        t = z / torch.sqrt(chi2 / df)
        w = t * (WEIGHT_STD / math.sqrt(df / (df - 2)))  # Var(t_df) = df / (df - 2)
    return w.to(dtype=dtype, device=device)
