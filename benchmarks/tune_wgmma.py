"""The Hopper block-scaled GEMM loops side by side: variant 5 (one program of
two warpgroups, TMA issued between K steps) against variant 6 (persistent,
warp-specialized: a loader warpgroup and two consumer warpgroups that meet
only at the ring), on MXFP8 and DeepSeek blockwise operands at the shapes of
BENCHMARKS.md and the blockwise grad-weight shapes of the training FFN.

    python benchmarks/tune_wgmma.py --out benchmarks/results/wgmma-variants-h200.md

Each config runs on the same quantized operands and is checked against the
reference (dequantize both, fp32 matmul; relative error); the peers are timed
in the same process: bf16 ``F.linear`` and, for blockwise, cuBLAS blockwise
through breccia's route. ``triton.testing.do_bench`` median.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import torch.nn.functional as F
import triton

import breccia
from breccia.demo import environment_line, write_text_atomic
from breccia.kernels import cuda_routes, route_for
from breccia.kernels.triton.gemm_blockwise import Config, blockwise_mm
from breccia.kernels.triton.gemm_mx import mx_mm

MX = breccia.MXFP8BlockScaling()
BLOCK = breccia.Float8BlockScaling()
SHAPES = [(4096, 4096, 4096), (8192, 8192, 8192), (16384, 4096, 14336), (16384, 14336, 4096)]
WGRAD_SHAPES = [(14336, 4096, 16384), (4096, 14336, 16384)]
CHECK_SHAPES = [(1000, 1040, 1024), (300, 136, 2048)]  # ragged tiles; K a multiple of 16 (TMA)
CONFIGS = {
    "mxfp8": [Config(128, 128, 256, 8, 3, 5), Config(128, 128, 256, 4, 3, 6), Config(128, 128, 128, 4, 5, 6),
              Config(128, 128, 128, 4, 6, 6), Config(128, 128, 64, 4, 10, 6)],
    "blockwise": [Config(128, 128, 256, 8, 3, 5), Config(128, 128, 256, 4, 3, 6), Config(128, 128, 128, 4, 5, 6),
                  Config(128, 128, 128, 4, 6, 6)],
}  # fmt: skip
CONFIGS["blockwise wgrad"] = CONFIGS["blockwise"]


def _deq(st) -> torch.Tensor:
    return breccia.dequantize(st, torch.float32)


def _operands(kind: str, m: int, n: int, k: int):
    """``(a, b, peer)``: ScaledTensors a (M, K), b (K, N) and the peer's call."""
    g = torch.Generator(device="cuda").manual_seed(m + n + k)
    if kind == "blockwise wgrad":  # dW = dy^T x, both blocked along the tokens (K)
        dy = torch.randn(k, m, device="cuda", generator=g, dtype=torch.bfloat16)
        x = torch.randn(k, n, device="cuda", generator=g, dtype=torch.bfloat16)
        a = breccia.cast(dy.t(), BLOCK, "grad_output")
        b = breccia.cast(x.t(), BLOCK, "input").t()
        route = route_for(a, b)
        return a, b, ("cuBLAS " + route.name, lambda: route.run(a, b, None, torch.bfloat16))
    x = torch.randn(m, k, device="cuda", generator=g, dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", generator=g, dtype=torch.bfloat16)
    recipe = MX if kind == "mxfp8" else BLOCK
    a, wq = breccia.cast(x, recipe, "input"), breccia.cast(w, recipe, "weight")
    if kind == "mxfp8":
        return a, wq.t(), ("bf16 F.linear", lambda: F.linear(x, w))
    return a, wq.t(), ("cuBLAS blockwise", lambda: F.linear(a, wq))


def _runner(kind: str, a, b, cfg: Config, out_dtype=torch.bfloat16, bias=None) -> Callable[[], torch.Tensor]:
    if kind == "mxfp8":
        return lambda: mx_mm(a.qdata, a.scale, b.qdata, b.scale, out_dtype, bias, config=cfg)
    scale_n = cuda_routes._scale_n(b)
    return lambda: blockwise_mm(a.qdata, a.scale, b.qdata, b.scale, out_dtype, bias, config=cfg, scale_n=scale_n)


def run(kind: str, m: int, n: int, k: int, timed: bool) -> list[dict]:
    a, b, (peer_name, peer) = _operands(kind, m, n, k)
    ref = _deq(a) @ _deq(b)
    flop = 2.0 * m * n * k
    rows = []
    peer_ms = None
    if timed:
        peer_ms = triton.testing.do_bench(peer)
        rows.append(dict(kind=kind, shape=f"{m}x{n}x{k}", what=peer_name, ms=peer_ms, tflops=flop / peer_ms / 1e9))
        if kind == "blockwise":  # bf16 beside cuBLAS blockwise too
            x, w = _deq(a).bfloat16(), _deq(b).t().bfloat16().contiguous()
            ms = triton.testing.do_bench(lambda: F.linear(x, w))
            rows.append(dict(kind=kind, shape=f"{m}x{n}x{k}", what="bf16 F.linear", ms=ms, tflops=flop / ms / 1e9))
    for cfg in CONFIGS[kind]:
        row = dict(kind=kind, shape=f"{m}x{n}x{k}", what=repr(cfg))
        fn = _runner(kind, a, b, cfg)
        try:
            out = _runner(kind, a, b, cfg, torch.float32)()  # fp32 out: the error is the kernel's, not bf16's
            row["rel_err"] = ((out - ref).norm() / ref.norm()).item()
            if not timed:  # the fused bias too, at the check shapes
                bias = torch.randn(n, device="cuda", generator=torch.Generator(device="cuda").manual_seed(n))
                out = _runner(kind, a, b, cfg, torch.float32, bias)()
                row["rel_err_bias"] = ((out - ref - bias).norm() / (ref + bias).norm()).item()
            if timed:
                ms = triton.testing.do_bench(fn)
                row.update(ms=ms, tflops=flop / ms / 1e9, vs_peer=peer_ms / ms)
        except Exception as e:  # noqa: BLE001 - a failing config is a result
            row["error"] = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        rows.append(row)
        print(row, flush=True)
    return rows


def _table(rows: list[dict]) -> str:
    keys = ["kind", "shape", "what", "ms", "tflops", "vs_peer", "rel_err", "rel_err_bias", "error"]
    keys = [k for k in keys if any(k in r for r in rows)]
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k, "")
            cells.append(f"{v:.2e}" if k.startswith("rel_err") and v != "" else f"{v:.4g}" if isinstance(v, float) else str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--kinds", default="mxfp8,blockwise,blockwise wgrad")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 1
    rows = []
    for kind in args.kinds.split(","):
        for shape in CHECK_SHAPES:
            rows += run(kind, *shape, timed=False)
        for shape in WGRAD_SHAPES if kind == "blockwise wgrad" else SHAPES:
            rows += run(kind, *shape, timed=True)
    text = (
        "# Hopper block-scaled GEMM loops: variant 5 and the warp-specialized variant 6\n\n"
        f"_{environment_line('cuda')} · triton {triton.__version__} · `python benchmarks/tune_wgmma.py`_\n\n"
        "`vs_peer`: the peer's time / this config's (MXFP8: bf16 `F.linear`; blockwise: cuBLAS blockwise "
        "through breccia's route; grad-weight: cuBLAS 1x128 x 1x128). `rel_err`: the config with an fp32 "
        "output against dequantize-both fp32 matmul (`rel_err_bias`: with a fused fp32 bias, at the check "
        "shapes); times are for a bf16 output. Configs: BMxBNxBK, warps (variant 6: a consumer "
        "warpgroup's), stages, variant.\n\n"
        + _table(rows) + "\n"
    )
    print(text)
    if args.out:
        write_text_atomic(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
