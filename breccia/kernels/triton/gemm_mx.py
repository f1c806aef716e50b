"""MXFP8 GEMM for GPUs without MX tensor cores (sm89, sm90).

``out = (qa * 2**(ea-127)) @ (qb * 2**(eb-127))``: ``qa`` (M, K) and ``qb``
(K, N) FP8, one e8m0 scale per 32 along K (``ea`` (M, ceil(K/32)), ``eb``
(ceil(K/32), N)). Hopper's tensor cores take no block scales. Four loops:

- variant 5, asynchronous FP8 wgmma (Hopper, Gluon):
  :mod:`.gemm_wgmma` with a 32-wide slice, the scales decoded to fp32
  beforehand; each slice's fold (two fp32 instructions per output element
  per 32 of K, twice the FP8 MMA's time on an H100) overlaps the next
  slice's MMA and is what bounds it: about 0.6x bf16. Needs K-contiguous
  payloads with 16-byte aligned rows (``wgmma_ok``).
- variant 6, the same loop persistent and warp-specialized (a loader
  warpgroup, two consumer warpgroups): 1.08-1.12x variant 5 at large M on an
  H200, 0.63-0.66x bf16; first in the list where variant 5 can run.
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
    _empty_product,
    _store_tile,
    _tile,
    m_bucket,
    reduce_split_k,
    split_k_output,
)
from .gemm_wgmma import empty_tma_rows, scaled_wgmma_mm, wgmma_ok
from .launch import cdiv, for_tensor, interpreting

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
    wgmma = [
        Config(128, 128, 128, 4, 6, 6),  # warp-specialized: 1.08-1.12x the next at large M on an H200
        Config(128, 128, 256, 8, 3, 5),
        Config(64, 128, 256, 4, 2, 5),
        Config(128, 128, 128, 8, 5, 5),
        Config(64, 128, 128, 4, 4, 5),
    ]  # fmt: skip
    wgmma = wgmma if tma and not interpreting() else []
    return wgmma + [Config(128, 256, 64, 8, 3, 4), Config(128, 128, 64, 8, 4, 4), Config(64, 128, 128, 4, 4)]


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
    _, kt0, kt1, rm, rn, ram, rbn = _tile(M, N, K, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
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
    out = empty_tma_rows(r, c, e.device)
    grid = (cdiv(r, 16), cdiv(c, 128))
    for_tensor(src)(_decode_scales_kernel, grid)(
        src, out, r, c, src.stride(0), src.stride(1), out.stride(0), BLOCK_R=16, BLOCK_C=128
    )
    return out


def _launch_wgmma(qa, ea, qb, eb, c: Config, out_dtype, bias) -> torch.Tensor:
    return scaled_wgmma_mm(
        qa, qb, _decoded_scales(ea, True), _decoded_scales(eb, False), MX_BLOCK, c, out_dtype, bias
    )


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
    kb = cdiv(k, MX_BLOCK)
    if tuple(ea.shape) != (m, kb) or tuple(eb.shape) != (kb, n):
        raise ValueError(
            f"mx_mm: expected scales ea {(m, kb)} and eb {(kb, n)} for M, N, K = {m}, {n}, {k}, "
            f"got {tuple(ea.shape)} and {tuple(eb.shape)}"
        )
    if ea.element_size() != 1 or eb.element_size() != 1:
        raise ValueError(f"mx_mm: expected e8m0 (1-byte) scales, got {ea.dtype} and {eb.dtype}")
    ea, eb = ea.view(torch.uint8), eb.view(torch.uint8)
    done = _empty_product(m, n, k, out_dtype, qa.device, bias)
    if done is not None:
        return done
    bias_arg = bias if bias is not None else ea  # never read without HAS_BIAS

    def launch(c: Config) -> torch.Tensor:
        if c.variant in (5, 6):  # the Gluon wgmma loops (gemm_wgmma)
            return _launch_wgmma(qa, ea, qb, eb, c, out_dtype, bias)
        meta = c.meta
        if meta["BLOCK_K"] % MX_BLOCK:  # whole 32-wide scale blocks a step
            raise ValueError(f"mx_mm: config {c!r} needs BLOCK_K a multiple of {MX_BLOCK}, got {meta['BLOCK_K']}")
        o, split = split_k_output(m, n, c.split_k, out_dtype, qa.device)
        grid = (cdiv(m, meta["BLOCK_M"]) * cdiv(n, meta["BLOCK_N"]), split)
        for_tensor(qa)(_mx_kernel, grid)(
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
        config = _TUNER.pick(key, lambda: _candidates(m, n, k, wg), launch)
    return launch(config)
