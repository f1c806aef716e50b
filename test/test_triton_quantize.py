"""Triton quantize kernels against the reference quantizer, byte for byte.

They run on the CPU through Triton's interpreter (``TRITON_INTERPRET=1``) at
small, ragged shapes. The interpreter's own fp8 and bf16 conversions truncate,
so on the CPU the kernels round to fp8 in integer arithmetic (the first tests
prove that arithmetic exhaustively against torch's casts); the GPU check
(``benchmarks/gpu_check_quantize.py``) proves it equal to the hardware cast.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before any kernel module is imported

import math  # noqa: E402
import warnings  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import breccia  # noqa: E402
from breccia import formats  # noqa: E402
from breccia.quantize import _round_up_to, block_for, quantize_reference, scale_grid_shape  # noqa: E402
from breccia.testing import edge_values, near_fp8_midpoints, near_nvfp4_midpoints  # noqa: E402

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from breccia.kernels.triton import cuda_quantize  # noqa: E402
from breccia.kernels.triton import quantize as tq  # noqa: E402
from breccia.kernels.triton.quant_math import e2m1_codes_fast, fp8_bits, round_up_scale  # noqa: E402

warnings.filterwarnings("ignore", category=RuntimeWarning)  # numpy on NaN/inf inside the interpreter

#: one spec per distinct numerics path (label -> (recipe, role))
SPECS = {
    "tensor_e4m3": (breccia.Float8CurrentScaling(), "input"),
    "tensor_e5m2": (breccia.Float8CurrentScaling(fp8_format="hybrid"), "grad_output"),
    "tensor_pow2": (breccia.Float8CurrentScaling(power_of_2_scale=True), "input"),
    "delayed_margin": (breccia.DelayedScaling(margin=2), "grad_output"),
    "row": (breccia.Float8CurrentScaling(granularity="row"), "input"),
    "row_pow2_e5m2": (breccia.Float8CurrentScaling(granularity="row", power_of_2_scale=True, fp8_format="e5m2"),
                      "input"),
    "1x128": (breccia.Float8BlockScaling(), "input"),
    "1x128_pow2": (breccia.Float8BlockScaling(power_of_2_scale=True), "input"),
    "1x128_e5m2": (breccia.Float8BlockScaling(fp8_format="hybrid"), "grad_output"),
    "128x128": (breccia.Float8BlockScaling(), "weight"),
    "128x128_pow2": (breccia.Float8BlockScaling(power_of_2_scale=True), "weight"),
    "mx_floor": (breccia.MXFP8BlockScaling(), "input"),
    "mx_rceil": (breccia.MXFP8BlockScaling(scale_rule="rceil"), "input"),
    "mx_e5m2": (breccia.MXFP8BlockScaling(fp8_format="e5m2"), "input"),
    "mx_rceil_e5m2": (breccia.MXFP8BlockScaling(scale_rule="rceil", fp8_format="e5m2"), "input"),
    "nvfp4": (breccia.NVFP4BlockScaling(), "input"),
    "nvfp4_16x16": (breccia.NVFP4BlockScaling(weight_block=(16, 16)), "weight"),
    "int4_sym": (breccia.INT4Scaling(), "weight"),
    "int4_asym": (breccia.INT4Scaling(symmetric=False, group_size=32), "weight"),
    "int4_fp16": (breccia.INT4Scaling(scale_dtype="fp16", group_size=64), "weight"),
    "int4_asym_fp16": (breccia.INT4Scaling(symmetric=False, scale_dtype="fp16", group_size=16), "weight"),
}


def spec_of(label):
    recipe, role = SPECS[label]
    return recipe.spec(role)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def as_bytes(t):
    return t.reshape(-1).contiguous().view(torch.uint8)


def assert_bit_exact(got, ref, *, nan_aware=False):
    """Payload, scale, global scale and zero point identical byte for byte.
    ``nan_aware``: scales need only be NaN where the reference's are, and the
    payload / zero point of NaN blocks are not compared (unspecified bits)."""
    for name, a, b in zip(("qdata", "scale", "global_scale", "zero_point"), got, ref):
        assert (a is None) == (b is None), name
        if a is None:
            continue
        assert a.shape == b.shape and a.dtype == b.dtype, (name, a.shape, a.dtype, b.shape, b.dtype)
        if nan_aware and name in ("scale", "global_scale"):
            na, nb = torch.isnan(a.float()), torch.isnan(b.float())
            assert torch.equal(na, nb), name
            assert torch.equal(as_bytes(a[~na]), as_bytes(b[~nb])), name
            continue
        if nan_aware:
            continue
        diff = (as_bytes(a) != as_bytes(b)).nonzero().flatten()
        assert diff.numel() == 0, f"{name}: {diff.numel()} bytes differ, first at {diff[:5].tolist()}"


def check(x, label, **kw):
    spec = spec_of(label)
    assert tq.supports(x, spec, kw.get("amax"), kw.get("noise"), kw.get("block_amax"))
    assert_bit_exact(tq.quantize(x, spec, **kw), quantize_reference(x, spec, **kw))


# --------------------------------------------------------------------------- the integer arithmetic


@triton.jit
def _fp8_kernel(x_ptr, o_ptr, N, E4M3: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    tl.store(o_ptr + offs, fp8_bits(tl.load(x_ptr + offs, mask=m, other=0.0), E4M3, False), mask=m)


@triton.jit
def _e2m1_kernel(v_ptr, o_ptr, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    tl.store(o_ptr + offs, (e2m1_codes_fast(tl.load(v_ptr + offs, mask=m, other=0.0)) & 0xF).to(tl.uint8), mask=m)


@triton.jit
def _round_up_kernel(x_ptr, v_ptr, h_ptr, N, FP16: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    v, h = round_up_scale(tl.load(x_ptr + offs, mask=m, other=1.0), FP16)
    tl.store(v_ptr + offs, v, mask=m)
    tl.store(h_ptr + offs, h, mask=m)


def _fp8_probe_values(dtype):
    """Every fp8 value, the midpoints between neighbours (ties) and one fp32
    ulp either side, values past the max, random fp32 bit patterns."""
    vals = torch.arange(256, dtype=torch.uint8).view(dtype).float()
    vals = vals[torch.isfinite(vals)].unique()
    mids = (vals[1:] + vals[:-1]) / 2
    near = torch.cat([mids, torch.nextafter(mids, mids + 1), torch.nextafter(mids, mids - 1)])
    rand = torch.randint(-(2**31), 2**31 - 1, (60000,), generator=gen(0), dtype=torch.int64).to(torch.int32)
    fmax = torch.finfo(dtype).max
    special = torch.tensor([0.0, -0.0, fmax * 1.01, fmax * 2, 1e30, math.inf, 2**-149, 2**-126, 2**-130, 1e-45])
    x = torch.cat([vals, near, rand.view(torch.float32), special])
    return torch.cat([x, -x])


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=["e4m3", "e5m2"])
def test_fp8_rounding_matches_torch_cast(dtype):
    x = _fp8_probe_values(dtype)
    x = x[~torch.isnan(x)]
    out = torch.empty(x.numel(), dtype=torch.uint8)
    _fp8_kernel[(1,)](x, out, x.numel(), E4M3=dtype == torch.float8_e4m3fn, BLOCK=triton.next_power_of_2(x.numel()))
    fmax = torch.finfo(dtype).max
    ref = torch.clamp(x, -fmax, fmax).to(dtype).view(torch.uint8)
    bad = (out != ref).nonzero().flatten()
    assert bad.numel() == 0, (x[bad[:5]].tolist(), out[bad[:5]].tolist(), ref[bad[:5]].tolist())


def test_e2m1_encoder_matches_reference():
    """The NVFP4 kernels' e2m1 encoder (least of three rounding lines) on
    unclamped values: every e2m1 value, the midpoints between neighbours
    (ties) and one fp32 ulp either side, values past 6, signed zeros,
    subnormals, NaN and inf, random fp32 bit patterns; against
    ``formats.encode_e2m1``."""
    vals = torch.tensor(formats._E2M1_VALUES)
    mids = (vals[1:] + vals[:-1]) / 2
    pts = torch.cat([vals, mids, torch.tensor([6.5, 7.0, 8.0, 12.0])])
    near = torch.cat([pts, torch.nextafter(pts, pts + 1), torch.nextafter(pts, pts - 1)])
    rand = torch.randint(-(2**31), 2**31 - 1, (60000,), generator=gen(0), dtype=torch.int64).to(torch.int32)
    special = torch.tensor([0.0, 1e30, math.inf, math.nan, 2**-149, 2**-126, 3.4e38])
    x = torch.cat([near, rand.view(torch.float32) % 16.0, rand.view(torch.float32), special])
    x = torch.cat([x, -x])
    out = torch.empty(x.numel(), dtype=torch.uint8)
    _e2m1_kernel[(1,)](x, out, x.numel(), BLOCK=triton.next_power_of_2(x.numel()))
    ref = formats.encode_e2m1(x)
    bad = (out != ref).nonzero().flatten()
    assert bad.numel() == 0, (x[bad[:5]].tolist(), out[bad[:5]].tolist(), ref[bad[:5]].tolist())


@pytest.mark.parametrize("sdtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_scale_round_up_matches_reference(sdtype):
    fi = torch.finfo(sdtype)
    e = torch.rand(50000, generator=gen(1)) * (math.log2(fi.max) - math.log2(fi.tiny)) + math.log2(fi.tiny)
    s = torch.clamp(torch.exp2(e), fi.tiny, fi.max)
    exact = torch.arange(1, 2000, dtype=torch.int16).view(sdtype).float()  # already representable
    s = torch.cat([s, exact[(exact >= fi.tiny) & (exact <= fi.max)], torch.tensor([fi.tiny, fi.max])])
    s = torch.cat([s, torch.tensor([0x7FC00000, 0x7FFFFFFF, -0x400000], dtype=torch.int32).view(torch.float32)])
    v = torch.empty_like(s)
    h = torch.empty(s.numel(), dtype=torch.int16)
    _round_up_kernel[(1,)](s, v, h, s.numel(), FP16=sdtype == torch.float16, BLOCK=triton.next_power_of_2(s.numel()))
    nan = torch.isnan(s)  # any NaN pattern (the GPU's is 0x7FFFFFFF) stays NaN
    assert torch.isnan(v[nan]).all() and torch.isnan(h[nan].view(sdtype).float()).all()
    ref = _round_up_to(s[~nan], sdtype)
    assert torch.equal(h[~nan], ref.view(torch.int16))
    assert torch.equal(v[~nan], ref.float())


# --------------------------------------------------------------------------- every recipe


SHAPES = {
    "37x300_fp32": ((37, 300), torch.float32),
    "5x7x130_bf16": ((5, 7, 130), torch.bfloat16),
    "301_fp16": ((301,), torch.float16),
}


@pytest.mark.parametrize("shape", sorted(SHAPES), ids=sorted(SHAPES))
@pytest.mark.parametrize("label", sorted(SPECS), ids=sorted(SPECS))
def test_every_recipe_bit_exact(label, shape):
    dims, dtype = SHAPES[shape]
    x = (torch.randn(*dims, generator=gen(2)) * 3).to(dtype)
    check(x, label)


@pytest.mark.parametrize("label", ["tensor_e4m3", "row", "1x128", "128x128", "mx_floor", "nvfp4", "nvfp4_16x16",
                                   "int4_asym"])
def test_many_tiles(label):
    """Small tiles: several programs along both dims, partial tiles at the edges."""
    x = torch.randn(150, 333, generator=gen(3))
    spec = spec_of(label)
    g = tq._geometry((150, 333), spec)
    cfg = tq.Config(1, 256, 4) if g.kind == "tensor" else tq.Config(4, max(2 * (g.bk if g.kind == "blocks" else 0), 64), 4)
    assert_bit_exact(tq.quantize(x, spec, config=cfg), quantize_reference(x, spec))


@pytest.mark.parametrize("amax", [1.0, 3.7e-20, 5e30, 1e-25], ids=["one", "small", "huge", "tiny_scale"])
@pytest.mark.parametrize("label", ["tensor_e4m3", "tensor_e5m2", "delayed_margin", "row", "1x128", "1x128_e5m2",
                                   "128x128"])
def test_division_near_fp8_midpoints(label, amax):
    """fp32 amax scales divide through one reciprocal per block and an fma
    correction (``div_by_scale``; 128x128 blocks and the tensorwise rowcol
    cast keep ``div_rn``): bit-exact against torch's division where the
    quotient sits next to an FP8 rounding midpoint, for -0.0 and subnormal
    inputs, and through the ``div_rn`` fallback of a tiny scale."""
    spec = spec_of(label)
    x = near_fp8_midpoints(spec, amax, seed=30)
    check(x, label)
    if tq.supports_rowcol(x, spec):
        rows, cols = tq.quantize_rowwise_and_columnwise(x, spec)
        assert_bit_exact(rows, quantize_reference(x, spec))
        assert_bit_exact(cols, quantize_reference(x.t(), spec))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("label", sorted(SPECS), ids=sorted(SPECS))
def test_edge_values(label, dtype):
    check(edge_values(40, 272, seed=4).to(dtype), label)


@pytest.mark.parametrize("scale", [1e-39, 1e-43, 3e38], ids=["tiny", "subnormal", "huge"])
@pytest.mark.parametrize("label", ["tensor_e4m3", "tensor_pow2", "row", "1x128_pow2", "mx_floor", "mx_rceil",
                                   "nvfp4", "int4_sym", "int4_asym"])
def test_whole_tensor_extremes(label, scale):
    """NVFP4 global scale at its floor (then 1/global / block can be inf), pow2
    scales of subnormal amaxes, fp32 overflow of INT4 spans."""
    check(torch.randn(24, 160, generator=gen(7)) * scale, label)


@pytest.mark.parametrize("label", sorted(SPECS), ids=sorted(SPECS))
def test_zeros(label):
    check(torch.zeros(9, 130), label)


@pytest.mark.parametrize("label", sorted(SPECS), ids=sorted(SPECS))
def test_nan_and_inf(label):
    x = torch.randn(24, 256, generator=gen(8))
    x[1, 5] = math.nan
    x[2, 100] = math.inf
    x[3, 7] = -math.inf
    x[4, 0], x[4, 1] = math.nan, math.inf
    spec = spec_of(label)
    assert_bit_exact(tq.quantize(x, spec), quantize_reference(x, spec), nan_aware=True)


# --------------------------------------------------------------------------- given amaxes, noise


@pytest.mark.parametrize("label", ["tensor_e4m3", "delayed_margin", "tensor_pow2", "row", "1x128", "nvfp4",
                                   "nvfp4_16x16"])
@pytest.mark.parametrize("amax", [0.0, 0.37, 1e30], ids=["zero", "small", "huge"])
def test_given_amax(label, amax):
    check(torch.randn(33, 200, generator=gen(9)), label, amax=torch.tensor(amax))


@pytest.mark.parametrize("label", ["tensor_e4m3", "tensor_e5m2", "delayed_margin", "row", "1x128", "128x128"])
def test_given_amax_far_below_the_data(label):
    """A stale amax (DelayedScaling's history, or block amaxes from
    elsewhere) under the data: quotients past fp32's range saturate to the
    FP8 max, as the reference's do (``x * (1 / s)`` overflows to inf there)."""
    x = torch.randn(33, 200, generator=gen(34)) * 1e37
    x[::3, ::7] = 3e38
    x[1::3, ::5] = -3e38
    check(x, label, amax=torch.tensor(1.0))
    spec = spec_of(label)
    if not spec.tensorwise:
        check(x, label, block_amax=torch.full(scale_grid_shape(x.shape, block_for(spec.block, 2)), 0.5))
    else:
        rows, cols = tq.quantize_rowwise_and_columnwise(x, spec, torch.tensor(1.0))
        assert_bit_exact(rows, quantize_reference(x, spec, amax=torch.tensor(1.0)))
        assert_bit_exact(cols, quantize_reference(x.t(), spec, amax=torch.tensor(1.0)))


