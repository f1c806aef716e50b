"""Every Triton quantize kernel on a real GPU against the reference quantizer.

Run on a CUDA machine: ``python benchmarks/gpu_check_quantize.py``. For each
recipe spec and input (random bf16 at a real shape, ragged fp32, outliers,
edge values: zero / subnormal / tiny / huge blocks, NaN and inf) it compares
the kernel's payload, scale, global scale and zero point byte for byte with
``quantize_reference`` run on the GPU and on a CPU copy. It also checks that

* the integer fp8 rounding the CPU tests run (the interpreter's own fp8 casts
  truncate) gives the same bytes as the hardware ``cvt`` on the GPU,
* ``breccia.cast`` on CUDA takes the kernels and matches the reference,
* no kernel syncs with the host, and the tensorwise / NVFP4 two-pass
  kernels replay correctly from a CUDA graph,
* ``quantize_rowwise_and_columnwise`` matches the reference of ``x`` and ``x.T``,
* the NVFP4 block divisions are exact: the e4m3 reciprocal for every e4m3
  value, and inputs next to e4m3 and e2m1 rounding midpoints.

Prints a table and writes it into ``benchmarks/results/quantize-<device>.md``
(its own section; ``bench_quantize.py`` writes the timings beside it).
``--cpu`` runs the same on the CPU through Triton's interpreter, at small
shapes (a dry run of this script).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import traceback
from typing import Optional, Sequence

if "--cpu" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"

try:
    import breccia  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import triton
import triton.language as tl

import breccia
from breccia.demo import environment_line, write_text_atomic
from breccia.kernels.triton import quantize as tq
from breccia.kernels.triton.quant_math import e4m3_reciprocal
from breccia.quantize import block_for, quantize_reference, scale_grid_shape
from breccia.testing import edge_values, near_fp8_midpoints, near_nvfp4_midpoints

from results_path import result_path  # noqa: E402  (benchmarks/ is on sys.path)


#: (label, recipe, role, extra) -- extra: "amax" (a given amax), "noise"
#: (stochastic rounding), "block_amax"
SPECS = [
    ("fp8 tensorwise e4m3", breccia.Float8CurrentScaling(), "input", None),
    ("fp8 tensorwise e5m2", breccia.Float8CurrentScaling(fp8_format="hybrid"), "grad_output", None),
    ("fp8 tensorwise pow2", breccia.Float8CurrentScaling(power_of_2_scale=True), "input", None),
    ("delayed, given amax, margin 2", breccia.DelayedScaling(margin=2), "input", "amax"),
    ("fp8 rowwise", breccia.Float8CurrentScaling(granularity="row"), "input", None),
    ("fp8 rowwise pow2 e5m2", breccia.Float8CurrentScaling(granularity="row", power_of_2_scale=True,
                                                            fp8_format="hybrid"), "grad_output", None),
    ("fp8 1x128", breccia.Float8BlockScaling(), "input", None),
    ("fp8 1x128 pow2", breccia.Float8BlockScaling(power_of_2_scale=True), "input", None),
    ("fp8 1x128 e5m2", breccia.Float8BlockScaling(fp8_format="hybrid"), "grad_output", None),
    ("fp8 1x128, block amax", breccia.Float8BlockScaling(), "input", "block_amax"),
    ("fp8 128x128", breccia.Float8BlockScaling(), "weight", None),
    ("fp8 128x128 pow2", breccia.Float8BlockScaling(power_of_2_scale=True), "weight", None),
    ("mxfp8 floor", breccia.MXFP8BlockScaling(), "input", None),
    ("mxfp8 rceil", breccia.MXFP8BlockScaling(scale_rule="rceil"), "input", None),
    ("mxfp8 floor e5m2", breccia.MXFP8BlockScaling(fp8_format="e5m2"), "input", None),
    ("nvfp4 1x16", breccia.NVFP4BlockScaling(), "input", None),
    ("nvfp4 1x16, given amax", breccia.NVFP4BlockScaling(), "input", "amax"),
    ("nvfp4 16x16", breccia.NVFP4BlockScaling(weight_block=(16, 16)), "weight", None),
    ("nvfp4 1x16 stochastic", breccia.NVFP4BlockScaling(stochastic_rounding=True), "grad_output", "noise"),
    ("int4 sym bf16 g128", breccia.INT4Scaling(), "weight", None),
    ("int4 asym bf16 g32", breccia.INT4Scaling(symmetric=False, group_size=32), "weight", None),
    ("int4 sym fp16 g64", breccia.INT4Scaling(scale_dtype="fp16", group_size=64), "weight", None),
    ("int4 asym stochastic", breccia.INT4Scaling(symmetric=False), "weight", "noise"),
]


#: the spec whose scale and rounding midpoints place the near-midpoint input (amax 3.3)
_E4M3 = breccia.Float8CurrentScaling().spec("input")


def _inputs(small: bool, dev: str) -> list[tuple[str, torch.Tensor, bool]]:
    """(label, x, nan_aware)."""
    g = torch.Generator(device=dev).manual_seed(0)
    big = (96, 256) if small else (4096, 4096)
    rag = (37, 300) if small else (1111, 3000)
    out = [
        (f"randn {big[0]}x{big[1]} bf16", torch.randn(*big, device=dev, generator=g).bfloat16(), False),
        (f"randn {rag[0]}x{rag[1]} fp32", torch.randn(*rag, device=dev, generator=g), False),
    ]
    z = torch.randn(*rag, device=dev, generator=g)
    chi = (torch.randn(3, *rag, device=dev, generator=g) ** 2).sum(0)
    out.append((f"student-t {rag[0]}x{rag[1]} fp32", z / torch.sqrt(chi / 3), False))
    out.append((f"edge values {rag[0]}x{rag[1]} fp32", edge_values(*rag, dev, 1), False))
    out.append((f"near e4m3 midpoints {rag[0]}x{rag[1]} fp32", near_fp8_midpoints(_E4M3, 3.3, *rag, dev, 2), False))
    out.append((f"tiny tensor (1e-39) {rag[0]}x{rag[1]} fp32", torch.randn(*rag, device=dev, generator=g) * 1e-39, False))
    nan = torch.randn(*rag, device=dev, generator=g)
    nan[3, 5] = float("nan")
    nan[7, 100] = float("inf")
    nan[9, 2] = -float("inf")
    out.append((f"NaN / inf {rag[0]}x{rag[1]} fp32", nan, True))
    return out


def _bytes(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.detach().reshape(-1).contiguous().view(torch.uint8).cpu()


def _nan_of(t: torch.Tensor) -> torch.Tensor:
    """Which elements of an output are NaN (payloads: never compared)."""
    if t.dtype == torch.uint8:
        return torch.zeros(t.shape, dtype=torch.bool)
    return torch.isnan(t.detach().cpu().float()) if t.dtype != torch.float8_e8m0fnu else (t.view(torch.uint8) == 255).cpu()


def compare(got, ref, nan_aware: bool) -> str:
    """'ok' or which outputs differ and in how many bytes. With ``nan_aware``
    NaN scales only need to be NaN on both sides, and the payload and zero
    points of NaN blocks are not compared (their bits are unspecified)."""
    bad = []
    for name, a, b in zip(("qdata", "scale", "global", "zero_point"), got, ref):
        if (a is None) != (b is None):
            bad.append(f"{name}: missing")
            continue
        if a is None:
            continue
        if tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype:
            bad.append(f"{name}: {tuple(a.shape)} {a.dtype} vs {tuple(b.shape)} {b.dtype}")
            continue
        if nan_aware and name != "qdata" and name != "zero_point":
            na, nb = _nan_of(a), _nan_of(b)
            same = torch.equal(na, nb) and torch.equal(_bytes(a)[~na.reshape(-1).repeat_interleave(a.element_size())],
                                                       _bytes(b)[~nb.reshape(-1).repeat_interleave(b.element_size())])
            if not same:
                bad.append(f"{name}: NaN pattern or finite bytes differ")
            continue
        if nan_aware:
            continue  # payloads of NaN blocks: see docs/kernels.md
        n = int((_bytes(a) != _bytes(b)).sum())
        if n:
            bad.append(f"{name}: {n} bytes differ")
    return "ok" if not bad else "; ".join(bad)


def _kwargs(extra: Optional[str], x: torch.Tensor, spec) -> dict:
    g = torch.Generator(device=x.device).manual_seed(7)
    if extra == "amax":
        return {"amax": x.float().abs().amax() * 0.75 + 0.5}
    if extra == "noise":
        return {"noise": torch.rand(x.shape, device=x.device, generator=g)}
    if extra == "block_amax":
        grid = scale_grid_shape(tuple(x.shape), block_for(spec.block, x.dim()))
        return {"block_amax": torch.rand(grid, device=x.device, generator=g) * 4}
    return {}


def _cpu(kw: dict) -> dict:
    return {k: v.cpu() for k, v in kw.items()}


def check_specs(small: bool, dev: str, cpu_ref: bool = True) -> list[dict]:
    rows = []
    inputs = _inputs(small, dev)
    for label, recipe, role, extra in SPECS:
        spec = recipe.spec(role)
        for xlabel, x, nan_aware in inputs:
            if nan_aware and extra is not None:
                continue
            kw = _kwargs(extra, x, spec)
            row = {"spec": label, "input": xlabel}
            try:
                got = tq.quantize(x, spec, **kw)
                again = tq.quantize(x, spec, **kw)  # the second launch takes the direct-launch shortcut
                gref = quantize_reference(x, spec, **kw)
                row["vs GPU reference"] = compare(got, gref, nan_aware)
                if dev == "cuda":
                    row["2nd call (direct launch)"] = compare(again, gref, nan_aware)
                big = x.numel() > 4_000_000
                if cpu_ref and not big:
                    cref = quantize_reference(x.cpu(), spec, **_cpu(kw))
                    row["vs CPU reference"] = compare(got, cref, nan_aware)
                    if row["vs CPU reference"] != "ok" and row["vs GPU reference"] == "ok":
                        ref_gap = compare(gref, cref, nan_aware)
                        if ref_gap == row["vs CPU reference"]:  # the reference itself differs by device
                            row["vs CPU reference"] = f"as the GPU reference (CPU vs GPU reference: {ref_gap})"
                else:
                    row["vs CPU reference"] = "-"
            except Exception as e:  # report, keep going
                row["vs GPU reference"] = f"ERROR {type(e).__name__}: {str(e).splitlines()[0][:120]}"
                traceback.print_exc()
            rows.append(row)
            print(f"{label:32s} {xlabel:36s} {row.get('vs GPU reference')!s:12s} {row.get('vs CPU reference', '-')}",
                  flush=True)
    return rows


def check_emulation(small: bool, dev: str) -> list[dict]:
    """The integer fp8 rounding (what the CPU tests run) against the GPU's
    hardware conversion, on the same kernels."""
    rows = []
    for xlabel, x, nan_aware in _inputs(small, dev)[:1] + _inputs(small, dev)[3:4]:
        for label, recipe, role, extra in SPECS:
            if extra is not None:
                continue
            spec = recipe.spec(role)
            native = tq.quantize(x, spec)
            tq.FORCE_EMULATION = True
            try:
                emul = tq.quantize(x, spec)
            finally:
                tq.FORCE_EMULATION = False
            rows.append({"spec": label, "input": xlabel, "emulated vs hardware fp8": compare(emul, native, False)})
    bad = [r for r in rows if r["emulated vs hardware fp8"] != "ok"]
    print(f"emulated vs hardware fp8 casts: {len(rows) - len(bad)}/{len(rows)} identical", flush=True)
    return rows


def check_cast_route(dev: str) -> list[dict]:
    """``breccia.cast`` (the user path, through ``breccia::quantize``)."""
    rows = []
    x = torch.randn(512, 1024, device=dev, dtype=torch.bfloat16)
    for label, recipe, role, extra in SPECS:
        if extra is not None:
            continue
        st = breccia.cast(x, recipe, role)
        ref = quantize_reference(x, recipe.spec(role))
        got = (st.qdata, st.scale, st.global_scale, st.zero_point)
        rows.append({"spec": label, "breccia.cast vs reference": compare(got, ref, False)})
    return rows


def check_sync_and_graphs(dev: str) -> list[dict]:
    rows = []
    x = torch.randn(2048, 4096, device=dev, dtype=torch.bfloat16)
    for label, recipe, role, extra in SPECS:
        spec = recipe.spec(role)
        kw = _kwargs(extra, x, spec)
        row = {"spec": label}
        try:
            tq.quantize(x, spec, **kw)  # compile first
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                tq.quantize(x, spec, **kw)
                row["host sync"] = "none"
            finally:
                torch.cuda.set_sync_debug_mode(0)
        except Exception as e:
            row["host sync"] = f"{type(e).__name__}: {str(e)[:80]}"
        if extra is None and label.split()[0] in ("fp8", "nvfp4") and ("tensorwise" in label or "nvfp4" in label):
            try:
                xs = x.clone()
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    tq.quantize(xs, spec)
                torch.cuda.current_stream().wait_stream(s)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    out = tq.quantize(xs, spec)
                xs.copy_(torch.randn_like(xs) * 3)
                graph.replay()
                torch.cuda.synchronize()
                row["CUDA graph replay"] = compare(out, quantize_reference(xs, spec), False)
            except Exception as e:
                row["CUDA graph replay"] = f"{type(e).__name__}: {str(e)[:80]}"
        rows.append(row)
    return rows


def check_rowcol(small: bool, dev: str) -> list[dict]:
    rows = []
    inputs = _inputs(small, dev)
    for xlabel, x, _ in inputs[:2] + [i for i in inputs if i[0].startswith("near")]:
        for label, recipe, role in [
            ("fp8 1x128 + columnwise", breccia.Float8BlockScaling(), "input"),
            ("fp8 1x128 pow2 e5m2 + columnwise", breccia.Float8BlockScaling(power_of_2_scale=True, fp8_format="hybrid"),
             "grad_output"),
            ("mxfp8 floor + columnwise", breccia.MXFP8BlockScaling(), "input"),
            ("mxfp8 rceil + columnwise", breccia.MXFP8BlockScaling(scale_rule="rceil"), "input"),
            ("fp8 tensorwise + columnwise", breccia.Float8CurrentScaling(), "input"),
            ("fp8 tensorwise e5m2 + columnwise", breccia.Float8CurrentScaling(fp8_format="hybrid"), "grad_output"),
            ("fp8 tensorwise pow2 + columnwise", breccia.Float8CurrentScaling(power_of_2_scale=True), "input"),
            ("fp8 delayed (given amax) + columnwise", breccia.DelayedScaling(margin=1), "input"),
        ]:
            spec = recipe.spec(role)
            amax = x.float().abs().amax() * 0.75 if label.startswith("fp8 delayed") else None
            # block specs: every implementation (see quantize._run_rowcol), the default first
            impls = [None] if spec.tensorwise else [None, tq.Config(2, 128, 4), tq.Config(4, 64, 4)]
            ref_a = quantize_reference(x, spec, amax=amax)
            ref_b = quantize_reference(x.t(), spec, amax=amax)
            for cfg in impls:
                a, b = tq.quantize_rowwise_and_columnwise(x, spec, amax, config=cfg)
                a2, b2 = tq.quantize_rowwise_and_columnwise(x, spec, amax, config=cfg)  # relaunch: eager's direct launcher
                rows.append({
                    "spec": label + ("" if cfg is None else f" {tuple(cfg)}"), "input": xlabel,
                    "rowwise": compare(a, ref_a, False),
                    "columnwise (x.T)": compare(b, ref_b, False),
                    "relaunch, both": compare(a2, a, False) if compare(b2, b, False) == "ok" else "columnwise differs",
                })
    return rows


@triton.jit
def _e4m3_reciprocal_kernel(b_ptr, o_ptr, N, NATIVE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    m = offs < N
    tl.store(o_ptr + offs, e4m3_reciprocal(tl.load(b_ptr + offs, mask=m, other=1.0), NATIVE), mask=m)


def check_nvfp4_divisions(small: bool, dev: str) -> list[dict]:
    """The NVFP4 block divisions: ``e4m3_reciprocal`` (approximate reciprocal
    and a Newton step) against float32 ``1 / b`` for every positive normal
    e4m3 value, on the hardware and the emulated path; then the kernels on
    inputs next to e4m3 and e2m1 rounding midpoints, for global scales inside
    the reciprocal path's range and under it (``div_rn``)."""
    rows = []
    b = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    b = b[torch.isfinite(b) & (b >= 2.0**-6)].unique()
    ref = 1.0 / b  # float32 division on the CPU: correctly rounded
    for native in (True, False) if dev == "cuda" else (False,):  # (the interpreter runs no PTX)
        out = torch.empty_like(b, device=dev)
        _e4m3_reciprocal_kernel[(1,)](b.to(dev), out, b.numel(), NATIVE=native,
                                      BLOCK=triton.next_power_of_2(b.numel()))
        bad = int((out.cpu().view(torch.int32) != ref.view(torch.int32)).sum())
        rows.append({"spec": f"e4m3_reciprocal ({'rcp.approx' if native else 'emulated'})",
                     "input": f"all {b.numel()} positive normal e4m3 values",
                     "vs GPU reference": "ok" if bad == 0 else f"{bad} values differ", "vs CPU reference": "-"})
    m, k = (64, 256) if small else (1024, 4096)
    for label, recipe, role in [("nvfp4 1x16", breccia.NVFP4BlockScaling(), "input"),
                                ("nvfp4 16x16", breccia.NVFP4BlockScaling(weight_block=(16, 16)), "weight")]:
        spec = recipe.spec(role)
        for t_amax in (1.37, 3.1e-20, 7.7e25, 1e-33):
            x = near_nvfp4_midpoints(spec, t_amax, m, k, dev, 3)
            amax = torch.tensor(t_amax, device=dev)
            got = tq.quantize(x, spec, amax=amax)
            rows.append({"spec": label + ", given amax", "input": f"near e4m3 / e2m1 midpoints, amax {t_amax:g}",
                         "vs GPU reference": compare(got, quantize_reference(x, spec, amax=amax), False),
                         "vs CPU reference": compare(got, quantize_reference(x.cpu(), spec, amax=amax.cpu()), False)})
    return rows


