"""Plain safetensors files, written and read without the ``safetensors``
library (which stays optional): dtype codes, the header, a streaming writer.

A safetensors file is an 8-byte little-endian header length ``N``, ``N``
bytes of JSON (``{key: {"dtype", "shape", "data_offsets"}, "__metadata__":
{str: str}}``, space-padded), then the tensor bytes, back to back.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, BinaryIO, Mapping, Optional, Union

import torch

from .atomic import atomic_write

__all__ = [
    "SafetensorsWriter",
    "write_safetensors",
    "read_header",
    "dtype_name",
    "stored_dtype",
    "code_of",
    "dtype_of_code",
    "check_metadata",
]

PathLike = Union[str, "os.PathLike[str]"]

#: torch dtype -> safetensors dtype code, for dtypes every safetensors reader
#: (since 0.4) knows
_CODES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.float8_e4m3fnuz: "F8_E4M3FNUZ",
    torch.float8_e5m2fnuz: "F8_E5M2FNUZ",
    torch.complex64: "C64",
    torch.uint16: "U16",
    torch.uint32: "U32",
    torch.uint64: "U64",
}
#: dtypes that old safetensors readers cannot name: stored as the unsigned
#: integer of the same width (the bytes are unchanged) and the real dtype is
#: recorded in the metadata. ``safetensors`` 0.8 writes ``F8_E8M0`` but its
#: bytes-level ``load`` and every release before it reject it.
_STAND_INS: dict[torch.dtype, torch.dtype] = {torch.float8_e8m0fnu: torch.uint8}
if hasattr(torch, "float4_e2m1fn_x2"):
    _STAND_INS[torch.float4_e2m1fn_x2] = torch.uint8


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float8_e4m3fn`` -> ``"float8_e4m3fn"`` (the name in the JSON)."""
    return str(dtype).removeprefix("torch.")


def stored_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a tensor of ``dtype`` is written as (itself, or a stand-in)."""
    return _STAND_INS.get(dtype, dtype)


def code_of(dtype: torch.dtype, key: str) -> str:
    """The safetensors dtype code ``dtype`` is written as (``key`` names the
    tensor in the error)."""
    try:
        return _CODES[stored_dtype(dtype)]
    except KeyError:
        raise ValueError(
            f"tensors[{key!r}]: dtype {dtype} cannot be stored in safetensors "
            f"(supported: {sorted(dtype_name(d) for d in (*_CODES, *_STAND_INS))})"
        ) from None


_CODE_DTYPES = {code: dt for dt, code in _CODES.items()}


def dtype_of_code(code: str) -> Optional[torch.dtype]:
    """The torch dtype of a safetensors dtype code, or None if torch has none."""
    if code == "F8_E8M0":
        return torch.float8_e8m0fnu
    return _CODE_DTYPES.get(code)


# --------------------------------------------------------------------------- plain writer


@dataclass
class _Slot:
    key: str
    code: str
    shape: tuple[int, ...]
    nbytes: int
    itemsize: int


def _slot(key: str, t: Any) -> tuple[torch.Tensor, _Slot]:
    """Check ``t`` can be stored under ``key``; its detached self and slot."""
    if not isinstance(key, str):
        raise TypeError(f"tensors: keys must be str, got {type(key).__name__} {key!r}")
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"tensors[{key!r}]: expected a torch.Tensor, got {type(t).__name__}")
    t = t.detach()
    if type(t) is not torch.Tensor:
        raise TypeError(
            f"tensors[{key!r}]: expected a plain torch.Tensor or a ScaledTensor, got {type(t).__name__}"
        )
    code = code_of(t.dtype, key)
    size = t.element_size()
    return t, _Slot(key, code, tuple(t.shape), t.numel() * size, size)


def _host(t: torch.Tensor) -> torch.Tensor:
    """The CPU, contiguous tensor whose bytes are written (one at a time, so a
    GPU state_dict is never copied to the host whole)."""
    t = t.to("cpu").contiguous()
    return t.view(_STAND_INS[t.dtype]) if t.dtype in _STAND_INS else t


def _order(slots: list[_Slot]) -> list[_Slot]:
    # widest elements first (stable): every tensor then starts at an offset
    # aligned to its element size, as the safetensors library lays files out
    return sorted(slots, key=lambda s: -s.itemsize)


def _header(slots: list[_Slot], metadata: Optional[Mapping[str, str]]) -> bytes:
    """The 8-byte little-endian length plus the JSON header, padded with
    spaces so the data starts 8-byte aligned."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for s in slots:
        header[s.key] = {"dtype": s.code, "shape": list(s.shape), "data_offsets": [offset, offset + s.nbytes]}
        offset += s.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def check_metadata(metadata: Optional[Mapping[str, str]], reserved: Optional[str] = None) -> None:
    """``metadata`` is a ``str -> str`` dict (or None) without the key ``reserved``."""
    if metadata is None:
        return
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata: expected a dict of str to str, got {type(metadata).__name__}")
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"metadata: expected str keys and values, got {k!r}: {type(v).__name__}")
    if reserved is not None and reserved in metadata:
        raise ValueError(f"metadata: the key {reserved!r} is reserved for breccia's own header entry")


