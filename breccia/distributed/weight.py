"""``TrainingWeight``: the high-precision weight of a layer converted for
training, which knows its recipe.

It is a thin wrapper: every op runs on the inner tensor (optimizers, ``copy_``,
``state_dict`` see an ordinary weight). What it adds are FSDP2's all-gather
hooks (:mod:`breccia.distributed.fsdp`): the all-gather moves the quantized
payload plus scales instead of the high-precision shard.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.utils._pytree import tree_map

from ..recipes import Recipe

__all__ = ["TrainingWeight"]

aten = torch.ops.aten

# ops whose result is still "the weight" (sharding, copies, moves): rewrapped
_PRESERVE = {
    aten.detach.default,
    aten.alias.default,
    aten.view.default,
    aten._unsafe_view.default,
    aten.as_strided.default,
    aten.slice.Tensor,
    aten.split.Tensor,
    aten.split_with_sizes.default,
    aten.clone.default,
    aten._to_copy.default,
    aten.empty_like.default,
    aten.new_zeros.default,
    aten.new_empty.default,
    aten.copy_.default,
    aten._pin_memory.default,
}


class TrainingWeight(torch.Tensor):
    """A high-precision weight (``_data``) tagged with the ``recipe`` its
    layer trains with."""

    _data: torch.Tensor
    recipe: Recipe
    #: a tensorwise amax all-reduced ahead of time (``breccia.precompute_scales``)
    precomputed_amax: Optional[torch.Tensor]

    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, data: torch.Tensor, recipe: Recipe, precomputed_amax=None):
        return torch.Tensor._make_wrapper_subclass(
            cls,
            data.shape,
            strides=data.stride(),
            storage_offset=data.storage_offset(),
            dtype=data.dtype,
            device=data.device,
            requires_grad=data.requires_grad,
        )

    def __init__(self, data: torch.Tensor, recipe: Recipe, precomputed_amax=None):
        self._data = data
        self.recipe = recipe
        self.precomputed_amax = precomputed_amax
        #: DelayedScaling under FSDP2: this shard's amax, pushed by ``sync_amax``
        self.pending_amax = None

    def __repr__(self) -> str:
        return f"TrainingWeight({self._data!r}, recipe={self.recipe!r})"

    def __tensor_flatten__(self):
        return ["_data"], (self.recipe,)

    @staticmethod
    def __tensor_unflatten__(inner, ctx, outer_size, outer_stride):
        return TrainingWeight(inner["_data"], ctx[0])

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        recipe = next(a.recipe for a in _flat(args, kwargs) if isinstance(a, TrainingWeight))

        def unwrap(t):
            return t._data if isinstance(t, TrainingWeight) else t

        out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))
        if func not in _PRESERVE:
            return out

        def wrap(t):
            return TrainingWeight(t, recipe) if isinstance(t, torch.Tensor) and not isinstance(t, TrainingWeight) else t

        return tree_map(wrap, out)

    # FSDP2 all-gather hooks: implemented in breccia.distributed.fsdp
    def fsdp_pre_all_gather(self, mesh, outer_size, outer_stride, module, mp_policy):
        from .fsdp import pre_all_gather

        return pre_all_gather(self, mesh, outer_size, module, mp_policy)

    def fsdp_post_all_gather(self, all_gather_outputs, metadata, param_dtype, *, out=None):
        from .fsdp import post_all_gather

        return post_all_gather(all_gather_outputs, metadata, param_dtype, out=out)


def _flat(args, kwargs):
    from torch.utils._pytree import tree_leaves

    return tree_leaves((args, kwargs))


torch.serialization.add_safe_globals([TrainingWeight])
