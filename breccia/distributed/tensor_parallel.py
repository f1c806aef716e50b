"""Tensor parallelism for converted linear layers, with low-precision
activation all-gathers.

``ColwiseParallel`` shards a layer's output features, ``RowwiseParallel`` its
input features (``torch.distributed.tensor.parallel``'s styles, for layers
converted with ``breccia.convert``: in training mode the high-precision
weight is sharded; in inference mode the ScaledTensor weight, whose local
shard is a ScaledTensor). Each rank runs the
layer's scaled GEMMs on its shard. With sequence parallelism
(``ColwiseParallel(input_layouts=Shard(1))``) the input all-gather moves the
quantized payload and its scales -- a quarter of the bf16 bytes for FP8 --
and the backward reduce-scatters the input gradient (in high precision: a
sum cannot be taken in FP8 without loss).

Quantization happens on each rank's shard: row-wise and block scales cover
the shard's rows or columns, so a TP model's numerics match the
single-process model within quantization error, not bit for bit (tensorwise
and row-block scales of a column-sharded weight are exact; a row-sharded
weight's per-row scales cover only its columns).
"""

from __future__ import annotations

import types
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DeviceMesh, DTensor, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ParallelStyle

from ..api import cast
from ..recipes import WHOLE
from ..tensor import ScaledTensor
from ..training import scaled_linear
from .fsdp import all_gather

__all__ = ["ColwiseParallel", "RowwiseParallel", "PrepareModuleInput", "all_gather_quantized"]


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.element_size() == 1 and t.dtype != torch.uint8 else t


def _gather_dim(t: torch.Tensor, dim: int, group) -> torch.Tensor:
    """All-gather ``t`` along ``dim`` (fp8 and e8m0 travel as bytes)."""
    world = dist.get_world_size(group)
    src = _as_bytes(t.movedim(dim, 0).contiguous())
    out = src.new_empty((world * src.shape[0],) + tuple(src.shape[1:]))
    all_gather(out, src, group=group)
    return out.view(t.dtype).movedim(0, dim)