@pytest.mark.parametrize("margin", [0, 3], ids=["largest", "inf"])
def test_division_by_largest_and_infinite_scales(margin):
    """An amax at fp32's max: the largest finite scale (about 2**119, its
    reciprocal still normal), and with a margin an infinite one (the amax
    times 2**margin overflows), where the division must give ``x / inf``'s
    signed zeros."""
    spec = breccia.DelayedScaling(margin=margin).spec("input")
    x = torch.randn(33, 200, generator=gen(35)) * 1e37
    x[::4, ::9] = 3.3e38
    x[2::4, ::11] = -1e-30
    x[3::4, 1::13] = -0.0
    amax = torch.tensor(3.4e38)
    assert_bit_exact(tq.quantize(x, spec, amax=amax), quantize_reference(x, spec, amax=amax))
    rows, cols = tq.quantize_rowwise_and_columnwise(x, spec, amax)
    assert_bit_exact(rows, quantize_reference(x, spec, amax=amax))
    assert_bit_exact(cols, quantize_reference(x.t(), spec, amax=amax))
    row = breccia.Float8CurrentScaling(granularity="row").spec("input")
    assert_bit_exact(tq.quantize(x, row, block_amax=torch.full((33, 1), 3.4e38)),
                     quantize_reference(x, row, block_amax=torch.full((33, 1), 3.4e38)))


