"""The demo behind ``python -m breccia``: every recipe on a built-in weight,
with its true storage, accuracy and (on a GPU) quantization speed.

The benchmark scripts in ``benchmarks/`` build their tables from the same
functions, so the README, the demo and the results files agree.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import torch

from .api import cast, dequantize
from .metrics import WEIGHT_STD, builtin_weight, cosine, sqnr_db
from .recipes import (
    DelayedScaling,
    Float8BlockScaling,
    Float8CurrentScaling,
    INT4Scaling,
    MXFP8BlockScaling,
    NVFP4BlockScaling,
    Recipe,
)

__all__ = [
    "Variant",
    "DEFAULT_VARIANTS",
    "COLUMNS",
    "DEMO_COLUMNS",
    "recipe_table",
    "accuracy_table",
    "format_table",
    "describe_device",
    "environment_line",
    "write_text_atomic",
    "main",
]

TAGLINE = "block-scaled low-precision tensors (FP8, MXFP8, NVFP4, INT4) for PyTorch"

#: a row label and its recipe; ``None`` is the bf16 baseline (no scales)
Variant = tuple[str, Optional[Recipe]]

DEFAULT_VARIANTS: tuple[Variant, ...] = (
    ("bf16", None),
    ("DelayedScaling", DelayedScaling()),
    ("Float8CurrentScaling (tensor)", Float8CurrentScaling()),
    ("Float8CurrentScaling (row)", Float8CurrentScaling(granularity="row")),
    ("Float8BlockScaling (128x128)", Float8BlockScaling()),
    ("MXFP8BlockScaling (1x32)", MXFP8BlockScaling()),
    ("NVFP4BlockScaling (1x16)", NVFP4BlockScaling()),
    ("INT4Scaling (sym, g128)", INT4Scaling()),
    ("INT4Scaling (asym, g128)", INT4Scaling(symmetric=False)),
)


def _fmt_float(digits: int, suffix: str = "") -> Callable[[Any], str]:
    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float) and math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.{digits}f}{suffix}"

    return fmt


#: row key -> (column header, cell formatter). A key ``"<label>/<base>"``
#: (as :func:`accuracy_table` makes) is formatted like ``<base>``.
COLUMNS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "name": ("recipe", str),
    "bytes": ("bytes", lambda v: f"{v:,}"),
    "bits_per_element": ("bits/elem", _fmt_float(3)),
    "ratio_fp32": ("vs fp32", _fmt_float(3, "x")),
    "ratio_bf16": ("vs bf16", _fmt_float(3, "x")),
    "sqnr_db": ("SQNR dB", _fmt_float(2)),
    "cosine": ("cosine", _fmt_float(6)),
    "cast_ms": ("cast ms", _fmt_float(3)),
}

DEMO_COLUMNS = ("name", "bytes", "bits_per_element", "ratio_fp32", "sqnr_db", "cosine")


def _variants(recipes: Optional[Iterable[Union[Variant, Recipe, None]]]) -> list[Variant]:
    if recipes is None:
        return list(DEFAULT_VARIANTS)
    out: list[Variant] = []
    for item in recipes:
        if item is None:
            out.append(("bf16", None))
        elif isinstance(item, Recipe):
            out.append((item.name, item))
        elif isinstance(item, tuple) and len(item) == 2 and (item[1] is None or isinstance(item[1], Recipe)):
            out.append((str(item[0]), item[1]))
        else:
            raise TypeError(
                "recipes: expected breccia recipes, None (the bf16 baseline) or (label, recipe) "
                f"pairs, got {item!r}"
            )
    return out


def _time_cast_ms(fn: Callable[[], Any]) -> float:
    """Median milliseconds of one ``fn()`` on the current CUDA device."""
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:
        return float(do_bench(fn))
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    iters = 20
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def recipe_table(
    weight: torch.Tensor,
    recipes: Optional[Iterable[Union[Variant, Recipe, None]]] = None,
    *,
    time_cast: Optional[bool] = None,
) -> list[dict]:
    """One row per recipe variant: storage and accuracy of ``weight`` cast with it.

    Row keys: ``name``, ``bytes`` (true packed bytes: payload, scales, global
    scale, zero points), ``bits_per_element``, ``ratio_fp32`` and ``ratio_bf16``
    (bytes over the FP32 / BF16 bytes of the same tensor), ``sqnr_db`` and
    ``cosine`` (against ``weight`` in FP32), and ``cast_ms`` when ``time_cast``
    (default: when ``weight`` is on a CUDA device; ``None`` for the baseline).
    ``recipes``: recipes, ``(label, recipe)`` pairs, or ``None`` for the bf16
    baseline row; defaults to :data:`DEFAULT_VARIANTS`."""
    if not isinstance(weight, torch.Tensor) or not weight.dtype.is_floating_point:
        raise TypeError(f"weight: expected a floating-point torch.Tensor, got {weight!r:.80}")
    if time_cast is None:
        time_cast = weight.is_cuda
    ref = weight.to(torch.float32)
    n = weight.numel()
    rows = []
    for label, recipe in _variants(recipes):
        if recipe is None:
            approx = weight.to(torch.bfloat16)
            nbytes = approx.numel() * approx.element_size()
            ms = None
        else:
            st = cast(weight, recipe, role="weight")
            approx = dequantize(st, torch.float32)
            nbytes = st.nbytes_packed()
            ms = _time_cast_ms(lambda: cast(weight, recipe, role="weight")) if time_cast else None
        row = {
            "name": label,
            "bytes": nbytes,
            "bits_per_element": 8.0 * nbytes / n if n else 0.0,
            "ratio_fp32": nbytes / (4 * n) if n else 0.0,
            "ratio_bf16": nbytes / (2 * n) if n else 0.0,
            "sqnr_db": sqnr_db(ref, approx),
            "cosine": cosine(ref, approx),
        }
        if time_cast:
            row["cast_ms"] = ms
        rows.append(row)
    return rows


def accuracy_table(
    weights: Mapping[str, torch.Tensor],
    recipes: Optional[Iterable[Union[Variant, Recipe, None]]] = None,
) -> list[dict]:
    """:func:`recipe_table` on several weights, merged into one row per recipe
    with keys ``name``, ``"<label>/sqnr_db"`` and ``"<label>/cosine"`` for each
    ``label`` of ``weights``."""
    variants = _variants(recipes)
    merged: list[dict] = [{"name": label} for label, _ in variants]
    for label, w in weights.items():
        for out, row in zip(merged, recipe_table(w, variants, time_cast=False)):
            out[f"{label}/sqnr_db"] = row["sqnr_db"]
            out[f"{label}/cosine"] = row["cosine"]
    return merged


def _column(key: str) -> tuple[str, Callable[[Any], str]]:
    if key in COLUMNS:
        return COLUMNS[key]
    label, _, base = key.rpartition("/")
    if label and base in COLUMNS:
        header, fmt = COLUMNS[base]
        return f"{header} ({label})", fmt
    return key, str


def format_table(rows: Sequence[Mapping[str, Any]], columns: Optional[Sequence[str]] = None) -> str:
    """A Markdown table of ``rows``; ``columns`` (row keys) default to every key
    of the first row, in order. Text is left-aligned, numbers right-aligned."""
    if not rows:
        return ""
    keys = list(columns) if columns is not None else list(rows[0])
    specs = [_column(k) for k in keys]
    header = [h for h, _ in specs]
    body = [[fmt(r.get(k)) if r.get(k) is not None else "-" for k, (_, fmt) in zip(keys, specs)] for r in rows]
    numeric = [not all(isinstance(r.get(k), str) for r in rows) for k in keys]
    widths = [max(len(c) for c in col) for col in zip(header, *body)]

    def line(cells: Sequence[str]) -> str:
        padded = (c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric))
    return "\n".join([line(header), rule + "|", *(line(b) for b in body)])


def describe_device(device: Union[torch.device, str, None] = None) -> str:
    """``"cpu (2 threads)"`` or ``"cuda:0 (NVIDIA H100 80GB HBM3, sm90)"``."""
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        return f"cuda:{index} ({torch.cuda.get_device_name(index)}, sm{major}{minor})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)


def environment_line(device: Union[torch.device, str, None] = None) -> str:
    """One line for a results file: date, breccia and torch versions, machine, device."""
    from . import __version__

    u = platform.uname()
    cpu = platform.processor() or u.machine
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{now} · breccia {__version__} · torch {torch.__version__} · "
        f"{u.system} {u.release} {cpu} · device {describe_device(device)}"
    )


def write_text_atomic(path: Union[str, os.PathLike], text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`breccia.io.atomic.atomic_write`):
    a crash never leaves a half-written file behind."""
    from .io.atomic import atomic_write

    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
    with atomic_write(path) as f:
        f.write(text.encode("utf-8"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print every recipe's storage and accuracy on the built-in Gaussian and
    Student-t weights (and, on a GPU, its cast time)."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="breccia", description="breccia demo: every recipe on a built-in weight")
    parser.add_argument("--size", type=int, default=2048, help="the weight is SIZE x SIZE (default 2048)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the built-in weights (default 0)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.size < 1:
        parser.error(f"--size: expected a positive int, got {args.size}")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"breccia {__version__}: {TAGLINE}")
    print(f"torch {torch.__version__} · device {describe_device(device)}")
    columns = DEMO_COLUMNS + (("cast_ms",) if device.type == "cuda" else ())
    shape = (args.size, args.size)
    titles = {"gaussian": "Gaussian", "student_t": "Student-t (3 dof)"}
    for kind, title in titles.items():
        w = builtin_weight(shape, kind=kind, seed=args.seed, dtype=torch.bfloat16, device=device)
        print()
        print(f"## {title} weight, {shape[0]}x{shape[1]} bf16, std {WEIGHT_STD}")
        print()
        print(format_table(recipe_table(w), columns))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
