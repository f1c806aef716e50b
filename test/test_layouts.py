"""Layouts: relayout is lossless, ScaleColumnMajor is TMA-aligned column-major,
Swizzled is the cuBLAS/CUTLASS 128x4 swizzle (checked against an explicit
index formula and against torchao), and bad input is refused by name."""

import pytest
import torch
from conftest import RECIPES, randn

import breccia
from breccia.layouts import (
    Layout,
    Packed,
    Plain,
    ScaleColumnMajor,
    Swizzled,
    relayout,
    swizzle_scales,
    unswizzle_scales,
)
from breccia.quantize import dequantize_reference

# ragged on purpose: rows not a multiple of 128, K not a multiple of the
# 4-column tile (in scales), partial blocks, a 3-D tensor
SHAPES = [(300, 200), (128, 128), (33, 48), (1, 16), (2, 70, 96), (257, 1000)]


def _bytes(t):
    # a fresh copy: .contiguous() keeps odd strides on size-1 dims, which
    # .view(torch.uint8) refuses
    flat = torch.empty(t.numel(), dtype=t.dtype, device=t.device)
    flat.copy_(t.reshape(-1))
    return flat.view(torch.uint8)


def assert_same(a, b, what=""):
    """Bit-identical inner tensors, including shape, dtype and strides."""
    assert (a is None) == (b is None), what
    if a is None:
        return
    assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride(), what
    assert torch.equal(_bytes(a), _bytes(b)), what


def assert_same_st(a, b):
    assert a.qlayout is b.qlayout
    assert (a.recipe, a.role, a.block, tuple(a.shape), a.orig_dtype) == (
        b.recipe,
        b.role,
        b.block,
        tuple(b.shape),
        b.orig_dtype,
    )
    for k in ("qdata", "scale", "global_scale", "zero_point"):
        assert_same(getattr(a, k), getattr(b, k), k)


def layouts_for(st):
    """The layouts a tensor's format can take (DESIGN.md section 3)."""
    if st.dim() < 2:
        return [Plain]
    fmt = st.spec.scale_format
    if fmt == "fp32":
        return [Plain, ScaleColumnMajor]
    if fmt in ("e8m0", "e4m3"):
        return [Plain, Swizzled]
    return [Plain]


def roles(recipe):
    return ["weight"] if recipe.weight_only else ["weight", "input"]


def cases():
    for name in sorted(RECIPES):
        for role in roles(RECIPES[name]):
            for shape in SHAPES:
                yield pytest.param(name, role, shape, id=f"{name}-{role}-{'x'.join(map(str, shape))}")


def make(name, role, shape, seed=0):
    return breccia.cast(randn(*shape, seed=seed, dtype=torch.bfloat16), RECIPES[name], role)


def round_up(n, m):
    return (n + m - 1) // m * m


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name,role,shape", list(cases()))
def test_round_trips_are_bit_exact(name, role, shape):
    st = make(name, role, shape)
    supported = layouts_for(st)
    assert len(supported) >= 2 or st.spec.scale_format in ("bf16", "fp16")
    for x in supported:
        sx = relayout(st, x)
        assert sx.qlayout is x
        assert relayout(sx, x) is sx
        # Plain -> X -> Plain gives the original bits
        assert_same_st(relayout(sx, Plain), st)
        # X -> Y -> X gives X's bits, storage padding included
        for y in supported:
            assert_same_st(relayout(relayout(sx, y), x), sx)
        # the payload and the second-level tensors are never touched
        assert sx.qdata is st.qdata
        assert sx.global_scale is st.global_scale and sx.zero_point is st.zero_point
    # relayout to the current layout is the identity
    assert relayout(st, Plain) is st


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_unsupported_layouts_raise(name):
    st = make(name, "weight", (64, 128))
    # Packed (4-bit weights, payload moved): its own tests in test_w4a16.py
    for layout in set(Layout) - set(layouts_for(st)) - {Packed}:
        with pytest.raises(ValueError, match="layout"):
            relayout(st, layout)


def test_one_dim_tensors_take_only_plain():
    for name, layout in [
        ("fp8_tensor", ScaleColumnMajor),
        ("fp8_block", ScaleColumnMajor),
        ("mxfp8", Swizzled),
        ("nvfp4", Swizzled),
    ]:
        st = breccia.cast(randn(256), RECIPES[name], "input")
        with pytest.raises(ValueError, match="layout: .* cannot take .* at least 2 dims"):
            relayout(st, layout)