@pytest.mark.parametrize("t_amax", [1.37, 3.1e-20, 7.7e25, 1e-33], ids=["one", "small", "huge", "slow_path"])
@pytest.mark.parametrize("label", ["nvfp4", "nvfp4_16x16"])
def test_nvfp4_division_near_midpoints(label, t_amax):
    """Block scales next to e4m3 rounding midpoints and quotients next to
    e2m1 ones: the NVFP4 block divisions (reciprocals with an fma correction,
    or ``div_rn`` for a global scale under 2**-90) bit-exact against the
    reference's."""
    check(near_nvfp4_midpoints(spec_of(label), t_amax, seed=37), label, amax=torch.tensor(t_amax))


@pytest.mark.parametrize("g_exp", [-91, -90, -60, 99, 100, 101])
@pytest.mark.parametrize("label", ["nvfp4", "nvfp4_16x16"])
def test_nvfp4_division_edges(label, g_exp):
    """NVFP4 block scales and reciprocals divide through reciprocals while
    the global scale lies in [2**-90, 2**100] and by ``div_rn`` outside:
    given amaxes that put it either side of both edges, with blocks whose
    scale falls under e4m3's floor, lands near 448 or past it, holds an inf,
    or sits near the fp32 range's ends."""
    t_amax = 2688.0 * 2.0**g_exp
    x = torch.randn(48, 256, generator=gen(36)) / 4
    rel = torch.tensor([1.0, 0.5, 2.0**-9, 2.0**-14, 2.0**-16, 2.0**-40, 1.9, 3.0, 1e6])
    x = x * (t_amax * rel[torch.arange(48) % rel.numel()])[:, None].clamp(max=3e38)
    x[5, 3] = math.inf
    x[7, 40] = -math.inf
    x[11, :16] = 3e38
    x[13, 16:32] = 1e-40
    check(x, label, amax=torch.tensor(t_amax))
    check(x.clamp(-3e38, 3e38), label)


