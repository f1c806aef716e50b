"""DLPack / NumPy / JAX / MLX bridge, with the real libraries: zero-copy where
the library allows it, bit-exact round trips, and breccia.cast of their arrays."""

import numpy as np
import pytest
import torch

import breccia
from breccia.bridges.dlpack import from_dlpack, from_jax, from_mlx, from_numpy, to_dlpack, to_jax, to_mlx, to_numpy

ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes is not installed")

RECIPES = {
    "fp8_row": (breccia.Float8CurrentScaling(granularity="row"), "weight"),
    "e5m2_grad": (breccia.DelayedScaling(), "grad_output"),
    "fp8_block": (breccia.Float8BlockScaling(), "weight"),
    "mxfp8": (breccia.MXFP8BlockScaling(), "weight"),
    "nvfp4": (breccia.NVFP4BlockScaling(), "weight"),
    "int4_asym": (breccia.INT4Scaling(symmetric=False, group_size=32), "weight"),
    "int4_fp16": (breccia.INT4Scaling(scale_dtype="fp16", group_size=64), "weight"),
}


def make(name, m=48, k=256, dtype=torch.bfloat16):
    recipe, role = RECIPES[name]
    g = torch.Generator().manual_seed(len(name))
    return breccia.cast(torch.randn(m, k, generator=g).to(dtype), recipe, role)


def bits(t):
    return t.view(torch.uint8) if t.element_size() == 1 else t


def assert_same_st(a, b):
    assert (a.recipe, a.role, a.block, tuple(a.shape), a.orig_dtype, a.qlayout) == (
        b.recipe, b.role, b.block, tuple(b.shape), b.orig_dtype, b.qlayout)
    for attr in ("qdata", "scale", "global_scale", "zero_point"):
        u, v = getattr(a, attr), getattr(b, attr)
        assert (u is None) == (v is None), attr
        if u is not None:
            assert u.dtype == v.dtype and u.shape == v.shape and torch.equal(bits(u), bits(v)), attr


def inner(st):
    return {k: getattr(st, k) for k in ("qdata", "scale", "global_scale", "zero_point") if getattr(st, k) is not None}


# --------------------------------------------------------------------------- NumPy


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_numpy_views_share_memory_and_round_trip(name):
    st = make(name)
    arrays = to_numpy(st)
    for k, t in inner(st).items():
        a = arrays[k]
        assert a.ctypes.data == t.data_ptr(), k  # zero-copy
        if t.dtype.is_floating_point and t.dtype != torch.float8_e8m0fnu:
            assert np.array_equal(a.astype(np.float32), t.float().numpy()), k  # ml_dtypes decodes the same values
    if st.qdata.dtype == torch.float8_e4m3fn:
        assert arrays["qdata"].dtype == ml_dtypes.float8_e4m3fn
    if st.scale.dtype == torch.float8_e8m0fnu:
        assert arrays["scale"].dtype == ml_dtypes.float8_e8m0fnu
        assert np.array_equal(arrays["scale"].astype(np.float32), breccia.formats.decode_e8m0(st.scale).numpy())
    if st.scale.dtype == torch.bfloat16:
        assert arrays["scale"].dtype == ml_dtypes.bfloat16
    back = from_numpy(arrays)
    assert_same_st(back, st)
    assert back.qdata.data_ptr() == st.qdata.data_ptr() and back.scale.data_ptr() == st.scale.data_ptr()


def test_numpy_raw_bits_and_strided_scales():
    st = breccia.layouts.relayout(make("fp8_block", 300, 256), breccia.layouts.ScaleColumnMajor)
    raw = to_numpy(st, typed=False)
    assert raw["qdata"].dtype == np.uint8 and raw["scale"].dtype == np.float32
    assert raw["scale"].ctypes.data == st.scale.data_ptr() and raw["layout"] == "ScaleColumnMajor"
    assert_same_st(from_numpy(raw), st)
    int4 = to_numpy(make("int4_asym"), typed=False)
    assert int4["scale"].dtype == np.uint16 and int4["zero_point"].dtype == np.uint8


def test_dlpack_capsules():
    st = make("nvfp4")
    caps = to_dlpack(st)
    assert type(caps["qdata"]).__name__ == "PyCapsule" and caps["recipe"] == st.recipe.to_json()
    back = from_dlpack(caps["qdata"], caps["scale"], st.recipe, global_scale=caps["global_scale"],
                       shape=caps["shape"], orig_dtype=st.orig_dtype)
    assert_same_st(back, st)
    assert back.qdata.data_ptr() == st.qdata.data_ptr()
    raw = to_dlpack(make("mxfp8"), raw=True)
    assert torch.utils.dlpack.from_dlpack(raw["scale"]).dtype == torch.uint8


