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
from .layouts import Layout, Packed, Plain, relayout
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
from .distributed.weight import TrainingWeight
from .training import AmaxHistory, scaled_linear

__all__ = ["convert", "default_layout", "dequantize_model", "converted_layers", "incompatibility", "sync_amax"]

log = logging.getLogger("breccia")

_MODES = ("inference", "training")


def incompatibility(recipe: Recipe, module: nn.Linear) -> Optional[str]:
    """Why ``recipe`` cannot take this linear layer's GEMMs, or None.

    The limit is the reduction dim K (``in_features``) of the forward GEMM,
    as the fast kernels want it: a multiple of 16 for FP8, whole 32-element
    MX blocks, whole 16-element NVFP4 blocks, whole INT4 groups. (An odd
    ``out_features`` only costs the backward GEMMs the faster route.)"""
    k = module.in_features
    if isinstance(recipe, (DelayedScaling, Float8CurrentScaling, Float8BlockScaling)):
        if k % 16:
            return f"FP8 GEMMs need in_features a multiple of 16, got {k}"
    elif isinstance(recipe, MXFP8BlockScaling):
        if k % 32:
            return f"MXFP8 needs in_features a multiple of 32 (whole MX blocks), got {k}"
    elif isinstance(recipe, NVFP4BlockScaling):
        if k % 16:
            return f"NVFP4 needs in_features a multiple of 16 (whole NVFP4 blocks), got {k}"
    elif isinstance(recipe, INT4Scaling):
        if k % recipe.group_size:
            return f"INT4 needs in_features a multiple of group_size={recipe.group_size}, got {k}"
    return None


def _training_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return scaled_linear(x, self.weight, self.bias, self._breccia_recipe, getattr(self, "breccia_amax", None))


def default_layout(recipe: Recipe, device: torch.device) -> Layout:
    """The layout ``convert`` gives an inference weight: ``Packed`` for INT4
    on CUDA, and for NVFP4 (1x16 blocks) on CUDA GPUs without FP4 tensor
    cores (sm < 100), where NVFP4 then runs weight-only through the W4A16
    kernel (:mod:`breccia.kernels.w4a16_routes`); ``Plain`` otherwise."""
    if device.type != "cuda":
        return Plain
    if isinstance(recipe, INT4Scaling):
        return Packed
    if isinstance(recipe, NVFP4BlockScaling) and recipe.weight_block == (1, 16):
        return Packed if torch.cuda.get_device_capability(device)[0] < 10 else Plain
    return Plain


def convert(
    model: nn.Module,
    recipe: Recipe,
    mode: str = "inference",
    filter_fn: Optional[Callable[[nn.Module, str], bool]] = None,
    *,
    skip_incompatible: bool = False,
    layout: Optional[Layout] = None,
) -> nn.Module:
    """Convert ``model``'s ``nn.Linear`` layers to ``recipe`` in place and
    return the model.

    ``filter_fn(module, fqn) -> bool`` chooses layers (default: every linear
    layer). A chosen layer whose shape the recipe cannot take raises
    ``ValueError`` naming it, unless ``skip_incompatible=True`` (then it stays
    high precision and is logged). The converted layers are logged and listed
    by :func:`converted_layers`. Converting a converted model raises.

    ``layout`` (inference only): the layout every weight is put in, once,
    here; by default :func:`default_layout` (``breccia.Packed`` -- the W4A16
    kernels' layout -- for INT4 on CUDA, and for NVFP4 on CUDA GPUs without
    FP4 tensor cores). An NVFP4 weight in ``Packed`` is weight-only (the
    activation stays in high precision); ``layout=breccia.Plain`` keeps NVFP4
    W4A4, ``layout=breccia.Packed`` makes it weight-only on any device."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe: expected a breccia recipe, got {type(recipe).__name__}")
    if mode not in _MODES:
        raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")
    if layout is not None and (not isinstance(layout, Layout) or mode != "inference"):
        raise ValueError(f"layout: expected a breccia layout with mode='inference', got {layout!r} (mode={mode!r})")
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

    done, replaced = [], {}
    for fqn, m in chosen:
        if fqn in skipped:
            continue
        old = m.weight
        if id(old) not in replaced:  # a tied weight is converted once
            if mode == "inference":
                st = cast(old.detach(), recipe, "weight")
                want = layout if layout is not None else default_layout(recipe, st.device)
                if want is not Plain:
                    st = relayout(st, want)  # once, here: the kernels read it as it is
                new = nn.Parameter(st, requires_grad=False)
            else:
                new = nn.Parameter(TrainingWeight(old.detach(), recipe), requires_grad=old.requires_grad)
            replaced[id(old)] = (old, new)  # holding `old` keeps its id from being reused
        m.weight = replaced[id(old)][1]
        if mode == "training":
            if isinstance(recipe, DelayedScaling):
                m.breccia_amax = AmaxHistory(recipe.amax_history_len, device=old.device)
            m.forward = types.MethodType(_training_forward, m)
        m._breccia_recipe = recipe
        m._breccia_mode = mode
        done.append(fqn)
    _retie(model, replaced)
    log.info("breccia.convert: %d layer(s) to %r (%s): %s", len(done), recipe, mode, ", ".join(done))
    return model


def _retie(model: nn.Module, replaced: dict) -> None:
    """Point every other module that shared a converted weight (weight tying,
    e.g. an embedding) at its replacement."""
    if not replaced:
        return
    for m in model.modules():
        for name, p in list(m._parameters.items()):
            if p is not None and id(p) in replaced and p is replaced[id(p)][0]:
                m._parameters[name] = replaced[id(p)][1]


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
        elif isinstance(m.weight, TrainingWeight):
            m.weight = nn.Parameter(m.weight._data, requires_grad=m.weight.requires_grad)
        if "forward" in m.__dict__:
            del m.forward
        if hasattr(m, "breccia_amax"):
            del m.breccia_amax
        del m._breccia_recipe
        del m._breccia_mode
    return model


def sync_amax(model: nn.Module, group=None) -> int:
    """All-reduce (MAX) every DelayedScaling amax history across ranks, so all
    ranks derive the same scales; call it once per step. Under FSDP2 it also
    records each weight's amax (taken from its shard at the all-gather).
    Returns the number of histories (a no-op outside ``torch.distributed``)."""
    from torch.distributed.tensor import DTensor

    # under FSDP2 each rank's weight amax waits on its shard (see distributed.fsdp)
    for m in model.modules():
        w = getattr(m, "weight", None)
        local = w._local_tensor if isinstance(w, DTensor) else w
        if isinstance(local, TrainingWeight) and local.pending_amax is not None and hasattr(m, "breccia_amax"):
            hist = m.breccia_amax.get("weight")
            with torch.no_grad():
                hist.copy_(torch.cat([local.pending_amax.reshape(1).to(hist.dtype), hist[:-1]]))
            local.pending_amax = None
    hists = [b for m in model.modules() if isinstance(m, AmaxHistory) for b in m.buffers()]
    if hists and torch.distributed.is_available() and torch.distributed.is_initialized():
        flat = torch.cat([h.reshape(-1) for h in hists])
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.MAX, group=group)
        offset = 0
        for h in hists:
            h.copy_(flat[offset : offset + h.numel()].view_as(h))
            offset += h.numel()
    return len(hists)