@pytest.mark.parametrize("label", ["tensor_e4m3", "row", "1x128", "128x128", "mx_floor", "mx_rceil", "nvfp4",
                                   "nvfp4_16x16", "int4_sym", "int4_asym"])
def test_block_amax(label):
    x = torch.randn(33, 200, generator=gen(10))
    spec = spec_of(label)
    grid = scale_grid_shape(x.shape, block_for(spec.block, 2))
    ba = torch.rand(grid, generator=gen(11)) * 3
    ba.view(-1)[0] = 0.0
    check(x, label, block_amax=ba)
    if spec.scale_format == "fp32":
        check(x, label, block_amax=ba, amax=torch.tensor(2.0))


@pytest.mark.parametrize("label", ["nvfp4", "nvfp4_16x16", "int4_sym", "int4_asym", "int4_fp16"])
def test_stochastic_rounding(label):
    x = torch.randn(20, 180, generator=gen(12))
    check(x, label, noise=torch.rand(x.shape, generator=gen(13)))


def test_long_rows_loop(monkeypatch):
    """Rows longer than one register tile: the amax loop, then the cast loop."""
    monkeypatch.setattr(tq, "ROW_TILE_MAX", 64)
    x = torch.randn(9, 300, generator=gen(14)).bfloat16()
    for label in ("row", "row_pow2_e5m2"):
        check(x, label)
        check(x, label, amax=torch.tensor(1.5))
        check(x, label, block_amax=torch.rand(9, 1, generator=gen(15)))


