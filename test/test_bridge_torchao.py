"""torchao bridge, tested against real torchao 0.18 tensors (CPU)."""

import pytest
import torch

import breccia
from breccia.bridges.torchao import from_torchao, to_torchao

pytest.importorskip("torchao", reason="torchao is not installed")
from torchao.prototype.mx_formats.mx_tensor import MXTensor  # noqa: E402
from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale  # noqa: E402
from torchao.quantization.granularity import PerBlock, PerRow, PerTensor  # noqa: E402
from torchao.quantization.quantize_.workflows.float8.float8_tensor import Float8Tensor  # noqa: E402
from torchao.quantization.quantize_.workflows.int4.int4_tensor import Int4Tensor  # noqa: E402


def x_(n=256, k=256, seed=0, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g).to(dtype)


def bits(t):
    return t.view(torch.uint8) if t.element_size() == 1 else t


def same(a, b):
    return a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape) and torch.equal(bits(a), bits(b))


def assert_same_st(a, b):
    assert a.recipe == b.recipe and a.block == b.block and tuple(a.shape) == tuple(b.shape) and a.qlayout == b.qlayout
    for attr in ("qdata", "scale", "global_scale", "zero_point"):
        u, v = getattr(a, attr), getattr(b, attr)
        assert (u is None) == (v is None), attr
        if u is not None:
            assert same(u, v), attr


# --------------------------------------------------------------------------- Float8Tensor


@pytest.mark.parametrize(
    "granularity, dtype",
    [(PerTensor(), torch.float8_e4m3fn), (PerRow(), torch.float8_e4m3fn), (PerRow(), torch.float8_e5m2),
     (PerBlock([128, 128]), torch.float8_e4m3fn), (PerBlock([1, 128]), torch.float8_e4m3fn)],
    ids=["tensor", "row", "row_e5m2", "block128", "block1x128"],
)
def test_float8_tensor_both_ways(granularity, dtype):
    t = Float8Tensor.from_hp(x_(), float8_dtype=dtype, granularity=granularity)
    st = from_torchao(t)
    assert st.qdata.data_ptr() == t.qdata.data_ptr()  # zero-copy
    assert torch.equal(breccia.dequantize(st), t.dequantize())
    back = to_torchao(st)
    assert isinstance(back, Float8Tensor) and list(back.block_size) == list(t.block_size)
    assert same(back.qdata, t.qdata) and same(back.scale, t.scale) and back.dtype == t.dtype
    # torchao runs its own linear on the converted tensor
    a = x_(4, 256, seed=1)
    assert torch.equal(torch.nn.functional.linear(a, back), torch.nn.functional.linear(a, t))


@pytest.mark.parametrize("recipe", [breccia.Float8CurrentScaling(), breccia.Float8CurrentScaling(granularity="row"),
                                    breccia.Float8BlockScaling(), breccia.DelayedScaling()],
                         ids=["tensor", "row", "block", "delayed"])
def test_breccia_fp8_to_torchao_and_back(recipe):
    st = breccia.cast(x_(seed=2), recipe)
    t = to_torchao(st)
    assert torch.equal(t.dequantize(), breccia.dequantize(st))
    assert_same_st(from_torchao(t, recipe=recipe), st)


def test_float8_recipe_override_and_rowwise_equivalence():
    # PerBlock([1, 128]) on K = 128 is also rowwise: either recipe is accepted
    t = Float8Tensor.from_hp(x_(64, 128), granularity=PerBlock([1, 128]))
    st = from_torchao(t, recipe=breccia.Float8BlockScaling(), role="input")
    assert st.block == (1, 128) and st.role == "input"
    with pytest.raises(ValueError, match="recipe"):
        from_torchao(t, recipe=breccia.MXFP8BlockScaling())


# --------------------------------------------------------------------------- MXTensor


