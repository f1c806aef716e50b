"""4-bit weight-only kernels: the Packed layout, the Triton W4A16 GEMM (run on
the CPU by Triton's interpreter, small ragged shapes), the routes (on a
mocked GPU) and convert's layout choice."""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before any kernel module is imported

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from conftest import randn  # noqa: E402

import breccia  # noqa: E402
from breccia import formats, packing  # noqa: E402
from breccia.kernels import cuda_routes, route_for, w4a16_routes  # noqa: E402
from breccia.layouts import unswizzle_scales  # noqa: E402

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from breccia.kernels.triton import w4a16  # noqa: E402
from breccia.kernels.triton.w4a16 import Config, _bits16, w4a16_mm  # noqa: E402

INT4 = breccia.INT4Scaling(group_size=32)
INT4_ASYM = breccia.INT4Scaling(group_size=64, symmetric=False)
INT4_G16_FP16 = breccia.INT4Scaling(group_size=16, scale_dtype="fp16")
INT4_G128 = breccia.INT4Scaling(group_size=128)
NVFP4 = breccia.NVFP4BlockScaling()
WEIGHT_RECIPES = {"int4_g32": INT4, "int4_asym_g64": INT4_ASYM, "int4_g16_fp16": INT4_G16_FP16, "int4_g128": INT4_G128, "nvfp4": NVFP4}

#: (M, N, K): ragged in every dim (N not a multiple of 16, K of 32), and whole tiles
SHAPES = [(1, 40, 96), (3, 24, 160), (17, 64, 256)]


