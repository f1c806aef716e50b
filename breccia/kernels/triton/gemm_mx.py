"""MXFP8 GEMM for GPUs without MX tensor cores (sm89, sm90).

``out = (qa * 2**(ea-127)) @ (qb * 2**(eb-127))``: ``qa`` (M, K) and ``qb``
(K, N) FP8, one e8m0 scale per 32 along K (``ea`` (M, ceil(K/32)), ``eb``
(ceil(K/32), N)). Hopper's tensor cores take no block scales. Three loops:

- variant 5, asynchronous FP8 wgmma (Hopper, Gluon; the default at large M):
  a TMA ring of K steps (A (BM, BK), B^T (BN, BK), and the scales decoded to
  fp32 beforehand, (BK/32, BM) and (BK/32, BN)); in a step, each 32-wide
  slice is one asynchronous FP8 wgmma into a fresh fp32 tile, and slice s-1
  is folded, ``acc += p * (sa[:, None] * sb[None, :])``, while slice s's MMA
  runs. The fold (two fp32 instructions per output element per 32 of K,
  twice the FP8 MMA's time on an H100) is what bounds it: about 0.6x bf16.
  Needs K-contiguous payloads with 16-byte aligned rows (``wgmma_ok``).
- variant 0, FP8 dots: the same fold through ``tl.dot``, one dot per 32-wide
  slice, SUB = BLOCK_K / 32 slices a step, unrolled. Triton waits for each
  dot before folding it, so the MMA and the fold never overlap. Portable
  (any strides, sm89+, the interpreter): the tuner's reference. Split-K
  (decode) runs more such chains at once.
- variant 4, bf16 dots: both tiles are decoded in registers (``q * 2**e`` is
  exact in bf16 for every e4m3/e5m2 value and any scale that keeps the
  product a normal bf16 number) and multiplied by a bf16 ``tl.dot`` over the
  whole step, accumulating in place: no fold, but the decode and Triton's
  synchronous dot on a register operand cap it near 0.27x bf16. With split-K
  it is the fastest at decode.

(Variants 1-3 -- TMA loads, warp specialization and a hand-pipelined fold of
the ``tl.dot`` loop -- were measured slower on an H100 and removed;
docs/kernels.md has the numbers.)

e8m0 decoding is exact and matches :func:`breccia.formats.decode_e8m0`: the
byte is the fp32 exponent field, 0 is 2**-127 (subnormal), 255 is NaN.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .gemm_blockwise import (
    Config,
    Tuner,
    interpreting,
    _empty_product,
    _k_range,
    _store_tile,
    _tile_ids,
    m_bucket,
    reduce_split_k,
    split_k_output,
)

try:  # Gluon: Triton's explicit-layout dialect (asynchronous wgmma); variant 5 needs it
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as _GluonDescriptor

    _GLUON = True
except Exception:  # an older or newer Triton without this API: variants 0 and 4 only
    _GLUON = False

__all__ = ["mx_mm"]

#: elements per e8m0 scale along K (OCP MX)
MX_BLOCK = 32


def _candidates(m: int, n: int, k: int, tma: bool = False) -> list[Config]:
    # ``tma``: the operands suit variant 5 (``wgmma_ok``: Hopper, Gluon,
    # K-contiguous payloads); it never runs under the interpreter. The last
    # candidate is the portable FP8-dot config (the tuner's reference). The
    # lists keep what won somewhere on an H100 (benchmarks/results/gemm-h100.md):
    # variant 5 at large M (2.2-2.4x variant 4); bf16 dots with split-K at
    # decode, where variant 5 measured 0.2-1x of them; variants 4 and 0 also
    # serve operands variant 5 cannot read.
    if m <= 64:
        bm = 16 if m <= 16 else 64
        return [Config(bm, 64, 128, 4, 4, 4, 4), Config(bm, 64, 128, 4, 5, 0, 4), Config(bm, 64, 128, 4, 5)]
    if m <= 256:
        return [Config(64, 128, 64, 4, 4, 4), Config(64, 128, 128, 4, 4)]
    v5 = [
        Config(128, 128, 256, 8, 3, 5),
        Config(64, 128, 256, 4, 2, 5),
        Config(128, 128, 128, 8, 5, 5),
        Config(64, 128, 128, 4, 4, 5),
    ]  # fmt: skip
    v5 = v5 if tma and not interpreting() else []
    return v5 + [Config(128, 256, 64, 8, 3, 4), Config(128, 128, 64, 8, 4, 4), Config(64, 128, 128, 4, 4)]


_TUNER = Tuner()


def _dot_dtype():
    # Triton's interpreter multiplies bf16 tiles wrongly (3.9): the CPU tests
    # run variant 4's dot in fp32, which checks the same decoding
    return tl.float32 if interpreting() else tl.bfloat16


@triton.jit
def _e8m0_to_f32(e):
    """Exact 2**(e-127) from e8m0 bytes: the byte is the fp32 exponent field."""
    e = e.to(tl.int32)
    # 0 -> 2**-127 (fp32 subnormal, bit 22); 255 -> a quiet NaN
    bits = tl.where(e == 0, 1 << 22, tl.where(e == 255, 0x7FC00000, e << 23))
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _mx_kernel(
    a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr, bias_ptr,
    M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
    stride_sam, stride_sak, stride_sbk, stride_sbn, stride_cs,
    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, BF16_DOT: tl.constexpr, DOT_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, SCALE_K: tl.constexpr,
):  # fmt: skip
    """Variants 0 and 4 (``BF16_DOT``). Program (tile, s) of a split-K grid
    covers its share of the K steps and writes an fp32 partial tile at
    ``c_ptr + s * stride_cs``."""
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    kt0, kt1 = _k_range(K, BLOCK_K)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # wrap ragged edges on load, mask the store; int64 offsets for big operands
    ram = (rm % M).to(tl.int64)
    rbn = (rn % N).to(tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)

    if BF16_DOT:
        rk = tl.arange(0, BLOCK_K)
        a_ptrs = a_ptr + ram[:, None] * stride_am + rk[None, :] * stride_ak
        b_ptrs = b_ptr + rk[:, None] * stride_bk + rbn[None, :] * stride_bn
        # each element's scale, gathered (32 neighbours share one byte)
        ea_ptrs = sa_ptr + ram[:, None] * stride_sam + (rk // SCALE_K)[None, :] * stride_sak
        eb_ptrs = sb_ptr + (rk // SCALE_K)[:, None] * stride_sbk + rbn[None, :] * stride_sbn
        for kt in range(kt0, kt1):
            k_off = kt * BLOCK_K
            s_off = kt * (BLOCK_K // SCALE_K)
            if EVEN_K:
                a = tl.load(a_ptrs + k_off * stride_ak)
                b = tl.load(b_ptrs + k_off * stride_bk)
                ea = tl.load(ea_ptrs + s_off * stride_sak)
                eb = tl.load(eb_ptrs + s_off * stride_sbk)
            else:  # past K: zero payload, scale byte 127 (1.0)
                k_ok = rk < K - k_off
                a = tl.load(a_ptrs + k_off * stride_ak, mask=k_ok[None, :], other=0.0)
                b = tl.load(b_ptrs + k_off * stride_bk, mask=k_ok[:, None], other=0.0)
                ea = tl.load(ea_ptrs + s_off * stride_sak, mask=k_ok[None, :], other=127)
                eb = tl.load(eb_ptrs + s_off * stride_sbk, mask=k_ok[:, None], other=127)
            af = (a.to(tl.float32) * _e8m0_to_f32(ea)).to(DOT_DTYPE)
            bf = (b.to(tl.float32) * _e8m0_to_f32(eb)).to(DOT_DTYPE)
            acc = tl.dot(af, bf, acc)
    else:
        SUB: tl.constexpr = BLOCK_K // SCALE_K
        rk = tl.arange(0, SCALE_K)
        a_ptrs = a_ptr + ram[:, None] * stride_am + rk[None, :] * stride_ak
        b_ptrs = b_ptr + rk[:, None] * stride_bk + rbn[None, :] * stride_bn
        sa_ptrs = sa_ptr + ram * stride_sam
        sb_ptrs = sb_ptr + rbn * stride_sbn
        for kt in range(kt0, kt1):
            for s in tl.static_range(SUB):
                k0 = kt * BLOCK_K + s * SCALE_K
                if EVEN_K:
                    a = tl.load(a_ptrs + k0 * stride_ak)
                    b = tl.load(b_ptrs + k0 * stride_bk)
                    ks = k0 // SCALE_K
                else:  # slices past K load zero payload and the last scale again
                    k_left = K - k0
                    a = tl.load(a_ptrs + k0 * stride_ak, mask=rk[None, :] < k_left, other=0.0)
                    b = tl.load(b_ptrs + k0 * stride_bk, mask=rk[:, None] < k_left, other=0.0)
                    ks = tl.minimum(k0 // SCALE_K, tl.cdiv(K, SCALE_K) - 1)
                sa = _e8m0_to_f32(tl.load(sa_ptrs + ks * stride_sak))
                sb = _e8m0_to_f32(tl.load(sb_ptrs + ks * stride_sbk))
                p = tl.dot(a, b)
                acc += p * (sa[:, None] * sb[None, :])

    c_ptr += tl.program_id(1).to(tl.int64) * stride_cs
    _store_tile(acc, c_ptr, bias_ptr, rm, rn, M, N, stride_cm, stride_cn, HAS_BIAS)


# --------------------------------------------------------------------------- variant 5 (Gluon, sm90)


@triton.jit
def _decode_scales_kernel(e_ptr, out_ptr, R, C, stride_er, stride_ec, stride_or,
                          BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    """``out[r, c] = 2**(e[r, c] - 127)`` as fp32 (exact, NaN for 255): the
    scales as variant 5 reads them, one float per 32 of K."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = (r[:, None] < R) & (c[None, :] < C)
    e = tl.load(e_ptr + r[:, None] * stride_er + c[None, :] * stride_ec, mask=ok, other=127)
    tl.store(out_ptr + r[:, None] * stride_or + c[None, :], _e8m0_to_f32(e), mask=ok)


