"""breccia's operations as ``torch.library`` custom ops.

Registering them (with fake implementations that only compute shapes) lets
``torch.compile`` trace ``cast`` and ``dequantize`` with no graph break, and
keeps their bits identical to eager: Inductor treats each op as one opaque
call. The kernel router (``breccia.kernels``) decides which implementation
runs; on any device the reference in :mod:`breccia.quantize` is correct.

Every breccia custom op (these and the GEMM routes' ops) is declared with
:func:`custom_op`: in plain eager mode a call runs the op's Python body
directly, without the dispatcher's per-call cost; under tracing it is the op.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import torch

from .quantize import block_for, dequantize_reference, payload_shape, quantize_reference, scale_grid_shape
from .recipes import QuantSpec

__all__ = ["quantize_op", "quantize_rowcol_op", "dequantize_op", "custom_op", "plain_eager"]


def plain_eager(args: Sequence[Any]) -> bool:
    """Whether a call on ``args`` runs plain eager: not under ``torch.compile``,
    no dispatch mode (fake tensors, tracing), no functorch transform, every
    tensor a plain ``torch.Tensor`` (no subclass: fake, functional, DTensor)
    and none that autograd would record."""
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack():
        return False
    if torch._C._are_functorch_transforms_active():
        return False
    grad = torch.is_grad_enabled()
    return all(
        type(a) is torch.Tensor and not (grad and a.requires_grad) for a in args if isinstance(a, torch.Tensor)
    )


class _EagerOp:
    """A custom op whose calls skip the dispatcher when :func:`plain_eager`
    (the dispatcher's custom-op layer costs tens of microseconds of host time
    a call, as long as a small kernel); anywhere else the op itself is
    called, so tracers see it. ``op`` is the ``torch.library`` op."""

    def __init__(self, op, fn: Callable) -> None:
        self.op = op
        self._fn = fn
        functools.update_wrapper(self, fn)

    def __call__(self, *args):
        if plain_eager(args):
            return self._fn(*args)
        return self.op(*args)

    def register_fake(self, fn: Callable) -> Callable:
        return self.op.register_fake(fn)


def custom_op(name: str) -> Callable[[Callable], _EagerOp]:
    """``torch.library.custom_op(name, mutates_args=())`` (a functional op),
    called positionally, that runs its Python body directly in plain eager
    mode (:class:`_EagerOp`)."""

    def wrap(fn: Callable) -> _EagerOp:
        return _EagerOp(torch.library.custom_op(name, mutates_args=())(fn), fn)

    return wrap


def _empty(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(0, dtype=dtype, device=x.device)


@custom_op("breccia::quantize")
def quantize_op(
    x: torch.Tensor,
    spec: str,
    amax: Optional[torch.Tensor] = None,
    noise: Optional[torch.Tensor] = None,
    block_amax: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize ``x`` by ``spec`` (a :meth:`QuantSpec.to_key` string).

    Returns ``(qdata, scale, global_scale, zero_point)``; the last two are
    empty tensors where the spec has none."""
    s = QuantSpec.from_key(spec)
    if x.is_cuda:  # Triton kernels, bit-identical to the reference, where they take the spec
        from .kernels.triton import cuda_quantize

        out = cuda_quantize(x, s, amax, noise, block_amax)
        if out is not None:
            return out
    q = quantize_reference(x, s, amax=amax, noise=noise, block_amax=block_amax)
    gs = q.global_scale if q.global_scale is not None else _empty(x, torch.float32)
    zp = q.zero_point if q.zero_point is not None else _empty(x, torch.uint8)
    return q.qdata, q.scale, gs, zp


@quantize_op.register_fake
def _(x, spec, amax=None, noise=None, block_amax=None):
    s = QuantSpec.from_key(spec)
    shape = tuple(x.shape)
    grid = scale_grid_shape(shape, block_for(s.block, len(shape)))
    qdata = x.new_empty(payload_shape(shape, s.fmt), dtype=s.fmt.storage)
    scale = x.new_empty(grid, dtype=s.scale_torch_dtype)
    gs = x.new_empty((), dtype=torch.float32) if s.has_global_scale else _empty(x, torch.float32)
    zp = x.new_empty(grid, dtype=torch.uint8) if s.has_zero_point else _empty(x, torch.uint8)
    return qdata, scale, gs, zp


@custom_op("breccia::quantize_rowcol")
def quantize_rowcol_op(
    x: torch.Tensor, spec: str, amax: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """2-D ``x`` quantized by ``spec`` twice, as ``x`` and as ``x.T`` (blocks
    along each one's last dim): ``(qdata, scale, qdata_t, scale_t)``. The
    backward GEMMs of training want both; on CUDA one Triton cast pass reads
    ``x`` for the two (FP8 tensorwise and (1, B) blocks, MXFP8), bit-identical
    to two reference casts. ``amax``: a tensorwise spec's precomputed amax."""
    s = QuantSpec.from_key(spec)
    if x.is_cuda:
        from .kernels.triton import cuda_quantize_rowcol

        out = cuda_quantize_rowcol(x, s, amax)
        if out is not None:
            return out
    rows = quantize_reference(x, s, amax=amax)
    if s.tensorwise:  # one scale: the transposed payload is the same codes
        return rows.qdata, rows.scale, rows.qdata.t().contiguous(), rows.scale.clone()
    cols = quantize_reference(x.t(), s, amax=amax)
    return rows.qdata, rows.scale, cols.qdata.contiguous(), cols.scale.contiguous()


@quantize_rowcol_op.register_fake
def _(x, spec, amax=None):
    s = QuantSpec.from_key(spec)
    out = []
    for shape in (tuple(x.shape), tuple(x.shape[::-1])):
        out.append(x.new_empty(payload_shape(shape, s.fmt), dtype=s.fmt.storage))
        out.append(x.new_empty(scale_grid_shape(shape, block_for(s.block, 2)), dtype=s.scale_torch_dtype))
    return tuple(out)


@custom_op("breccia::dequantize")
def dequantize_op(
    qdata: torch.Tensor,
    scale: torch.Tensor,
    global_scale: Optional[torch.Tensor],
    zero_point: Optional[torch.Tensor],
    spec: str,
    block: Sequence[int],
    shape: Sequence[int],
    dtype: torch.dtype,
) -> torch.Tensor:
    """``decode(qdata) * scale`` as a tensor of logical ``shape`` and ``dtype``."""
    out = dequantize_reference(qdata, scale, global_scale, zero_point, QuantSpec.from_key(spec), block, shape, dtype)
    return out.contiguous()  # transposed payloads decode strided: match the fake's layout


@dequantize_op.register_fake
def _(qdata, scale, global_scale, zero_point, spec, block, shape, dtype):
    return qdata.new_empty(tuple(shape), dtype=dtype)
