"""Triton device functions that reproduce :mod:`breccia.quantize` bit for bit.

Each helper mirrors one rule of the reference quantizer; the comment on each
says which, and why the arithmetic is exact. Conventions:

* amax reductions run on the int32 bit patterns of ``|x|``: for non-negative
  floats integer order is float order, and every NaN pattern sorts above
  ``inf``, so an integer max is exact *and* NaN-propagating (``tl.max`` on
  floats drops NaN).
* where the reference divides by an arbitrary float we use ``div_rn``
  (``div.rn.f32``: correctly rounded, no flush-to-zero; Triton's ``/`` is
  approximate); where it divides by a power of two we multiply by the exact
  reciprocal (same real quotient, hence the same rounding, and it sidesteps
  the subnormal divisor ``2**-127`` of an e8m0 byte 0).
* an FP8 cast divides by a per-block fp32 scale with one reciprocal per
  block and two fmas per element (:func:`div_by_scale`), which gives the
  FP8 result of the correctly rounded quotient; blocks whose scale is tiny
  or not finite fall back to ``div_rn`` (:func:`reciprocal_ok`); the NVFP4
  block divisions do the same where the global scale allows
  (``quant_kernels._nvfp4_out``).
* ``NATIVE`` selects the hardware fp8 conversion (``cvt.rn.satfinite``); the
  interpreter's fp8/bf16 conversions truncate, so on the CPU the same rounding
  is done in integer arithmetic (proven equal on the GPU by
  ``benchmarks/gpu_check_quantize.py``).
"""

from __future__ import annotations

import triton
import triton.language as tl

# fp32 constants as exact Python floats
TINY = tl.constexpr(2.0**-126)  # smallest normal float32 (the reference's _TINY)
E4M3_TINY = tl.constexpr(2.0**-6)  # smallest normal e4m3 (NVFP4 block-scale floor)
NVFP4_GLOBAL_DIVISOR = tl.constexpr(2688.0)  # 448 * 6


@triton.jit
def to_f32(x):
    """Loaded input as float32. bf16 widens by a shift (what the GPU does
    anyway): the interpreter's own bf16 conversion mangles subnormals."""
    if x.dtype == tl.bfloat16:
        return (x.to(tl.int16, bitcast=True).to(tl.int32) << 16).to(tl.float32, bitcast=True)
    else:
        return x.to(tl.float32)


@triton.jit
def abs_bits(x):
    """int32 bits of ``|x|`` (x float32): their integer max is a NaN-propagating amax."""
    return x.to(tl.int32, bitcast=True) & 0x7FFFFFFF