class _AllGatherQuantized(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, recipe, dim, group):
        ctx.dim, ctx.group = dim, group
        spec = recipe.spec("input")
        amax = None
        if spec.tensorwise or spec.has_global_scale:
            amax = x.detach().abs().amax().float()  # every rank casts with the same tensor scale
            dist.all_reduce(amax, op=dist.ReduceOp.MAX, group=group)
        xq = cast(x, recipe, "input", amax=amax)
        if spec.fmt.packed and dim == x.dim() - 1:
            raise ValueError("dim: 4-bit payloads cannot be gathered along their packed dim")
        inner = {"qdata": _gather_dim(xq.qdata, dim, group)}
        if not all(b == WHOLE for b in xq.block):
            inner["scale"] = _gather_dim(xq.scale, dim, group)
            if xq.zero_point is not None:
                inner["zero_point"] = _gather_dim(xq.zero_point, dim, group)
        shape = list(x.shape)
        shape[dim] *= dist.get_world_size(group)
        return xq.with_inner(shape=tuple(shape), **inner)

    @staticmethod
    def backward(ctx, grad):
        world = dist.get_world_size(ctx.group)
        g = grad.movedim(ctx.dim, 0).contiguous()
        out = g.new_empty((g.shape[0] // world,) + tuple(g.shape[1:]))
        dist.reduce_scatter_tensor(out, g, op=dist.ReduceOp.SUM, group=ctx.group)
        return out.movedim(0, ctx.dim), None, None, None


def all_gather_quantized(x: torch.Tensor, recipe, dim: int, group=None) -> ScaledTensor:
    """``x`` quantized by ``recipe``'s input role and all-gathered along
    ``dim`` as payload plus scales; the backward reduce-scatters the gradient."""
    return _AllGatherQuantized.apply(x, recipe, dim % x.dim(), group)


class _CopyToRanks(torch.autograd.Function):
    """A replicated input: identity forward; its gradient, partial on each
    rank (each holds some output features), is summed across ranks."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _SumAcrossRanks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, group):
        y = y.clone()
        dist.all_reduce(y, group=group)
        return y

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _ReduceScatter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, dim, group):
        ctx.dim, ctx.group = dim, group
        world = dist.get_world_size(group)
        t = y.movedim(dim, 0).contiguous()
        out = t.new_empty((t.shape[0] // world,) + tuple(t.shape[1:]))
        dist.reduce_scatter_tensor(out, t, op=dist.ReduceOp.SUM, group=group)
        return out.movedim(0, dim)

    @staticmethod
    def backward(ctx, grad):
        return _gather_dim(grad, ctx.dim, ctx.group), None, None


def _recipe_of(module: nn.Module):
    recipe = getattr(module, "_breccia_recipe", None)
    if recipe is None:
        raise ValueError(f"module: expected an nn.Linear converted with breccia.convert, got {module}")
    return recipe


def _local(t: Optional[torch.Tensor]):
    return t.to_local() if isinstance(t, DTensor) else t


def _shard_param(module: nn.Module, name: str, mesh: DeviceMesh, placement) -> None:
    p = getattr(module, name)
    if p is None:
        return
    if isinstance(p.data, ScaledTensor):
        # an inference weight: every rank holds the whole ScaledTensor; keep
        # this rank's slice (payload and scales together, on block boundaries)
        data = p.data
        if isinstance(placement, Shard):
            world, rank = mesh.size(), mesh.get_local_rank()
            size = data.shape[placement.dim]
            step = -(-size // world)
            data = data.narrow(placement.dim, min(rank * step, size), max(min(step, size - rank * step), 0))
            if not isinstance(data, ScaledTensor):
                raise ValueError(
                    f"{name}: its {tuple(p.shape)} blocks {p.data.block} do not split into {world} whole-block shards"
                )
        dt = DTensor.from_local(data, mesh, [placement], run_check=False, shape=p.shape, stride=p.stride())
    else:
        dt = distribute_tensor(p.data, mesh, [placement])
    module.register_parameter(name, nn.Parameter(dt, p.requires_grad))


def _linear(module: nn.Module, x, weight, bias, recipe):
    """The layer's local product: scaled training GEMMs, or (inference) the
    op table's route for a ScaledTensor weight."""
    if getattr(module, "_breccia_mode", None) == "training":
        return scaled_linear(x, weight, bias, recipe, getattr(module, "breccia_amax", None))
    return torch.nn.functional.linear(x, weight, bias)


class ColwiseParallel(ParallelStyle):
    """Shard a converted linear layer's output features (weight rows).

    ``input_layouts``: ``Replicate()`` (default) or ``Shard(1)`` (sequence
    parallel: the input is all-gathered along the sequence in low precision).
    The output is each rank's slice of the features (``Shard(-1)``)."""

    def __init__(self, *, input_layouts=None, use_local_output: bool = True):
        super().__init__()
        self.input_layout = input_layouts or Replicate()
        if not isinstance(self.input_layout, (Replicate, Shard)):
            raise ValueError(f"input_layouts: expected Replicate() or Shard(dim), got {input_layouts!r}")
        self.use_local_output = use_local_output

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        recipe = _recipe_of(module)
        _shard_param(module, "weight", device_mesh, Shard(0))
        _shard_param(module, "bias", device_mesh, Shard(0))
        group = device_mesh.get_group()
        seq = self.input_layout.dim if isinstance(self.input_layout, Shard) else None
        local_out = self.use_local_output

        def forward(self_, x):
            if isinstance(x, DTensor):
                x = x.to_local()
            if seq is not None:
                x = all_gather_quantized(x, recipe, seq, group)
            elif not isinstance(x, ScaledTensor):
                # a replicated input: its partial gradients are summed here. (A
                # ScaledTensor input was gathered by PrepareModuleInput, whose
                # backward reduce-scatters them instead.)
                x = _CopyToRanks.apply(x, group)
            y = _linear(self_, x, _local(self_.weight), _local(self_.bias), recipe)
            return y if local_out else DTensor.from_local(y, device_mesh, [Shard(y.dim() - 1)])

        module.forward = types.MethodType(forward, module)
        return module


class RowwiseParallel(ParallelStyle):
    """Shard a converted linear layer's input features (weight columns).

    The input is each rank's slice of the features (``Shard(-1)``, what a
    ``ColwiseParallel`` layer produces). Partial outputs are summed across
    ranks (``output_layouts=Replicate()``, default) or reduce-scattered along
    the sequence (``Shard(1)``: sequence parallel)."""

    def __init__(self, *, output_layouts=None, use_local_output: bool = True):
        super().__init__()
        self.output_layout = output_layouts or Replicate()
        if not isinstance(self.output_layout, (Replicate, Shard)):
            raise ValueError(f"output_layouts: expected Replicate() or Shard(dim), got {output_layouts!r}")
        self.use_local_output = use_local_output

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        recipe = _recipe_of(module)
        _shard_param(module, "weight", device_mesh, Shard(1))
        _shard_param(module, "bias", device_mesh, Replicate())
        group = device_mesh.get_group()
        seq = self.output_layout.dim if isinstance(self.output_layout, Shard) else None
        local_out = self.use_local_output

        def forward(self_, x):
            if isinstance(x, DTensor):
                x = x.to_local()
            y = _linear(self_, x, _local(self_.weight), None, recipe)
            y = _SumAcrossRanks.apply(y, group) if seq is None else _ReduceScatter.apply(y, seq, group)
            if self_.bias is not None:
                y = y + _local(self_.bias)
            if local_out:
                return y
            return DTensor.from_local(y, device_mesh, [Replicate() if seq is None else Shard(seq)])

        module.forward = types.MethodType(forward, module)
        return module


class PrepareModuleInput(ParallelStyle):
    """Gather a module's sequence-sharded inputs once, in low precision, for
    the column-parallel layers inside it (e.g. an attention block's q, k, v).

    ``input_layouts`` / ``desired_input_layouts``: one entry per positional
    input (``None`` leaves it alone); ``Shard(d)`` -> ``Replicate()``
    all-gathers that input along ``d`` as payload plus scales
    (:func:`all_gather_quantized`), quantized by ``recipe`` (default: the
    recipe of the first converted linear layer inside the module). The
    gathered input is a ScaledTensor: ``ColwiseParallel`` layers take it as it
    is, and the gather's backward reduce-scatters their summed gradients."""

    def __init__(self, *, input_layouts, desired_input_layouts, recipe=None):
        super().__init__()
        self.input_layouts = tuple(input_layouts) if isinstance(input_layouts, (list, tuple)) else (input_layouts,)
        self.desired = (
            tuple(desired_input_layouts) if isinstance(desired_input_layouts, (list, tuple)) else (desired_input_layouts,)
        )
        if len(self.input_layouts) != len(self.desired):
            raise ValueError(
                f"desired_input_layouts: expected {len(self.input_layouts)} entries like input_layouts, "
                f"got {len(self.desired)}"
            )
        for have, want in zip(self.input_layouts, self.desired):
            if have is not None and not (isinstance(have, Shard) and isinstance(want, Replicate)) and have != want:
                raise ValueError(f"input_layouts: only Shard(d) -> Replicate() gathers are supported, got {have} -> {want}")
        self.recipe = recipe

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        recipe = self.recipe or next(
            (m._breccia_recipe for m in module.modules() if getattr(m, "_breccia_mode", None) == "training"), None
        )
        if recipe is None:
            raise ValueError("recipe: the module holds no layer converted for training; pass recipe=")
        group = device_mesh.get_group()
        plan = list(zip(self.input_layouts, self.desired))

        def hook(mod, args):
            out = list(args)
            for i, (have, want) in enumerate(plan):
                if i < len(out) and isinstance(have, Shard) and isinstance(want, Replicate):
                    x = out[i].to_local() if isinstance(out[i], DTensor) else out[i]
                    out[i] = all_gather_quantized(x, recipe, have.dim, group)
            return tuple(out)

        module.register_forward_pre_hook(hook)
        return module
