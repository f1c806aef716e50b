"""``breccia.convert``: put a model's linear layers on a recipe.

Modules stay ``nn.Linear`` (hooks, ``state_dict`` keys and FSDP wrapping keep
working). Inference: the weight becomes a ScaledTensor parameter, once; each
call quantizes the activation. Training: the weight stays high precision and
the layer's forward runs every GEMM scaled (:func:`breccia.training.scaled_linear`).
Layers a recipe cannot take are never skipped silently.
"""

from __future__ import annotations

import logging
import types
from typing import Callable, Optional

import torch
from torch import nn

from .api import cast, dequantize
from .recipes import (
    DelayedScaling,
    Float8BlockScaling,
    Float8CurrentScaling,
    INT4Scaling,
    MXFP8BlockScaling,
    NVFP4BlockScaling,
    Recipe,
)
from .tensor import ScaledTensor
from .training import AmaxHistory, scaled_linear

__all__ = ["convert", "dequantize_model", "converted_layers", "incompatibility", "sync_amax"]

log = logging.getLogger("breccia")

_MODES = ("inference", "training")


def incompatibility(recipe: Recipe, module: nn.Linear) -> Optional[str]:
    """Why ``recipe`` cannot take this linear layer's GEMMs, or None.

    The limits are those of the fast kernels: FP8 GEMMs want K and N
    multiples of 16, MX and NVFP4 whole 32- / 16-element blocks along K, INT4
    whole groups along K."""
    n, k = module.out_features, module.in_features
    if isinstance(recipe, (DelayedScaling, Float8CurrentScaling, Float8BlockScaling)):
        if k % 16 or n % 16:
            return f"FP8 GEMMs need in_features and out_features multiples of 16, got {k} and {n}"
    elif isinstance(recipe, MXFP8BlockScaling):
        if k % 32 or n % 32:
            return f"MXFP8 needs in_features and out_features multiples of 32, got {k} and {n}"
    elif isinstance(recipe, NVFP4BlockScaling):
        if k % 16 or n % 16:
            return f"NVFP4 needs in_features and out_features multiples of 16, got {k} and {n}"
    elif isinstance(recipe, INT4Scaling):
        if k % recipe.group_size:
            return f"INT4 needs in_features a multiple of group_size={recipe.group_size}, got {k}"
    return None


def _training_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return scaled_linear(x, self.weight, self.bias, self._breccia_recipe, getattr(self, "breccia_amax", None))


def convert(
    model: nn.Module,
    recipe: Recipe,
    mode: str = "inference",
    filter_fn: Optional[Callable[[nn.Module, str], bool]] = None,
    *,
    skip_incompatible: bool = False,
) -> nn.Module:
    """Convert ``model``'s ``nn.Linear`` layers to ``recipe`` in place and
    return the model.

    ``filter_fn(module, fqn) -> bool`` chooses layers (default: every linear
    layer). A chosen layer whose shape the recipe cannot take raises
    ``ValueError`` naming it, unless ``skip_incompatible=True`` (then it stays
    high precision and is logged). The converted layers are logged and listed
    by :func:`converted_layers`. Converting a converted model raises."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe: expected a breccia recipe, got {type(recipe).__name__}")
    if mode not in _MODES:
        raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")
    already = converted_layers(model)
    if already:
        raise ValueError(f"model: already converted by breccia ({', '.join(already)}); call breccia.dequantize_model first")

    chosen = [
        (fqn, m)
        for fqn, m in model.named_modules()
        if isinstance(m, nn.Linear) and (filter_fn is None or filter_fn(m, fqn))
    ]
    bad = [(fqn, why) for fqn, m in chosen if (why := incompatibility(recipe, m))]
    if bad and not skip_incompatible:
        lines = "\n".join(f"  {fqn}: {why}" for fqn, why in bad)
        raise ValueError(
            f"{recipe.name} cannot take {len(bad)} layer(s) (exclude them with filter_fn, or pass "
            f"skip_incompatible=True to keep them in high precision):\n{lines}"
        )
    skipped = {fqn for fqn, _ in bad}
    for fqn, why in bad:
        log.warning("breccia.convert: %s stays high precision: %s", fqn, why)

    done = []
    for fqn, m in chosen:
        if fqn in skipped:
            continue
        if mode == "inference":
            st = cast(m.weight.detach(), recipe, "weight")
            m.weight = nn.Parameter(st, requires_grad=False)
        else:
            if isinstance(recipe, DelayedScaling):
                m.breccia_amax = AmaxHistory(recipe.amax_history_len, device=m.weight.device)
            m.forward = types.MethodType(_training_forward, m)
        m._breccia_recipe = recipe
        m._breccia_mode = mode
        done.append(fqn)
    log.info("breccia.convert: %d layer(s) to %r (%s): %s", len(done), recipe, mode, ", ".join(done))
    return model


def converted_layers(model: nn.Module) -> list[str]:
    """The fully qualified names of the layers breccia converted."""
    return [fqn for fqn, m in model.named_modules() if getattr(m, "_breccia_recipe", None) is not None]


def dequantize_model(model: nn.Module) -> nn.Module:
    """Undo :func:`convert`: weights back to high-precision parameters (the
    dequantized values, for inference), training hooks and state removed."""
    for _, m in model.named_modules():
        if getattr(m, "_breccia_recipe", None) is None:
            continue
        if isinstance(m.weight, ScaledTensor):
            m.weight = nn.Parameter(dequantize(m.weight), requires_grad=True)
        if "forward" in m.__dict__:
            del m.forward
        if hasattr(m, "breccia_amax"):
            del m.breccia_amax
        del m._breccia_recipe
        del m._breccia_mode
    return model


def sync_amax(model: nn.Module, group=None) -> int:
    """All-reduce (MAX) every DelayedScaling amax history across ranks, so all
    ranks derive the same scales. A no-op outside ``torch.distributed``.
    Returns the number of histories."""
    hists = [b for m in model.modules() if isinstance(m, AmaxHistory) for b in m.buffers()]
    if hists and torch.distributed.is_available() and torch.distributed.is_initialized():
        flat = torch.cat([h.reshape(-1) for h in hists])
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.MAX, group=group)
        offset = 0
        for h in hists:
            h.copy_(flat[offset : offset + h.numel()].view_as(h))
            offset += h.numel()
    return len(hists)
