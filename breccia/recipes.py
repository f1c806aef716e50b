"""The six recipes: numerics policies for each GEMM role.

A recipe is a frozen, hashable, printable dataclass that serialises to JSON
(it travels in checkpoint headers and in ``__tensor_flatten__`` context). For
each role -- ``"input"``, ``"weight"``, ``"grad_output"`` -- it yields a
:class:`QuantSpec`: element format, scale format, block and scale rule. The
quantizer (:mod:`breccia.quantize`) needs nothing else.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import torch
from torch.utils._pytree import register_constant

from .formats import element_format, scale_dtype

__all__ = [
    "ROLES",
    "QuantSpec",
    "Recipe",
    "DelayedScaling",
    "Float8CurrentScaling",
    "Float8BlockScaling",
    "MXFP8BlockScaling",
    "NVFP4BlockScaling",
    "INT4Scaling",
    "RECIPES",
    "recipe_from_dict",
    "recipe_from_json",
]

ROLES = ("input", "weight", "grad_output")

#: block entry meaning "the whole extent of this dim"
WHOLE = -1

#: How a block's scale is derived from its contents, by scale format.
SCALE_RULES = {
    "fp32": ("amax", "pow2"),  # amax / max, or the next power of two above it
    "e8m0": ("floor", "rceil"),  # OCP MX floor(log2 amax) - emax, or TE's round-up
    "e4m3": ("two_level",),  # NVFP4: e4m3 block scale times an fp32 global scale
    "bf16": ("symmetric", "asymmetric"),  # INT4 groups
    "fp16": ("symmetric", "asymmetric"),
}


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized: the per-role product of a recipe.

    ``block`` counts logical elements per scale along the trailing dims;
    ``-1`` means the whole extent of that dim (so ``(-1, -1)`` is tensorwise
    and ``(1, -1)`` rowwise). Leading dims of an N-D tensor not covered by
    ``block`` get blocks of 1.
    """

    element: str
    scale_format: str
    block: tuple[int, ...]
    scale_rule: str
    margin: int = 0
    stochastic: bool = False

    def __post_init__(self) -> None:
        element_format(self.element)
        scale_dtype(self.scale_format)
        rules = SCALE_RULES[self.scale_format]
        if self.scale_rule not in rules:
            raise ValueError(
                f"scale_rule: expected one of {rules} for scale format "
                f"{self.scale_format!r}, got {self.scale_rule!r}"
            )
        _check_block("block", self.block, allow_whole=True)

    @property
    def fmt(self):
        return element_format(self.element)

    @property
    def scale_torch_dtype(self) -> torch.dtype:
        return scale_dtype(self.scale_format)

    @property
    def has_global_scale(self) -> bool:
        return self.scale_rule == "two_level"

    @property
    def has_zero_point(self) -> bool:
        return self.scale_rule == "asymmetric"

    @property
    def tensorwise(self) -> bool:
        """One scale for the whole tensor (every block dim ``WHOLE``)."""
        return all(b == WHOLE for b in self.block)

    def to_key(self) -> str:
        """A compact string naming this spec (what custom ops take: plain
        string formatting, so torch.compile folds it to a constant)."""
        block = ",".join([str(b) for b in self.block])
        return f"{self.element}|{self.scale_format}|{block}|{self.scale_rule}|{self.margin}|{int(self.stochastic)}"

    @staticmethod
    @lru_cache(maxsize=None)
    def from_key(key: str) -> "QuantSpec":
        element, scale_format, block, rule, margin, stochastic = key.split("|")
        return QuantSpec(
            element, scale_format, tuple(int(b) for b in block.split(",")), rule, int(margin), bool(int(stochastic))
        )


def _check_block(name: str, block: Any, *, allow_whole: bool = False) -> None:
    ok = (
        isinstance(block, tuple)
        and 1 <= len(block) <= 2
        and all(
            isinstance(b, int) and not isinstance(b, bool) and (b >= 1 or (allow_whole and b == WHOLE))
            for b in block
        )
    )
    if not ok:
        raise ValueError(
            f"{name}: expected a tuple of one or two positive ints (a block of "
            f"logical elements per scale), got {block!r}"
        )


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name}: expected a bool, got {value!r}")


_FP8_FORMATS = ("e4m3", "e5m2", "hybrid")


def _fp8_element(fp8_format: str, role: str) -> str:
    """``"hybrid"`` is e4m3 forward (input, weight) and e5m2 for gradients."""
    if fp8_format == "hybrid":
        return "e5m2" if role == "grad_output" else "e4m3"
    return fp8_format


