"""Inference linear with dynamic activation quantization (quantize the
activation + FP8 GEMM), compiled: 16384 x 4096 x 14336, bf16 in and out.
bf16, torchao's FP8 dynamic per-tensor and per-row, and breccia's
``convert(mode="inference")`` tensorwise and rowwise, in one run.
Writes benchmarks/results/linear-dynamic-<device>.md.

    python benchmarks/bench_linear_dynamic.py
"""

from __future__ import annotations

import copy
import datetime
import os
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

HERE = os.path.dirname(os.path.abspath(__file__))


def variants():
    out = {"bf16": lambda m: m}
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor, quantize_

        def ao(gran):
            def make(m):
                quantize_(m, Float8DynamicActivationFloat8WeightConfig(granularity=gran))
                return m

            return make

        out["torchao FP8 dynamic per-tensor"] = ao(PerTensor())
        out["torchao FP8 dynamic per-row"] = ao(PerRow())
    except Exception as e:
        print(f"(torchao unavailable: {e})")
    # the recipes' default: the forward GEMM fast-accumulated, as torchao's
    # (Float8MMConfig(use_fast_accum=True)) and TransformerEngine's are
    out["breccia tensorwise"] = lambda m: breccia.convert(m, breccia.Float8CurrentScaling())
    out["breccia rowwise"] = lambda m: breccia.convert(m, breccia.Float8CurrentScaling(granularity="row"))
    out["breccia tensorwise, fast_accum_forward=False"] = lambda m: breccia.convert(
        m, breccia.Float8CurrentScaling(fast_accum_forward=False)
    )
    out["breccia rowwise, fast_accum_forward=False"] = lambda m: breccia.convert(
        m, breccia.Float8CurrentScaling(granularity="row", fast_accum_forward=False)
    )
    return out


def main():
    import triton

    m, k, n = 16384, 4096, 14336
    torch.manual_seed(0)
    base = nn.Linear(k, n, bias=False).to("cuda", torch.bfloat16)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    rows = []
    for name, make in variants().items():
        torch._dynamo.reset()
        model = torch.compile(make(copy.deepcopy(base)))
        with torch.no_grad():
            for _ in range(3):
                model(x)
            ms = triton.testing.do_bench(lambda: model(x), warmup=25, rep=100, return_mode="median")
        rows.append((name, ms))
        print(f"{name:32s} {ms:.3f} ms", flush=True)
    base_ms = rows[0][1]
    flops = 2 * m * n * k
    lines = [
        f"# Inference linear with dynamic activation quantization, {m} x {k} x {n}, compiled",
        "",
        f"_{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC · {torch.cuda.get_device_name()} · "
        f"torch {torch.__version__} · triton {triton.__version__}_",
        "",
        "| what | ms | TFLOP/s | vs bf16 |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {name} | {ms:.3f} | {flops / ms / 1e9:.0f} | {base_ms / ms:.2f}x |" for name, ms in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    write_text_atomic(os.environ.get("BENCH_OUT") or result_path("linear-dynamic"), text)


if __name__ == "__main__":
    main()
