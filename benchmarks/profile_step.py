"""Where the GPU time of a benchmarked step goes: the top CUDA kernels of the
training step (bench_training.py) and of the dynamic-activation linear
(bench_linear_dynamic.py), per variant, from ``torch.profiler``.

    python benchmarks/profile_step.py                      # every variant of both
    python benchmarks/profile_step.py --training "breccia rowwise" --linear none
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_linear_dynamic  # noqa: E402
import bench_training  # noqa: E402


def top_kernels(fn, steps: int, rows: int, gaps: int = 0) -> str:
    """The ``rows`` CUDA kernels with the most total time over ``steps`` calls
    of ``fn`` (after a warm-up), per step."""
    import time

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / steps * 1e3
    acts = [torch.profiler.ProfilerActivity.CUDA, torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    averages = prof.key_averages()
    events = [e for e in averages if e.device_time_total > 0 and e.device_type == torch.autograd.DeviceType.CUDA]
    events.sort(key=lambda e: e.device_time_total, reverse=True)
    total = sum(e.device_time_total for e in events) / steps / 1e3
    runtime = {e.key: e.count // steps for e in averages if e.key.startswith("cuda") and "Sync" in e.key or
               e.key in ("cudaMalloc", "cudaFree", "cudaMemcpyAsync", "cudaStreamSynchronize")}
    lines = [f"  GPU time per step {total:.3f} ms (kernels summed), wall {wall:.3f} ms; per step: {runtime}"]
    for e in events[:rows]:
        lines.append(f"  {e.device_time_total / steps / 1e3:8.3f} ms  x{e.count // steps:<3d} {e.key[:110]}")
    if gaps:
        lines.append(idle_gaps(prof, steps, gaps))
    return "\n".join(lines)


def idle_gaps(prof, steps: int, n: int) -> str:
    """Where the GPU waits between kernels: the idle time per step, and the
    ``n`` longest idle stretches with the kernels on either side (from the
    profiler's trace; a long one after a kernel means the host was late)."""
    import json
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        trace = json.load(open(f.name))
    gpu = sorted((e for e in trace.get("traceEvents", []) if e.get("ph") == "X"
                  and e.get("cat") in ("kernel", "gpu_memset", "gpu_memcpy")), key=lambda e: e["ts"])
    stretches = []
    end = None
    for prev, e in zip([None] + gpu[:-1], gpu):
        if end is not None and e["ts"] > end:
            stretches.append((e["ts"] - end, prev["name"], e["name"]))
        end = max(end or 0.0, e["ts"] + e.get("dur", 0.0))
    idle = sum(s[0] for s in stretches) / steps / 1e3
    lines = [f"  GPU idle between kernels: {idle:.3f} ms per step, {len(stretches) // steps} stretches per step"]
    for us, before, after in sorted(stretches, reverse=True)[:n]:
        lines.append(f"    {us:8.1f} us  after {before[:60]}  before {after[:60]}")
    return "\n".join(lines)


def selected(all_variants: dict, names) -> dict:
    if names is None:
        return all_variants
    if names == ["none"]:
        return {}
    return {n: all_variants[n] for n in names}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--training", nargs="*", default=None, help="training variants (default all; 'none')")
    p.add_argument("--linear", nargs="*", default=None, help="linear variants (default all; 'none')")
    p.add_argument("--rows", type=int, default=18)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--gaps", type=int, default=0, help="also list the longest GPU idle stretches")
    args = p.parse_args(argv)
    device = torch.device("cuda")

    d, h, tokens = 4096, 14336, 16384
    for name, make in selected(bench_training.variants(), args.training).items():
        torch._dynamo.reset()
        model = torch.compile(make(bench_training.ffn(d, h, device)))
        x = torch.randn(tokens, d, device=device, dtype=torch.bfloat16, requires_grad=True)
        g = torch.randn(tokens, d, device=device, dtype=torch.bfloat16)
        print(f"training: {name}", flush=True)
        print(top_kernels(lambda: model(x).backward(g), args.steps, args.rows, args.gaps), flush=True)

    m, k, n = 16384, 4096, 14336
    torch.manual_seed(0)
    base = torch.nn.Linear(k, n, bias=False).to(device, torch.bfloat16)
    x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
    for name, make in selected(bench_linear_dynamic.variants(), args.linear).items():
        torch._dynamo.reset()
        model = torch.compile(make(copy.deepcopy(base)))
        print(f"linear: {name}", flush=True)
        with torch.no_grad():
            print(top_kernels(lambda: model(x), args.steps, args.rows, args.gaps), flush=True)


if __name__ == "__main__":
    main()