class Recipe:
    """Base of the six recipes. Subclasses are frozen dataclasses."""

    #: recipes whose ``spec("input")`` is None keep activations high precision
    weight_only: ClassVar[bool] = False
    #: The forward GEMM (``"input"`` x ``"weight"``) of a tensorwise or
    #: rowwise FP8 recipe accumulates in the tensor cores' own precision
    #: (cuBLAS fast accumulation, TransformerEngine's and torchao's default for
    #: the forward pass); gradient GEMMs always promote to fp32 as they go.
    #: The FP8 recipes that ``torch._scaled_mm`` runs tensorwise/rowwise make
    #: it a field; block-scaled GEMMs promote per block regardless.
    fast_accum_forward: bool = False

    def spec(self, role: str) -> QuantSpec:
        if role not in ROLES:
            raise ValueError(f"role: expected one of {ROLES}, got {role!r}")
        return self._spec(role)

    def _spec(self, role: str) -> QuantSpec:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def name(self) -> str:
        return type(self).__name__

    def to_dict(self) -> dict:
        d = {"recipe": self.name, "version": 1}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            d[f.name] = list(v) if isinstance(v, tuple) else v
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


@dataclass(frozen=True)
class DelayedScaling(Recipe):
    """FP8 tensorwise with scales from a history of past amaxes (TE's recipe).

    ``scale = amax_hist * 2**margin / fp8_max`` where ``amax_hist`` is the max
    of the history (``"max"``) or its newest entry (``"most_recent"``). The
    history buffers live with modules; :func:`scale_from_amax_history` is the
    rule. Without a history, ``cast`` uses the tensor's own amax (a history of
    one). ``fast_accum_forward``: see :attr:`Recipe.fast_accum_forward`."""

    fp8_format: str = "hybrid"
    margin: int = 0
    amax_history_len: int = 1024
    amax_compute_algo: str = "max"
    fast_accum_forward: bool = True

    def __post_init__(self) -> None:
        _check_choice("fp8_format", self.fp8_format, _FP8_FORMATS)
        _check_bool("fast_accum_forward", self.fast_accum_forward)
        if not isinstance(self.margin, int) or isinstance(self.margin, bool):
            raise ValueError(f"margin: expected an int, got {self.margin!r}")
        if not isinstance(self.amax_history_len, int) or self.amax_history_len < 1:
            raise ValueError(
                f"amax_history_len: expected a positive int, got {self.amax_history_len!r}"
            )
        _check_choice("amax_compute_algo", self.amax_compute_algo, ("max", "most_recent"))

    def _spec(self, role: str) -> QuantSpec:
        return QuantSpec(_fp8_element(self.fp8_format, role), "fp32", (WHOLE, WHOLE), "amax", self.margin)

    def history_amax(self, amax_history: torch.Tensor) -> torch.Tensor:
        """The amax the scale is derived from: the history's max, or its newest
        entry (index 0, TransformerEngine's convention)."""
        if not isinstance(amax_history, torch.Tensor) or amax_history.numel() == 0:
            raise ValueError("amax_history: expected a non-empty tensor of past amaxes, newest first")
        h = amax_history.to(torch.float32).reshape(-1)
        return h.amax() if self.amax_compute_algo == "max" else h[0]


@dataclass(frozen=True)
class Float8CurrentScaling(Recipe):
    """FP8 with scales from the current amax, per tensor or per row.

    ``granularity="row"`` gives one scale per row (along the last dim) -- for
    the GEMM ``x @ w.T`` that is one per token and one per output channel.
    ``power_of_2_scale`` rounds scales up to a power of two (exact rescaling).
    ``fast_accum_forward``: see :attr:`Recipe.fast_accum_forward`."""

    fp8_format: str = "e4m3"
    granularity: str = "tensor"
    power_of_2_scale: bool = False
    fast_accum_forward: bool = True

    def __post_init__(self) -> None:
        _check_choice("fp8_format", self.fp8_format, _FP8_FORMATS)
        _check_choice("granularity", self.granularity, ("tensor", "row"))
        _check_bool("power_of_2_scale", self.power_of_2_scale)
        _check_bool("fast_accum_forward", self.fast_accum_forward)

    def _spec(self, role: str) -> QuantSpec:
        block = (WHOLE, WHOLE) if self.granularity == "tensor" else (1, WHOLE)
        rule = "pow2" if self.power_of_2_scale else "amax"
        return QuantSpec(_fp8_element(self.fp8_format, role), "fp32", block, rule)


@dataclass(frozen=True)
class Float8BlockScaling(Recipe):
    """FP8 with DeepSeek-V3 blocks: 1x128 activations and gradients, 128x128
    weights, fp32 scales (``power_of_2_scale=True``: the ``ue8m0`` variant)."""

    fp8_format: str = "e4m3"
    input_block: tuple = (1, 128)
    weight_block: tuple = (128, 128)
    grad_block: tuple = (1, 128)
    power_of_2_scale: bool = False

    def __post_init__(self) -> None:
        _check_choice("fp8_format", self.fp8_format, _FP8_FORMATS)
        for name in ("input_block", "weight_block", "grad_block"):
            value = getattr(self, name)
            if isinstance(value, list):
                value = tuple(value)
                object.__setattr__(self, name, value)
            _check_block(name, value)
        _check_bool("power_of_2_scale", self.power_of_2_scale)

    def _spec(self, role: str) -> QuantSpec:
        block = {"input": self.input_block, "weight": self.weight_block, "grad_output": self.grad_block}[role]
        rule = "pow2" if self.power_of_2_scale else "amax"
        return QuantSpec(_fp8_element(self.fp8_format, role), "fp32", block, rule)