def _write_tensor(f: BinaryIO, t: torch.Tensor) -> None:
    """Write ``t``'s bytes (CPU, contiguous). One call per tensor."""
    if t.numel():
        f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))


def _check_byteorder() -> None:
    if sys.byteorder != "little":  # pragma: no cover - no big-endian CI
        raise NotImplementedError("breccia.io: safetensors files are little-endian; big-endian hosts are not supported")


def write_safetensors(
    path: PathLike, tensors: Mapping[str, torch.Tensor], metadata: Optional[Mapping[str, str]] = None
) -> None:
    """Write plain tensors to ``path`` as a safetensors file, atomically."""
    with SafetensorsWriter(path, spill=False) as w:
        for key, t in tensors.items():
            w.add(key, t)
        w.commit(metadata)


class SafetensorsWriter:
    """Writes one safetensors file a tensor at a time, then :meth:`commit`
    writes it atomically. Use as a context manager; leaving it without
    :meth:`commit` discards everything.

    ``spill=True`` (streaming): each tensor's bytes go at once to an anonymous
    spill file in the target directory, so at most one tensor is held in
    memory; commit copies them behind the header. ``spill=False``: the writer
    keeps references to the tensors and writes them at commit (no extra
    copy; for tensors that are in memory anyway)."""

    _CHUNK = 16 << 20

    def __init__(self, path: PathLike, *, spill: bool = True):
        _check_byteorder()
        self.path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(self.path))
        self._body: Optional[BinaryIO] = tempfile.TemporaryFile(dir=directory) if spill else None
        self._held: Optional[dict[str, torch.Tensor]] = None if spill else {}
        self._slots: list[_Slot] = []
        self._offsets: dict[str, int] = {}
        self._keys: set[str] = set()
        self._open = True

    def add(self, key: str, tensor: torch.Tensor) -> None:
        if not self._open:
            raise RuntimeError(f"{self.path}: writer already committed or closed")
        if key in self._keys:
            raise ValueError(f"{self.path}: tensor {key!r} added twice")
        t, slot = _slot(key, tensor)
        self._keys.add(key)
        if self._body is not None:
            self._offsets[key] = self._body.tell()
            _write_tensor(self._body, _host(t))
        else:
            self._held[key] = t
        self._slots.append(slot)

    @property
    def keys(self) -> list[str]:
        return [s.key for s in self._slots]

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self._slots)

    def _copy_spilled(self, f: BinaryIO, s: _Slot) -> None:
        body = self._body
        body.seek(self._offsets[s.key])
        left = s.nbytes
        while left:
            chunk = body.read(min(left, self._CHUNK))
            if not chunk:
                raise OSError(f"{self.path}: spill file ended early while copying {s.key!r}")
            f.write(chunk)
            left -= len(chunk)

    def commit(self, metadata: Optional[Mapping[str, str]] = None) -> None:
        if not self._open:
            raise RuntimeError(f"{self.path}: writer already committed or closed")
        check_metadata(metadata)
        slots = _order(self._slots)
        if self._body is not None:
            self._body.flush()
        with atomic_write(self.path) as f:
            f.write(_header(slots, metadata))
            for s in slots:
                if self._body is not None:
                    self._copy_spilled(f, s)
                else:
                    _write_tensor(f, _host(self._held[s.key]))
        self.close()

    def close(self) -> None:
        self._open = False
        self._held = None
        if self._body is not None:
            self._body.close()
            self._body = None

    def __enter__(self) -> "SafetensorsWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------- reading


def read_header(path: PathLike) -> tuple[dict[str, dict], dict[str, str]]:
    """The raw safetensors header of ``path``: ``({key: {"dtype", "shape",
    "data_offsets"}}, metadata)``, read without the safetensors library and
    without touching tensor data. Raises ``ValueError`` for a file that is not
    a well-formed safetensors file."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: not a safetensors file: {size} bytes, shorter than the 8-byte header length")
        n = int.from_bytes(head, "little")
        if n > size - 8 or n > 100_000_000:
            raise ValueError(
                f"{path}: not a safetensors file or truncated: header length {n} but the file has {size} bytes"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a safetensors file: the header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a safetensors file: the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError(f"{path}: not a safetensors file: __metadata__ must map str to str")
    end = 0
    for key, info in header.items():
        if not _entry_ok(info):
            raise ValueError(f"{path}: not a safetensors file: bad header entry for {key!r}: {info!r}")
        end = max(end, info["data_offsets"][1])
    if 8 + n + end > size:
        raise ValueError(f"{path}: truncated: tensor data ends at byte {8 + n + end} but the file has {size} bytes")
    return header, metadata


def _is_uint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _entry_ok(info: Any) -> bool:
    if not isinstance(info, dict) or not isinstance(info.get("dtype"), str):
        return False
    shape, offsets = info.get("shape"), info.get("data_offsets")
    return (
        isinstance(shape, list)
        and all(_is_uint(d) for d in shape)
        and isinstance(offsets, list)
        and len(offsets) == 2
        and all(_is_uint(o) for o in offsets)
        and offsets[0] <= offsets[1]
    )
