"""Block-scaled FP8 GEMM on Hopper's asynchronous wgmma (Gluon), shared by
the MXFP8 GEMM (a scale per 32 of K) and the DeepSeek blockwise GEMM (a
scale per 128 of K).

``out = sum_g (A_g @ B_g) * sa[g][:, None] * sb[g][None, :]`` over K slices
``g`` of ``SLICE`` elements. Hopper's tensor cores take no block scales, so
each slice is one asynchronous FP8 wgmma into a fresh fp32 tile and is folded
into the accumulator on the CUDA cores while the step's next slice's MMA
runs (a step of one slice, BLOCK_K = SLICE, folds after its MMA).

Operands come through a TMA ring of STAGES K steps: A (BM, BK), B^T (BN, BK),
the A scales transposed as fp32 (K/SLICE, M) and, unless the weight's scale
is one number per tile and slice (``SB_SCALAR``: 128-wide weight blocks and
BN <= 128, read with a broadcast load), the B scales per column as fp32
(K/SLICE, N). The fold costs two fp32 instructions per output element per
slice (one with ``SB_SCALAR``); at SLICE = 32 that is about twice the FP8
MMA's time on an H100, at 128 about half of it.

Needs Gluon (Triton's explicit-layout dialect), an sm90 GPU and K-contiguous
payloads with 16-byte aligned rows (:func:`wgmma_ok`); never runs under the
interpreter.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton

from .gemm_blockwise import Config, interpreting

from .gluon_compat import HAS_GLUON as _HAS_GLUON_CORE, cta_barrier, gl, gluon

try:  # Gluon's Hopper part (asynchronous wgmma, TMA)
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as _GluonDescriptor

    # renamed in later Triton releases (the H100 image has 3.6, this package allows newer)
    _tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
    HAS_GLUON = _HAS_GLUON_CORE
except Exception:  # an older or newer Triton without this API: the callers' other variants only
    HAS_GLUON = False

__all__ = ["HAS_GLUON", "wgmma_ok", "scaled_wgmma_mm", "tma_rows", "empty_tma_rows"]

_GL_FP8 = {torch.float8_e4m3fn: "float8e4nv", torch.float8_e5m2: "float8e5"}


def wgmma_ok(qa: torch.Tensor, qb: torch.Tensor) -> bool:
    """Whether the kernel can run: Gluon present, a Hopper GPU (wgmma), and
    both payloads (``qa`` (M, K), ``qb`` (K, N)) K-contiguous with 16-byte
    aligned rows (TMA)."""
    if not HAS_GLUON or interpreting() or qa.device.type != "cuda":
        return False
    if torch.cuda.get_device_capability(qa.device) != (9, 0):
        return False
    if qa.dtype not in _GL_FP8 or qb.dtype not in _GL_FP8:
        return False
    qbt = qb.t()
    return all(
        t.stride(1) == 1 and t.stride(0) % 16 == 0 and t.data_ptr() % 16 == 0 for t in (qa, qbt)
    )


def empty_tma_rows(r: int, c: int, device) -> torch.Tensor:
    """An uninitialised (r, c) fp32 grid whose rows are padded to 16 bytes
    (TMA wants 16-byte aligned row strides)."""
    return torch.empty((r, (c + 3) // 4 * 4), dtype=torch.float32, device=device)[:, :c]


def tma_rows(s: torch.Tensor) -> torch.Tensor:
    """A 2-D fp32 scale grid as the kernel's TMA reads it: rows contiguous,
    16-byte aligned row stride -- ``s`` itself when it already is (e.g. the
    transpose of an outer-dim-major ``ScaleColumnMajor`` grid), else one copy."""
    if s.stride(1) == 1 and s.stride(0) % 4 == 0 and s.data_ptr() % 16 == 0:
        return s
    return empty_tma_rows(*s.shape, s.device).copy_(s)


if HAS_GLUON:

    @gluon.jit
    def _load_step(a_desc, b_desc, sa_desc, sb_desc, a_smem, b_smem, sa_smem, sb_smem, ready,
                   step, n_k, off_m, off_n, SUB: gl.constexpr, SB_SCALAR: gl.constexpr,
                   STAGES: gl.constexpr):  # fmt: skip
        """TMA loads of K step ``step`` (payload tiles and their scales) into
        its ring slot, if the step exists."""
        BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
        slot = step % STAGES
        ok = step < n_k
        bar = ready.index(slot)
        nbytes: gl.constexpr = a_desc.block_type.nbytes + b_desc.block_type.nbytes + sa_desc.block_type.nbytes
        if SB_SCALAR:
            mbarrier.expect(bar, nbytes, pred=ok)
        else:
            mbarrier.expect(bar, nbytes + sb_desc.block_type.nbytes, pred=ok)
            _tma_load(sb_desc, [step * SUB, off_n], bar, sb_smem.index(slot), pred=ok)
        _tma_load(a_desc, [off_m, step * BLOCK_K], bar, a_smem.index(slot), pred=ok)
        _tma_load(b_desc, [off_n, step * BLOCK_K], bar, b_smem.index(slot), pred=ok)
        _tma_load(sa_desc, [step * SUB, off_m], bar, sa_smem.index(slot), pred=ok)

    @gluon.jit
    def _issue(a_smem, b_smem, slot, j, zero, SLICE: gl.constexpr):
        """The asynchronous wgmma of slice ``j`` of ring slot ``slot``."""
        a_s = a_smem.index(slot).slice(j * SLICE, SLICE, dim=1)
        b_s = b_smem.index(slot).slice(j * SLICE, SLICE, dim=1).permute((1, 0))
        return warpgroup_mma(a_s, b_s, zero, use_acc=False, is_async=True)

    # a ring of scale rows (STAGES, SUB, R) viewed flat (STAGES * SUB, R), one row per slice
    # (the method lost its underscore in later Triton releases)
    if hasattr(gl.shared_memory_descriptor, "reinterpret"):

        @gluon.jit
        def _slice_rows(smem):
            flat: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[0])
            return smem.reinterpret(gl.float32, [smem.shape[0] * smem.shape[1], smem.shape[2]], flat)

    else:

        @gluon.jit
        def _slice_rows(smem):
            flat: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[0])
            return smem._reinterpret(gl.float32, [smem.shape[0] * smem.shape[1], smem.shape[2]], flat)

    @gluon.jit
    def _fold(acc, p, sa_smem, sb_smem, sb_row, slot, j, rows: gl.constexpr, cols: gl.constexpr,
              SB_SCALAR: gl.constexpr):  # fmt: skip
        """``acc + p * sa[:, None] * sb[None, :]`` with slice ``j`` of ring
        slot ``slot``'s scales (``sb_row``: the weight's scale broadcast over
        the rows, with ``SB_SCALAR``)."""
        SUB: gl.constexpr = sa_smem.shape[1]
        sa = _slice_rows(sa_smem).index(slot * SUB + j).load(rows)
        if SB_SCALAR:  # one FMA an element
            out = acc + p * gl.expand_dims(sa * sb_row, 1)
        else:
            sb = _slice_rows(sb_smem).index(slot * SUB + j).load(cols)
            out = acc + p * (gl.expand_dims(sa, 1) * gl.expand_dims(sb, 0))
        return out

    @gluon.jit
    def _scaled_wgmma_kernel(
        a_desc, b_desc, sa_desc, sb_desc, sb_ptr, c_ptr, bias_ptr, M, N, K, stride_cm, stride_cn,
        stride_sbk, stride_sbn,
        SLICE: gl.constexpr, SB_SCALAR: gl.constexpr, SB_BLOCK_N: gl.constexpr, HAS_BIAS: gl.constexpr,
        STAGES: gl.constexpr, WARPS_N: gl.constexpr, GROUP_M: gl.constexpr, num_warps: gl.constexpr,
    ):  # fmt: skip
        BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
        BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
        BLOCK_N: gl.constexpr = b_desc.block_type.shape[0]
        SUB: gl.constexpr = BLOCK_K // SLICE
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
        if SB_SCALAR:  # read from global memory instead (sb_smem is never touched)
            sb_smem = sa_smem
        else:
            sb_smem = gl.allocate_shared_memory(gl.float32, [STAGES, SUB, BLOCK_N], sb_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
        n_k = gl.cdiv(K, BLOCK_K)
        for i in gl.static_range(STAGES):
            _load_step(a_desc, b_desc, sa_desc, sb_desc, a_smem, b_smem, sa_smem, sb_smem, ready,
                       i, n_k, off_m, off_n, SUB, SB_SCALAR, STAGES)  # fmt: skip
        # the weight's scale of slice g sits at sb_row_ptr + g * stride_sbk (SB_SCALAR),
        # and is loaded one slice ahead of its fold (a global load's latency would stall the fold)
        sb_row_ptr = sb_ptr + (off_n // SB_BLOCK_N) * stride_sbn + gl.zeros([BLOCK_M], gl.int32, rows)
        last_g = n_k * SUB - 1
        sb_row = gl.zeros([BLOCK_M], gl.float32, rows)
        sb_next = sb_row
        if SB_SCALAR:
            sb_next = gl.load(sb_row_ptr)

        acc = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, mma)
        zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, mma)
        # per step: issue slice s, then fold slice s - 1 while it runs; the step's last slice
        # is waited for inside the step (an MMA kept in flight across the loop's back edge
        # makes ptxas serialize every wgmma)
        for kt in range(n_k):
            slot = kt % STAGES
            mbarrier.wait(ready.index(slot), (kt // STAGES) & 1)
            pending = _issue(a_smem, b_smem, slot, 0, zero, SLICE)
            for s in gl.static_range(1, SUB):
                issued = _issue(a_smem, b_smem, slot, s, zero, SLICE)
                if SB_SCALAR:
                    sb_row = sb_next  # slice kt * SUB + s - 1's
                    sb_next = gl.load(sb_row_ptr + gl.minimum(kt * SUB + s, last_g) * stride_sbk)
                p = warpgroup_mma_wait(num_outstanding=1, deps=(pending,))
                acc = _fold(acc, p, sa_smem, sb_smem, sb_row, slot, s - 1, rows, cols, SB_SCALAR)
                pending = issued
            if SB_SCALAR:
                sb_row = sb_next  # the step's last slice's
                sb_next = gl.load(sb_row_ptr + gl.minimum(kt * SUB + SUB, last_g) * stride_sbk)
            p = warpgroup_mma_wait(num_outstanding=0, deps=(pending,))
            acc = _fold(acc, p, sa_smem, sb_smem, sb_row, slot, SUB - 1, rows, cols, SB_SCALAR)
            # every warp is done with this slot: refill it with step kt + STAGES
            cta_barrier()
            fence_async_shared()
            _load_step(a_desc, b_desc, sa_desc, sb_desc, a_smem, b_smem, sa_smem, sb_smem, ready,
                       kt + STAGES, n_k, off_m, off_n, SUB, SB_SCALAR, STAGES)  # fmt: skip
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


def scaled_wgmma_mm(
    qa: torch.Tensor,
    qb: torch.Tensor,
    sa_t: torch.Tensor,
    sb: torch.Tensor,
    slice_k: int,
    c: Config,
    out_dtype: torch.dtype,
    bias: Optional[torch.Tensor],
    sb_block_n: int = 1,
) -> torch.Tensor:
    """``sum_g (qa_g @ qb_g) * sa_t[g][:, None] * sb[g, n // sb_block_n]``
    (+ bias) over K slices ``g`` of ``slice_k``.

    ``qa`` (M, K), ``qb`` (K, N) FP8 with :func:`wgmma_ok`; ``sa_t``
    (K/slice, M) fp32 through :func:`tma_rows`; ``sb`` fp32
    (K/slice, N / sb_block_n): per column (``sb_block_n`` 1, through
    :func:`tma_rows`) or per block of columns (then ``sb_block_n`` must be a multiple of
    the tile's BLOCK_N, which makes it one number a tile and slice, any
    strides). ``c``: (BM, BN, BK, warps, stages) with BK a multiple of
    ``slice_k``."""
    bm, bn, bk, warps, stages = c[:5]
    warps_n = (16 * warps) // bm if bm else 0
    if (
        not wgmma_ok(qa, qb) or c.split_k != 1 or bk % slice_k or (16 * warps) % bm
        or bn % max(warps_n, 1) or (sb_block_n > 1 and sb_block_n % bn)
    ):  # fmt: skip
        raise ValueError(
            f"scaled_wgmma_mm: config {c!r} (slice {slice_k}, weight scale blocks {sb_block_n}) needs a Hopper "
            "GPU, Gluon, K-contiguous 16-byte aligned payloads and BK a multiple of the slice"
        )
    m, k = qa.shape
    n = qb.shape[1]
    kb = triton.cdiv(k, slice_k)
    qbt = qb.t()
    a_layout = gl.NVMMASharedLayout.get_default_for([bm, bk], getattr(gl, _GL_FP8[qa.dtype]))
    b_layout = gl.NVMMASharedLayout.get_default_for([bn, bk], getattr(gl, _GL_FP8[qb.dtype]))
    a_desc = _GluonDescriptor(qa, [m, k], [qa.stride(0), 1], [bm, bk], a_layout)
    b_desc = _GluonDescriptor(qbt, [n, k], [qbt.stride(0), 1], [bn, bk], b_layout)
    flat = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=2)
    sa_desc = _GluonDescriptor(sa_t, [kb, m], [sa_t.stride(0), 1], [bk // slice_k, bm], flat)
    scalar = sb_block_n > 1
    sb_desc = sa_desc if scalar else _GluonDescriptor(sb, [kb, n], [sb.stride(0), 1], [bk // slice_k, bn], flat)
    out = torch.empty((m, n), dtype=out_dtype, device=qa.device)
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
    _scaled_wgmma_kernel[grid](
        a_desc, b_desc, sa_desc, sb_desc, sb, out, bias if bias is not None else out, m, n, k,
        out.stride(0), out.stride(1), sb.stride(0), sb.stride(1),
        SLICE=slice_k, SB_SCALAR=scalar, SB_BLOCK_N=max(sb_block_n, 1), HAS_BIAS=bias is not None,
        STAGES=stages, WARPS_N=warps_n, GROUP_M=8, num_warps=warps,
    )  # fmt: skip
    return out
