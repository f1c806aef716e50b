"""Block-scaled GEMMs: the Triton kernels (run on the CPU by Triton's
interpreter) against the reference GEMM, the CUDA routes' scale layouts
against emulations of cuBLAS's contract, and which route a pair of operands
takes on a (mocked) GPU."""

import os
import re

os.environ["TRITON_INTERPRET"] = "1"  # before any kernel module is imported

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from conftest import compile_for_sm90, randn  # noqa: E402

import breccia  # noqa: E402
from breccia.kernels import cuda_routes, route_for  # noqa: E402
from breccia.layouts import ScaleColumnMajor, relayout, unswizzle_scales  # noqa: E402

pytest.importorskip("triton")

from breccia.kernels.triton import gemm_blockwise, gemm_mx  # noqa: E402
from breccia.kernels.triton.gemm_blockwise import blockwise_mm  # noqa: E402
from breccia.kernels.triton.gemm_mx import mx_mm  # noqa: E402

BLOCK = breccia.Float8BlockScaling()
BLOCK_HYBRID = breccia.Float8BlockScaling(fp8_format="hybrid")
MX = breccia.MXFP8BlockScaling()
MX_E5M2 = breccia.MXFP8BlockScaling(fp8_format="e5m2")

#: (M, N, K): tiny, ragged in every dim, and whole tiles
SHAPES = [(1, 16, 32), (5, 7, 40), (33, 130, 300), (17, 200, 129), (64, 256, 384)]


def deq(t):
    return breccia.dequantize(t, torch.float32)


def rel_err(out, ref):
    return ((out.float() - ref).norm() / ref.norm()).item()


def operands(recipe, m, n, k, seed=0, role_a="input"):
    """``a`` (M, K) and ``b`` (K, N): the transposed (N, K) weight, as F.linear
    hands them to the router."""
    x = randn(m, k, seed=seed)
    w = randn(n, k, seed=seed + 1)
    return breccia.cast(x, recipe, role_a), breccia.cast(w, recipe, "weight").t()


# --------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_blockwise_kernel_matches_reference(m, n, k):
    a, b = operands(BLOCK, m, n, k)
    out = blockwise_mm(a.qdata, a.scale, b.qdata, b.scale, torch.float32)
    assert out.shape == (m, n) and out.dtype == torch.float32
    assert rel_err(out, deq(a) @ deq(b)) < 1e-3


