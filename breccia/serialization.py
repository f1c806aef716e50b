"""``torch.save`` / ``torch.load(weights_only=True)`` support.

A pickled ScaledTensor holds its inner tensors and plain context (recipe
dataclasses, a layout enum, a role string, a block tuple, a dtype). Those
classes are registered as safe globals, so the weights-only unpickler -- which
refuses arbitrary code -- can rebuild them and nothing else.
"""

from __future__ import annotations

import torch

from .layouts import Layout
from .recipes import RECIPES
from .tensor import ScaledTensor

#: everything a pickled ScaledTensor refers to
SAFE_GLOBALS = [ScaledTensor, Layout, *RECIPES.values()]

torch.serialization.add_safe_globals(SAFE_GLOBALS)
