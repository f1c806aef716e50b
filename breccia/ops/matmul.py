"""The matmul family: every product goes to the kernel router."""

from __future__ import annotations

import torch

from .. import kernels
from ..kernels import scaled_mm
from ..tensor import ScaledTensor
from . import implements

aten = torch.ops.aten


@implements(aten.mm.default)
def mm(func, args, kwargs):
    return scaled_mm(args[0], args[1], op="mm")


@implements(aten.addmm.default)
def addmm(func, args, kwargs):
    bias, a, b = args[:3]
    beta = kwargs.get("beta", args[3] if len(args) > 3 else 1)
    alpha = kwargs.get("alpha", args[4] if len(args) > 4 else 1)
    if beta == 1 and alpha == 1 and bias.dim() == 1:
        return scaled_mm(a, b, bias, op="addmm")
    out = scaled_mm(a, b, op="addmm")
    if isinstance(bias, ScaledTensor):
        from ..api import dequantize

        bias = dequantize(bias)
    return (alpha * out.float() + beta * bias.float()).to(out.dtype)


@implements(aten.bmm.default)
def bmm(func, args, kwargs):
    a, b = args[:2]
    if a.dim() != 3 or b.dim() != 3 or a.shape[0] != b.shape[0]:
        raise ValueError(f"bmm: expected 3-D operands with equal batch, got {tuple(a.shape)} and {tuple(b.shape)}")
    return torch.stack([scaled_mm(a[i], b[i], op="bmm") for i in range(a.shape[0])])


@implements(aten.linear.default)
def linear(func, args, kwargs):
    x, w = args[:2]
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    lead = x.shape[:-1]
    out = scaled_mm(x.reshape(-1, x.shape[-1]), w.t(), bias, op="linear")
    return out.reshape(*lead, out.shape[-1])


@implements(aten.matmul.default)
def matmul(func, args, kwargs):
    a, b = args[:2]
    if a.dim() >= 2 and b.dim() == 2:
        return kernels.matmul(a, b)
    if a.dim() == 3 and b.dim() == 3:
        return bmm(aten.bmm.default, (a, b), {})
    from .fallback import fallback

    return fallback(func, args, kwargs)