def wgrad_operands(m, n, k, seed=0):
    """``a`` (M, K) in 1x128 blocks and ``b`` (K, N) in 128x1 blocks: the
    grad-weight pair ``dy^T x`` of blockwise training (both blocked along the
    reduction dim, the tokens)."""
    g = randn(k, m, seed=seed)  # dy (tokens, out)
    x = randn(k, n, seed=seed + 1)  # x (tokens, in)
    a = breccia.cast(g.t().contiguous(), BLOCK, "grad_output")
    b = breccia.cast(x.t().contiguous(), BLOCK, "input").t()
    assert a.block == (1, 128) and b.block == (128, 1)
    return a, b


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_blockwise_kernel_per_column_scales(m, n, k):
    """scale_n=1: the weight operand blocked 128x1 (one scale per column per
    128 of K)."""
    a, b = wgrad_operands(m, n, k)
    assert b.scale.shape == (-(-k // 128), n)
    out = blockwise_mm(a.qdata, a.scale, b.qdata, b.scale, torch.float32, scale_n=1)
    assert rel_err(out, deq(a) @ deq(b)) < 1e-3
    with pytest.raises(ValueError, match="expected scales"):
        blockwise_mm(a.qdata, a.scale, b.qdata, b.scale, torch.float32)  # 128x128 grid expected
    with pytest.raises(ValueError, match="scale_n"):
        blockwise_mm(a.qdata, a.scale, b.qdata, b.scale, torch.float32, scale_n=64)


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_mx_kernel_matches_reference(m, n, k):
    a, b = operands(MX, m, n, k)
    out = mx_mm(a.qdata, a.scale, b.qdata, b.scale, torch.float32)
    assert out.shape == (m, n)
    assert rel_err(out, deq(a) @ deq(b)) < 1e-3


@pytest.mark.parametrize("recipe", [BLOCK_HYBRID, MX_E5M2], ids=["block_e4m3_x_e5m2", "mx_e5m2"])
def test_e5m2_operands(recipe):
    # hybrid: an e5m2 (grad_output-style) operand times the e4m3 weight;
    # MXFP8 e5m2: both e5m2
    a, b = operands(recipe, 24, 72, 200, role_a="grad_output")
    assert a.spec.element == "e5m2"
    fn = mx_mm if recipe is MX_E5M2 else blockwise_mm
    out = fn(a.qdata, a.scale, b.qdata, b.scale, torch.float32)
    assert rel_err(out, deq(a) @ deq(b)) < 1e-3


@pytest.mark.parametrize("fn,recipe", [(blockwise_mm, BLOCK), (mx_mm, MX)], ids=["blockwise", "mx"])
def test_bias_and_low_precision_out(fn, recipe):
    a, b = operands(recipe, 20, 48, 160)
    bias = randn(48, seed=7).to(torch.bfloat16)
    out = fn(a.qdata, a.scale, b.qdata, b.scale, torch.bfloat16, bias)
    ref = deq(a) @ deq(b) + bias.float()
    assert out.dtype == torch.bfloat16 and rel_err(out, ref) < 1e-2


def test_strided_operands():
    """ScaleColumnMajor activation scales and a row-major (K, N) payload (no
    transpose view) give the same numbers: the kernel takes any strides."""
    a, b = operands(BLOCK, 36, 136, 256)
    ref = blockwise_mm(a.qdata, a.scale, b.qdata, b.scale, torch.float32)
    cm = relayout(a, ScaleColumnMajor)
    assert cm.scale.stride(0) == 1
    qb = b.qdata.contiguous()  # (K, N) row-major
    out = blockwise_mm(cm.qdata, cm.scale, qb, b.scale.contiguous(), torch.float32)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("variant", [0, 4], ids=["fp8_dots", "bf16_dots"])
def test_mx_scale_extremes_are_exact(variant):
    """e8m0 byte 0 is 2**-127 (a float32 subnormal) and 254 is 2**127: their
    product is exactly 1; byte 255 is NaN and poisons only its own rows."""
    m, n, k = 16, 16, 64
    qa = torch.ones(m, k).to(torch.float8_e4m3fn)
    qb = torch.ones(n, k).to(torch.float8_e4m3fn).t()
    ea = torch.zeros(m, 2, dtype=torch.uint8)
    eb = torch.full((2, n), 254, dtype=torch.uint8)
    ea[3, 1] = 255
    cfg = gemm_mx.Config(16, 16, 64, 4, 2, variant)
    e8 = torch.float8_e8m0fnu
    out = mx_mm(qa, ea.view(e8), qb, eb.view(e8), torch.float32, config=cfg)
    assert torch.isnan(out[3]).all()
    keep = torch.arange(m) != 3
    torch.testing.assert_close(out[keep], torch.full((m - 1, n), 64.0), rtol=0, atol=0)


def test_mx_decoded_scales_are_exact():
    """Variant 5 reads the e8m0 scales as fp32, (K/32, rows), rows padded to
    4 floats: every byte decodes to exactly 2**(e-127) (0: the fp32 subnormal
    2**-127, 255: NaN), transposed for ``ea`` and not for ``eb``."""
    e = torch.arange(256, dtype=torch.uint8)[torch.randperm(256, generator=torch.Generator().manual_seed(0))]
    ea = e[:250].reshape(10, 25)  # (M, K/32)
    want = ea.view(torch.float8_e8m0fnu).float()
    got = gemm_mx._decoded_scales(ea, True)
    assert got.shape == (25, 10) and got.stride(0) == 12
    torch.testing.assert_close(got, want.t(), rtol=0, atol=0, equal_nan=True)
    eb = ea.t()  # (K/32, N) as a transposed weight's scales: any strides
    got = gemm_mx._decoded_scales(eb, False)
    torch.testing.assert_close(got, want.t(), rtol=0, atol=0, equal_nan=True)
    assert got[got.isnan()].numel() == (ea == 255).sum()


def test_mx_wgmma_variant_needs_a_hopper_gpu():
    """Variant 5 (Gluon, asynchronous wgmma) never runs under the interpreter
    or on the CPU: no candidate list offers it there, and asking for it fails
    clearly."""
    for m in (1, 40, 200, 4096):
        assert all(c.variant != 5 for c in gemm_mx._candidates(m, 96, 320, True))
    a, b = operands(MX, 64, 128, 256)
    assert not gemm_mx.wgmma_ok(a.qdata, b.qdata)
    with pytest.raises(ValueError, match="Hopper"):
        mx_mm(a.qdata, a.scale, b.qdata, b.scale, config=gemm_mx.Config(128, 128, 128, 8, 4, 5))


def _emulated_scaled_wgmma(qa, qb, sa_t, sb, slice_k, c, out_dtype, bias, sb_block_n=1):
    """``gemm_wgmma.scaled_wgmma_mm``'s documented contract in torch: the sum
    over K slices of each slice's product times its A-row and B-column scales."""
    for t in (sa_t,) + ((sb,) if sb_block_n == 1 else ()):  # what the kernel's TMA needs
        assert t.dtype == torch.float32 and t.stride(1) == 1 and t.stride(0) % 4 == 0
    n = qb.shape[1]
    out = torch.zeros(qa.shape[0], n)
    for g in range(sa_t.shape[0]):
        ks = slice(g * slice_k, (g + 1) * slice_k)
        sbg = sb[g] if sb_block_n == 1 else sb[g].repeat_interleave(sb_block_n)[:n]
        out += (qa[:, ks].float() @ qb[ks].float()) * sa_t[g][:, None] * sbg[None, :]
    return (out if bias is None else out + bias.float()).to(out_dtype)


@pytest.mark.parametrize("bn", [128, 64, 256])
@pytest.mark.parametrize("wgrad", [False, True])
def test_blockwise_wgmma_variant_scale_plumbing(bn, wgrad, monkeypatch):
    """Variant 5 hands the shared wgmma kernel the A scales transposed and the
    B scales as one number a tile (128x128 blocks holding whole tiles) or per
    column (128x1 blocks, or 128x128 blocks under a 256-wide tile), 16-byte
    aligned: checked against the kernel's contract, emulated."""
    from breccia.kernels.triton import gemm_wgmma

    monkeypatch.setattr(gemm_wgmma, "scaled_wgmma_mm", _emulated_scaled_wgmma)
    m, n, k = 40, 300, 384
    if wgrad:
        a, b = wgrad_operands(m, n, k)
        scale_n = 1
    else:
        a, b = operands(BLOCK, m, n, k)
        scale_n = 128
    bias = randn(n, seed=3)
    cfg = gemm_blockwise.Config(64, bn, 128, 4, 4, 5)
    out = blockwise_mm(a.qdata, a.scale, b.qdata, b.scale, torch.float32, bias, cfg, scale_n=scale_n)
    assert rel_err(out, deq(a) @ deq(b) + bias) < 1e-5


def test_blockwise_wgmma_variant_needs_a_hopper_gpu():
    """Without a Hopper GPU no candidate list offers variant 5, and the kernel
    refuses to launch with a clear error."""
    from breccia.kernels.triton import gemm_wgmma

    for m in (1, 40, 200, 4096):
        assert all(c.variant not in (5, 6) for c in gemm_blockwise._candidates(m, 256, 512, True))
        assert all(c.variant not in (5, 6) for c in gemm_mx._candidates(m, 256, 512, False))
    assert {5, 6} <= {c.variant for c in gemm_blockwise._candidates(4096, 256, 512, True, True)}
    a, b = operands(BLOCK, 64, 128, 256)
    assert not gemm_wgmma.wgmma_ok(a.qdata, b.qdata)
    for cfg in (gemm_blockwise.Config(128, 128, 128, 8, 4, 5), gemm_blockwise.Config(128, 128, 256, 4, 3, 6)):
        with pytest.raises(ValueError, match="Hopper"):
            gemm_wgmma.scaled_wgmma_mm(a.qdata, b.qdata, a.scale.t(), b.scale, 128, cfg, torch.bfloat16, None, 128)


def test_warp_specialized_variant_needs_its_tile(monkeypatch):
    """Variant 6 splits a 128-row tile over two 4-warp consumer warpgroups:
    any other BM or warp count is refused before launch, naming the config."""
    from breccia.kernels.triton import gemm_wgmma

    monkeypatch.setattr(gemm_wgmma, "wgmma_ok", lambda qa, qb: True)
    a, b = operands(BLOCK, 64, 128, 256)
    for cfg in (gemm_blockwise.Config(64, 128, 256, 4, 3, 6), gemm_blockwise.Config(128, 128, 256, 8, 3, 6)):
        with pytest.raises(ValueError, match=re.escape(repr(cfg))):
            gemm_wgmma.scaled_wgmma_mm(a.qdata, b.qdata, a.scale.t(), b.scale, 128, cfg, torch.bfloat16, None, 128)


def test_wgmma_kernel_compiles_for_sm90():
    """The Gluon kernel cannot run here, but it can be compiled for an H100:
    this catches a frontend or layout error before it reaches a GPU (the
    blockwise configs with the weight scale per tile, the MX one per column).
    In a process of its own, without the interpreter (``sm90_compile.py``)."""
    from breccia.kernels.triton import gemm_wgmma

    if not gemm_wgmma.HAS_GLUON:
        pytest.skip("this Triton has no Gluon")
    cfgs = [[128, 128, 128, 8, 4, 128, True], [64, 128, 128, 4, 6, 128, True], [128, 128, 256, 8, 3, 32, False]]
    # the warp-specialized persistent loop (variant 6): MX, blockwise, blockwise grad-weight (per column)
    cfgs += [[128, 128, 256, 4, 3, 32, False, True], [128, 128, 128, 4, 5, 128, True, True]]
    cfgs += [[128, 128, 128, 4, 6, 128, False, True]]
    for (bm, bn, bk, warps, stages, slice_k, scalar, *_), r in zip(cfgs, compile_for_sm90("wgmma", cfgs)):
        assert r["wgmma"] >= bk // slice_k and r["waits"] > 0
        assert r["shared"] <= 227 * 1024  # fits an H100's shared memory


@pytest.mark.parametrize("kind", ["blockwise", "mx"])
def test_every_candidate_config_is_correct(kind):
    """Each tile config the GPU tuner may pick computes the same product."""
    mod, fn, recipe = (gemm_blockwise, blockwise_mm, BLOCK) if kind == "blockwise" else (gemm_mx, mx_mm, MX)
    a, b = operands(recipe, 40, 96, 320)
    ref = deq(a) @ deq(b)
    configs = {c for m in (1, 40, 200, 4096) for c in mod._candidates(m, 96, 320, True)}
    for c in sorted(configs):
        out = fn(a.qdata, a.scale, b.qdata, b.scale, torch.float32, config=c)
        assert rel_err(out, ref) < 1e-3, c


def test_kernel_argument_errors():
    a, b = operands(BLOCK, 8, 16, 128)
    with pytest.raises(ValueError, match="scales"):
        blockwise_mm(a.qdata, a.scale[:, :0], b.qdata, b.scale)
    with pytest.raises(ValueError, match="qa"):
        blockwise_mm(a.qdata, a.scale, b.qdata[:64], b.scale)
    am, bm = operands(MX, 8, 16, 128)
    with pytest.raises(ValueError, match="e8m0"):
        mx_mm(am.qdata, am.scale.float(), bm.qdata, bm.scale.float())
    # the pointer and TMA loops fold one 128-wide scale block per K step
    with pytest.raises(ValueError, match="BLOCK_K 128"):
        blockwise_mm(a.qdata, a.scale, b.qdata, b.scale, config=gemm_blockwise.Config(16, 64, 256, 4, 3, 0, 4))
    with pytest.raises(ValueError, match="multiple of 32"):
        mx_mm(am.qdata, am.scale, bm.qdata, bm.scale, config=gemm_mx.Config(16, 16, 16, 4, 2))


# --------------------------------------------------------------------------- routes


@pytest.fixture
def gpu(monkeypatch):
    """Pretend the operands' device is a CUDA GPU of a given capability."""

    def set_cap(cap):
        monkeypatch.setattr(cuda_routes, "capability", lambda device: cap)

    return set_cap


PAIRS = {
    "block": (BLOCK, 64, 256, 512),
    "block_ragged_k": (BLOCK, 64, 256, 200),
    "block_ragged_n": (BLOCK, 64, 200, 512),
    "block_m3": (BLOCK, 3, 256, 512),
    "mx": (MX, 64, 256, 512),
    "mx_ragged_k": (MX, 64, 256, 200),
    "tensorwise": (breccia.Float8CurrentScaling(), 64, 256, 512),
}

EXPECTED = {
    # capability: route per pair (tensorwise stays on the existing route)
    None: {name: "reference" for name in PAIRS if name != "tensorwise"},
    (8, 9): {
        "block": "fp8_blockwise_triton",
        "block_ragged_k": "fp8_blockwise_triton",
        "block_ragged_n": "fp8_blockwise_triton",
        "block_m3": "fp8_blockwise_triton",
        "mx": "mxfp8_triton",
        "mx_ragged_k": "mxfp8_triton",
    },
    (9, 0): {
        "block": "fp8_blockwise_scaled_mm",
        "block_ragged_k": "fp8_blockwise_triton",
        "block_ragged_n": "fp8_blockwise_triton",
        "block_m3": "fp8_blockwise_triton",  # decode: Triton beat cuBLAS + padding on an H100
        "mx": "mxfp8_triton",
        "mx_ragged_k": "mxfp8_triton",
    },
    (10, 0): {
        "block": "fp8_blockwise_triton",
        "block_ragged_k": "fp8_blockwise_triton",
        "block_ragged_n": "fp8_blockwise_triton",
        "block_m3": "fp8_blockwise_triton",
        "mx": "mxfp8_scaled_mm",
        "mx_ragged_k": "mxfp8_triton",
    },
}


@pytest.mark.parametrize("cap", list(EXPECTED), ids=["cpu", "sm89", "sm90", "sm100"])
def test_route_selection(cap, gpu):
    gpu(cap)
    for name, want in EXPECTED[cap].items():
        recipe, m, n, k = PAIRS[name]
        a, b = operands(recipe, m, n, k)
        assert route_for(a, b).name == want, (cap, name)
    a, b = operands(*PAIRS["tensorwise"])
    assert route_for(a, b).name == "fp8_scaled_mm"  # CPU tensors: the CPU _scaled_mm


def test_e5m2_pair_skips_cublas(gpu):
    gpu((9, 0))
    e5 = breccia.Float8BlockScaling(fp8_format="e5m2")
    a, b = operands(e5, 64, 256, 512)
    assert route_for(a, b).name == "fp8_blockwise_triton"


def test_swizzled_mx_activation_skips_triton_on_sm90(gpu):
    """The Triton MX GEMM reads Plain grids; a Swizzled activation goes to
    the reference on sm90 rather than being unswizzled behind the user's back."""
    gpu((9, 0))
    a, b = operands(MX, 64, 256, 512)
    from breccia.layouts import Swizzled

    assert route_for(relayout(a, Swizzled), b).name == "reference"


@pytest.mark.parametrize("cap", [(8, 9), (9, 0)], ids=["sm89", "sm90"])
@pytest.mark.parametrize("recipe", [BLOCK, MX], ids=["block", "mx"])
def test_linear_through_triton_routes(cap, recipe, gpu, monkeypatch):
    """F.linear on ragged shapes takes a Triton route end to end, with bias,
    and never syncs the host (``.item()`` raises here)."""
    gpu(cap)
    x = randn(2, 5, 200, seed=3)
    w = breccia.cast(randn(72, 200, seed=4), recipe, "weight")
    bias = randn(72, seed=5)
    xq = breccia.cast(x.reshape(10, 200), recipe, "input")
    assert route_for(xq, w.t()).name.endswith("triton")
    with monkeypatch.context() as mp:
        mp.setattr(torch.Tensor, "item", lambda self: pytest.fail("host sync in the router"))
        y = F.linear(x, w, bias)
    assert y.shape == (2, 5, 72)
    ref = deq(xq).reshape(2, 5, 200) @ deq(w).t() + bias
    assert rel_err(y, ref) < 1e-3


# --------------------------------------------------------------------------- cuBLAS contracts, emulated


def _check_blockwise_contract(qa, qb, sa, sb):
    """What torch 2.11's ``_scaled_mm`` and cuBLAS check for 1x128 x 128x128
    (aten/src/ATen/native/cuda/Blas.cpp, is_blockwise_*_scaling)."""
    m, k = qa.shape
    n = qb.shape[1]
    kb, nb = -(-k // 128), -(-n // 128)
    assert qa.stride(1) == 1 and qb.stride(0) == 1, "row-major a, column-major b"
    assert k % 512 == 0 and n % 128 == 0, "cuBLAS reads the weight grid with ld roundup(K/128, 4)"
    assert tuple(sa.shape) == (m, kb) and sa.stride(0) == 1 and (kb == 1 or sa.stride(1) == m)
    assert m % 4 == 0, "scale_a's leading dimension must be 16-byte aligned"
    assert tuple(sb.shape) == (kb, nb) and sb.stride(0) == 1 and (nb == 1 or sb.stride(1) == kb)


def _emulate_blockwise(qa, qb, sa, sb, bias=None, out_dtype=None, **_):
    _check_blockwise_contract(qa, qb, sa, sb)
    ea = sa.repeat_interleave(128, 1)[:, : qa.shape[1]]
    eb = sb.repeat_interleave(128, 0).repeat_interleave(128, 1)[: qb.shape[0], : qb.shape[1]]
    out = (qa.float() * ea) @ (qb.float() * eb)
    return (out if bias is None else out + bias.float()).to(out_dtype)


@pytest.mark.parametrize("m", [1, 3, 4, 21, 64])
@pytest.mark.parametrize("k", [512, 1536])
def test_cublas_blockwise_route_layout(m, k, gpu, monkeypatch):
    """The router relayouts and pads for cuBLAS: M padded to 4 (zero rows),
    activation scales outer-dim-major, the weight grid as it is; the product
    matches the reference."""
    gpu((9, 0))
    monkeypatch.setattr(torch, "_scaled_mm", _emulate_blockwise)
    a, b = operands(BLOCK, m, 256, k)
    want = "fp8_blockwise_scaled_mm" if m >= cuda_routes.CUBLAS_BLOCKWISE_MIN_M else "fp8_blockwise_triton"
    assert route_for(a, b).name == want
    out = cuda_routes.run_blockwise_cublas(a, b, None, torch.bfloat16)  # small M too: the padding
    assert out.shape == (m, 256)
    assert rel_err(out, deq(a) @ deq(b)) < 1e-2


def _emulate_outer_blockwise(qa, qb, sa, sb, bias=None, out_dtype=None, **_):
    """torch 2.11's ``_scaled_mm`` 1x128 x 1x128 contract (is_blockwise_1x128
    for both operands): scale_a (M, K/128) outer-dim-major, scale_b (K/128, N)
    row-major, the grid of the (N, K) operand in its outer-dim-major form."""
    m, k = qa.shape
    n = qb.shape[1]
    assert qa.stride(1) == 1 and qb.stride(0) == 1, "row-major a, column-major b"
    assert k % 128 == 0 and m % 4 == 0 and n % 4 == 0
    assert tuple(sa.shape) == (m, k // 128) and sa.stride(0) == 1 and (k == 128 or sa.stride(1) == m)
    assert tuple(sb.shape) == (k // 128, n) and sb.stride(1) == 1 and (k == 128 or sb.stride(0) == n)
    out = (qa.float() * sa.repeat_interleave(128, 1)) @ (qb.float() * sb.repeat_interleave(128, 0))
    return (out if bias is None else out + bias.float()).to(out_dtype)


@pytest.mark.parametrize("m", [3, 21, 64])
@pytest.mark.parametrize("n,k", [(256, 384), (48, 128)])
def test_cublas_wgrad_route_layout(m, n, k, gpu, monkeypatch):
    """1x128 x 128x1 goes to cuBLAS's 1x128 x 1x128 on sm90 (M padded to 4,
    scales in its layout) and the product matches the reference; ragged K or N
    goes to the Triton kernel."""
    gpu((9, 0))
    monkeypatch.setattr(torch, "_scaled_mm", _emulate_outer_blockwise)
    a, b = wgrad_operands(m, n, k)
    want = "fp8_blockwise_scaled_mm" if m >= cuda_routes.CUBLAS_BLOCKWISE_MIN_M else "fp8_blockwise_triton"
    assert route_for(a, b).name == want
    out = cuda_routes.run_blockwise_cublas(a, b, None, torch.bfloat16)
    assert out.shape == (m, n)
    assert rel_err(out, deq(a) @ deq(b)) < 1e-2
    out = route_for(a, b).run(a, b, None, torch.float32)
    assert rel_err(out, deq(a) @ deq(b)) < 1e-2
    assert route_for(*wgrad_operands(64, n, k + 40)).name == "fp8_blockwise_triton"
    assert route_for(*wgrad_operands(64, 40, k)).name == "fp8_blockwise_triton"


def test_cublas_blockwise_scales_zero_copy():
    """Operands already in cuBLAS's layout pass through: a ScaleColumnMajor
    activation with M % 4 == 0, and the transposed Plain weight for K % 512 == 0."""
    a, b = operands(BLOCK, 64, 256, 512)
    cm = relayout(a, ScaleColumnMajor)
    sa, sb = cuda_routes.cublas_blockwise_scales(cm.scale, b.scale, 64)
    assert sa.data_ptr() == cm.scale.data_ptr() and sb.data_ptr() == b.scale.data_ptr()


def test_cublas_blockwise_needs_k_in_512s(gpu):
    """torch 2.11 takes a weight-scale leading dimension of K/128 while cuBLAS
    reads roundup(K/128, 4): K = 640 (5 blocks) goes to Triton."""
    gpu((9, 0))
    a, b = operands(BLOCK, 64, 256, 640)
    assert route_for(a, b).name == "fp8_blockwise_triton"


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_cublas_blockwise_bias(out_dtype, gpu, monkeypatch):
    """A bias of the output dtype is fused into cuBLAS; fp32 out adds it after."""
    gpu((9, 0))
    seen = []

    def emulate(*args, bias=None, **kw):
        seen.append(bias)
        return _emulate_blockwise(*args, bias=bias, **kw)

    monkeypatch.setattr(torch, "_scaled_mm", emulate)
    a, b = operands(BLOCK, 24, 128, 512)
    bias = randn(128, seed=9).to(out_dtype)
    out = route_for(a, b).run(a, b, bias, out_dtype)
    assert (seen[0] is None) == (out_dtype == torch.float32)
    assert rel_err(out, deq(a) @ deq(b) + bias.float()) < (1e-3 if out_dtype == torch.float32 else 1e-2)


def _emulate_mx(qa, qb, sa, sb, bias=None, out_dtype=None, **_):
    """cuBLAS MX (sm100): both scales 1-D e8m0 in the 128x4 swizzle, of the
    (M, K/32) and (N, K/32) grids."""
    m, k = qa.shape
    n = qb.shape[1]
    assert qa.stride(1) == 1 and qb.stride(0) == 1
    assert sa.dtype == sb.dtype == torch.float8_e8m0fnu and sa.dim() == sb.dim() == 1
    kb = k // 32
    ga = breccia.formats.decode_e8m0(unswizzle_scales(sa, m, kb))
    gb = breccia.formats.decode_e8m0(unswizzle_scales(sb, n, kb))
    out = (qa.float() * ga.repeat_interleave(32, 1)) @ (qb.float() * gb.repeat_interleave(32, 1).t())
    return out.to(out_dtype)


@pytest.mark.parametrize("m", [5, 64, 300])
def test_mx_sm100_route_scale_layout(m, gpu, monkeypatch):
    gpu((10, 0))
    monkeypatch.setattr(torch, "_scaled_mm", _emulate_mx)
    a, b = operands(MX, m, 144, 256)
    route = route_for(a, b)
    assert route.name == "mxfp8_scaled_mm"
    out = route.run(a, b, None, torch.float32)
    assert rel_err(out, deq(a) @ deq(b)) < 1e-5
    from breccia.layouts import Swizzled

    sw = relayout(a, Swizzled)  # a pre-swizzled activation passes through
    sa, _ = cuda_routes.cublas_mx_scales(sw, b)
    assert sa.data_ptr() == sw.scale.data_ptr()
    torch.testing.assert_close(route.run(sw, b, None, torch.float32), out, rtol=0, atol=0)


# --------------------------------------------------------------------------- custom ops


def test_custom_ops_pass_opcheck():
    # (the schema test multiplies outputs, which fp8 tensors cannot do on the CPU)
    a, b = operands(BLOCK, 8, 16, 128)
    torch.library.opcheck(
        cuda_routes.fp8_blockwise_mm.op, (a.qdata, a.scale, b.qdata, b.scale, None, torch.float32),
        test_utils=("test_faketensor", "test_aot_dispatch_dynamic"),
    )
    am, bm = operands(MX, 8, 16, 128)
    torch.library.opcheck(
        cuda_routes.mxfp8_mm.op, (am.qdata, am.scale, bm.qdata, bm.scale, None, torch.float32),
        test_utils=("test_faketensor", "test_aot_dispatch_dynamic"),
    )


def test_fast_launch_keys_follow_triton_specialization():
    """Eager GEMM launches reuse a compiled kernel per key (launch.fast): the
    key holds what Triton specializes on, so arguments Triton would compile
    apart never share a kernel."""
    from breccia.kernels.triton.launch import arg_class, cdiv, next_pow2

    assert arg_class(4096) == arg_class(32) != arg_class(4100) != arg_class(1)
    assert arg_class(2**31) != arg_class(2**31 - 16)  # i64 vs i32
    t = torch.zeros(64)
    assert arg_class(t) == arg_class(torch.ones(8)) != arg_class(t[1:])  # 16-byte alignment
    assert arg_class(t) != arg_class(t.half())
    assert arg_class(True) != arg_class(False) and arg_class(None) is None
    assert [cdiv(a, 8) for a in (0, 1, 8, 9)] == [0, 1, 1, 2]
    assert [next_pow2(n) for n in (0, 1, 2, 3, 1000, 1024)] == [1, 1, 2, 4, 1024, 1024]


def test_tma_rows_gives_aligned_row_major_scales():
    """The wgmma kernel reads scale rows by TMA: rows contiguous, row stride
    and base 16-byte aligned; tma_rows passes such grids through and copies
    the rest (padding rows whose length is not a multiple of 4 floats)."""
    from breccia.kernels.triton.gemm_wgmma import tma_rows

    def ok(t):
        return t.stride(1) == 1 and t.stride(0) % 4 == 0 and t.data_ptr() % 16 == 0

    g = torch.randn(8, 64)
    assert tma_rows(g) is g
    for s in (g.t(), g[:, 1:61], g.t()[:, :6], torch.randn(4, 130)[:, :124]):
        r = tma_rows(s)
        assert ok(r) and torch.equal(r, s)
    shifted = torch.randn(65)[1:].view(4, 16)  # contiguous, rows of 16 floats, base 4 bytes past alignment
    assert shifted.data_ptr() % 16 and ok(tma_rows(shifted)) and torch.equal(tma_rows(shifted), shifted)
