"""breccia: block-scaled low-precision tensors for PyTorch.

One type, :class:`ScaledTensor`, holds an FP8 / MXFP8 / NVFP4 / INT4 payload
with the scales that give it meaning, and is a real ``torch.Tensor``.
"""

from .api import cast, dequantize, requantize
from .kernels import matmul
from .convert import convert, converted_layers, dequantize_model, sync_amax
from .training import cast_ste, cast_ste_clipped, scaled_linear
from .layouts import Layout, Plain, ScaleColumnMajor, Swizzled, relayout
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
    "relayout",
]