def test_empty_tensors_round_trip():
    for name, shape in [("mxfp8", (0, 64)), ("nvfp4", (0, 32)), ("fp8_block", (0, 256)), ("fp8_row", (5, 0))]:
        st = breccia.cast(torch.zeros(shape), RECIPES[name], "input")
        for x in layouts_for(st):
            assert_same_st(relayout(relayout(st, x), Plain), st)


# --------------------------------------------------------------------------- ScaleColumnMajor


@pytest.mark.parametrize("name", ["delayed", "fp8_tensor", "fp8_row", "fp8_block", "fp8_block_pow2"])
@pytest.mark.parametrize("role", ["weight", "input"])
@pytest.mark.parametrize("shape", SHAPES)
def test_scale_column_major_is_aligned_outer_dim_major(name, role, shape):
    st = make(name, role, shape)
    cm = relayout(st, ScaleColumnMajor)
    s = cm.scale
    *lead, g0, g1 = st.scale.shape
    g0_pad = round_up(g0, 4)
    # logical grid unchanged, only strides differ
    assert s.shape == st.scale.shape and s.dtype == torch.float32
    assert torch.equal(s, st.scale)
    assert s.stride()[-2:] == (1, g0_pad)
    if lead:
        assert s.stride()[-3] == g1 * g0_pad
    # every column starts on a 16-byte boundary (TMA)
    assert s.data_ptr() % 16 == 0 and (g0_pad * s.element_size()) % 16 == 0
    # the padded storage (..., G1, G0_pad) holds the transposed grid and zeros
    storage = torch.as_strided(s, (*lead, g1, g0_pad), (*s.stride()[:-2], g0_pad, 1), s.storage_offset())
    assert torch.equal(storage[..., :g0], st.scale.transpose(-1, -2))
    assert (storage[..., g0:] == 0).all()
    # the strided scale means the same values: the reference dequantizer fed
    # it directly, and breccia.dequantize after relayout to Plain, agree
    spec = st.spec
    want = breccia.dequantize(st, torch.float32)
    got = dequantize_reference(
        cm.qdata, s, cm.global_scale, cm.zero_point, spec, cm.block, cm.shape, torch.float32
    )
    assert torch.equal(got, want)
    assert torch.equal(breccia.dequantize(relayout(cm, Plain), torch.float32), want)


def test_scale_column_major_matches_deepgemm_activation_scales():
    """What torch._scaled_mm blockwise / DeepGEMM take for a (M, K) 1x128
    activation: a (M, K/128) fp32 grid whose transpose is contiguous, M padded
    to 4."""
    st = breccia.cast(randn(250, 512), breccia.Float8BlockScaling(), "input")
    s = relayout(st, ScaleColumnMajor).scale
    assert s.shape == (250, 4) and s.stride() == (1, 252)
    assert s.t().stride() == (252, 1)  # rows of the transpose 16-byte aligned
    # with M a multiple of 4 there is no padding: the transpose is contiguous
    s = relayout(breccia.cast(randn(256, 512), breccia.Float8BlockScaling(), "input"), ScaleColumnMajor).scale
    assert s.t().is_contiguous()


@pytest.mark.parametrize("shape", [(300, 200), (2, 70, 96)])
def test_dequantize_takes_non_plain_layouts(shape):
    """Once breccia.dequantize relayouts itself, every layout dequantizes to
    the Plain values."""
    for name in ("fp8_block", "mxfp8", "nvfp4"):
        st = make(name, "weight", shape)
        want = breccia.dequantize(st, torch.float32)
        for layout in layouts_for(st)[1:]:
            try:
                got = breccia.dequantize(relayout(st, layout), torch.float32)
            except NotImplementedError:
                pytest.skip("breccia.dequantize does not take non-Plain layouts yet")
            assert torch.equal(got, want)


# --------------------------------------------------------------------------- Swizzled


