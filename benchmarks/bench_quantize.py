"""Quantize throughput: breccia's Triton kernels against their peers, same run.

Run on a CUDA machine: ``python benchmarks/bench_quantize.py [--check]``.
Input: 8192 x 8192 bf16 (random normal). For each recipe it times

* ``breccia.cast`` in eager mode (the user path: custom op, kernel, the
  ``ScaledTensor``), and the Triton kernel alone (``breccia.kernels.triton.
  quantize.quantize``), with its best tile from a small sweep;
* the peers a user would otherwise pick, in the same process: eager PyTorch
  and ``torch.compile`` of the plain-PyTorch quantizer (tensorwise, rowwise,
  1x128, 128x128), torchao ``to_mx`` compiled (MXFP8), torchao's
  ``nvfp4_quantize`` (what ``NVFP4Tensor.to_nvfp4`` runs) compiled.

Effective bandwidth counts the input read once plus the payload written once
(scales are not counted). Times: ``triton.testing.do_bench`` median (L2
flushed before every run). Writes ``benchmarks/results/quantize-<device>.md``
(its own section; ``--check`` also runs ``gpu_check_quantize.py`` first),
``quantize-<device>.png`` and, with ``--json``, every number. ``--cpu`` is a dry
run through Triton's interpreter at a small shape (no timings worth reading).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable, Optional, Sequence

if "--cpu" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import breccia  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import triton

import breccia
from breccia.demo import environment_line
from breccia.kernels.triton import launch
from breccia.kernels.triton import quantize as tq
from gpu_check_quantize import md_table, update_section
from results_path import result_path

E4M3 = torch.float8_e4m3fn
TARGETS = {"tensorwise": 1.6, "rowwise": 2.75, "1x128": 2.75, "mxfp8": 2.75, "nvfp4": 2.4}


# --------------------------------------------------------------------------- peers (plain PyTorch)


def plain_tensorwise(x: torch.Tensor):
    amax = x.abs().amax().float()
    s = torch.clamp(amax / 448.0, min=1e-12)
    return (x.float() / s).clamp(-448.0, 448.0).to(E4M3), s


def plain_rowwise(x: torch.Tensor):
    amax = x.abs().amax(dim=-1, keepdim=True).float()
    s = torch.clamp(amax / 448.0, min=1e-12)
    return (x.float() / s).clamp(-448.0, 448.0).to(E4M3), s


def plain_1x128(x: torch.Tensor):
    m, k = x.shape
    xb = x.float().reshape(m, k // 128, 128)
    s = torch.clamp(xb.abs().amax(dim=-1, keepdim=True) / 448.0, min=1e-12)
    return (xb / s).clamp(-448.0, 448.0).to(E4M3).reshape(m, k), s.squeeze(-1)


def plain_128x128(x: torch.Tensor):
    m, k = x.shape
    xb = x.float().reshape(m // 128, 128, k // 128, 128)
    s = torch.clamp(xb.abs().amax(dim=(1, 3), keepdim=True) / 448.0, min=1e-12)
    return (xb / s).clamp(-448.0, 448.0).to(E4M3).reshape(m, k), s.reshape(m // 128, k // 128)


def plain_tensorwise_both(x: torch.Tensor):
    q, s = plain_tensorwise(x)
    return q, q.t().contiguous(), s


def plain_1x128_both(x: torch.Tensor):
    return plain_1x128(x), plain_1x128(x.t().contiguous())


def torchao_peers() -> dict:
    """Compiled-ready torchao quantizers (missing torchao: none)."""
    try:
        from torchao.prototype.mx_formats.config import ScaleCalculationMode
        from torchao.prototype.mx_formats.mx_tensor import to_mx
        from torchao.prototype.mx_formats.nvfp4_tensor import nvfp4_quantize, per_tensor_amax_to_scale
    except Exception as e:  # pragma: no cover - depends on the machine
        print(f"torchao unavailable: {type(e).__name__}: {e}")
        return {}
    return {
        "to_mx floor": lambda x: to_mx(x, E4M3, 32, ScaleCalculationMode.FLOOR),
        "to_mx rceil": lambda x: to_mx(x, E4M3, 32, ScaleCalculationMode.RCEIL),
        "nvfp4 (amax inside)": lambda x: nvfp4_quantize(x, 16, per_tensor_amax_to_scale(torch.max(torch.abs(x)))),
        "nvfp4 (given scale)": lambda x, s: nvfp4_quantize(x, 16, s),
    }


# --------------------------------------------------------------------------- timing


def bench(fn: Callable[[], object], dry: bool) -> float:
    """Median milliseconds (L2 flushed before each run)."""
    if dry:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    fn()  # compile outside the timing, then let the clocks ramp up in a long warm-up
    torch.cuda.synchronize()
    return float(triton.testing.do_bench(fn, warmup=60, rep=150, return_mode="median"))


def host_us(fn: Callable[[], object], dry: bool, n: int = 200) -> float:
    """Host microseconds per call (launch overhead), on a quiet GPU queue."""
    if dry:
        return float("nan")
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    dt = time.perf_counter() - t
    torch.cuda.synchronize()
    return dt / n * 1e6


def tbps(nbytes: float, ms: float) -> float:
    return nbytes / (ms * 1e-3) / 1e12


# --------------------------------------------------------------------------- cases


def cases(amax: torch.Tensor) -> list[dict]:
    """What is measured: recipe, role, the kernel's sweep, the peer."""
    C = tq.Config
    fp8_1d = [C(2, 2048, 4), C(4, 2048, 8), C(4, 1024, 4), C(8, 1024, 8)]
    return [
        dict(name="fp8 tensorwise", key="tensorwise", recipe=breccia.Float8CurrentScaling(), role="input",
             bits=8, peer="compile tensorwise", peer2="eager tensorwise",
             sweep=[C(1, 8192, 8), C(1, 4096, 4)]),
        dict(name="fp8 delayed (given amax, 1 pass)", key=None, recipe=breccia.DelayedScaling(), role="input",
             bits=8, kwargs={"amax": amax}, peer="compile tensorwise", sweep=[]),
        dict(name="fp8 rowwise", key="rowwise", recipe=breccia.Float8CurrentScaling(granularity="row"), role="input",
             bits=8, peer="compile rowwise", sweep=[C(1, 8192, 4), C(1, 8192, 8), C(2, 8192, 16)]),
        dict(name="fp8 1x128", key="1x128", recipe=breccia.Float8BlockScaling(), role="input", bits=8,
             peer="compile 1x128", sweep=fp8_1d),
        dict(name="fp8 128x128", key=None, recipe=breccia.Float8BlockScaling(), role="weight", bits=8,
             peer="compile 128x128", sweep=[C(128, 128, 8), C(128, 128, 16), C(128, 128, 32)]),
        dict(name="mxfp8 floor", key="mxfp8", recipe=breccia.MXFP8BlockScaling(), role="input", bits=8,
             peer="to_mx floor", sweep=fp8_1d),
        dict(name="mxfp8 rceil", key=None, recipe=breccia.MXFP8BlockScaling(scale_rule="rceil"), role="input",
             bits=8, peer="to_mx rceil", sweep=[]),
        dict(name="nvfp4 (2 passes)", key="nvfp4", recipe=breccia.NVFP4BlockScaling(), role="input", bits=4,
             peer="nvfp4 (amax inside)",
             sweep=[C(8, 512, 4), C(16, 512, 8), C(4, 1024, 4), C(16, 256, 4)]),
        dict(name="nvfp4 (given amax, 1 pass)", key=None, recipe=breccia.NVFP4BlockScaling(), role="input", bits=4,
             kwargs={"amax": amax}, peer="nvfp4 (given scale)", sweep=[]),
        dict(name="int4 sym g128", key=None, recipe=breccia.INT4Scaling(), role="weight", bits=4, peer=None,
             sweep=[]),
    ]


