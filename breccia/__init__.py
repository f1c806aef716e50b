"""breccia: block-scaled low-precision tensors for PyTorch.

One type, :class:`ScaledTensor`, holds an FP8 / MXFP8 / NVFP4 / INT4 payload
with the scales that give it meaning, and is a real ``torch.Tensor``.
"""

from .api import cast, dequantize, requantize
from .kernels import matmul
from .convert import convert, converted_layers, dequantize_model, sync_amax
from .training import cast_ste, cast_ste_clipped, scaled_linear
from .distributed import precompute_scales
from .layouts import Layout, Packed, Plain, ScaleColumnMajor, Swizzled, relayout
from .recipes import (
    DelayedScaling,
    Float8BlockScaling,
    Float8CurrentScaling,
    INT4Scaling,
    MXFP8BlockScaling,
    NVFP4BlockScaling,
    QuantSpec,
    Recipe,
    recipe_from_json,
)
from .tensor import ScaledTensor
from .bridges.compressed_tensors import (
    from_compressed_tensors,
    load_compressed_tensors,
    save_compressed_tensors,
    to_compressed_tensors,
)
from .bridges.dlpack import from_dlpack, from_jax, from_mlx, from_numpy, to_dlpack, to_jax, to_mlx, to_numpy
from .bridges.torchao import from_torchao, to_torchao
from .bridges.deepseek import from_deepseek_v3, to_deepseek_v3
from .io import load_safetensors, open_safetensors, save_safetensors
from .checkpoint import load_checkpoint, save_checkpoint
from .bridges.transformer_engine import from_transformer_engine, to_transformer_engine
from . import serialization  # noqa: F401,E402  (registers safe globals for torch.load)

__version__ = "0.1.0"

__all__ = [
    "ScaledTensor",
    "cast",
    "dequantize",
    "requantize",
    "matmul",
    "convert",
    "converted_layers",
    "dequantize_model",
    "sync_amax",
    "precompute_scales",
    "scaled_linear",
    "cast_ste",
    "cast_ste_clipped",
    "Recipe",
    "QuantSpec",
    "DelayedScaling",
    "Float8CurrentScaling",
    "Float8BlockScaling",
    "MXFP8BlockScaling",
    "NVFP4BlockScaling",
    "INT4Scaling",
    "recipe_from_json",
    "Layout",
    "Plain",
    "ScaleColumnMajor",
    "Swizzled",
    "Packed",
    "relayout",
    "save_safetensors",
    "load_safetensors",
    "open_safetensors",
    "save_checkpoint",
    "load_checkpoint",
    "from_deepseek_v3",
    "to_deepseek_v3",
    "to_compressed_tensors",
    "from_compressed_tensors",
    "save_compressed_tensors",
    "load_compressed_tensors",
    "to_dlpack",
    "from_dlpack",
    "to_numpy",
    "from_numpy",
    "to_jax",
    "from_jax",
    "to_mlx",
    "from_mlx",
    "to_torchao",
    "from_torchao",
    "to_transformer_engine",
    "from_transformer_engine",
]
