"""Accuracy table: SQNR and cosine of every recipe on Gaussian and Student-t weights.

Run ``python benchmarks/bench_accuracy.py``; prints the table and writes it to
``benchmarks/results/accuracy-cpu.md``. It runs the reference quantizer on the
CPU; the file name says so because other devices may round scales differently.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

try:
    import breccia  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from breccia.demo import accuracy_table, environment_line, format_table, write_text_atomic
from breccia.metrics import WEIGHT_STD, builtin_weight

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def accuracy_markdown(size: int = 2048, seed: int = 0) -> str:
    """The accuracy table for ``size`` x ``size`` bf16 weights, as Markdown."""
    shape = (size, size)
    weights = {
        "gaussian": builtin_weight(shape, kind="gaussian", seed=seed, dtype=torch.bfloat16),
        "student-t": builtin_weight(shape, kind="student_t", seed=seed, dtype=torch.bfloat16),
    }
    rows = accuracy_table(weights)
    return (
        f"# breccia accuracy: {size}x{size} weights\n\n"
        f"_{environment_line('cpu')}_\n\n"
        f"bf16 weights with std {WEIGHT_STD}: i.i.d. Gaussian, and Student-t with 3 degrees of "
        f"freedom (heavy tails), seed {seed}. SQNR and cosine are against the weight's FP32 values, "
        "computed in float64.\n\n"
        f"{format_table(rows)}\n"
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="the weights are SIZE x SIZE (default 2048)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the built-in weights (default 0)")
    parser.add_argument(
        "--output", default=os.path.join(RESULTS, "accuracy-cpu.md"), help="where to write the table"
    )
    args = parser.parse_args(argv)
    text = accuracy_markdown(args.size, args.seed)
    print(text, end="")
    write_text_atomic(args.output, text)
    print(f"\nwrote {os.path.relpath(args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