@triton.jit
def nan_clamp(v, lo, hi):
    """``torch.clamp``: NaN stays NaN (``tl.clamp`` drops it by default)."""
    return tl.clamp(v, lo, hi, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def next_up(s):
    """``torch.nextafter(s, inf)`` for finite ``s >= 0``."""
    return (s.to(tl.int32, bitcast=True) + 1).to(tl.float32, bitcast=True)


# --------------------------------------------------------------------------- FP8 payload


#: int32 bits of 2**-80 and 2**120: the scales :func:`div_by_scale` divides
#: by exactly lie between (its reciprocal is then a normal float)
RCP_MIN_BITS = tl.constexpr((127 - 80) << 23)
RCP_MAX_BITS = tl.constexpr((127 + 120) << 23)
#: bound on the first quotient of :func:`div_by_scale` when ``|x|`` may exceed the amax
QUOTIENT_BOUND = tl.constexpr(2.0**64)


@triton.jit
def reciprocal_ok(s):
    """Elementwise: ``s`` is a scale :func:`div_by_scale` divides by exactly
    (``2**-80 <= s < 2**120``; scales are positive or NaN)."""
    b = s.to(tl.int32, bitcast=True)
    return (b >= RCP_MIN_BITS) & (b < RCP_MAX_BITS)


@triton.jit
def div_by_scale(x, s, r, BOUNDED: tl.constexpr):
    """``x / s`` for ``r = div_rn(1, s)``, as the FP8 cast needs it: one
    Newton correction of ``x * r`` with the exact fma remainder (Markstein),
    three flops against ``div_rn``'s reciprocal, four fmas and a range check.

    The quotient is the correctly rounded one whenever the remainder
    ``x - q0 * s`` does not underflow, i.e. ``|x| >= 2**-100`` or so; below
    that ``|x / s| < 2**-20`` for ``s >= 2**-80`` (:func:`reciprocal_ok`),
    which every FP8 format rounds to a zero of the sign of ``x``, as this
    does. The remainder is taken as ``q0 * s - x`` and multiplied by ``-r``
    so that a ``-0.0`` input keeps its sign (``x - q0 * s`` would give
    ``+0``, and so may negating an fma's result: compilers rewrite that as
    an fma of negated inputs, which differs on exact zeros).
    ``BOUNDED``: ``|x| <= amax`` of the scale, so ``x * r`` cannot overflow;
    otherwise (a given amax) ``x * r`` is clamped first, which keeps a
    quotient past the bound past it (then the FP8 clamp saturates it)
    where ``inf - inf`` would give NaN.
    test/test_triton_quantize.py checks it against torch's division."""
    q0 = x * r
    if not BOUNDED:
        q0 = nan_clamp(q0, -QUOTIENT_BOUND, QUOTIENT_BOUND)
    return tl.fma(tl.fma(q0, s, -x), -r, q0)


@triton.jit
def rne_shift(a, DROP: tl.constexpr):
    """``a >> DROP`` rounded to nearest even (the usual
    add-half-minus-one-plus-lsb): for the bits of a positive normal float,
    its exponent and the mantissa rounded to ``23 - DROP`` bits (a carry
    moves into the exponent, as rounding up to the next binade should)."""
    return (a + ((1 << (DROP - 1)) - 1) + ((a >> DROP) & 1)) >> DROP


@triton.jit
def fp8_bits(v, E4M3: tl.constexpr, NATIVE: tl.constexpr):
    """``clamp(v, -max, max).to(fp8)`` as uint8 bits (round to nearest even).

    The emulated path: normal results round the fp32 mantissa to 3 (e4m3) or
    2 (e5m2) bits with the usual add-half-minus-one-plus-lsb trick; subnormal
    results are ``|v| * 2**(mantissa bits - emin)`` rounded to an integer by
    adding ``2**23`` (exact: the product is a power-of-two scaling)."""
    if E4M3:
        v = nan_clamp(v, -448.0, 448.0)
    else:
        v = nan_clamp(v, -57344.0, 57344.0)
    if NATIVE:
        if E4M3:
            q = v.to(tl.float8e4nv)
        else:
            q = v.to(tl.float8e5)
        return q.to(tl.uint8, bitcast=True)
    else:
        b = v.to(tl.int32, bitcast=True)
        sign = (b >> 24) & 0x80
        a = b & 0x7FFFFFFF
        if E4M3:
            norm = rne_shift(a, 20) - (120 << 3)
            t = a.to(tl.float32, bitcast=True) * 512.0
            is_norm = a >= (121 << 23)
        else:
            norm = rne_shift(a, 21) - (112 << 2)
            t = a.to(tl.float32, bitcast=True) * 65536.0
            is_norm = a >= (113 << 23)
        sub = (t + 8388608.0).to(tl.int32, bitcast=True) - 0x4B000000
        code = tl.where(is_norm, norm, sub)
        code = tl.where(a > 0x7F800000, 0x7F, code)  # NaN
        return (code | sign).to(tl.uint8)


@triton.jit
def e4m3_block_scale(bs):
    """(e4m3 byte, its float32 value) of an NVFP4 block scale ``bs`` in
    [2**-6, 448] or NaN, rounded to nearest even: the fp32 mantissa rounded
    to 3 bits in integer arithmetic (:func:`rne_shift`, as :func:`fp8_bits`
    rounds normal results), whose bit pattern is already the value. NaN gives the NaN
    byte of its sign, as torch's cast does."""
    b = bs.to(tl.int32, bitcast=True)
    r = rne_shift(b, 20)
    nan = bs != bs
    byte = tl.where(nan, 0x7F | ((b >> 24) & 0x80), r - (120 << 3))
    return byte.to(tl.uint8), tl.where(nan, bs, (r << 20).to(tl.float32, bitcast=True))


# --------------------------------------------------------------------------- fp32 scales


@triton.jit
def fp32_scale(amax, FMAX: tl.constexpr, POW2: tl.constexpr, MARGIN_MUL: tl.constexpr, TARGET: tl.constexpr):
    """The reference's ``_fp32_scale`` (rule ``"amax"`` or ``"pow2"``).

    ``amax`` is float32 (any shape); zero gives 1, NaN/inf give NaN/inf.
    ``MARGIN_MUL`` is ``2**margin``, ``TARGET`` is ``max * 2**-margin``."""
    if POW2:
        # least power of two >= v = amax / max; frexp/ldexp as bit arithmetic.
        v = tl.math.div_rn(amax, FMAX)
        vb = v.to(tl.int32, bitcast=True)
        e = (vb >> 23) & 0xFF
        p = tl.where((vb & 0x7FFFFF) == 0, vb, (e + 1) << 23).to(tl.float32, bitcast=True)
        # a subnormal v clamps to TINY; v == 0 (amax tiny but not 0): frexp
        # gives exponent 0, so the reference's scale is 1
        p = tl.where(e == 0, tl.where(vb == 0, 1.0, TINY), p)
        finite = (amax.to(tl.int32, bitcast=True) & 0x7FFFFFFF) < 0x7F800000
        s = tl.where(finite, p, amax)
    else:
        a = amax
        if MARGIN_MUL != 1.0:
            a = a * MARGIN_MUL
        s = tl.math.div_rn(a, FMAX)
        # amax / s may round one ulp above the target: nudge s up
        s = tl.where(tl.math.div_rn(amax, s) > TARGET, next_up(s), s)
        s = tl.maximum(s, TINY, propagate_nan=tl.PropagateNan.ALL)
    return tl.where(amax == 0.0, 1.0, s)


# --------------------------------------------------------------------------- e8m0 scales


@triton.jit
def e8m0_byte(amax, EMAX: tl.constexpr, RCEIL: tl.constexpr, INV_MAX: tl.constexpr):
    """Biased e8m0 scale byte (int32 0..254, 255 = NaN) of float32 ``amax``.

    floor: ``clamp(floor(log2 amax) - emax, -127, 127) + 127``, which for a
    finite amax is ``clamp(exponent field - emax, 0, 254)`` (subnormals have
    field 0 and clamp to 0, as the reference's frexp path does).
    rceil: TransformerEngine's round-up of ``amax * (1/max)``."""
    ab = amax.to(tl.int32, bitcast=True)
    if RCEIL:
        v = (amax * INV_MAX).to(tl.int32, bitcast=True)
        e = (v >> 23) & 0xFF
        m = v & 0x7FFFFF
        up = (m > 0) & (e != 0xFE) & ((e != 0) | (m > 0x400000))
        byte = tl.minimum(tl.maximum(e + up.to(tl.int32), 0), 254)
    else:
        byte = tl.minimum(tl.maximum(((ab >> 23) & 0xFF) - EMAX, 0), 254)
    return tl.where(ab >= 0x7F800000, 255, byte)


@triton.jit
def e8m0_inverse(byte):
    """``1 / 2**(byte - 127)`` as float32 (exact and normal for bytes <= 253,
    which covers every finite fp32 amax); NaN for byte 255."""
    inv = ((254 - byte) << 23).to(tl.float32, bitcast=True)
    return tl.where(byte == 255, tl.full(inv.shape, 0x7FC00000, tl.int32).to(tl.float32, bitcast=True), inv)


# --------------------------------------------------------------------------- E2M1 (NVFP4)


@triton.jit
def e2m1_codes(v):
    """``formats.encode_e2m1`` (round to nearest even): codes 0..15, sign in
    bit 3, of float32 ``v`` already clamped to [-6, 6]. Ties go to the even
    code, hence the alternating ``>`` / ``>=``."""
    a = tl.abs(v)
    c = (a > 0.25).to(tl.int32) + (a >= 0.75).to(tl.int32)
    c += (a > 1.25).to(tl.int32) + (a >= 1.75).to(tl.int32)
    c += (a > 2.5).to(tl.int32) + (a >= 3.5).to(tl.int32)
    c += (a > 5.0).to(tl.int32)
    sign = (v.to(tl.int32, bitcast=True) >> 28) & 8
    return c | sign


@triton.jit
def e2m1_codes_fast(v):
    """:func:`e2m1_codes` of an *unclamped* ``v`` in fewer instructions. On
    each binade group of the grid the codes are evenly spaced: code
    ``rne(2a)`` below 2, ``rne(a) + 2`` below 4, ``rne(a / 2) + 4`` above,
    and since the three lines are concave together, the code is the least
    of them, capped at 7 (saturation at 6). Each line plus ``2**23`` is
    rounded to an integer by its one addition (the products are exact; ties
    go to even, and the offsets are even so they keep a tie's parity), and
    rounding commutes with the minimum, so the code sits in the low bits of
    the least sum. NaN gives code 0 (``max(NaN, 0)`` is 0). The code is in
    the low four bits and bits 4-7 are zero; the bits above them are not
    cleared (:func:`pack_nibbles` keeps the low byte)."""
    a = tl.maximum(tl.abs(v), 0.0)
    c = tl.minimum(tl.minimum(a * 2.0 + 8388608.0, a + 8388610.0), tl.minimum(a * 0.5 + 8388612.0, 8388615.0))
    # the sign into bit 3
    return c.to(tl.int32, bitcast=True) | ((v.to(tl.int32, bitcast=True) >> 28) & 8)


#: float32 RN(1/6): amax / 6 as ``div_by_scale(amax, 6, RCP6)``
RCP6 = tl.constexpr(0.1666666716337204)


@triton.jit
def e4m3_reciprocal(b, NATIVE: tl.constexpr):
    """RN(1 / b) for normal e4m3 values ``b`` (held as float32): an
    approximate reciprocal (the GPU's ``rcp.approx``; elsewhere Triton's
    ``/``, exact in the interpreter) and one Newton step. Exact for all 119
    positive normal e4m3 values: ``gpu_check_quantize.py`` checks each, on
    both paths, on the GPU."""
    if NATIVE:
        y = tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [b], dtype=tl.float32, is_pure=True,
                                      pack=1)
    else:
        y = 1.0 / b
    return tl.fma(y, tl.fma(-b, y, 1.0), y)