# --------------------------------------------------------------------------- fused transpose


@pytest.mark.parametrize("recipe,role", [
    (breccia.Float8BlockScaling(), "input"),
    (breccia.Float8BlockScaling(power_of_2_scale=True, fp8_format="hybrid"), "grad_output"),
    (breccia.MXFP8BlockScaling(), "input"),
    (breccia.MXFP8BlockScaling(scale_rule="rceil", fp8_format="e5m2"), "input"),
], ids=["1x128", "1x128_pow2_e5m2", "mx_floor", "mx_rceil_e5m2"])
@pytest.mark.parametrize("impl,width", [(2, 128), (3, 128), (4, 128), (4, 32)],
                         ids=["2d_tile", "3d_tile", "two_pass", "two_pass_narrow"])
def test_rowwise_and_columnwise(recipe, role, impl, width):
    spec = recipe.spec(role)
    x = edge_values(150, 200, seed=4).bfloat16()
    rows, cols = tq.quantize_rowwise_and_columnwise(x, spec, config=tq.Config(impl, width, 4))
    assert_bit_exact(rows, quantize_reference(x, spec))
    assert cols.qdata.shape == (200, 150)
    assert_bit_exact(cols, quantize_reference(x.t(), spec))


@pytest.mark.parametrize("label", ["tensor_e4m3", "tensor_e5m2", "tensor_pow2", "delayed_margin"])
@pytest.mark.parametrize("tile", [(16, 32, 4), (32, 16, 4)], ids=["16x32", "32x16"])
def test_tensorwise_rowwise_and_columnwise(label, tile):
    """Tensorwise FP8 cast once, stored as x (M, K) and as x.T (K, M), with
    the amax pass and with a given amax; ragged tiles at the edges."""
    spec = spec_of(label)
    for x, amax in ((edge_values(50, 70, seed=4).bfloat16(), None), (torch.randn(50, 70, generator=gen(17)), None),
                    (torch.randn(50, 70, generator=gen(18)).half(), torch.tensor(3.0))):
        rows, cols = tq.quantize_rowwise_and_columnwise(x, spec, amax, config=tq.Config(*tile))
        assert_bit_exact(rows, quantize_reference(x, spec, amax=amax))
        assert cols.qdata.shape == (70, 50) and cols.qdata.is_contiguous()
        assert_bit_exact(cols, quantize_reference(x.t(), spec, amax=amax))