@dataclass(frozen=True)
class MXFP8BlockScaling(Recipe):
    """OCP MXFP8: blocks of 32 along K, e8m0 (power-of-two) scales.

    ``scale_rule="floor"`` is the OCP reference ``floor(log2 amax) - emax``
    (values above the format's max saturate); ``"rceil"`` is
    TransformerEngine's round-up rule (``amax / max`` rounded up to a power of
    two: nothing saturates)."""

    fp8_format: str = "e4m3"
    scale_rule: str = "floor"
    block_size: int = 32

    def __post_init__(self) -> None:
        _check_choice("fp8_format", self.fp8_format, _FP8_FORMATS)
        _check_choice("scale_rule", self.scale_rule, ("floor", "rceil"))
        if self.block_size != 32 or isinstance(self.block_size, bool):
            raise ValueError(f"block_size: OCP MX blocks hold 32 elements, got {self.block_size!r}")

    def _spec(self, role: str) -> QuantSpec:
        return QuantSpec(_fp8_element(self.fp8_format, role), "e8m0", (1, self.block_size), self.scale_rule)


@dataclass(frozen=True)
class NVFP4BlockScaling(Recipe):
    """NVFP4: e2m1 elements in blocks of 16, e4m3 block scales times one fp32
    global scale per tensor (``global = amax / (448 * 6)``,
    ``block = e4m3(block_amax / 6 / global)``). Weights may use 16x16 blocks;
    gradients may use stochastic rounding."""

    weight_block: tuple = (1, 16)
    stochastic_rounding: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.weight_block, list):
            object.__setattr__(self, "weight_block", tuple(self.weight_block))
        if self.weight_block not in ((1, 16), (16, 16)):
            raise ValueError(f"weight_block: expected (1, 16) or (16, 16), got {self.weight_block!r}")
        _check_bool("stochastic_rounding", self.stochastic_rounding)

    def _spec(self, role: str) -> QuantSpec:
        block = self.weight_block if role == "weight" else (1, 16)
        stochastic = self.stochastic_rounding and role == "grad_output"
        return QuantSpec("e2m1", "e4m3", block, "two_level", stochastic=stochastic)


@dataclass(frozen=True)
class INT4Scaling(Recipe):
    """Weight-only INT4 (the GPTQ/AWQ family): groups of ``group_size`` along K,
    bf16 or fp16 scales, symmetric (signed codes, ``scale = amax / 7.5``) or
    asymmetric (unsigned codes with an integer zero point). Activations stay
    high precision."""

    weight_only: ClassVar[bool] = True

    group_size: int = 128
    symmetric: bool = True
    scale_dtype: str = "bf16"

    def __post_init__(self) -> None:
        g = self.group_size
        if not (isinstance(g, int) and not isinstance(g, bool) and 16 <= g <= 1024 and g & (g - 1) == 0):
            raise ValueError(f"group_size: expected a power of two from 16 to 1024, got {g!r}")
        _check_bool("symmetric", self.symmetric)
        _check_choice("scale_dtype", self.scale_dtype, ("bf16", "fp16"))

    def _spec(self, role: str) -> QuantSpec:
        if role != "weight":
            raise ValueError(
                f"role: INT4Scaling is weight-only (activations stay high precision), got role={role!r}"
            )
        rule = "symmetric" if self.symmetric else "asymmetric"
        return QuantSpec("int4", self.scale_dtype, (1, self.group_size), rule)


RECIPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        DelayedScaling,
        Float8CurrentScaling,
        Float8BlockScaling,
        MXFP8BlockScaling,
        NVFP4BlockScaling,
        INT4Scaling,
    )
}


# recipes travel in ScaledTensor's flatten context: torch.compile treats them
# as constants (guarded by equality)
for _cls in RECIPES.values():
    register_constant(_cls)


def recipe_from_dict(d: dict) -> Recipe:
    """Inverse of :meth:`Recipe.to_dict`."""
    if not isinstance(d, dict) or "recipe" not in d:
        raise ValueError(f"recipe: expected a dict with a 'recipe' key, got {d!r}")
    d = dict(d)
    name = d.pop("recipe")
    version = d.pop("version", 1)
    if version != 1:
        raise ValueError(f"recipe version: this breccia reads version 1, got {version!r}")
    if name not in RECIPES:
        raise ValueError(f"recipe: expected one of {sorted(RECIPES)}, got {name!r}")
    cls = RECIPES[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - fields
    if unknown:
        raise ValueError(f"recipe {name}: unknown fields {sorted(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def recipe_from_json(text: str) -> Recipe:
    return recipe_from_dict(json.loads(text))


_TINY = torch.finfo(torch.float32).tiny  # smallest normal float32, 2**-126
