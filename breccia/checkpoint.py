"""Whole checkpoints: a directory of (sharded) safetensors files plus
``config.json``, in one of three formats.

- ``"breccia"``: breccia's safetensors format (``docs/format.md``); config
  ``quantization_config = {"quant_method": "breccia", "format_version": 1}``.
- ``"deepseek-v3"``: ``NAME`` (e4m3) + ``NAME_scale_inv`` (float32, one per
  128x128 block) for each quantized weight, everything else as-is; config
  ``{"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
  "weight_block_size": [128, 128]}`` plus ``"scale_fmt": "ue8m0"`` when every
  scale is a power of two.
- ``"compressed-tensors"``: vLLM's format, by :mod:`breccia.bridges.compressed_tensors`.

Shards follow Hugging Face: ``model.safetensors`` alone, or
``model-00001-of-0000N.safetensors`` plus ``model.safetensors.index.json``
whose ``weight_map`` maps each stored key to its file. A ScaledTensor's inner
tensors (and a DeepSeek weight and its scales) always share a shard. Every file
is written atomically; shards first, then the index, then ``config.json``.
"""

from __future__ import annotations

import glob
import importlib
import inspect
import json
import os
import re
from typing import Any, Callable, Mapping, Optional, Union

import torch

from .bridges.deepseek import deepseek_incompatibility, from_deepseek_v3, is_power_of_2_recipe, to_deepseek_v3
from .io.safetensors import (
    FORMAT_VERSION,
    METADATA_KEY,
    BrecciaWriter,
    SafetensorsWriter,
    nbytes_of,
    open_safetensors,
    read_header,
    write_json_atomic,
)
from .tensor import ScaledTensor

__all__ = [
    "FORMATS",
    "save_checkpoint",
    "load_checkpoint",
    "detect_format",
    "checkpoint_files",
    "quantization_config",
    "open_writer",
]

PathLike = Union[str, "os.PathLike[str]"]

FORMATS = ("breccia", "deepseek-v3", "compressed-tensors")
CONFIG_NAME = "config.json"
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
#: Hugging Face's default shard size
DEFAULT_MAX_SHARD_BYTES = 5 * 1000**3
_SHARD_RE = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
_SCALE_INV = "_scale_inv"
#: quant_method in config.json -> format
_METHODS = {"breccia": "breccia", "fp8": "deepseek-v3", "compressed-tensors": "compressed-tensors"}
_CT_MODULE = "breccia.bridges.compressed_tensors"


def _check_format(format: Any) -> str:
    if format not in FORMATS:
        raise ValueError(f"format: expected one of {FORMATS}, got {format!r}")
    return format


# --------------------------------------------------------------------------- writers


class DeepSeekWriter:
    """One safetensors file in DeepSeek-V3's layout: a ScaledTensor ``NAME``
    becomes ``NAME`` (e4m3) and ``NAME_scale_inv`` (float32); plain tensors are
    written as they are. Same protocol as :class:`BrecciaWriter`."""

    def __init__(self, path: PathLike, *, spill: bool = True):
        self.path = os.fspath(path)
        self._writer = SafetensorsWriter(self.path, spill=spill)

    def add(self, name: str, value: torch.Tensor) -> list[str]:
        if isinstance(value, ScaledTensor):
            weight, scale_inv = to_deepseek_v3(value)
            self._writer.add(name, weight)
            self._writer.add(name + _SCALE_INV, scale_inv)
            return [name, name + _SCALE_INV]
        self._writer.add(name, value)
        return [name]

    @property
    def nbytes(self) -> int:
        return self._writer.nbytes

    def commit(self, metadata: Optional[Mapping[str, str]] = None) -> None:
        # Hugging Face's loaders look for "format": "pt"
        self._writer.commit({"format": "pt", **(metadata or {})})

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> "DeepSeekWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_writer(format: str, path: PathLike, *, spill: bool = True) -> Union[BrecciaWriter, DeepSeekWriter]:
    """A writer for one shard of a ``"breccia"`` or ``"deepseek-v3"`` checkpoint."""
    if _check_format(format) == "breccia":
        return BrecciaWriter(path, spill=spill)
    if format == "deepseek-v3":
        return DeepSeekWriter(path, spill=spill)
    raise ValueError(f"format: {format!r} is written by breccia.bridges.compressed_tensors, not shard by shard")


