"""breccia's own file format: ScaledTensors in plain safetensors files.

A ScaledTensor ``NAME`` is stored as its inner tensors (``NAME.qdata``,
``NAME.scale`` and, where the recipe has them, ``NAME.global_scale``,
``NAME.zero_point``), always in the ``Plain`` layout, 4-bit payloads packed
two codes per byte. The header's ``__metadata__`` holds one JSON entry,
``"breccia"``, with the format version and, per ScaledTensor, everything needed
to rebuild it (recipe, role, block, logical shape, original dtype, stored
dtypes). ``docs/format.md`` is the specification.

Every file is a valid safetensors file: the plain ``safetensors`` library (or
any other reader) opens it and sees the inner tensors. No pickle anywhere.
Writes are atomic (:mod:`breccia.io.atomic`). ``safetensors`` itself is
imported lazily, for lazy reads only: ``import breccia`` works without it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional, Union

import torch

from ..layouts import Plain, layout_from_name
from ..recipes import ROLES, Recipe, recipe_from_dict
from ..tensor import ScaledTensor
from .atomic import atomic_write, write_json_atomic
from .files import (
    _CODES,
    _STAND_INS,
    SafetensorsWriter,
    check_metadata,
    dtype_name,
    dtype_of_code,
    read_header,
    stored_dtype,
    write_safetensors,
)

__all__ = [
    "FORMAT_VERSION",
    "METADATA_KEY",
    "save_safetensors",
    "load_safetensors",
    "open_safetensors",
    "SafetensorsFile",
    "TensorInfo",
    "BrecciaWriter",
    "SafetensorsWriter",
    "atomic_write",
    "write_json_atomic",
    "write_safetensors",
    "read_header",
    "nbytes_of",
]

PathLike = Union[str, "os.PathLike[str]"]

#: version of the ``"breccia"`` metadata entry this module writes and reads
FORMAT_VERSION = 1
#: the ``__metadata__`` key holding breccia's JSON
METADATA_KEY = "breccia"
#: inner tensors of a ScaledTensor, in the order they are stored
INNER = ("qdata", "scale", "global_scale", "zero_point")

_ORIG_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _dtype_from_name(name: Any, what: str) -> torch.dtype:
    dt = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"{what}: expected a torch dtype name such as 'bfloat16', got {name!r}")
    return dt


# --------------------------------------------------------------------------- breccia flattening


def _scaled_parts(name: str, st: ScaledTensor) -> tuple[dict[str, torch.Tensor], dict]:
    """``st``'s inner tensors by stored key, and its metadata entry."""
    if st.qlayout is not Plain:
        from .. import layouts

        relayout = getattr(layouts, "relayout", None)
        if relayout is None:  # pragma: no cover - relayout is being added
            raise ValueError(f"tensors[{name!r}]: layout {st.qlayout} cannot be saved yet (only Plain)")
        st = relayout(st, Plain)
    spec = st.spec
    parts: dict[str, torch.Tensor] = {}
    inner: dict[str, dict] = {}
    for field in INNER:
        t = getattr(st, field)
        if t is None:
            continue
        key = f"{name}.{field}"
        parts[key] = t
        inner[field] = {"key": key, "dtype": dtype_name(t.dtype), "shape": list(t.shape)}
    entry = {
        "recipe": st.recipe.to_dict(),
        "role": st.role,
        "block": list(st.block),
        "layout": Plain.value,
        "shape": list(st.shape),
        "orig_dtype": dtype_name(st.orig_dtype),
        # informative for readers without breccia's recipe code; checked on load
        "spec": {"element": spec.element, "scale_format": spec.scale_format, "scale_rule": spec.scale_rule},
        "inner": inner,
    }
    return parts, entry


def _metadata_json(scaled: dict, plain_dtypes: dict) -> str:
    doc: dict[str, Any] = {"format_version": FORMAT_VERSION, "scaled": scaled}
    if plain_dtypes:
        doc["plain_dtypes"] = plain_dtypes
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


class _Flattener:
    """Collects stored tensors and metadata entries; catches key clashes."""

    def __init__(self, where: str):
        self.where = where
        self.scaled: dict[str, dict] = {}
        self.plain_dtypes: dict[str, str] = {}
        self.keys: set[str] = set()
        self.names: set[str] = set()

    def _claim(self, key: str, name: str) -> None:
        if key in self.keys:
            raise ValueError(
                f"{self.where}: stored key {key!r} (for {name!r}) clashes with another tensor's key; "
                "rename one of them"
            )
        self.keys.add(key)

    def flatten(self, name: str, value: Any) -> dict[str, torch.Tensor]:
        if not isinstance(name, str):
            raise TypeError(f"tensors: keys must be str, got {type(name).__name__} {name!r}")
        if name in self.names:
            raise ValueError(f"{self.where}: tensor {name!r} added twice")
        self.names.add(name)
        if isinstance(value, ScaledTensor):
            parts, entry = _scaled_parts(name, value)
            for key in parts:
                self._claim(key, name)
            self.scaled[name] = entry
            return parts
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"tensors[{name!r}]: expected a torch.Tensor or ScaledTensor, got {type(value).__name__}")
        self._claim(name, name)
        if value.dtype in _STAND_INS:
            self.plain_dtypes[name] = dtype_name(value.dtype)
        return {name: value}

    def metadata(self, user: Optional[Mapping[str, str]]) -> dict[str, str]:
        check_metadata(user, METADATA_KEY)
        out = dict(user or {})
        out[METADATA_KEY] = _metadata_json(self.scaled, self.plain_dtypes)
        return out