def check_compile(dev: str) -> list[dict]:
    """``breccia::triton_quantize`` (a ``triton_op``) inside ``torch.compile(fullgraph=True)``,
    next to an op Inductor can fuse before it."""
    rows = []
    x = torch.randn(1024, 2048, device=dev, dtype=torch.bfloat16)
    for label, recipe, role, extra in SPECS:
        if extra is not None or label not in ("fp8 tensorwise e4m3", "fp8 1x128", "mxfp8 floor", "nvfp4 1x16"):
            continue
        spec = recipe.spec(role)
        key = spec.to_key()

        def f(t: torch.Tensor, key: str = key):
            return torch.ops.breccia.triton_quantize(t * 2 + 1, key, None, None, None)

        try:
            torch._dynamo.reset()
            out = torch.compile(f, fullgraph=True)(x)
            ref = quantize_reference(x * 2 + 1, spec)
            got = (out[0], out[1], out[2] if spec.has_global_scale else None, out[3] if spec.has_zero_point else None)
            rows.append({"spec": label, "torch.compile(fullgraph=True) vs reference": compare(got, ref, False)})
        except Exception as e:
            rows.append({"spec": label, "torch.compile(fullgraph=True) vs reference":
                         f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"})
    return rows


# --------------------------------------------------------------------------- report


def md_table(rows: Sequence[dict]) -> str:
    if not rows:
        return ""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join(" --- " for _ in keys) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(k, "-")).replace("|", "/") for k in keys) + " |")
    return "\n".join(lines)


