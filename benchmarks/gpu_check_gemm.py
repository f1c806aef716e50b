"""Every GEMM route on a real GPU against the reference GEMM.

Run on a CUDA machine: ``python benchmarks/gpu_check_gemm.py [--output FILE]``.

1. Probes what ``torch._scaled_mm`` (cuBLAS) accepts for 1x128 x 128x128
   blockwise scaling -- M not a multiple of 4, K or N not multiples of 128,
   the weight scale's leading dimension, output dtypes, a fused bias -- and
   how far each accepted call is from the reference.
2. Runs ``F.linear(x_st, w_st)`` through every route (tensorwise, rowwise,
   blockwise cuBLAS and Triton, MXFP8 Triton) on whole and ragged shapes and
   compares it with the reference (dequantize both, fp32 matmul): relative
   error in fp32 output (< 1e-3 expected) and bf16 output.
   The grad-weight pair of blockwise training (1x128 x 128x1) likewise.
3. Checks that each route runs with ``torch.cuda.set_sync_debug_mode("error")``
   (no host sync) and replays correctly from a CUDA graph.

Writes a Markdown report (default ``benchmarks/results/gemm-gpu-check-h100.md``).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Callable, Optional, Sequence

try:
    import breccia  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import torch.nn.functional as F

import breccia
from breccia.demo import environment_line, write_text_atomic
from breccia.kernels import cuda_routes, route_for

from results_path import result_path  # noqa: E402  (benchmarks/ is on sys.path)
BLOCK = breccia.Float8BlockScaling()
MX = breccia.MXFP8BlockScaling()


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref).norm() / ref.norm()).item()


def _operands(recipe, m: int, n: int, k: int, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(m, k, device="cuda", generator=g, dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", generator=g, dtype=torch.bfloat16)
    return breccia.cast(x, recipe, "input"), breccia.cast(w, recipe, "weight")


def _deq(st) -> torch.Tensor:
    return breccia.dequantize(st, torch.float32)


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return (type(e).__name__ + ": " + (msg[0] if msg else ""))[:150].replace("|", "/")


# --------------------------------------------------------------------------- 1. cuBLAS contract


def _cm(grid: torch.Tensor, ld: int) -> torch.Tensor:
    """``grid`` (R, C) with strides (1, ld), padding zero."""
    r, c = grid.shape
    storage = grid.new_zeros((c, ld))
    storage[:, :r] = grid.t()
    return storage[:, :r].t()


def probe_cublas_blockwise() -> list[dict]:
    """Try ``_scaled_mm`` blockwise on edge cases; one row per case."""
    cases = [
        # name, M, N, K, pad M?, weight-scale ld rule, out dtype, bias
        ("base", 256, 256, 1024, False, "kb", torch.bfloat16, False),
        ("weight ld roundup(K/128,4), K/128=4", 256, 256, 512, False, "r4", torch.bfloat16, False),
        ("K/128=5, weight ld = K/128", 256, 256, 640, False, "kb", torch.bfloat16, False),
        ("K/128=5, weight ld = roundup(K/128,4)", 256, 256, 640, False, "r4", torch.bfloat16, False),
        ("M=250 unpadded", 250, 256, 512, False, "kb", torch.bfloat16, False),
        ("M=250 padded to 252", 250, 256, 512, True, "kb", torch.bfloat16, False),
        ("M=1 unpadded", 1, 256, 512, False, "kb", torch.bfloat16, False),
        ("M=1 padded to 4", 1, 256, 512, True, "kb", torch.bfloat16, False),
        ("K=576 (K % 128 = 64)", 256, 256, 576, False, "r4", torch.bfloat16, False),
        ("N=336 (N % 128 = 80)", 256, 336, 512, False, "r4", torch.bfloat16, False),
        ("out fp32", 256, 256, 512, False, "r4", torch.float32, False),
        ("out fp16", 256, 256, 512, False, "r4", torch.float16, False),
        ("fused bf16 bias", 256, 256, 512, False, "r4", torch.bfloat16, True),
    ]
    rows = []
    for name, m, n, k, pad, ld_rule, out_dtype, with_bias in cases:
        a, w = _operands(BLOCK, m, n, k)
        b = w.t()
        kb, nb = b.scale.shape
        ref = _deq(a) @ _deq(b)
        qa, sa_grid, mp = a.qdata, a.scale, m
        if pad:
            mp = (m + 3) // 4 * 4
            qa = F.pad(qa.view(torch.uint8), (0, 0, 0, mp - m)).view(qa.dtype)
            sa_grid = F.pad(sa_grid, (0, 0, 0, mp - m))
        sa = _cm(sa_grid, mp)
        sb = _cm(b.scale, kb if ld_rule == "kb" else (kb + 3) // 4 * 4)
        bias = torch.randn(n, device="cuda", dtype=out_dtype) if with_bias else None
        try:
            out = torch._scaled_mm(qa, b.qdata, sa, sb, bias=bias, out_dtype=out_dtype)[:m]
            torch.cuda.synchronize()
            err = rel_err(out, ref + (bias.float() if with_bias else 0))
            result = f"accepted, rel err {err:.2e}"
        except Exception as e:  # noqa: BLE001 - a refusal is the answer
            result = "refused: " + _short(e)
        rows.append(dict(case=name, shape=f"{m}x{n}x{k}", sa_stride=str(tuple(sa.stride())),
                         sb_stride=str(tuple(sb.stride())), result=result))  # fmt: skip
    return rows


# --------------------------------------------------------------------------- 2./3. routes


RECIPES = {
    "fp8 tensorwise": breccia.Float8CurrentScaling(),
    "fp8 rowwise": breccia.Float8CurrentScaling(granularity="row"),
    "fp8 blockwise": BLOCK,
    "mxfp8": MX,
}
SHAPES = [(256, 512, 1024), (4096, 4096, 4096), (250, 384, 640), (37, 200, 320), (1, 256, 512)]
SHAPES.append((3, 1024, 2048))


def _linear(x_st, w_st, out_dtype: torch.dtype) -> torch.Tensor:
    if out_dtype == torch.bfloat16:
        return F.linear(x_st, w_st)
    return breccia.matmul(x_st, w_st.t(), out_dtype=out_dtype)


def _graph_ok(fn: Callable[[], torch.Tensor]) -> str:
    """Capture ``fn`` in a CUDA graph, replay, compare with eager."""
    try:
        eager = fn()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fn()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = fn()
        g.replay()
        torch.cuda.synchronize()
        return "ok" if torch.equal(out, eager) else "MISMATCH"
    except Exception as e:  # noqa: BLE001
        return "failed: " + _short(e)


def _no_sync(fn: Callable[[], torch.Tensor]) -> str:
    fn()  # warm up: the Triton tuner may time configs (a sync) on first use
    torch.cuda.synchronize()
    try:
        torch.cuda.set_sync_debug_mode("error")
        fn()
        return "ok"
    except Exception as e:  # noqa: BLE001
        return "SYNC: " + _short(e)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def check_routes() -> list[dict]:
    rows = []
    for rname, recipe in RECIPES.items():
        for m, n, k in SHAPES:
            x_st, w_st = _operands(recipe, m, n, k, seed=m + n + k)
            ref = _deq(x_st) @ _deq(w_st).t()
            row = dict(recipe=rname, shape=f"{m}x{n}x{k}")
            try:
                row["route"] = route_for(x_st, w_st.t()).name
                row["err_fp32"] = rel_err(_linear(x_st, w_st, torch.float32), ref)
                row["err_bf16"] = rel_err(_linear(x_st, w_st, torch.bfloat16), ref)
                row["no_sync"] = _no_sync(lambda: F.linear(x_st, w_st))
                row["cuda_graph"] = _graph_ok(lambda: F.linear(x_st, w_st))
            except Exception as e:  # noqa: BLE001
                row["route"] = row.get("route", "?")
                row["cuda_graph"] = "ERROR " + _short(e)
                traceback.print_exc()
            rows.append(row)
            # the Triton blockwise kernel on shapes cuBLAS would take, too
            if recipe is BLOCK and row.get("route") == "fp8_blockwise_scaled_mm":
                r2 = dict(recipe=rname, shape=f"{m}x{n}x{k}", route="fp8_blockwise_triton (forced)")
                rows.append(_check_runner(r2, cuda_routes.run_blockwise_triton, x_st, w_st.t(), ref))
    return rows


def _check_runner(row: dict, run: Callable, a, b, ref: torch.Tensor) -> dict:
    """``row`` with a route runner's errors (fp32 and bf16 out) against
    ``ref``, and whether it runs without a host sync and from a CUDA graph."""
    row["err_fp32"] = rel_err(run(a, b, None, torch.float32), ref)
    row["err_bf16"] = rel_err(run(a, b, None, torch.bfloat16), ref)
    fn = lambda: run(a, b, None, torch.bfloat16)  # noqa: E731
    row["no_sync"] = _no_sync(fn)
    row["cuda_graph"] = _graph_ok(fn)
    return row


def check_wgrad_routes() -> list[dict]:
    """The grad-weight pair of blockwise training, ``dy^T (1x128) @ x (128x1)``
    (both blocked along the tokens), on cuBLAS 1x128 x 1x128 and on the Triton
    kernel, against the reference."""
    rows = []
    for m, n, k in [(4096, 4096, 16384), (14336, 4096, 4096), (256, 384, 1024), (250, 200, 640), (4, 256, 512)]:
        g = torch.Generator(device="cuda").manual_seed(m + n + k)
        dy = torch.randn(k, m, device="cuda", generator=g, dtype=torch.bfloat16)
        x = torch.randn(k, n, device="cuda", generator=g, dtype=torch.bfloat16)
        a = breccia.cast(dy.t(), BLOCK, "grad_output")
        b = breccia.cast(x.t(), BLOCK, "input").t()
        ref = _deq(a) @ _deq(b)
        runs = {route_for(a, b).name: route_for(a, b).run, "fp8_blockwise_triton (forced)": cuda_routes.run_blockwise_triton}
        for name, run in runs.items():
            row = dict(recipe="fp8 blockwise wgrad", shape=f"{m}x{n}x{k}", route=name)
            try:
                _check_runner(row, run, a, b, ref)
            except Exception as e:  # noqa: BLE001
                row["cuda_graph"] = "ERROR " + _short(e)
                traceback.print_exc()
            rows.append(row)
    return rows


def _table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = [f"{r[k]:.2e}" if isinstance(r.get(k), float) else str(r.get(k, "-")) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=None, help="default: results/gemm-gpu-check-<device>.md")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 1
    import triton

    head = (
        "# GEMM routes on the GPU against the reference\n\n"
        f"_{environment_line('cuda')} · triton {triton.__version__} · "
        f"capability {torch.cuda.get_device_capability()}_\n\n"
    )
    probe = probe_cublas_blockwise()
    text = head + "## What `torch._scaled_mm` takes for 1x128 x 128x128\n\n" + _table(probe) + "\n\n"
    print(text, flush=True)
    routes = check_routes() + check_wgrad_routes()
    text += (
        "## Every route through `F.linear` (relative error vs dequantize-both fp32 matmul)\n\n"
        + _table(routes)
        + "\n"
    )
    print(_table(routes), flush=True)
    args.output = args.output or result_path("gemm-gpu-check")
    write_text_atomic(args.output, text)
    bad = [r for r in routes if isinstance(r.get("err_fp32"), float) and r["err_fp32"] >= 1e-3]
    print(f"\nwrote {args.output}; {len(bad)} route(s) over 1e-3 in fp32")
    return 0


if __name__ == "__main__":
    sys.exit(main())
