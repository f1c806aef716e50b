"""Registers, spills, shared memory and PTX instruction counts of the Triton
quantize kernels as compiled for a GPU, on any machine (no GPU needed).

    python benchmarks/kernel_stats.py                  # sm90, the training casts
    python benchmarks/kernel_stats.py --arch 100 --out benchmarks/results/kernel-stats-sm100.md

Each case calls the quantizer's real planning code with a launcher that
records the launches instead of running them, then compiles every recorded
launch for the target (hardware fp8 conversions, as on the GPU) and reads
the register and spill counts from ptxas (``ptxas -v``, Triton's bundled
copy) and the SASS of the kernel body from ``nvdisasm`` (also bundled). Occupancy follows from the registers: an sm90 SM holds 65536 of them,
so a 4-warp program at 128 registers fits 4 times, at 154 three times. The
counts are static: they say where a kernel's budget goes, not how fast it
runs (that is bench_quantize.py's and tune_rowcol.py's job, on the GPU).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import breccia  # noqa: E402
from breccia.demo import environment_line, write_text_atomic  # noqa: E402
from breccia.kernels.triton import quantize as tq  # noqa: E402

_PTR = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.uint8: "*u8",
        torch.int8: "*i8", torch.int16: "*i16", torch.int32: "*i32", torch.float64: "*fp64"}

#: (label, what runs it)
CASES = [
    ("fp8 1x128 rowwise + columnwise (two passes)",
     lambda x: tq.quantize_rowwise_and_columnwise(x, breccia.Float8BlockScaling().spec("input"))),
    ("fp8 1x128 rowwise + columnwise (one pass, 128 x 128)",
     lambda x: tq.quantize_rowwise_and_columnwise(x, breccia.Float8BlockScaling().spec("input"),
                                                  config=tq.Config(2, 128, 4))),
    ("fp8 tensorwise rowwise + columnwise",
     lambda x: tq.quantize_rowwise_and_columnwise(x, breccia.Float8CurrentScaling().spec("input"))),
    ("mxfp8 rowwise + columnwise",
     lambda x: tq.quantize_rowwise_and_columnwise(x, breccia.MXFP8BlockScaling().spec("input"))),
    ("fp8 rowwise", lambda x: tq.quantize(x, breccia.Float8CurrentScaling(granularity="row").spec("input"))),
    ("fp8 1x128", lambda x: tq.quantize(x, breccia.Float8BlockScaling().spec("input"))),
    ("fp8 128x128", lambda x: tq.quantize(x, breccia.Float8BlockScaling().spec("weight"))),
    ("fp8 tensorwise", lambda x: tq.quantize(x, breccia.Float8CurrentScaling().spec("input"))),
    ("nvfp4", lambda x: tq.quantize(x, breccia.NVFP4BlockScaling().spec("input"))),
]


def record_launches(run, x: torch.Tensor) -> list[tuple]:
    """``(kernel, args, meta)`` of every launch ``run(x)`` makes."""
    seen = []

    def launcher(kernel, grid, key=None):
        def go(*args, **meta):
            seen.append((kernel, args, meta))

        return go

    saved, env = tq._eager, os.environ.get("TRITON_INTERPRET")
    tq._eager = lambda t: launcher
    # the planner takes a CPU tensor under the interpreter's flag; the kernels
    # themselves were decorated without it, so they compile for a GPU
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        run(x)
    finally:
        tq._eager = saved
        if env is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = env
    return seen


def _signature(kernel, args, meta) -> tuple[dict, dict, dict]:
    names = kernel.arg_names
    sig, consts, attrs = {}, {}, {}
    for i, (name, a) in enumerate(zip(names, args)):
        if isinstance(a, torch.Tensor):
            sig[name] = _PTR[a.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]  # the planner's buffers are 16-byte aligned
        elif isinstance(a, bool) or a is None:
            sig[name] = "constexpr"
            consts[name] = a
        elif isinstance(a, int):
            sig[name] = "i64" if abs(a) >= 2**31 else "i32"
            if a % 16 == 0 and a != 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(a, float):
            sig[name] = "fp32"
        else:
            raise TypeError(f"{name}: cannot describe a {type(a).__name__} argument")
    for name in names[len(args):]:
        if name in meta:
            sig[name] = "constexpr"
            consts[name] = meta[name]
    if "NATIVE" in consts:
        consts["NATIVE"] = True  # the GPU's fp8 conversions
    return sig, consts, attrs


def _ptxas(ptx: str, arch: int) -> tuple[str, list[str]]:
    """(ptxas -v's report, the SASS instructions of the kernel body: up to its
    last EXIT, so without out-of-line subroutines such as div_rn's slow path)."""
    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    # the bundled ptxas may be older than the PTX version Triton writes: the kernels use nothing newer
    ptx = re.sub(r"\.version \d+\.\d+", ".version 8.7", ptx)
    with tempfile.TemporaryDirectory() as d:
        src, cubin = os.path.join(d, "k.ptx"), os.path.join(d, "k.cubin")
        with open(src, "w") as f:
            f.write(ptx)
        out = subprocess.run([os.path.join(bin_dir, "ptxas"), f"-arch=sm_{arch}a", "-v", src, "-o", cubin],
                             capture_output=True, text=True)
        sass = []
        if os.path.exists(cubin):
            dis = subprocess.run([os.path.join(bin_dir, "nvdisasm"), "-c", cubin], capture_output=True, text=True)
            sass = [ln for ln in dis.stdout.splitlines() if re.match(r"\s+/\*[0-9a-f]{4}\*/", ln)]
            last_exit = max((i for i, ln in enumerate(sass) if re.search(r"\bEXIT\b", ln)), default=len(sass) - 1)
            sass = sass[:last_exit + 1]
    return out.stdout + out.stderr, sass


#: constexprs whose product is a kernel's tile (elements per program and pass)
_TILE_KEYS = (("BM", "NB", "BS"), ("B", "W"), ("BM", "BK"), ("BLOCK",))


def stats(kernel, args, meta, arch: int) -> dict:
    sig, consts, attrs = _signature(kernel, args, meta)
    src = ASTSource(fn=kernel, signature=sig, constexprs=consts, attrs=attrs)
    ck = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": meta.get("num_warps", 4)})
    ptx = ck.asm["ptx"]
    body = [ln.strip() for ln in ptx.splitlines()]
    instr = [ln for ln in body if ln and not ln.startswith(("//", ".", "$", "{", "}", ")", "("))]
    log, sass = _ptxas(ptx, arch)
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes spill stores", log)
    n = int(regs.group(1)) if regs else None
    warps = meta.get("num_warps", 4)
    tile = next((math.prod(meta[k] for k in keys) for keys in _TILE_KEYS if all(k in meta for k in keys)), None)
    # a thread's share of one tile; the amax pass loops over tiles, so its count is per loop body
    per_thread = tile / (32 * warps) if tile else None
    return {
        "kernel": kernel.fn.__name__,
        "warps": warps,
        "registers": n if n is not None else f"? ({log.strip().splitlines()[-1][:60] if log.strip() else 'no ptxas'})",
        # 65536 registers and 64 warps an SM (sm90 and sm100); shared memory is never the limit here
        "programs per SM": min(65536 // (n * 32 * warps), 64 // warps) if n else "-",
        "spill bytes": int(spill.group(1)) if spill else "-",
        "shared bytes": ck.metadata.shared,
        "PTX instructions": len(instr),
        "SASS instructions": len(sass) or "-",
        "elements a thread": f"{per_thread:g}" if per_thread else "-",
        "SASS per element": f"{len(sass) / per_thread:.1f}" if sass and per_thread else "-",
        "meta": ", ".join(f"{k}={v}" for k, v in meta.items() if k in ("B", "W", "BM", "BK", "NB", "BS", "ROWS", "ROWS2D",
                                                                      "BLOCK", "MODE", "AMAX_GIVEN")),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 (H100/H200) or 100")
    p.add_argument("--out", default=None, help="also write the table here (markdown)")
    args = p.parse_args(argv)
    x = torch.randn(256, 512, dtype=torch.bfloat16)  # the plan depends on the shape only through tile edges
    rows = []
    for label, run in CASES:
        for kernel, kargs, meta in record_launches(run, x):
            r = stats(kernel, kargs, meta, args.arch)
            r["case"] = label
            rows.append(r)
            print(r, flush=True)
    cols = ["case", "kernel", "meta", "warps", "registers", "programs per SM", "spill bytes", "shared bytes",
            "PTX instructions", "SASS instructions", "elements a thread", "SASS per element"]
    lines = [f"# Quantize kernels compiled for sm{args.arch}: registers and instructions", "",
             f"_{environment_line('cpu')} · triton {triton.__version__} · `benchmarks/kernel_stats.py`_", "",
             "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    lines += ["", "SASS counts are static, up to the kernel's last EXIT: both sides of every branch count (the "
              "FP8 casts' per-tile `div_rn` fallback, NVFP4's reciprocal and `div_rn` bodies, about half each), "
              "out-of-line subroutines (div_rn's slow path) do not. Per element: over a thread's share of one tile."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        write_text_atomic(args.out, text)


if __name__ == "__main__":
    main()
