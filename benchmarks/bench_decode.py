"""Decode-shaped GEMMs: 4-bit weight-only kernels against their peers.

    PYTHONPATH=. python benchmarks/bench_decode.py     # writes benchmarks/results/decode-<device>.md

One run, one GPU, the same bf16 activations for every contender:

- bf16 ``F.linear`` (cuBLAS), the baseline of every ratio;
- tinygemm INT4 (``aten._weight_int4pack_mm``, group 128);
- FP8 tensorwise ``torch._scaled_mm`` (activation pre-quantized, M padded to 16);
- breccia INT4 (symmetric, group 128) and NVFP4, ``breccia::w4a16_mm`` on
  Packed weights (the MMA kernel for M <= 16, the tensor-core kernel
  above), config autotuned per shape (``w4a16.autotune`` over the fixed
  candidate list; every candidate checked, a wrong one cannot win).

M in {1, 2, 4, 8, 16, 32, 64, 128}; (N, K) in {(8192, 8192), (28672, 8192),
(8192, 28672), (4096, 4096)}. Two timings of every cell:

- ``graph``: a CUDA graph of >= 24 calls round-robin over copies of the
  contender's weight, together >= 150 MB, replayed (``w4a16.bench_graph``):
  each call reads its weight from HBM and finds L2 holding clean lines, as a
  layer of a decode step does, and no host time is counted;
- ``flush``: ``triton.testing.do_bench`` median with its L2 flush, which
  zeroes a 256 MB buffer and so leaves L2 full of dirty lines: the timed
  call also writes back up to L2's size (50 MB), and a call whose host path
  outlasts the flush plus the kernel is timed by its host.

Weight bandwidth = the weight's bytes (payload + scales) / time, against the
device-to-device copy ceiling measured in the same run. Writes a markdown table, the tuned
configs (paste into ``w4a16.TUNED``) and a PNG of speed-up over bf16 vs M.
"""

from __future__ import annotations

import argparse
import datetime
import os
import time

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

import breccia
from breccia.kernels.triton import w4a16
from breccia.packing import packed_operands
from results_path import result_path

MS = [1, 2, 4, 8, 16, 32, 64, 128]
SHAPES = [(8192, 8192), (28672, 8192), (8192, 28672), (4096, 4096)]
#: bytes/s of a device-to-device copy (read + write), measured by main() on this GPU
COPY_CEILING = float("nan")


def copy_ceiling() -> float:
    """Bytes read plus written per second by a 1 GiB device-to-device copy."""
    a = torch.randn(2**28, device="cuda")
    b = torch.empty_like(a)
    ms = do_bench(lambda: b.copy_(a), warmup=25, rep=100, return_mode="median")
    return 2 * a.numel() * a.element_size() / (ms * 1e-3)
METHODS = ["bf16", "tinygemm int4", "fp8 _scaled_mm", "breccia int4", "breccia nvfp4"]


