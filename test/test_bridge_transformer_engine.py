"""TransformerEngine bridge: TE's buffer layouts (padding, 128x4 swizzle,
transposed column-wise data, amax vs scale) and round trips.

TE cannot be installed here (it needs a CUDA driver to import), so the
layouts are checked against dequantizers transcribed from TE's own code:
``Float8TensorStorage``'s CPU fallback, ``Float8BlockwiseQTensorStorage``'s
Python dequantize, and the index/scale formulas of ``dequantize_fp4_kernel``
and ``gemm_swizzled_scale_idx`` (mxfp8/swizzle.cuh). Tests that need a real TE
are gated at the bottom."""

import enum
import math

import pytest
import torch

import breccia
from breccia.bridges import transformer_engine as bte
from breccia.bridges.transformer_engine import from_transformer_engine, to_transformer_engine


def x_(m=200, k=256, seed=0, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, k, generator=g).to(dtype)


def bits(t):
    return t.view(torch.uint8) if t.element_size() == 1 else t


def assert_same_st(a, b, *, recipe=True):
    assert a.block == b.block and tuple(a.shape) == tuple(b.shape)
    if recipe:
        assert a.recipe == b.recipe
    for attr in ("qdata", "scale", "global_scale", "zero_point"):
        u, v = getattr(a, attr), getattr(b, attr)
        assert (u is None) == (v is None), attr
        if u is not None:
            assert u.dtype == v.dtype and u.shape == v.shape and torch.equal(bits(u), bits(v)), attr


