"""What ``breccia quantize`` and ``breccia inspect`` do.

:func:`quantize_checkpoint` streams a safetensors file or a Hugging Face
checkpoint folder one tensor at a time (``safetensors.safe_open``): each
tensor is read, quantized or kept, and its bytes go straight to the output
shard's spill file, so memory stays bounded by the largest tensor. Each input
file becomes one output shard. (compressed-tensors output is the exception:
its writer takes a whole state_dict, so the quantized model is held in memory.)

:func:`describe_checkpoint` lists what a checkpoint holds from file headers
alone (compressed-tensors checkpoints are loaded).
"""

from __future__ import annotations

import fnmatch
import math
import os
import shutil
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence, TextIO, Union

import torch

from ..api import cast
from ..recipes import (
    Float8BlockScaling,
    Float8CurrentScaling,
    INT4Scaling,
    MXFP8BlockScaling,
    NVFP4BlockScaling,
    Recipe,
)
from ..tensor import ScaledTensor
from .. import checkpoint as ckpt
from .safetensors import METADATA_KEY, atomic_write, nbytes_of, open_safetensors, read_header

__all__ = [
    "RECIPE_CHOICES",
    "DEFAULT_SKIP",
    "should_quantize",
    "quantize_checkpoint",
    "describe_checkpoint",
    "format_table",
    "Row",
]

PathLike = Union[str, "os.PathLike[str]"]

#: ``--recipe`` names
RECIPE_CHOICES: dict[str, Recipe] = {
    "fp8": Float8CurrentScaling(),
    "fp8-row": Float8CurrentScaling(granularity="row"),
    "fp8-block": Float8BlockScaling(),
    "mxfp8": MXFP8BlockScaling(),
    "nvfp4": NVFP4BlockScaling(),
    "int4": INT4Scaling(),
}

#: tensors kept in high precision by default: embeddings, norms, the output
#: head and biases (their numerics matter most and their bytes least)
DEFAULT_SKIP: tuple[str, ...] = ("*embed*", "*norm*", "*lm_head*", "*.bias")

_FLOATS = (torch.float32, torch.bfloat16, torch.float16)

#: small files of a Hugging Face folder that travel with the weights
_EXTRAS = (
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "vocab*",
    "merges.txt",
    "*.tiktoken",
    "chat_template*",
    "preprocessor_config.json",
)


def should_quantize(name: str, shape: Sequence[int], dtype: torch.dtype, skip: Iterable[str] = DEFAULT_SKIP) -> bool:
    """Quantize ``name``? Only 2-D float tensors whose name matches none of
    the ``skip`` glob patterns."""
    if len(shape) != 2 or dtype not in _FLOATS:
        return False
    return not any(fnmatch.fnmatchcase(name, p) for p in skip)


# --------------------------------------------------------------------------- progress


class _Progress:
    """tqdm if it is installed, else a one-line counter on stderr."""

    def __init__(self, total: int, enabled: bool, desc: str, stream: TextIO):
        self.enabled, self.total, self.n, self.stream = enabled, total, 0, stream
        self._bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc=desc, unit="tensor", file=stream, leave=True)
            except ImportError:
                self.desc = desc

    def update(self, name: str) -> None:
        self.n += 1
        if self._bar is not None:
            self._bar.set_postfix_str(name[-40:], refresh=False)
            self._bar.update(1)
        elif self.enabled:
            self.stream.write(f"\r{self.desc}: {self.n}/{self.total} {name[-60:]:<60}")
            self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            self.stream.write("\n")


# --------------------------------------------------------------------------- quantize


@dataclass
class Summary:
    """What :func:`quantize_checkpoint` did: tensors quantized and kept, and
    the tensor bytes read and written."""

    quantized: int = 0
    kept: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


def _source(src: str) -> tuple[list[str], Optional[dict]]:
    """Source files and config; refuses already-quantized checkpoints."""
    files, _ = ckpt.checkpoint_files(src)
    config = ckpt.read_config(src)
    if config is not None and config.get("quantization_config") is not None:
        qc = config["quantization_config"]
        method = qc.get("quant_method") if isinstance(qc, dict) else qc
        raise ValueError(
            f"{os.path.join(src, ckpt.CONFIG_NAME)}: the source is already quantized (quant_method {method!r}); "
            "quantize a high-precision checkpoint"
        )
    for f in files:
        header, meta = read_header(f)
        if METADATA_KEY in meta:
            raise ValueError(f"{f}: already a breccia file; quantize a high-precision checkpoint")
    return files, config


def _check_target(recipe: Recipe, format: str) -> None:
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe: expected a breccia recipe, got {type(recipe).__name__}")
    if format == "deepseek-v3":
        fits = isinstance(recipe, Float8BlockScaling) and recipe.weight_block == (128, 128)
        if not fits or recipe.fp8_format == "e5m2":
            raise ValueError(
                f'recipe: format="deepseek-v3" holds fp8-block (Float8BlockScaling, 128x128, e4m3) weights, '
                f"got {recipe!r}"
            )