def rel_err(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def same_bits(a, b):
    return torch.equal(a.view(torch.uint8), b.view(torch.uint8)) if a.element_size() == 1 else torch.equal(a, b)


@pytest.fixture
def gpu(monkeypatch):
    """Pretend the CPU is an H100 (sm90): the router then picks the GPU routes,
    whose Triton kernels run under the interpreter."""
    monkeypatch.setattr(cuda_routes, "capability", lambda device: (9, 0))
    monkeypatch.setattr(w4a16_routes, "capability", lambda device: (9, 0))


# --------------------------------------------------------------------------- Packed layout


def test_pack_codes_order():
    codes = torch.randint(0, 16, (37, 70), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    p = packing.pack_codes(codes)
    assert p.shape == packing.packed_shape(37, 70) == (3, 3, 16, 16)
    for n, c, j in [(0, 0, 0), (5, 1, 7), (36, 2, 5), (17, 0, 15)]:
        byte = int(p[n // 16, c, n % 16, j])
        assert byte & 0xF == int(codes[n, 32 * c + j])  # low nibble: code 32c + j
        k_hi = 32 * c + 16 + j
        assert byte >> 4 == (int(codes[n, k_hi]) if k_hi < 70 else 0)  # high: 32c + 16 + j
    assert int(p[2, :, 5:].max()) == 0  # padding rows are zero codes
    assert torch.equal(packing.unpack_codes(p, 37, 70), codes)


@pytest.mark.parametrize("name", sorted(WEIGHT_RECIPES))
@pytest.mark.parametrize("shape", [(40, 96), (7, 50), (64, 256)])
def test_packed_relayout_is_lossless(name, shape):
    recipe = WEIGHT_RECIPES[name]
    st = breccia.cast(randn(*shape, dtype=torch.bfloat16), recipe, "weight")
    p = breccia.relayout(st, breccia.Packed)
    assert p.qlayout is breccia.Packed and p.qdata.shape == packing.packed_shape(*shape)
    back = breccia.relayout(p, breccia.Plain)
    assert back.qlayout is breccia.Plain
    assert torch.equal(back.qdata, st.qdata) and same_bits(back.scale, st.scale)
    if st.zero_point is not None:
        assert torch.equal(back.zero_point, st.zero_point)
    assert torch.equal(breccia.dequantize(p, torch.float32), breccia.dequantize(st, torch.float32))


@pytest.mark.parametrize("name", ["int4_asym_g64", "nvfp4"])
def test_packed_transpose_is_metadata_only(name):
    st = breccia.cast(randn(40, 96, dtype=torch.bfloat16), WEIGHT_RECIPES[name], "weight")
    p = breccia.relayout(st, breccia.Packed)
    pt = p.t()
    assert pt.qlayout is breccia.Packed and tuple(pt.shape) == (96, 40) and pt.block[1] == 1
    assert pt.qdata.data_ptr() == p.qdata.data_ptr()  # no pass over the payload
    assert tuple(pt.scale.shape) == tuple(st.t().scale.shape)  # the logical (K/g, N) grid
    assert torch.equal(breccia.dequantize(pt, torch.float32), breccia.dequantize(st, torch.float32).t())
    # a transposed Plain weight packs too, and comes back bit-identical
    tp = breccia.relayout(st.t(), breccia.Packed)
    assert torch.equal(tp.qdata, p.qdata)
    assert torch.equal(breccia.relayout(tp, breccia.Plain).qdata, st.t().qdata)
    assert torch.equal(pt.t().qdata, p.qdata) and pt.t().block == p.block


def test_packed_refuses_what_it_cannot_hold():
    with pytest.raises(ValueError, match="4-bit"):
        breccia.relayout(breccia.cast(randn(32, 64), breccia.Float8CurrentScaling()), breccia.Packed)
    with pytest.raises(ValueError, match="block"):
        breccia.relayout(breccia.cast(randn(32, 64), breccia.NVFP4BlockScaling(weight_block=(16, 16))), breccia.Packed)
    with pytest.raises(ValueError, match="2-D"):
        breccia.relayout(breccia.cast(randn(2, 32, 64), INT4), breccia.Packed)


# --------------------------------------------------------------------------- the kernel


@triton.jit
def _bits_kernel(b_ptr, lo_ptr, hi_ptr, KIND: tl.constexpr, DT: tl.constexpr):
    i = tl.arange(0, 256)
    b = tl.load(b_ptr + i)
    lo, _ = _bits16(b, False, KIND, DT)
    hi, _ = _bits16(b, True, KIND, DT)
    tl.store(lo_ptr + i, lo)
    tl.store(hi_ptr + i, hi)


@pytest.mark.parametrize(
    "kind,dtype", [(0, torch.bfloat16), (0, torch.float16), (1, torch.bfloat16), (1, torch.float16), (2, torch.bfloat16)]
)
def test_gpu_decode_bits(kind, dtype):
    """The 16-bit patterns the GPU's decode starts from (integer ops, so the
    interpreter runs them): every byte's two nibbles."""
    b = torch.arange(256, dtype=torch.uint8)
    lo, hi = torch.empty(256, dtype=torch.int16), torch.empty(256, dtype=torch.int16)
    _bits_kernel[(1,)](b, lo, hi, kind, tl.bfloat16 if dtype == torch.bfloat16 else tl.float16)
    lv, hv = lo.view(dtype).float(), hi.view(dtype).float()
    cl, ch = (b & 15).long(), (b >> 4).long()
    if kind == 2:  # e2m1 value * 2**-126, code 1 a bf16 subnormal
        want_lo = formats.decode_e2m1(cl) * 2.0**-126
        want_hi = formats.decode_e2m1(ch) * 2.0**-126
    else:  # 2**7 / 2**10 + unit * (code, sign bit flipped when symmetric)
        base, unit_hi = (128, 1) if dtype == torch.bfloat16 else (1024, 16)
        f = (lambda c: c ^ 8) if kind == 0 else (lambda c: c)
        want_lo, want_hi = (base + f(cl)).float(), (base + unit_hi * f(ch)).float()
    assert torch.equal(lv, want_lo) and torch.equal(hv, want_hi)


def _decoded(st, dtype):
    """The weight the kernel multiplies by: dequantize(st, dtype) for INT4,
    decode(q) * block_scale for NVFP4 (the global scale comes last)."""
    if st.spec.element == "e2m1":
        v = formats.decode_e2m1(formats.unpack_nibbles(st.qdata, st.shape[1]))
        return v * st.scale.float().repeat_interleave(16, dim=1)[:, : st.shape[1]]
    return breccia.dequantize(st, dtype).float()


@pytest.mark.parametrize("name", sorted(WEIGHT_RECIPES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernel_unpack_is_bit_exact(name, dtype):
    """An identity activation makes the kernel write the weight it decoded."""
    n, k = 40, 96
    st = breccia.cast(randn(n, k, dtype=dtype, seed=3, scale=0.1), WEIGHT_RECIPES[name], "weight")
    op = packing.packed_operands(breccia.relayout(st, breccia.Packed))
    gs = torch.ones(()) if op.global_scale is not None else None
    out = w4a16_mm(torch.eye(k, dtype=dtype), op.qdata, op.scale, op.zero_point, gs, None, op.kind, op.group, n, k, torch.float32)
    assert torch.equal(out.t(), _decoded(st, dtype))


CONFIGS = [Config(16, 1, 1, 4, 2), Config(32, 2, 2, 4, 2), Config(16, 2, 3, 4, 2), Config(64, 4, 1, 4, 2)]


@pytest.mark.parametrize("name", ["int4_g32", "int4_asym_g64", "nvfp4"])
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_kernel_gemm_matches_dequantize_then_matmul(name, m, n, k):
    st = breccia.cast(randn(n, k, dtype=torch.bfloat16, seed=1), WEIGHT_RECIPES[name], "weight")
    op = packing.packed_operands(breccia.relayout(st, breccia.Packed))
    x = randn(m, k, dtype=torch.bfloat16, seed=2)
    ref = x.double() @ _decoded(st, torch.bfloat16).double().t()
    if st.global_scale is not None:
        ref = ref * st.global_scale.double()
    for cfg in CONFIGS:
        out = torch.full((m, n), float("nan"))
        w4a16_mm(x, op.qdata, op.scale, op.zero_point, op.global_scale, None, op.kind, op.group, n, k, torch.float32, cfg, out=out)
        assert rel_err(out, ref) < 1e-5, cfg  # fp32 accumulation error
    # split-K leaves its workspace and tickets zero for the next call
    assert all(bool((t == 0).all()) for pair in w4a16._WORKSPACES.values() for t in pair)


def test_kernel_bias_out_dtypes_and_fp16():
    n, k = 24, 160
    st = breccia.cast(randn(n, k, seed=4), INT4_G16_FP16, "weight")  # fp16 scales
    op = packing.packed_operands(breccia.relayout(st, breccia.Packed))
    bias = randn(n, seed=5)
    for dtype in (torch.float16, torch.bfloat16):  # bf16 x fp16 scales: scaled in fp32
        x = randn(5, k, dtype=dtype, seed=6)
        ref = x.double() @ _decoded(st, dtype).double().t() + bias.double()
        for out_dtype in (torch.float32, dtype):
            out = w4a16_mm(x, op.qdata, op.scale, op.zero_point, None, bias, op.kind, op.group, n, k, out_dtype, Config(16, 2, 2, 4, 2))
            assert out.dtype == out_dtype and rel_err(out, ref) < (1e-5 if out_dtype == torch.float32 else 4e-3)


def test_config_choice():
    cfg = w4a16.config_for(torch.device("cpu"), "int4_sym", 1, 8192, 8192)
    assert cfg in w4a16.candidates(1, 8192, 8192) or cfg.split_k >= 1
    assert w4a16._key(torch.device("cpu"), "nvfp4", 3, 64, 64)[2] == 4  # M buckets
    assert all(c.block_n % 16 == 0 for m in (1, 32, 128) for c in w4a16.candidates(m, 4096, 4096))


# --------------------------------------------------------------------------- routes


@pytest.mark.parametrize("name", ["int4_g32", "int4_asym_g64", "nvfp4"])
def test_linear_routes_to_w4a16_on_gpu(gpu, name):
    recipe = WEIGHT_RECIPES[name]
    lin = torch.nn.Linear(128, 40, bias=True).bfloat16()
    ref_w = lin.weight.detach().clone()
    breccia.convert(lin, recipe, layout=breccia.Packed)
    w = lin.weight
    x = randn(2, 3, 128, dtype=torch.bfloat16)
    assert route_for(x.reshape(-1, 128), w.t()).name == "w4a16_triton"
    out = lin(x)
    st = breccia.cast(ref_w, recipe, "weight")
    ref = F.linear(x.float(), breccia.dequantize(st, torch.float32), lin.bias.float())
    assert out.dtype == torch.bfloat16 and out.shape == (2, 3, 40)
    assert rel_err(out, ref) < 5e-3  # bf16 output rounding


def test_weight_only_rules(gpu):
    x = randn(4, 96, dtype=torch.bfloat16)
    int4_plain = breccia.cast(randn(40, 96), INT4, "weight")
    nv_plain = breccia.cast(randn(40, 96), NVFP4, "weight")
    nv_packed = breccia.relayout(nv_plain, breccia.Packed)
    # INT4 is weight-only in any layout; Plain is packed per call
    assert route_for(x, int4_plain.t()).name == "w4a16_triton"
    assert rel_err(F.linear(x, int4_plain), x.double() @ breccia.dequantize(int4_plain, torch.float64).t()) < 5e-3
    # NVFP4: Packed is weight-only (activation stays bf16), Plain is W4A4
    assert route_for(x, nv_packed.t()).name == "w4a16_triton"
    w4a16_out = F.linear(x, nv_packed)
    ref16 = x.double() @ breccia.dequantize(nv_plain, torch.float64).t()
    assert rel_err(w4a16_out, ref16) < 5e-3
    w4a4_out = F.linear(x, nv_plain)  # the activation quantized to NVFP4 first
    assert rel_err(w4a4_out, ref16) > 2e-2
    # fp32 activations and non-CUDA devices keep the reference
    assert route_for(x.float(), nv_packed.t()).name == "reference"


def test_weight_only_on_cpu_without_gpu():
    x = randn(4, 96, dtype=torch.bfloat16)
    nv_packed = breccia.relayout(breccia.cast(randn(40, 96), NVFP4, "weight"), breccia.Packed)
    assert route_for(x, nv_packed.t()).name == "reference"
    ref = x.double() @ breccia.dequantize(nv_packed, torch.float64).t()
    assert rel_err(F.linear(x, nv_packed), ref) < 5e-3  # weight-only on the CPU too


def test_custom_op_opcheck():
    n, k = 24, 64
    op = packing.packed_operands(breccia.relayout(breccia.cast(randn(n, k), INT4, "weight"), breccia.Packed))
    x = randn(3, k, dtype=torch.bfloat16)
    torch.library.opcheck(
        torch.ops.breccia.w4a16_mm.default,
        (x, op.qdata, op.scale, None, None, None, op.kind, op.group, n, k, torch.bfloat16),
        test_utils=("test_schema", "test_faketensor"),
    )


def test_compiles_with_packed_weights(gpu):
    lin = torch.nn.Linear(64, 24, bias=False).bfloat16()
    breccia.convert(lin, INT4, layout=breccia.Packed)
    x = randn(2, 64, dtype=torch.bfloat16)
    eager = lin(x)
    compiled = torch.compile(lin, backend="aot_eager", fullgraph=True)(x)
    assert torch.equal(compiled, eager)


# --------------------------------------------------------------------------- NVFP4 x NVFP4, sm100


def test_nvfp4_scaled_mm_route_and_operands(monkeypatch):
    """The sm100 route's operands (layouts checked on the CPU): e2m1 pairs
    packed along K for both operands, both scale grids in the 128x4 swizzle,
    alpha the product of the global scales; an emulation of _scaled_mm's fp4
    contract on them gives the reference NVFP4 x NVFP4 product."""
    monkeypatch.setattr(cuda_routes, "capability", lambda device: (10, 0))
    monkeypatch.setattr(w4a16_routes, "capability", lambda device: (10, 0))
    m, n, k = 5, 48, 96  # _scaled_mm fp4: K % 32, N % 16
    a = breccia.cast(randn(m, k), NVFP4, "input")
    wt = breccia.cast(randn(n, k, seed=1), NVFP4, "weight")
    b = wt.t()
    assert route_for(a, b).name == "nvfp4_scaled_mm"
    qa, qb, sa, sb, alpha = w4a16_routes.nvfp4_scaled_mm_operands(a, b)
    assert qa.shape == (m, k // 2) and qb.shape == (k // 2, n) and qb.stride(0) == 1  # column-major B
    assert torch.equal(qb.t(), wt.qdata)
    assert same_bits(unswizzle_scales(sa, m, k // 16), a.scale)
    assert same_bits(unswizzle_scales(sb, n, k // 16), wt.scale)

    def emulate(qa, qb, sa, sb):  # what cuBLAS computes from these operands
        da = formats.decode_e2m1(formats.unpack_nibbles(qa, k)) * unswizzle_scales(sa, m, k // 16).float().repeat_interleave(16, 1)
        db = formats.decode_e2m1(formats.unpack_nibbles(qb.t(), k)) * unswizzle_scales(sb, n, k // 16).float().repeat_interleave(16, 1)
        return da @ db.t()

    out = emulate(qa, qb, sa, sb) * alpha
    ref = breccia.dequantize(a, torch.float32) @ breccia.dequantize(b, torch.float32)
    assert rel_err(out, ref) < 1e-5
    # not on sm90: no FP4 tensor cores
    monkeypatch.setattr(w4a16_routes, "capability", lambda device: (9, 0))
    assert route_for(a, b).name != "nvfp4_scaled_mm"


# --------------------------------------------------------------------------- convert


def test_convert_default_layout(monkeypatch):
    from breccia.convert import default_layout

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert default_layout(INT4, cpu) is breccia.Plain
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert default_layout(INT4, cuda) is breccia.Packed
    assert default_layout(NVFP4, cuda) is breccia.Packed  # Hopper: weight-only NVFP4
    assert default_layout(breccia.NVFP4BlockScaling(weight_block=(16, 16)), cuda) is breccia.Plain
    assert default_layout(breccia.Float8CurrentScaling(), cuda) is breccia.Plain
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (10, 0))
    assert default_layout(NVFP4, cuda) is breccia.Plain  # sm100: W4A4 through _scaled_mm
    assert default_layout(INT4, cuda) is breccia.Packed


def test_convert_layout_argument():
    model = torch.nn.Sequential(torch.nn.Linear(64, 32))
    breccia.convert(model, INT4, layout=breccia.Packed)
    assert model[0].weight.qlayout is breccia.Packed
    with pytest.raises(ValueError, match="layout"):
        breccia.convert(torch.nn.Sequential(torch.nn.Linear(64, 32)), INT4, mode="training", layout=breccia.Packed)
    with pytest.raises(ValueError, match="cannot take"):
        breccia.convert(torch.nn.Sequential(torch.nn.Linear(64, 32)), breccia.Float8CurrentScaling(), layout=breccia.Packed)
