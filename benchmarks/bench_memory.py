"""Memory table: true storage of one weight under every recipe.

Run ``python benchmarks/bench_memory.py``; prints the table and writes it to
``benchmarks/results/memory-cpu.md``. Storage does not depend on the device,
so this runs on the CPU.
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

from breccia.demo import environment_line, format_table, recipe_table, write_text_atomic
from breccia.metrics import builtin_weight

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
COLUMNS = ("name", "bytes", "bits_per_element", "ratio_fp32", "ratio_bf16")


def memory_markdown(size: int = 4096) -> str:
    """The memory table for a ``size`` x ``size`` bf16 weight, as Markdown."""
    w = builtin_weight((size, size), kind="gaussian", dtype=torch.bfloat16)
    rows = recipe_table(w, time_cast=False)
    return (
        f"# breccia memory: one {size}x{size} weight\n\n"
        f"_{environment_line('cpu')}_\n\n"
        "Bytes are the true storage of payload, scales, global scale and zero points "
        "(4-bit payloads packed two per byte).\n\n"
        f"{format_table(rows, COLUMNS)}\n"
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="the weight is SIZE x SIZE (default 4096)")
    parser.add_argument(
        "--output", default=os.path.join(RESULTS, "memory-cpu.md"), help="where to write the table"
    )
    args = parser.parse_args(argv)
    text = memory_markdown(args.size)
    print(text, end="")
    write_text_atomic(args.output, text)
    print(f"\nwrote {os.path.relpath(args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
