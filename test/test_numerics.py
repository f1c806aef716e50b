"""Numerics of every recipe, proven against oracles nobody here wrote:
torch's own casts, torchao's reference quantizers and ml_dtypes."""

import pytest
import torch
from conftest import RECIPES, randn, student_t
from hypothesis import assume, given, settings
from hypothesis import strategies as st_

import breccia
from breccia.quantize import expand_scale, resolve_block

torchao = pytest.importorskip("torchao")
from torchao.prototype.mx_formats.mx_tensor import to_mx  # noqa: E402
from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale  # noqa: E402

INPUTS = {
    "gaussian": lambda: randn(64, 256, seed=3),
    "heavy_tailed": lambda: student_t(64, 256, seed=4),
    "tiny": lambda: randn(64, 256, seed=5) * 1e-20,
    "huge": lambda: randn(64, 256, seed=6) * 1e20,
}


def _bytes(t):
    return t.contiguous().view(torch.uint8)


# --------------------------------------------------------------------------- FP8 tensorwise / rowwise


@pytest.mark.parametrize("granularity", ["tensor", "row"])
@pytest.mark.parametrize("fp8_format", ["e4m3", "e5m2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fp8_payload_is_clamp_div_cast(granularity, fp8_format, dtype):
    x = randn(32, 96, dtype=dtype, seed=7, scale=3.0)
    st = breccia.cast(x, breccia.Float8CurrentScaling(fp8_format=fp8_format, granularity=granularity))
    fmax = torch.finfo(st.qdata.dtype).max
    assert st.scale.shape == ((1, 1) if granularity == "tensor" else (32, 1))
    ref = torch.clamp(x.float() / st.scale, -fmax, fmax).to(st.qdata.dtype)
    assert torch.equal(_bytes(st.qdata), _bytes(ref))
    amax = x.float().abs().amax(dim=None if granularity == "tensor" else -1, keepdim=True)
    ratio = amax / st.scale
    assert (ratio > fmax / 2).all() and (ratio <= fmax).all()


def test_fp8_pow2_scales_are_powers_of_two_and_fit():
    x = student_t(16, 128, seed=1) * 37
    for r in (breccia.Float8CurrentScaling(power_of_2_scale=True), breccia.Float8BlockScaling(power_of_2_scale=True)):
        st = breccia.cast(x, r, "input")
        m, _ = torch.frexp(st.scale)
        assert (m == 0.5).all()
        amax_ratio = x.abs().amax() / st.scale.max()
        assert amax_ratio <= 448


def test_fp8_block_scales_match_per_block_amax():
    x = randn(200, 300, seed=2)  # 128x128 blocks with partial edges in both dims
    st = breccia.cast(x, breccia.Float8BlockScaling(), "weight")
    assert st.scale.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            blk = x[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]
            # a partial trailing block takes its scale from its own elements
            assert st.scale[i, j] == torch.clamp(blk.abs().max() / 448, min=2**-126) or (
                blk.abs().max() / st.scale[i, j] <= 448
            )
            ref = torch.clamp(blk / st.scale[i, j], -448, 448).to(torch.float8_e4m3fn)
            got = st.qdata[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]
            assert torch.equal(_bytes(got), _bytes(ref))


# --------------------------------------------------------------------------- MXFP8 vs torchao


@pytest.mark.parametrize("kind", sorted(INPUTS))
@pytest.mark.parametrize("elem", ["e4m3", "e5m2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mxfp8_floor_bit_identical_to_torchao(kind, elem, dtype):
    x = INPUTS[kind]().to(dtype)
    st = breccia.cast(x, breccia.MXFP8BlockScaling(fp8_format=elem))
    tdt = torch.float8_e4m3fn if elem == "e4m3" else torch.float8_e5m2
    scale_ref, data_ref = to_mx(x.contiguous(), tdt, 32)
    assert torch.equal(_bytes(st.scale), _bytes(scale_ref))
    assert torch.equal(_bytes(st.qdata), _bytes(data_ref))


def test_mxfp8_floor_is_ocp_rule():
    x = student_t(8, 64, seed=9)
    st = breccia.cast(x, breccia.MXFP8BlockScaling())
    amax = x.reshape(8, 2, 32).abs().amax(-1)
    expect = torch.floor(torch.log2(amax)) - 8
    assert torch.equal(st.scale.view(torch.uint8).to(torch.float32) - 127, expect)


def test_mxfp8_rceil_never_saturates_and_is_minimal():
    x = student_t(16, 128, seed=11) * 1e3
    st = breccia.cast(x, breccia.MXFP8BlockScaling(scale_rule="rceil"))
    s = st.scale.to(torch.float32)
    amax = x.reshape(16, 4, 32).abs().amax(-1)
    assert (amax / s <= 448).all()
    assert (amax / (s / 2) > 448).all()  # the next smaller power of two would saturate


# --------------------------------------------------------------------------- NVFP4 vs torchao


@pytest.mark.parametrize("kind", ["gaussian", "heavy_tailed", "tiny", "huge"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nvfp4_bit_identical_to_torchao(kind, dtype):
    x = INPUTS[kind]().to(dtype)
    st = breccia.cast(x, breccia.NVFP4BlockScaling())
    pts = per_tensor_amax_to_scale(x.float().abs().amax())
    ref = NVFP4Tensor.to_nvfp4(x.contiguous(), per_tensor_scale=pts)
    assert torch.equal(st.global_scale, pts)
    assert torch.equal(_bytes(st.scale), _bytes(ref.scale))
    assert torch.equal(st.qdata, ref.qdata.view(torch.uint8))
    # and dequantization agrees with torchao's
    torch.testing.assert_close(breccia.dequantize(st, torch.float32), ref.dequantize(torch.float32), rtol=0, atol=0)


def test_nvfp4_global_scale_rule():
    x = randn(32, 64, seed=12)
    st = breccia.cast(x, breccia.NVFP4BlockScaling())
    assert st.global_scale == x.abs().max() / (448 * 6)
    blk = x.reshape(32, 4, 16).abs().amax(-1)
    expect = torch.clamp(blk / 6 / st.global_scale, 2**-6, 448).to(torch.float8_e4m3fn)
    assert torch.equal(_bytes(st.scale), _bytes(expect))


# --------------------------------------------------------------------------- INT4


def test_int4_symmetric_rule():
    x = randn(4, 256, seed=13)
    st = breccia.cast(x, breccia.INT4Scaling())
    amax = x.reshape(4, 2, 128).abs().amax(-1)
    # the least bf16 at or above amax / 7.5: the group's extremes stay on the grid
    exact = amax / 7.5
    below = torch.nextafter(st.scale, torch.zeros_like(st.scale)).float()
    assert (st.scale.float() >= exact).all() and (below < exact).all()
    d = breccia.dequantize(st, torch.float32)
    q = d.reshape(4, 2, 128) / st.scale.float().unsqueeze(-1)
    assert torch.equal(q, torch.round(q)) and q.min() >= -8 and q.max() <= 7


def test_int4_asymmetric_zero_is_exact_and_codes_in_range():
    x = randn(4, 64, seed=14).abs() + 0.5  # all positive: the zero point sits at code 0
    x[0, :32] -= 10  # a group that straddles zero
    st = breccia.cast(x, breccia.INT4Scaling(symmetric=False, group_size=32))
    assert st.zero_point.shape == (4, 2) and st.zero_point.dtype == torch.uint8
    assert st.zero_point[1, 0] == 0 and 0 < st.zero_point[0, 0] <= 15
    xz = x.clone()
    xz[0, 0] = 0.0
    d = breccia.dequantize(breccia.cast(xz, st.recipe), torch.float32)
    assert d[0, 0] == 0.0


# --------------------------------------------------------------------------- all recipes


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_zero_blocks_decode_to_zero_with_finite_scales(recipe, dtype):
    x = torch.zeros(32, 256, dtype=dtype)
    x[:16, 128:] = randn(16, 128, seed=15, dtype=dtype)
    st = breccia.cast(x, recipe)
    assert torch.isfinite(st.scale.float()).all()
    d = breccia.dequantize(st)
    assert (d[16:, :128] == 0).all() and d.dtype == dtype
    z = breccia.cast(torch.zeros(16, 64, dtype=dtype), recipe)
    assert torch.isfinite(z.scale.float()).all() and (breccia.dequantize(z) == 0).all()


@pytest.mark.parametrize(
    "values",
    [
        lambda: randn(16, 128, seed=16) * (3e38 / 5),  # near float32 max
        lambda: randn(16, 128, seed=17) * 1e-39,  # float32 subnormals
        lambda: torch.full((16, 128), 1e-45),  # the smallest subnormal
        lambda: student_t(16, 128, seed=18) * 1e30,
    ],
)
def test_finite_input_never_gives_nan_or_inf(recipe, values):
    x = values()
    st = breccia.cast(x, recipe)
    assert torch.isfinite(breccia.dequantize(st, torch.float32)).all()


def test_nan_input_is_never_silently_finite(recipe):
    x = randn(32, 256, seed=19)
    x[3, 5] = float("nan")
    d = breccia.dequantize(breccia.cast(x, recipe), torch.float32)
    assert torch.isnan(d[3, 5])


def _grid_step(v, element):
    """The spacing of the element grid at magnitude |v| (in scaled units)."""
    a = v.abs()
    if element == "int4":
        return torch.ones_like(a)
    if element == "e2m1":
        return torch.where(a < 2, 0.5, torch.where(a < 4, 1.0, 2.0))
    mbits, emin = {"e4m3": (3, -6), "e5m2": (2, -14)}[element]
    e = torch.floor(torch.log2(torch.clamp(a, min=2.0**emin)))
    return 2.0 ** (e - mbits)


def assert_within_half_a_step(x, st):
    """Every element decodes to within half a grid step of its (clipped)
    scaled value; only the OCP floor rule may clip beyond that."""
    spec = st.spec
    block = resolve_block(st.block, x.shape)
    s = breccia.formats.decode_e8m0(st.scale) if spec.scale_format == "e8m0" else st.scale.float()
    s = expand_scale(s, block, x.shape)
    if st.global_scale is not None:
        s = s * st.global_scale
    v = x.float() / s  # in element units
    if st.zero_point is not None:
        v = v + expand_scale(st.zero_point.float(), block, x.shape)
    fmax = spec.fmt.max if spec.element != "int4" else (7 if spec.scale_rule == "symmetric" else 15)
    fmin = -8 if spec.scale_rule == "symmetric" else (0 if spec.element == "int4" else -fmax)
    clipped = torch.clamp(v, fmin, fmax)
    d = breccia.dequantize(st, torch.float32) / s
    if st.zero_point is not None:
        d = d + expand_scale(st.zero_point.float(), block, x.shape)
    err = (d - clipped).abs()
    half = _grid_step(clipped, spec.element) / 2
    assert (err <= half * (1 + 1e-6)).all(), float((err - half).max())
    if spec.scale_rule != "floor":
        assert ((v - clipped).abs() <= half * (1 + 1e-6)).all()


def test_round_trip_within_half_a_step(recipe):
    x = student_t(48, 256, seed=20)
    assert_within_half_a_step(x, breccia.cast(x, recipe))


@settings(max_examples=25, deadline=None)
@given(
    name=st_.sampled_from(sorted(RECIPES)),
    rows=st_.integers(1, 40),
    cols=st_.integers(1, 300),
    log_scale=st_.integers(-30, 30),
    heavy=st_.booleans(),
    seed=st_.integers(0, 2**16),
)
def test_property_round_trip_within_half_a_step(name, rows, cols, log_scale, heavy, seed):
    x = (student_t(rows, cols, seed=seed) if heavy else randn(rows, cols, seed=seed)) * (10.0**log_scale)
    # fp16 group scales cannot exceed 65504: larger groups saturate by design
    assume(not (RECIPES[name].name == "INT4Scaling" and RECIPES[name].scale_dtype == "fp16" and x.abs().max() / 7.5 > 65504))
    assert_within_half_a_step(x, breccia.cast(x, RECIPES[name]))


def test_hybrid_uses_e5m2_for_gradients():
    r = breccia.DelayedScaling(fp8_format="hybrid")
    assert breccia.cast(randn(4, 32), r, "grad_output").qdata.dtype == torch.float8_e5m2
    assert breccia.cast(randn(4, 32), r, "input").qdata.dtype == torch.float8_e4m3fn


def test_delayed_scaling_uses_the_history():
    x = randn(8, 32, seed=21)
    r = breccia.DelayedScaling(margin=1, fp8_format="e4m3")
    hist = torch.tensor([2.0, 10.0, 4.0])
    st = breccia.cast(x, r, "input", amax_history=hist)
    assert st.scale.item() == pytest.approx(10.0 * 2 / 448, rel=1e-7)
    st2 = breccia.cast(x, breccia.DelayedScaling(amax_compute_algo="most_recent", fp8_format="e4m3"), amax_history=hist)
    assert st2.scale.item() == pytest.approx(2.0 / 448, rel=1e-7)
    # without a history the tensor's own amax is used
    st3 = breccia.cast(x, r)
    assert st3.scale.item() == pytest.approx(x.abs().max().item() * 2 / 448, rel=1e-6)


def test_scale_from_amax_history():
    from breccia.quantize import scale_from_amax_history

    h = torch.tensor([1.0, 3.0, 2.0])
    r = breccia.DelayedScaling(fp8_format="e4m3")
    assert scale_from_amax_history(h, r).item() == pytest.approx(3 / 448)
    assert scale_from_amax_history(h, breccia.DelayedScaling(amax_compute_algo="most_recent")).item() == pytest.approx(
        1 / 448
    )
    assert scale_from_amax_history(h, breccia.DelayedScaling(margin=2)).item() == pytest.approx(12 / 448)
    assert scale_from_amax_history(h, r, "grad_output").item() == pytest.approx(3 / 448)
    assert scale_from_amax_history(h, breccia.DelayedScaling(), "grad_output").item() == pytest.approx(3 / 57344)
    assert scale_from_amax_history(torch.zeros(4), r).item() == 1.0
    x = randn(8, 16)
    assert breccia.cast(x, r, "input", amax_history=h).scale.item() == scale_from_amax_history(h, r).item()
    with pytest.raises(ValueError, match="amax_history"):
        breccia.cast(x, r, amax_history=torch.empty(0))
    with pytest.raises(ValueError, match="amax_history"):
        breccia.cast(x, breccia.Float8CurrentScaling(), amax_history=h)


def test_nvfp4_stochastic_rounding_for_grads_is_reproducible():
    r = breccia.NVFP4BlockScaling(stochastic_rounding=True)
    x = randn(16, 64, seed=22)
    a = breccia.cast(x, r, "grad_output", generator=torch.Generator().manual_seed(5))
    b = breccia.cast(x, r, "grad_output", generator=torch.Generator().manual_seed(5))
    c = breccia.cast(x, r, "grad_output", generator=torch.Generator().manual_seed(6))
    assert torch.equal(a.qdata, b.qdata) and not torch.equal(a.qdata, c.qdata)
    # weights and inputs keep round-to-nearest
    w1 = breccia.cast(x, r, "weight", generator=torch.Generator().manual_seed(5))
    assert torch.equal(w1.qdata, breccia.cast(x, breccia.NVFP4BlockScaling(), "weight").qdata)


@pytest.mark.parametrize("shape", [(3, 5, 64), (2, 3, 4, 96), (200,)])
def test_nd_input_blocks_run_along_last_dim(recipe, shape):
    x = randn(*shape, seed=23)
    st = breccia.cast(x, recipe)
    flat = breccia.cast(x.reshape(-1, shape[-1]), recipe) if len(shape) > 1 else None
    d = breccia.dequantize(st, torch.float32)
    assert d.shape == x.shape
    spec = st.spec
    if flat is not None and spec.block[0] == 1:  # per-row blocks: N-D equals flattened 2-D
        assert torch.equal(d.reshape(-1, shape[-1]), breccia.dequantize(flat, torch.float32))


def test_empty_tensors(recipe):
    x = torch.empty(0, 64)
    st = breccia.cast(x, recipe)
    assert st.shape == (0, 64)
    assert breccia.dequantize(st).shape == (0, 64)


def test_given_amax_decides_scales_even_for_empty_tensors():
    """An empty shard must agree with the other ranks' scales."""
    a = torch.tensor(8.0)
    st = breccia.cast(torch.empty(0, 32), breccia.Float8CurrentScaling(), amax=a)
    assert st.scale.item() == breccia.cast(torch.full((1, 32), 8.0), breccia.Float8CurrentScaling()).scale.item()
    nv = breccia.cast(torch.empty(0, 32), breccia.NVFP4BlockScaling(), amax=a)
    assert nv.global_scale.item() == pytest.approx(8.0 / 2688, rel=1e-7)
