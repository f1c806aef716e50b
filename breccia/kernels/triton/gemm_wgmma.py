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

Two loops share that scheme (``Config.variant``):

- variant 5: one program a tile, whose warps (one or two warpgroups) also
  issue the TMA loads of the next step between K steps (a CTA barrier a step);
- variant 6 (:data:`WS_VARIANT`): persistent (one program an SM, walking the
  tiles) and warp-specialized: a loader warpgroup keeps the ring full, and
  two consumer warpgroups (64 rows of a 128-row tile each) release a slot
  through an mbarrier when done with it. The consumers never wait for each
  other, so one folds while the other's MMA runs, and the loader fetches the
  next tile's operands during the epilogue.

Needs Gluon (Triton's explicit-layout dialect), an sm90 GPU and K-contiguous
payloads with 16-byte aligned rows (:func:`wgmma_ok`); never runs under the
interpreter.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

from .gemm_blockwise import Config
from .gluon_compat import HAS_GLUON as _HAS_GLUON_CORE, cta_barrier, gl, gluon
from .launch import cdiv, device_facts, fast, interpreting

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

__all__ = ["HAS_GLUON", "WS_VARIANT", "wgmma_ok", "scaled_wgmma_mm", "tma_rows", "empty_tma_rows"]

#: the Config variant that runs the warp-specialized persistent kernel (BM 128, 4 warps a consumer)
WS_VARIANT = 6

_GL_FP8 = {torch.float8_e4m3fn: "float8e4nv", torch.float8_e5m2: "float8e5"}


def wgmma_ok(qa: torch.Tensor, qb: torch.Tensor) -> bool:
    """Whether the kernel can run: Gluon present, a Hopper GPU (wgmma), and
    both payloads (``qa`` (M, K), ``qb`` (K, N)) K-contiguous with 16-byte
    aligned rows (TMA)."""
    if not HAS_GLUON or interpreting() or qa.device.type != "cuda":
        return False
    if device_facts(qa.device)[0] != (9, 0):
        return False
    if qa.dtype not in _GL_FP8 or qb.dtype not in _GL_FP8:
        return False
    qbt = qb.t()
    return all(
        t.stride(1) == 1 and t.stride(0) % 16 == 0 and t.data_ptr() % 16 == 0 for t in (qa, qbt)
    )


# Per-call host work is cached: at 4096^3 a launch's host time is close to the kernel's.


@functools.lru_cache(maxsize=None)
def _smem_layouts(bm: int, bn: int, bk: int, a_dtype: torch.dtype, b_dtype: torch.dtype) -> tuple:
    """The swizzled shared layouts of the A (bm, bk) and B^T (bn, bk) tiles,
    and the flat one of the fp32 scale rows."""
    return (
        gl.NVMMASharedLayout.get_default_for([bm, bk], getattr(gl, _GL_FP8[a_dtype])),
        gl.NVMMASharedLayout.get_default_for([bn, bk], getattr(gl, _GL_FP8[b_dtype])),
        gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=2),
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
    if s.shape[1] % 4 == 0:  # rows already 16-byte multiples: one copy into fresh (aligned) storage
        return s.clone(memory_format=torch.contiguous_format)
    return empty_tma_rows(*s.shape, s.device).copy_(s)


if HAS_GLUON:

    @gluon.jit
    def _tile_origin(tile, M, N, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, GROUP_M: gl.constexpr):
        """Tile ``tile``'s first row and column, GROUP_M row tiles a column
        sweep (L2 reuse of the weight)."""
        num_m = gl.cdiv(M, BLOCK_M)
        per_group = GROUP_M * gl.cdiv(N, BLOCK_N)
        first_m = (tile // per_group) * GROUP_M
        size_m = gl.minimum(num_m - first_m, GROUP_M)
        return (first_m + (tile % per_group) % size_m) * BLOCK_M, ((tile % per_group) // size_m) * BLOCK_N

    @gluon.jit
    def _load_step(a_desc, b_desc, sa_desc, sb_desc, a_smem, b_smem, sa_smem, sb_smem, ready, slot, kt, ok,
                   off_m, off_n, SB_SCALAR: gl.constexpr):  # fmt: skip
        """TMA loads of K step ``kt`` (payload tiles and their scales) into
        ring slot ``slot``, if ``ok``."""
        BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
        SUB: gl.constexpr = sa_smem.shape[1]
        bar = ready.index(slot)
        nbytes: gl.constexpr = a_desc.block_type.nbytes + b_desc.block_type.nbytes + sa_desc.block_type.nbytes
        if SB_SCALAR:
            mbarrier.expect(bar, nbytes, pred=ok)
        else:
            mbarrier.expect(bar, nbytes + sb_desc.block_type.nbytes, pred=ok)
            _tma_load(sb_desc, [kt * SUB, off_n], bar, sb_smem.index(slot), pred=ok)
        _tma_load(a_desc, [off_m, kt * BLOCK_K], bar, a_smem.index(slot), pred=ok)
        _tma_load(b_desc, [off_n, kt * BLOCK_K], bar, b_smem.index(slot), pred=ok)
        _tma_load(sa_desc, [kt * SUB, off_m], bar, sa_smem.index(slot), pred=ok)

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
    def _fold(acc, p, sa_smem, sb_smem, sb_row, g, row0: gl.constexpr, rows: gl.constexpr,
              cols: gl.constexpr, SB_SCALAR: gl.constexpr):  # fmt: skip
        """``acc + p * sa[:, None] * sb[None, :]`` with the scales of ring row
        ``g`` (slot * SUB + slice), the activation's from tile row ``row0`` on
        (``sb_row``: the weight's scale broadcast over the rows, with
        ``SB_SCALAR``)."""
        sa = _slice_rows(sa_smem).index(g).slice(row0, acc.shape[0]).load(rows)
        if SB_SCALAR:  # one FMA an element
            out = acc + p * gl.expand_dims(sa * sb_row, 1)
        else:
            sb = _slice_rows(sb_smem).index(g).load(cols)
            out = acc + p * (gl.expand_dims(sa, 1) * gl.expand_dims(sb, 0))
        return out

    @gluon.jit
    def _weight_scale_start(sb_ptr, off_n, stride_sbn, R: gl.constexpr, SB_BLOCK_N: gl.constexpr,
                            SB_SCALAR: gl.constexpr, rows: gl.constexpr):  # fmt: skip
        """``(sb_row_ptr, sb_next)`` for :func:`_k_step` at a tile's first K
        step: the weight scales' pointer broadcast over ``R`` rows, and (with
        ``SB_SCALAR``) slice 0's scale."""
        sb_row_ptr = sb_ptr + (off_n // SB_BLOCK_N) * stride_sbn + gl.zeros([R], gl.int32, rows)
        sb_next = gl.zeros([R], gl.float32, rows)
        if SB_SCALAR:
            sb_next = gl.load(sb_row_ptr)
        return sb_row_ptr, sb_next

    @gluon.jit
    def _add_bias(acc, bias_ptr, off_n, N, cols: gl.constexpr):
        """``acc`` plus the bias of its columns (from ``off_n``), in fp32."""
        rn = off_n + gl.arange(0, acc.shape[1], layout=cols)
        bias = gl.load(bias_ptr + rn, mask=rn < N, other=0.0)
        return acc + gl.expand_dims(bias.to(gl.float32), 0)

    @gluon.jit
    def _k_step(acc, a_s, b_s, sa_smem, sb_smem, g_ring, g, row0: gl.constexpr, zero, sb_next, sb_row_ptr,
                stride_sbk, last_g, SLICE: gl.constexpr, SB_SCALAR: gl.constexpr, rows: gl.constexpr,
                cols: gl.constexpr):  # fmt: skip
        """One K step out of ring tiles ``a_s`` (rows, BK) and ``b_s`` (BN, BK):
        issue slice s, then fold slice s - 1 while it runs; the step's last
        slice is waited for inside the step (an MMA kept in flight across the
        loop's back edge makes ptxas serialize every wgmma). ``g_ring``: the
        ring row of the step's first slice's scales, ``g``: that slice's index
        along K. With ``SB_SCALAR`` the weight's scale of slice g sits at
        ``sb_row_ptr + g * stride_sbk`` and is loaded one slice ahead of its
        fold (a global load's latency would stall it): ``sb_next`` comes in
        holding slice g's, and goes out holding the next step's first."""
        SUB: gl.constexpr = a_s.shape[1] // SLICE
        sb_row = sb_next
        pending = warpgroup_mma(a_s.slice(0, SLICE, dim=1), b_s.slice(0, SLICE, dim=1).permute((1, 0)), zero,
                                use_acc=False, is_async=True)  # fmt: skip
        for s in gl.static_range(1, SUB):
            issued = warpgroup_mma(a_s.slice(s * SLICE, SLICE, dim=1), b_s.slice(s * SLICE, SLICE, dim=1).permute(
                (1, 0)), zero, use_acc=False, is_async=True)  # fmt: skip
            if SB_SCALAR:
                sb_row = sb_next  # slice g + s - 1's
                sb_next = gl.load(sb_row_ptr + gl.minimum(g + s, last_g) * stride_sbk)
            p = warpgroup_mma_wait(num_outstanding=1, deps=(pending,))
            acc = _fold(acc, p, sa_smem, sb_smem, sb_row, g_ring + s - 1, row0, rows, cols, SB_SCALAR)
            pending = issued
        if SB_SCALAR:
            sb_row = sb_next  # the step's last slice's
            sb_next = gl.load(sb_row_ptr + gl.minimum(g + SUB, last_g) * stride_sbk)
        p = warpgroup_mma_wait(num_outstanding=0, deps=(pending,))
        acc = _fold(acc, p, sa_smem, sb_smem, sb_row, g_ring + SUB - 1, row0, rows, cols, SB_SCALAR)
        return acc, sb_next

    @gluon.jit
    def _tile_loop(a_desc, b_desc, sa_desc, sb_desc, a_smem, b_smem, sa_smem, sb_smem, ready, sb_ptr, c_ptr,
                   bias_ptr, M, N, K, stride_cm, stride_cn, stride_sbk, stride_sbn, SLICE: gl.constexpr,
                   SB_SCALAR: gl.constexpr, SB_BLOCK_N: gl.constexpr, HAS_BIAS: gl.constexpr, WARPS_N: gl.constexpr,
                   GROUP_M: gl.constexpr, num_warps: gl.constexpr):  # fmt: skip
        """Variant 5: this program's tile, its warps loading the ring too."""
        BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
        BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
        BLOCK_N: gl.constexpr = b_desc.block_type.shape[0]
        STAGES: gl.constexpr = a_smem.shape[0]
        SUB: gl.constexpr = BLOCK_K // SLICE
        off_m, off_n = _tile_origin(gl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
        mma: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[num_warps // WARPS_N, WARPS_N],
            instr_shape=[16, BLOCK_N // WARPS_N, 32],
        )  # fmt: skip
        rows: gl.constexpr = gl.SliceLayout(1, mma)
        cols: gl.constexpr = gl.SliceLayout(0, mma)
        n_k = gl.cdiv(K, BLOCK_K)
        for i in gl.static_range(STAGES):
            _load_step(a_desc, b_desc, sa_desc, sb_desc, a_smem, b_smem, sa_smem, sb_smem, ready, i % STAGES, i,
                       i < n_k, off_m, off_n, SB_SCALAR)  # fmt: skip
        sb_row_ptr, sb_next = _weight_scale_start(sb_ptr, off_n, stride_sbn, BLOCK_M, SB_BLOCK_N, SB_SCALAR, rows)
        acc = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, mma)
        zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, mma)
        for kt in range(n_k):
            slot = kt % STAGES
            mbarrier.wait(ready.index(slot), (kt // STAGES) & 1)
            acc, sb_next = _k_step(acc, a_smem.index(slot), b_smem.index(slot), sa_smem, sb_smem, slot * SUB,
                                   kt * SUB, 0, zero, sb_next, sb_row_ptr, stride_sbk, n_k * SUB - 1, SLICE,
                                   SB_SCALAR, rows, cols)  # fmt: skip
            # every warp is done with this slot: refill it with step kt + STAGES
            cta_barrier()
            fence_async_shared()
            _load_step(a_desc, b_desc, sa_desc, sb_desc, a_smem, b_smem, sa_smem, sb_smem, ready,
                       (kt + STAGES) % STAGES, kt + STAGES, kt + STAGES < n_k, off_m, off_n, SB_SCALAR)  # fmt: skip
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(ready.index(i))

        if HAS_BIAS:
            acc = _add_bias(acc, bias_ptr, off_n, N, cols)
        out_layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
        out = gl.convert_layout(acc.to(c_ptr.dtype.element_ty), out_layout)
        om = off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, out_layout))
        on = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, out_layout))
        ptrs = c_ptr + gl.expand_dims(om.to(gl.int64) * stride_cm, 1) + gl.expand_dims(on * stride_cn, 0)
        gl.store(ptrs, out, mask=gl.expand_dims(om < M, 1) & gl.expand_dims(on < N, 0))

    @gluon.jit
    def _ws_load(a_desc, b_desc, sa_desc, sb_desc, a_smem, b_smem, sa_smem, sb_smem, ready, empty,
                 M, N, K, SB_SCALAR: gl.constexpr, GROUP_M: gl.constexpr):  # fmt: skip
        """Variant 6's loader partition: fills the ring for every K step of
        every tile of this program, a slot once both consumers released it."""
        BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
        BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
        BLOCK_N: gl.constexpr = b_desc.block_type.shape[0]
        STAGES: gl.constexpr = a_smem.shape[0]
        n_k = gl.cdiv(K, BLOCK_K)
        num_tiles = gl.cdiv(M, BLOCK_M) * gl.cdiv(N, BLOCK_N)
        it = 0
        for tile in range(gl.program_id(0), num_tiles, gl.num_programs(0)):
            off_m, off_n = _tile_origin(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
            for kt in range(n_k):
                slot = it % STAGES
                # a fresh mbarrier counts as having completed the phase before phase 0
                mbarrier.wait(empty.index(slot), ((it // STAGES) & 1) ^ 1)
                _load_step(a_desc, b_desc, sa_desc, sb_desc, a_smem, b_smem, sa_smem, sb_smem, ready, slot, kt, True,
                           off_m, off_n, SB_SCALAR)  # fmt: skip
                it += 1

    @gluon.jit
    def _ws_consume(a_desc, b_desc, a_smem, b_smem, sa_smem, sb_smem, ready, empty, sb_ptr, c_ptr, bias_ptr,
                    M, N, K, stride_cm, stride_cn, stride_sbk, stride_sbn, SLICE: gl.constexpr,
                    SB_SCALAR: gl.constexpr, SB_BLOCK_N: gl.constexpr, HAS_BIAS: gl.constexpr,
                    GROUP_M: gl.constexpr, WG: gl.constexpr):  # fmt: skip
        """Variant 6's consumer partition (one warpgroup): rows ``WG * BM / 2``
        on of each tile; releases a slot once done with it. The two consumers
        share nothing but the ring, so one folds while the other's MMA runs."""
        BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
        BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
        BLOCK_N: gl.constexpr = b_desc.block_type.shape[0]
        HALF: gl.constexpr = BLOCK_M // 2
        STAGES: gl.constexpr = a_smem.shape[0]
        SUB: gl.constexpr = BLOCK_K // SLICE
        mma: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_N, 32]
        )  # fmt: skip
        rows: gl.constexpr = gl.SliceLayout(1, mma)
        cols: gl.constexpr = gl.SliceLayout(0, mma)
        n_k = gl.cdiv(K, BLOCK_K)
        num_tiles = gl.cdiv(M, BLOCK_M) * gl.cdiv(N, BLOCK_N)
        zero = gl.zeros([HALF, BLOCK_N], gl.float32, mma)
        it = 0
        for tile in range(gl.program_id(0), num_tiles, gl.num_programs(0)):
            off_m, off_n = _tile_origin(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
            sb_row_ptr, sb_next = _weight_scale_start(sb_ptr, off_n, stride_sbn, HALF, SB_BLOCK_N, SB_SCALAR, rows)
            acc = gl.zeros([HALF, BLOCK_N], gl.float32, mma)
            for kt in range(n_k):
                slot = it % STAGES
                mbarrier.wait(ready.index(slot), (it // STAGES) & 1)
                acc, sb_next = _k_step(acc, a_smem.index(slot).slice(WG * HALF, HALF, dim=0), b_smem.index(slot),
                                       sa_smem, sb_smem, slot * SUB, kt * SUB, WG * HALF, zero, sb_next,
                                       sb_row_ptr, stride_sbk, n_k * SUB - 1, SLICE, SB_SCALAR, rows, cols)  # fmt: skip
                # this warpgroup's MMAs and scale reads of the slot are done: release it
                mbarrier.arrive(empty.index(slot), count=1)
                it += 1
            if HAS_BIAS:
                acc = _add_bias(acc, bias_ptr, off_n, N, cols)
            # stored from the accumulator's layout: no shared-memory round trip
            om = off_m + WG * HALF + gl.arange(0, HALF, layout=rows)
            on = off_n + gl.arange(0, BLOCK_N, layout=cols)
            ptrs = c_ptr + gl.expand_dims(om.to(gl.int64) * stride_cm, 1) + gl.expand_dims(on * stride_cn, 0)
            gl.store(ptrs, acc.to(c_ptr.dtype.element_ty), mask=gl.expand_dims(om < M, 1) & gl.expand_dims(on < N, 0))

    @gluon.jit
    def _scaled_wgmma_kernel(
        a_desc, b_desc, sa_desc, sb_desc, sb_ptr, c_ptr, bias_ptr, M, N, K, stride_cm, stride_cn,
        stride_sbk, stride_sbn,
        SLICE: gl.constexpr, SB_SCALAR: gl.constexpr, SB_BLOCK_N: gl.constexpr, HAS_BIAS: gl.constexpr,
        STAGES: gl.constexpr, WARPS_N: gl.constexpr, GROUP_M: gl.constexpr, WS: gl.constexpr,
        CONSUMER_REGS: gl.constexpr, num_warps: gl.constexpr,
    ):  # fmt: skip
        """The ring, then variant 5's loop (``WS`` false) or variant 6's
        partitions (``WS``: ``num_warps`` 4, each consumer warpgroup gets
        ``CONSUMER_REGS`` registers a thread)."""
        BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
        BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
        BLOCK_N: gl.constexpr = b_desc.block_type.shape[0]
        SUB: gl.constexpr = BLOCK_K // SLICE
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
        if WS:
            empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
            for i in gl.static_range(STAGES):
                mbarrier.init(empty.index(i), count=2)  # one arrival per consumer warpgroup
            # (argument tuples spelled out: a tuple built by concatenation loses its constexprs)
            gl.warp_specialize(
                [
                    (_ws_consume, (a_desc, b_desc, a_smem, b_smem, sa_smem, sb_smem, ready, empty, sb_ptr, c_ptr,
                                   bias_ptr, M, N, K, stride_cm, stride_cn, stride_sbk, stride_sbn, SLICE,
                                   SB_SCALAR, SB_BLOCK_N, HAS_BIAS, GROUP_M, 0)),
                    (_ws_consume, (a_desc, b_desc, a_smem, b_smem, sa_smem, sb_smem, ready, empty, sb_ptr, c_ptr,
                                   bias_ptr, M, N, K, stride_cm, stride_cn, stride_sbk, stride_sbn, SLICE,
                                   SB_SCALAR, SB_BLOCK_N, HAS_BIAS, GROUP_M, 1)),
                    (_ws_load, (a_desc, b_desc, sa_desc, sb_desc, a_smem, b_smem, sa_smem, sb_smem, ready, empty,
                                M, N, K, SB_SCALAR, GROUP_M)),
                ],
                [4, 4], [CONSUMER_REGS, 24],
            )  # fmt: skip
        else:
            _tile_loop(a_desc, b_desc, sa_desc, sb_desc, a_smem, b_smem, sa_smem, sb_smem, ready, sb_ptr, c_ptr,
                       bias_ptr, M, N, K, stride_cm, stride_cn, stride_sbk, stride_sbn, SLICE, SB_SCALAR,
                       SB_BLOCK_N, HAS_BIAS, WARPS_N, GROUP_M, num_warps)  # fmt: skip


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
    ws = c.variant == WS_VARIANT
    warps_n = (16 * warps) // bm if bm and not ws else 1
    if (
        not wgmma_ok(qa, qb) or c.split_k != 1 or bk % slice_k or (sb_block_n > 1 and sb_block_n % bn)
        or ((bm, warps) != (128, 4) if ws else ((16 * warps) % bm or bn % max(warps_n, 1)))
    ):  # fmt: skip
        raise ValueError(
            f"scaled_wgmma_mm: config {c!r} (slice {slice_k}, weight scale blocks {sb_block_n}) needs a Hopper "
            "GPU, Gluon, K-contiguous 16-byte aligned payloads and BK a multiple of the slice"
        )
    m, k = qa.shape
    n = qb.shape[1]
    kb = cdiv(k, slice_k)
    qbt = qb.t()
    a_layout, b_layout, flat = _smem_layouts(bm, bn, bk, qa.dtype, qb.dtype)
    a_desc = _GluonDescriptor(qa, [m, k], [qa.stride(0), 1], [bm, bk], a_layout)
    b_desc = _GluonDescriptor(qbt, [n, k], [qbt.stride(0), 1], [bn, bk], b_layout)
    sa_desc = _GluonDescriptor(sa_t, [kb, m], [sa_t.stride(0), 1], [bk // slice_k, bm], flat)
    scalar = sb_block_n > 1
    sb_desc = sa_desc if scalar else _GluonDescriptor(sb, [kb, n], [sb.stride(0), 1], [bk // slice_k, bn], flat)
    out = torch.empty((m, n), dtype=out_dtype, device=qa.device)
    tiles = cdiv(m, bm) * cdiv(n, bn)
    # variant 6 is persistent, one program an SM; its 12 warps (two consumer warpgroups and the
    # loader's) at 168 registers fill the register file, the loader then hands its share to
    # the consumers (240 each)
    fast(_scaled_wgmma_kernel, (min(tiles, device_facts(qa.device)[1]) if ws else tiles,))(
        a_desc, b_desc, sa_desc, sb_desc, sb, out, bias if bias is not None else out, m, n, k,
        out.stride(0), out.stride(1), sb.stride(0), sb.stride(1),
        SLICE=slice_k, SB_SCALAR=scalar, SB_BLOCK_N=max(sb_block_n, 1), HAS_BIAS=bias is not None,
        STAGES=stages, WARPS_N=warps_n, GROUP_M=8, WS=ws, CONSUMER_REGS=240, num_warps=warps,
        **({"maxnreg": 168} if ws else {}),
    )  # fmt: skip
    return out
