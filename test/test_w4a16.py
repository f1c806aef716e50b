"""4-bit weight-only kernels: the Packed layout, the Triton W4A16 GEMM (run on
the CPU by Triton's interpreter, small ragged shapes), the routes (on a
mocked GPU) and convert's layout choice."""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before any kernel module is imported

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from conftest import compile_for_sm90, randn  # noqa: E402

import breccia  # noqa: E402
from breccia import formats, packing  # noqa: E402
from breccia.kernels import cuda_routes, route_for, w4a16_routes  # noqa: E402
from breccia.layouts import unswizzle_scales  # noqa: E402

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from breccia.kernels.triton import w4a16  # noqa: E402
from breccia.kernels.triton.w4a16 import Config, _bits16, _e2m1_bits, w4a16_mm  # noqa: E402

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
    """The Packed order (packing.py): tile t, window w, lane l = 4g + q, byte
    4s + b holds row 16t + g (low nibble) and row 16t + g + 8 (high) at
    K = 64w + 16q + 4s + (0, 2, 1, 3)[b]."""
    codes = torch.randint(0, 16, (37, 150), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    p = packing.pack_codes(codes, "int4")
    assert p.shape == packing.packed_shape(37, 150) == (3, 3, 32, 16)
    for t, w, lane, byte in [(0, 0, 0, 0), (0, 1, 5, 7), (1, 2, 31, 15), (2, 0, 17, 6), (2, 2, 9, 3), (1, 1, 12, 9)]:
        g, q, s, b = lane // 4, lane % 4, byte // 4, byte % 4
        k = 64 * w + 16 * q + 4 * s + (0, 2, 1, 3)[b]
        v = int(p[t, w, lane, byte])
        for nib, row in ((v & 0xF, 16 * t + g), (v >> 4, 16 * t + g + 8)):
            assert nib == (int(codes[row, k]) if row < 37 and k < 150 else 0)  # padding: zero codes
    t2 = p[2].view(3, 8, 4, 16)  # tile 2: (window, g, q, byte)
    assert int((t2 >> 4).max()) == 0 and int((t2[:, 5:] & 0xF).max()) == 0  # rows 37..47: zero codes
    assert torch.equal(packing.unpack_codes(p, 37, 150, "int4"), codes)
    # a lane's 32-bit word s, nibble pairs (i, i + 4): the A registers of MMA step s
    word = p[1, 1, 6].view(torch.int32)[2].item() & 0xFFFFFFFF
    g, q = 1, 2
    for i, (row, k0) in enumerate([(g, 0), (g + 8, 0), (g, 2), (g + 8, 2)]):
        k = 64 + 16 * q + 8 + k0
        assert (word >> 4 * i) & 0xF == int(codes[16 + row, k]) and (word >> 4 * (i + 4)) & 0xF == int(codes[16 + row, k + 1])


def test_pack_codes_e2m1_word_shuffle():
    """NVFP4 words: the nibble-order word bit-shuffled so that A register i
    of MMA step s is the OR over its pieces of ``rotl(word, r) & mask``
    (packing.E2M1_WORD_PIECES), each half the bf16 bits of the code's value
    * 2**-126 -- values from ml_dtypes' float4_e2m1fn, not breccia's table."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    import numpy as np

    codes = torch.randint(0, 16, (37, 150), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    p = packing.pack_codes(codes, "e2m1")
    assert torch.equal(packing.unpack_codes(p, 37, 150, "e2m1"), codes)
    assert torch.equal(packing.unshuffle_e2m1_words(p), packing.pack_codes(codes, "int4"))
    values = np.arange(16, dtype=np.uint8).view(ml_dtypes.float4_e2m1fn).astype(np.float32)
    bf16_bits = (torch.from_numpy(values) * 2.0**-126).to(torch.bfloat16).view(torch.int16).to(torch.int64) & 0xFFFF
    assert int(bf16_bits[1]) == 0x0040  # 0.5 * 2**-126: bf16's subnormal, kept (no flush)

    def rotl(w, r):
        return ((w << r) | (w >> (32 - r))) & 0xFFFFFFFF if r else w

    for t, w, lane, s in [(0, 0, 0, 0), (1, 1, 6, 2), (2, 2, 31, 3), (1, 0, 13, 1)]:
        g, q = lane // 4, lane % 4
        word = p[t, w, lane].view(torch.int32)[s].item() & 0xFFFFFFFF
        regs = [0, 0, 0, 0]
        for i, rot, mask in packing.e2m1_register_masks():
            regs[i] |= rotl(word, rot) & mask
        for i, (row, k0) in enumerate([(g, 0), (g + 8, 0), (g, 2), (g + 8, 2)]):
            r, k = 16 * t + row, 64 * w + 16 * q + 4 * s + k0
            want = [int(bf16_bits[int(codes[r, kk])]) if r < 37 and kk < 150 else 0 for kk in (k, k + 1)]
            assert [regs[i] & 0xFFFF, regs[i] >> 16] == want, (t, w, lane, s, i)


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


@pytest.mark.parametrize("kind,dtype", [(0, torch.bfloat16), (0, torch.float16), (1, torch.bfloat16), (1, torch.float16)])
def test_gpu_decode_bits(kind, dtype):
    """INT4: the 16-bit patterns the GPU's decode starts from (integer ops,
    so the interpreter runs them): every byte's two nibbles."""
    b = torch.arange(256, dtype=torch.uint8)
    lo, hi = torch.empty(256, dtype=torch.int16), torch.empty(256, dtype=torch.int16)
    _bits_kernel[(1,)](b, lo, hi, kind, tl.bfloat16 if dtype == torch.bfloat16 else tl.float16)
    lv, hv = lo.view(dtype).float(), hi.view(dtype).float()
    cl, ch = (b & 15).long(), (b >> 4).long()
    # 2**7 / 2**10 + unit * (code, sign bit flipped when symmetric)
    base, unit_hi = (128, 1) if dtype == torch.bfloat16 else (1024, 16)
    f = (lambda c: c ^ 8) if kind == 0 else (lambda c: c)
    want_lo, want_hi = (base + f(cl)).float(), (base + unit_hi * f(ch)).float()
    assert torch.equal(lv, want_lo) and torch.equal(hv, want_hi)


