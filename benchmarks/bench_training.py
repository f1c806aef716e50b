"""Training step of an FFN (4096 -> 14336 -> 4096, 16384 tokens, bf16 params,
forward + backward, torch.compile): bf16, torchao float8 and breccia recipes,
measured in one run. Writes benchmarks/results/training-<device>.md and a PNG.

    python benchmarks/bench_training.py            # on a GPU
    python benchmarks/bench_training.py --small    # tiny shapes, any device (smoke test)
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys

import torch
from torch import nn

try:
    import breccia
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    import breccia

from breccia.demo import write_text_atomic
from results_path import result_path  # noqa: E402  (benchmarks/ is on sys.path)
from training_variants import breccia_variants  # noqa: E402


def ffn(d: int, h: int, device) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d, h, bias=False), nn.GELU(), nn.Linear(h, d, bias=False)).to(
        device=device, dtype=torch.bfloat16
    )


def variants():
    out = {"bf16": lambda m: m}
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training

        out["torchao float8 tensorwise"] = lambda m: convert_to_float8_training(
            m, config=Float8LinearConfig.from_recipe_name("tensorwise")
        )
        out["torchao float8 rowwise"] = lambda m: convert_to_float8_training(
            m, config=Float8LinearConfig.from_recipe_name("rowwise")
        )
    except Exception as e:  # torchao absent: say so in the table
        print(f"(torchao unavailable: {e})")
    out.update(breccia_variants())
    return out


def measure(make, d, h, tokens, device, bench):
    """(the compiled step, its ms, peak MiB, saved MiB). The step stays
    compiled for later rounds: no dynamo reset between variants (each
    variant's model is its own cache entry)."""
    model = make(ffn(d, h, device))
    step_model = torch.compile(model)
    x = torch.randn(tokens, d, device=device, dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(tokens, d, device=device, dtype=torch.bfloat16)

    def step():
        y = step_model(x)
        y.backward(g)

    for _ in range(3):  # compile and warm up
        step()
    saved = float("nan")
    if device.type == "cuda":
        torch.cuda.synchronize()
        # activation memory: what the forward leaves allocated for backward
        # (the output itself not counted)
        before = torch.cuda.memory_allocated()
        y = step_model(x)
        torch.cuda.synchronize()
        saved = (torch.cuda.memory_allocated() - before - y.numel() * y.element_size()) / 2**20
        y.backward(g)
        del y
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    ms = bench(step)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device.type == "cuda" else float("nan")
    return step, ms, peak, saved


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="tiny shapes (smoke test on any device)")
    p.add_argument("--out", default=None, help="results markdown path")
    p.add_argument("--variants", nargs="*", default=None, help="measure only these rows (bf16 always first)")
    p.add_argument("--rounds", type=int, default=3,
                   help="time every compiled step this many times, round-robin; the table holds medians, and "
                        "each ratio is the median of per-round ratios (bf16 timed in the same round)")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds: expected at least 1, got {args.rounds}")
    # every variant stays compiled for the later rounds (one cache entry per model)
    torch._dynamo.reset()
    for knob in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 64)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d, h, tokens = (128, 512, 256) if args.small else (4096, 14336, 16384)

    if device.type == "cuda":
        import triton

        bench = lambda fn: triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")  # noqa: E731
        dev_name = torch.cuda.get_device_name()
        tri = triton.__version__
    else:
        import time

        def bench(fn, n=3):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            return (time.perf_counter() - t0) / n * 1e3

        dev_name, tri = platform.processor() or "cpu", "-"

    rows = []
    todo = variants()
    if args.variants:
        unknown = sorted(set(args.variants) - set(todo))
        if unknown:
            p.error(f"--variants: unknown {unknown}; expected some of {sorted(todo)}")
        todo = {n: m for n, m in todo.items() if n == "bf16" or n in args.variants}
    steps, times = {}, {}
    for name, make in todo.items():
        try:
            steps[name], ms, peak, saved = measure(make, d, h, tokens, device, bench)
            times[name] = [ms]
            rows.append((name, peak, saved))
            print(f"{name:30s} {ms:9.3f} ms   peak {peak:9.1f} MiB   saved {saved:9.1f} MiB", flush=True)
        except Exception as e:
            rows.append((name, float("nan"), float("nan")))
            times[name] = [float("nan")] * args.rounds
            print(f"{name:30s} FAILED: {type(e).__name__}: {e}", flush=True)
    for r in range(1, args.rounds):
        for name, step in steps.items():
            times[name].append(bench(step))
        print(f"round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.3f}" for n in steps), flush=True)

    base_times = times["bf16"]
    flops = 3 * 2 * 2 * tokens * d * h  # two GEMMs, forward + two backward
    lines = [
        f"# Training step: FFN {d} -> {h} -> {d}, {tokens} tokens, bf16, fwd + bwd, torch.compile",
        "",
        f"_{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC · {dev_name} · torch {torch.__version__} · "
        f"triton {tri}_",
        "",
        f"{args.rounds} round(s): every compiled step timed once per round, round-robin; ms is the median, "
        "vs bf16 the median of the rounds' ratios (range beside it).",
        "",
        "| what | ms | TFLOP/s | vs bf16 | range over rounds | activations saved for backward (MiB) | "
        "peak memory over inputs (MiB) |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    speedups = {}
    for name, peak, saved in rows:
        ms = statistics.median(times[name])
        ratios = [b / t for b, t in zip(base_times, times[name])]
        speedups[name] = statistics.median(ratios)
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}x" if len(ratios) > 1 else "-"
        lines.append(f"| {name} | {ms:.3f} | {flops / ms / 1e9:.0f} | {speedups[name]:.2f}x | {spread} | {saved:.0f} "
                     f"| {peak:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = args.out or result_path("training-small" if args.small else "training")
    write_text_atomic(out, text)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4))
        ax.barh([r[0] for r in rows], [speedups[r[0]] for r in rows])
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xlabel("speed-up over bf16 (training step)")
        fig.savefig(out.replace(".md", ".png"), dpi=110, bbox_inches="tight")
    except ImportError:
        pass
    return speedups


if __name__ == "__main__":
    main()
