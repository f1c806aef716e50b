"""Where a benchmark writes its results: ``benchmarks/results/<stem>-<device>.<ext>``,
one rule for every script, so that runs on different GPUs never overwrite
each other's files."""

from __future__ import annotations

import os

import torch

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def device_tag() -> str:
    """``h100``, ``h200`` (any other GPU: ``gpu``), or ``cpu`` without CUDA."""
    if not torch.cuda.is_available():
        return "cpu"
    name = torch.cuda.get_device_name()
    for tag in ("H100", "H200"):
        if tag in name:
            return tag.lower()
    return "gpu"


def result_path(stem: str, ext: str = "md") -> str:
    return os.path.join(RESULTS, f"{stem}-{device_tag()}.{ext}")