@triton.jit
def _e2m1_value(c):
    """Magnitude of e2m1 code ``c`` (0..7)."""
    return tl.where(c < 4, c.to(tl.float32) * 0.5,
                    tl.where(c == 4, 2.0, tl.where(c == 5, 3.0, tl.where(c == 6, 4.0, 6.0))))


@triton.jit
def e2m1_codes_stochastic(v, noise):
    """``formats.encode_e2m1`` with noise: round up between the two
    neighbouring grid points when ``noise < (a - lo) / span``."""
    a = tl.minimum(tl.abs(v), 6.0, propagate_nan=tl.PropagateNan.ALL)
    lo = (a >= 0.5).to(tl.int32) + (a >= 1.0).to(tl.int32) + (a >= 1.5).to(tl.int32)
    lo += (a >= 2.0).to(tl.int32) + (a >= 3.0).to(tl.int32) + (a >= 4.0).to(tl.int32)
    lo += (a >= 6.0).to(tl.int32)
    lo_v = _e2m1_value(lo)
    hi_v = _e2m1_value(tl.minimum(lo + 1, 7))
    span = tl.where(hi_v > lo_v, hi_v - lo_v, 1.0)
    up = noise < tl.math.div_rn(a - lo_v, span)
    c = tl.where(up & (lo < 7), lo + 1, lo)
    sign = (v.to(tl.int32, bitcast=True) >> 28) & 8
    return c | sign


