"""W4A16 on one GPU: check every candidate config, time them against bf16 and tinygemm.

    PYTHONPATH=. python benchmarks/tune_w4a16.py --out /tmp/w4a16-tune.json

1. Correctness: the MMA kernel (M <= 16) and the tensor-core kernel, INT4
   symmetric / asymmetric, bf16 / fp16, groups 16-128, NVFP4; ragged N and K;
   every MMA candidate at one shape; output NaN-poisoned, compared with a
   float64 dequantize-then-matmul; the split-K workspace left zero.
2. Timing (``do_bench`` median, L2 flushed before every call): every
   candidate at the decode shapes, with bf16 ``F.linear`` and tinygemm
   measured in the same run; the winners as ``w4a16.TUNED`` lines.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

import breccia
from breccia.kernels.triton import w4a16
from breccia.packing import packed_operands

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_decode import _tinygemm  # noqa: E402


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def ws_clean() -> bool:
    return all(bool((t == 0).all()) for pair in w4a16._WORKSPACES.values() for t in pair)


def reference(st, x):
    if st.spec.element == "e2m1":
        return x.double() @ breccia.dequantize(st, torch.float64).t()
    return x.double() @ breccia.dequantize(st, x.dtype).double().t()


def run(x, op, cfg, out_dtype=torch.float32, bias=None):
    out = torch.full((x.shape[0], op.n), float("nan"), device=x.device, dtype=out_dtype)
    w4a16.w4a16_mm(x, op.qdata, op.scale, op.zero_point, op.global_scale, bias, op.kind, op.group, op.n, op.k, out_dtype, cfg, out=out)
    return out


def check(log, quick: bool = False) -> bool:
    ok = True
    recipes = {
        "int4 sym g128": (breccia.INT4Scaling(group_size=128), torch.bfloat16),
        "int4 asym g64": (breccia.INT4Scaling(group_size=64, symmetric=False), torch.bfloat16),
        "int4 sym g32 fp16": (breccia.INT4Scaling(group_size=32, scale_dtype="fp16"), torch.float16),
        "int4 asym g16 fp16": (breccia.INT4Scaling(group_size=16, symmetric=False, scale_dtype="fp16"), torch.float16),
        "nvfp4": (breccia.NVFP4BlockScaling(), torch.bfloat16),
        "nvfp4 fp16 (tensor-core path)": (breccia.NVFP4BlockScaling(), torch.float16),
        "int4 g128 bf16 scales x fp16 (tensor-core path)": (breccia.INT4Scaling(group_size=128), torch.float16),
    }
    if quick:
        recipes = {nm: recipes[nm] for nm in ("int4 sym g128", "int4 asym g16 fp16", "nvfp4")}
    for name, (recipe, dt) in recipes.items():
        for (n, k) in [(1000, 4000)] if quick else [(1000, 4000), (4096, 4096)]:
            g = torch.Generator(device="cuda").manual_seed(n + k)
            w = (torch.randn(n, k, device="cuda", generator=g) * 0.05).to(dt)
            st = breccia.cast(w, recipe, "weight")
            op = packed_operands(breccia.relayout(st, breccia.Packed))
            for m in (1, 3, 8, 9, 16, 37):
                x = torch.randn(m, k, device="cuda", dtype=dt, generator=g)
                ref = reference(st, x)
                mma = w4a16.mma_applies(x, op.qdata, op.scale, op.kind, k)
                cfgs = [w4a16.config_for(x.device, op.kind, m, n, k, mma)]
                if ((n, k) == (4096, 4096) or quick) and m in (1, 9, 16) and mma:
                    cfgs = w4a16.candidates(m, n, k, True)
                for cfg in cfgs:
                    try:
                        o = run(x, op, cfg)
                        e = rel(o, ref) if torch.isfinite(o).all() else float("inf")
                    except Exception as ex:  # noqa: BLE001 - reported, the run goes on
                        log(f"check {name} {m}x{n}x{k} {cfg}: {type(ex).__name__}: {str(ex)[:300]}")
                        e = float("inf")
                    good = e < 1e-5 and ws_clean()
                    ok &= good
                    if not good or cfg is cfgs[0]:
                        log(f"check {name:44s} {m:3d}x{n}x{k} mma={int(cfg.mma)}{'w' if cfg.warp_split else ''} {cfg.block_n}/{cfg.split_k}/{cfg.num_warps} s{cfg.sets} p{cfg.pdl}: rel {e:.1e} {'ok' if good else 'WRONG'}")
                # bias and bf16/fp16 output, default config
                bias = torch.randn(n, device="cuda", dtype=dt, generator=g)
                try:
                    o = run(x, op, None, dt, bias)
                    e = rel(o, ref + bias.double())
                except Exception as ex:  # noqa: BLE001
                    log(f"check {name} {m}x{n}x{k} bias: {type(ex).__name__}: {str(ex)[:300]}")
                    e = float("inf")
                good = e < 8e-3 and ws_clean()
                ok &= good
                if not good:
                    log(f"check {name} {m}x{n}x{k} bias+{dt}: rel {e:.1e} WRONG")
    if quick:
        return ok
    # the route: F.linear on a converted layer, eager and compiled
    lin = torch.nn.Linear(4096, 3072, bias=True, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(2, 4096, device="cuda", dtype=torch.bfloat16)
    refl = F.linear(x.float(), breccia.dequantize(breccia.cast(lin.weight.detach(), breccia.INT4Scaling(), "weight"), torch.float32), lin.bias.float())
    breccia.convert(lin, breccia.INT4Scaling())
    try:
        e1 = rel(lin(x), refl)
        e2 = rel(torch.compile(lin, fullgraph=True)(x), refl)
    except Exception as ex:  # noqa: BLE001
        log(f"check F.linear: {type(ex).__name__}: {str(ex)[:300]}")
        e1 = e2 = float("inf")
    ok &= e1 < 8e-3 and e2 < 8e-3
    log(f"check F.linear INT4 layer eager rel {e1:.1e}, compiled rel {e2:.1e}")
    return ok


def bench(shapes, ms, log) -> dict:
    res = {}
    for n, k in shapes:
        torch.manual_seed(n + k)
        w = (torch.randn(n, k, device="cuda") * 0.02).to(torch.bfloat16)
        ops = {kd: packed_operands(breccia.relayout(breccia.cast(w, r, "weight"), breccia.Packed))
               for kd, r in (("int4", breccia.INT4Scaling()), ("nvfp4", breccia.NVFP4BlockScaling()))}  # fmt: skip
        tg_w, tg_sz = _tinygemm(w)
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            t_bf16 = do_bench(lambda: F.linear(x, w), warmup=10, rep=60, return_mode="median")
            t_tg = do_bench(lambda: torch.ops.aten._weight_int4pack_mm(x, tg_w, 128, tg_sz), warmup=10, rep=60, return_mode="median")
            row = {"bf16": t_bf16, "tinygemm": t_tg}
            for kd, op in ops.items():
                best, times = w4a16.autotune(x, op.qdata, op.scale, op.zero_point, op.global_scale, op.kind, op.group, n, k, save=False)
                for c, t in sorted(times.items(), key=lambda ct: ct[1]):
                    log(f"  {kd} M={m} N={n} K={k} {c.block_n}/{c.chunks}/{c.split_k}/{c.num_warps}/{c.num_stages}{f' mma s{c.sets} p{c.pdl}' if c.mma else ''}: "
                        f"{t * 1e3:.1f} us ({t_bf16 / t:.2f}x)")
                row[kd] = times[best]
                row[kd + "_cfg"] = best
                # the same config again (spread)
                row[kd + "_again"] = do_bench(lambda: w4a16.w4a16_mm(x, op.qdata, op.scale, op.zero_point, op.global_scale, None, op.kind,
                                                                     op.group, n, k, torch.bfloat16, best), warmup=10, rep=60, return_mode="median")  # fmt: skip
            res[(n, k, m)] = row
            log(f"N={n} K={k} M={m}: bf16 {t_bf16 * 1e3:.1f}  tinygemm {t_tg * 1e3:.1f} ({t_bf16 / t_tg:.2f}x)  "
                + "  ".join(f"{kd} {row[kd] * 1e3:.1f}/{row[kd + '_again'] * 1e3:.1f} ({t_bf16 / row[kd]:.2f}x)" for kd in ops))
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="w4a16-tune.json")
    ap.add_argument("--shapes", default="8192x8192,28672x8192")
    ap.add_argument("--ms", default="1,16")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--quick-check", action="store_true", help="three recipes, no torch.compile")
    ap.add_argument("--no-bench", action="store_true")
    args = ap.parse_args()
    t0 = time.time()
    lines = []

    def log(s):
        print(s, flush=True)
        lines.append(s)

    log(f"{torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__}")
    ok = True if args.no_check else check(log, args.quick_check)
    log(f"checks {'passed' if ok else 'FAILED'} ({time.time() - t0:.0f} s)")
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    res = {} if args.no_bench else bench(shapes, [int(v) for v in args.ms.split(",")], log)
    log("TUNED:")
    for key, c in sorted(w4a16._CACHE.items(), key=str):
        log(f"    {key!r}: {c!r},")
    with open(args.out, "w") as f:
        json.dump({"log": lines, "res": {str(k): {a: (b if isinstance(b, float) else repr(b)) for a, b in v.items()} for k, v in res.items()}}, f, indent=1)
    log(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
