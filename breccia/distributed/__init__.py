"""Distributed training and inference with ScaledTensors.

- :mod:`.weight` -- ``TrainingWeight``, the high-precision weight of a layer
  converted for training, carrying its recipe;
- :mod:`.fsdp` -- FSDP2 all-gather hooks that move payload plus scales, for
  every recipe, and ``precompute_scales``;
- :mod:`.tensor_parallel` -- ``ColwiseParallel`` / ``RowwiseParallel`` for
  converted layers, with low-precision sequence-parallel all-gathers.
"""

from .fsdp import precompute_scales
from .tensor_parallel import ColwiseParallel, PrepareModuleInput, RowwiseParallel, all_gather_quantized
from .weight import TrainingWeight

__all__ = [
    "TrainingWeight",
    "precompute_scales",
    "ColwiseParallel",
    "RowwiseParallel",
    "PrepareModuleInput",
    "all_gather_quantized",
]