def swizzle_index(i, j, cols):
    """The brief's (and TE's gemm_swizzled_scale_idx) 128x4 tile swizzle."""
    return ((i // 128) * (cols // 4) + j // 4) * 512 + (i % 32) * 16 + ((i % 128) // 32) * 4 + j % 4


def roundup(a, b):
    return -(-a // b) * b


# --------------------------------------------------------------------------- Float8Tensor


def te_float8_dequantize(d, dtype=torch.float32):
    # Float8TensorStorage's CPU fallback: _data.view(fp8).float() * _scale_inv
    fp8 = {"kFloat8E4M3": torch.float8_e4m3fn, "kFloat8E5M2": torch.float8_e5m2}[d["_fp8_dtype"]]
    return (d["_data"].view(fp8).float() * d["_scale_inv"]).to(dtype)


@pytest.mark.parametrize("recipe", [breccia.DelayedScaling(), breccia.Float8CurrentScaling(fp8_format="e5m2")],
                         ids=["delayed", "current_e5m2"])
def test_float8_tensor_buffers(recipe):
    st = breccia.cast(x_(), recipe)
    d = to_transformer_engine(st, columnwise=True)
    assert d["type"] == "Float8Tensor" and d["_data"].dtype == torch.uint8 and d["shape"] == (200, 256)
    assert d["_scale_inv"].shape == (1,) and d["_scale_inv"].dtype == torch.float32
    assert float(d["_scale_inv"]) == float(st.scale)  # scale_inv is breccia's scale: no reciprocal
    assert d["_data"].data_ptr() == st.qdata.data_ptr()
    assert torch.equal(d["_transpose"], d["_data"].t())
    assert torch.equal(te_float8_dequantize(d), breccia.dequantize(st, torch.float32))
    assert_same_st(from_transformer_engine(d, recipe=recipe), st)
    col = from_transformer_engine({**d, "_data": None}, recipe=recipe)  # from the transpose alone
    assert_same_st(col, st)


# --------------------------------------------------------------------------- MXFP8


def te_mx_dequantize(d, usage="rowwise"):
    fp8 = {"kFloat8E4M3": torch.float8_e4m3fn, "kFloat8E5M2": torch.float8_e5m2}[d["_fp8_dtype"]]
    m, k = d["shape"]
    q = d[f"_{usage}_data"].view(fp8).float()
    s = d[f"_{usage}_scale_inv"]
    out = torch.empty(m, k)
    for i in range(m):
        for jb in range(k // 32 if usage == "rowwise" else k):
            if usage == "rowwise":
                if d["_with_gemm_swizzled_scales"]:
                    e = int(s.reshape(-1)[swizzle_index(i, jb, s.shape[1])])
                else:
                    e = int(s[i, jb])
                out[i, jb * 32:(jb + 1) * 32] = q[i, jb * 32:(jb + 1) * 32] * 2.0 ** (e - 127)
            else:
                out[i, jb] = q[i, jb] * 2.0 ** (int(s[i // 32, jb]) - 127)
    return out


@pytest.mark.parametrize("swizzle", [False, True])
def test_mxfp8_rowwise_padding_and_swizzle(swizzle):
    st = breccia.cast(x_(200, 96, seed=1), breccia.MXFP8BlockScaling())
    d = to_transformer_engine(st, gemm_swizzled=swizzle)
    s = d["_rowwise_scale_inv"]
    assert s.dtype == torch.uint8 and tuple(s.shape) == (roundup(200, 128), roundup(96 // 32, 4))  # (256, 4)
    grid = st.scale.view(torch.uint8)
    if swizzle:
        flat = s.reshape(-1)
        for i in range(256):
            for j in range(4):
                want = int(grid[i, j]) if i < 200 and j < 3 else 0  # zero padding
                assert int(flat[swizzle_index(i, j, 4)]) == want
    else:
        assert torch.equal(s[:200, :3], grid) and int(s[200:].abs().sum()) == 0 and int(s[:, 3:].sum()) == 0
    assert d["_with_gemm_swizzled_scales"] is swizzle and d["_columnwise_data"] is None
    assert torch.equal(te_mx_dequantize(d), breccia.dequantize(st, torch.float32))
    assert_same_st(from_transformer_engine(d), st)


def test_mxfp8_columnwise_from_a_transposed_cast():
    x = x_(64, 160, seed=2)
    row = breccia.cast(x, breccia.MXFP8BlockScaling())
    col = breccia.cast(x.t().contiguous(), breccia.MXFP8BlockScaling()).t()  # blocks of 32 down columns
    assert col.block == (32, 1)
    d = to_transformer_engine(row, columnwise=col)
    assert tuple(d["_columnwise_data"].shape) == (64, 160)  # MXFP8 columnwise data is not transposed
    assert tuple(d["_columnwise_scale_inv"].shape) == (roundup(64 // 32, 4), roundup(160, 128))  # (4, 256)
    assert torch.equal(te_mx_dequantize(d, "columnwise"), breccia.dequantize(col, torch.float32))
    got = from_transformer_engine(d, usage="columnwise")
    assert got.block == (32, 1) and torch.equal(breccia.dequantize(got), breccia.dequantize(col))
    with pytest.raises(ValueError, match="separate quantization"):
        to_transformer_engine(row, columnwise=True)


# --------------------------------------------------------------------------- Float8Blockwise


def te_blockwise_dequantize(d, dtype=torch.float32):
    """Float8BlockwiseQTensorStorage's dequantize (2-D and vectorwise), for dicts."""
    fp8 = {"kFloat8E4M3": torch.float8_e4m3fn, "kFloat8E5M2": torch.float8_e5m2}[d["_fp8_dtype"]]
    rowwise = d["_rowwise_data"] is not None
    q = d["_rowwise_data"] if rowwise else d["_columnwise_data"]
    sinv = d["_rowwise_scale_inv"] if rowwise else d["_columnwise_scale_inv"]
    q_m, q_k = (math.prod(q.shape[:-1]), q.shape[-1]) if rowwise else (q.shape[0], math.prod(q.shape[1:]))
    orig = q.shape
    q = q.reshape(q_m, q_k)
    if d["_is_2D_scaled"]:
        scales = sinv[:, : -(-q_k // 128)]
        mt, kt = scales.shape
        q = torch.nn.functional.pad(q, (0, -q_k % 128, 0, -q_m % 128))
        res = q.reshape(mt, 128, kt, 128).view(fp8).float() * scales.reshape(mt, 1, kt, 1)
        res = res.reshape(q.shape)[:q_m, :q_k]
    else:
        tiled, untiled = sinv.shape
        q = torch.nn.functional.pad(q, (0, -q_k % 128))
        if untiled > q_m:
            sinv = sinv[:, :q_m]
        res = q.reshape(q_m, tiled, 128).view(fp8).float() * sinv.t().reshape(q_m, tiled, 1)
        res = res.reshape(q_m, -1)[:, :q_k]
    res = res.to(dtype).reshape(orig)
    return res if rowwise else res.permute(*range(1, res.dim()), 0)


def test_blockwise_1x128_gemm_ready_scales_are_transposed_and_padded():
    x = x_(130, 300, seed=3)  # partial blocks on both dims
    st = breccia.cast(x, breccia.Float8BlockScaling(), role="input")
    assert st.block == (1, 128)
    d = to_transformer_engine(st)
    s = d["_rowwise_scale_inv"]
    assert tuple(s.shape) == (3, roundup(130, 4)) and d["_data_format"] == "GEMM_READY"  # (ceil(K/128), roundup(M,4))
    assert torch.equal(s[:, :130], st.scale.t()) and int(s[:, 130:].abs().sum()) == 0
    assert torch.equal(te_blockwise_dequantize(d), breccia.dequantize(st, torch.float32))
    assert_same_st(from_transformer_engine(d, role="input"), st)
    c = to_transformer_engine(st, data_format="compact")
    assert tuple(c["_rowwise_scale_inv"].shape) == (130, 3) and c["_data_format"] == "COMPACT"
    assert_same_st(from_transformer_engine(c, role="input"), st)


def test_blockwise_1x128_columnwise_data_is_transposed():
    x = x_(256, 384, seed=4)
    col = breccia.cast(x.t().contiguous(), breccia.Float8BlockScaling(), role="input").t()
    assert col.block == (128, 1)
    d = to_transformer_engine(col)
    assert d["_rowwise_data"] is None and tuple(d["_columnwise_data"].shape) == (384, 256)
    assert tuple(d["_columnwise_scale_inv"].shape) == (2, roundup(384, 4))  # (ceil(M/128), roundup(K,4))
    assert torch.equal(te_blockwise_dequantize(d), breccia.dequantize(col, torch.float32))
    got = from_transformer_engine(d)
    assert got.block == (128, 1) and torch.equal(breccia.dequantize(got), breccia.dequantize(col))
    c = to_transformer_engine(col, data_format="compact")  # compact: columnwise data not transposed
    assert tuple(c["_columnwise_data"].shape) == (256, 384) and tuple(c["_columnwise_scale_inv"].shape) == (2, 384)
    assert torch.equal(breccia.dequantize(from_transformer_engine(c)), breccia.dequantize(col))


def test_blockwise_128x128_and_its_transpose():
    st = breccia.cast(x_(300, 200, seed=5), breccia.Float8BlockScaling())
    d = to_transformer_engine(st, columnwise=True)
    assert d["_is_2D_scaled"] and tuple(d["_rowwise_scale_inv"].shape) == (3, 4)  # (ceil(M/128), roundup(ceil(K/128),4))
    assert tuple(d["_columnwise_scale_inv"].shape) == (2, 4) and tuple(d["_columnwise_data"].shape) == (200, 300)
    ref = breccia.dequantize(st, torch.float32)
    assert torch.equal(te_blockwise_dequantize(d), ref)
    assert torch.equal(te_blockwise_dequantize({**d, "_rowwise_data": None}), ref)
    assert_same_st(from_transformer_engine(d), st)
    assert_same_st(from_transformer_engine(d, usage="columnwise"), st)


# --------------------------------------------------------------------------- NVFP4

_E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])


def te_nvfp4_dequantize(d, usage="rowwise"):
    """dequantize_fp4_kernel: final_scale = float(scale) * amax * (1 / (6 * 448))."""
    data, s = d[f"_{usage}_data"], d[f"_{usage}_scale_inv"]
    amax = d[f"_amax_{usage}"].float().reshape(())
    n, mhalf = data.shape
    codes = torch.stack([data & 0xF, data >> 4], -1).reshape(n, mhalf * 2).long()
    vals = _E2M1[codes]
    factor_inv = torch.tensor(1.0 / (6.0 * 448.0), dtype=torch.float32)
    mread = mhalf * 2 // 16
    if d["_with_gemm_swizzled_scales"]:
        idx = torch.tensor([[swizzle_index(y, x, roundup(mread, 4)) for x in range(mread)] for y in range(n)])
        sc = s.reshape(-1)[idx]
    else:
        sc = s[:n, :mread]
    final = (sc.view(torch.float8_e4m3fn).float() * amax) * factor_inv
    out = vals * final.repeat_interleave(16, dim=1)
    return out if usage == "rowwise" else out.t()


@pytest.mark.parametrize("swizzle", [False, True])
def test_nvfp4_buffers_amax_and_kernel_formula(swizzle):
    st = breccia.cast(x_(144, 80, seed=6), breccia.NVFP4BlockScaling())
    d = to_transformer_engine(st, gemm_swizzled=swizzle)
    assert tuple(d["_rowwise_data"].shape) == (144, 40) and d["_fp4_dtype"] == "kFloat4E2M1"
    assert tuple(d["_rowwise_scale_inv"].shape) == (roundup(144, 128), roundup(80 // 16, 4))  # (256, 8)
    amax = d["_amax_rowwise"]
    assert amax.shape == (1,) and float(amax / (448 * 6)) == float(st.global_scale)  # amax, not a scale
    assert torch.equal(amax, x_(144, 80, seed=6).float().abs().amax().reshape(1))  # it is the tensor's amax
    ref = breccia.dequantize(st, torch.float32)
    te = te_nvfp4_dequantize(d)
    assert bool(((te - ref).abs() <= 2 * torch.finfo(torch.float32).eps * ref.abs()).all())
    assert_same_st(from_transformer_engine(d), st)


def test_nvfp4_columnwise_and_16x16():
    x = x_(64, 96, seed=7)
    st16 = breccia.cast(x, breccia.NVFP4BlockScaling(weight_block=(16, 16)))
    d = to_transformer_engine(st16, columnwise=True)
    assert tuple(d["_columnwise_data"].shape) == (96, 32)  # the transpose, packed along M
    assert tuple(d["_columnwise_scale_inv"].shape) == (roundup(96, 128), roundup(64 // 16, 4))
    ref = breccia.dequantize(st16, torch.float32)
    for usage in ("rowwise", "columnwise"):
        te = te_nvfp4_dequantize(d, usage)
        assert bool(((te - ref).abs() <= 2 * torch.finfo(torch.float32).eps * ref.abs()).all()), usage
    back = from_transformer_engine(d, recipe=st16.recipe)
    assert_same_st(back, st16)
    col = from_transformer_engine(d, usage="columnwise")
    assert col.block == (16, 1) and torch.equal(breccia.dequantize(col, torch.float32), ref)
    # a column-wise ScaledTensor fills the columnwise buffers directly
    again = to_transformer_engine(col)
    assert torch.equal(again["_columnwise_data"], d["_columnwise_data"])
    assert torch.equal(again["_columnwise_scale_inv"], d["_columnwise_scale_inv"])


def test_amax_round_trip_for_many_global_scales():
    g = torch.Generator().manual_seed(0)
    amax = torch.rand(2000, generator=g) * 1000 + 1e-3
    gs = amax / (448.0 * 6.0)
    back = torch.stack([bte.global_scale_from_amax(bte.amax_for_global_scale(v)) for v in gs])
    assert torch.equal(back, gs)


# --------------------------------------------------------------------------- duck typing and errors


class DType(enum.IntEnum):  # mirrors transformer_engine.pytorch.constants.DType
    kFloat8E4M3 = 7
    kFloat8E5M2 = 8
    kFloat4E2M1 = 10


class MXFP8TensorStorage:
    """A stand-in with TE's attribute names (TE itself needs a GPU)."""

    def __init__(self, d):
        for k, v in d.items():
            if k.startswith("_"):
                setattr(self, k, v)
        self._fp8_dtype = DType.kFloat8E4M3
        self._dtype = torch.bfloat16
        self._shape = d["shape"]

    def size(self):
        return torch.Size(self._shape)


def test_reads_te_like_objects_by_attribute():
    st = breccia.cast(x_(128, 64, seed=8), breccia.MXFP8BlockScaling())
    obj = MXFP8TensorStorage(to_transformer_engine(st))
    assert_same_st(from_transformer_engine(obj), st)
    assert from_transformer_engine(obj).orig_dtype == torch.bfloat16


def test_errors():
    with pytest.raises(TypeError, match="obj: expected a TE"):
        from_transformer_engine(torch.randn(4))
    with pytest.raises(TypeError, match="st: expected"):
        to_transformer_engine(torch.randn(4))
    with pytest.raises(ValueError, match="TransformerEngine has no int4"):
        to_transformer_engine(breccia.cast(x_(16, 128), breccia.INT4Scaling()))
    with pytest.raises(ValueError, match="K divisible by 32"):
        to_transformer_engine(breccia.cast(x_(16, 48), breccia.MXFP8BlockScaling()))
    d = to_transformer_engine(breccia.cast(x_(16, 64), breccia.MXFP8BlockScaling()))
    with pytest.raises(ValueError, match="no columnwise data"):
        from_transformer_engine(d, usage="columnwise")
    with pytest.raises(ValueError, match="recipe"):
        from_transformer_engine(d, recipe=breccia.NVFP4BlockScaling())
    with pytest.raises(ValueError, match="data_format"):
        to_transformer_engine(breccia.cast(x_(16, 64), breccia.Float8BlockScaling()), data_format="tiled")


# --------------------------------------------------------------------------- real TE (GPU machines only)


def test_real_transformer_engine_mxfp8_round_trip():
    te = pytest.importorskip(
        "transformer_engine.pytorch",
        reason="TransformerEngine needs a CUDA driver (and its CUDA build) to import; not available here",
    )
    if not torch.cuda.is_available():
        pytest.skip("TransformerEngine tensors live on a CUDA device")
    import transformer_engine_torch as tex
    from transformer_engine.pytorch.tensor.mxfp8_tensor import MXFP8Quantizer

    assert te is not None
    x = x_(256, 512).cuda()
    t = MXFP8Quantizer(tex.DType.kFloat8E4M3, rowwise=True, columnwise=False)(x)
    st = from_transformer_engine(t)
    assert torch.equal(breccia.dequantize(st, torch.float32), t.dequantize(dtype=torch.float32))
