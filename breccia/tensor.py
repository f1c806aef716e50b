"""``ScaledTensor``: low-precision payload plus the scales that give it meaning,
as a real ``torch.Tensor``.

Its outer shape is the logical (unpacked) shape and its outer dtype the
original high-precision dtype, so modules, optimizers and ``state_dict`` treat
it as a normal tensor. Every aten op on it goes through the op table in
:mod:`breccia.ops`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Optional

import torch

from .layouts import Layout, Plain
from .quantize import payload_shape, scale_grid_shape
from .recipes import QuantSpec, Recipe

__all__ = ["ScaledTensor"]

_INNER = ("qdata", "scale", "global_scale", "zero_point")


@functools.lru_cache(maxsize=256)
def _spec_key(recipe: Recipe, role: str) -> str:
    # read on every ScaledTensor made (F.linear's transpose makes one a call)
    return recipe.spec(role).to_key()


class ScaledTensor(torch.Tensor):
    """A tensor stored as ``qdata`` (payload) and ``scale`` (dequantization
    multipliers, one per block), with ``global_scale`` (NVFP4) and
    ``zero_point`` (asymmetric INT4) where the recipe needs them.

    ``block`` is the number of logical elements per scale along each dim
    (``-1`` = the whole dim), ``role`` the GEMM role the recipe quantized it
    for, ``qlayout`` the physical arrangement (:mod:`breccia.layouts`)."""

    qdata: torch.Tensor
    scale: torch.Tensor
    global_scale: Optional[torch.Tensor]
    zero_point: Optional[torch.Tensor]
    recipe: Recipe
    role: str
    block: tuple[int, ...]
    qlayout: Layout
    orig_dtype: torch.dtype

    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(
        cls,
        qdata: torch.Tensor,
        scale: torch.Tensor,
        *,
        recipe: Recipe,
        role: str,
        block: tuple[int, ...],
        shape: tuple,
        orig_dtype: torch.dtype,
        global_scale: Optional[torch.Tensor] = None,
        zero_point: Optional[torch.Tensor] = None,
        qlayout: Layout = Plain,
        requires_grad: bool = False,
    ):
        return torch.Tensor._make_wrapper_subclass(
            cls,
            shape,
            dtype=orig_dtype,
            device=qdata.device,
            requires_grad=requires_grad,
        )

    def __init__(
        self,
        qdata: torch.Tensor,
        scale: torch.Tensor,
        *,
        recipe: Recipe,
        role: str,
        block: tuple[int, ...],
        shape: tuple,
        orig_dtype: torch.dtype,
        global_scale: Optional[torch.Tensor] = None,
        zero_point: Optional[torch.Tensor] = None,
        qlayout: Layout = Plain,
        requires_grad: bool = False,
    ):
        self.qdata = qdata
        self.scale = scale
        self.global_scale = global_scale
        self.zero_point = zero_point
        self.recipe = recipe
        self.role = role
        # the spec as a plain string: what traced code reads (torch.compile
        # can hold strings, not recipe objects, for tensors made in-graph)
        self.spec_key = _spec_key(recipe, role)
        self.block = tuple(block)
        self.qlayout = qlayout
        self.orig_dtype = orig_dtype

    # ------------------------------------------------------------------ facts

    @property
    def spec(self) -> QuantSpec:
        return QuantSpec.from_key(self.spec_key)

    @property
    def scale_grid(self) -> tuple:
        return scale_grid_shape(self.shape, self.block)

    def inner_tensors(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in _INNER if getattr(self, k) is not None}

    def nbytes_packed(self) -> int:
        """True storage bytes: payload, scales, global scale and zero points."""
        return sum(t.numel() * t.element_size() for t in self.inner_tensors().values())

    def bits_per_element(self) -> float:
        n = math.prod(self.shape)
        return 8.0 * self.nbytes_packed() / n if n else 0.0

    def with_inner(self, **changes: Any) -> "ScaledTensor":
        """A new ScaledTensor with some inner tensors or context replaced."""
        kw = dict(
            recipe=self.recipe,
            role=self.role,
            block=self.block,
            shape=tuple(self.shape),
            orig_dtype=self.orig_dtype,
            global_scale=self.global_scale,
            zero_point=self.zero_point,
            qlayout=self.qlayout,
        )
        qdata = changes.pop("qdata", self.qdata)
        scale = changes.pop("scale", self.scale)
        kw.update(changes)
        return ScaledTensor(qdata, scale, **kw)

    # ------------------------------------------------------------------ subclass protocol

    def __tensor_flatten__(self):
        ctx = (self.recipe, self.role, self.block, self.qlayout, self.orig_dtype)
        return [k for k in _INNER if getattr(self, k) is not None], ctx

    @staticmethod
    def __tensor_unflatten__(inner: dict, ctx, outer_size, outer_stride):
        recipe, role, block, layout, orig_dtype = ctx
        return ScaledTensor(
            inner["qdata"],
            inner["scale"],
            global_scale=inner.get("global_scale"),
            zero_point=inner.get("zero_point"),
            recipe=recipe,
            role=role,
            block=block,
            shape=tuple(outer_size),
            orig_dtype=orig_dtype,
            qlayout=layout,
        )

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        from .ops import dispatch

        return dispatch(func, types, args, kwargs or {})

    def _stable_hash_for_caching(self) -> str:
        """The context that makes two ScaledTensors trace alike (AOT autograd's
        cache key for tensor subclasses)."""
        return f"{self.recipe.to_json()}|{self.role}|{self.block}|{self.qlayout.value}|{self.orig_dtype}"

    # FSDP2 all-gather hooks (sharding a converted-for-inference model):
    # breccia.distributed.fsdp moves payload and scales
    def fsdp_pre_all_gather(self, mesh, outer_size, outer_stride, module, mp_policy):
        from .distributed.fsdp import pre_all_gather_scaled

        return pre_all_gather_scaled(self, mesh, outer_size)

    def fsdp_post_all_gather(self, all_gather_outputs, metadata, param_dtype, *, out=None):
        from .distributed.fsdp import post_all_gather

        return post_all_gather(all_gather_outputs, metadata, param_dtype or self.orig_dtype, out=out)

    def __repr__(self) -> str:
        spec = self.spec
        parts = [
            f"shape={tuple(self.shape)}",
            f"dtype={self.orig_dtype}",
            f"recipe={self.recipe!r}",
            f"role={self.role!r}",
            f"element={spec.element}",
            f"scale={spec.scale_format}{list(self.scale.shape)}",
            f"block={self.block}",
        ]
        if self.global_scale is not None:
            parts.append("global_scale=fp32")
        if self.zero_point is not None:
            parts.append("zero_point=uint8")
        parts.append(f"layout={self.qlayout!r}")
        if self.device.type != "cpu":
            parts.append(f"device={self.device}")
        return f"ScaledTensor({', '.join(parts)})"

    def check_consistent(self) -> None:
        """Raise ``ValueError`` if the inner tensors do not fit the context."""
        spec = self.spec
        want_q = payload_shape(tuple(self.shape), spec.fmt)
        if tuple(self.qdata.shape) != tuple(want_q) or self.qdata.dtype != spec.fmt.storage:
            raise ValueError(
                f"qdata: expected shape {tuple(want_q)} and dtype {spec.fmt.storage} for "
                f"logical shape {tuple(self.shape)}, got {tuple(self.qdata.shape)} {self.qdata.dtype}"
            )
        if tuple(self.scale.shape) != tuple(self.scale_grid) or self.scale.dtype != spec.scale_torch_dtype:
            raise ValueError(
                f"scale: expected shape {tuple(self.scale_grid)} and dtype {spec.scale_torch_dtype}, "
                f"got {tuple(self.scale.shape)} {self.scale.dtype}"
            )