# --------------------------------------------------------------------------- JAX


@pytest.mark.parametrize("name", ["fp8_row", "e5m2_grad", "mxfp8", "nvfp4", "int4_asym"])
def test_jax_zero_copy_both_ways(name):
    jax = pytest.importorskip("jax", reason="jax is not installed")
    st = make(name)
    arrays = to_jax(st)
    for k, t in inner(st).items():
        assert arrays[k].unsafe_buffer_pointer() == t.data_ptr(), k
    if st.qdata.dtype == torch.float8_e4m3fn:
        assert arrays["qdata"].dtype == jax.numpy.float8_e4m3fn
    back = from_jax(arrays)
    assert_same_st(back, st)
    assert back.qdata.data_ptr() == st.qdata.data_ptr()


def test_jax_computes_the_same_values():
    jnp = pytest.importorskip("jax.numpy", reason="jax is not installed")
    st = make("fp8_row")
    a = to_jax(st)
    deq = a["qdata"].astype(jnp.float32) * a["scale"]
    assert np.array_equal(np.asarray(deq), breccia.dequantize(st, torch.float32).numpy())


# --------------------------------------------------------------------------- MLX


@pytest.mark.parametrize("name", ["fp8_row", "mxfp8", "nvfp4", "int4_asym", "int4_fp16"])
def test_mlx_round_trip(name):
    mx = pytest.importorskip("mlx.core", reason="mlx is not installed for this platform")
    st = make(name)
    arrays = to_mlx(st)
    assert arrays["qdata"].dtype == mx.uint8
    back = from_mlx(arrays)
    assert_same_st(back, st)
    if name == "fp8_row":  # MLX's own e4m3 decoding reads breccia's payload bytes
        decoded = np.asarray(mx.from_fp8(arrays["qdata"], dtype=mx.float32))
        assert np.array_equal(decoded, st.qdata.float().numpy())


def test_mlx_export_is_zero_copy():
    mx = pytest.importorskip("mlx.core", reason="mlx is not installed for this platform")
    arrays = to_mlx(make("mxfp8"))
    back = from_mlx(arrays)
    # both views of MLX's own buffer: torch reads it in place
    assert back.qdata.data_ptr() == torch.from_dlpack(arrays["qdata"]).data_ptr()
    assert np.from_dlpack(arrays["qdata"]).ctypes.data == back.qdata.data_ptr()
    assert isinstance(arrays["scale"], mx.array)


# --------------------------------------------------------------------------- cast of foreign arrays


def test_cast_accepts_numpy_jax_and_mlx_arrays():
    x = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)
    recipe = breccia.MXFP8BlockScaling()
    want = breccia.cast(torch.from_numpy(x), recipe)
    assert_same_st(breccia.cast(x, recipe), want)
    jnp = pytest.importorskip("jax.numpy", reason="jax is not installed")
    assert_same_st(breccia.cast(jnp.asarray(x), recipe), want)
    want_bf16 = breccia.cast(torch.from_numpy(x).bfloat16(), recipe)
    assert_same_st(breccia.cast(jnp.asarray(x).astype(jnp.bfloat16), recipe), want_bf16)
    mx = pytest.importorskip("mlx.core", reason="mlx is not installed for this platform")
    assert_same_st(breccia.cast(mx.array(x), recipe), want)
    assert_same_st(breccia.cast(mx.array(x).astype(mx.bfloat16), recipe), want_bf16)


def test_errors_name_the_argument():
    st = make("nvfp4")
    with pytest.raises(TypeError, match="payload: expected"):
        from_dlpack(torch.zeros(4, 4), st.scale, st.recipe, global_scale=st.global_scale)
    with pytest.raises(ValueError, match="global_scale"):
        from_dlpack(st.qdata, st.scale, st.recipe)
    with pytest.raises(ValueError, match="do not fit"):
        from_dlpack(st.qdata, st.scale[:4], st.recipe, global_scale=st.global_scale)
    with pytest.raises(TypeError, match="recipe"):
        from_dlpack(st.qdata, st.scale, "NVFP4")
    with pytest.raises(TypeError, match="payload"):
        from_dlpack([1, 2], st.scale, st.recipe, global_scale=st.global_scale)
    with pytest.raises(TypeError, match="st: expected"):
        to_numpy(torch.zeros(3))