def _tinygemm(w: torch.Tensor, group: int = 128):
    """tinygemm's packed weight and (K/g, N, 2) scales-and-zeros, asymmetric
    uint4 as torchao builds them (timing only: values are plausible)."""
    n, k = w.shape
    wg = w.float().reshape(n, k // group, group)
    lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
    scale = ((hi - lo).clamp(min=1e-6) / 15)
    q = ((wg - lo) / scale).round().clamp(0, 15).to(torch.uint8).reshape(n, k)
    packed = (q[:, ::2] << 4 | q[:, 1::2]).contiguous()
    wq = torch.ops.aten._convert_weight_to_int4pack(packed, 8)
    zero = lo + 8 * scale  # tinygemm: w = (q - 8) * scale + zero
    sz = torch.stack([scale.squeeze(-1), zero.squeeze(-1)], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
    return wq, sz


def _fp8(w: torch.Tensor):
    s = (w.abs().amax().float() / 448.0).clamp(min=1e-12)
    return (w.float() / s).to(torch.float8_e4m3fn), s


def weight_bytes(method: str, n: int, k: int) -> int:
    return {
        "bf16": 2 * n * k,
        "tinygemm int4": n * k // 2 + (k // 128) * n * 4,
        "fp8 _scaled_mm": n * k + 4,
        "breccia int4": n * k // 2 + (k // 128) * n * 2,
        "breccia nvfp4": n * k // 2 + (k // 16) * n + 4,
    }[method]


def bench_shape(n: int, k: int, tune: bool, log) -> dict:
    torch.manual_seed(n + k)
    w = (torch.randn(n, k, device="cuda") * 0.02).to(torch.bfloat16)
    sts = {"int4": breccia.cast(w, breccia.INT4Scaling(), "weight"), "nvfp4": breccia.cast(w, breccia.NVFP4BlockScaling(), "weight")}
    ops = {kd: packed_operands(breccia.relayout(st, breccia.Packed)) for kd, st in sts.items()}
    deq = {kd: breccia.dequantize(st, torch.float32) for kd, st in sts.items()}
    tg_w, tg_sz = _tinygemm(w)
    w8, s8 = _fp8(w)
    one = torch.ones((), device="cuda")
    # weight copies for the CUDA-graph timing (the first is the original)
    rot = {}
    for meth in METHODS:
        c = w4a16.weight_copies(weight_bytes(meth, n, k))
        if meth == "bf16":
            rot[meth] = [w] + [w.clone() for _ in range(c - 1)]
        elif meth == "tinygemm int4":
            rot[meth] = [(tg_w, tg_sz)] + [(tg_w.clone(), tg_sz.clone()) for _ in range(c - 1)]
        elif meth == "fp8 _scaled_mm":
            rot[meth] = [w8] + [w8.clone() for _ in range(c - 1)]
        else:
            op = ops[meth.split()[1]]
            rot[meth] = [op] + [op._replace(qdata=op.qdata.clone(), scale=op.scale.clone()) for _ in range(c - 1)]
    res: dict = {}
    for m in MS:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        m16 = max(16, -(-m // 16) * 16)
        x8 = torch.zeros(m16, k, device="cuda", dtype=torch.float8_e4m3fn)
        x8[:m] = (x.float() / 4).to(torch.float8_e4m3fn)
        makers = {
            "bf16": lambda wt: (lambda: F.linear(x, wt)),
            "tinygemm int4": lambda p: (lambda: torch.ops.aten._weight_int4pack_mm(x, p[0], 128, p[1])),
            "fp8 _scaled_mm": lambda wt: (lambda: torch._scaled_mm(x8, wt.t(), one * 4, s8, out_dtype=torch.bfloat16)),
        }
        for kind in ("int4", "nvfp4"):
            op = ops[kind]
            if tune and (m == 1 or m >= 16):
                best, times = w4a16.autotune(x, op.qdata, op.scale, op.zero_point, op.global_scale, op.kind, op.group, n, k, save=False)
                # every candidate, into a NaN-poisoned output, against fp32 dequantize-then-matmul;
                # a wrong one is reported and cannot win
                ref = x.float() @ deq[kind].t()
                for c in times:
                    if times[c] == float("inf"):
                        continue
                    o = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
                    w4a16.w4a16_mm(x, op.qdata, op.scale, op.zero_point, op.global_scale, None, op.kind, op.group, n, k, torch.bfloat16, c, out=o)
                    e = ((o.float() - ref).norm() / ref.norm()).item() if torch.isfinite(o).all() else float("inf")
                    res["worst_err"] = max(res.get("worst_err", 0.0), e)
                    if not e < 8e-3:
                        log(f"  WRONG {kind} M={m} {c}: rel. error {e}")
                        times[c] = float("inf")
                        res["wrong"] = res.get("wrong", 0) + 1
                best = min(times, key=times.get)
                w4a16._CACHE[w4a16._key(x.device, op.kind, m, n, k)] = best
                log(f"  tune {kind} M={m} N={n} K={k}: best {cfg_str(best)} " + ", ".join(f"{cfg_str(c)}={t*1e3:.1f}us" for c, t in times.items()))
                if m == 1:  # M = 1..8 share the one-token-block kernel: one tuning for the bucket
                    for mb in (2, 4, 8):
                        w4a16._CACHE[w4a16._key(x.device, op.kind, mb, n, k)] = best
            cfg = w4a16.config_for(x.device, op.kind, m, n, k, w4a16.mma_applies(x, op.qdata, op.scale, op.kind, k))
            makers[f"breccia {kind}"] = (lambda o, cfg=cfg: (lambda: w4a16.w4a16_mm(
                x, o.qdata, o.scale, o.zero_point, o.global_scale, None, o.kind, o.group, n, k, torch.bfloat16, cfg)))
            res.setdefault(("config", kind, m), cfg)
        for name in METHODS:
            fns = [makers[name](wt) for wt in rot[name]]
            try:
                fns[0]()
                res[(name, m, "graph")] = w4a16.bench_graph(fns)
                res[(name, m, "flush")] = do_bench(fns[0], warmup=10, rep=60, return_mode="median")
            except Exception as e:  # a peer missing on this build is reported, not fatal
                log(f"  {name} M={m}: {type(e).__name__}: {str(e)[:160]}")
                for how in HOW:
                    res[(name, m, how)] = float("nan")
        for how in HOW:
            log(f"  M={m:4d} {how:5s} " + "  ".join(f"{nm} {res[(nm, m, how)] * 1e3:7.1f}us" for nm in METHODS))
    return res


def cfg_str(c) -> str:
    if c.mma:
        extra = (f" s{c.sets}" if c.sets != 2 else "") + (f" p{c.pdl}" if c.pdl else "")
        return f"mma {c.block_n}/{c.split_k}/{c.num_warps}{'w' if c.warp_split else ''}{extra}"
    return f"{c.block_n}/{c.chunks}/{c.split_k}/{c.num_warps}/{c.num_stages}"


HOW = {
    "graph": "CUDA graph of >= 24 calls round-robin over weight copies together >= 150 MB, replayed "
             "(`w4a16.bench_graph`: each call reads its weight from HBM and finds L2 holding clean lines, as a layer of a "
             "decode step does; no host time), median of 7 replays, per call",
    "flush": "`triton.testing.do_bench` median, its L2 flush before every call (zeroing a 256 MB buffer, which leaves L2 "
             "full of dirty lines: the timed call also writes back as many bytes as it brings in, up to L2's 50 MB)",
}


def write_report(path: str, results: dict, extra: list[str]) -> None:
    dev = torch.cuda.get_device_name()
    lines = [
        f"# Decode GEMMs: 4-bit weight-only kernels ({dev})",
        "",
        f"{dev}, torch {torch.__version__}, Triton {triton.__version__}, {datetime.date.today()}; "
        "`PYTHONPATH=. python benchmarks/bench_decode.py`. bf16 activations and output, weights `randn * 0.02`. "
        "Time in µs; GB/s = weight bytes (payload + scales) / time "
        f"(copy ceiling {COPY_CEILING / 1e12:.2f} TB/s); x = speed-up over bf16 `F.linear` timed the same way in the same run. "
        "breccia: INT4 symmetric group 128 and NVFP4 (e2m1, e4m3 scales per 16, fp32 global), Packed layout, "
        "`breccia::w4a16_mm` with the tuned config shown (`mma R/S/W`: MMA kernel, rows a program / split-K / warps, "
        "`w` = warps split K, `sN` = N windows in flight a warp, `pN` = programmatic dependent launch mode N; else the tensor-core kernel, rows/windows/split-K/warps/stages). "
        "tinygemm: `aten._weight_int4pack_mm`, group 128. FP8: `torch._scaled_mm` tensorwise, activation "
        "already FP8 and padded to 16 rows.",
        "",
        "Two timings of every cell: " + "; ".join(f"**{h}**: {d}" for h, d in HOW.items()) + ".",
        "",
    ]
    for n, k in SHAPES:
        r = results[(n, k)]
        for how in HOW:
            lines += [f"## N = {n}, K = {k} ({how})", "", "| M | " + " | ".join(METHODS) + " | int4 config | nvfp4 config |",
                      "| --- |" + " --- |" * (len(METHODS) + 2)]
            for m in MS:
                base = r[("bf16", m, how)]
                cells = []
                for meth in METHODS:
                    t = r[(meth, m, how)]
                    gbs = weight_bytes(meth, n, k) / (t * 1e-3) / 1e9
                    cells.append(f"{t * 1e3:.1f} ({gbs:.0f} GB/s, {base / t:.2f}x)" if meth != "bf16" else f"{t * 1e3:.1f} ({gbs:.0f} GB/s)")
                cs = [cfg_str(r[("config", kd, m)]) for kd in ("int4", "nvfp4")]
                lines.append(f"| {m} | " + " | ".join(cells) + f" | {cs[0]} | {cs[1]} |")
            lines.append("")
    lines += extra
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def plot(path: str, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SHAPES), figsize=(5 * len(SHAPES), 4), sharey=True)
    for ax, (n, k) in zip(axes, SHAPES):
        r = results[(n, k)]
        for meth, style in zip(METHODS[1:], ("s--", "^--", "o-", "D-")):
            ax.plot(MS, [r[("bf16", m, "graph")] / r[(meth, m, "graph")] for m in MS], style, label=meth)
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(MS, [str(m) for m in MS])
        ax.set_title(f"N={n}, K={k}")
        ax.set_xlabel("M (tokens)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("speed-up over bf16 F.linear (CUDA graph, weights rotated)")
    axes[0].legend()
    fig.suptitle(f"Decode GEMMs on {torch.cuda.get_device_name()}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="results markdown (default: results/decode-<device>.md)")
    ap.add_argument("--no-tune", action="store_true", help="use w4a16.config_for (TUNED table / heuristic)")
    ap.add_argument("--quick", action="store_true", help="M 1 and 16 at every shape, no tuning, no report")
    ap.add_argument("--ms", default=",".join(map(str, MS)), help="token counts M, comma-separated")
    args = ap.parse_args()
    args.out = args.out or result_path("decode")
    MS[:] = [int(v) for v in args.ms.split(",")]
    global COPY_CEILING
    COPY_CEILING = copy_ceiling()
    print(f"copy ceiling {COPY_CEILING / 1e12:.2f} TB/s")
    if args.quick:
        for n, k in SHAPES:
            MS[:] = [1, 16]
            r = bench_shape(n, k, False, print)
            for m in MS:
                for how in HOW:
                    print(f"QUICK N={n} K={k} M={m} {how}: " + "  ".join(
                        f"{nm} {r[(nm, m, how)] * 1e3:.1f}us ({r[('bf16', m, how)] / r[(nm, m, how)]:.2f}x)" for nm in METHODS))
        return
    t0 = time.time()
    log_lines: list[str] = []

    def log(s: str) -> None:
        print(s, flush=True)
        log_lines.append(s)

    log(f"{torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__}")
    results = {}
    for n, k in SHAPES:
        log(f"N={n} K={k}")
        results[(n, k)] = bench_shape(n, k, not args.no_tune, log)

    extra = []
    # the whole breccia path: F.linear on a converted layer, eager (Python dispatch included)
    n = k = 8192
    lin = torch.nn.Linear(k, n, bias=False, device="cuda", dtype=torch.bfloat16)
    breccia.convert(lin, breccia.INT4Scaling())
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    t_lin = do_bench(lambda: lin(x), warmup=10, rep=60, return_mode="median")
    if args.no_tune:
        extra += ["Correctness: this run timed the configs `w4a16.config_for` picks without re-checking them."]
    else:
        worst = max(r.get("worst_err", 0.0) for r in results.values())
        extra += [f"Correctness in this run: every tuned candidate config, bf16 output written into a NaN-poisoned "
                  f"tensor, against fp32 dequantize-then-matmul: worst relative error {worst:.1e} (bf16 output rounding)."]
    extra += ["Full checks (all recipes, groups, fp16, ragged shapes, bit-exact unpack): `benchmarks/gpu_check_w4a16.py`, "
              "its output in `w4a16-check-<device>.md`."]
    extra += ["", f"`F.linear` on a converted INT4 layer (eager, the router's Python dispatch included), M = 1, "
              f"N = K = 8192: {t_lin * 1e3:.1f} µs (do_bench).", ""]
    extra += ["## Tuned configs (`w4a16.TUNED`)", "", "```python"]
    extra += [f"    {key!r}: {c!r}," for key, c in sorted(w4a16._CACHE.items(), key=str)]
    extra += ["```", "", "## Log", "", "```"] + log_lines + ["```", "", f"({time.time() - t0:.0f} s)"]
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    write_report(args.out, results, extra)
    plot(os.path.splitext(args.out)[0] + ".png", results)
    print(open(args.out).read())


if __name__ == "__main__":
    main()