def update_section(path: str, name: str, text: str, title: str) -> None:
    """Replace (or append) the section between ``<!-- name -->`` markers of
    the Markdown file at ``path``, so two scripts can share one results file."""
    begin, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    old = open(path, encoding="utf-8").read() if os.path.exists(path) else f"# {title}\n\n"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    pat = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    new = pat.sub(lambda _: block, old) if pat.search(old) else old.rstrip() + "\n\n" + block + "\n"
    write_text_atomic(path, new)


def run(small: bool, dev: str) -> tuple[str, int]:
    """All checks; returns (Markdown section, number of failures)."""
    specs = check_specs(small, dev)
    sections = [("Every spec against the reference", specs)]
    if dev == "cuda":
        sections.append(("Integer fp8 rounding (the CPU tests' path) vs the GPU's cvt", check_emulation(small, dev)))
        sections.append(("`breccia.cast` on CUDA", check_cast_route(dev)))
        sections.append(("Host syncs and CUDA graphs", check_sync_and_graphs(dev)))
        sections.append(("`breccia::triton_quantize` under torch.compile", check_compile(dev)))
    sections.append(("Fused rowwise + columnwise", check_rowcol(small, dev)))
    sections.append(("NVFP4 block divisions", check_nvfp4_divisions(small, dev)))
    failures = sum(
        1 for _, rows in sections for r in rows for k, v in r.items()
        if k not in ("spec", "input") and v not in ("ok", "-", "none") and not str(v).startswith("as the GPU reference")
    )
    text = f"## Correctness on the GPU (`benchmarks/gpu_check_quantize.py`)\n\n_{environment_line(dev)}_\n\n"
    text += ("Byte-for-byte comparison with `quantize_reference` (payload, scale, global scale, zero point); "
             "CPU reference only at shapes up to 4M elements. NaN inputs: scales compared NaN-for-NaN, "
             "payloads of NaN blocks not compared.\n\n")
    text += f"**{failures} failures.**\n\n"
    for title, rows in sections:
        text += f"### {title}\n\n{md_table(rows)}\n\n"
    return text, failures


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=None, help="results file, a section replaced (default: results/quantize-<device>.md)")
    parser.add_argument("--cpu", action="store_true", help="dry run on the CPU (Triton interpreter, small shapes)")
    args = parser.parse_args(argv)
    dev = "cpu" if args.cpu else "cuda"
    if dev == "cuda" and not torch.cuda.is_available():
        print("no CUDA device; use --cpu for a dry run")
        return 2
    text, failures = run(args.cpu, dev)
    print(text)
    args.output = args.output or result_path("quantize")
    update_section(args.output, "gpu-check", text, "breccia quantize kernels")
    print(f"wrote {os.path.relpath(args.output)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
