"""DLPack, NumPy, JAX and MLX <-> ScaledTensor.

A ScaledTensor crosses to another array library as a dict: its inner tensors
``qdata``, ``scale`` and, where the recipe has them, ``global_scale`` and
``zero_point``, plus plain metadata -- ``recipe`` (JSON), ``role``, ``block``,
``shape``, ``orig_dtype`` and ``layout`` -- from which ``from_numpy`` /
``from_jax`` / ``from_mlx`` rebuild it bit for bit. Conventions are
breccia's own (docs/numerics.md): ``scale`` is the dequantization multiplier,
4-bit payloads are two per byte with the even element in the low nibble.

What is shared rather than copied (CPU):

- NumPy: every array is a view of the torch storage. FP8, e8m0 and bfloat16
  have no NumPy dtype: they are ``ml_dtypes`` views (``float8_e4m3fn``,
  ``float8_e5m2``, ``float8_e8m0fnu``, ``bfloat16``), or raw ``uint8`` /
  ``uint16`` with ``typed=False``. 4-bit payloads are ``uint8``.
- JAX: zero-copy both ways through DLPack, FP8 and e8m0 included.
- MLX: MLX copies whatever it imports on the CPU, so ``to_mlx`` copies;
  ``from_mlx`` shares MLX's buffers. MLX has no FP8 dtypes: FP8 payloads and
  e8m0 / e4m3 scales travel as ``uint8`` (e4m3 bytes are what
  ``mlx.core.from_fp8`` decodes).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Union

import torch

from ..layouts import Layout, Plain, ScaleColumnMajor, layout_from_name, relayout
from ..quantize import block_for
from ..recipes import Recipe, recipe_from_json
from ..tensor import ScaledTensor

__all__ = ["to_dlpack", "from_dlpack", "to_numpy", "from_numpy", "to_jax", "from_jax", "to_mlx", "from_mlx"]

_INNER = ("qdata", "scale", "global_scale", "zero_point")
#: unsigned integer dtype of each element size: the raw-bits view of any dtype
_UINT = {1: torch.uint8, 2: torch.uint16, 4: torch.uint32}
#: dtypes NumPy (and DLPack consumers without FP8) cannot hold
_NO_NUMPY = (torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e8m0fnu, torch.bfloat16)


def _check(st: Any) -> ScaledTensor:
    if not isinstance(st, ScaledTensor):
        raise TypeError(f"st: expected a breccia ScaledTensor, got {type(st).__name__}")
    return st


def _meta(st: ScaledTensor) -> dict:
    return {
        "recipe": st.recipe.to_json(),
        "role": st.role,
        "block": list(st.block),
        "shape": list(st.shape),
        "orig_dtype": str(st.orig_dtype).removeprefix("torch."),
        "layout": st.qlayout.value,
    }


def _inner(st: ScaledTensor) -> dict[str, torch.Tensor]:
    return {k: getattr(st, k).detach() for k in _INNER if getattr(st, k) is not None}


def _raw(t: torch.Tensor) -> torch.Tensor:
    """``t`` as unsigned integers of its width (a view) if other libraries may
    lack its dtype."""
    return t.view(_UINT[t.element_size()]) if t.dtype in _NO_NUMPY else t


# --------------------------------------------------------------------------- DLPack


def to_dlpack(st: ScaledTensor, *, raw: bool = False) -> dict[str, Any]:
    """DLPack capsules for ``st``'s inner tensors (sharing its memory) plus its
    metadata. ``raw``: export FP8 / e8m0 / bfloat16 as unsigned integers of
    the same width, for consumers whose DLPack lacks those types (NumPy).
    Each capsule can be consumed once."""
    out: dict[str, Any] = {
        k: torch.utils.dlpack.to_dlpack(_raw(t) if raw else t) for k, t in _inner(_check(st)).items()
    }
    out.update(_meta(st))
    return out


def _as_torch(x: Any, name: str) -> torch.Tensor:
    """A torch tensor sharing ``x``'s memory: a torch tensor, a DLPack capsule,
    any ``__dlpack__`` array, or a NumPy array (ml_dtypes dtypes included)."""
    if isinstance(x, torch.Tensor):
        return x
    if type(x).__name__ == "PyCapsule":
        return torch.utils.dlpack.from_dlpack(x)
    np_type = getattr(getattr(x, "dtype", None), "type", None)
    if type(x).__module__ == "numpy" and getattr(np_type, "__module__", "") == "ml_dtypes":
        # an ml_dtypes array (float8_*, bfloat16): DLPack has no code for it
        return torch.from_numpy(x.view(f"u{x.dtype.itemsize}"))
    if hasattr(x, "__dlpack__"):
        return torch.from_dlpack(x)
    raise TypeError(
        f"{name}: expected a torch.Tensor, a DLPack capsule or an array with __dlpack__ (NumPy, JAX, MLX, ...), "
        f"got {type(x).__name__}"
    )


def _retype(t: torch.Tensor, want: torch.dtype, name: str) -> torch.Tensor:
    """``t`` as ``want``: itself, or a bit view of an integer tensor of the same width."""
    if t.dtype == want:
        return t
    same_width = t.element_size() == torch.empty((), dtype=want).element_size()
    if same_width and not t.dtype.is_floating_point and not t.dtype.is_complex and t.dtype != torch.bool:
        return t.view(want)
    raise TypeError(f"{name}: expected {want} (or its raw bits as an integer dtype of that width), got {t.dtype}")


def from_dlpack(
    payload: Any,
    scale: Any,
    recipe: Recipe,
    *,
    role: str = "weight",
    shape: Optional[tuple] = None,
    global_scale: Any = None,
    zero_point: Any = None,
    orig_dtype: torch.dtype = torch.bfloat16,
    block: Optional[tuple] = None,
    layout: Union[Layout, str] = Plain,
) -> ScaledTensor:
    """A ScaledTensor over another library's arrays (shared, not copied).

    ``payload`` / ``scale`` / ``global_scale`` / ``zero_point``: any DLPack
    array or capsule (or NumPy array) in breccia's conventions; FP8, e8m0 and
    bfloat16 may come as raw integers of the same width. ``recipe`` / ``role``:
    how it was quantized; ``shape``: the logical shape (default: the payload's,
    its last dim doubled for 4-bit formats -- pass it for an odd last dim);
    ``block``: default the recipe's block for ``role``."""
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe: expected a breccia recipe, got {type(recipe).__name__}")
    if not isinstance(orig_dtype, torch.dtype) or not orig_dtype.is_floating_point:
        raise TypeError(f"orig_dtype: expected a floating-point torch.dtype, got {orig_dtype!r}")
    spec = recipe.spec(role)
    q = _retype(_as_torch(payload, "payload"), spec.fmt.storage, "payload")
    s = _retype(_as_torch(scale, "scale"), spec.scale_torch_dtype, "scale")
    gs = zp = None
    if spec.has_global_scale:
        if global_scale is None:
            raise ValueError(f"global_scale: {recipe.name} needs its fp32 global scale, got None")
        gs = _retype(_as_torch(global_scale, "global_scale"), torch.float32, "global_scale").reshape(())
    if spec.has_zero_point:
        if zero_point is None:
            raise ValueError(f"zero_point: {recipe.name} (asymmetric) needs its uint8 zero points, got None")
        zp = _retype(_as_torch(zero_point, "zero_point"), torch.uint8, "zero_point")
    if shape is None:
        shape = tuple(q.shape)
        if spec.fmt.packed and shape:
            shape = shape[:-1] + (shape[-1] * 2,)
    shape = tuple(int(v) for v in shape)
    block = tuple(block) if block is not None else block_for(spec.block, len(shape))
    layout = layout_from_name(layout) if isinstance(layout, str) else layout
    if not isinstance(layout, Layout):
        raise TypeError(f"layout: expected a breccia layout or its name, got {layout!r}")
    for name, t in (("scale", s), ("global_scale", gs), ("zero_point", zp)):
        if t is not None and t.device != q.device:
            raise ValueError(f"{name}: expected it on the payload's device {q.device}, got {t.device}")
    st = ScaledTensor(
        q, s, recipe=recipe, role=role, block=block, shape=shape, orig_dtype=orig_dtype,
        global_scale=gs, zero_point=zp, qlayout=layout,
    )
    if layout in (Plain, ScaleColumnMajor):
        try:
            st.check_consistent()
        except ValueError as e:
            raise ValueError(f"payload/scale: do not fit shape {shape} and block {block}: {e}") from None
    return st


