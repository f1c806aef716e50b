"""The breccia training recipes the training benchmarks measure, shared by
bench_training.py and bench_fsdp.py."""

from __future__ import annotations

from typing import Callable

import breccia

TRAINING_RECIPES = {
    "breccia tensorwise": breccia.Float8CurrentScaling(),
    "breccia rowwise": breccia.Float8CurrentScaling(granularity="row"),
    "breccia DeepSeek blockwise": breccia.Float8BlockScaling(),
    "breccia MXFP8": breccia.MXFP8BlockScaling(),
}


def breccia_variants() -> dict[str, Callable]:
    """name -> a function converting a model in place for training."""
    return {name: (lambda m, r=r: breccia.convert(m, r, mode="training")) for name, r in TRAINING_RECIPES.items()}