def stored_keys(format: str, name: str, value: torch.Tensor) -> list[str]:
    """The keys ``value`` is stored under in a file of ``format``."""
    if not isinstance(value, ScaledTensor):
        return [name]
    if format == "deepseek-v3":
        return [name, name + _SCALE_INV]
    return [f"{name}.{k}" for k in value.inner_tensors()]


def check_storable(format: str, name: str, value: Any) -> None:
    """Raise ``ValueError`` if ``value`` cannot be stored in ``format``."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"state_dict[{name!r}]: expected a torch.Tensor or ScaledTensor, got {type(value).__name__}")
    if format != "deepseek-v3":
        return
    if isinstance(value, ScaledTensor):
        why = deepseek_incompatibility(value)
        if why is not None:
            raise ValueError(f'state_dict[{name!r}]: cannot be saved as format="deepseek-v3": {why}')
    elif value.dtype == torch.float8_e4m3fn:
        # it would read back as a DeepSeek weight with no scales
        raise ValueError(
            f'state_dict[{name!r}]: a plain float8_e4m3fn tensor cannot be saved as format="deepseek-v3" '
            "(e4m3 tensors there are quantized weights with a _scale_inv); make it a ScaledTensor"
        )
    if name.endswith(_SCALE_INV):
        raise ValueError(f'state_dict[{name!r}]: names ending in "{_SCALE_INV}" are reserved in format="deepseek-v3"')


def quantization_config(format: str, tensors: Optional[Mapping[str, torch.Tensor]] = None) -> dict:
    """The ``quantization_config`` entry of ``config.json`` for ``format``.
    ``tensors`` (deepseek-v3): decides ``scale_fmt`` (``"ue8m0"`` when every
    quantized weight has power-of-two scales)."""
    if _check_format(format) == "breccia":
        return {"quant_method": "breccia", "format_version": FORMAT_VERSION}
    if format == "deepseek-v3":
        qc = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
        scaled = [v for v in (tensors or {}).values() if isinstance(v, ScaledTensor)]
        if scaled and all(is_power_of_2_recipe(v) for v in scaled):
            qc["scale_fmt"] = "ue8m0"
        return qc
    raise ValueError("quantization_config: compressed-tensors configs come from breccia.bridges.compressed_tensors")


# --------------------------------------------------------------------------- saving


def _shard_plan(items: list[tuple[str, torch.Tensor]], max_shard_bytes: int) -> list[list[tuple[str, torch.Tensor]]]:
    """Greedy, in order: a new shard when the next tensor would overflow."""
    shards: list[list] = [[]]
    size = 0
    for name, value in items:
        n = nbytes_of(value)
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, value))
        size += n
    return shards


def _shard_name(i: int, n: int) -> str:
    return SINGLE_NAME if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def write_config(directory: str, qc: dict, base: Optional[Mapping[str, Any]] = None) -> None:
    """``config.json`` = ``base`` (or the directory's existing config) with
    ``quantization_config`` replaced by ``qc``."""
    path = os.path.join(directory, CONFIG_NAME)
    if base is None:
        base = _read_json(path) if os.path.exists(path) else {}
    if not isinstance(base, Mapping):
        raise ValueError(f"config: expected a JSON object (dict), got {type(base).__name__}")
    write_json_atomic(path, {**base, "quantization_config": qc})


def write_index(directory: str, weight_map: dict[str, str], total_size: int) -> None:
    write_json_atomic(
        os.path.join(directory, INDEX_NAME),
        {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))},
    )


def remove_stale(directory: str, keep: set[str]) -> None:
    """Drop shard files and an index left by an earlier save with another
    shard count (only names this module writes), so a loader that globs
    ``*.safetensors`` cannot mix old and new tensors."""
    for name in os.listdir(directory):
        stale = (_SHARD_RE.match(name) or name in (SINGLE_NAME, INDEX_NAME)) and name not in keep
        if stale:
            os.unlink(os.path.join(directory, name))


def save_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
    directory: PathLike,
    format: str = "breccia",
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    config: Optional[Mapping[str, Any]] = None,
) -> None:
    """Save ``state_dict`` (plain tensors and ScaledTensors) as a checkpoint
    directory in ``format``, sharded at ``max_shard_bytes`` per file.

    ``config``: the model config to write as ``config.json`` (its
    ``quantization_config`` is set for ``format``); by default an existing
    ``config.json`` in ``directory`` is kept and updated."""
    _check_format(format)
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict: expected a dict of tensors, got {type(state_dict).__name__}")
    if isinstance(max_shard_bytes, bool) or not isinstance(max_shard_bytes, int) or max_shard_bytes < 1:
        raise ValueError(f"max_shard_bytes: expected a positive int, got {max_shard_bytes!r}")
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    if format == "compressed-tensors":
        save_compressed(state_dict, directory, config, max_shard_bytes)
        return
    items = list(state_dict.items())
    keys: dict[str, str] = {}
    for name, value in items:
        check_storable(format, name, value)
        for key in stored_keys(format, name, value):
            if key in keys:
                raise ValueError(f"state_dict: stored key {key!r} of {name!r} clashes with that of {keys[key]!r}")
            keys[key] = name
    shards = _shard_plan(items, max_shard_bytes)
    weight_map: dict[str, str] = {}
    total = 0
    for i, shard in enumerate(shards):
        fname = _shard_name(i, len(shards))
        with open_writer(format, os.path.join(directory, fname), spill=False) as w:
            for name, value in shard:
                for key in w.add(name, value):
                    weight_map[key] = fname
            total += w.nbytes
            w.commit()
    names = {_shard_name(i, len(shards)) for i in range(len(shards))}
    if len(shards) > 1:
        write_index(directory, weight_map, total)
        names.add(INDEX_NAME)
    write_config(directory, quantization_config(format, state_dict), config)
    remove_stale(directory, names)


# --------------------------------------------------------------------------- locating files


def checkpoint_files(path: PathLike) -> tuple[list[str], Optional[dict[str, str]]]:
    """The safetensors files of a checkpoint and its index's ``weight_map``
    (None without an index). ``path``: a directory or one ``.safetensors`` file."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return [path], None
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such checkpoint directory or file")
    index = os.path.join(path, INDEX_NAME)
    if os.path.exists(index):
        doc = _read_json(index)
        wm = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(wm, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in wm.items()):
            raise ValueError(f"{index}: expected a JSON object with a 'weight_map' of tensor name -> file name")
        files = []
        for fname in dict.fromkeys(wm.values()):
            full = os.path.join(path, fname)
            if os.path.basename(fname) != fname or not os.path.isfile(full):
                raise ValueError(f"{index}: weight_map names file {fname!r}, which is not in {path}")
            files.append(full)
        return files, wm
    single = os.path.join(path, SINGLE_NAME)
    if os.path.isfile(single):
        return [single], None
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise ValueError(f"{path}: no *.safetensors files (and no {INDEX_NAME})")
    return files, None


def read_config(path: PathLike) -> Optional[dict]:
    """``config.json`` of a checkpoint directory, or None."""
    path = os.fspath(path)
    cfg = os.path.join(path, CONFIG_NAME) if os.path.isdir(path) else None
    if cfg is None or not os.path.exists(cfg):
        return None
    doc = _read_json(cfg)
    if not isinstance(doc, dict):
        raise ValueError(f"{cfg}: expected a JSON object, got {type(doc).__name__}")
    return doc


def detect_format(path: PathLike) -> str:
    """``"breccia"``, ``"deepseek-v3"``, ``"compressed-tensors"``, or
    ``"plain"`` (no quantization): from ``config.json``'s
    ``quantization_config``, else from the files' headers."""
    path = os.fspath(path)
    config = read_config(path)
    qc = (config or {}).get("quantization_config")
    if qc is not None:
        where = os.path.join(path, CONFIG_NAME)
        method = qc.get("quant_method") if isinstance(qc, dict) else None
        if method not in _METHODS:
            raise ValueError(
                f"{where}: quantization_config.quant_method {method!r} is not one breccia reads "
                f"(expected one of {sorted(_METHODS)})"
            )
        return _METHODS[method]
    files, _ = checkpoint_files(path)
    headers = [read_header(f) for f in files]
    if any(METADATA_KEY in meta for _, meta in headers):
        return "breccia"
    if any(k.endswith(_SCALE_INV) for h, _ in headers for k in h):
        return "deepseek-v3"
    return "plain"


# --------------------------------------------------------------------------- loading


def _check_files(files: list[str], weight_map: Optional[dict], directory: str, fmt: str, by_config: bool) -> None:
    """Each file's header agrees with the index and with config.json's format."""
    index = os.path.join(directory, INDEX_NAME)
    expected: dict[str, list[str]] = {}
    for key, fname in (weight_map or {}).items():
        expected.setdefault(fname, []).append(key)
    for f in files:
        header, meta = read_header(f)
        if by_config and fmt == "breccia" and METADATA_KEY not in meta:
            raise ValueError(
                f"{f}: config.json says quant_method 'breccia' but this file has no breccia metadata "
                f"(__metadata__[{METADATA_KEY!r}])"
            )
        if fmt == "deepseek-v3" and METADATA_KEY in meta:
            raise ValueError(f"{f}: a breccia-format file in a checkpoint whose config.json says quant_method 'fp8'")
        fname = os.path.basename(f)
        missing = [k for k in expected.get(fname, ()) if k not in header]
        if missing:
            raise ValueError(f"{index}: weight_map puts {missing[:3]} in {fname}, which does not hold them")


def _load_files(files: list[str], device: str) -> dict[str, tuple[torch.Tensor, str]]:
    out: dict[str, tuple[torch.Tensor, str]] = {}
    for f in files:
        with open_safetensors(f, device) as sf:
            for name in sf.keys():
                if name in out:
                    raise ValueError(f"{f}: tensor {name!r} is also in {out[name][1]}")
                out[name] = (sf.get(name), f)
    return out


def _check_breccia_config(path: str, config: Optional[dict]) -> None:
    qc = (config or {}).get("quantization_config")
    if qc is None:
        return
    version = qc.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{os.path.join(path, CONFIG_NAME)}: breccia format_version {version!r} is not supported "
            f"(this breccia reads {FORMAT_VERSION})"
        )


