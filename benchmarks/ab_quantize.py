"""A/B timing of the Triton quantize kernels: this checkout's against an
earlier revision's, in one run on one GPU.

    python benchmarks/ab_quantize.py --export HEAD~1 --dir ab-base     # here (needs git)
    python benchmarks/ab_quantize.py --baseline ab-base --out benchmarks/results/ab-quantize-h200.md   # on the GPU

``--export`` copies ``breccia/kernels/triton/`` of a revision into a folder
(``ab-base/`` is git-ignored: hand it to a machine without git along with
the working tree). The timing
run then times the casts three times, each in a fresh process: this
checkout, the baseline (a temporary copy of ``breccia/`` with the baseline's
kernel modules in place), this checkout again; a ratio > 1 means this
checkout is faster than the baseline, taken against the faster of the two
runs of this checkout. ``triton.testing.do_bench`` medians, L2 flushed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
KERNELS = os.path.join("breccia", "kernels", "triton")

SHAPES = [(8192, 8192), (16384, 14336), (14336, 4096)]
SMALL_SHAPES = [(96, 256)]


def _cases():
    import breccia
    from breccia.kernels.triton import quantize as tq

    specs = {
        "fp8 1x128": breccia.Float8BlockScaling().spec("input"),
        "fp8 128x128": breccia.Float8BlockScaling().spec("weight"),
        "fp8 rowwise": breccia.Float8CurrentScaling(granularity="row").spec("input"),
        "fp8 tensorwise": breccia.Float8CurrentScaling().spec("input"),
        "mxfp8": breccia.MXFP8BlockScaling().spec("input"),
        "nvfp4": breccia.NVFP4BlockScaling().spec("input"),
    }
    cases = {name: (lambda x, s=s: tq.quantize(x, s)) for name, s in specs.items()}
    for name in ("fp8 1x128", "fp8 tensorwise", "mxfp8"):
        cases[name + " rowwise + columnwise"] = lambda x, s=specs[name]: tq.quantize_rowwise_and_columnwise(x, s)
    return cases


def child(out: str, small: bool) -> None:
    """Time every case at every shape in this process; write {case @ shape: ms}."""
    import torch

    if torch.cuda.is_available():
        import triton

        dev = "cuda"
        bench = lambda f: triton.testing.do_bench(f, warmup=25, rep=200, return_mode="median")  # noqa: E731
    else:
        import time

        dev = "cpu"

        def bench(f, n=2):
            f()
            t0 = time.perf_counter()
            for _ in range(n):
                f()
            return (time.perf_counter() - t0) / n * 1e3

    times = {}
    for shape in SMALL_SHAPES if small else SHAPES:
        x = torch.randn(*shape, device=dev, dtype=torch.bfloat16)
        for name, fn in _cases().items():
            times[f"{name} @ {shape[0]}x{shape[1]}"] = bench(lambda: fn(x))
    with open(out, "w") as f:
        json.dump({"kernels": os.path.dirname(sys.modules["breccia"].__file__), "times": times}, f)


def export(rev: str, folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    names = subprocess.run(["git", "ls-tree", "--name-only", f"{rev}:{KERNELS}"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    for name in names:
        if name.endswith(".py"):
            text = subprocess.run(["git", "show", f"{rev}:{KERNELS}/{name}"], cwd=ROOT, check=True,
                                  capture_output=True, text=True).stdout
            with open(os.path.join(folder, name), "w") as f:
                f.write(text)
    sha = subprocess.run(["git", "rev-parse", rev], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    with open(os.path.join(folder, "REVISION"), "w") as f:
        f.write(sha)
    print(f"exported {len(names)} files of {rev} ({sha.strip()[:12]}) to {folder}")


def _run_child(pythonpath: str, small: bool) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([pythonpath, HERE, os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, os.path.abspath(__file__), "--child", out] + (["--small"] if small else [])
    subprocess.run(cmd, env=env, check=True)
    with open(out) as f:
        data = json.load(f)
    os.unlink(out)
    return data


def compare(baseline: str, out: str | None, small: bool) -> str:
    if not os.path.isdir(baseline) or not any(n.endswith(".py") for n in os.listdir(baseline)):
        raise SystemExit(f"--baseline: expected a folder written by --export, got {baseline!r}")
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(os.path.join(ROOT, "breccia"), os.path.join(tmp, "breccia"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        for name in os.listdir(baseline):
            if name.endswith(".py"):
                shutil.copy(os.path.join(baseline, name), os.path.join(tmp, KERNELS, name))
        a1 = _run_child(ROOT, small)["times"]
        base = _run_child(tmp, small)
        a2 = _run_child(ROOT, small)["times"]
    assert base["kernels"].startswith(tmp), "the baseline run imported this checkout's breccia"
    rev = open(os.path.join(baseline, "REVISION")).read().strip()[:12] if os.path.exists(
        os.path.join(baseline, "REVISION")) else baseline
    b = base["times"]
    lines = [f"# Quantize kernels: this checkout against {rev}", "",
             "Three fresh processes in a row: this checkout, the baseline's kernel modules, this checkout again "
             "(`benchmarks/ab_quantize.py`); ms are `do_bench` medians on bf16 inputs; speed-up = baseline / "
             "the faster run of this checkout.", "",
             "| cast | this checkout (ms, two runs) | baseline (ms) | speed-up |", "| --- | --- | ---: | ---: |"]
    for k in a1:
        best = min(a1[k], a2[k])
        lines.append(f"| {k} | {a1[k]:.4f} / {a2[k]:.4f} | {b[k]:.4f} | {b[k] / best:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        from breccia.demo import write_text_atomic

        write_text_atomic(out, text)
    return text


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--export", metavar="REV", help="write REV's kernel modules into --dir (needs git)")
    p.add_argument("--dir", help="the folder for --export")
    p.add_argument("--baseline", help="a folder written by --export: time against it")
    p.add_argument("--out", default=None, help="results markdown path")
    p.add_argument("--small", action="store_true", help="tiny shapes (a smoke test on any device)")
    p.add_argument("--child", metavar="JSON", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child, args.small)
    elif args.export:
        if not args.dir:
            p.error("--export: expected --dir for the files")
        export(args.export, args.dir)
    elif args.baseline:
        compare(args.baseline, args.out, args.small)
    else:
        p.error("expected --export REV --dir DIR, or --baseline DIR")


if __name__ == "__main__":
    main()