def _items(tensors: Any) -> list[tuple[str, Any]]:
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors: expected a dict (or state_dict) of tensors, got {type(tensors).__name__}")
    return list(tensors.items())


def save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: PathLike, metadata: Optional[Mapping[str, str]] = None
) -> None:
    """Save a dict (or a model ``state_dict``) of tensors and ScaledTensors to
    ``path`` in breccia's safetensors format, atomically.

    ``metadata``: extra ``str -> str`` entries for the header (the key
    ``"breccia"`` is reserved). Non-Plain layouts are stored as Plain."""
    check_metadata(metadata, METADATA_KEY)
    with BrecciaWriter(path, spill=False) as w:
        for name, value in _items(tensors):
            w.add(name, value)
        w.commit(metadata)


class BrecciaWriter:
    """:func:`save_safetensors` a tensor at a time: ``add(name, tensor)``,
    then ``commit(metadata)``. ``spill`` as for :class:`SafetensorsWriter`
    (True: at most one tensor held in memory)."""

    def __init__(self, path: PathLike, *, spill: bool = True):
        self.path = os.fspath(path)
        self._writer = SafetensorsWriter(self.path, spill=spill)
        self._flat = _Flattener(self.path)

    def add(self, name: str, value: torch.Tensor) -> list[str]:
        """Add one tensor; returns the stored keys it became."""
        parts = self._flat.flatten(name, value)
        for key, t in parts.items():
            self._writer.add(key, t)
        return list(parts)

    @property
    def nbytes(self) -> int:
        return self._writer.nbytes

    def commit(self, metadata: Optional[Mapping[str, str]] = None) -> None:
        self._writer.commit(self._flat.metadata(metadata))

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> "BrecciaWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class TensorInfo:
    """What a file says about one logical tensor, without reading its data.

    ``dtype``: the tensor's dtype (a ScaledTensor's original dtype);
    ``nbytes``: bytes it takes in the file; ``recipe`` and ``role``: None for
    a plain tensor; ``keys``: the stored keys it occupies."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    nbytes: int
    recipe: Optional[Recipe]
    role: Optional[str]
    keys: tuple[str, ...]


@dataclass(frozen=True)
class _Scaled:
    recipe: Recipe
    role: str
    block: tuple[int, ...]
    shape: tuple[int, ...]
    orig_dtype: torch.dtype
    inner: dict  # field -> (key, real dtype)


def _fail(path: str, msg: str) -> ValueError:
    return ValueError(f"{path}: {msg}")


def _parse_breccia(path: str, raw: Optional[str], header: dict) -> tuple[dict[str, _Scaled], dict[str, torch.dtype]]:
    """Validate breccia's metadata entry against the file's tensors."""
    if raw is None:  # a plain safetensors file: all tensors plain
        return {}, {}
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as e:
        raise _fail(path, f"metadata entry {METADATA_KEY!r} is not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise _fail(path, f"metadata entry {METADATA_KEY!r}: expected a JSON object, got {type(doc).__name__}")
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise _fail(
            path,
            f"breccia format version {version!r} is not supported (this breccia reads version "
            f"{FORMAT_VERSION}); upgrade breccia to read this file",
        )
    for field in ("scaled", "plain_dtypes"):
        if not isinstance(doc.get(field, {}), dict):
            raise _fail(path, f"metadata entry {METADATA_KEY!r}: {field!r} must be a JSON object")
    scaled: dict[str, _Scaled] = {}
    claimed: dict[str, str] = {}
    for name, entry in doc.get("scaled", {}).items():
        info = _parse_entry(path, name, entry, header)
        for key, _ in info.inner.values():
            if key in claimed:
                raise _fail(path, f"stored key {key!r} claimed by both {claimed[key]!r} and {name!r}")
            claimed[key] = name
        scaled[name] = info
    plain: dict[str, torch.dtype] = {}
    for key, name in doc.get("plain_dtypes", {}).items():
        dt = _dtype_from_name(name, f"{path}: plain_dtypes[{key!r}]")
        if key not in header:
            raise _fail(path, f"plain_dtypes names tensor {key!r}, which the file does not hold")
        want = _CODES[stored_dtype(dt)] if stored_dtype(dt) in _CODES else None
        if header[key]["dtype"] != want:
            got = header[key]["dtype"]
            raise _fail(path, f"tensor {key!r}: metadata says {name} (stored as {want}), header says {got}")
        plain[key] = dt
    return scaled, plain


def _parse_entry(path: str, name: str, entry: Any, header: dict) -> _Scaled:
    where = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: metadata entry must be a JSON object, got {type(entry).__name__}")
    missing = [k for k in ("recipe", "role", "block", "layout", "shape", "orig_dtype", "inner") if k not in entry]
    if missing:
        raise ValueError(f"{where}: metadata entry lacks {missing}")
    try:
        recipe = recipe_from_dict(entry["recipe"])
        role = entry["role"]
        if role not in ROLES:
            raise ValueError(f"role: expected one of {ROLES}, got {role!r}")
        spec = recipe.spec(role)
        if layout_from_name(entry["layout"]) is not Plain:
            raise ValueError(f"layout: files hold Plain tensors, got {entry['layout']!r}")
        shape = _int_list(entry["shape"], "shape", minimum=0)
        block = _int_list(entry["block"], "block", minimum=-1)
        if len(block) != len(shape):
            raise ValueError(f"block {block} has {len(block)} dims but shape {shape} has {len(shape)}")
        orig = _dtype_from_name(entry["orig_dtype"], "orig_dtype")
        if orig not in _ORIG_DTYPES:
            raise ValueError(f"orig_dtype: expected bfloat16, float16 or float32, got {entry['orig_dtype']!r}")
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: {e}") from None
    listed = entry.get("spec")
    if listed is not None:
        have = {"element": spec.element, "scale_format": spec.scale_format, "scale_rule": spec.scale_rule}
        if listed != have:
            raise ValueError(f"{where}: metadata spec {listed} disagrees with its recipe's {have}")
    want_fields = ["qdata", "scale"]
    if spec.has_global_scale:
        want_fields.append("global_scale")
    if spec.has_zero_point:
        want_fields.append("zero_point")
    inner_meta = entry["inner"]
    if not isinstance(inner_meta, dict) or sorted(inner_meta) != sorted(want_fields):
        got = sorted(inner_meta) if isinstance(inner_meta, dict) else inner_meta
        raise ValueError(f"{where}: {recipe.name} ({role}) has inner tensors {want_fields}, metadata lists {got}")
    inner: dict[str, tuple[str, torch.dtype]] = {}
    for field in want_fields:
        m = inner_meta[field]
        key = m.get("key") if isinstance(m, dict) else None
        if not isinstance(key, str):
            raise ValueError(f"{where}: inner tensor {field!r} has no stored key in the metadata")
        if key not in header:
            raise ValueError(f"{where}: inner tensor {field!r} is missing: the file holds no tensor {key!r}")
        dt = _dtype_from_name(m.get("dtype"), f"{where}: {field} dtype")
        code = header[key]["dtype"]
        want = _CODES.get(stored_dtype(dt))
        if code != want:
            raise ValueError(f"{where}: {key!r} is stored as {code}, but the metadata says {dtype_name(dt)} ({want})")
        if "shape" in m and list(m["shape"]) != list(header[key]["shape"]):
            raise ValueError(
                f"{where}: {key!r} has shape {header[key]['shape']} in the file, the metadata says {m['shape']}"
            )
        inner[field] = (key, dt)
    return _Scaled(recipe, role, tuple(block), tuple(shape), orig, inner)


def _int_list(v: Any, what: str, *, minimum: int) -> list[int]:
    if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) and x >= minimum for x in v):
        raise ValueError(f"{what}: expected a list of ints >= {minimum}, got {v!r}")
    return v


def _nbytes(header_entry: dict) -> int:
    a, b = header_entry["data_offsets"]
    return int(b) - int(a)


class SafetensorsFile:
    """A breccia (or plain) safetensors file opened lazily: the header is read
    and checked at once, tensor data only when asked for.

    ``keys()`` lists logical names (a ScaledTensor's inner tensors appear as
    one name), ``get(name)`` / ``file[name]`` reads one tensor, ``info(name)``
    describes it from the header alone, ``metadata`` is the user metadata."""

    def __init__(self, path: PathLike, device: Union[str, torch.device] = "cpu"):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"{self.path}: no such file")
        self.device = device
        self._header, meta = read_header(self.path)
        meta = dict(meta)
        self._scaled, self._plain_dtypes = _parse_breccia(self.path, meta.pop(METADATA_KEY, None), self._header)
        self.metadata: dict[str, str] = meta
        claimed = {key for s in self._scaled.values() for key, _ in s.inner.values()}
        plain = [k for k in self._header if k not in claimed]
        clash = sorted(set(plain) & set(self._scaled))
        if clash:
            raise ValueError(f"{self.path}: {clash} name both a ScaledTensor and a plain tensor")
        self._names = [*self._scaled, *plain]
        self._name_set = set(self._names)
        from safetensors import safe_open

        try:
            self._handle = safe_open(self.path, framework="pt", device=str(device))
            self._handle.__enter__()
        except Exception as e:  # SafetensorError, or a torch error on odd dtypes
            raise ValueError(f"{self.path}: the safetensors library cannot open it: {e}") from None

    def keys(self) -> list[str]:
        return list(self._names)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._name_set

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.get(name)

    def is_scaled(self, name: str) -> bool:
        return name in self._scaled

    def _raw(self, key: str) -> torch.Tensor:
        try:
            return self._handle.get_tensor(key)
        except Exception as e:
            raise ValueError(f"{self.path}: cannot read tensor {key!r}: {e}") from None

    def get(self, name: str) -> torch.Tensor:
        """One tensor (or ScaledTensor), reading only its bytes."""
        if name not in self:
            raise KeyError(f"{self.path}: no tensor {name!r} (it holds {len(self._names)} tensors)")
        s = self._scaled.get(name)
        if s is None:
            t = self._raw(name)
            dt = self._plain_dtypes.get(name)
            return t.view(dt) if dt is not None else t
        inner = {}
        for field, (key, dt) in s.inner.items():
            t = self._raw(key)
            inner[field] = t.view(dt) if t.dtype != dt else t
        try:
            st = ScaledTensor(
                inner["qdata"],
                inner["scale"],
                global_scale=inner.get("global_scale"),
                zero_point=inner.get("zero_point"),
                recipe=s.recipe,
                role=s.role,
                block=s.block,
                shape=s.shape,
                orig_dtype=s.orig_dtype,
            )
            _check_scaled(st)
        except (ValueError, TypeError, RuntimeError) as e:
            raise ValueError(f"{self.path}: tensor {name!r}: metadata disagrees with the stored tensors: {e}") from None
        return st

    def info(self, name: str) -> TensorInfo:
        """Shape, dtype, recipe and bytes of ``name`` from the header alone."""
        if name not in self:
            raise KeyError(f"{self.path}: no tensor {name!r}")
        s = self._scaled.get(name)
        if s is None:
            h = self._header[name]
            dt = self._plain_dtypes.get(name) or dtype_of_code(h["dtype"])
            return TensorInfo(name, tuple(h["shape"]), dt, _nbytes(h), None, None, (name,))
        keys = tuple(k for k, _ in s.inner.values())
        nbytes = sum(_nbytes(self._header[k]) for k in keys)
        return TensorInfo(name, s.shape, s.orig_dtype, nbytes, s.recipe, s.role, keys)

    def close(self) -> None:
        h = getattr(self, "_handle", None)
        if h is not None:
            h.__exit__(None, None, None)
            self._handle = None

    def __enter__(self) -> "SafetensorsFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SafetensorsFile({self.path!r}, {len(self._names)} tensors, {len(self._scaled)} scaled)"


def _check_scaled(st: ScaledTensor) -> None:
    """Inner tensors fit the context (shapes and dtypes)."""
    st.check_consistent()
    if st.global_scale is not None and (st.global_scale.numel() != 1 or st.global_scale.dtype != torch.float32):
        gs = st.global_scale
        raise ValueError(f"global_scale: expected one float32 value, got shape {tuple(gs.shape)} {gs.dtype}")
    if st.zero_point is not None and (
        tuple(st.zero_point.shape) != tuple(st.scale.shape) or st.zero_point.dtype != torch.uint8
    ):
        raise ValueError(
            f"zero_point: expected uint8 of the scale grid's shape {tuple(st.scale.shape)}, "
            f"got {tuple(st.zero_point.shape)} {st.zero_point.dtype}"
        )


def open_safetensors(path: PathLike, device: Union[str, torch.device] = "cpu") -> SafetensorsFile:
    """Open ``path`` lazily (use as a context manager); see :class:`SafetensorsFile`."""
    return SafetensorsFile(path, device)


def load_safetensors(path: PathLike, device: Union[str, torch.device] = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor in ``path``: ``{name: Tensor | ScaledTensor}``. A plain
    safetensors file (no breccia metadata) gives plain tensors."""
    with open_safetensors(path, device) as f:
        return {name: f.get(name) for name in f.keys()}


def nbytes_of(value: torch.Tensor) -> int:
    """Bytes ``value`` takes in a file (packed payload plus scales for a
    ScaledTensor)."""
    if isinstance(value, ScaledTensor):
        return value.nbytes_packed()
    return value.numel() * value.element_size()