@triton.jit
def _e2m1_bits_kernel(b_ptr, lo_ptr, hi_ptr):
    i = tl.arange(0, 8 * 64)
    b = tl.reshape(tl.load(b_ptr + i), (8, 4, 4, 4))
    lo, hi = _e2m1_bits(b, 8, 4)
    o = tl.reshape(i, (8, 4, 16))
    tl.store(lo_ptr + o, lo)
    tl.store(hi_ptr + o, hi)


def test_gpu_decode_bits_e2m1():
    """NVFP4: the tensor-core kernel's decode of one shuffled window (rows
    g and g + 8 of its 8 row pairs, 64 contiguous bytes each) gives, in K
    order, the bf16 bits of value * 2**-126 (code 1 a bf16 subnormal) for
    every code -- values from ml_dtypes' float4_e2m1fn."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    import numpy as np

    codes = torch.randint(0, 16, (16, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    codes[0, :16] = torch.arange(16, dtype=torch.uint8)  # every code at least once
    p = packing.pack_codes(codes, "e2m1")
    lo, hi = torch.empty(8, 64, dtype=torch.int32), torch.empty(8, 64, dtype=torch.int32)
    _e2m1_bits_kernel[(1,)](p[0, 0].reshape(-1), lo, hi)
    values = torch.from_numpy(np.arange(16, dtype=np.uint8).view(ml_dtypes.float4_e2m1fn).astype(np.float32))
    bits = ((values * 2.0**-126).to(torch.bfloat16).view(torch.int16).to(torch.int32) & 0xFFFF)[codes.long()]
    assert torch.equal(lo, bits[:8]) and torch.equal(hi, bits[8:])


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


CONFIGS = [Config(32, 1, 1, 4, 2), Config(32, 2, 2, 4, 2), Config(32, 1, 3, 4, 2), Config(64, 2, 1, 4, 2)]


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
            out = w4a16_mm(x, op.qdata, op.scale, op.zero_point, None, bias, op.kind, op.group, n, k, out_dtype, Config(32, 1, 2, 4, 2))
            assert out.dtype == out_dtype and rel_err(out, ref) < (1e-5 if out_dtype == torch.float32 else 4e-3)


def test_config_choice():
    cfg = w4a16.config_for(torch.device("cpu"), "int4_sym", 1, 8192, 8192)
    assert not cfg.mma and cfg.block_n % 32 == 0  # no MMA kernel without a GPU
    assert w4a16._key(torch.device("cpu"), "nvfp4", 3, 64, 64)[2] == 4  # M buckets
    assert all(c.block_n % 32 == 0 and not c.mma for m in (1, 32, 128) for c in w4a16.candidates(m, 4096, 4096))
    for m, n, k in [(1, 8192, 8192), (16, 28672, 8192), (3, 1000, 4000)]:
        mma = w4a16.candidates(m, n, k, mma=True)
        assert mma and all(c.mma for c in mma) and len(set(mma)) == len(mma)
        for c in mma:
            tiles = c.block_n // 16 if c.warp_split else c.block_n // (16 * c.num_warps)
            assert tiles in (1, 2, 4) and c.split_k >= 1 and (c.split_k == 1 or not c.warp_split)
            # PDL for M <= 8; for M = 9..16 only with 2 tiles a warp (slower with 1)
            assert c.sets in (2, 3, 4) and c.pdl in ((2,) if m <= 8 else (0, 2) if tiles == 2 else (0,))
        cfg = w4a16.config_for(torch.device("cpu"), "int4_sym", m, n, k, mma=True)
        assert cfg.mma and cfg.sets in (2, 3, 4) and cfg.pdl in w4a16.PDL_MODES
    # the heuristic: M <= 8 four windows in flight a warp, two tiles where split-K would drop under 3
    h = w4a16._heuristic(1, 8192, 8192, 132, True)
    assert (h.block_n, h.split_k, h.sets, h.pdl) == (64, 5, 4, 2)
    h = w4a16._heuristic(1, 28672, 8192, 132, True)
    assert (h.block_n, h.split_k, h.sets, h.pdl) == (128, 3, 2, 2)
    h = w4a16._heuristic(16, 8192, 8192, 132, True)
    assert (h.block_n, h.split_k, h.sets, h.pdl) == (64, 5, 2, 0)
    # every tuned MMA config is one the tuner could pick: PDL mode 2 for M <= 8 and for 2-tile
    # configs above, 2-4 register sets
    for (_, _, mb, _, _), c in w4a16.TUNED.items():
        if c.mma:
            tiles = c.block_n // (16 * c.num_warps)
            assert c.sets in (2, 3, 4) and c.pdl in ((2,) if mb <= 8 else (0, 2) if tiles == 2 else (0,))
    # M = 2..8 run the one-token-block kernel: they take the M = 1 entry
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(w4a16, "device_facts", lambda device: ((9, 0), 132))
        for m in (2, 5, 8):
            assert w4a16.config_for(torch.device("cuda"), "nvfp4", m, 8192, 8192, True) == w4a16.TUNED[(9, "nvfp4", 1, 8192, 8192)]
        assert w4a16.config_for(torch.device("cuda"), "nvfp4", 9, 8192, 8192, True) == w4a16.TUNED[(9, "nvfp4", 16, 8192, 8192)]
    x = torch.zeros(1, 64, dtype=torch.bfloat16)  # CPU (and the interpreter): the tensor-core kernel
    assert not w4a16.mma_applies(x, torch.zeros(1, 1, 32, 16, dtype=torch.uint8), x, "int4_sym", 64)


def test_mma_kernel_compiles_for_sm90():
    """The Gluon MMA kernel cannot run here, but it compiles for an H100 with
    the installed Triton (a renamed builtin fails here before a GPU sees it):
    INT4 (symmetric, asymmetric) and NVFP4, one and two token halves,
    split-K or not, with the MMA steps the register sets imply. In a process
    of its own, without the interpreter (``sm90_compile.py``)."""
    from breccia.kernels.triton import w4a16_mma

    if not w4a16_mma.HAS_GLUON:
        pytest.skip("this Triton has no Gluon")
    # kind, two token halves, tiles a warp, warps, register sets, PDL mode, split-K
    cfgs = [[0, False, 2, 4, 4, 2, True], [2, False, 1, 4, 3, 2, False], [2, True, 2, 2, 2, 0, True],
            [1, True, 2, 2, 2, 2, True]]  # fmt: skip
    for (kind, two_n, tpw, warps, sets, pdl, split), r in zip(cfgs, compile_for_sm90("w4a16", cfgs)):
        # four MMA steps a window (eight with two token halves), per register set and tile, in the
        # loop; the prologue loads `sets` windows per tile, the loop reloads each set once
        assert r["mma"] == 4 * (2 if two_n else 1) * sets * tpw, r
        assert r["shared"] <= 227 * 1024


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


# --------------------------------------------------------------------------- the MMA kernel's PTX, emulated


def _to_half_bits(v: torch.Tensor, fp16: bool) -> torch.Tensor:
    """float64 values exact in fp32 -> bf16 / fp16 bits (round to nearest even), as int64."""
    h = v.to(torch.float32).to(torch.float16 if fp16 else torch.bfloat16)
    return h.view(torch.int16).to(torch.int64) & 0xFFFF


def _from_half_bits(b: torch.Tensor, fp16: bool) -> torch.Tensor:
    b16 = (b & 0xFFFF).to(torch.int32).to(torch.int16)
    return b16.view(torch.float16 if fp16 else torch.bfloat16).to(torch.float64)


def _run_ptx(asm: str, operands: dict, fp16: bool) -> dict:
    """Execute the MMA kernel's inline PTX for the 32 lanes of a warp.

    ``operands``: ``"$i"`` -> (32,) tensor (int64 bit patterns for ``r``
    operands, float64 for ``f``). Supports exactly the instructions
    :func:`w4a16_mma.mma_asm` emits; ``mma.sync.m16n8k16`` with the PTX ISA's
    fragment layouts (A row-major: lane l holds rows l//4 and l//4 + 8, K
    2(l%4) + {0, 1} and + 8; B: K rows likewise, column l//4; C: rows l//4,
    l//4 + 8, columns 2(l%4) + {0, 1})."""
    regs = dict(operands)
    mask32 = 0xFFFFFFFF

    def val(tok):
        tok = tok.strip()
        if tok in regs:
            return regs[tok]
        return torch.full((32,), int(tok, 0), dtype=torch.int64)

    def halves(v):
        return _from_half_bits(v, fp16), _from_half_bits(v >> 16, fp16)

    lane = torch.arange(32)
    g, q = lane // 4, lane % 4
    body = [ln.strip() for ln in asm.splitlines()]
    for ln in body:
        if ln in ("{", "}") or ln.startswith(".reg"):
            continue
        op, rest = ln.rstrip(";").split(None, 1)
        if op.startswith("mma.sync"):
            groups = [grp.split(",") for grp in rest.replace("}", "").split("{")[1:]]
            d, a, b, c = [[t.strip().rstrip(",") for t in grp if t.strip()] for grp in groups]
            A = torch.zeros(16, 16, dtype=torch.float64)
            B = torch.zeros(16, 8, dtype=torch.float64)
            C = torch.zeros(16, 8, dtype=torch.float64)
            for i, (dr, dk) in enumerate([(0, 0), (8, 0), (0, 8), (8, 8)]):
                lo, hi = halves(val(a[i]))
                A[g + dr, 2 * q + dk] = lo
                A[g + dr, 2 * q + dk + 1] = hi
            for i, dk in enumerate([0, 8]):
                lo, hi = halves(val(b[i]))
                B[2 * q + dk, g] = lo
                B[2 * q + dk + 1, g] = hi
            for i, (dr, dc) in enumerate([(0, 0), (0, 1), (8, 0), (8, 1)]):
                C[g + dr, 2 * q + dc] = val(c[i]).to(torch.float64)
            D = A @ B + C
            for i, (dr, dc) in enumerate([(0, 0), (0, 1), (8, 0), (8, 1)]):
                regs[d[i]] = D[g + dr, 2 * q + dc].clone()
            continue
        args = [t.strip() for t in rest.split(",")]
        dst, src = args[0], [val(t) for t in args[1:]]
        if op == "mov.b32":
            r = src[0]
        elif op == "shr.u32":
            r = (src[0] & mask32) >> src[1]
        elif op == "and.b32":
            r = src[0] & src[1]
        elif op == "shf.l.wrap.b32":  # funnel shift of (hi:lo) = (src1:src0), upper word
            r = ((((src[1] & mask32) << 32) | (src[0] & mask32)) << (src[2] % 32)) >> 32
        elif op == "lop3.b32":
            a, b, c, lut = src
            r = torch.zeros_like(a)
            for i in range(8):
                if (int(lut[0]) >> i) & 1:
                    r |= (a if i & 4 else ~a) & (b if i & 2 else ~b) & (c if i & 1 else ~c)
            r &= mask32
        elif op in ("fma.rn.bf16x2", "fma.rn.f16x2"):
            (a0, a1), (b0, b1), (c0, c1) = halves(src[0]), halves(src[1]), halves(src[2])
            # products of 8- or 11-bit significands plus these addends are exact in float64
            r = _to_half_bits(a0 * b0 + c0, fp16) | (_to_half_bits(a1 * b1 + c1, fp16) << 16)
        else:
            raise AssertionError(f"emulator: unknown instruction {op}")
        regs[dst] = r & mask32
    return regs


def _words(t: torch.Tensor) -> torch.Tensor:
    """16-bit element pairs (..., 2j, 2j + 1) -> little-endian 32-bit words, int64."""
    b = t.view(torch.int16).to(torch.int64) & 0xFFFF
    return b[..., 0::2] | (b[..., 1::2] << 16)


@pytest.mark.parametrize(
    "name,dtype,m", [("int4_g128", torch.bfloat16, 1), ("int4_g16_fp16", torch.float16, 5), ("int4_asym_g64", torch.bfloat16, 13),
                     ("int4_asym_g64", torch.float16, 8), ("int4_g32", torch.float16, 16), ("nvfp4", torch.bfloat16, 3),
                     ("nvfp4", torch.bfloat16, 11)],
)  # fmt: skip
def test_mma_asm_emulated(name, dtype, m):
    """The MMA kernel's PTX (w4a16_mma.mma_asm), run by an emulator on the
    operands its Gluon code gives each lane for one (tile, window) of a
    Packed weight: the C fragments equal dequantize(w, dtype) @ x.T (NVFP4:
    decode * block scale, * 2**7 * global at the end) to fp32 accumulation."""
    from breccia.kernels.triton import w4a16_mma

    recipe = WEIGHT_RECIPES[name]
    if name.startswith("int4") and recipe.scale_dtype != ("fp16" if dtype == torch.float16 else "bf16"):
        recipe = breccia.INT4Scaling(group_size=recipe.group_size, symmetric=recipe.symmetric,
                                     scale_dtype="fp16" if dtype == torch.float16 else "bf16")  # fmt: skip
    n, k = 40, 192
    st = breccia.cast(randn(n, k, dtype=dtype, seed=7, scale=0.1), recipe, "weight")
    op = packing.packed_operands(breccia.relayout(st, breccia.Packed))
    x = randn(m, k, dtype=dtype, seed=8)
    kind = w4a16.KINDS[op.kind]
    fp16 = dtype == torch.float16
    two_n = m > 8
    asm, cons = w4a16_mma.mma_asm(kind, fp16, two_n)
    assert cons.count("=f") == 4 * (2 if two_n else 1)
    dec = _decoded(st, dtype)
    lane = torch.arange(32)
    g, q = lane // 4, lane % 4
    for t, w in [(0, 0), (1, 2), (2, 1)]:
        ops = {}
        nxt = iter(range(1000))
        for _ in range(8 if two_n else 4):  # outputs
            next(nxt)
        words = op.qdata[t, w].contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF  # (32 lanes, 4)
        for j in range(4):
            ops[f"${next(nxt)}"] = words[:, j]
        xw = _words(torch.cat([x, x.new_zeros(16 - m, k)]) if m < 16 else x)  # (16 tokens, k/2)
        for tok0 in ((0, 8) if two_n else (0,)):
            for half in (0, 1):  # words 0-3: K 16q + 0..7, words 4-7: + 8..15
                cols = (64 * w + 16 * q + 8 * half) // 2
                for j in range(4):
                    ops[f"${next(nxt)}"] = xw[tok0 + g, cols + j]
        rows = (16 * t + g, 16 * t + g + 8)
        grp = (64 * w + 16 * q) // op.group
        for r in rows:  # scale words: row g, row g + 8 (4 copies each)
            rr = r.clamp(max=n - 1)
            if kind == 2:
                sv = op.scale[rr, grp].float().double() * w4a16_mma.NVFP4_SCALE_MUL
                b = _to_half_bits(sv, False)
            else:
                b = op.scale[rr, grp].view(torch.int16).to(torch.int64) & 0xFFFF
            reg = f"${next(nxt)}"
            ops[reg] = b | (b << 16)
            for _ in range(3):
                ops[f"${next(nxt)}"] = ops[reg]
        if kind == 1:
            for r in rows:
                rr = r.clamp(max=n - 1)
                b = _to_half_bits(-(op.zero_point[rr, grp].double() + (1024 if fp16 else 128)), fp16)
                reg = f"${next(nxt)}"
                ops[reg] = b | (b << 16)
                for _ in range(3):
                    ops[f"${next(nxt)}"] = ops[reg]
        for _ in range(8 if two_n else 4):  # accumulators in
            ops[f"${next(nxt)}"] = torch.zeros(32, dtype=torch.float64)
        assert next(nxt) == len(cons.split(","))
        regs = _run_ptx(asm, ops, fp16)
        ks = slice(64 * w, 64 * w + 64)
        ref = torch.zeros(16, 16, dtype=torch.float64)
        rows_t = torch.arange(16 * t, 16 * t + 16).clamp(max=n - 1)
        ref[:, :m] = dec[rows_t][:, ks].double() @ x[:, ks].double().t()
        if kind == 2:
            ref = ref * w4a16_mma.NVFP4_PRE  # the kernel multiplies by the global scale * 2**7 at the end
        for h, tok0 in enumerate((0, 8) if two_n else (0,)):
            for i, (dr, dc) in enumerate([(0, 0), (0, 1), (8, 0), (8, 1)]):
                ok = 16 * t + g + dr < n  # rows past N: padding, never stored
                got = regs[f"${4 * h + i}"][ok]
                want = ref[g + dr, tok0 + 2 * q + dc][ok]
                assert torch.allclose(got, want, rtol=1e-9, atol=1e-9 * float(ref.abs().max())), (t, w, h, i)


@pytest.mark.parametrize("name", ["int4_g32", "int4_asym_g64", "int4_g16_fp16", "nvfp4"])
@pytest.mark.parametrize("k", [80, 112])
def test_kernel_reads_no_scale_past_k(name, k):
    """K % 64 in (0, 48]: the last window has runs of 16 codes wholly past K
    (groups of 16 or 32: past the scale grid). Their scale must come from
    inside the grid: the grids here are views of buffers poisoned (inf /
    255) after their last element."""
    n = 40
    st = breccia.cast(randn(n, k, dtype=torch.bfloat16, seed=9), WEIGHT_RECIPES[name], "weight")
    op = packing.packed_operands(breccia.relayout(st, breccia.Packed))

    def poisoned(t):
        if t is None:
            return None
        buf = torch.empty(t.numel() + 64, dtype=t.dtype)
        buf.view(torch.uint8).fill_(0xFF) if t.element_size() == 1 else buf.fill_(float("inf"))
        buf[: t.numel()] = t.reshape(-1)
        return buf[: t.numel()].view(t.shape)

    scale, zp = poisoned(op.scale.contiguous()), poisoned(op.zero_point)
    x = randn(3, k, dtype=torch.bfloat16, seed=10)
    ref = x.double() @ _decoded(st, torch.bfloat16).double().t()
    if st.global_scale is not None:
        ref = ref * st.global_scale.double()
    for cfg in (Config(32, 1, 1, 4, 2), Config(32, 2, 2, 4, 2)):
        out = w4a16_mm(x, op.qdata, scale, zp, op.global_scale, None, op.kind, op.group, n, k, torch.float32, cfg)
        assert torch.isfinite(out).all() and rel_err(out, ref) < 1e-5, cfg


def test_mma_kernel_runs_larger_batches_in_16_token_chunks(monkeypatch):
    """17..64 tokens take the MMA kernel 16 rows a launch: every chunk gets
    its own rows of the activation and of the output, the same config."""
    calls = []
    monkeypatch.setattr(w4a16, "_launch_mma_chunk", lambda x, *a: calls.append((x, a[-2], a[-1])))
    x = torch.randn(40, 64)
    out = torch.empty(40, 8)
    cfg = w4a16.candidates(16, 8, 64, mma=True)[0]
    assert w4a16._launch_mma(x, None, None, None, None, None, "int4_sym", 32, 8, 64, out, cfg) is out
    assert [c[0].shape[0] for c in calls] == [16, 16, 8] and all(c[2] is cfg for c in calls)
    for i, (xc, oc, _) in enumerate(calls):
        assert xc.data_ptr() == x[16 * i].data_ptr() and oc.data_ptr() == out[16 * i].data_ptr()
    # the tuner offers them beside the tensor-core configs where the MMA kernel applies
    with_mma = w4a16.candidates(40, 8192, 8192, mma=True)
    assert any(c.mma for c in with_mma) and not any(c.mma for c in w4a16.candidates(40, 8192, 8192))
    assert not any(c.mma for c in w4a16.candidates(w4a16.MMA_MAX_M + 1, 8192, 8192, mma=True))
