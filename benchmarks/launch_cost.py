"""Host time per call of each layer of the Triton block-scaled GEMM's launch
path, from ``F.linear`` on ScaledTensors down to the compiled kernel.

Eager speed at mid-size shapes (4096^3: a 0.13 ms kernel) is decided by the
host, so this measures where a call's microseconds go: each layer is called
back to back at a tiny shape (the GPU keeps up, so the wall time per call is
the host's), then Python's profiler lists the busiest functions of the
user-level call. Run on a Hopper GPU:

    python benchmarks/launch_cost.py [--out FILE]

Writes ``launch-cost-<device>.md`` (``results_path``).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
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
from breccia.kernels.triton import gemm_wgmma
from breccia.kernels.triton.gemm_blockwise import Config, blockwise_mm

from results_path import result_path  # noqa: E402  (benchmarks/ is on sys.path)

V6 = Config(128, 128, 256, 4, 3, 6)


def host_us(fn: Callable[[], object], calls: int = 2000) -> float:
    """Microseconds of host time a call (the GPU work is tiny and queued)."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - t) / calls * 1e6
    torch.cuda.synchronize()
    return host


def layers(m: int, n: int, k: int) -> list[tuple[str, Optional[Callable[[], object]]]]:
    recipe = breccia.Float8BlockScaling()
    rowwise = breccia.Float8CurrentScaling(granularity="row")
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    x_st, w_st = breccia.cast(x, recipe, "input"), breccia.cast(w, recipe, "weight")
    b = w_st.t()
    qa, sa, qb, sb = x_st.qdata, x_st.scale, b.qdata, b.scale
    cs_a, cs_b = cuda_routes.cublas_blockwise_scales(sa, sb, m)
    qbk = qb if qb.stride(0) == 1 else qb.t().contiguous().t()
    sa_t = gemm_wgmma.tma_rows(sa.t())
    out: list[tuple[str, Optional[Callable[[], object]]]] = [
        (f"F.linear on ScaledTensors ({route_for(x_st, b).name} route)", lambda: F.linear(x_st, w_st)),
        ("torch._scaled_mm blockwise, scales ready", lambda: torch._scaled_mm(qa, qbk, cs_a, cs_b,
                                                                              out_dtype=torch.bfloat16)),
        ("run_blockwise_triton (custom op)", lambda: cuda_routes.run_blockwise_triton(x_st, b, None,
                                                                                   torch.bfloat16)),
        ("blockwise_mm, tuner's pick", lambda: blockwise_mm(qa, sa, qb, sb)),
        (f"blockwise_mm, config {tuple(V6)}", lambda: blockwise_mm(qa, sa, qb, sb, config=V6)),
        ("scaled_wgmma_mm", lambda: gemm_wgmma.scaled_wgmma_mm(qa, qb, sa_t, sb, 128, V6, torch.bfloat16,
                                                               None, 128)),
        ("torch.empty (M, N) bf16", lambda: torch.empty((m, n), dtype=torch.bfloat16, device="cuda")),
        ("F.linear bf16", lambda: F.linear(x, w)),
        ("breccia.cast, FP8 rowwise", lambda: breccia.cast(x, rowwise, "input")),
        ("breccia.cast, FP8 1x128", lambda: breccia.cast(x, recipe, "input")),
        ("breccia.cast_with_transpose, FP8 1x128", lambda: breccia.api.cast_with_transpose(x, recipe, "input")),
    ]
    return out


def profile(fn: Callable[[], object], calls: int = 500, top: int = 25) -> str:
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    torch.cuda.synchronize()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(top)
    return s.getvalue()


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="markdown path (default: results/launch-cost-<device>.md)")
    p.add_argument("--shape", type=int, nargs=3, default=(256, 256, 512), metavar=("M", "N", "K"))
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("launch_cost.py needs a CUDA GPU")
        return 1
    m, n, k = args.shape
    rows = []
    for what, fn in layers(m, n, k):
        try:
            us = host_us(fn)
            rows.append(f"| {what} | {us:.1f} |")
        except Exception as e:  # noqa: BLE001  (a layer that cannot run here is reported, not fatal)
            rows.append(f"| {what} | error: {str(e).splitlines()[0][:100]} |")
        print(rows[-1], flush=True)
    named = dict(layers(m, n, k))
    profs = {what: profile(named[what]) for what in list(named)[:5:2]}  # F.linear, both Triton launches
    for what, prof in profs.items():
        print(what, prof, sep="\n")
    text = "\n".join([
        f"# Host time per call of the Triton block-scaled GEMM's launch path, {m}x{n}x{k}",
        "",
        f"_{environment_line()}_",
        "",
        "| layer | host us / call |",
        "| --- | ---: |",
        *rows,
        "",
        *(line for what, prof in profs.items()
          for line in (f"Profile of {what} (500 calls, by own time):", "", "```", prof.strip(), "```", "")),
    ])  # fmt: skip
    write_text_atomic(args.out or result_path("launch-cost"), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
