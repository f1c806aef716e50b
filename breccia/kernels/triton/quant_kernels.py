"""The Triton quantize kernels (launched from :mod:`.quantize`).

Every kernel reads its input once per pass, in row-major tiles seen as
``(rows, blocks, block width)`` so one reduction over the last axis gives each
block's amax; masked-out elements load as 0, which never raises an amax (the
reference zero-pads partial blocks the same way).

MODE (which scale rule) is a constexpr:
0 fp32 ``amax``, 1 fp32 ``pow2``, 2 e8m0 ``floor``, 3 e8m0 ``rceil``,
4 NVFP4 two-level, 5 INT4 symmetric, 6 INT4 asymmetric.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .quant_math import (
    E4M3_TINY,
    NVFP4_GLOBAL_DIVISOR,
    RCP6,
    TINY,
    abs_bits,
    div_by_scale,
    e2m1_codes,
    e2m1_codes_fast,
    e2m1_codes_stochastic,
    e4m3_block_scale,
    e4m3_reciprocal,
    e8m0_byte,
    e8m0_inverse,
    fp32_scale,
    fp8_bits,
    nan_clamp,
    pack_nibbles,
    reciprocal_ok,
    round_half_even,
    round_up_scale,
    to_f32,
)

FLT_MAX = tl.constexpr(3.4028234663852886e38)

#: global scales for which the NVFP4 block divisions take reciprocals: the
#: reciprocal 1/g stays within [2**-100, 2**90], so the dividends of
#: ``div_by_scale`` are either >= 2**-100 (exact remainders) or give block
#: scales far under e4m3's floor, where the clamp decides
NVFP4_FAST_G_MIN = tl.constexpr(2.0**-90)
NVFP4_FAST_G_MAX = tl.constexpr(2.0**100)

FP32_AMAX, FP32_POW2, E8M0_FLOOR, E8M0_RCEIL, NVFP4, INT4_SYM, INT4_ASYM = range(7)


@triton.jit
def _fp8_scale(amax, MODE: tl.constexpr, FMAX: tl.constexpr, MARGIN_MUL: tl.constexpr,
               TARGET: tl.constexpr, EMAX: tl.constexpr, INV_MAX: tl.constexpr):
    """(value for the scale grid, fp32 divisor, its reciprocal) of the FP8
    modes 0-3: the last two are what :func:`_apply` takes (the divisor is
    used by mode 0 only)."""
    if MODE <= 1:
        # (mode 1's scale is a power of two: its reciprocal is exact, so _apply multiplies)
        s = fp32_scale(amax, FMAX, MODE == 1, MARGIN_MUL, TARGET)
        return s, s, tl.math.div_rn(tl.zeros_like(s) + 1.0, s)
    else:
        byte = e8m0_byte(amax, EMAX, MODE == 3, INV_MAX)
        inv = e8m0_inverse(byte)
        return byte.to(tl.uint8), inv, inv


@triton.jit
def _fast_ok(s, MODE: tl.constexpr):
    """Whether every fp32 scale in ``s`` (any shape) lets :func:`_apply`
    divide through the reciprocal (true for the power-of-two modes)."""
    if MODE == 0:
        return tl.min(reciprocal_ok(s).to(tl.int32)) > 0
    else:
        return True


@triton.jit
def _apply(x, s, r, fast, MODE: tl.constexpr, BOUNDED: tl.constexpr = True):
    """``x / s``, ``s`` and ``r = 1 / s`` broadcast to ``x``: for fp32 amax
    scales the correctly rounded quotient (as far as an FP8 cast can tell,
    :func:`div_by_scale`; ``fast`` from :func:`_fast_ok` of the tile's
    scales, else ``div_rn``), otherwise a multiplication by the exact
    reciprocal of a power of two. ``BOUNDED=False`` where the amax was given
    (``|x|`` may exceed it)."""
    if MODE == 0:
        if fast:  # (a constexpr False compiles the div_rn branch alone)
            y = div_by_scale(x, s, r, BOUNDED)
        else:
            y = tl.math.div_rn(x, s)
    else:
        y = x * r
    return y


# --------------------------------------------------------------------------- tensorwise


@triton.jit
def partial_amax_kernel(x_ptr, part_ptr, N, n_iter, BLOCK: tl.constexpr):
    """Pass 1 of tensorwise scaling: each program folds tiles ``pid, pid + P,
    ...`` and writes one partial amax (int32 bits of a float >= 0)."""
    pid = tl.program_id(0)
    P = tl.num_programs(0)
    acc = tl.zeros((BLOCK,), dtype=tl.int32)
    for i in range(n_iter):
        offs = (i * P + pid).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        x = to_f32(tl.load(x_ptr + offs, mask=offs < N, other=0.0))
        acc = tl.maximum(acc, abs_bits(x))
    tl.store(part_ptr + pid, tl.max(acc, axis=0))


@triton.jit
def _tensor_amax(amax_ptr, part_ptr, n_part, PART_P2: tl.constexpr, AMAX_GIVEN: tl.constexpr):
    """The tensor's amax: given, or folded from pass 1's partials (a few KB
    from L2, read by every program)."""
    if AMAX_GIVEN:
        return tl.load(amax_ptr).to(tl.float32)
    i = tl.arange(0, PART_P2)
    return tl.max(tl.load(part_ptr + i, mask=i < n_part, other=0), axis=0).to(tl.float32, bitcast=True)


@triton.jit
def cast_tensorwise_kernel(
    x_ptr, q_ptr, s_ptr, amax_ptr, part_ptr, N, n_part,
    BLOCK: tl.constexpr, PART_P2: tl.constexpr, MODE: tl.constexpr, E4M3: tl.constexpr,
    FMAX: tl.constexpr, MARGIN_MUL: tl.constexpr, TARGET: tl.constexpr,
    AMAX_GIVEN: tl.constexpr, NATIVE: tl.constexpr, REVERSE: tl.constexpr,
):
    """Pass 2: every program reduces the partials (a few KB from L2), derives
    the one scale and casts its tile. REVERSE walks tiles from the end, which
    pass 1 touched last and L2 may still hold."""
    pid = tl.program_id(0)
    amax = _tensor_amax(amax_ptr, part_ptr, n_part, PART_P2, AMAX_GIVEN)
    s, d, f = _fp8_scale(amax, MODE, FMAX, MARGIN_MUL, TARGET, 0, 0.0)
    fast = _fast_ok(tl.zeros((1,), tl.float32) + d, MODE)
    tl.store(s_ptr, s, mask=pid == 0)
    if REVERSE:
        t = tl.num_programs(0) - 1 - pid
    else:
        t = pid
    offs = t.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    x = to_f32(tl.load(x_ptr + offs, mask=m, other=0.0))
    y = _apply(x, tl.zeros_like(x) + d, tl.zeros_like(x) + f, fast, MODE, not AMAX_GIVEN)
    tl.store(q_ptr + offs, fp8_bits(y, E4M3, NATIVE), mask=m)


@triton.jit
def cast_tensorwise_rowcol_kernel(
    x_ptr, q_ptr, s_ptr, qt_ptr, st_ptr, amax_ptr, part_ptr, M, K, n_part, n_ktiles,
    BM: tl.constexpr, BK: tl.constexpr, PART_P2: tl.constexpr, MODE: tl.constexpr, E4M3: tl.constexpr,
    FMAX: tl.constexpr, MARGIN_MUL: tl.constexpr, TARGET: tl.constexpr,
    AMAX_GIVEN: tl.constexpr, NATIVE: tl.constexpr, REVERSE: tl.constexpr, TMA_T: tl.constexpr,
):
    """Pass 2 of tensorwise scaling for a 2-D ``x`` (M, K), writing the
    payload twice from one read: as ``x`` (M, K) and transposed (K, M), the
    operand layout of the backward GEMMs (one scale serves both). A 1-D grid
    walks (BM, BK) tiles in row-major order, backwards with REVERSE. TMA_T:
    ``qt_ptr`` is a (K, M) tensor descriptor of (BK, BM) blocks and the
    transposed tile leaves through shared memory by TMA (clipped at the
    edges)."""
    pid = tl.program_id(0)
    amax = _tensor_amax(amax_ptr, part_ptr, n_part, PART_P2, AMAX_GIVEN)
    s, d, f = _fp8_scale(amax, MODE, FMAX, MARGIN_MUL, TARGET, 0, 0.0)
    tl.store(s_ptr, s, mask=pid == 0)
    tl.store(st_ptr, s, mask=pid == 0)
    if REVERSE:
        t = tl.num_programs(0) - 1 - pid
    else:
        t = pid
    pid_m = t // n_ktiles
    pid_k = t - pid_m * n_ktiles
    rows = pid_m * BM + tl.arange(0, BM)
    cols = pid_k * BK + tl.arange(0, BK)
    row_ok = rows < M
    col_ok = cols < K
    x = to_f32(tl.load(x_ptr + rows.to(tl.int64)[:, None] * K + cols[None, :],
                       mask=row_ok[:, None] & col_ok[None, :], other=0.0))
    # div_rn here: the reciprocal division made this kernel 4% slower on the H200 (docs/kernels.md)
    q = fp8_bits(_apply(x, tl.zeros_like(x) + d, tl.zeros_like(x) + f, False, MODE), E4M3, NATIVE)
    tl.store(q_ptr + rows.to(tl.int64)[:, None] * K + cols[None, :], q, mask=row_ok[:, None] & col_ok[None, :])
    if TMA_T:
        qt_ptr.store([pid_k * BK, pid_m * BM], tl.trans(q))
    else:
        tl.store(qt_ptr + cols.to(tl.int64)[:, None] * M + rows[None, :], tl.trans(q),
                 mask=col_ok[:, None] & row_ok[None, :])


# --------------------------------------------------------------------------- blocks


@triton.jit
def _store_nibbles(q_ptr, codes, grow, kb, row_ok, mask, KP, ODD_K: tl.constexpr, BM: tl.constexpr,
                   NB: tl.constexpr, BS: tl.constexpr):
    """Pack a (BM, NB, BS) tile of 4-bit codes two to a byte and store it."""
    if ODD_K:  # the last byte's high nibble is padding: code 0
        codes = tl.where(mask, codes, 0)
    packed = pack_nibbles(codes, BM, NB, BS)
    pcols = kb[:, None] * (BS // 2) + tl.arange(0, BS // 2)[None, :]
    p_offs = grow[:, None, None] * KP + pcols[None, :, :]
    tl.store(q_ptr + p_offs, packed, mask=row_ok[:, None, None] & (pcols < KP)[None, :, :])


@triton.jit
def _nvfp4_out(x, amax, g, inv_g, noise, q_ptr, s_ptr, s_offs, s_mask, grow, kb, row_ok, mask, KP,
               FAST: tl.constexpr, NATIVE: tl.constexpr, HAS_NOISE: tl.constexpr, ENC: tl.constexpr,
               ODD_K: tl.constexpr, BM: tl.constexpr, NB: tl.constexpr, BS: tl.constexpr):
    """NVFP4 block scales (e4m3) and payload of one tile, given the global
    scale ``g`` and ``inv_g = 1 / g``: ``bs = amax / 6 / g``, then codes of
    ``x * ((1 / g) / bs)`` as the reference computes them. ``FAST``: both
    block divisions through reciprocals and an fma correction
    (:func:`div_by_scale`), valid for ``NVFP4_FAST_G_MIN <= g <=
    NVFP4_FAST_G_MAX``; otherwise ``div_rn``."""
    gb = tl.zeros_like(amax) + g
    ib = tl.zeros_like(amax) + inv_g
    if FAST:
        # (an inf amax divides as FLT_MAX: both give 448 for any such g)
        d = div_by_scale(tl.minimum(amax, FLT_MAX, propagate_nan=tl.PropagateNan.ALL), 6.0, RCP6, True)
        bs = div_by_scale(d, gb, ib, False)
    else:
        bs = tl.math.div_rn(tl.math.div_rn(amax, 6.0), gb)
    # integer rounding to e4m3, never the hardware conversion: with it this
    # kernel's scales (and at some tiles its payload) came out wrong on the
    # H200 under Triton 3.6 (quantize-h200.md)
    bs8, bsf = e4m3_block_scale(nan_clamp(bs, E4M3_TINY, 448.0))
    tl.store(s_ptr + s_offs, bs8, mask=s_mask)
    # the reference multiplies by the reciprocal of the combined scale
    if FAST:
        recip = div_by_scale(ib, bsf, e4m3_reciprocal(bsf, NATIVE), True)
    else:
        recip = tl.math.div_rn(ib, bsf)
    v = x * tl.broadcast_to(recip[:, :, None], (BM, NB, BS))
    if HAS_NOISE:
        codes = e2m1_codes_stochastic(nan_clamp(v, -6.0, 6.0), noise)
    elif ENC == 1:
        codes = e2m1_codes_fast(v)  # saturates by itself
    else:
        codes = e2m1_codes(nan_clamp(v, -6.0, 6.0))
    _store_nibbles(q_ptr, codes, grow, kb, row_ok, mask, KP, ODD_K, BM, NB, BS)


@triton.jit
def quant_blocks_kernel(
    x_ptr, q_ptr, s_ptr, zp_ptr, gs_ptr, amax_ptr, part_ptr, noise_ptr, bamax_ptr,
    M, K, KP, n_mtiles, n_ktiles, n_sk, n_part,
    BM: tl.constexpr, NB: tl.constexpr, BS: tl.constexpr, ROWS2D: tl.constexpr,
    MODE: tl.constexpr, E4M3: tl.constexpr, FMAX: tl.constexpr, MARGIN_MUL: tl.constexpr,
    TARGET: tl.constexpr, EMAX: tl.constexpr, INV_MAX: tl.constexpr,
    FP16: tl.constexpr, STINY: tl.constexpr, SMAX: tl.constexpr, ONE_BITS: tl.constexpr,
    AMAX_GIVEN: tl.constexpr, BLOCK_AMAX: tl.constexpr, HAS_NOISE: tl.constexpr, PART_P2: tl.constexpr,
    NATIVE: tl.constexpr, ODD_K: tl.constexpr, ENC: tl.constexpr, REVERSE: tl.constexpr,
):
    """One pass over a (BM, NB * BS) tile of a batch of (M, K) matrices: amax
    per block, scale, payload, scales (and zero points / global scale) out.

    Blocks are (1, BS), or (BM, BS) when ROWS2D. A 1-D grid walks the tiles
    in row-major order (``n_mtiles`` row tiles per batch entry, ``n_ktiles``
    column tiles), backwards with REVERSE: after an amax pass the tail of the
    input may still sit in L2. ``KP`` is the packed row length ``ceil(K / 2)``
    of 4-bit payloads (an argument, so that Triton sees its divisibility and
    vectorizes the stores)."""
    pid = tl.program_id(0)
    if REVERSE:
        pid = tl.num_programs(0) - 1 - pid
    pid_r = pid // n_ktiles
    pid_k = pid - pid_r * n_ktiles
    if ROWS2D:
        b = pid_r // n_mtiles
        rl = (pid_r - b * n_mtiles) * BM + tl.arange(0, BM)
        grow = b.to(tl.int64) * M + rl
    else:  # (1, BS) blocks: the planner folds the batch into the rows
        rl = pid_r * BM + tl.arange(0, BM)
        grow = rl.to(tl.int64)
    row_ok = rl < M
    kb = pid_k * NB + tl.arange(0, NB)
    cols = kb[:, None] * BS + tl.arange(0, BS)[None, :]
    offs = grow[:, None, None] * K + cols[None, :, :]
    mask = row_ok[:, None, None] & (cols < K)[None, :, :]
    x = to_f32(tl.load(x_ptr + offs, mask=mask, other=0.0))

    am = tl.max(abs_bits(x), axis=2)
    if ROWS2D:
        am = tl.max(am, axis=0, keep_dims=True)
        s_offs = pid_r * n_sk + kb[None, :]
        s_mask = kb[None, :] < n_sk
    else:
        s_offs = grow[:, None] * n_sk + kb[None, :]
        s_mask = row_ok[:, None] & (kb[None, :] < n_sk)
    amax = am.to(tl.float32, bitcast=True)
    if BLOCK_AMAX:  # amaxes reduced elsewhere (e.g. across the shards of a block)
        amax = tl.load(bamax_ptr + s_offs, mask=s_mask, other=0.0)

    if MODE <= 3:
        if AMAX_GIVEN:
            amax = tl.zeros_like(amax) + tl.load(amax_ptr).to(tl.float32)
        s, d, f = _fp8_scale(amax, MODE, FMAX, MARGIN_MUL, TARGET, EMAX, INV_MAX)
        tl.store(s_ptr + s_offs, s, mask=s_mask)
        # (1, BS) blocks divide through the reciprocal; (BM, BS) blocks keep
        # div_rn, which measured 15% faster there on the H200 (docs/kernels.md)
        if ROWS2D:
            fast = False
        else:
            fast = _fast_ok(d, MODE)
        y = _apply(x, tl.broadcast_to(d[:, :, None], (BM, NB, BS)), tl.broadcast_to(f[:, :, None], (BM, NB, BS)),
                   fast, MODE, not (AMAX_GIVEN or BLOCK_AMAX))
        tl.store(q_ptr + offs, fp8_bits(y, E4M3, NATIVE), mask=mask)
    else:
        if HAS_NOISE:
            noise = tl.load(noise_ptr + offs, mask=mask, other=0.0)
        else:
            noise = x  # not read
        if MODE == 4:
            # global scale from the given amax, or from the pass-1 partials
            t_amax = _tensor_amax(amax_ptr, part_ptr, n_part, PART_P2, AMAX_GIVEN)
            g = tl.math.div_rn(t_amax, NVFP4_GLOBAL_DIVISOR)
            g = tl.where(t_amax == 0.0, 1.0, tl.maximum(g, TINY, propagate_nan=tl.PropagateNan.ALL))
            tl.store(gs_ptr, g, mask=pid == 0)
            inv_g = tl.math.div_rn(1.0, g)  # once per program
            # the block divisions take reciprocals (div_by_scale) where the
            # global scale keeps every remainder clear of underflow and every
            # reciprocal normal: the same for the whole program. (Each branch
            # stores its own outputs: yielding the block scales out of the
            # branch miscompiled their store on the GPU.)
            if (g >= NVFP4_FAST_G_MIN) & (g <= NVFP4_FAST_G_MAX):
                _nvfp4_out(x, amax, g, inv_g, noise, q_ptr, s_ptr, s_offs, s_mask, grow, kb, row_ok, mask, KP,
                           True, NATIVE, HAS_NOISE, ENC, ODD_K, BM, NB, BS)
            else:
                _nvfp4_out(x, amax, g, inv_g, noise, q_ptr, s_ptr, s_offs, s_mask, grow, kb, row_ok, mask, KP,
                           False, NATIVE, HAS_NOISE, ENC, ODD_K, BM, NB, BS)
        else:
            if MODE == 5:
                s = nan_clamp(tl.math.div_rn(amax, 7.5), STINY, SMAX)
                sf, sh = round_up_scale(s, FP16)
                zero = amax == 0.0
            else:
                mn = tl.min(x, axis=2)
                mx = tl.max(x, axis=2)
                if ROWS2D:
                    mn = tl.min(mn, axis=0, keep_dims=True)
                    mx = tl.max(mx, axis=0, keep_dims=True)
                nan = am > 0x7F800000  # tl.min / tl.max drop NaN; the reference keeps it
                mn = tl.where(nan, amax, tl.minimum(mn, 0.0))
                mx = tl.where(nan, amax, tl.maximum(mx, 0.0))
                span = mx - mn
                # a span that overflows float32 for finite extremes: split it
                split = (span > FLT_MAX) & (mx <= FLT_MAX) & (mn >= -FLT_MAX)
                s = tl.where(split, tl.math.div_rn(mx, 15.0) - tl.math.div_rn(mn, 15.0),
                             tl.math.div_rn(span, 15.0))
                sf, sh = round_up_scale(nan_clamp(s, STINY, SMAX), FP16)
                zero = mx == mn
            sf = tl.where(zero, 1.0, sf)
            sh = tl.where(zero, ONE_BITS, sh.to(tl.int32)).to(tl.int16)
            tl.store(s_ptr + s_offs, sh, mask=s_mask)
            sf3 = tl.broadcast_to(sf[:, :, None], (BM, NB, BS))
            y = tl.math.div_rn(x, sf3)
            if MODE == 6:
                zp = nan_clamp(round_half_even(nan_clamp(tl.math.div_rn(-mn, sf), -16.0, 32.0)), 0.0, 15.0)
                tl.store(zp_ptr + s_offs, zp.to(tl.uint8), mask=s_mask)
                y = y + tl.broadcast_to(zp[:, :, None], (BM, NB, BS))
            # clamping first keeps the rounding trick in range; it cannot
            # change the clamped result
            y = nan_clamp(y, -32.0, 48.0)
            if HAS_NOISE:
                r = tl.floor(y + noise)
            else:
                r = round_half_even(y)
            ok = r == r  # a NaN group's codes are 0, as on the CPU
            if MODE == 5:
                r = tl.clamp(r, -8.0, 7.0)
            else:
                r = tl.clamp(r, 0.0, 15.0)
            codes = tl.where(ok, r.to(tl.int32) & 0xF, 0)
            _store_nibbles(q_ptr, codes, grow, kb, row_ok, mask, KP, ODD_K, BM, NB, BS)


@triton.jit
def quant_rowwise_loop_kernel(
    x_ptr, q_ptr, s_ptr, amax_ptr, bamax_ptr, R, K,
    BM: tl.constexpr, BK: tl.constexpr, MODE: tl.constexpr, E4M3: tl.constexpr,
    FMAX: tl.constexpr, MARGIN_MUL: tl.constexpr, TARGET: tl.constexpr,
    AMAX_GIVEN: tl.constexpr, BLOCK_AMAX: tl.constexpr, NATIVE: tl.constexpr,
):
    """Rowwise FP8 for rows too long for one tile: an amax loop, then a cast
    loop (the second read of the row block mostly hits L2)."""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    row_ok = rows < R
    base = rows.to(tl.int64)[:, None] * K
    if AMAX_GIVEN:
        amax = tl.zeros((BM,), tl.float32) + tl.load(amax_ptr).to(tl.float32)
    elif BLOCK_AMAX:
        amax = tl.load(bamax_ptr + rows, mask=row_ok, other=0.0)
    else:
        acc = tl.zeros((BM, BK), dtype=tl.int32)
        for k0 in range(0, K, BK):
            cols = k0 + tl.arange(0, BK)
            m = row_ok[:, None] & (cols < K)[None, :]
            x = to_f32(tl.load(x_ptr + base + cols[None, :], mask=m, other=0.0))
            acc = tl.maximum(acc, abs_bits(x))
        amax = tl.max(acc, axis=1).to(tl.float32, bitcast=True)
    s, d, f = _fp8_scale(amax, MODE, FMAX, MARGIN_MUL, TARGET, 0, 0.0)
    fast = _fast_ok(d, MODE)
    tl.store(s_ptr + rows, s, mask=row_ok)
    for k0 in range(0, K, BK):
        cols = k0 + tl.arange(0, BK)
        m = row_ok[:, None] & (cols < K)[None, :]
        x = to_f32(tl.load(x_ptr + base + cols[None, :], mask=m, other=0.0))
        y = _apply(x, tl.broadcast_to(d[:, None], (BM, BK)), tl.broadcast_to(f[:, None], (BM, BK)), fast, MODE,
                   not (AMAX_GIVEN or BLOCK_AMAX))
        tl.store(q_ptr + base + cols[None, :], fp8_bits(y, E4M3, NATIVE), mask=m)


@triton.jit
def quant_rowcol_kernel(
    x_ptr, q_ptr, s_ptr, qt_ptr, st_ptr, M, K, n_sk, n_rb,
    B: tl.constexpr, NB: tl.constexpr, MODE: tl.constexpr, E4M3: tl.constexpr,
    FMAX: tl.constexpr, MARGIN_MUL: tl.constexpr, TARGET: tl.constexpr,
    EMAX: tl.constexpr, INV_MAX: tl.constexpr, NATIVE: tl.constexpr,
):
    """(1, B) blocks of ``x`` (M, K) and, from the same (B, NB * B) tile, (1, B)
    blocks of ``x.T`` (K, M): the columnwise copy the backward GEMMs want."""
    pid_r = tl.program_id(0)
    rows = pid_r * B + tl.arange(0, B)
    row_ok = rows < M
    kb = tl.program_id(1) * NB + tl.arange(0, NB)
    cols = kb[:, None] * B + tl.arange(0, B)[None, :]
    col_ok = cols < K
    mask = row_ok[:, None, None] & col_ok[None, :, :]
    x = to_f32(tl.load(x_ptr + rows.to(tl.int64)[:, None, None] * K + cols[None, :, :], mask=mask, other=0.0))
    bits = abs_bits(x)

    # rowwise: blocks along K
    s, d, f = _fp8_scale(tl.max(bits, axis=2).to(tl.float32, bitcast=True), MODE, FMAX, MARGIN_MUL, TARGET, EMAX,
                         INV_MAX)
    tl.store(s_ptr + rows.to(tl.int64)[:, None] * n_sk + kb[None, :], s,
             mask=row_ok[:, None] & (kb[None, :] < n_sk))
    y = _apply(x, tl.broadcast_to(d[:, :, None], (B, NB, B)), tl.broadcast_to(f[:, :, None], (B, NB, B)),
               _fast_ok(d, MODE), MODE)
    tl.store(q_ptr + rows.to(tl.int64)[:, None, None] * K + cols[None, :, :], fp8_bits(y, E4M3, NATIVE), mask=mask)

    # columnwise: blocks along M, written transposed (K, M)
    sc, dc, fc = _fp8_scale(tl.max(bits, axis=0).to(tl.float32, bitcast=True), MODE, FMAX, MARGIN_MUL, TARGET, EMAX,
                            INV_MAX)
    tl.store(st_ptr + cols.to(tl.int64) * n_rb + pid_r, sc, mask=col_ok)
    yc = _apply(x, tl.broadcast_to(dc[None, :, :], (B, NB, B)), tl.broadcast_to(fc[None, :, :], (B, NB, B)),
                _fast_ok(dc, MODE), MODE)
    t_offs = cols.to(tl.int64)[None, :, :] * M + rows[:, None, None]
    tl.store(qt_ptr + t_offs, fp8_bits(yc, E4M3, NATIVE), mask=mask)


@triton.jit
def quant_rowcol2d_kernel(
    x_ptr, q_ptr, s_ptr, qt_ptr, st_ptr, M, K, n_sk, n_rb,
    B: tl.constexpr, W: tl.constexpr, MODE: tl.constexpr, E4M3: tl.constexpr,
    FMAX: tl.constexpr, MARGIN_MUL: tl.constexpr, TARGET: tl.constexpr,
    EMAX: tl.constexpr, INV_MAX: tl.constexpr, NATIVE: tl.constexpr, ROWS: tl.constexpr = True,
):
    """:func:`quant_rowcol_kernel` on a 2-D (B, W) tile (W a multiple of B):
    simpler layouts for Triton, and the transposed store is one ``tl.trans``.
    ``ROWS=False`` writes the columnwise copy only (the rowwise one comes
    from the block kernel: two lighter passes instead of one heavy one).
    (A TMA store of the transposed tile, which speeds the tensorwise kernel
    up, made this one slower on the H200: rowcol-tiles-h200.md.)"""
    pid_r = tl.program_id(0)
    rows = pid_r * B + tl.arange(0, B)
    row_ok = rows < M
    cols = tl.program_id(1) * W + tl.arange(0, W)
    col_ok = cols < K
    mask = row_ok[:, None] & col_ok[None, :]
    x = to_f32(tl.load(x_ptr + rows.to(tl.int64)[:, None] * K + cols[None, :], mask=mask, other=0.0))
    bits = abs_bits(x)

    # columnwise first (blocks along M, written transposed (K, M)), then rowwise
    sc, dc, fc = _fp8_scale(tl.max(bits, axis=0).to(tl.float32, bitcast=True), MODE, FMAX, MARGIN_MUL, TARGET, EMAX,
                            INV_MAX)
    tl.store(st_ptr + cols.to(tl.int64) * n_rb + pid_r, sc, mask=col_ok)
    qc = fp8_bits(_apply(x, tl.broadcast_to(dc[None, :], (B, W)), tl.broadcast_to(fc[None, :], (B, W)),
                         _fast_ok(dc, MODE), MODE), E4M3, NATIVE)
    tl.store(qt_ptr + cols.to(tl.int64)[:, None] * M + rows[None, :], tl.trans(qc),
             mask=col_ok[:, None] & row_ok[None, :])

    # a branch, not an early return: Triton compiles the code after a constexpr return too
    if ROWS:
        if W == B:
            s, d, f = _fp8_scale(tl.max(bits, axis=1).to(tl.float32, bitcast=True), MODE, FMAX, MARGIN_MUL, TARGET,
                                 EMAX, INV_MAX)
            tl.store(s_ptr + rows.to(tl.int64) * n_sk + tl.program_id(1), s, mask=row_ok)
            dr = tl.broadcast_to(d[:, None], (B, W))
            fr = tl.broadcast_to(f[:, None], (B, W))
        else:
            am = tl.max(tl.reshape(bits, (B, W // B, B)), axis=2).to(tl.float32, bitcast=True)
            s, d, f = _fp8_scale(am, MODE, FMAX, MARGIN_MUL, TARGET, EMAX, INV_MAX)
            kb = tl.program_id(1) * (W // B) + tl.arange(0, W // B)
            tl.store(s_ptr + rows.to(tl.int64)[:, None] * n_sk + kb[None, :], s,
                     mask=row_ok[:, None] & (kb[None, :] < n_sk))
            dr = tl.reshape(tl.broadcast_to(d[:, :, None], (B, W // B, B)), (B, W))
            fr = tl.reshape(tl.broadcast_to(f[:, :, None], (B, W // B, B)), (B, W))
        q = fp8_bits(_apply(x, dr, fr, _fast_ok(d, MODE), MODE), E4M3, NATIVE)
        tl.store(q_ptr + rows.to(tl.int64)[:, None] * K + cols[None, :], q, mask=mask)
