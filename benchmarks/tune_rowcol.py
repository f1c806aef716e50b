"""Tile sweep of the fused rowwise + columnwise casts
(``quantize_rowwise_and_columnwise``) at the training benchmark's shapes.

    python benchmarks/tune_rowcol.py --out benchmarks/results/rowcol-tiles-h200.md

For each input (the FFN's activations, hidden activations and weights,
bf16) and spec (FP8 tensorwise, 1x128, MXFP8) it times every candidate tile
(tensorwise: with the transposed tile stored by TMA and by plain stores) beside the
two-step path (the rowwise cast, then a transposed copy of its payload by
``torch.compile``: for tensorwise the same result, for block specs only a
reference for the bytes moved, since their columnwise copy has its own
scales). Effective TB/s counts the input read once and
both payloads written once. ``triton.testing.do_bench`` median, L2 flushed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import triton

import breccia
from breccia.demo import environment_line, write_text_atomic
from breccia.kernels.triton import quantize as tq

SHAPES = [(16384, 4096), (16384, 14336), (14336, 4096), (4096, 14336)]
SPECS = {
    "fp8 tensorwise": (breccia.Float8CurrentScaling().spec("input"), [
        (32, 128, 4), (64, 64, 4), (64, 128, 4), (64, 128, 8), (128, 64, 4), (128, 64, 8),
        (128, 128, 8), (256, 64, 8), (32, 64, 2), (64, 64, 2), (128, 32, 4),
    ]),
    # block specs: rows picks the implementation (quantize._run_rowcol): 2 one-pass tile, 4 two passes
    "fp8 1x128": (breccia.Float8BlockScaling().spec("input"), [(4, 64, 4), (4, 32, 4), (2, 128, 4), (2, 128, 8)]),
    "mxfp8": (breccia.MXFP8BlockScaling().spec("input"), [(2, 128, 4), (2, 64, 4), (4, 64, 4)]),
}


def bench(fn) -> float:
    fn()
    torch.cuda.synchronize()
    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--specs", nargs="*", default=list(SPECS))
    p.add_argument("--json", default=None, help="also write the best tile per spec here")
    args = p.parse_args(argv)
    transpose = torch.compile(lambda q: q.t().contiguous())
    rows = []
    for shape in SHAPES:
        x = torch.randn(*shape, device="cuda", dtype=torch.bfloat16)
        nbytes = x.numel() * (x.element_size() + 2)
        for name in args.specs:
            spec, tiles = SPECS[name]
            two = bench(lambda: transpose(tq.quantize(x, spec).qdata))
            # tensorwise: the transposed tile stored by TMA, and by plain stores
            for tma in ((True, False) if name == "fp8 tensorwise" else (False,)):
                tq.TENSOR_ROWCOL_TMA = tma
                if name == "fp8 tensorwise" and not tma:
                    tiles = tiles[:4]  # plain stores: the first few tiles tell the story
                for tile in [None] + tiles:
                    cfg = tq.Config(*tile) if tile else None
                    ms = bench(lambda: tq.quantize_rowwise_and_columnwise(x, spec, config=cfg))
                    label = str(tile or "default") + (" TMA" if tma else "")
                    rows.append({"shape": f"{shape[0]}x{shape[1]}", "spec": name, "tile": label,
                                 "ms": ms, "TB/s": nbytes / ms / 1e9, "vs two steps": two / ms})
                    print(rows[-1], flush=True)
            tq.TENSOR_ROWCOL_TMA = True
            # (for block specs a bytes reference only: the transposed payload keeps the rows' scales)
            rows.append({"shape": f"{shape[0]}x{shape[1]}", "spec": name, "tile": "two steps: cast, compiled transpose",
                         "ms": two, "TB/s": nbytes / two / 1e9, "vs two steps": 1.0})
            print(rows[-1], flush=True)
    lines = ["# Fused rowwise + columnwise casts: tile sweep", "", f"_{environment_line('cuda')}_", "",
             "| shape | spec | tile (rows, width, warps) | ms | TB/s | vs two steps |", "| --- | --- | --- | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['spec']} | {r['tile']} | {r['ms']:.4f} | {r['TB/s']:.2f} | {r['vs two steps']:.2f} |")
    # the tile with the least total time over the shapes, per spec (default tile included)
    totals: dict = {}
    for r in rows:
        if not r["tile"].startswith("two steps"):
            key = (r["spec"], r["tile"])
            totals[key] = totals.get(key, 0.0) + r["ms"]
    best = {}
    for (spec, tile), ms in sorted(totals.items(), key=lambda kv: kv[1]):
        best.setdefault(spec, (tile, ms))
    lines += ["", "Least total time over the shapes: " + "; ".join(f"{k}: {t} ({ms:.3f} ms)" for k, (t, ms) in best.items())]
    write_text_atomic(args.out, "\n".join(lines) + "\n")
    if args.json:
        write_text_atomic(args.json, json.dumps({k: t for k, (t, _) in best.items()}))


if __name__ == "__main__":
    main()