def run(dry: bool, size: int, do_sweep: bool, partial: Optional[Callable] = None) -> tuple[list[dict], list[dict]]:
    dev = "cpu" if dry else "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(size, size, device=dev, generator=g).to(torch.bfloat16)
    amax = x.float().abs().amax()
    n = x.numel()
    maybe_compile = (lambda f: f) if dry else torch.compile
    peers = {
        "eager tensorwise": plain_tensorwise,
        "compile tensorwise": maybe_compile(plain_tensorwise),
        "compile rowwise": maybe_compile(plain_rowwise),
        "compile 1x128": maybe_compile(plain_1x128),
        "compile 128x128": maybe_compile(plain_128x128),
        "compile 1x128 + transposed": maybe_compile(plain_1x128_both),
        "compile tensorwise + transposed": maybe_compile(plain_tensorwise_both),
    }
    for k, f in torchao_peers().items():
        peers[k] = maybe_compile(f)
    given_scale = (amax / 2688.0).float()
    peer_ms: dict[str, float] = {}

    def time_peer(name: str) -> Optional[float]:
        if name is None or name not in peers:
            return None
        if name not in peer_ms:
            f = peers[name]
            call = (lambda: f(x, given_scale)) if name == "nvfp4 (given scale)" else (lambda: f(x))
            try:
                call()
                peer_ms[name] = bench(call, dry)
            except Exception as e:
                print(f"peer {name} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                peer_ms[name] = float("nan")
        return peer_ms[name]

    rows, sweep_rows = [], []
    # ceilings in this run: a device copy (read + write), the amax pass alone (read)
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x), dry)
    sweep_rows.append({"recipe": "ceiling: device copy (read + write)", "config (rows, width, warps)": "-",
                       "ms": round(ms, 4), "TB/s": round(tbps(2 * n * x.element_size(), ms), 3)})
    del y
    sms = torch.cuda.get_device_properties(0).multi_processor_count if not dry else 4
    amax_variants = [tq.AMAX_PASS] + ([tq.Config(8, 8192, 8), tq.Config(4, 16384, 16), tq.Config(16, 4096, 8)]
                                      if do_sweep else [])
    best_amax = (float("inf"), tq.AMAX_PASS)
    for ap in amax_variants:
        part = torch.empty(ap.rows * sms, dtype=torch.int32, device=dev)
        iters = triton.cdiv(triton.cdiv(n, ap.width), part.numel())
        ms = bench(lambda: tq.partial_amax_kernel[(part.numel(),)](x, part, n, iters, BLOCK=ap.width,
                                                                    num_warps=ap.warps), dry)
        sweep_rows.append({"recipe": "amax pass alone (read only)", "config (rows, width, warps)":
                           f"{ap.rows}/SM, {ap.width}, {ap.warps}", "ms": round(ms, 4),
                           "TB/s": round(tbps(n * x.element_size(), ms), 3)})
        best_amax = min(best_amax, (ms, ap))
    if do_sweep:  # the kernel timings below use the best amax pass
        tq.AMAX_PASS = best_amax[1]
    for c in cases(amax):
        spec = c["recipe"].spec(c["role"])
        kw = c.get("kwargs", {})
        nbytes = n * x.element_size() + n * c["bits"] / 8
        # the sweep: default config first; the best one is the kernel's time
        best_ms, best_cfg = bench(lambda: tq.quantize(x, spec, **kw), dry), "default"
        if do_sweep:
            variants = [(str(tuple(cf)), dict(config=cf)) for cf in c["sweep"]]
            if c["key"] == "tensorwise":
                variants.append(("default, forward order", dict(reverse=False)))
            for label, extra in variants:
                try:
                    ms = bench(lambda: tq.quantize(x, spec, **kw, **extra), dry)
                except Exception as e:
                    print(f"{c['name']} {label}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                    continue
                sweep_rows.append({"recipe": c["name"], "config (rows, width, warps)": label,
                                   "ms": round(ms, 4), "TB/s": round(tbps(nbytes, ms), 3)})
                if ms < best_ms:
                    best_ms, best_cfg = ms, label
            if c["key"] == "nvfp4":
                default_enc = tq.E2M1_ENCODER
                for enc, label in ((0, "7 comparisons"),):
                    tq.E2M1_ENCODER = enc
                    ms = bench(lambda: tq.quantize(x, spec, **kw), dry)
                    sweep_rows.append({"recipe": c["name"], "config (rows, width, warps)": f"default, e2m1 by {label}",
                                       "ms": round(ms, 4), "TB/s": round(tbps(nbytes, ms), 3)})
                tq.E2M1_ENCODER = default_enc
        sweep_rows.append({"recipe": c["name"], "config (rows, width, warps)": "default (in breccia.cast)",
                           "ms": round(bench(lambda: tq.quantize(x, spec, **kw), dry), 4), "TB/s": None})
        cast_fn = (lambda: breccia.cast(x, c["recipe"], c["role"], amax=kw["amax"])) if "amax" in kw else (
            lambda: breccia.cast(x, c["recipe"], c["role"]))
        cast_ms = bench(cast_fn, dry)
        p_ms = time_peer(c["peer"])
        row = {
            "recipe": c["name"],
            "breccia.cast ms": cast_ms,
            "breccia.cast TB/s": tbps(nbytes, cast_ms),
            "kernel ms": best_ms,
            "kernel TB/s": tbps(nbytes, best_ms),
            "best config": best_cfg,
            "host us/cast": host_us(cast_fn, dry),
            "peer": c["peer"] or "-",
            "peer ms": p_ms,
            "peer TB/s": tbps(nbytes, p_ms) if p_ms else None,
            "kernel vs peer": (p_ms / best_ms) if p_ms else None,
            "cast vs peer": (p_ms / cast_ms) if p_ms else None,
            "target TB/s": TARGETS.get(c["key"]),
        }
        if c.get("peer2"):
            row["eager peer ms"] = time_peer(c["peer2"])
        row["host us/kernel"] = host_us(lambda: tq.quantize(x, spec, **kw), dry)
        rows.append(row)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
        if partial:
            partial(rows, sweep_rows)

    # fused rowwise + columnwise 1x128 (2 payloads written)
    spec = breccia.Float8BlockScaling().spec("input")
    nbytes = n * x.element_size() + 2 * n
    best_ms, best_cfg = bench(lambda: tq.quantize_rowwise_and_columnwise(x, spec), dry), "default"
    if do_sweep:  # config.rows: 2 = 2-D tile kernel, 3 = 3-D tile kernel
        for cf in [tq.Config(2, 128, 8), tq.Config(2, 128, 16), tq.Config(3, 128, 16)]:
            ms = bench(lambda: tq.quantize_rowwise_and_columnwise(x, spec, config=cf), dry)
            sweep_rows.append({"recipe": "fp8 1x128 + columnwise", "config (rows, width, warps)": str(tuple(cf)),
                               "ms": round(ms, 4), "TB/s": round(tbps(nbytes, ms), 3)})
            if ms < best_ms:
                best_ms, best_cfg = ms, str(tuple(cf))
        mx = breccia.MXFP8BlockScaling().spec("input")
        for cf in [tq.Config(2, 128, 4), tq.Config(2, 256, 8)]:
            ms = bench(lambda: tq.quantize_rowwise_and_columnwise(x, mx, config=cf), dry)
            sweep_rows.append({"recipe": "mxfp8 + columnwise", "config (rows, width, warps)": str(tuple(cf)),
                               "ms": round(ms, 4), "TB/s": round(tbps(nbytes, ms), 3)})
    p_ms = time_peer("compile 1x128 + transposed")
    sep = bench(lambda: (tq.quantize(x, spec), tq.quantize(x.t(), spec)), dry)
    rows.append({"recipe": "fp8 1x128 + columnwise (fused)", "kernel ms": best_ms, "kernel TB/s": tbps(nbytes, best_ms),
                 "best config": best_cfg, "peer": "compile 1x128 + transposed", "peer ms": p_ms,
                 "peer TB/s": tbps(nbytes, p_ms) if p_ms else None,
                 "kernel vs peer": (p_ms / best_ms) if p_ms else None,
                 "two breccia kernels ms": sep})
    print(rows[-1], flush=True)

    # fused tensorwise + transposed payload (training's forward casts of x and W, backward's of dy)
    spec = breccia.Float8CurrentScaling().spec("input")
    best_ms, best_cfg = bench(lambda: tq.quantize_rowwise_and_columnwise(x, spec), dry), "default"
    if do_sweep:
        for cf in [tq.Config(32, 128, 4), tq.Config(64, 64, 4), tq.Config(64, 128, 4), tq.Config(128, 64, 8),
                   tq.Config(128, 128, 8), tq.Config(64, 256, 8)]:
            ms = bench(lambda: tq.quantize_rowwise_and_columnwise(x, spec, config=cf), dry)
            sweep_rows.append({"recipe": "fp8 tensorwise + columnwise", "config (rows, width, warps)": str(tuple(cf)),
                               "ms": round(ms, 4), "TB/s": round(tbps(nbytes, ms), 3)})
            if ms < best_ms:
                best_ms, best_cfg = ms, str(tuple(cf))
    p_ms = time_peer("compile tensorwise + transposed")
    sep = bench(lambda: tq.quantize(x, spec).qdata.t().contiguous(), dry)
    rows.append({"recipe": "fp8 tensorwise + columnwise (fused)", "kernel ms": best_ms,
                 "kernel TB/s": tbps(nbytes, best_ms), "best config": best_cfg,
                 "peer": "compile tensorwise + transposed", "peer ms": p_ms,
                 "peer TB/s": tbps(nbytes, p_ms) if p_ms else None,
                 "kernel vs peer": (p_ms / best_ms) if p_ms else None,
                 "two breccia kernels ms": sep})
    print(rows[-1], flush=True)
    if not dry:
        rows_host = host_breakdown(x)
        for r in rows_host:
            sweep_rows.append(r)
    return rows, sweep_rows


def host_breakdown(x: torch.Tensor) -> list[dict]:
    """Where an eager cast's host time goes (1x128, microseconds per call)."""
    from breccia.library import quantize_op

    recipe = breccia.Float8BlockScaling()
    spec = recipe.spec("input")
    key = spec.to_key()
    out = []

    def null_launch(kernel, grid, key=None):
        return lambda *a, **k: None

    for label, fn in [
        ("plan + allocations, no launch", lambda: tq._run(x, spec, None, None, None, null_launch)),
        ("kernel, Triton's own launch", lambda: tq._run(x, spec, None, None, None, launch.direct)),
        ("kernel, direct launch (default)", lambda: tq.quantize(x, spec)),
        ("breccia::quantize custom op", lambda: quantize_op(x, key, None, None, None)),
        ("breccia.cast", lambda: breccia.cast(x, recipe, "input")),
    ]:
        out.append({"recipe": "host us per call (1x128)", "config (rows, width, warps)": label,
                    "ms": round(host_us(fn, False) / 1e3, 4), "TB/s": None})
    return out


# --------------------------------------------------------------------------- report


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "n/a"
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def results_markdown(rows: list[dict], sweep_rows: list[dict], dev: str, size: int) -> str:
    cols = ["recipe", "breccia.cast ms", "breccia.cast TB/s", "kernel ms", "kernel TB/s", "target TB/s", "peer",
            "peer ms", "peer TB/s", "kernel vs peer", "cast vs peer", "host us/cast", "host us/kernel"]
    table = [{k: _fmt(r.get(k)) for k in cols} for r in rows]
    extra = [{"recipe": r["recipe"], "eager PyTorch tensorwise ms": _fmt(r.get("eager peer ms")),
              "kernel vs eager": _fmt((r["eager peer ms"] / r["kernel ms"]) if r.get("eager peer ms") else None),
              "cast vs eager": _fmt((r["eager peer ms"] / r["breccia.cast ms"]) if r.get("eager peer ms") else None)}
             for r in rows if r.get("eager peer ms")]
    fused = [r for r in rows if "two breccia kernels ms" in r]
    text = f"## Throughput (`benchmarks/bench_quantize.py`)\n\n_{environment_line(dev)} · triton {triton.__version__}_\n\n"
    text += (f"Input {size} x {size} bf16 (random normal). Effective TB/s = (input bytes + payload bytes) / time; "
             "`triton.testing.do_bench` median, L2 flushed before each run; every peer timed in the same process. "
             "`kernel` is `breccia.kernels.triton.quantize.quantize` with the best tile of the sweep below; "
             "`breccia.cast` is the eager user path (custom op + kernel + ScaledTensor) with the default tile. "
             "Ratios > 1: breccia faster.\n\n")
    text += md_table(table) + "\n\n"
    if extra:
        text += md_table(extra) + "\n\n"
    for f in fused:
        two = "x and x.T" if "1x128" in f["recipe"] else "the cast, then the transposed copy of its payload"
        text += (f"{f['recipe']}: {_fmt(f['kernel ms'])} ms vs {_fmt(f['two breccia kernels ms'])} ms for two "
                 f"breccia kernels ({two}).\n\n")
    if sweep_rows:
        text += "### Tile sweep\n\n" + md_table([{k: _fmt(v) for k, v in r.items()} for r in sweep_rows]) + "\n\n"
    return text


def plot(rows: list[dict], path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in rows if r.get("kernel TB/s")]
    names = [r["recipe"] for r in rows]
    series = [("breccia kernel", "kernel TB/s"), ("breccia.cast (eager)", "breccia.cast TB/s"), ("peer", "peer TB/s")]
    fig, ax = plt.subplots(figsize=(12, 5))
    w = 0.27
    for i, (label, key) in enumerate(series):
        vals = [r.get(key) or 0.0 for r in rows]
        ax.bar([j + (i - 1) * w for j in range(len(rows))], vals, w, label=label)
    for j, r in enumerate(rows):
        if r.get("target TB/s"):
            ax.hlines(r["target TB/s"], j - 1.5 * w, j + 1.5 * w, colors="k", linestyles="dashed")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("effective TB/s (input + payload)")
    ax.set_title("breccia quantize, 8192x8192 bf16 (dashed: target)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=None, help="results file (default: results/quantize-<device>.md)")
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--check", action="store_true", help="run gpu_check_quantize.py first")
    parser.add_argument("--json", default=None, help="also write every number here")
    parser.add_argument("--plot", default=None, help="PNG path (default: beside --output)")
    parser.add_argument("--cpu", action="store_true", help="dry run (interpreter, small shape)")
    args = parser.parse_args(argv)
    args.output = args.output or result_path("quantize")
    dev = "cpu" if args.cpu else "cuda"
    size = 256 if args.cpu else args.size
    if args.check:
        import gpu_check_quantize

        text, failures = gpu_check_quantize.run(args.cpu, dev)
        update_section(args.output, "gpu-check", text, "breccia quantize kernels")
        print(f"gpu check: {failures} failures", flush=True)
    def partial(rows, sweep_rows):  # keep what was measured if the run is cut short
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"rows": rows, "sweep": sweep_rows, "partial": True}, f, indent=1, default=str)

    rows, sweep_rows = run(args.cpu, size, not args.no_sweep, partial)
    text = results_markdown(rows, sweep_rows, dev, size)
    update_section(args.output, "bench", text, "breccia quantize kernels")
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "sweep": sweep_rows, "env": environment_line(dev),
                       "triton": triton.__version__}, f, indent=1, default=str)
    png = args.plot or os.path.splitext(args.output)[0] + ".png"
    print("plot:", png if plot(rows, png) else "matplotlib missing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
