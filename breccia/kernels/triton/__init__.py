"""Triton kernels (optional: they need the ``triton`` package).

:func:`cuda_quantize` is ``breccia::quantize``'s CUDA route: the Triton
quantizer where it takes the spec, ``None`` (use the reference) elsewhere;
:func:`cuda_quantize_rowcol` likewise for ``breccia::quantize_rowcol``.
"""

from __future__ import annotations

from typing import Optional

import torch

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover - triton is an optional dependency
    HAS_TRITON = False

__all__ = ["HAS_TRITON", "cuda_quantize", "cuda_quantize_rowcol"]


def cuda_quantize(
    x: torch.Tensor,
    spec,
    amax: Optional[torch.Tensor] = None,
    noise: Optional[torch.Tensor] = None,
    block_amax: Optional[torch.Tensor] = None,
) -> Optional[tuple]:
    """``(qdata, scale, global_scale, zero_point)`` from the Triton kernels for
    a CUDA ``x`` (empty tensors where the spec has none), or ``None`` where
    the kernels do not take ``x`` / ``spec``."""
    if not (HAS_TRITON and x.is_cuda):
        return None
    from .quantize import quantize_tuple, supports

    if not supports(x, spec, amax, noise, block_amax):
        return None
    return quantize_tuple(x, spec, amax, noise, block_amax)


def cuda_quantize_rowcol(x: torch.Tensor, spec, amax: Optional[torch.Tensor] = None) -> Optional[tuple]:
    """``(qdata, scale, qdata_t, scale_t)`` of ``x`` and of ``x.T`` from one
    Triton cast pass over a CUDA ``x``, or ``None`` where the kernels do not
    take ``x`` / ``spec``."""
    if not (HAS_TRITON and x.is_cuda):
        return None
    from .quantize import quantize_rowwise_and_columnwise, supports_rowcol

    if not supports_rowcol(x, spec, amax):
        return None
    rows, cols = quantize_rowwise_and_columnwise(x, spec, amax)
    return rows.qdata, rows.scale, cols.qdata, cols.scale
