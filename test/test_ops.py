"""The op table: matmuls against the dequantized reference, shape ops against
the same op on dequantized values, copies, errors."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import RECIPES, randn

import breccia
from breccia.kernels import route_for
from breccia.metrics import sqnr_db
from breccia.ops.fallback import FallbackWarning

FOUR_BIT = ("e2m1", "int4")


def deq(t):
    return breccia.dequantize(t, torch.float32) if isinstance(t, breccia.ScaledTensor) else t.float()


def floor_db(*sts):
    """SQNR floors: 25 dB for the FP8 family (18 dB for all-e5m2, 2 mantissa
    bits), 12 dB when a 4-bit operand is involved."""
    if any(s.spec.element in FOUR_BIT for s in sts):
        return 12.0
    return 18.0 if all(s.spec.element == "e5m2" for s in sts) else 25.0


# --------------------------------------------------------------------------- matmul family


def _weight_and_input(recipe, n=48, k=128, m=16, dtype=torch.bfloat16):
    w = randn(n, k, dtype=dtype, seed=1)
    x = randn(m, k, dtype=dtype, seed=2)
    return x, breccia.cast(w, recipe, "weight")


def test_linear_matches_dequantized_reference(recipe):
    x, st = _weight_and_input(recipe)
    bias = randn(48, dtype=torch.bfloat16, seed=3)
    y = F.linear(x, st, bias)
    assert y.dtype == torch.bfloat16 and y.shape == (16, 48) and not isinstance(y, breccia.ScaledTensor)
    ref = F.linear(x.float(), deq(st), bias.float())
    assert sqnr_db(ref, y.float()) > floor_db(st)


def test_linear_nd_input(recipe):
    w = randn(32, 64, seed=4)
    st = breccia.cast(w, recipe)
    x = randn(2, 3, 64, seed=5)
    y = F.linear(x, st)
    assert y.shape == (2, 3, 32)
    assert sqnr_db(F.linear(x, deq(st)), y) > floor_db(st)


def test_mm_addmm_matmul(recipe):
    x, st = _weight_and_input(recipe, dtype=torch.float32)
    ref = x @ deq(st).t()
    for y in (x @ st.t(), torch.mm(x, st.t()), torch.matmul(x, st.t())):
        assert sqnr_db(ref, y) > floor_db(st)
    bias = randn(48, seed=6)
    y = torch.addmm(bias, x, st.t())
    assert sqnr_db(ref + bias, y) > floor_db(st)
    y2 = torch.addmm(bias, x, st.t(), beta=0.5, alpha=2.0)
    assert sqnr_db(2 * ref + 0.5 * bias, y2) > floor_db(st)


def test_both_operands_quantized(recipe):
    if recipe.weight_only:
        pytest.skip("weight-only recipes have no quantized activations")
    x = breccia.cast(randn(16, 128, seed=7), recipe, "input")
    w = breccia.cast(randn(48, 128, seed=8), recipe, "weight")
    y = x @ w.t()
    ref = deq(x) @ deq(w).t()
    assert sqnr_db(ref, y) > 40  # same operands: only accumulation order differs
    assert breccia.matmul(x, w.t()).shape == (16, 48)


def test_bmm(recipe):
    a = randn(3, 8, 64, seed=9)
    b = breccia.cast(randn(3, 64, 32, seed=10).transpose(1, 2).contiguous(), recipe).transpose(1, 2)
    y = torch.bmm(a, b)
    ref = torch.bmm(a, deq(b))
    assert y.shape == (3, 8, 32) and sqnr_db(ref, y) > floor_db(b)


@pytest.mark.parametrize("name", ["fp8_tensor", "fp8_row", "delayed", "fp8_tensor_pow2"])
def test_fp8_tensor_and_row_route_to_scaled_mm(name, monkeypatch):
    recipe = RECIPES[name]
    x = breccia.cast(randn(16, 64), recipe, "input")
    w = breccia.cast(randn(32, 64), recipe, "weight")
    assert route_for(x, w.t()).name == "fp8_scaled_mm"
    calls = []
    real = torch._scaled_mm
    monkeypatch.setattr(torch, "_scaled_mm", lambda *a, **k: calls.append(1) or real(*a, **k))
    F.linear(randn(16, 64), w)
    assert calls


@pytest.mark.parametrize("name", ["fp8_block", "mxfp8", "nvfp4"])
def test_other_recipes_route_to_reference_on_cpu(name):
    r = RECIPES[name]
    x = breccia.cast(randn(16, 64), r, "input")
    w = breccia.cast(randn(32, 64), r, "weight")
    assert route_for(x, w.t()).name == "reference"


def test_matmul_errors():
    w = breccia.cast(randn(32, 64), breccia.Float8CurrentScaling())
    with pytest.raises(ValueError, match="inner dimensions"):
        randn(4, 63) @ w.t()
    with pytest.raises(ValueError, match="different recipes"):
        breccia.cast(randn(4, 64), breccia.MXFP8BlockScaling(), "input") @ w.t()
    with pytest.raises(ValueError, match="different devices"):
        torch.mm(torch.randn(4, 64, device="meta"), w.t())


# --------------------------------------------------------------------------- shape ops

SHAPE_OPS = {
    "t": lambda t: t.t(),
    "transpose": lambda t: t.transpose(0, 1),
    "transpose_twice": lambda t: t.transpose(0, 1).t(),
    "view_3d": lambda t: t.view(2, 32, 256),
    "reshape_flat_rows": lambda t: t.reshape(4, 16, 256).reshape(64, 256),
    "unsqueeze": lambda t: t.unsqueeze(0),
    "unsqueeze_squeeze": lambda t: t.unsqueeze(1).squeeze(1),
    "slice_rows": lambda t: t[:32],
    "slice_rows_tail": lambda t: t[32:40],
    "slice_cols": lambda t: t[:, 128:],
    "slice_cols_partial_end": lambda t: t[:, :200],
    "select_row": lambda t: t[5],
    "select_col": lambda t: t[:, 7],
    "split_rows": lambda t: t.split(16)[1],
    "split_sizes": lambda t: t.split([32, 32])[0],
    "chunk_cols": lambda t: t.chunk(2, dim=1)[1],
    "cat_rows": lambda t: torch.cat([t[:32], t[32:]]),
    "cat_cols": lambda t: torch.cat([t[:, :128], t[:, 128:]], dim=1),
    "clone": lambda t: t.clone(),
    "detach": lambda t: t.detach(),
}


@pytest.mark.parametrize("op", sorted(SHAPE_OPS))
def test_shape_op_commutes_with_dequantize(recipe, op):
    st = breccia.cast(randn(64, 256, seed=11), recipe)
    fn = SHAPE_OPS[op]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        out = fn(st)
    ref = fn(deq(st))
    got = deq(out) if isinstance(out, breccia.ScaledTensor) else out.float()
    assert got.shape == ref.shape
    assert torch.equal(got, ref), op


@pytest.mark.parametrize("op", ["t", "view_3d", "slice_rows", "slice_cols", "select_row", "split_rows", "cat_rows", "unsqueeze"])
def test_block_preserving_shape_ops_stay_scaled(recipe, op):
    st = breccia.cast(randn(64, 256, seed=12), recipe)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        out = SHAPE_OPS[op](st)
    row_block = recipe.spec("weight").block[0]
    spans_rows = row_block not in (1, -1)
    if (op == "view_3d" and spans_rows) or (op in ("split_rows", "cat_rows") and row_block > 16):
        # the op would cut through 16x16 / 128x128 blocks: falls back
        assert not isinstance(out, breccia.ScaledTensor)
        return
    assert isinstance(out, breccia.ScaledTensor), op
    out.check_consistent()


def test_transpose_transposes_block_and_grid():
    st = breccia.cast(randn(256, 128), breccia.Float8BlockScaling(weight_block=(128, 32)))
    tt = st.t()
    assert tt.block == (32, 128) and tt.scale.shape == (4, 2) and tt.shape == (128, 256)
    r = breccia.cast(randn(8, 64), breccia.Float8CurrentScaling(granularity="row")).t()
    assert r.block == (-1, 1) and r.scale.shape == (1, 8)
    n = breccia.cast(randn(8, 64), breccia.NVFP4BlockScaling()).t()  # 4-bit: re-packed along the new last dim
    assert n.qdata.shape == (64, 4) and n.block == (16, 1)


def test_slice_through_a_block_falls_back_with_right_values():
    st = breccia.cast(randn(64, 256), breccia.MXFP8BlockScaling())
    with pytest.warns(FallbackWarning):
        import breccia.ops.fallback as fb

        fb._warned.discard(torch.ops.aten.slice.Tensor)
        out = st[:, 5:40]
    assert not isinstance(out, breccia.ScaledTensor)
    assert torch.equal(out, deq(st)[:, 5:40])


def test_cat_of_tensorwise_with_different_scales_falls_back():
    a = breccia.cast(randn(4, 32), breccia.Float8CurrentScaling())
    b = breccia.cast(randn(4, 32) * 10, breccia.Float8CurrentScaling())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        out = torch.cat([a, b])
    assert not isinstance(out, breccia.ScaledTensor)
    assert torch.equal(out, torch.cat([deq(a), deq(b)]))


# --------------------------------------------------------------------------- copies


def test_copy_into_scaled_tensor(recipe):
    dst = breccia.cast(randn(16, 64, seed=13), recipe)
    src = breccia.cast(randn(16, 64, seed=14), recipe)
    with torch.no_grad():
        dst.copy_(src)
    assert torch.equal(deq(dst), deq(src))
    hp = randn(16, 64, seed=15)
    with torch.no_grad():
        dst.copy_(hp)  # high precision: quantized by the destination's recipe
    assert torch.equal(deq(dst), deq(breccia.cast(hp, recipe)))
    with pytest.raises(ValueError, match="shape"):
        dst.copy_(randn(8, 64))


def test_empty_like_new_zeros_is_same_size_as_strided(recipe):
    st = breccia.cast(randn(16, 64), recipe)
    e = torch.empty_like(st)
    assert isinstance(e, breccia.ScaledTensor) and e.shape == st.shape and e.scale.shape == st.scale.shape
    z = st.new_zeros((16, 64))
    assert isinstance(z, breccia.ScaledTensor) and (deq(z) == 0).all()
    z2 = st.new_zeros((4, 32))
    assert z2.shape == (4, 32) and (deq(z2) == 0).all()
    assert torch.ops.aten.is_same_size(st, e) and not torch.ops.aten.is_same_size(st, z2)
    a = torch.as_strided(st, st.shape, st.stride())
    assert isinstance(a, breccia.ScaledTensor) and torch.equal(deq(a), deq(st))
