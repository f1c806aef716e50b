"""W4A16: a 16-bit activation times a 4-bit weight (INT4 or NVFP4).

``out (M, N) = x (M, K) @ W.T`` where ``W (N, K)`` is held in the Packed
layout (:mod:`breccia.packing`): for each row of 16 and chunk of 32 codes, 16
bytes, low nibbles the first 16 codes, high nibbles the next 16. Decode is
bandwidth-bound, so the kernel is built around reading those bytes once:

- each program owns ``BLOCK_N`` weight rows and a range of K (split-K: the
  ``SPLIT_K`` programs of a row block add into an fp32 workspace, and the last
  one to finish -- counted with an atomic ticket -- writes the output and
  zeroes the workspace and its ticket for the next call: one launch, no
  memset, no host sync, CUDA-graph safe);
- a step loads ``CHUNKS`` chunks per row (16-byte vectors, ``CHUNKS * 256``
  contiguous bytes per 16 rows), unpacks the two nibble halves and scales
  them in registers, and runs two tensor-core dots, ``W_lo @ x_lo.T`` and
  ``W_hi @ x_hi.T``, with the activation gathered in the same order; the
  weight is the dot's M side (``BLOCK_N`` rows) and the few tokens its N
  side, so M = 1..16 pads to 16, not to a 64-row tile; fp32 accumulation.

Decoding is exact, in the dot's dtype (the activation's, bf16 or fp16):

- INT4: the code ``u`` (sign bit flipped for two's complement) is ORed into
  the mantissa of 2**7 (bf16) or 2**10 (fp16), giving ``2**7 + u`` exactly;
  subtracting ``2**7 + 8`` (or ``2**7 + zero point``) leaves the integer, and
  one multiply by the group scale rounds once -- the same bits as
  ``breccia.dequantize(w, x.dtype)``. (fp16 decodes the high nibble in place,
  worth 16x, with the scale divided by 16; bf16's 7-bit mantissa has no room
  for it, so it is shifted down first.)
- NVFP4 (bf16): the e2m1 code's sign goes to bit 15 and its exponent and
  mantissa to bits 8-6: the bf16 of value * 2**-126 (e2m1's subnormal 0.5
  lands on bf16's subnormal); times the e4m3 block scale * 2**119 the
  product, value * scale * 2**-7, has at most 6 significant bits and is
  exact. The fp32 global scale (and 2**7) multiplies the accumulator once at
  the end. NVFP4 with fp16 activations decodes in fp32 (its 2**-7 products
  could be fp16 subnormals).
- ``Config.f32`` decodes in fp32 instead (the same bits, ~1.6x the
  instructions; the CPU interpreter, which has no bf16 arithmetic, always
  does).

Configs come from a small fixed list (:func:`candidates`); :func:`config_for`
picks one from a table measured on an H100 (``TUNED``) or a heuristic, so the
first call compiles one kernel and runs. :func:`autotune` times the list for a
shape and remembers the winner (in memory and in a JSON file), for shapes the
table lacks.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

__all__ = ["Config", "candidates", "config_for", "autotune", "w4a16_mm", "KINDS"]

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

#: weight kinds the kernel decodes (constexpr KIND)
KINDS = {"int4_sym": 0, "int4_asym": 1, "nvfp4": 2}


@dataclass(frozen=True)
class Config:
    block_n: int  # weight rows per program (multiple of 16)
    chunks: int  # 32-code chunks per K step
    split_k: int  # programs per row block along K
    num_warps: int
    num_stages: int
    f32: bool = False  # dequantize in fp32 (the same bits, ~1.6x the instructions)


def _block_m(m: int) -> int:
    return 16 if m <= 16 else 32 if m <= 32 else 64 if m <= 64 else 128


def candidates(m: int, n: int, k: int) -> list[Config]:
    """The fixed list the tuner times for an (m, n, k) problem.

    Decode is latency-bound inside a program (unpack -> scale -> MMA is a
    dependent chain), so the list favours many small programs per SM: 2-warp
    programs of 32 or 64 rows (``mma.sync``) and split-K, besides 4-warp
    64-row programs (one Hopper warpgroup MMA, A from registers)."""
    if m <= 16:
        return [
            Config(32, 4, 4, 2, 4),
            Config(32, 4, 2, 2, 4),
            Config(32, 4, 8, 2, 4),
            Config(64, 4, 4, 2, 4),
            Config(64, 4, 2, 2, 4),
            Config(64, 4, 4, 4, 4),
            Config(64, 4, 8, 4, 4),
            Config(32, 8, 4, 2, 3),
        ]
    if m <= 64:
        return [Config(32, 4, 2, 2, 4), Config(64, 4, 2, 4, 4), Config(64, 4, 1, 4, 4)]
    return [Config(64, 4, 1, 4, 3), Config(32, 4, 1, 2, 3), Config(128, 2, 1, 4, 4)]


def _heuristic(m: int, n: int, k: int, sms: int) -> Config:
    """A config without timing: 32-row, 2-warp programs, split-K until ~6
    programs per SM (each split keeping >= 8 K steps)."""
    if m > 64:
        return candidates(m, n, k)[0]
    tiles = -(-n // 32)
    steps = -(-k // 128)
    split = 1
    while tiles * split < 6 * sms and split < 8 and steps // (split * 2) >= 8:
        split *= 2
    return Config(32, 4, split, 2, 4)


def _m_bucket(m: int) -> int:
    for b in (1, 2, 4, 8, 16, 32, 64, 128):
        if m <= b:
            return b
    return 256


#: the fastest candidate per (capability major, kind, M bucket, N, K), as
#: ``benchmarks/bench_decode.py`` tuned them on one H100 80GB HBM3
#: (2026-11-25, benchmarks/results/decode-h100.md run B; INT4's were tuned
#: before its bf16 high-nibble fix, which adds one shift per pair); other
#: kinds (INT4 asymmetric) and shapes fall back to the heuristic
TUNED: dict[tuple, Config] = {
    (9, 'int4_sym', 1, 28672, 8192): Config(32, 4, 2, 2, 4),
    (9, 'int4_sym', 1, 4096, 4096): Config(64, 4, 8, 4, 4),
    (9, 'int4_sym', 1, 8192, 28672): Config(32, 4, 4, 2, 4),
    (9, 'int4_sym', 1, 8192, 8192): Config(64, 4, 4, 2, 4),
    (9, 'int4_sym', 128, 28672, 8192): Config(128, 2, 1, 4, 4),
    (9, 'int4_sym', 128, 4096, 4096): Config(64, 4, 1, 4, 3),
    (9, 'int4_sym', 128, 8192, 28672): Config(64, 4, 1, 4, 3),
    (9, 'int4_sym', 128, 8192, 8192): Config(64, 4, 1, 4, 3),
    (9, 'int4_sym', 16, 28672, 8192): Config(64, 4, 2, 2, 4),
    (9, 'int4_sym', 16, 4096, 4096): Config(64, 4, 4, 4, 4),
    (9, 'int4_sym', 16, 8192, 28672): Config(64, 4, 4, 2, 4),
    (9, 'int4_sym', 16, 8192, 8192): Config(64, 4, 4, 2, 4),
    (9, 'int4_sym', 2, 28672, 8192): Config(32, 4, 2, 2, 4),
    (9, 'int4_sym', 2, 4096, 4096): Config(64, 4, 8, 4, 4),
    (9, 'int4_sym', 2, 8192, 28672): Config(32, 4, 4, 2, 4),
    (9, 'int4_sym', 2, 8192, 8192): Config(64, 4, 4, 2, 4),
    (9, 'int4_sym', 32, 28672, 8192): Config(64, 4, 1, 4, 4),
    (9, 'int4_sym', 32, 4096, 4096): Config(32, 4, 2, 2, 4),
    (9, 'int4_sym', 32, 8192, 28672): Config(64, 4, 2, 4, 4),
    (9, 'int4_sym', 32, 8192, 8192): Config(64, 4, 2, 4, 4),
    (9, 'int4_sym', 4, 28672, 8192): Config(32, 4, 2, 2, 4),
    (9, 'int4_sym', 4, 4096, 4096): Config(64, 4, 8, 4, 4),
    (9, 'int4_sym', 4, 8192, 28672): Config(32, 4, 4, 2, 4),
    (9, 'int4_sym', 4, 8192, 8192): Config(64, 4, 4, 2, 4),
    (9, 'int4_sym', 64, 28672, 8192): Config(64, 4, 1, 4, 4),
    (9, 'int4_sym', 64, 4096, 4096): Config(64, 4, 2, 4, 4),
    (9, 'int4_sym', 64, 8192, 28672): Config(64, 4, 1, 4, 4),
    (9, 'int4_sym', 64, 8192, 8192): Config(64, 4, 1, 4, 4),
    (9, 'int4_sym', 8, 28672, 8192): Config(32, 4, 2, 2, 4),
    (9, 'int4_sym', 8, 4096, 4096): Config(64, 4, 8, 4, 4),
    (9, 'int4_sym', 8, 8192, 28672): Config(32, 4, 4, 2, 4),
    (9, 'int4_sym', 8, 8192, 8192): Config(64, 4, 4, 2, 4),
    (9, 'nvfp4', 1, 28672, 8192): Config(64, 4, 4, 2, 4),
    (9, 'nvfp4', 1, 4096, 4096): Config(32, 4, 2, 2, 4),
    (9, 'nvfp4', 1, 8192, 28672): Config(32, 4, 8, 2, 4),
    (9, 'nvfp4', 1, 8192, 8192): Config(64, 4, 4, 2, 4),
    (9, 'nvfp4', 128, 28672, 8192): Config(64, 4, 1, 4, 3),
    (9, 'nvfp4', 128, 4096, 4096): Config(64, 4, 1, 4, 3),
    (9, 'nvfp4', 128, 8192, 28672): Config(64, 4, 1, 4, 3),
    (9, 'nvfp4', 128, 8192, 8192): Config(64, 4, 1, 4, 3),
    (9, 'nvfp4', 16, 28672, 8192): Config(64, 4, 4, 2, 4),
    (9, 'nvfp4', 16, 4096, 4096): Config(32, 4, 4, 2, 4),
    (9, 'nvfp4', 16, 8192, 28672): Config(64, 4, 4, 2, 4),
    (9, 'nvfp4', 16, 8192, 8192): Config(64, 4, 4, 2, 4),
    (9, 'nvfp4', 2, 28672, 8192): Config(64, 4, 4, 2, 4),
    (9, 'nvfp4', 2, 4096, 4096): Config(32, 4, 2, 2, 4),
    (9, 'nvfp4', 2, 8192, 28672): Config(32, 4, 8, 2, 4),
    (9, 'nvfp4', 2, 8192, 8192): Config(64, 4, 4, 2, 4),
    (9, 'nvfp4', 32, 28672, 8192): Config(64, 4, 1, 4, 4),
    (9, 'nvfp4', 32, 4096, 4096): Config(32, 4, 2, 2, 4),
    (9, 'nvfp4', 32, 8192, 28672): Config(64, 4, 2, 4, 4),
    (9, 'nvfp4', 32, 8192, 8192): Config(64, 4, 2, 4, 4),
    (9, 'nvfp4', 4, 28672, 8192): Config(64, 4, 4, 2, 4),
    (9, 'nvfp4', 4, 4096, 4096): Config(32, 4, 2, 2, 4),
    (9, 'nvfp4', 4, 8192, 28672): Config(32, 4, 8, 2, 4),
    (9, 'nvfp4', 4, 8192, 8192): Config(64, 4, 4, 2, 4),
    (9, 'nvfp4', 64, 28672, 8192): Config(64, 4, 1, 4, 4),
    (9, 'nvfp4', 64, 4096, 4096): Config(64, 4, 2, 4, 4),
    (9, 'nvfp4', 64, 8192, 28672): Config(64, 4, 2, 4, 4),
    (9, 'nvfp4', 64, 8192, 8192): Config(64, 4, 2, 4, 4),
    (9, 'nvfp4', 8, 28672, 8192): Config(64, 4, 4, 2, 4),
    (9, 'nvfp4', 8, 4096, 4096): Config(32, 4, 2, 2, 4),
    (9, 'nvfp4', 8, 8192, 28672): Config(32, 4, 8, 2, 4),
    (9, 'nvfp4', 8, 8192, 8192): Config(64, 4, 4, 2, 4),
}

_CACHE: dict[tuple, Config] = {}
_LOCK = threading.Lock()
_CACHE_FILE = os.path.join(
    os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "breccia", "w4a16.json"
)


def _load_cache_file() -> None:
    try:
        with open(_CACHE_FILE) as f:
            for key, cfg in json.load(f).items():
                _CACHE.setdefault(tuple(json.loads(key)), Config(**cfg))
    except (OSError, ValueError, TypeError):
        pass


def _save_cache_file() -> None:
    try:
        os.makedirs(os.path.dirname(_CACHE_FILE), exist_ok=True)
        data = {json.dumps(list(k)): asdict(v) for k, v in _CACHE.items()}
        tmp = f"{_CACHE_FILE}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, _CACHE_FILE)
    except OSError:
        pass


_load_cache_file()


def _key(device: torch.device, kind: str, m: int, n: int, k: int) -> tuple:
    major = torch.cuda.get_device_capability(device)[0] if device.type == "cuda" else 0
    return (major, kind, _m_bucket(m), n, k)


def config_for(device: torch.device, kind: str, m: int, n: int, k: int) -> Config:
    """Tuned (this process or file), else measured table, else heuristic."""
    key = _key(device, kind, m, n, k)
    cfg = _CACHE.get(key) or TUNED.get(key)
    if cfg is None:
        sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132
        cfg = _heuristic(m, n, k, sms)
    return cfg


# --------------------------------------------------------------------------- kernel


@triton.jit
def _to_dt(v, DT: tl.constexpr, INTERPRET: tl.constexpr):
    """fp32 ``v`` rounded (to nearest even) to DT. Under the interpreter the
    result stays fp32, holding a DT value: its bf16 is raw uint16 (no
    arithmetic) and its fp32 -> bf16 cast truncates."""
    if INTERPRET:
        if DT == tl.bfloat16:
            bits = v.to(tl.int32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
            return bits.to(tl.float32, bitcast=True)
        else:
            return v.to(DT).to(tl.float32)
    else:
        return v.to(DT)


@triton.jit
def _nvfp4_pre(DT: tl.constexpr):
    """The power of two NVFP4 weights carry in the dot (undone on the
    accumulator): 2**-7 in bf16 (see _dequant), 1 in fp16."""
    if DT == tl.bfloat16:
        return 0.0078125
    else:
        return 1.0


@triton.jit
def _dequant(
    byte, s, z, HI: tl.constexpr, KIND: tl.constexpr, DT: tl.constexpr, SCALE_IN_DT: tl.constexpr,
    F32: tl.constexpr, INTERPRET: tl.constexpr,
):  # fmt: skip
    """The low (``HI`` False) or high nibbles of Packed bytes, decoded and
    times their scales, exact in DT (module doc). ``F32``: the arithmetic in
    fp32, rounded once at the end -- the same bits (the interpreter, which has
    no bf16 arithmetic, always takes it; so does NVFP4 with fp16). The
    16-bit paths start from :func:`_bits16`."""
    if F32:
        code = (byte >> 4) if HI else (byte & 0xF)
        if KIND == 2:
            # e2m1 (s e1 e0 m) -> fp32 bits s.0000000.e1 e0 m: v * 2**-126 (code 1: subnormal)
            c = code.to(tl.int32)
            v = (((c & 8) << 28) | ((c & 7) << 22)).to(tl.float32, bitcast=True) * 8.507059173023462e37
            bs = s.to(tl.float8e4nv, bitcast=True).to(tl.float32)
            return _to_dt(v * (bs * _nvfp4_pre(DT)), DT, INTERPRET)  # exact
        else:
            u = (code ^ 8) if KIND == 0 else code  # two's complement nibble -> q + 8
            zf = 8.0 if KIND == 0 else z.to(tl.float32)
            # 2**23 + u exactly (u in the low mantissa bits), minus the offset
            v = (u.to(tl.int32) | 0x4B000000).to(tl.float32, bitcast=True) - (zf + 8388608.0)
            return _to_dt(v * s.to(tl.float32), DT, INTERPRET)
    bits, unit = _bits16(byte, HI, KIND, DT)
    if KIND == 2:
        # the bits are v * 2**-126 in bf16 (code 1: subnormal); times
        # bs * 2**119 (normal): v * bs * 2**-7, exact
        bs = s.to(tl.float8e4nv, bitcast=True).to(tl.float32)
        return bits.to(DT, bitcast=True) * (bs * 6.646139978924579e35).to(DT)
    else:
        # the bits are 2**7 (bf16) or 2**10 (fp16) + unit * u, exactly
        base: tl.constexpr = 128.0 if DT == tl.bfloat16 else 1024.0
        zf = 8.0 if KIND == 0 else z.to(tl.float32)
        v = bits.to(DT, bitcast=True) - (base + unit * zf).to(DT)  # unit * (q - zero point), exact
        if SCALE_IN_DT:
            return v * (s.to(tl.float32) * (1.0 / unit)).to(DT)
        else:  # the scale's dtype is not the dot's: multiply in fp32, round once
            return (v.to(tl.float32) * (s.to(tl.float32) * (1.0 / unit))).to(DT)


@triton.jit
def _bits16(byte, HI: tl.constexpr, KIND: tl.constexpr, DT: tl.constexpr):
    """The 16-bit pattern the fast (non-F32) decode starts from, and the
    power of two it carries for INT4 (``unit``). Integer ops only: the CPU
    tests check these bits under the interpreter.

    - NVFP4 (bf16): ``s.0000000.e1 e0 m``, v * 2**-126; code 1 (0.5) lands on
      bf16's subnormal of the same value.
    - INT4: the code (sign bit flipped for two's complement: q + 8) ORed into
      the mantissa of 2**7 (bf16, 7 mantissa bits) or 2**10 (fp16, 10 bits).
      fp16 decodes the high nibble in place (bits 4-7: unit 16); bf16 has no
      room above bit 6, so its high nibble is shifted down (unit 1)."""
    b16 = byte.to(tl.int16)
    if KIND == 2:  # bf16 only: fp16 NVFP4 takes the F32 path (its v * bs could be subnormal)
        if HI:
            bits = ((b16 << 8) & -32768) | ((b16 << 2) & 0x01C0)
        else:
            bits = ((b16 << 12) & -32768) | ((b16 << 6) & 0x01C0)
        return bits, 1.0
    else:
        flip: tl.constexpr = 0x80 if HI else 0x08
        if HI and DT == tl.bfloat16:
            u = (b16 >> 4) & 0x0F
            flip2: tl.constexpr = 0x08
            unit: tl.constexpr = 1.0
        else:
            mask: tl.constexpr = 0xF0 if HI else 0x0F
            u = b16 & mask
            flip2: tl.constexpr = flip
            unit: tl.constexpr = 16.0 if HI else 1.0
        if KIND == 0:
            u = u ^ flip2
        magic: tl.constexpr = 0x4300 if DT == tl.bfloat16 else 0x6400
        return u | magic, unit


@triton.jit(do_not_specialize=["M", "CPS"])
def _w4a16_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, gs_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr,
    M, N, K, KCH, CPS,
    stride_xm, stride_wg, stride_wc,
    stride_sn, stride_sg, stride_zn, stride_zg, stride_om, stride_on,
    KIND: tl.constexpr, GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, SCALE_IN_DT: tl.constexpr,
    EVEN: tl.constexpr, F32: tl.constexpr, INTERPRET: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, CHUNKS: tl.constexpr, SPLIT_K: tl.constexpr,
):  # fmt: skip
    DT: tl.constexpr = x_ptr.dtype.element_ty
    HALF: tl.constexpr = 16
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)

    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rc = tl.arange(0, CHUNKS)
    rj = tl.arange(0, HALF)
    n_ok = rn < N
    m_ok = rm < M

    c_start = pid_k * CPS
    c_end = tl.minimum(c_start + CPS, KCH)

    # weight bytes (BLOCK_N, CHUNKS, 16): row n at [n // 16, c, n % 16, :]
    w_rows = (rn // 16) * stride_wg + (rn % 16) * 16
    w_ptrs = w_ptr + w_rows[:, None, None] + (c_start + rc)[None, :, None] * stride_wc + rj[None, None, :]
    # activation, gathered in the weight's order: element kk of the low half
    # of a step is K index 32 * (kk // 16) + kk % 16, the high half is +16
    kk = tl.arange(0, CHUNKS * HALF)
    k_lo = c_start * 32 + (kk // HALF) * 32 + kk % HALF
    x_ptrs = x_ptr + rm[None, :] * stride_xm + k_lo[:, None]  # x: K contiguous
    s_rows = s_ptr + rn[:, None] * stride_sn
    z_rows = z_ptr + rn[:, None] * stride_zn

    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for c0 in range(c_start, c_end, CHUNKS):
        cc = c0 + rc  # (CHUNKS,)
        if EVEN:
            b = tl.load(w_ptrs)
        else:
            b = tl.load(w_ptrs, mask=n_ok[:, None, None] & (cc < c_end)[None, :, None], other=0)
        if EVEN:  # K is whole chunks: only the token rows need a mask
            x_lo = tl.load(x_ptrs, mask=m_ok[None, :], other=0.0)
            x_hi = tl.load(x_ptrs + HALF, mask=m_ok[None, :], other=0.0)
        else:
            k_lo = c0 * 32 + (kk // HALF) * 32 + kk % HALF
            x_lo = tl.load(x_ptrs, mask=(k_lo < K)[:, None] & m_ok[None, :], other=0.0)
            x_hi = tl.load(x_ptrs + HALF, mask=(k_lo + HALF < K)[:, None] & m_ok[None, :], other=0.0)

        # one scale (and zero point) per half chunk: groups are >= 16 wide
        g_lo = (cc * 32) // GROUP
        g_ok = n_ok[:, None] & (cc < c_end)[None, :]
        s_lo = tl.load(s_rows + g_lo[None, :] * stride_sg, mask=g_ok, other=0)[:, :, None]
        z_lo = s_lo
        if KIND == 1:
            z_lo = tl.load(z_rows + g_lo[None, :] * stride_zg, mask=g_ok, other=0)[:, :, None]
        if GROUP >= 32:  # both halves of a chunk share a group
            s_hi = s_lo
            z_hi = z_lo
        else:
            g_hi = (cc * 32 + HALF) // GROUP
            s_hi = tl.load(s_rows + g_hi[None, :] * stride_sg, mask=g_ok, other=0)[:, :, None]
            z_hi = s_hi
            if KIND == 1:
                z_hi = tl.load(z_rows + g_hi[None, :] * stride_zg, mask=g_ok, other=0)[:, :, None]

        w_lo = _dequant(b, s_lo, z_lo, False, KIND, DT, SCALE_IN_DT, F32, INTERPRET)
        w_hi = _dequant(b, s_hi, z_hi, True, KIND, DT, SCALE_IN_DT, F32, INTERPRET)
        w_lo = tl.reshape(w_lo, (BLOCK_N, CHUNKS * HALF))
        w_hi = tl.reshape(w_hi, (BLOCK_N, CHUNKS * HALF))
        if INTERPRET:  # bf16 is raw uint16 there: the dot on exact values in fp32
            acc = tl.dot(w_lo, x_lo.to(tl.float32), acc, input_precision="ieee")
            acc = tl.dot(w_hi, x_hi.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(w_lo, x_lo, acc)
            acc = tl.dot(w_hi, x_hi, acc)
        w_ptrs += CHUNKS * stride_wc
        x_ptrs += CHUNKS * 32

    if KIND == 2:
        acc = acc * (tl.load(gs_ptr) / _nvfp4_pre(DT))

    o_mask = n_ok[:, None] & m_ok[None, :]
    o_ptrs = out_ptr + rm[None, :] * stride_om + rn[:, None] * stride_on
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[:, None]
        tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=o_mask)
    else:
        # fp32 workspace (64, N), zero between calls; one ticket per row block
        # (split-K runs only for M <= 64: one block of tokens, pid_m == 0)
        ws_ptrs = ws_ptr + rm[None, :] * N + rn[:, None]
        tl.atomic_add(ws_ptrs, acc, mask=o_mask, sem="relaxed")
        tl.debug_barrier()  # every thread's adds before the ticket
        ticket = tl.atomic_add(cnt_ptr + pid_n, 1, sem="acq_rel")
        if ticket == SPLIT_K - 1:  # the last of the row block: finish and clean
            # read the sum and leave zero, in one atomic (as int32 bits: L2's
            # copy, which every program's adds went to)
            ws_bits = ws_ptrs.to(tl.pointer_type(tl.int32))
            tot = tl.atomic_xchg(ws_bits, tl.zeros_like(acc).to(tl.int32), mask=o_mask, sem="relaxed")
            tot = tot.to(tl.float32, bitcast=True)
            tl.atomic_xchg(cnt_ptr + pid_n, 0, sem="relaxed")
            if HAS_BIAS:
                tot += tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[:, None]
            tl.store(o_ptrs, tot.to(out_ptr.dtype.element_ty), mask=o_mask)


# --------------------------------------------------------------------------- launcher

_WORKSPACES: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
#: split-K is for few tokens: up to this many (one row block of M)
_SPLIT_MAX_M = 64


def _workspace(device: torch.device, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split-K's fp32 partial sums (64, n) and tickets, zero at rest (each
    call leaves them zero). One pair per device and n, allocated on first use
    (outside any CUDA-graph capture, which warm-up runs precede): kernels on
    one stream take turns; concurrent streams would need a pair each."""
    key = (device, n)
    ws = _WORKSPACES.get(key)
    if ws is None:
        with _LOCK:
            ws = _WORKSPACES.get(key)
            if ws is None:
                ws = (
                    torch.zeros(_SPLIT_MAX_M * n, dtype=torch.float32, device=device),
                    torch.zeros(-(-n // 16), dtype=torch.int32, device=device),
                )
                _WORKSPACES[key] = ws
    return ws


def w4a16_mm(
    x: torch.Tensor,
    qdata: torch.Tensor,
    scale: torch.Tensor,
    zero_point: Optional[torch.Tensor],
    global_scale: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    kind: str,
    group: int,
    n: int,
    k: int,
    out_dtype: torch.dtype,
    config: Optional[Config] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``x (M, K) @ W.T (+ bias)`` for a Packed 4-bit ``W`` (N, K).

    ``qdata``: the Packed payload (:func:`breccia.packing.pack_codes`);
    ``scale`` / ``zero_point``: (N, K/group) grids (any strides);
    ``global_scale``: NVFP4's fp32 scalar; ``kind``: a key of :data:`KINDS`;
    ``x``: bf16 or fp16; ``config``: one of :func:`candidates` (default:
    :func:`config_for`); ``out``: an (M, N) tensor of ``out_dtype`` to write
    into (tests poison it). Returns (M, N) of ``out_dtype``."""
    m = x.shape[0]
    if x.stride(-1) != 1:
        x = x.contiguous()
    cfg = config or config_for(x.device, kind, m, n, k)
    if out is None:
        out = torch.empty((m, n), dtype=out_dtype, device=x.device)
    if m == 0 or n == 0:
        return out
    if k == 0:
        return out.zero_() if bias is None else out.copy_(bias.expand(m, n))
    block_m = _block_m(m)
    split = cfg.split_k if m <= _SPLIT_MAX_M else 1
    kch = qdata.shape[1]
    per_split = -(-kch // split)
    cps = -(-per_split // cfg.chunks) * cfg.chunks  # chunks per split, whole K steps
    split = -(-kch // cps)
    if split > 1:
        ws, cnt = _workspace(x.device, n)
    else:
        ws, cnt = out, out  # unused
    even = n % cfg.block_n == 0 and kch % cfg.chunks == 0 and k % 32 == 0
    if scale.dtype == torch.float8_e4m3fn:
        scale = scale.view(torch.uint8)  # bytes in, decoded in the kernel
    zp = zero_point if zero_point is not None else scale
    gs = global_scale if global_scale is not None else scale
    grid = (-(-n // cfg.block_n), split, -(-m // block_m))
    _w4a16_kernel[grid](
        x, qdata, scale, zp, gs, bias if bias is not None else out, out, ws, cnt,
        m, n, k, kch, cps,
        x.stride(0), qdata.stride(0), qdata.stride(1),
        scale.stride(0), scale.stride(1), zp.stride(0), zp.stride(1), out.stride(0), out.stride(1),
        KIND=KINDS[kind], GROUP=group, HAS_BIAS=bias is not None,
        SCALE_IN_DT=scale.dtype == x.dtype, EVEN=even, INTERPRET=_INTERPRET,
        F32=cfg.f32 or _INTERPRET or (kind == "nvfp4" and x.dtype == torch.float16),
        BLOCK_N=cfg.block_n, BLOCK_M=block_m, CHUNKS=cfg.chunks, SPLIT_K=split,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return out


def autotune(
    x: torch.Tensor,
    qdata: torch.Tensor,
    scale: torch.Tensor,
    zero_point: Optional[torch.Tensor],
    global_scale: Optional[torch.Tensor],
    kind: str,
    group: int,
    n: int,
    k: int,
    save: bool = True,
) -> tuple[Config, dict]:
    """Time :func:`candidates` for this problem (CUDA), remember the fastest
    for its (kind, M bucket, N, K); returns it and ``{config: ms}``."""
    from triton.testing import do_bench

    m = x.shape[0]
    times = {}
    for cfg in candidates(m, n, k):
        if cfg.split_k > 1 and m > _SPLIT_MAX_M:
            continue
        fn = lambda: w4a16_mm(x, qdata, scale, zero_point, global_scale, None, kind, group, n, k, x.dtype, cfg)  # noqa: E731
        try:
            fn()
            times[cfg] = do_bench(fn, warmup=5, rep=25, return_mode="median")
        except Exception as e:  # a config the compiler refuses (resources) is skipped
            times[cfg] = float("inf")
            print(f"w4a16 autotune: {cfg} failed: {type(e).__name__}: {str(e)[:200]}")
    best = min(times, key=times.get)
    _CACHE[_key(x.device, kind, m, n, k)] = best
    if save:
        _save_cache_file()
    return best, times