def test_tensorwise_columnwise_tma_store(monkeypatch):
    """The transposed tile stored through a (K, M) tensor descriptor (the
    sm90 path; the interpreter runs descriptors too): same bits, edges clipped."""
    seen = []

    def tma_ok(x, M, rows, width):
        seen.append((rows, width))
        return M % 16 == 0

    monkeypatch.setattr(tq, "_tma_ok", tma_ok)
    spec = spec_of("tensor_e4m3")
    for shape in ((48, 70), (64, 200)):
        x = torch.randn(*shape, generator=gen(19)).bfloat16()
        rows, cols = tq.quantize_rowwise_and_columnwise(x, spec, config=tq.Config(32, 16, 4))
        assert_bit_exact(rows, quantize_reference(x, spec))
        assert_bit_exact(cols, quantize_reference(x.t(), spec))
    assert seen == [(32, 16), (32, 16)]


def test_rowwise_and_columnwise_rejects_other_specs():
    with pytest.raises(ValueError, match="quantize_rowwise_and_columnwise"):
        tq.quantize_rowwise_and_columnwise(torch.randn(4, 32), spec_of("nvfp4"))
    with pytest.raises(ValueError, match="amax"):  # a given amax is for tensorwise specs only
        tq.quantize_rowwise_and_columnwise(torch.randn(4, 32), spec_of("1x128"), torch.tensor(1.0))
    with pytest.raises(ValueError, match="amax"):
        tq.quantize_rowwise_and_columnwise(torch.randn(4, 32), spec_of("tensor_e4m3"), torch.ones(2))


# --------------------------------------------------------------------------- ops and routing


def test_triton_op_matches_reference():
    x = torch.randn(40, 300, generator=gen(16))
    for label in ("tensor_e4m3", "nvfp4", "int4_asym"):
        spec = spec_of(label)
        out = torch.ops.breccia.triton_quantize(x, spec.to_key(), None, None, None)
        ref = quantize_reference(x, spec)
        assert_bit_exact(
            (out[0], out[1], out[2] if spec.has_global_scale else None, out[3] if spec.has_zero_point else None), ref
        )
    spec = spec_of("1x128")
    q, s, qt, st = torch.ops.breccia.triton_quantize_rowcol(x, spec.to_key())
    assert_bit_exact((qt, st, None, None), quantize_reference(x.t(), spec))


def test_supports():
    x = torch.randn(8, 64)
    assert tq.supports(x, spec_of("1x128"))
    odd = breccia.Float8BlockScaling(input_block=(1, 100)).spec("input")
    assert not tq.supports(x, odd)  # not a power of two: the reference runs
    assert not tq.supports(torch.empty(0, 64), spec_of("1x128"))
    assert not tq.supports(x.to(torch.int32), spec_of("1x128"))
    assert not tq.supports(x, spec_of("tensor_e4m3"), amax=torch.ones(2))
    assert cuda_quantize(x, spec_of("1x128")) is None  # CPU tensors stay on the reference route
