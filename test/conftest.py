import os
import sys

# Triton kernels run under the interpreter on machines without a GPU. This
# must be set before anything (torch.compile included) first imports triton.
if not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import breccia  # noqa: E402

#: one instance of every recipe variant the suite sweeps
RECIPES = {
    "delayed": breccia.DelayedScaling(),
    "fp8_tensor": breccia.Float8CurrentScaling(),
    "fp8_row": breccia.Float8CurrentScaling(granularity="row"),
    "fp8_tensor_pow2": breccia.Float8CurrentScaling(power_of_2_scale=True),
    "fp8_block": breccia.Float8BlockScaling(),
    "fp8_block_pow2": breccia.Float8BlockScaling(power_of_2_scale=True),
    "mxfp8": breccia.MXFP8BlockScaling(),
    "mxfp8_rceil": breccia.MXFP8BlockScaling(scale_rule="rceil"),
    "mxfp8_e5m2": breccia.MXFP8BlockScaling(fp8_format="e5m2"),
    "nvfp4": breccia.NVFP4BlockScaling(),
    "nvfp4_16x16": breccia.NVFP4BlockScaling(weight_block=(16, 16)),
    "int4": breccia.INT4Scaling(),
    "int4_asym": breccia.INT4Scaling(symmetric=False, group_size=32),
    "int4_fp16": breccia.INT4Scaling(scale_dtype="fp16", group_size=64),
}


@pytest.fixture(params=sorted(RECIPES), ids=sorted(RECIPES))
def recipe(request):
    return RECIPES[request.param]


def randn(*shape, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


def student_t(*shape, df=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(*shape, generator=g)
    chi2 = (torch.randn(int(df), *shape, generator=g) ** 2).sum(0)
    return z / torch.sqrt(chi2 / df)


def compile_for_sm90(kernel: str, cfgs: list) -> list[dict]:
    """``sm90_compile.py KERNEL CFGS`` in a process of its own, without the
    interpreter (it patches the language for the whole process): one dict a config."""
    import json
    import subprocess

    env = {key: v for key, v in os.environ.items() if key != "TRITON_INTERPRET"}
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sm90_compile.py")
    done = subprocess.run([sys.executable, script, kernel, json.dumps(cfgs)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(cfgs)
    return results
