"""Reading and writing files: breccia's safetensors format (see
``docs/format.md``) and the atomic writers the checkpoint code shares."""

from .safetensors import (
    FORMAT_VERSION,
    BrecciaWriter,
    SafetensorsFile,
    SafetensorsWriter,
    TensorInfo,
    atomic_write,
    load_safetensors,
    open_safetensors,
    read_header,
    save_safetensors,
    write_safetensors,
)

__all__ = [
    "FORMAT_VERSION",
    "BrecciaWriter",
    "SafetensorsFile",
    "SafetensorsWriter",
    "TensorInfo",
    "atomic_write",
    "load_safetensors",
    "open_safetensors",
    "read_header",
    "save_safetensors",
    "write_safetensors",
]