def _from_dict(arrays: Mapping, name: str) -> ScaledTensor:
    if not isinstance(arrays, Mapping) or "qdata" not in arrays or "scale" not in arrays:
        raise TypeError(f"{name}: expected the dict a to_* function returned (qdata, scale, recipe, ...), "
                        f"got {type(arrays).__name__}")
    recipe = arrays.get("recipe")
    if isinstance(recipe, str):
        recipe = recipe_from_json(recipe)
    if not isinstance(recipe, Recipe):
        raise ValueError(f"{name}['recipe']: expected a recipe or its JSON, got {recipe!r}")
    dt = arrays.get("orig_dtype", "bfloat16")
    dt = getattr(torch, dt.removeprefix("torch."), None) if isinstance(dt, str) else dt
    return from_dlpack(
        arrays["qdata"], arrays["scale"], recipe,
        role=arrays.get("role", "weight"), shape=arrays.get("shape"), block=arrays.get("block"),
        global_scale=arrays.get("global_scale"), zero_point=arrays.get("zero_point"),
        orig_dtype=dt, layout=arrays.get("layout", "Plain"),
    )


# --------------------------------------------------------------------------- NumPy


def to_numpy(st: ScaledTensor, *, typed: bool = True) -> dict[str, Any]:
    """``st``'s inner tensors as NumPy arrays that share its memory (CPU
    tensors; others are copied to the host), plus metadata. ``typed``: FP8,
    e8m0 and bfloat16 as ml_dtypes views; False: as raw uint8 / uint16."""
    out: dict[str, Any] = {}
    for k, t in _inner(_check(st)).items():
        arr = _raw(t).cpu().numpy()
        if typed and t.dtype in _NO_NUMPY:
            import ml_dtypes

            arr = arr.view(getattr(ml_dtypes, str(t.dtype).removeprefix("torch.")))
        out[k] = arr
    out.update(_meta(st))
    return out


