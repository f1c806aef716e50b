"""ScaledTensor as a torch.Tensor: facts, repr, copies, fallback, errors, DLPack."""

import warnings

import expecttest
import numpy as np
import pytest
import torch
from conftest import randn

import breccia
from breccia.ops.fallback import FallbackWarning


def test_is_a_tensor_with_logical_shape_and_dtype(recipe):
    x = randn(16, 64, dtype=torch.bfloat16)
    st = breccia.cast(x, recipe)
    assert isinstance(st, breccia.ScaledTensor) and isinstance(st, torch.Tensor)
    assert st.shape == x.shape and st.dtype == torch.bfloat16 and st.device == x.device
    assert not st.requires_grad
    st.check_consistent()


def test_true_packed_bytes():
    x = randn(256, 256)
    assert breccia.cast(x, breccia.Float8CurrentScaling()).nbytes_packed() == 256 * 256 + 4
    nv = breccia.cast(x, breccia.NVFP4BlockScaling())
    assert nv.nbytes_packed() == 256 * 256 // 2 + 256 * 16 + 4
    assert 4.5 <= nv.bits_per_element() < 4.51
    assert breccia.cast(x, breccia.INT4Scaling()).bits_per_element() == 4.125


class TestRepr(expecttest.TestCase):
    def test_repr(self):
        st = breccia.cast(randn(4, 64, dtype=torch.bfloat16), breccia.MXFP8BlockScaling())
        self.assertExpectedInline(
            repr(st),
            """ScaledTensor(shape=(4, 64), dtype=torch.bfloat16, recipe=MXFP8BlockScaling(fp8_format='e4m3', scale_rule='floor', block_size=32), role='weight', element=e4m3, scale=e8m0[4, 2], block=(1, 32), layout=Plain)""",
        )
        nv = breccia.cast(randn(4, 32), breccia.NVFP4BlockScaling(), "input")
        self.assertExpectedInline(
            repr(nv),
            """ScaledTensor(shape=(4, 32), dtype=torch.float32, recipe=NVFP4BlockScaling(weight_block=(1, 16), stochastic_rounding=False), role='input', element=e2m1, scale=e4m3[4, 2], block=(1, 16), global_scale=fp32, layout=Plain)""",
        )


def test_detach_clone_to_keep_payload(recipe):
    st = breccia.cast(randn(8, 64), recipe)
    for out in (st.detach(), st.clone(), st.to("cpu"), torch.Tensor.to(st, torch.device("cpu"), copy=True)):
        assert isinstance(out, breccia.ScaledTensor)
        assert torch.equal(out.qdata.view(torch.uint8), st.qdata.view(torch.uint8))
        assert torch.equal(breccia.dequantize(out), breccia.dequantize(st))
    c = st.clone()
    assert c.qdata.data_ptr() != st.qdata.data_ptr()


def test_to_dtype_changes_only_the_outer_dtype(recipe):
    st = breccia.cast(randn(8, 64), recipe)
    b = st.to(torch.bfloat16)
    assert isinstance(b, breccia.ScaledTensor) and b.dtype == torch.bfloat16
    assert torch.equal(b.qdata.view(torch.uint8), st.qdata.view(torch.uint8))
    assert torch.equal(breccia.dequantize(b), breccia.dequantize(st).to(torch.bfloat16))


def test_flatten_unflatten_round_trip(recipe):
    st = breccia.cast(randn(8, 64), recipe)
    names, ctx = st.__tensor_flatten__()
    back = breccia.ScaledTensor.__tensor_unflatten__({n: getattr(st, n) for n in names}, ctx, st.shape, st.stride())
    assert torch.equal(breccia.dequantize(back), breccia.dequantize(st))
    assert back.recipe == st.recipe and back.block == st.block


def test_fallback_dequantizes_and_warns_once():
    import breccia.ops.fallback as fb

    st = breccia.cast(randn(8, 64), breccia.Float8CurrentScaling())
    fb._warned.discard(torch.ops.aten.sin.default)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        a = torch.sin(st)
        b = torch.sin(st)
    assert sum(issubclass(x.category, FallbackWarning) for x in w) == 1
    assert not isinstance(a, breccia.ScaledTensor)
    assert torch.equal(a, torch.sin(breccia.dequantize(st))) and torch.equal(a, b)


def test_in_place_ops_raise():
    st = breccia.cast(randn(8, 64), breccia.Float8CurrentScaling())
    with pytest.raises(RuntimeError, match="in-place"):
        st.mul_(2)
    with pytest.raises(RuntimeError, match="in-place"):
        st.zero_()


def test_requantize(recipe):
    x = randn(16, 128)
    st = breccia.cast(x, breccia.Float8CurrentScaling())
    rq = breccia.requantize(st, recipe)
    assert rq.recipe == recipe and rq.dtype == st.dtype
    ref = breccia.cast(breccia.dequantize(st, torch.float32), recipe)
    assert torch.equal(rq.qdata.view(torch.uint8), ref.qdata.view(torch.uint8))


def test_cast_accepts_numpy_through_dlpack():
    a = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    st = breccia.cast(a, breccia.Float8CurrentScaling(granularity="row"))
    ref = breccia.cast(torch.from_numpy(a), breccia.Float8CurrentScaling(granularity="row"))
    assert torch.equal(st.qdata.view(torch.uint8), ref.qdata.view(torch.uint8))
    st64 = breccia.cast(a.astype(np.float64), breccia.MXFP8BlockScaling())
    assert st64.dtype == torch.float32


@pytest.mark.parametrize(
    "x, recipe, kwargs, exc, match",
    [
        (torch.ones(4, 32, dtype=torch.int32), breccia.Float8CurrentScaling(), {}, TypeError, "floating-point"),
        (torch.ones(4, 32, dtype=torch.bool), breccia.Float8CurrentScaling(), {}, TypeError, "floating-point"),
        (torch.ones(4, 32).to(torch.float8_e4m3fn), breccia.Float8CurrentScaling(), {}, TypeError, "float8_e4m3fn"),
        (torch.tensor(1.0), breccia.Float8CurrentScaling(), {}, ValueError, "0-d"),
        (torch.ones(4, 32), "fp8", {}, TypeError, "recipe"),
        (torch.ones(4, 32), breccia.Float8CurrentScaling, {}, TypeError, "recipe"),
        ([1.0, 2.0], breccia.Float8CurrentScaling(), {}, TypeError, "x: expected a torch.Tensor"),
        (torch.ones(4, 32), breccia.Float8CurrentScaling(), {"role": "bias"}, ValueError, "role"),
        (torch.ones(4, 32), breccia.INT4Scaling(), {"role": "input"}, ValueError, "weight-only"),
    ],
)
def test_bad_input_errors_name_the_argument(x, recipe, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        breccia.cast(x, recipe, **kwargs)


def test_dequantize_bad_input():
    with pytest.raises(TypeError, match="st"):
        breccia.dequantize(torch.ones(3))
    st = breccia.cast(randn(4, 32), breccia.Float8CurrentScaling())
    with pytest.raises(TypeError, match="dtype"):
        breccia.dequantize(st, torch.int8)
    with pytest.raises(TypeError, match="requantize"):
        breccia.cast(st, breccia.Float8CurrentScaling())