@pytest.mark.parametrize("elem", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_mx_tensor_matches_breccia_cast_bit_for_bit(elem):
    x = x_(seed=3)
    t = MXTensor.to_mx(x, elem, 32)
    recipe = breccia.MXFP8BlockScaling(fp8_format="e4m3" if elem == torch.float8_e4m3fn else "e5m2")
    st = breccia.cast(x, recipe)
    ours = to_torchao(st)
    assert same(ours.qdata, t.qdata) and same(ours.scale, t.scale)
    assert torch.equal(ours.dequantize(), t.dequantize())
    got = from_torchao(t)
    assert_same_st(got, st)
    assert got.scale.data_ptr() == t.scale.data_ptr()


def test_mx_swizzled_scales_both_ways():
    x = x_(200, 96, seed=4)  # rows and scale columns both need padding
    t = MXTensor.to_mx(x, torch.float8_e4m3fn, 32, is_swizzled_scales=True)
    st = from_torchao(t)
    assert st.qlayout is breccia.layouts.Swizzled
    plain = breccia.layouts.relayout(st, breccia.Plain)
    assert torch.equal(breccia.dequantize(plain), t.dequantize())
    assert_same_st(plain, breccia.cast(x, breccia.MXFP8BlockScaling()))
    back = to_torchao(st)
    assert back.is_swizzled_scales and same(back.scale, t.scale) and same(back.qdata, t.qdata)


# --------------------------------------------------------------------------- NVFP4Tensor


@pytest.mark.parametrize("swizzled", [False, True])
def test_nvfp4_tensor_matches_breccia_cast_bit_for_bit(swizzled):
    x = x_(160, 128, seed=5)
    t = NVFP4Tensor.to_nvfp4(x, per_tensor_scale=per_tensor_amax_to_scale(x.float().abs().amax()),
                             is_swizzled_scales=swizzled)
    st = breccia.cast(x, breccia.NVFP4BlockScaling())
    if swizzled:
        st = breccia.layouts.relayout(st, breccia.layouts.Swizzled)
    ours = to_torchao(st)
    assert same(ours.qdata, t.qdata) and same(ours.scale, t.scale)
    assert same(ours.per_tensor_scale, t.per_tensor_scale)
    assert torch.equal(ours.dequantize(torch.float32), t.dequantize(torch.float32))
    got = from_torchao(t)
    assert_same_st(got, st)
    assert torch.equal(breccia.dequantize(breccia.layouts.relayout(got, breccia.Plain), torch.float32),
                       t.dequantize(torch.float32))


def test_nvfp4_single_level_and_16x16():
    x = x_(64, 64, seed=6)
    t = NVFP4Tensor.to_nvfp4(x)  # no per-tensor scale
    st = from_torchao(t)
    assert float(st.global_scale) == 1.0
    assert torch.equal(breccia.dequantize(st, torch.float32), t.dequantize(torch.float32))
    st16 = breccia.cast(x, breccia.NVFP4BlockScaling(weight_block=(16, 16)))
    t16 = to_torchao(st16)  # torchao has 1x16 blocks: each scale row repeats
    assert tuple(t16.scale.shape) == (64, 4)
    assert torch.equal(t16.dequantize(torch.float32), breccia.dequantize(st16, torch.float32))


# --------------------------------------------------------------------------- Int4Tensor
# Int4Tensor.from_hp needs mslk's CUDA kernels; the tensor itself builds on the CPU.


def int4_reference(t):
    """Int4Tensor's dequantization (mslk's convention): q * scale + zero_point."""
    n, k = t.shape
    q = torch.stack([(t.qdata << 4) >> 4, t.qdata >> 4], dim=-1).reshape(n, k).float()  # sign-extend nibbles
    g = t.block_size[-1]
    s = t.scale.t().float().repeat_interleave(g, dim=1)[:, :k]
    z = t.zero_point.t().float().repeat_interleave(g, dim=1)[:, :k]
    return q * s + z


@pytest.mark.parametrize("recipe", [breccia.INT4Scaling(), breccia.INT4Scaling(group_size=32, scale_dtype="fp16")],
                         ids=["bf16", "fp16"])
def test_int4_symmetric_both_ways(recipe):
    st = breccia.cast(x_(64, 256, seed=7), recipe)
    t = to_torchao(st)
    assert isinstance(t, Int4Tensor) and tuple(t.shape) == (64, 256) and t.qdata.dtype == torch.int8
    assert tuple(t.scale.shape) == (256 // recipe.group_size, 64) and bool((t.zero_point == 0).all())
    assert torch.equal(int4_reference(t), breccia.dequantize(st, torch.float32))
    assert_same_st(from_torchao(t), st)
    # torchao's own slicing works on it, and reads back consistently
    part = from_torchao(t[8:24])  # Int4Tensor's dtype is its scale dtype
    assert torch.equal(breccia.dequantize(part, torch.float32), breccia.dequantize(st, torch.float32)[8:24])


def test_int4_asymmetric_exact_offsets_and_float_zero_points():
    x = x_(32, 128, seed=8)
    st = breccia.cast(x, breccia.INT4Scaling(symmetric=False, group_size=32))
    # powers-of-two scales make (8 - zp) * scale exact in bf16
    pow2 = torch.exp2(torch.round(torch.log2(st.scale.float()))).to(torch.bfloat16)
    st = st.with_inner(scale=pow2)
    t = to_torchao(st)
    assert torch.equal(int4_reference(t), breccia.dequantize(st, torch.float32))
    assert_same_st(from_torchao(t), st)
    # mslk-style float zero points (min + 8 * scale) have no exact breccia form
    bad = Int4Tensor(t.qdata, t.scale, t.zero_point + 0.001, t.block_size, t.shape)
    with pytest.raises(ValueError, match="zero_point"):
        from_torchao(bad)
    with pytest.raises(ValueError, match="float offset"):
        to_torchao(breccia.cast(x, breccia.INT4Scaling(symmetric=False, group_size=32)))


def test_errors():
    with pytest.raises(TypeError, match="t: expected a torchao"):
        from_torchao(torch.randn(4))
    with pytest.raises(TypeError, match="st: expected"):
        to_torchao(torch.randn(4))
    with pytest.raises(ValueError, match="divisible"):
        to_torchao(breccia.cast(x_(100, 200), breccia.Float8BlockScaling()))
    with pytest.raises(ValueError, match="MXTensor"):
        to_torchao(breccia.cast(x_(4, 48), breccia.MXFP8BlockScaling()))