def swizzle_index(i, j, cols_pad):
    return ((i // 128) * (cols_pad // 4) + j // 4) * 512 + (i % 32) * 16 + ((i % 128) // 32) * 4 + j % 4


@pytest.mark.parametrize("rows,cols", [(1, 1), (130, 6), (256, 8), (40, 3)])
def test_swizzle_index_formula_element_by_element(rows, cols):
    grid = torch.arange(1, rows * cols + 1, dtype=torch.int32).reshape(rows, cols)
    flat = swizzle_scales(grid)
    rows_pad, cols_pad = round_up(rows, 128), round_up(cols, 4)
    assert flat.shape == (rows_pad * cols_pad,) and flat.dtype == torch.int32
    got = flat.tolist()
    g = grid.tolist()
    seen = set()
    for i in range(rows_pad):
        for j in range(cols_pad):
            k = swizzle_index(i, j, cols_pad)
            seen.add(k)
            assert got[k] == (g[i][j] if i < rows and j < cols else 0), (i, j)
    assert seen == set(range(rows_pad * cols_pad))  # a permutation
    assert torch.equal(unswizzle_scales(flat, rows, cols), grid)


@pytest.mark.parametrize("dtype", [torch.float8_e8m0fnu, torch.float8_e4m3fn, torch.uint8, torch.float32])
def test_swizzle_pads_with_zero_bytes_in_every_dtype(dtype):
    grid = torch.randint(1, 255, (5, 3), dtype=torch.uint8)
    if dtype == torch.float32:
        grid = grid.to(torch.float32)
    else:
        grid = grid.view(dtype)
    flat = swizzle_scales(grid)
    assert flat.dtype == dtype and flat.numel() == 128 * 4
    assert int((_bytes(flat) != 0).sum()) == 15 * grid.element_size() or dtype == torch.float32
    assert_same(unswizzle_scales(flat, 5, 3), grid)


def test_swizzle_of_a_non_contiguous_grid():
    grid = torch.randint(0, 255, (7, 260), dtype=torch.uint8).t()  # (260, 7), strided
    assert torch.equal(unswizzle_scales(swizzle_scales(grid), 260, 7), grid)
    assert torch.equal(swizzle_scales(grid), swizzle_scales(grid.contiguous()))


@pytest.mark.parametrize(
    "name,role,shape",
    [p for p in cases() if p.values[0].startswith(("mxfp8", "nvfp4"))],
)
def test_swizzled_scale_shape_and_padding(name, role, shape):
    st = make(name, role, shape)
    sw = relayout(st, Swizzled)
    *lead, c = st.scale.shape
    r = 1
    for d in lead:
        r *= d
    rows_pad, cols_pad = round_up(r, 128), round_up(c, 4)
    assert sw.scale.shape == (rows_pad * cols_pad,) and sw.scale.dtype == st.scale.dtype
    # exactly the padding bytes are zero-filled: unswizzle the padded grid
    padded = unswizzle_scales(sw.scale, rows_pad, cols_pad).view(torch.uint8)
    assert torch.equal(padded[:r, :c], st.scale.reshape(r, c).view(torch.uint8))
    assert (padded[r:] == 0).all() and (padded[:, c:] == 0).all()


# --------------------------------------------------------------------------- vs torchao


def _torchao_utils():
    pytest.importorskip("torchao")
    from torchao.prototype.mx_formats import utils

    return utils


@pytest.mark.parametrize("name", ["mxfp8", "mxfp8_e5m2", "nvfp4", "nvfp4_16x16"])
@pytest.mark.parametrize("shape", SHAPES)
def test_swizzled_agrees_with_torchao_to_blocked(name, shape):
    utils = _torchao_utils()
    st = make(name, "weight", shape)
    sw = relayout(st, Swizzled)
    grid2d = st.scale.reshape(-1, st.scale.shape[-1])
    ref = utils.to_blocked(grid2d.view(torch.uint8))
    assert torch.equal(_bytes(sw.scale), _bytes(ref))
    # torchao's to_blocked on the typed grid too (what its MXTensor does)
    assert torch.equal(_bytes(sw.scale), _bytes(utils.to_blocked(grid2d)))
    if hasattr(utils, "from_blocked"):
        back = utils.from_blocked(sw.scale.view(torch.uint8), *grid2d.shape)
        assert torch.equal(back, grid2d.view(torch.uint8))


@pytest.mark.parametrize("shape", [(256, 128), (300, 192), (2, 128, 64)])
def test_swizzled_matches_torchao_quantizers_with_swizzled_scales(shape):
    """End to end: torchao's own MX / NVFP4 tensors made with
    ``is_swizzled_scales=True`` hold the same bytes as our Swizzled scales."""
    pytest.importorskip("torchao")
    from torchao.prototype.mx_formats.mx_tensor import to_mx
    from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale

    x = randn(*shape, seed=3)
    mx = relayout(breccia.cast(x, breccia.MXFP8BlockScaling()), Swizzled)
    scale_ref, _ = to_mx(x, torch.float8_e4m3fn, 32, is_swizzled_scales=True)
    assert torch.equal(_bytes(mx.scale), _bytes(scale_ref))

    nv = relayout(breccia.cast(x, breccia.NVFP4BlockScaling()), Swizzled)
    pts = per_tensor_amax_to_scale(x.abs().amax())
    ref = NVFP4Tensor.to_nvfp4(x, per_tensor_scale=pts, is_swizzled_scales=True)
    assert torch.equal(_bytes(nv.scale), _bytes(ref.scale))


# --------------------------------------------------------------------------- devices and compile


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_relayout_on_cuda_matches_cpu():
    for name in ("fp8_block", "mxfp8", "nvfp4"):
        st = make(name, "input", (300, 200))
        gpu = st.to("cuda")
        for layout in layouts_for(st):
            a, b = relayout(st, layout), relayout(gpu, layout)
            assert b.scale.device.type == "cuda" and a.scale.stride() == b.scale.stride()
            assert torch.equal(_bytes(a.scale), _bytes(b.scale.cpu()))
            assert_same_st(relayout(b, Plain).to("cpu"), st)


# --------------------------------------------------------------------------- errors


def test_bad_inputs_raise_naming_the_argument():
    st = breccia.cast(randn(64, 64), breccia.MXFP8BlockScaling())
    with pytest.raises(TypeError, match="st: expected a ScaledTensor, got Tensor"):
        relayout(torch.randn(64, 64), Swizzled)
    with pytest.raises(TypeError, match="layout: expected a breccia layout"):
        relayout(st, "Swizzled")
    with pytest.raises(TypeError, match="layout"):
        relayout(st, None)
    with pytest.raises(ValueError, match="layout: MXFP8BlockScaling .* cannot take ScaleColumnMajor"):
        relayout(st, ScaleColumnMajor)
    fp8 = breccia.cast(randn(64, 64), breccia.Float8CurrentScaling())
    with pytest.raises(ValueError, match="layout: Float8CurrentScaling .* cannot take Swizzled.*fp32"):
        relayout(fp8, Swizzled)
    i4 = breccia.cast(randn(64, 256), breccia.INT4Scaling())
    for layout in (ScaleColumnMajor, Swizzled):
        with pytest.raises(ValueError, match="layout: INT4Scaling .*bf16"):
            relayout(i4, layout)
    # a tensor whose scale does not fit its context
    broken = st.with_inner(scale=st.scale[:, :1])
    with pytest.raises(ValueError, match="st: a Plain scale grid"):
        relayout(broken, Swizzled)
    sw = relayout(st, Swizzled)
    with pytest.raises(ValueError, match="flat: expected a 1-D swizzled grid"):
        relayout(sw.with_inner(scale=sw.scale[:-1]), Plain)


def test_helpers_reject_bad_input():
    with pytest.raises(ValueError, match="grid: expected a 2-D"):
        swizzle_scales(torch.zeros(8, dtype=torch.uint8))
    with pytest.raises(TypeError, match="grid: expected a torch.Tensor"):
        swizzle_scales([[1, 2]])
    flat = swizzle_scales(torch.zeros(3, 5, dtype=torch.uint8))
    msg = "flat: expected a 1-D swizzled grid of 128 \\* 12 = 1536 elements for a \\(3, 9\\) grid"
    with pytest.raises(ValueError, match=msg):
        unswizzle_scales(flat, 3, 9)
    with pytest.raises(ValueError, match="flat"):
        unswizzle_scales(flat.reshape(128, 8), 3, 5)
    with pytest.raises(ValueError, match="rows: expected a non-negative int"):
        unswizzle_scales(flat, -1, 5)
    with pytest.raises(ValueError, match="cols"):
        unswizzle_scales(flat, 3, 5.0)


def test_layout_names():
    assert breccia.layouts.ScaleColumnMajor is Layout("ScaleColumnMajor")
    assert breccia.layouts.Swizzled is Layout("Swizzled")
    assert breccia.layouts.Plain is breccia.Plain
    assert repr(Swizzled) == "Swizzled" and str(ScaleColumnMajor) == "ScaleColumnMajor"
    assert breccia.layouts.Packed is breccia.Packed is Layout("Packed")  # the W4A16 kernels' layout
    assert [m.value for m in Layout] == ["Plain", "ScaleColumnMajor", "Swizzled", "Packed"]
    assert breccia.layouts.layout_from_name("Swizzled") is Swizzled
    with pytest.raises(ValueError, match="layout: expected one of"):
        breccia.layouts.layout_from_name("Tiled")