def _decoded_scales(e: torch.Tensor, transpose: bool) -> torch.Tensor:
    """fp32 scales (K/32, rows of the operand), rows padded to 4 floats (TMA
    wants 16-byte aligned row strides): ``ea`` (M, K/32) is transposed,
    ``eb`` (K/32, N) is not."""
    src = e.t() if transpose else e
    r, c = src.shape
    out = torch.empty((r, (c + 3) // 4 * 4), dtype=torch.float32, device=e.device)
    grid = (triton.cdiv(r, 16), triton.cdiv(c, 128))
    _decode_scales_kernel[grid](src, out, r, c, src.stride(0), src.stride(1), out.stride(0),
                                BLOCK_R=16, BLOCK_C=128)  # fmt: skip
    return out[:, :c]


if _GLUON:

    @gluon.jit
    def _wg_load_step(a_desc, b_desc, sa_desc, sb_desc, a_smem, b_smem, sa_smem, sb_smem, ready,
                      step, n_k, off_m, off_n, BLOCK_K: gl.constexpr, STAGES: gl.constexpr):  # fmt: skip
        """TMA loads of K step ``step`` (payload tiles and their scales) into
        its ring slot, if the step exists."""
        SUB: gl.constexpr = BLOCK_K // 32
        slot = step % STAGES
        ok = step < n_k
        bar = ready.index(slot)
        nbytes: gl.constexpr = (a_desc.block_type.nbytes + b_desc.block_type.nbytes
                                + sa_desc.block_type.nbytes + sb_desc.block_type.nbytes)  # fmt: skip
        mbarrier.expect(bar, nbytes, pred=ok)
        tma.async_copy_global_to_shared(a_desc, [off_m, step * BLOCK_K], bar, a_smem.index(slot), pred=ok)
        tma.async_copy_global_to_shared(b_desc, [off_n, step * BLOCK_K], bar, b_smem.index(slot), pred=ok)
        tma.async_copy_global_to_shared(sa_desc, [step * SUB, off_m], bar, sa_smem.index(slot), pred=ok)
        tma.async_copy_global_to_shared(sb_desc, [step * SUB, off_n], bar, sb_smem.index(slot), pred=ok)

    @gluon.jit
    def _wg_fold(acc, p, sa_smem, sb_smem, slot, j, rows: gl.constexpr, cols: gl.constexpr):
        """``acc + p * sa[:, None] * sb[None, :]`` with slice ``j`` of ring
        slot ``slot``'s scales."""
        SUB: gl.constexpr = sa_smem.shape[1]
        flat: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[0])
        sa_v = sa_smem._reinterpret(gl.float32, [sa_smem.shape[0] * SUB, sa_smem.shape[2]], flat)
        sb_v = sb_smem._reinterpret(gl.float32, [sb_smem.shape[0] * SUB, sb_smem.shape[2]], flat)
        sa = sa_v.index(slot * SUB + j).load(rows)
        sb = sb_v.index(slot * SUB + j).load(cols)
        return acc + p * (gl.expand_dims(sa, 1) * gl.expand_dims(sb, 0))

    @gluon.jit
    def _mx_wgmma_kernel(
        a_desc, b_desc, sa_desc, sb_desc, c_ptr, bias_ptr, M, N, K, stride_cm, stride_cn,
        HAS_BIAS: gl.constexpr, STAGES: gl.constexpr, WARPS_N: gl.constexpr, GROUP_M: gl.constexpr,
        num_warps: gl.constexpr,
    ):  # fmt: skip
        """Variant 5: TMA ring of STAGES K steps (A (BM, BK), B^T (BN, BK),
        and their fp32 scales (BK/32, BM) and (BK/32, BN)); per step, one
        asynchronous FP8 wgmma per 32-wide slice into a fresh fp32 tile,
        the fold of slice s-1 overlapping the MMA of slice s."""
        BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
        BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
        BLOCK_N: gl.constexpr = b_desc.block_type.shape[0]
        SUB: gl.constexpr = BLOCK_K // 32
        pid = gl.program_id(0)
        num_m = gl.cdiv(M, BLOCK_M)
        num_n = gl.cdiv(N, BLOCK_N)
        per_group = GROUP_M * num_n
        first_m = (pid // per_group) * GROUP_M
        size_m = gl.minimum(num_m - first_m, GROUP_M)
        off_m = (first_m + (pid % per_group) % size_m) * BLOCK_M
        off_n = ((pid % per_group) // size_m) * BLOCK_N

        mma: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[num_warps // WARPS_N, WARPS_N],
            instr_shape=[16, BLOCK_N // WARPS_N, 32],
        )  # fmt: skip
        rows: gl.constexpr = gl.SliceLayout(1, mma)
        cols: gl.constexpr = gl.SliceLayout(0, mma)
        a_smem = gl.allocate_shared_memory(a_desc.dtype, [STAGES, BLOCK_M, BLOCK_K], a_desc.layout)
        b_smem = gl.allocate_shared_memory(b_desc.dtype, [STAGES, BLOCK_N, BLOCK_K], b_desc.layout)
        sa_smem = gl.allocate_shared_memory(gl.float32, [STAGES, SUB, BLOCK_M], sa_desc.layout)
        sb_smem = gl.allocate_shared_memory(gl.float32, [STAGES, SUB, BLOCK_N], sb_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
        n_k = gl.cdiv(K, BLOCK_K)
        for i in gl.static_range(STAGES):
            _wg_load_step(a_desc, b_desc, sa_desc, sb_desc, a_smem, b_smem, sa_smem, sb_smem, ready,
                          i, n_k, off_m, off_n, BLOCK_K, STAGES)  # fmt: skip

        acc = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, mma)
        zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, mma)
        for kt in range(n_k):
            slot = kt % STAGES
            mbarrier.wait(ready.index(slot), (kt // STAGES) & 1)
            a_st = a_smem.index(slot)
            b_st = b_smem.index(slot)
            a_s = a_st.slice(0, 32, dim=1)
            b_s = b_st.slice(0, 32, dim=1).permute((1, 0))
            pending = warpgroup_mma(a_s, b_s, zero, use_acc=False, is_async=True)
            for s in gl.static_range(1, SUB):
                a_s = a_st.slice(s * 32, 32, dim=1)
                b_s = b_st.slice(s * 32, 32, dim=1).permute((1, 0))
                issued = warpgroup_mma(a_s, b_s, zero, use_acc=False, is_async=True)
                p = warpgroup_mma_wait(num_outstanding=1, deps=(pending,))
                acc = _wg_fold(acc, p, sa_smem, sb_smem, slot, s - 1, rows, cols)
                pending = issued
            p = warpgroup_mma_wait(num_outstanding=0, deps=(pending,))
            acc = _wg_fold(acc, p, sa_smem, sb_smem, slot, SUB - 1, rows, cols)
            # every warp is done with this slot: refill it with step kt + STAGES
            gl.thread_barrier()
            fence_async_shared()
            _wg_load_step(a_desc, b_desc, sa_desc, sb_desc, a_smem, b_smem, sa_smem, sb_smem, ready,
                          kt + STAGES, n_k, off_m, off_n, BLOCK_K, STAGES)  # fmt: skip
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(ready.index(i))

        if HAS_BIAS:
            rn = off_n + gl.arange(0, BLOCK_N, layout=cols)
            bias = gl.load(bias_ptr + rn, mask=rn < N, other=0.0)
            acc = acc + gl.expand_dims(bias.to(gl.float32), 0)
        out_layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
        out = gl.convert_layout(acc.to(c_ptr.dtype.element_ty), out_layout)
        om = off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, out_layout))
        on = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, out_layout))
        ptrs = c_ptr + gl.expand_dims(om.to(gl.int64) * stride_cm, 1) + gl.expand_dims(on * stride_cn, 0)
        gl.store(ptrs, out, mask=gl.expand_dims(om < M, 1) & gl.expand_dims(on < N, 0))


_GL_FP8 = {torch.float8_e4m3fn: "float8e4nv", torch.float8_e5m2: "float8e5"}


def wgmma_ok(qa: torch.Tensor, qb: torch.Tensor) -> bool:
    """Whether variant 5 can run: Gluon present, a Hopper GPU (wgmma), and
    both payloads K-contiguous with 16-byte aligned rows (TMA)."""
    if not _GLUON or interpreting() or qa.device.type != "cuda":
        return False
    if torch.cuda.get_device_capability(qa.device) != (9, 0):
        return False
    if qa.dtype not in _GL_FP8 or qb.dtype not in _GL_FP8:
        return False
    qbt = qb.t()
    return all(
        t.stride(1) == 1 and t.stride(0) % 16 == 0 and t.data_ptr() % 16 == 0 for t in (qa, qbt)
    )


def _launch_wgmma(qa, ea, qb, eb, c: Config, out_dtype, bias) -> torch.Tensor:
    bm, bn, bk, warps, stages = c[:5]
    if not wgmma_ok(qa, qb) or c.split_k != 1 or bk % 32 or (16 * warps) % bm or bn % ((16 * warps) // bm):
        raise ValueError(
            f"mx_mm: config {c!r} needs a Hopper GPU, Gluon and K-contiguous, 16-byte aligned payloads"
        )
    m, k = qa.shape
    n = qb.shape[1]
    kb = triton.cdiv(k, MX_BLOCK)
    qbt = qb.t()
    a_layout = gl.NVMMASharedLayout.get_default_for([bm, bk], getattr(gl, _GL_FP8[qa.dtype]))
    b_layout = gl.NVMMASharedLayout.get_default_for([bn, bk], getattr(gl, _GL_FP8[qb.dtype]))
    a_desc = _GluonDescriptor(qa, [m, k], [qa.stride(0), 1], [bm, bk], a_layout)
    b_desc = _GluonDescriptor(qbt, [n, k], [qbt.stride(0), 1], [bn, bk], b_layout)
    saf, sbf = _decoded_scales(ea, True), _decoded_scales(eb, False)
    flat = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=2)
    sa_desc = _GluonDescriptor(saf, [kb, m], [saf.stride(0), 1], [bk // MX_BLOCK, bm], flat)
    sb_desc = _GluonDescriptor(sbf, [kb, n], [sbf.stride(0), 1], [bk // MX_BLOCK, bn], flat)
    out = torch.empty((m, n), dtype=out_dtype, device=qa.device)
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
    _mx_wgmma_kernel[grid](
        a_desc, b_desc, sa_desc, sb_desc, out, bias if bias is not None else out, m, n, k,
        out.stride(0), out.stride(1), HAS_BIAS=bias is not None, STAGES=stages,
        WARPS_N=(16 * warps) // bm, GROUP_M=8, num_warps=warps,
    )  # fmt: skip
    return out


def mx_mm(
    qa: torch.Tensor,
    ea: torch.Tensor,
    qb: torch.Tensor,
    eb: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
    bias: Optional[torch.Tensor] = None,
    config: Optional[Config] = None,
) -> torch.Tensor:
    """``(qa * 2**(ea-127)) @ (qb * 2**(eb-127)) (+ bias)`` as ``out_dtype``.

    ``qa`` (M, K), ``qb`` (K, N) FP8, any strides (K-contiguous is fastest);
    ``ea`` (M, ceil(K/32)) and ``eb`` (ceil(K/32), N) e8m0 scales
    (``torch.float8_e8m0fnu`` or their uint8 bytes), any strides. ``config``
    forces a tile config (benchmarks, tests); otherwise the tuner picks one."""
    if qa.dim() != 2 or qb.dim() != 2 or qa.shape[1] != qb.shape[0]:
        raise ValueError(
            f"mx_mm: expected qa (M, K) and qb (K, N), got {tuple(qa.shape)} and {tuple(qb.shape)}"
        )
    m, k = qa.shape
    n = qb.shape[1]
    kb = triton.cdiv(k, MX_BLOCK)
    if tuple(ea.shape) != (m, kb) or tuple(eb.shape) != (kb, n):
        raise ValueError(
            f"mx_mm: expected scales ea {(m, kb)} and eb {(kb, n)} for M, N, K = {m}, {n}, {k}, "
            f"got {tuple(ea.shape)} and {tuple(eb.shape)}"
        )
    if ea.element_size() != 1 or eb.element_size() != 1:
        raise ValueError(f"mx_mm: expected e8m0 (1-byte) scales, got {ea.dtype} and {eb.dtype}")
    ea, eb = ea.view(torch.uint8), eb.view(torch.uint8)
    done = _empty_product(m, n, k, torch.empty((m, n), dtype=out_dtype, device=qa.device), bias)
    if done is not None:
        return done
    bias_arg = bias if bias is not None else ea  # never read without HAS_BIAS

    def launch(c: Config) -> torch.Tensor:
        if c.variant == 5:
            return _launch_wgmma(qa, ea, qb, eb, c, out_dtype, bias)
        meta = c.meta
        o, split = split_k_output(m, n, c.split_k, out_dtype, qa.device)
        grid = (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]), split)
        _mx_kernel[grid](
            qa, qb, o, ea, eb, bias_arg, m, n, k,
            qa.stride(0), qa.stride(1), qb.stride(0), qb.stride(1), o.stride(-2), o.stride(-1),
            ea.stride(0), ea.stride(1), eb.stride(0), eb.stride(1), o.stride(0) if split > 1 else 0,
            HAS_BIAS=bias is not None and split == 1, EVEN_K=k % meta["BLOCK_K"] == 0,
            BF16_DOT=c.variant == 4, DOT_DTYPE=_dot_dtype(), GROUP_M=8, SCALE_K=MX_BLOCK, **meta,
        )  # fmt: skip
        return reduce_split_k(o, split, bias, out_dtype)

    if config is None:
        wg = wgmma_ok(qa, qb)
        key = ("mx", m_bucket(m), n, k, qa.dtype, qb.dtype, out_dtype, wg, qa.device)
        config = _TUNER.pick(key, _candidates(m, n, k, wg), launch)
    return launch(config)