@triton.jit
def pack_nibbles(codes, BM: tl.constexpr, NB: tl.constexpr, BS: tl.constexpr):
    """(BM, NB, BS) int32 codes -> (BM, NB, BS // 2) uint8, even element in
    the low nibble. Only the low byte of each code is read (bits 4-7 zero)."""
    lo, hi = tl.split(tl.reshape(codes, (BM, NB, BS // 2, 2)))
    return (lo | (hi << 4)).to(tl.uint8)


# --------------------------------------------------------------------------- INT4


@triton.jit
def round_half_even(v):
    """``torch.round`` for |v| < 2**22 (callers clamp first): adding 1.5 * 2**23
    rounds to an integer in fp32 (ties to even), subtracting it is exact."""
    return (v + 12582912.0) - 12582912.0


@triton.jit
def round_up_scale(s, FP16: tl.constexpr):
    """``_round_up_to(s, bf16/fp16)`` for ``s`` in the dtype's normal range (or
    NaN): round to nearest even, bump one ulp if that fell below ``s``.
    Returns ``(float32 value, int16 bits)``."""
    b = s.to(tl.int32, bitcast=True)
    if FP16:
        h = ((b + 0xFFF + ((b >> 13) & 1)) >> 13) - (112 << 10)
        f = ((h >> 10) + 112) << 23 | (h & 0x3FF) << 13
        h = tl.where(f.to(tl.float32, bitcast=True) < s, h + 1, h)
        h = tl.where(s != s, 0x7E00, h)
        val = (((h >> 10) + 112) << 23 | (h & 0x3FF) << 13).to(tl.float32, bitcast=True)
        val = tl.where(s != s, s, val)
    else:
        r = (b + 0x7FFF + ((b >> 16) & 1)) & -65536
        r = tl.where(r.to(tl.float32, bitcast=True) < s, r + 65536, r)
        # NaN: the GPU's canonical 0x7FFFFFFF would carry into the sign bit
        r = tl.where(s != s, 0x7FC00000, r)
        h = r >> 16
        val = r.to(tl.float32, bitcast=True)
    return val, h.to(tl.int16)
