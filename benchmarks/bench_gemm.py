"""GEMM speed: breccia's routes beside the peers a user would otherwise pick.

Run on a CUDA machine: ``python benchmarks/bench_gemm.py [--sweep] [--out DIR]``.

Operands are quantized before timing (the real inference path: a quantized
weight meets a quantized activation), then every row times one product:

- ``bf16``: ``F.linear(x, w)`` in bf16 (cuBLAS);
- ``<recipe> raw``: ``torch._scaled_mm`` on the same payload, scales already
  in the layout cuBLAS wants (the floor for breccia's routing);
- ``<recipe> breccia``: ``F.linear(x_st, w_st)`` -- ScaledTensor dispatch, the
  router, any relayout it does, the kernel;
- ``<recipe> torchao``: torchao's ``Float8Tensor`` (``F.linear`` on a
  pre-quantized input and weight, no fast accumulation, like breccia);
- ``blockwise triton``: breccia's Triton block-scaled GEMM on the same
  operands (the route for shapes cuBLAS refuses);
- ``mxfp8 triton``: ``F.linear`` on MXFP8 ScaledTensors (the sm90 route).

Large shapes (BENCHMARKS.md) are timed eagerly; decode shapes (M = 1, 16,
128, N = K = 8192) are captured in CUDA graphs and their replays timed.
``triton.testing.do_bench``, median. ``--sweep`` times every candidate tile
config of the two Triton kernels instead. Writes ``gemm-<device>.md`` (table),
``gemm-<device>.json`` and ``gemm-<device>.png`` under ``--out`` (``results_path``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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

from results_path import RESULTS, result_path  # noqa: E402  (benchmarks/ is on sys.path)
LARGE = [(4096, 4096, 4096), (8192, 8192, 8192), (16384, 4096, 14336), (16384, 14336, 4096)]
DECODE = [(1, 8192, 8192), (16, 8192, 8192), (128, 8192, 8192)]
RECIPES = {
    "tensorwise": breccia.Float8CurrentScaling(),
    "rowwise": breccia.Float8CurrentScaling(granularity="row"),
    "blockwise": breccia.Float8BlockScaling(),
    "mxfp8": breccia.MXFP8BlockScaling(),
}


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def time_ms(fn: Callable[[], object], graph: bool) -> float:
    """Median ms of ``fn``; with ``graph``, of replaying a CUDA graph of it."""
    from triton.testing import do_bench

    fn()  # first call: compile, tune
    torch.cuda.synchronize()
    if not graph:
        return do_bench(fn, warmup=25, rep=100, return_mode="median")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return do_bench(g.replay, warmup=25, rep=100, return_mode="median")


# --------------------------------------------------------------------------- peers


def _raw_scaled_mm(kind: str, x_st, w_st) -> Callable[[], torch.Tensor]:
    """``torch._scaled_mm`` with everything prepared outside the timed call
    (M padded to 16 for tensorwise/rowwise and to 4 for blockwise where cuBLAS
    needs it, as a caller of the raw op must)."""
    m = x_st.shape[0]
    qa, qb = x_st.qdata, w_st.qdata.t()
    if kind == "blockwise":
        mp = _round_up(m, 4)
        if mp != m:
            qa = F.pad(qa.view(torch.uint8), (0, 0, 0, mp - m)).view(qa.dtype)
        sa, sb = cuda_routes.cublas_blockwise_scales(x_st.scale, w_st.scale.t(), mp)
    else:
        mp = m if m % 16 == 0 else _round_up(m, 16)
        if mp != m:
            qa = F.pad(qa.view(torch.uint8), (0, 0, 0, mp - m)).view(qa.dtype)
        if kind == "tensorwise":
            sa, sb = x_st.scale.reshape(()), w_st.scale.reshape(())
        else:
            sa = F.pad(x_st.scale, (0, 0, 0, mp - m), value=1.0).contiguous()
            sb = w_st.scale.t().contiguous()
    return lambda: torch._scaled_mm(qa, qb, sa, sb, out_dtype=torch.bfloat16)


def _torchao(kind: str, x: torch.Tensor, w: torch.Tensor) -> Optional[Callable[[], torch.Tensor]]:
    try:
        from torchao.float8.inference import Float8MMConfig
        from torchao.quantization import PerRow, PerTensor
        from torchao.quantization.quantize_.workflows.float8.float8_tensor import Float8Tensor
    except Exception as e:  # noqa: BLE001
        print("torchao unavailable:", e)
        return None
    gran = {"tensorwise": PerTensor(), "rowwise": PerRow()}.get(kind)
    if gran is None:
        return None  # its blockwise path autotunes 48 Triton configs per shape: too long here
    cfg = Float8MMConfig(use_fast_accum=False)
    xa = Float8Tensor.from_hp(x, granularity=gran, mm_config=cfg)
    wa = Float8Tensor.from_hp(w, granularity=gran, mm_config=cfg)
    return lambda: F.linear(xa, wa)


# --------------------------------------------------------------------------- runs


def bench_shape(m: int, n: int, k: int, graph: bool) -> list[dict]:
    g = torch.Generator(device="cuda").manual_seed(m + n + k)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=g)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=g)
    flop = 2.0 * m * n * k
    rows: list[dict] = []

    def add(what: str, fn: Optional[Callable], route: str = "") -> None:
        if fn is None:
            return
        row = dict(shape=f"{m}x{n}x{k}", what=what, route=route)
        try:
            ms = time_ms(fn, graph)
            row.update(ms=ms, tflops=flop / ms / 1e9)
            if not graph and what.endswith((" raw", " breccia", " triton")):
                # eager times include Python dispatch; a graph replay shows
                # the GPU-side cost alone (the router's extra kernels)
                row["ms_graph"] = time_ms(fn, True)
        except Exception as e:  # noqa: BLE001
            row["error"] = str(e).splitlines()[0][:120]
        rows.append(row)
        print(row, flush=True)

    add("bf16", lambda: F.linear(x, w))
    for kind, recipe in RECIPES.items():
        x_st = breccia.cast(x, recipe, "input")
        w_st = breccia.cast(w, recipe, "weight")
        route = route_for(x_st, w_st.t()).name
        if kind != "mxfp8":
            add(f"{kind} raw", _raw_scaled_mm(kind, x_st, w_st), "torch._scaled_mm")
        add(f"{kind} breccia", lambda: F.linear(x_st, w_st), route)
        if kind == "blockwise":
            b = w_st.t()
            add("blockwise triton", lambda: cuda_routes.run_blockwise_triton(x_st, b, None, torch.bfloat16),
                "fp8_blockwise_triton")  # fmt: skip
        add(f"{kind} torchao", _torchao(kind, x, w), "torchao Float8Tensor")
    return rows


def with_ratios(rows: list[dict]) -> list[dict]:
    """Each row's speed against its peer in the same shape: breccia and
    torchao against raw ``_scaled_mm``, Triton blockwise against cuBLAS
    blockwise, everything also against bf16."""
    by = {(r["shape"], r["what"]): r for r in rows if "ms" in r}
    for r in rows:
        if "ms" not in r:
            continue
        bf16 = by.get((r["shape"], "bf16"))
        r["vs_bf16"] = bf16["ms"] / r["ms"] if bf16 else None
        kind = r["what"].split()[0]
        peer = {"blockwise triton": "blockwise raw"}.get(r["what"], f"{kind} raw")
        p = by.get((r["shape"], peer))
        r["vs_raw"] = p["ms"] / r["ms"] if p and p is not r else None
        if p and p is not r and "ms_graph" in r and "ms_graph" in p:
            r["vs_raw_graph"] = p["ms_graph"] / r["ms_graph"]
    return rows


def sweep() -> str:
    """Every candidate config of the two Triton kernels, timed per shape."""
    from breccia.kernels.triton import gemm_blockwise, gemm_mx

    lines = ["| kernel | shape | config | ms | TFLOP/s |", "|---|---|---|---|---|"]
    for m, n, k in [(8192, 8192, 8192), (4096, 4096, 4096)] + DECODE:
        g = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=g)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=g)
        for name, mod, fn, recipe in [
            ("blockwise", gemm_blockwise, gemm_blockwise.blockwise_mm, RECIPES["blockwise"]),
            ("mx", gemm_mx, gemm_mx.mx_mm, RECIPES["mxfp8"]),
        ]:
            a = breccia.cast(x, recipe, "input")
            b = breccia.cast(w, recipe, "weight").t()
            # the candidate list of an H100 (TMA-readable, wgmma-ready operands)
            cands = mod._candidates(m, n, k, True, True) if mod is gemm_blockwise else mod._candidates(m, n, k, True)
            for c in cands:
                try:
                    args = (a.qdata, a.scale, b.qdata, b.scale, torch.bfloat16)
                    ms = time_ms(lambda: fn(*args, config=c), m < 4096)
                    tflops = 2 * m * n * k / ms / 1e9
                    lines.append(f"| {name} | {m}x{n}x{k} | {c!r} | {ms:.4f} | {tflops:.0f} |")
                except Exception as e:  # noqa: BLE001
                    why = str(e).splitlines()[0][:80]
                    lines.append(f"| {name} | {m}x{n}x{k} | {c!r} | failed: {why} | |")
                print(lines[-1], flush=True)
    return "\n".join(lines)


def tuner_report() -> str:
    """What the Triton tuners measured: each candidate config per shape key."""
    from breccia.kernels.triton import gemm_blockwise, gemm_mx

    lines = ["| kernel | M bucket x N x K | config | ms |", "|---|---|---|---|"]
    for mod in (gemm_blockwise, gemm_mx):
        for key, times in mod._TUNER.timings.items():
            for ms, c in times:
                lines.append(f"| {key[0]} | {key[1]}x{key[2]}x{key[3]} | {c!r} | {ms:.4f} |")
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if v < 10 else f"{v:.0f}"
    return str(v)


def markdown(rows: list[dict], head: str) -> str:
    cols = ["shape", "what", "route", "ms", "tflops", "vs_raw", "vs_bf16", "ms_graph", "vs_raw_graph"]
    cols.append("error")
    cols = [c for c in cols if any(c in r for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append(f"{v:.2f}x" if c.startswith("vs_") and v is not None else _fmt(v))
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    whats = [w for w in dict.fromkeys(r["what"] for r in rows)]
    fig, ax = plt.subplots(figsize=(max(10, 1.6 * len(shapes)), 5.5))
    width = 0.8 / len(whats)
    colors = plt.get_cmap("tab20").colors
    for i, what in enumerate(whats):
        vals = []
        for s in shapes:
            r = next((r for r in rows if r["shape"] == s and r["what"] == what and "tflops" in r), None)
            vals.append(r["tflops"] if r else 0.0)
        xs = [j + i * width for j in range(len(shapes))]
        ax.bar(xs, vals, width, label=what, color=colors[i % len(colors)])
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))])
    ax.set_xticklabels(shapes, rotation=15, fontsize=8)
    ax.set_ylabel("TFLOP/s")
    ax.set_yscale("log")
    ax.set_title("breccia GEMM routes vs peers (decode shapes: CUDA-graph replays)")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=RESULTS, help="folder for gemm-<device>.{md,json,png}")
    parser.add_argument("--sweep", action="store_true", help="time every Triton tile config instead")
    parser.add_argument("--quick", action="store_true", help="one large and one decode shape")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 1
    import triton

    os.makedirs(args.out, exist_ok=True)
    head = (
        "# breccia GEMMs on the GPU\n\n"
        f"_{environment_line('cuda')} · triton {triton.__version__}_\n\n"
    )
    if args.sweep:
        text = head + "## Triton tile configs\n\n" + sweep() + "\n"
        write_text_atomic(os.path.join(args.out, "gemm-sweep.md"), text)
        return 0
    large, decode = (LARGE[1:2], DECODE[:1]) if args.quick else (LARGE, DECODE)
    rows = []
    for shape in large:
        rows += bench_shape(*shape, graph=False)
    for shape in decode:
        rows += bench_shape(*shape, graph=True)
    rows = with_ratios(rows)
    text = markdown(rows, head) + "\n## Triton tuner: every candidate, per shape bucket\n\n" + tuner_report()
    print(text)
    stem = os.path.join(args.out, os.path.splitext(os.path.basename(result_path("gemm")))[0])
    write_text_atomic(stem + ".md", text)
    write_text_atomic(stem + ".json", json.dumps(rows, indent=1))
    try:
        plot(rows, stem + ".png")
    except Exception as e:  # noqa: BLE001
        print("plot failed:", e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