def from_numpy(arrays: Mapping[str, Any]) -> ScaledTensor:
    """Inverse of :func:`to_numpy` (shares the arrays' memory)."""
    return _from_dict(arrays, "arrays")


# --------------------------------------------------------------------------- JAX


def to_jax(st: ScaledTensor) -> dict[str, Any]:
    """``st``'s inner tensors as JAX arrays, zero-copy through DLPack (FP8 and
    e8m0 included), plus metadata. Strided ``ScaleColumnMajor`` scales are
    first made row-major (``layout`` then reads ``Plain``)."""
    import jax.dlpack

    st = _check(st)
    if st.qlayout is ScaleColumnMajor:
        st = relayout(st, Plain)
    out: dict[str, Any] = {k: jax.dlpack.from_dlpack(t.contiguous()) for k, t in _inner(st).items()}
    out.update(_meta(st))
    return out


def from_jax(arrays: Mapping[str, Any]) -> ScaledTensor:
    """Inverse of :func:`to_jax` (zero-copy)."""
    return _from_dict(arrays, "arrays")


# --------------------------------------------------------------------------- MLX


def to_mlx(st: ScaledTensor) -> dict[str, Any]:
    """``st``'s inner tensors as MLX arrays (copied: MLX copies every CPU
    import) plus metadata; FP8 payloads and 1-byte scales as ``uint8``."""
    import mlx.core as mx

    st = _check(st)
    if st.qlayout is ScaleColumnMajor:
        st = relayout(st, Plain)
    out: dict[str, Any] = {}
    for k, t in _inner(st).items():
        if t.dtype in _NO_NUMPY and t.dtype != torch.bfloat16:  # MLX has bfloat16, no FP8
            t = t.view(torch.uint8)
        out[k] = mx.from_dlpack(t.contiguous())
    out.update(_meta(st))
    return out


def from_mlx(arrays: Mapping[str, Any]) -> ScaledTensor:
    """Inverse of :func:`to_mlx` (shares MLX's buffers through DLPack)."""
    return _from_dict(arrays, "arrays")
