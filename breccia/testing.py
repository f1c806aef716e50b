"""Inputs that probe a quantizer where it is easiest to get wrong, for
checking a cast kernel against :func:`breccia.quantize.quantize_reference`
bit for bit: special values, and values next to the rounding midpoints of the
target format, where a quotient one ulp off rounds the other way.

Each function returns an fp32 (m, k) tensor on ``device``, reproducible from
``seed``. The test suite runs them on the CPU (Triton's interpreter) and
``benchmarks/gpu_check_quantize.py`` on the GPU.
"""

from __future__ import annotations

import torch

from . import formats
from .quantize import quantize_reference

__all__ = ["edge_values", "near_fp8_midpoints", "near_nvfp4_midpoints"]

_SMALLEST_SUBNORMAL = 1.401298464324817e-45


def _gen(device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _nudge(v: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """``v`` as fp32, each moved by -3 to +3 ulps."""
    ulps = torch.randint(-3, 4, v.shape, device=v.device, generator=g, dtype=torch.int32)
    return (v.float().view(torch.int32) + ulps).view(torch.float32)


def _signs(v: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return torch.where(torch.rand(v.shape, device=v.device, generator=g) < 0.5, -v, v)


def edge_values(m: int, k: int, device="cpu", seed: int = 0) -> torch.Tensor:
    """Rows of special blocks, cycling over 11 kinds: zeros; subnormal
    (1e-40: an MX scale byte of 0), near-subnormal, tiny and near-fp32-max
    rows; exact powers of two; values around e4m3's 448; negative zeros; the
    smallest subnormal every 7th column; two plain normal rows."""
    g = _gen(device, seed)
    x = torch.randn(m, k, device=device, generator=g)
    r = torch.arange(m, device=device)
    x[r % 11 == 0] = 0.0
    x[r % 11 == 1] *= 1e-40
    x[r % 11 == 2] *= 3e-39
    x[r % 11 == 3] *= 1e-30
    x[r % 11 == 4] *= 3e37
    x[r % 11 == 5] = torch.exp2(torch.randint(-30, 30, (k,), device=device, generator=g).float())
    x[r % 11 == 6] = 448.0 * (1 + torch.randint(-3, 4, (k,), device=device, generator=g).float() / 32)
    x[r % 11 == 7] = -0.0
    x[r % 11 == 8, ::7] = _SMALLEST_SUBNORMAL
    return x


def near_fp8_midpoints(spec, amax: float, m: int = 130, k: int = 200, device="cpu", seed: int = 0) -> torch.Tensor:
    """Every 128-row and 128-column block holds ``amax`` (so every scale of a
    tensorwise, rowwise or 128-block ``spec`` is the same ``s``); the other
    elements lie within 3 fp32 ulps of ``mid * s`` for ``mid`` a rounding
    midpoint of ``spec``'s FP8 format, signs random, with signed zeros and
    subnormals among them."""
    g = _gen(device, seed)
    x = torch.zeros(m, k, device=device)
    x[::128, :] = amax
    x[:, ::128] = amax
    s = quantize_reference(x, spec).scale.reshape(-1)[0].double()
    vals = torch.arange(256, dtype=torch.uint8).view(spec.fmt.storage).double()
    vals = vals[torch.isfinite(vals) & (vals >= 0)].unique().to(device)
    mids = (vals[1:] + vals[:-1]) / 2
    near = _signs(_nudge(mids[torch.randint(0, mids.numel(), (m, k), device=device, generator=g)] * s, g), g)
    near = torch.where(near.abs() < amax, near, 0.0)
    r = torch.rand(m, k, device=device, generator=g)
    near[r < 0.02] = -0.0
    near[(r >= 0.02) & (r < 0.03)] = -_SMALLEST_SUBNORMAL
    near[(r >= 0.03) & (r < 0.04)] = 1e-39
    return torch.where(x != 0, x, near)


def near_nvfp4_midpoints(spec, amax: float, m: int = 64, k: int = 256, device="cpu", seed: int = 0) -> torch.Tensor:
    """For an NVFP4 ``spec`` cast with the given global ``amax``: block amaxes
    putting each block scale ``block_amax / 6 / g`` within 3 fp32 ulps of an
    e4m3 rounding midpoint, and the other elements putting ``x * recip``
    within 3 ulps of an e2m1 one (``recip`` the reference's reciprocal of the
    combined scale)."""
    g = _gen(device, seed)
    t_amax = torch.tensor(amax, device=device)
    gs = quantize_reference(torch.zeros(1, 16, device=device), spec, amax=t_amax).global_scale.double()
    e4 = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).double().to(device)
    e4 = e4[torch.isfinite(e4) & (e4 >= 2.0**-6)].unique()
    rows = 16 if spec.block[-2] == 16 else 1

    def spread(t: torch.Tensor) -> torch.Tensor:  # per block -> per element
        return t.repeat_interleave(rows, 0).repeat_interleave(16, 1)

    mids = (e4[1:] + e4[:-1]) / 2
    grid = (m // rows, k // 16)
    bamax = _nudge(mids[torch.randint(0, mids.numel(), grid, device=device, generator=g)] * 6 * gs, g)
    x = torch.zeros(m, k, device=device)
    x[::rows, ::16] = bamax
    ref = quantize_reference(x, spec, amax=t_amax)
    recip = (1.0 / ref.global_scale) / spread(ref.scale.float())  # float32, as the reference computes it
    e2 = torch.tensor(formats._E2M1_VALUES, dtype=torch.float64, device=device)
    e2_mids = (e2[1:] + e2[:-1]) / 2
    near = _signs(_nudge(e2_mids[torch.randint(0, 7, (m, k), device=device, generator=g)] / recip.double(), g), g)
    near = torch.where(near.abs() < spread(bamax), near, 0.0)
    return torch.where(x != 0, x, near)
