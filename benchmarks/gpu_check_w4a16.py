"""GPU correctness of the W4A16 kernels (run on a CUDA machine).

    PYTHONPATH=. python benchmarks/gpu_check_w4a16.py     # writes benchmarks/results/w4a16-check-<device>.md

For INT4 (symmetric / asymmetric, groups 32, 64, 128) and NVFP4, bf16 and fp16
activations, ragged and decode shapes, every candidate config:

- the Packed relayout round-trips bit-exactly;
- unpacking is bit-exact: an identity activation makes the kernel write the
  decoded weight, compared bit for bit with ``breccia.dequantize`` (NVFP4:
  ``decode(q) * block_scale``, global scale set to 1) -- through the
  tensor-core kernel (M = K) and the MMA kernel (16 rows, and single rows,
  of the identity at a time);
- the GEMM, written into a NaN-poisoned output, is within fp32 accumulation
  error of a float64 dequantize-then-matmul, and the split-K workspace is left
  zero;
- the router sends ``F.linear`` on a converted layer to the kernel, eager and
  under ``torch.compile``.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time

import torch
import torch.nn.functional as F
import triton

import breccia
from breccia import formats
from breccia.kernels import route_for
from breccia.kernels.triton import w4a16
from breccia.packing import packed_operands
from results_path import result_path

RECIPES = {
    "int4 sym g32": breccia.INT4Scaling(group_size=32),
    "int4 sym g64": breccia.INT4Scaling(group_size=64),
    "int4 sym g128": breccia.INT4Scaling(group_size=128),
    "int4 asym g32": breccia.INT4Scaling(group_size=32, symmetric=False),
    "int4 asym g128": breccia.INT4Scaling(group_size=128, symmetric=False),
    "int4 sym g128 fp16-scale": breccia.INT4Scaling(group_size=128, scale_dtype="fp16"),
    "nvfp4": breccia.NVFP4BlockScaling(),
}

SHAPES = [(1, 4096, 4096), (5, 1000, 4000), (16, 1000, 4000), (9, 520, 1056), (37, 520, 1056), (128, 768, 2048)]
#: every candidate config for these; the default and one split-K config for the rest
FULL = {("int4 sym g128", torch.bfloat16), ("nvfp4", torch.bfloat16), ("int4 asym g32", torch.bfloat16)}
#: --device cpu (TRITON_INTERPRET=1): a dry run of this script at small shapes
SHAPES_CPU = [(1, 64, 128), (5, 40, 96), (37, 24, 160)]
DEV = "cuda"
#: --quick: the default config only, two shapes (a re-check after a kernel change)
QUICK = False


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def decoded_weight(st, dtype) -> torch.Tensor:
    """What the kernel's registers should hold: dequantize(st, dtype) for
    INT4; decode(q) * block_scale (exact) for NVFP4."""
    if st.spec.element == "e2m1":
        plain = breccia.relayout(st, breccia.Plain)
        v = formats.decode_e2m1(formats.unpack_nibbles(plain.qdata, st.shape[1]))
        bs = plain.scale.float().repeat_interleave(16, dim=1)[:, : st.shape[1]]
        return v * bs
    return breccia.dequantize(st, dtype).float()


def check_kernel(lines: list, name: str, recipe, dtype) -> bool:
    ok = True
    dev = DEV
    shapes = SHAPES if dev == "cuda" else SHAPES_CPU
    for m, n, k in (shapes[:1] + shapes[2:3]) if QUICK else shapes:
        g = torch.Generator(device=dev).manual_seed(m * 7 + n + k)
        w = torch.randn(n, k, device=dev, generator=g).to(dtype) * 0.05
        x = torch.randn(m, k, device=dev, generator=g).to(dtype)
        st = breccia.cast(w, recipe, "weight")
        p = breccia.relayout(st, breccia.Packed)
        back = breccia.relayout(p, breccia.Plain)
        same = torch.equal(back.qdata, st.qdata) and torch.equal(
            back.scale.view(torch.uint8) if back.scale.element_size() == 1 else back.scale,
            st.scale.view(torch.uint8) if st.scale.element_size() == 1 else st.scale,
        )
        op = packed_operands(p)
        # the weights the kernel multiplies by, exactly (NVFP4: then the global scale)
        ref = x.double() @ decoded_weight(st, dtype).double().t()
        if st.global_scale is not None:
            ref = ref * st.global_scale.double()
        worst, worst_cfg = 0.0, None
        mma = w4a16.mma_applies(x, op.qdata, op.scale, op.kind, k)
        cfgs = w4a16.candidates(m, n, k, mma)
        default = w4a16.config_for(x.device, op.kind, m, n, k, mma)
        if QUICK:
            cfgs = [default]
        elif (name, dtype) not in FULL:
            cfgs = [default] + [c for c in cfgs if c.split_k > 1][:1] + [c for c in cfgs if c.warp_split][:1]
        for cfg in cfgs:
            out = torch.full((m, n), float("nan"), device=dev, dtype=torch.float32)
            w4a16.w4a16_mm(x, op.qdata, op.scale, op.zero_point, op.global_scale, None, op.kind, op.group, n, k, torch.float32, cfg, out=out)
            if dev == "cuda":
                torch.cuda.synchronize()
            e = rel(out, ref) if torch.isfinite(out).all() else float("inf")
            if e > worst:
                worst, worst_cfg = e, cfg
        ws_clean = all(bool((t == 0).all()) for pair in w4a16._WORKSPACES.values() for t in pair)
        # bias and bf16 output through the default config
        bias = torch.randn(n, device=dev, generator=g).to(dtype)
        out16 = w4a16.w4a16_mm(x, op.qdata, op.scale, op.zero_point, op.global_scale, bias, op.kind, op.group, n, k, dtype)
        ref16 = F.linear(x, breccia.dequantize(st, dtype), bias)
        e16 = rel(out16, ref16)
        good = same and worst < 1e-4 and ws_clean and e16 < 1e-2
        ok &= good
        kern = "MMA" if default.mma else "tensor-core"
        lines.append(
            f"| {name} | {str(dtype)[6:]} | {m}x{n}x{k} ({kern}) | {same} | {worst:.1e} ({len(cfgs)} configs"
            f"{'' if worst < 1e-4 else f'; worst {worst_cfg}'}) | "
            f"{e16:.1e} | {ws_clean} | {'ok' if good else 'FAIL'} |"
        )
    # bit-exact unpack: identity activations (M = K: the 128-row tiles too)
    n, k = (200, 544) if dev == "cuda" else (40, 96)
    g = torch.Generator(device=dev).manual_seed(1)
    w = (torch.randn(n, k, device=dev, generator=g) * 0.05).to(dtype)
    st = breccia.cast(w, recipe, "weight")
    op = packed_operands(breccia.relayout(st, breccia.Packed))
    gs = torch.ones((), device=dev) if op.global_scale is not None else None
    eye = torch.eye(k, device=dev, dtype=dtype)
    got = w4a16.w4a16_mm(eye, op.qdata, op.scale, op.zero_point, gs, None, op.kind, op.group, n, k, torch.float32).t()
    want = decoded_weight(st, dtype)
    exact = torch.equal(got, want)
    ok &= exact
    lines.append(f"| {name} | {str(dtype)[6:]} | unpack {n}x{k} (identity, tensor-core) | | bit-exact: {exact} | | | {'ok' if exact else 'FAIL'} |")
    # the same through the MMA kernel: the identity 16 rows (and 1 row) at a time
    if w4a16.mma_applies(eye[:16], op.qdata, op.scale, op.kind, k):
        parts = [w4a16.w4a16_mm(eye[i:i + 16], op.qdata, op.scale, op.zero_point, gs, None, op.kind, op.group, n, k, torch.float32)
                 for i in range(0, k, 16)]  # fmt: skip
        got = torch.cat(parts).t()
        one = [w4a16.w4a16_mm(eye[i:i + 1], op.qdata, op.scale, op.zero_point, gs, None, op.kind, op.group, n, k, torch.float32)
               for i in (0, 17, k - 1)]  # fmt: skip
        exact = torch.equal(got, want) and all(torch.equal(o[0], want[:, i]) for o, i in zip(one, (0, 17, k - 1)))
        ok &= exact
        lines.append(f"| {name} | {str(dtype)[6:]} | unpack {n}x{k} (identity, MMA: M = 16 and 1) | | bit-exact: {exact} | | | {'ok' if exact else 'FAIL'} |")
    return ok


def check_route(lines: list) -> bool:
    ok = True
    for name, recipe in (("int4 g128", breccia.INT4Scaling()), ("nvfp4", breccia.NVFP4BlockScaling())):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(1024, 3072), torch.nn.SiLU(), torch.nn.Linear(3072, 512)).to(DEV).bfloat16()
        x = torch.randn(4, 7, 1024, device=DEV, dtype=torch.bfloat16)
        breccia.convert(model, recipe, layout=breccia.Packed)
        w = model[0].weight
        rname = route_for(x.reshape(-1, 1024), w.t()).name
        deq = torch.nn.Sequential(torch.nn.Linear(1024, 3072), torch.nn.SiLU(), torch.nn.Linear(3072, 512)).to(DEV).bfloat16()
        deq.load_state_dict({k: (breccia.dequantize(v) if isinstance(v, breccia.ScaledTensor) else v) for k, v in model.state_dict().items()})
        eager = model(x)
        e = rel(eager, deq(x))
        compiled = torch.compile(model, fullgraph=True)
        c = compiled(x)
        ec = rel(c, eager)
        good = rname == "w4a16_triton" and w.qlayout is breccia.Packed and e < 1e-2 and ec < 1e-3
        ok &= good
        lines.append(f"| route {name} | bf16 | F.linear 28x1024 -> 3072 -> 512 | layout {w.qlayout} | route {rname} | vs dequantized {e:.1e}, compiled vs eager {ec:.1e} | | {'ok' if good else 'FAIL'} |")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="results markdown (default: results/w4a16-check-<device>.md)")
    ap.add_argument("--device", default="cuda", help="cpu: a dry run under TRITON_INTERPRET=1")
    ap.add_argument("--quick", action="store_true", help="default config only, two shapes, no route check")
    ap.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated subset of: {', '.join(RECIPES)}")
    args = ap.parse_args()
    chosen = args.recipes.split(",")
    unknown = sorted(set(chosen) - set(RECIPES))
    if unknown:
        ap.error(f"--recipes: unknown {unknown}; expected names from {list(RECIPES)}")
    global DEV, QUICK
    DEV, QUICK = args.device, args.quick
    if DEV == "cpu":  # pretend to be an H100 so the router picks the kernel
        from breccia.kernels import cuda_routes

        cuda_routes.capability = lambda device: (9, 0)
        import breccia.kernels.w4a16_routes as w4r

        w4r.capability = cuda_routes.capability
    t0 = time.time()
    lines = [
        "# W4A16 kernels: GPU correctness",
        "",
        f"{torch.cuda.get_device_name() if DEV == 'cuda' else 'CPU (interpreter dry run)'}, torch {torch.__version__}, Triton {triton.__version__}, "
        f"{datetime.date.today()}; `PYTHONPATH=. python benchmarks/gpu_check_w4a16.py {' '.join(repr(a) if ' ' in a else a for a in sys.argv[1:])}`",
        "",
        "GEMM error: fp32 output, every candidate config, against a float64 matmul of the weight",
        "the kernel decodes (INT4: `dequantize(w, x.dtype)`; NVFP4: `decode(q) * block_scale`, then",
        "the global scale) -- worst config shown; bf16/fp16 output with bias against",
        "`F.linear(x, dequantize(w, x.dtype), bias)` (cuBLAS). Outputs poisoned with NaN first.",
        "",
        "| weight | act | M x N x K | Packed round trip | GEMM rel. error (fp32 out) | 16-bit out vs F.linear | split-K workspace zero | |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    ok = True
    for name, recipe in RECIPES.items():
        if name not in chosen:
            continue
        for dtype in (torch.bfloat16, torch.float16):
            if name == "int4 sym g128 fp16-scale" and dtype == torch.bfloat16:
                continue
            n0 = len(lines)
            ok &= check_kernel(lines, name, recipe, dtype)
            print("\n".join(lines[n0:]), flush=True)
    if DEV == "cuda" and not QUICK:
        ok &= check_route(lines)
    lines += ["", f"all passed: {ok}; {time.time() - t0:.0f} s", ""]
    text = "\n".join(lines)
    print(text)
    args.out = args.out or result_path("w4a16-check")
    with open(args.out, "w") as f:
        f.write(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