def _out_names(files: list[str]) -> list[str]:
    # one source file becomes model.safetensors (what loaders look for);
    # shards keep their names
    if len(files) == 1:
        return [ckpt.SINGLE_NAME]
    names = [os.path.basename(f) for f in files]
    if len(set(names)) != len(names):
        raise ValueError(f"source: shard file names repeat: {names}")
    return names


def _convert(name: str, t: torch.Tensor, recipe: Recipe, skip: Sequence[str], s: Summary) -> torch.Tensor:
    s.bytes_in += t.numel() * t.element_size()
    if should_quantize(name, tuple(t.shape), t.dtype, skip):
        s.quantized += 1
        return cast(t, recipe, "weight")
    s.kept += 1
    return t


def _iter_tensors(files: list[str]):
    from safetensors import safe_open

    for f in files:
        try:
            handle = safe_open(f, framework="pt", device="cpu")
        except Exception as e:
            raise ValueError(f"{f}: the safetensors library cannot open it: {e}") from None
        with handle:
            for key in handle.keys():
                yield f, key, handle.get_tensor(key)


def _copy_extras(src: str, dst: str) -> None:
    if not os.path.isdir(src):
        return
    for name in sorted(os.listdir(src)):
        path = os.path.join(src, name)
        if os.path.isfile(path) and any(fnmatch.fnmatchcase(name, p) for p in _EXTRAS):
            with open(path, "rb") as fin, atomic_write(os.path.join(dst, name)) as fout:
                shutil.copyfileobj(fin, fout)


def _quantization_config(format: str, recipe: Recipe) -> dict:
    qc = ckpt.quantization_config(format)
    if format == "deepseek-v3" and getattr(recipe, "power_of_2_scale", False):
        qc["scale_fmt"] = "ue8m0"
    return qc


def quantize_checkpoint(
    src: PathLike,
    dst: PathLike,
    recipe: Recipe,
    format: str = "breccia",
    *,
    skip: Sequence[str] = DEFAULT_SKIP,
    progress: bool = True,
    stream: Optional[TextIO] = None,
) -> Summary:
    """Quantize the 2-D float weights of ``src`` (a ``.safetensors`` file or a
    Hugging Face folder) with ``recipe`` and write them to ``dst`` in
    ``format``: a directory (shards, index, ``config.json``), or, for
    ``"breccia"`` / ``"deepseek-v3"``, one ``.safetensors`` file if ``dst``
    ends in ``.safetensors``. Tensors matching ``skip`` stay as they are."""
    src, dst = os.fspath(src), os.fspath(dst)
    ckpt._check_format(format)
    _check_target(recipe, format)
    files, config = _source(src)
    total = sum(len(read_header(f)[0]) for f in files)
    bar = _Progress(total, progress, "quantize", stream or sys.stderr)
    summary = Summary()
    try:
        if dst.endswith(".safetensors"):
            _to_file(files, dst, recipe, format, skip, summary, bar)
        elif format == "compressed-tensors":
            _to_compressed_tensors(files, dst, recipe, skip, summary, bar, config)
        else:
            _to_directory(files, dst, recipe, format, skip, summary, bar, config)
    finally:
        bar.close()
    if not dst.endswith(".safetensors"):
        _copy_extras(src, dst)
    return summary


def _to_file(files, dst, recipe, format, skip, summary, bar) -> None:
    if format == "compressed-tensors":
        raise ValueError('dst: format="compressed-tensors" writes a checkpoint directory, not one .safetensors file')
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    with ckpt.open_writer(format, dst) as w:
        for _, key, t in _iter_tensors(files):
            value = _convert(key, t, recipe, skip, summary)
            ckpt.check_storable(format, key, value)
            w.add(key, value)
            del t, value  # before the next read
            bar.update(key)
        summary.bytes_out = w.nbytes
        w.commit()


def _to_directory(files, dst, recipe, format, skip, summary, bar, config) -> None:
    os.makedirs(dst, exist_ok=True)
    names = _out_names(files)
    weight_map: dict[str, str] = {}
    it = _iter_tensors(files)
    pending = next(it, None)
    for f, out in zip(files, names):
        with ckpt.open_writer(format, os.path.join(dst, out)) as w:
            while pending is not None and pending[0] == f:
                _, key, t = pending
                value = _convert(key, t, recipe, skip, summary)
                ckpt.check_storable(format, key, value)
                for stored in w.add(key, value):
                    if stored in weight_map:
                        raise ValueError(f"{f}: stored key {stored!r} is also in {weight_map[stored]}")
                    weight_map[stored] = out
                # drop every reference before reading the next tensor: one
                # source tensor in memory at a time
                del t, value
                pending = None
                bar.update(key)
                pending = next(it, None)
            summary.bytes_out += w.nbytes
            w.commit()
    keep = set(names)
    if len(names) > 1:
        ckpt.write_index(dst, weight_map, summary.bytes_out)
        keep.add(ckpt.INDEX_NAME)
    ckpt.write_config(dst, _quantization_config(format, recipe), config or {})
    ckpt.remove_stale(dst, keep)


