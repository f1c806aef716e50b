"""FSDP2 scale-aware all-gather, for every recipe.

``fully_shard`` shards a weight by rows (dim 0) into chunks of
``ceil(N / world)`` rows. Before the all-gather each rank quantizes its own
rows; the all-gather moves the low-precision payload, and the scales follow:

- **tensorwise** (``Float8CurrentScaling``, ``DelayedScaling``): every rank
  must cast with the same scale. ``DelayedScaling`` takes it from the layer's
  amax history (made global once a step by ``breccia.sync_amax``);
  ``Float8CurrentScaling`` all-reduces the weight's amax, or uses the amax
  that ``breccia.precompute_scales(model)`` reduced for all weights at once.
- **blocks within a row** (rowwise, 1x128, MX 1x32, NVFP4 1x16, INT4
  groups): no reduction -- each block lives on one rank. Each rank's scale
  rows are all-gathered beside the payload (NVFP4 also all-reduces the amax
  behind its global scale).
- **blocks spanning rows** (128x128, NVFP4 16x16): a shard boundary may cut
  a block. The ranks all-reduce (MAX) a grid of their partial block amaxes,
  so every rank holds every block's true amax and the whole scale grid, and
  quantizes its rows with it -- bit-identical to quantizing the full weight.

Uneven shards, dim 0 smaller than the world size and empty local shards
work: FSDP2 wants every all-gather input padded to ``ceil(N / world)`` rows,
so the payload is zero-padded (and a 4-bit payload of an unevenly sharded
weight travels as one code per byte, since padding must keep the shape).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional

import torch
import torch.distributed as dist

from .. import formats
from ..api import cast
from ..quantize import _block_dims, _to_blocks, block_for, quantize_reference, resolve_block, scale_grid_shape
from ..recipes import WHOLE, DelayedScaling, QuantSpec
from ..tensor import ScaledTensor

__all__ = ["pre_all_gather", "post_all_gather", "precompute_scales"]


@dataclass
class _GatherMeta:
    recipe: Any
    block: tuple
    shape: tuple
    scale: torch.Tensor
    global_scale: Optional[torch.Tensor]
    zero_point: Optional[torch.Tensor]
    codes: bool  # 4-bit payload sent unpacked (one code per byte)


def all_gather(out: torch.Tensor, inp: torch.Tensor, group=None) -> None:
    """All-gather ``inp`` into ``out`` along dim 0 (``all_gather_single`` is
    ``all_gather_into_tensor``'s newer name; looked up per call)."""
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    fn(out, inp, group=group)


def _local_amax(x: torch.Tensor) -> torch.Tensor:
    """This rank's amax (float32, 0-d); 0 for an empty shard."""
    return x.detach().abs().amax().float() if x.numel() else torch.zeros((), device=x.device)


def _all_reduce_max(t: torch.Tensor, group) -> torch.Tensor:
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return t


def _gather_rows(t: torch.Tensor, rows_pad: int, n_rows: int, group, world: int) -> torch.Tensor:
    """All-gather ``t`` (this rank's rows) padded to ``rows_pad`` rows; keep
    the first ``n_rows`` of the result."""
    padded = t.new_zeros((rows_pad,) + tuple(t.shape[1:]))
    padded[: t.shape[0]] = t
    out = t.new_empty((world * rows_pad,) + tuple(t.shape[1:]))
    as_bytes = (lambda v: v.view(torch.uint8)) if t.dtype.itemsize == 1 else (lambda v: v)  # fp8/e8m0 as bytes
    all_gather(as_bytes(out), as_bytes(padded), group=group)
    return out[:n_rows]


def pre_all_gather(weight, mesh, outer_size, module, mp_policy):
    """This rank's quantized rows (padded) as the all-gather input; the full
    scale grid, gathered or reduced here, as metadata."""
    recipe = weight.recipe
    data = weight._data
    if len(outer_size) != 2:
        raise ValueError(f"weight: FSDP2 low-precision all-gather takes 2-D weights, got shape {tuple(outer_size)}")
    n, k = int(outer_size[0]), int(outer_size[1])
    group = mesh.get_group()
    world, rank = mesh.size(), mesh.get_local_rank()
    rows_pad = -(-n // world)
    offset = rank * rows_pad
    spec = recipe.spec("weight")
    block = block_for(spec.block, 2)
    b0 = block[0]
    param_dtype = (mp_policy.param_dtype if mp_policy is not None else None) or data.dtype
    x = data.to(param_dtype)

    global_scale = zero_point = None
    if all(b == WHOLE for b in block):  # tensorwise: one scale for every rank
        if isinstance(recipe, DelayedScaling):
            amax = recipe.history_amax(module.breccia_amax.get("weight"))
            # this rank's amax waits for sync_amax, which pushes it into the
            # history and makes it global: the backward re-gather must see the
            # same history as the forward gather
            weight.pending_amax = _local_amax(x)
        elif weight.precomputed_amax is not None:
            amax = weight.precomputed_amax
        else:
            amax = _all_reduce_max(_local_amax(x), group)
        st = cast(x, recipe, "weight", amax=amax)
        scale = st.scale
    elif b0 == 1:  # blocks inside rows: local scales, gathered
        amax = None
        if spec.has_global_scale:
            amax = _all_reduce_max(_local_amax(x), group)
        st = cast(x, recipe, "weight", amax=amax)
        scale = _gather_rows(st.scale, rows_pad, scale_grid_shape((n, k), block)[0], group, world)
        if st.zero_point is not None:
            zero_point = _gather_rows(st.zero_point, rows_pad, n, group, world)
        global_scale = st.global_scale
    else:  # blocks span rows: reduce the partial block amaxes of cut blocks
        q, scale, global_scale = _cast_spanning_blocks(x, recipe, spec, block, n, k, offset, group)
    if b0 == 1 or all(b == WHOLE for b in block):
        q = st.qdata
    return _payload_and_meta(q, recipe, spec, block, n, k, rows_pad, world, scale, global_scale, zero_point)


def _payload_and_meta(q, recipe, spec, block, n, k, rows_pad, world, scale, global_scale, zero_point):
    # FSDP2 wants an unevenly sharded weight's inputs at the param's padded
    # shape: decided for the weight as a whole, so every rank sends alike
    codes = spec.fmt.packed and rows_pad * world != n
    if codes:
        q = formats.unpack_nibbles(q, k)
    payload = q.new_zeros((rows_pad,) + tuple(q.shape[1:]))
    payload[: q.shape[0]] = q
    meta = _GatherMeta(recipe, block, (n, k), scale, global_scale, zero_point, codes)
    return (payload,), meta


def pre_all_gather_scaled(st: ScaledTensor, mesh, outer_size):
    """The all-gather hook of an already-quantized (inference) weight: this
    rank's payload rows, and the scale rows gathered beside them."""
    from ..layouts import Plain, relayout

    if len(outer_size) != 2:
        raise ValueError(f"weight: FSDP2 sharding of a ScaledTensor takes 2-D weights, got shape {tuple(outer_size)}")
    st = relayout(st, Plain)
    n, k = int(outer_size[0]), int(outer_size[1])
    group = mesh.get_group()
    world = mesh.size()
    rows_pad = -(-n // world)
    spec, block = st.spec, st.block
    if all(b == WHOLE for b in block):
        scale, zero_point = st.scale, st.zero_point
    elif block[0] == 1:
        scale = _gather_rows(st.scale, rows_pad, n, group, world)
        zero_point = None if st.zero_point is None else _gather_rows(st.zero_point, rows_pad, n, group, world)
    else:
        raise ValueError(
            f"weight: a {block} block spans rows and FSDP2's shards of {rows_pad} rows cut it; "
            "shard the high-precision weight (convert in training mode) or pick a world size that "
            "divides the blocks"
        )
    return _payload_and_meta(
        st.qdata, st.recipe, spec, block, n, k, rows_pad, world, scale, st.global_scale, zero_point
    )


def _cast_spanning_blocks(x, recipe, spec: QuantSpec, block, n: int, k: int, offset: int, group):
    """Quantize this rank's rows (starting at global row ``offset``) with
    blocks that may extend onto other ranks: all-reduce the block amaxes.
    Returns this rank's payload, the full scale grid and the global scale."""
    b0 = block[0]
    grid = scale_grid_shape((n, k), block)
    rows = x.shape[0]
    top, first = offset % b0, offset // b0
    # align this shard to the global block grid with zero rows (zeros never raise an amax)
    aligned = torch.cat([x.new_zeros(top, k), x]) if top else x
    partial = torch.zeros(grid, dtype=torch.float32, device=x.device)
    if rows:
        xb = _to_blocks(aligned.float(), resolve_block(block, aligned.shape))
        local = xb.abs().amax(dim=_block_dims(2)).reshape(-1, grid[1])
        partial[first : first + local.shape[0]] = local
    block_amax = _all_reduce_max(partial, group)
    amax = block_amax.amax() if spec.has_global_scale else None
    g_rows = -(-aligned.shape[0] // b0)
    st = cast(aligned, recipe, "weight", amax=amax, block_amax=block_amax[first : first + g_rows])
    # the whole grid from the block amaxes: the same rule, one element per block
    per_block = quantize_reference(block_amax, replace(spec, block=(1, 1)), amax=amax)
    return st.qdata[top:], per_block.scale, per_block.global_scale


def post_all_gather(all_gather_outputs, metadata: _GatherMeta, param_dtype, *, out=None):
    """The unsharded weight as a ScaledTensor over the gathered payload."""
    (payload,) = all_gather_outputs
    n, k = metadata.shape
    q = payload[:n]
    if metadata.codes:
        q = formats.pack_nibbles(q)
    if out is not None:
        target = out._local_tensor if hasattr(out, "_local_tensor") else out
        if metadata.codes:
            target.qdata.copy_(q)
        target.scale = metadata.scale
        target.global_scale = metadata.global_scale
        target.zero_point = metadata.zero_point
        return
    st = ScaledTensor(
        q,
        metadata.scale,
        global_scale=metadata.global_scale,
        zero_point=metadata.zero_point,
        recipe=metadata.recipe,
        role="weight",
        block=metadata.block,
        shape=(n, k),
        orig_dtype=param_dtype or torch.float32,
    )
    return st, (q,)


def precompute_scales(model: torch.nn.Module) -> int:
    """One all-reduce for the amaxes of every FSDP2-sharded tensorwise
    ``Float8CurrentScaling`` weight, ahead of the step's all-gathers (instead
    of one all-reduce per weight). Call it once per step, after the
    optimizer step. Returns the number of weights covered."""
    from torch.distributed.tensor import DTensor

    from ..recipes import Float8CurrentScaling
    from .weight import TrainingWeight

    locals_, group = [], None
    for p in model.parameters():
        local = p._local_tensor if isinstance(p, DTensor) else p
        if isinstance(local, TrainingWeight) and isinstance(local.recipe, Float8CurrentScaling):
            if local.recipe.granularity == "tensor":
                locals_.append(local)
                if isinstance(p, DTensor):
                    group = p.device_mesh.get_group()
    if not locals_:
        return 0
    with torch.no_grad():
        amaxes = torch.stack(
            [_local_amax(t._data) for t in locals_]
        )
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(amaxes, op=dist.ReduceOp.MAX, group=group)
    for t, a in zip(locals_, amaxes):
        t.precomputed_amax = a
    return len(locals_)
