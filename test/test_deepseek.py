"""DeepSeek-V3 FP8 weights: breccia agrees with DeepSeek's own definitions."""

import math

import pytest
import torch
from conftest import randn, student_t

import breccia
from breccia.bridges.deepseek import from_deepseek_v3, to_deepseek_v3

B = 128
E4M3_MAX = 448.0


def deepseek_dequant(weight, weight_scale_inv):
    """DeepSeek-V3's weight dequantization, from its definition
    (inference/kernel.py ``weight_dequant``, fp8_cast_bf16.py)."""
    n, k = weight.shape
    s = weight_scale_inv.repeat_interleave(B, 0).repeat_interleave(B, 1)[:n, :k]
    return weight.float() * s


def deepseek_weight_quant(x, ue8m0=False):
    """DeepSeek's block rule for a weight: per 128x128 block ``s = amax / 448``
    (ue8m0: ``2**ceil(log2(amax / 448))``), ``q = (x / s).to(e4m3)``."""
    n, k = x.shape
    gn, gk = math.ceil(n / B), math.ceil(k / B)
    xf = torch.nn.functional.pad(x.float(), (0, gk * B - k, 0, gn * B - n))
    blocks = xf.view(gn, B, gk, B)
    amax = blocks.abs().amax(dim=(1, 3))
    s = amax / E4M3_MAX
    if ue8m0:
        s = torch.exp2(torch.ceil(torch.log2(s)))
    q = (blocks / s[:, None, :, None]).to(torch.float8_e4m3fn).view(gn * B, gk * B)[:n, :k]
    return q, s


def fake_deepseek_weight(n, k, seed=0):
    """An e4m3 weight and fp32 scale grid as a DeepSeek checkpoint holds them."""
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(n, k, generator=g) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
    s = torch.rand(math.ceil(n / B), math.ceil(k / B), generator=g) * 1e-3 + 1e-5
    return q, s


@pytest.mark.parametrize("shape", [(256, 512), (300, 200), (1, 129), (128, 7)])
def test_dequantize_matches_deepseek_reference(shape):
    q, s = fake_deepseek_weight(*shape)
    st = from_deepseek_v3(q, s)
    assert isinstance(st, breccia.ScaledTensor) and st.shape == shape and st.dtype == torch.bfloat16
    assert st.recipe == breccia.Float8BlockScaling() and st.role == "weight" and st.block == (128, 128)
    assert torch.equal(breccia.dequantize(st, torch.float32), deepseek_dequant(q, s))
    assert torch.equal(breccia.dequantize(st), deepseek_dequant(q, s).to(torch.bfloat16))


@pytest.mark.parametrize("shape", [(256, 384), (300, 200)])
def test_round_trip_is_bit_exact_and_zero_copy(shape):
    q, s = fake_deepseek_weight(*shape, seed=1)
    w, si = to_deepseek_v3(from_deepseek_v3(q, s))
    assert w.dtype == torch.float8_e4m3fn and si.dtype == torch.float32
    assert torch.equal(w.view(torch.uint8), q.view(torch.uint8)) and torch.equal(si, s)
    assert w.data_ptr() == q.data_ptr() and si.data_ptr() == s.data_ptr()  # the scale IS weight_scale_inv


@pytest.mark.parametrize("shape", [(256, 512), (300, 200), (130, 1000)])
def test_cast_matches_deepseek_quant_rule(shape):
    x = (student_t(*shape, seed=3) * 0.02).to(torch.bfloat16)
    st = breccia.cast(x, breccia.Float8BlockScaling(), "weight")
    q_ref, s_ref = deepseek_weight_quant(x)
    w, si = to_deepseek_v3(st)
    assert torch.equal(w.view(torch.uint8), q_ref.view(torch.uint8))
    # breccia's scale is amax / 448, except that where amax / (amax / 448)
    # rounds above 448 in fp32 it is one ulp larger (so the largest element
    # never needs the saturating clamp; docs/numerics.md). Payloads agree.
    amax = s_ref * E4M3_MAX
    nudged = amax / s_ref > E4M3_MAX
    assert torch.equal(si[~nudged], s_ref[~nudged])
    assert torch.equal(si[nudged], torch.nextafter(s_ref[nudged], torch.tensor(math.inf)))
    # and DeepSeek's dequantization of breccia's output is breccia's
    assert torch.equal(deepseek_dequant(w, si), breccia.dequantize(st, torch.float32))


def test_power_of_two_scales_match_deepseek_ue8m0_rule():
    x = (randn(300, 260, seed=4) * 0.05).to(torch.bfloat16)
    st = breccia.cast(x, breccia.Float8BlockScaling(power_of_2_scale=True), "weight")
    q_ref, s_ref = deepseek_weight_quant(x, ue8m0=True)
    w, si = to_deepseek_v3(st)
    assert torch.equal(si, s_ref) and torch.equal(w.view(torch.uint8), q_ref.view(torch.uint8))
    back = from_deepseek_v3(w, si, scale_fmt="ue8m0")
    assert back.recipe == breccia.Float8BlockScaling(power_of_2_scale=True)


def test_from_deepseek_rejects_bad_input():
    q, s = fake_deepseek_weight(256, 384)
    with pytest.raises(ValueError, match=r"weight_scale_inv: expected float32 of shape \[2, 3\].*\[2, 2\]"):
        from_deepseek_v3(q, s[:, :2])
    with pytest.raises(ValueError, match="weight_scale_inv: expected float32.*bfloat16"):
        from_deepseek_v3(q, s.to(torch.bfloat16))
    with pytest.raises(ValueError, match="weight: expected a 2-D torch.float8_e4m3fn.*bfloat16"):
        from_deepseek_v3(q.to(torch.bfloat16), s)
    with pytest.raises(ValueError, match="weight: expected a 2-D"):
        from_deepseek_v3(q[0], s)
    with pytest.raises(ValueError, match="scale_fmt"):
        from_deepseek_v3(q, s, scale_fmt="e8m0")
    with pytest.raises(ValueError, match="not powers of two"):
        from_deepseek_v3(q, s, scale_fmt="ue8m0")
    with pytest.raises(TypeError, match="weight"):
        from_deepseek_v3([1], s)


@pytest.mark.parametrize(
    "st,msg",
    [
        (lambda: breccia.cast(randn(64, 256), breccia.MXFP8BlockScaling()), "Float8BlockScaling, got MXFP8BlockScaling"),
        (lambda: breccia.cast(randn(64, 256), breccia.Float8BlockScaling(), "input"), "128x128 blocks"),
        (lambda: breccia.cast(randn(64, 256), breccia.Float8BlockScaling(fp8_format="e5m2")), "e4m3, got e5m2"),
        (lambda: breccia.cast(randn(2, 64, 256), breccia.Float8BlockScaling()), "2-D"),
    ],
)
def test_to_deepseek_rejects_other_tensors(st, msg):
    with pytest.raises(ValueError, match=msg):
        to_deepseek_v3(st())
    with pytest.raises(TypeError, match="ScaledTensor"):
        to_deepseek_v3(randn(4, 4))