def _to_compressed_tensors(files, dst, recipe, skip, summary, bar, config) -> None:
    ckpt._ct_function("save_compressed_tensors")  # fail before any work
    state: dict[str, torch.Tensor] = {}
    for _, key, t in _iter_tensors(files):
        state[key] = _convert(key, t, recipe, skip, summary)
        summary.bytes_out += nbytes_of(state[key])
        bar.update(key)
    os.makedirs(dst, exist_ok=True)
    # keeps the source model's config, with the bridge's quantization_config
    ckpt.save_compressed(state, dst, config or {}, ckpt.DEFAULT_MAX_SHARD_BYTES)


# --------------------------------------------------------------------------- inspect


@dataclass(frozen=True)
class Row:
    """One tensor of a checkpoint: ``kind`` is its recipe or dtype,
    ``nbytes`` what it takes on disk, ``full_nbytes`` what it would take in
    its unquantized dtype."""

    name: str
    shape: tuple[int, ...]
    kind: str
    nbytes: int
    full_nbytes: int
    quantized: bool


def _itemsize(dtype: Optional[torch.dtype]) -> int:
    return torch.empty((), dtype=dtype).element_size() if dtype is not None else 1


def _kind(recipe: Recipe, role: str, st_block: Any = None) -> str:
    spec = recipe.spec(role)
    block = "x".join("K" if b == -1 else str(b) for b in (st_block or spec.block))
    return f"{recipe.name} {spec.element}/{spec.scale_format} [{block}]"


def _rows_from_files(files: list[str]) -> list[Row]:
    rows = []
    for f in files:
        with open_safetensors(f) as sf:
            for name in sf.keys():
                info = sf.info(name)
                numel = math.prod(info.shape)
                if info.recipe is not None:
                    kind = _kind(info.recipe, info.role)
                    rows.append(Row(name, info.shape, kind, info.nbytes, numel * _itemsize(info.dtype), True))
                else:
                    kind = str(info.dtype).removeprefix("torch.") if info.dtype else "?"
                    rows.append(Row(name, info.shape, kind, info.nbytes, info.nbytes, False))
    return rows


def _rows_deepseek(files: list[str]) -> list[Row]:
    headers = {}
    for f in files:
        h, _ = read_header(f)
        headers.update(h)
    rows = []
    for name, h in headers.items():
        if name.endswith("_scale_inv") and name[: -len("_scale_inv")] in headers:
            continue
        n = h["data_offsets"][1] - h["data_offsets"][0]
        numel = math.prod(h["shape"])
        s = headers.get(name + "_scale_inv")
        if h["dtype"] == "F8_E4M3" and s is not None:
            n += s["data_offsets"][1] - s["data_offsets"][0]
            kind = "Float8BlockScaling e4m3/fp32 [128x128] (deepseek-v3)"
            rows.append(Row(name, tuple(h["shape"]), kind, n, numel * 2, True))  # DeepSeek runs in bf16
        else:
            rows.append(Row(name, tuple(h["shape"]), h["dtype"], n, n, False))
    return rows


def _rows_loaded(tensors: dict) -> list[Row]:
    rows = []
    for name, v in tensors.items():
        n = nbytes_of(v)
        if isinstance(v, ScaledTensor):
            full = v.numel() * _itemsize(v.orig_dtype)
            rows.append(Row(name, tuple(v.shape), _kind(v.recipe, v.role, v.block), n, full, True))
        else:
            rows.append(Row(name, tuple(v.shape), str(v.dtype).removeprefix("torch."), n, n, False))
    return rows


def describe_checkpoint(path: PathLike) -> list[Row]:
    """One :class:`Row` per logical tensor of a checkpoint directory or file."""
    path = os.fspath(path)
    fmt = ckpt.detect_format(path)
    if fmt == "compressed-tensors":
        return _rows_loaded(ckpt.load_checkpoint(path))
    files, _ = ckpt.checkpoint_files(path)
    if fmt == "deepseek-v3":
        return _rows_deepseek(files)
    return _rows_from_files(files)


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def format_table(rows: list[Row]) -> str:
    """The rows as an aligned text table plus a total line with the
    compression ratio against the unquantized dtypes."""
    head = ("tensor", "shape", "recipe / dtype", "bytes")
    body = [(r.name, "x".join(map(str, r.shape)) or "scalar", r.kind, f"{r.nbytes:,}") for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 3 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*head), "  ".join("-" * w for w in widths)]
    lines += [fmt.format(*b) for b in body]
    stored = sum(r.nbytes for r in rows)
    full = sum(r.full_nbytes for r in rows)
    ratio = full / stored if stored else 1.0
    q = sum(r.quantized for r in rows)
    lines.append(
        f"total: {len(rows)} tensors ({q} quantized), {_human(stored)} ({stored:,} bytes); "
        f"unquantized {_human(full)} ({full:,} bytes); compression {ratio:.2f}x"
    )
    return "\n".join(lines)