def _deepseek_scale_fmt(path: str, config: Optional[dict]) -> Optional[str]:
    qc = (config or {}).get("quantization_config") or {}
    where = os.path.join(path, CONFIG_NAME)
    if qc.get("fmt", "e4m3") != "e4m3":
        raise ValueError(f"{where}: quantization_config.fmt {qc.get('fmt')!r} is not supported (expected 'e4m3')")
    if qc.get("weight_block_size", [128, 128]) != [128, 128]:
        raise ValueError(
            f"{where}: weight_block_size {qc.get('weight_block_size')!r} is not supported (expected [128, 128])"
        )
    fmt = qc.get("scale_fmt")
    if fmt not in (None, "ue8m0"):
        raise ValueError(f"{where}: scale_fmt {fmt!r} is not supported (expected 'ue8m0' or none)")
    return fmt


def _model_dtype(config: Optional[dict]) -> torch.dtype:
    """The dtype the model runs in (``torch_dtype``, or ``dtype`` in newer
    transformers configs); DeepSeek-V3's is bfloat16."""
    name = (config or {}).get("torch_dtype") or (config or {}).get("dtype")
    return {"float16": torch.float16, "float32": torch.float32}.get(str(name), torch.bfloat16)


def _pair_deepseek(
    loaded: dict[str, tuple[torch.Tensor, str]], scale_fmt: Optional[str], orig_dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, (t, f) in loaded.items():
        if name.endswith(_SCALE_INV):
            base = name[: -len(_SCALE_INV)]
            if base not in loaded:
                raise ValueError(f"{f}: {name!r} has no weight {base!r} in the checkpoint")
            continue
        if t.dtype != torch.float8_e4m3fn:
            out[name] = t
            continue
        if name + _SCALE_INV not in loaded:
            raise ValueError(f"{f}: e4m3 weight {name!r} has no {name + _SCALE_INV!r} in the checkpoint")
        try:
            out[name] = from_deepseek_v3(t, loaded[name + _SCALE_INV][0], scale_fmt=scale_fmt, orig_dtype=orig_dtype)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{f}: tensor {name!r}: {e}") from None
    return out


def load_checkpoint(path: PathLike, device: Union[str, torch.device] = "cpu") -> dict[str, torch.Tensor]:
    """Load a checkpoint directory (or one ``.safetensors`` file) in any
    format :func:`detect_format` recognises: ``{name: Tensor | ScaledTensor}``."""
    path = os.fspath(path)
    fmt = detect_format(path)
    if fmt == "compressed-tensors":
        fn = _ct_function("load_compressed_tensors")
        return fn(path, device=device) if _accepts(fn, "device") else fn(path)
    config = read_config(path)
    files, weight_map = checkpoint_files(path)
    by_config = (config or {}).get("quantization_config") is not None
    _check_files(files, weight_map, path, fmt, by_config)
    if fmt == "breccia":
        _check_breccia_config(path, config)
    scale_fmt = _deepseek_scale_fmt(path, config) if fmt == "deepseek-v3" else None
    loaded = _load_files(files, str(device))
    if fmt == "deepseek-v3":
        return _pair_deepseek(loaded, scale_fmt, _model_dtype(config))
    return {name: t for name, (t, _) in loaded.items()}


# --------------------------------------------------------------------------- compressed-tensors


def _ct_function(name: str) -> Callable:
    """``breccia.bridges.compressed_tensors.<name>``, imported on first use."""
    try:
        mod = importlib.import_module(_CT_MODULE)
    except ModuleNotFoundError as e:
        if e.name not in (_CT_MODULE, None):
            raise  # the module exists but a dependency of it is missing
        raise NotImplementedError(
            f'format="compressed-tensors" needs {_CT_MODULE}, which is not available in this breccia yet'
        ) from None
    fn = getattr(mod, name, None)
    if fn is None:
        raise NotImplementedError(f'format="compressed-tensors" needs {_CT_MODULE}.{name}, which is missing')
    return fn


def save_compressed(
    state_dict: Mapping[str, torch.Tensor], directory: str, config: Optional[Mapping[str, Any]], max_shard_bytes: int
) -> None:
    """Dispatch to ``save_compressed_tensors``; then ``config`` (if given)
    becomes ``config.json`` with the bridge's ``quantization_config``."""
    fn = _ct_function("save_compressed_tensors")
    fn(state_dict, directory, **({"max_shard_bytes": max_shard_bytes} if _accepts(fn, "max_shard_bytes") else {}))
    if config is not None:
        written = read_config(directory) or {}
        write_config(directory, written.get("quantization_config", {}), config)


def _accepts(fn: Callable, kwarg: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return kwarg in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
