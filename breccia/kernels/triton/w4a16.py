"""W4A16: a 16-bit activation times a 4-bit weight (INT4 or NVFP4).

``out (M, N) = x (M, K) @ W.T`` where ``W (N, K)`` is held in the Packed
layout (:mod:`breccia.packing`): 16-row tiles by 64-code windows, 512 bytes
each, in the order the 32 lanes of a warp hold the A operand of
``mma.sync.m16n8k16`` -- a lane's 16 bytes are rows g and g + 8 of the tile
(low / high nibbles) at 16 consecutive codes. Two kernels read it:

- M <= 16 on CUDA: the MMA kernel (:mod:`.w4a16_mma`, Gluon + inline PTX):
  each lane decodes its 16 bytes straight into the MMA's registers (a few
  integer and bf16x2 ops per pair of codes), no shared memory, loads two
  to four windows ahead, programmatic dependent launch for M <= 8 on sm90;
  see that module;
- everything else (M > 16, fp16 x NVFP4, INT4 scales in another dtype than
  the activation, K not a multiple of 16, the CPU interpreter): the
  tensor-core kernel here, below.

Both split K across programs for few tokens: the ``SPLIT_K`` programs of a
row block add into an fp32 workspace, and the last one to finish -- counted
with an atomic ticket -- writes the output and zeroes the workspace and its
ticket for the next call: one launch, no memset, no host sync, CUDA-graph
safe.

The tensor-core kernel: each program owns ``BLOCK_N`` weight rows (row pairs
g, g + 8 of its tiles) and a range of K; a step loads ``CHUNKS`` windows per
row pair (64 contiguous bytes each, 16-byte vectors; ``cp.async``,
``num_stages`` deep), puts each word's bytes in K order (they come as K
offsets 0, 2, 1, 3), decodes the low nibbles (rows g) and the high nibbles
(rows g + 8) and scales them in registers, and runs two tensor-core dots
with the activation (contiguous in K); the weight is the dot's M side and
the few tokens its N side, so M = 1..16 pads to 16, not to a 64-row tile;
fp32 accumulation.

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

from ... import packing
from .launch import device_facts

__all__ = ["Config", "candidates", "config_for", "mma_applies", "autotune", "bench_graph", "w4a16_mm", "KINDS"]

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

#: weight kinds the kernel decodes (constexpr KIND)
KINDS = {"int4_sym": 0, "int4_asym": 1, "nvfp4": 2}


@dataclass(frozen=True)
class Config:
    block_n: int  # weight rows per program (tensor-core kernel: a multiple of 32; MMA kernel: 16 x tiles a warp (x warps without warp_split))
    chunks: int  # 64-code windows per K step (tensor-core kernel; 1 for the MMA kernel)
    split_k: int  # programs per row block along K
    num_warps: int
    num_stages: int  # software pipelining of the tensor-core kernel (the MMA kernel always runs two windows ahead)
    f32: bool = False  # dequantize in fp32 (the same bits, ~1.6x the instructions)
    mma: bool = False  # the per-lane decode + mma.sync kernel (:mod:`.w4a16_mma`), M <= 16
    warp_split: bool = False  # MMA kernel: a program's warps share its tiles and split its K range
    sets: int = 2  # MMA kernel: windows a warp keeps loading ahead (register sets, 2-4)
    pdl: int = 0  # MMA kernel, sm90+: programmatic dependent launch (see PDL_MODES)


#: ``Config.pdl``: how the MMA kernel uses programmatic dependent launch
#: (sm90+; the kernel is launched so that it may start before the previous
#: kernel in the stream has finished, and waits for it before it reads the
#: activation or touches its output and workspace)
PDL_MODES = {
    0: "off",
    1: "the next kernel may start at once; waits before its first load",
    2: "the next kernel may start at once; the first windows' weights and scales load before the wait",
    3: "as 2, the next kernel may start once every program has left its main loop",
}
#: False turns programmatic dependent launch off for every call. Modes 2 and 3
#: read the weight before the previous kernel has finished: a weight written by
#: the kernel just before the product, on the same stream, needs it off.
PDL = True


def _block_m(m: int) -> int:
    return 16 if m <= 16 else 32 if m <= 32 else 64 if m <= 64 else 128


#: warps an H100 SM keeps resident for the MMA kernel (80-128 registers a thread)
_MMA_WARPS_PER_SM = 20


def _mma_config(
    m: int, n: int, k: int, sms: int, tiles_per_warp: int, num_warps: int = 4, scale: float = 1.0, warp_split: bool = False,
    sets: int = 2, pdl: int = 0,
) -> Config:
    """An MMA-kernel config. Warps on their own tiles: split-K across
    programs so that about ``_MMA_WARPS_PER_SM`` warps per SM (times
    ``scale``) stream the weight, each keeping at least 4 windows. Warps
    splitting K (``warp_split``): one program per tile group, no split-K.
    ``sets`` and ``pdl``: see :class:`Config`."""
    nt = -(-n // 16)
    kw = -(-k // 64)
    if warp_split:  # the program's warps split K; programs do not (no workspace)
        split = 1
    else:
        warps = -(-nt // tiles_per_warp)
        split = max(1, min(kw // 4, round(scale * _MMA_WARPS_PER_SM * sms / warps)))
    rows = 16 * tiles_per_warp * (1 if warp_split else num_warps)
    return Config(rows, 1, split, num_warps, 1, mma=True, warp_split=warp_split, sets=sets, pdl=pdl)


def candidates(m: int, n: int, k: int, mma: bool = False, sms: int = 132) -> list[Config]:
    """The fixed list the tuner times for an (m, n, k) problem; ``mma``: the
    problem can take the MMA kernel (M <= 16, see :func:`mma_applies`).

    MMA kernel (M <= 16; up to ``MMA_MAX_M`` in 16-token chunks, with the
    M = 16 list): 1, 2 or 4 tiles (16 rows) a warp, 4 (or 8) warps a program
    each on its own tiles, split-K across programs for about 20 resident
    warps per SM (and half, twice that); 2 register sets, and for M <= 8
    also 1 or 2 tiles with 4 sets, 1 or 2 tiles with 3, and 8-warp programs
    of 1 tile with 3 or 4 (M = 9..16: 1 tile with 3); programmatic dependent
    launch mode 2 for M <= 8; for M = 9..16 none (8-15% slower with 1 tile a
    warp at M = 16, 8192 x 8192, on the H100) except 2-tile configs on 2 or 4
    warps with mode 2, which won there. (``warp_split`` configs -- a
    program's warps splitting its K range, summed in shared memory instead of
    the workspace -- are correct but were slower on the H100 at every decode
    shape, 20-150 us against 17-50, so the list leaves them out.) Tensor-core
    kernel: decode is
    latency-bound inside a program (unpack -> scale -> MMA is a dependent
    chain), so the list favours many small programs per SM: 2-warp programs
    of 32 or 64 rows (``mma.sync``) and split-K, besides 4-warp 64-row
    programs (one Hopper warpgroup MMA, A from registers)."""
    if m <= 16 and mma:
        # M <= 8 with programmatic dependent launch (mode 2); M = 9..16 without it, besides
        # the 2-tile configs below (PDL lost 8-15% with 1 tile a warp, won with 2)
        pdl = 2 if m <= 8 else 0
        out = []
        for tpw in ((1, 2) if m > 8 else (1, 2, 4)):
            for sc in (0.5, 1.0, 2.0):
                out.append(_mma_config(m, n, k, sms, tpw, 4, sc, pdl=pdl))
        out.append(_mma_config(m, n, k, sms, 2, 8, 1.0, pdl=pdl))
        if m <= 8:  # three or four windows in flight a warp (72-128 registers)
            out += [_mma_config(m, n, k, sms, 1, 4, sc, sets=4, pdl=pdl) for sc in (0.5, 1.0, 2.0)]
            out += [_mma_config(m, n, k, sms, 2, 4, sc, sets=3, pdl=pdl) for sc in (0.5, 0.75, 1.0)]
            out += [_mma_config(m, n, k, sms, 1, 4, sc, sets=3, pdl=pdl) for sc in (1.0, 2.0)]
            # the M <= 8 winners of the second H100 tuning: 2 tiles with 4 sets, 8-warp programs
            out += [_mma_config(m, n, k, sms, 2, 4, sc, sets=4, pdl=pdl) for sc in (0.75, 1.0)]
            out += [_mma_config(m, n, k, sms, 1, 8, sc, sets=s, pdl=pdl) for sc in (1.0, 1.2) for s in (3, 4)]
        else:
            out += [_mma_config(m, n, k, sms, 1, 4, sc, sets=3, pdl=pdl) for sc in (0.5, 1.0)]
            # the M = 9..16 winners of the second H100 tuning: 2 tiles a warp on 2 or 4 warps, PDL mode 2
            out += [_mma_config(m, n, k, sms, 2, w, sc, pdl=2) for w in (2, 4) for sc in (0.7, 0.85)]
        return list(dict.fromkeys(out))
    if m <= 16:
        return [
            Config(32, 2, 4, 2, 4),
            Config(32, 2, 2, 2, 4),
            Config(32, 2, 8, 2, 4),
            Config(64, 2, 4, 2, 4),
            Config(64, 2, 2, 2, 4),
            Config(64, 2, 4, 4, 4),
            Config(64, 2, 8, 4, 4),
            Config(32, 4, 4, 2, 3),
        ]
    if m <= 64:
        tensor_core = [Config(32, 2, 2, 2, 4), Config(64, 2, 2, 4, 4), Config(64, 2, 1, 4, 4), Config(64, 1, 2, 4, 4)]
        # the MMA kernel in 16-token chunks (``MMA_MAX_M``): the M = 16 list
        return tensor_core + (candidates(16, n, k, True, sms) if mma and m <= MMA_MAX_M else [])
    return [Config(64, 2, 1, 4, 3), Config(32, 2, 1, 2, 3), Config(128, 1, 1, 4, 4), Config(64, 1, 1, 4, 4)]


def _heuristic(m: int, n: int, k: int, sms: int, mma: bool = False) -> Config:
    """A config without timing. MMA kernel, M <= 8: 1 tile and 4 windows
    in flight a warp, or (where that leaves split-K under 3: many rows) 2
    tiles and 2 windows, programmatic dependent launch (mode 2); M = 9..16:
    1 tile, 2 windows, no PDL; 4 warps. Tensor-core kernel: 32-row, 2-warp
    programs, split-K until ~6 programs per SM (each split keeping >= 8 K
    steps)."""
    if m <= 16 and mma:
        if m <= 8:
            cfg = _mma_config(m, n, k, sms, 1, sets=4, pdl=2)
            return cfg if cfg.split_k >= 3 else _mma_config(m, n, k, sms, 2, pdl=2)
        return _mma_config(m, n, k, sms, 1)
    if m > 64:
        return candidates(m, n, k)[0]
    tiles = -(-n // 32)
    steps = -(-k // 128)
    split = 1
    while tiles * split < 6 * sms and split < 8 and steps // (split * 2) >= 8:
        split *= 2
    return Config(32, 2, split, 2, 4)


def _m_bucket(m: int) -> int:
    for b in (1, 2, 4, 8, 16, 32, 64, 128):
        if m <= b:
            return b
    return 256


#: the fastest correct candidate per (capability major, kind, M bucket, N,
#: K), CUDA-graph timing over weight copies on one H100 80GB HBM3
#: (``benchmarks/results/decode-h100.md``: the MMA kernel's rows, M <= 16,
#: re-tuned with register sets and programmatic dependent launch, M <= 8
#: once more over 2 tiles a warp with 4 sets and 8-warp programs; M = 17..64
#: the M = 16 config in 16-token chunks where that was faster; the
#: tensor-core kernel's as ``benchmarks/bench_decode.py`` tuned them,
#: 2026-11-25); M = 2..8 use the M = 1 entry (the same one-token-block
#: kernel, tuned at M = 1); other kinds and shapes fall back to the heuristic
TUNED: dict[tuple, Config] = {
    (9, 'int4_sym', 1, 4096, 4096): Config(128, 1, 12, 8, 1, mma=True, sets=3, pdl=2),
    (9, 'int4_sym', 16, 4096, 4096): Config(64, 1, 10, 4, 1, mma=True),
    (9, 'int4_sym', 32, 4096, 4096): Config(64, 1, 10, 4, 1, mma=True),
    (9, 'int4_sym', 64, 4096, 4096): Config(32, 2, 2, 2, 4),
    (9, 'int4_sym', 128, 4096, 4096): Config(128, 1, 1, 4, 4),
    (9, 'int4_sym', 1, 8192, 8192): Config(128, 1, 10, 4, 1, mma=True, sets=4, pdl=2),
    (9, 'int4_sym', 16, 8192, 8192): Config(64, 1, 9, 2, 1, mma=True, pdl=2),
    (9, 'int4_sym', 32, 8192, 8192): Config(64, 1, 9, 2, 1, mma=True, pdl=2),
    (9, 'int4_sym', 64, 8192, 8192): Config(64, 1, 9, 2, 1, mma=True, pdl=2),
    (9, 'int4_sym', 128, 8192, 8192): Config(64, 1, 1, 4, 4),
    (9, 'int4_sym', 1, 8192, 28672): Config(128, 1, 8, 4, 1, mma=True, sets=4, pdl=2),
    (9, 'int4_sym', 16, 8192, 28672): Config(128, 1, 8, 4, 1, mma=True, pdl=2),
    (9, 'int4_sym', 32, 8192, 28672): Config(128, 1, 8, 4, 1, mma=True, pdl=2),
    (9, 'int4_sym', 64, 8192, 28672): Config(128, 1, 8, 4, 1, mma=True, pdl=2),
    (9, 'int4_sym', 128, 8192, 28672): Config(128, 1, 1, 4, 4),
    (9, 'int4_sym', 1, 28672, 8192): Config(64, 1, 2, 4, 1, mma=True, sets=3, pdl=2),
    (9, 'int4_sym', 16, 28672, 8192): Config(128, 1, 7, 4, 1, mma=True, pdl=2),
    (9, 'int4_sym', 32, 28672, 8192): Config(128, 1, 7, 4, 1, mma=True, pdl=2),
    (9, 'int4_sym', 64, 28672, 8192): Config(128, 1, 7, 4, 1, mma=True, pdl=2),
    (9, 'int4_sym', 128, 28672, 8192): Config(128, 1, 1, 4, 4),
    (9, 'nvfp4', 1, 4096, 4096): Config(128, 1, 12, 8, 1, mma=True, sets=4, pdl=2),
    (9, 'nvfp4', 16, 4096, 4096): Config(64, 1, 10, 4, 1, mma=True),
    (9, 'nvfp4', 32, 4096, 4096): Config(64, 1, 10, 4, 1, mma=True),
    (9, 'nvfp4', 64, 4096, 4096): Config(32, 2, 2, 2, 4),
    (9, 'nvfp4', 128, 4096, 4096): Config(64, 1, 1, 4, 4),
    (9, 'nvfp4', 1, 8192, 8192): Config(128, 1, 10, 4, 1, mma=True, sets=4, pdl=2),
    (9, 'nvfp4', 16, 8192, 8192): Config(64, 1, 8, 2, 1, mma=True, pdl=2),
    (9, 'nvfp4', 32, 8192, 8192): Config(64, 1, 8, 2, 1, mma=True, pdl=2),
    (9, 'nvfp4', 64, 8192, 8192): Config(64, 1, 8, 2, 1, mma=True, pdl=2),
    (9, 'nvfp4', 128, 8192, 8192): Config(64, 1, 1, 4, 4),
    (9, 'nvfp4', 1, 8192, 28672): Config(128, 1, 8, 4, 1, mma=True, sets=4, pdl=2),
    (9, 'nvfp4', 16, 8192, 28672): Config(64, 1, 8, 2, 1, mma=True, pdl=2),
    (9, 'nvfp4', 32, 8192, 28672): Config(64, 1, 8, 2, 1, mma=True, pdl=2),
    (9, 'nvfp4', 64, 8192, 28672): Config(64, 1, 8, 2, 1, mma=True, pdl=2),
    (9, 'nvfp4', 128, 8192, 28672): Config(64, 1, 1, 4, 4),
    (9, 'nvfp4', 1, 28672, 8192): Config(64, 1, 2, 4, 1, mma=True, sets=3, pdl=2),
    (9, 'nvfp4', 16, 28672, 8192): Config(128, 1, 7, 4, 1, mma=True, pdl=2),
    (9, 'nvfp4', 32, 28672, 8192): Config(128, 1, 7, 4, 1, mma=True, pdl=2),
    (9, 'nvfp4', 64, 28672, 8192): Config(128, 1, 7, 4, 1, mma=True, pdl=2),
    (9, 'nvfp4', 128, 28672, 8192): Config(128, 1, 1, 4, 4),
}

_CACHE: dict[tuple, Config] = {}
_LOCK = threading.Lock()
#: per-user tuning results (``v2``: the 64-code Packed windows)
_CACHE_FILE = os.path.join(
    os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "breccia", "w4a16-v2.json"
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
    major = device_facts(device)[0][0] if device.type == "cuda" else 0
    return (major, kind, _m_bucket(m), n, k)


def _sms(device: torch.device) -> int:
    return device_facts(device)[1] if device.type == "cuda" else 132


def config_for(device: torch.device, kind: str, m: int, n: int, k: int, mma: bool = False) -> Config:
    """Tuned (this process or file), else measured table, else heuristic.
    ``mma``: the problem can take the MMA kernel; a remembered MMA config is
    not used when it cannot."""
    key = _key(device, kind, m, n, k)
    cfg = _CACHE.get(key) or TUNED.get(key)
    if cfg is None and key[2] <= 8:  # M = 2..8: the one-token-block kernel's M = 1 entry
        cfg = TUNED.get(key[:2] + (1,) + key[3:])
    if cfg is None or (cfg.mma and not mma):
        cfg = _heuristic(m, n, k, _sms(device), mma)
    return cfg


def _mma_device_ok(device: torch.device) -> bool:
    if device_facts(device)[0] < (8, 0):
        return False
    from . import w4a16_mma

    return w4a16_mma.HAS_GLUON


#: tokens the MMA kernel takes in one launch, and the most it takes in chunks of that
MMA_CHUNK_M = 16
MMA_MAX_M = 64


def mma_applies(x: torch.Tensor, qdata: torch.Tensor, scale: torch.Tensor, kind: str, k: int) -> bool:
    """Whether the MMA kernel can run this product: CUDA sm80+ with Gluon
    (not the interpreter), M <= ``MMA_MAX_M`` (16 tokens a launch, chunks of
    16 beyond), K a multiple of 16, the activation's rows 4-byte aligned,
    INT4 scales in the activation's dtype, NVFP4 with bf16 activations (fp16
    ones decode in fp32: see the tensor-core kernel)."""
    if _INTERPRET or x.device.type != "cuda" or x.shape[0] > MMA_MAX_M or k % 16:
        return False
    if not _mma_device_ok(x.device):
        return False
    if kind == "nvfp4":
        if x.dtype != torch.bfloat16:
            return False
    elif scale.dtype != x.dtype:
        return False
    if x.stride(-1) != 1 or x.stride(0) % 2 or x.data_ptr() % 4:
        return False
    return qdata.stride(1) == 512 and qdata.stride(2) == 16 and qdata.stride(3) == 1 and qdata.stride(0) % 16 == 0


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
    """INT4: the low (``HI`` False) or high nibbles of Packed bytes, decoded
    and times their scales, exact in DT (module doc). ``F32``: the arithmetic
    in fp32, rounded once at the end -- the same bits (the interpreter, which
    has no bf16 arithmetic, always takes it). The 16-bit paths start from
    :func:`_bits16`."""
    if F32:
        code = (byte >> 4) if HI else (byte & 0xF)
        u = (code ^ 8) if KIND == 0 else code  # two's complement nibble -> q + 8
        zf = 8.0 if KIND == 0 else z.to(tl.float32)
        # 2**23 + u exactly (u in the low mantissa bits), minus the offset
        v = (u.to(tl.int32) | 0x4B000000).to(tl.float32, bitcast=True) - (zf + 8388608.0)
        return _to_dt(v * s.to(tl.float32), DT, INTERPRET)
    bits, unit = _bits16(byte, HI, KIND, DT)
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
    """INT4: the 16-bit pattern the fast (non-F32) decode starts from, and
    the power of two it carries (``unit``): the code (sign bit flipped for
    two's complement: q + 8) ORed into the mantissa of 2**7 (bf16, 7 mantissa
    bits) or 2**10 (fp16, 10 bits). fp16 decodes the high nibble in place
    (bits 4-7: unit 16); bf16 has no room above bit 6, so its high nibble is
    shifted down (unit 1). Integer ops only: the CPU tests check these bits
    under the interpreter."""
    b16 = byte.to(tl.int16)
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


# NVFP4's word shuffle (packing.E2M1_WORD_PIECES): registers 0-2 one
# (rotation, mask) each, register 3 two -- the structure _e2m1_bits is written for
_E2M1 = packing.e2m1_register_masks()
assert [reg for reg, _, _ in _E2M1] == [0, 1, 2, 3, 3], _E2M1
_E2M1_R0: tl.constexpr = tl.constexpr(_E2M1[0][1])
_E2M1_M0: tl.constexpr = tl.constexpr(_E2M1[0][2])
_E2M1_R1: tl.constexpr = tl.constexpr(_E2M1[1][1])
_E2M1_M1: tl.constexpr = tl.constexpr(_E2M1[1][2])
_E2M1_R2: tl.constexpr = tl.constexpr(_E2M1[2][1])
_E2M1_M2: tl.constexpr = tl.constexpr(_E2M1[2][2])
_E2M1_R3: tl.constexpr = tl.constexpr(_E2M1[3][1])
_E2M1_M3: tl.constexpr = tl.constexpr(_E2M1[3][2])
_E2M1_R3B: tl.constexpr = tl.constexpr(_E2M1[4][1])
_E2M1_M3B: tl.constexpr = tl.constexpr(_E2M1[4][2])


@triton.jit
def _rotl_masked(w, ROT: tl.constexpr, MASK: tl.constexpr):
    """``rotl(w, ROT) & MASK`` on uint32 words."""
    if ROT == 0:
        r = w
    else:
        r = (w << ROT) | (w >> (32 - ROT))
    return r & MASK


@triton.jit
def _e2m1_bits(b, HP: tl.constexpr, RUNS: tl.constexpr):
    """NVFP4: Packed bytes ``(HP, RUNS, 4 words, 4)`` -> the bf16 bits
    ``s.0000000.e1 e0 m`` (value * 2**-126; code 1 lands on bf16's subnormal
    0.5 * 2**-126) of the low and of the high rows, ``(HP, RUNS, 16)`` int32
    in K order: the MMA kernel's decode, one word at a time."""
    x02, x13 = tl.split(tl.reshape(b.to(tl.uint32), (HP, RUNS, 4, 2, 2)))
    b0, b2 = tl.split(x02)
    b1, b3 = tl.split(x13)
    w = b0 | (b1 << 8) | (b2 << 16) | (b3 << 24)
    a0 = _rotl_masked(w, _E2M1_R0, _E2M1_M0)  # (row g, K + 0 | + 1)
    a1 = _rotl_masked(w, _E2M1_R1, _E2M1_M1)  # (row g + 8, K + 0 | + 1)
    a2 = _rotl_masked(w, _E2M1_R2, _E2M1_M2)  # (row g, K + 2 | + 3)
    a3 = _rotl_masked(w, _E2M1_R3, _E2M1_M3) | _rotl_masked(w, _E2M1_R3B, _E2M1_M3B)  # (row g + 8, K + 2 | + 3)
    lo = tl.join(tl.join(a0 & 0xFFFF, a2 & 0xFFFF), tl.join(a0 >> 16, a2 >> 16))  # [word, k pair, k in pair]
    hi = tl.join(tl.join(a1 & 0xFFFF, a3 & 0xFFFF), tl.join(a1 >> 16, a3 >> 16))
    return tl.reshape(lo, (HP, RUNS, 16)).to(tl.int32), tl.reshape(hi, (HP, RUNS, 16)).to(tl.int32)


@triton.jit
def _dequant_e2m1(bits, s, DT: tl.constexpr, F32: tl.constexpr, INTERPRET: tl.constexpr):
    """NVFP4: :func:`_e2m1_bits` times the e4m3 block scales (bytes), exact in
    DT, carrying :func:`_nvfp4_pre`. ``F32`` (the interpreter; fp16
    activations, whose v * bs could be subnormal): in fp32, rounded once."""
    bs = s.to(tl.float8e4nv, bitcast=True).to(tl.float32)
    if F32:
        v = (bits << 16).to(tl.float32, bitcast=True) * 8.507059173023462e37  # * 2**126: the code's value
        return _to_dt(v * (bs * _nvfp4_pre(DT)), DT, INTERPRET)  # exact
    else:
        # bf16 of v * 2**-126 times bs * 2**119 (normal): v * bs * 2**-7, exact
        return bits.to(tl.int16).to(DT, bitcast=True) * (bs * 6.646139978924579e35).to(DT)


@triton.jit(do_not_specialize=["M", "CPS"])
def _w4a16_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, gs_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr,
    M, N, K, KW, CPS, NT,
    stride_xm, stride_wt, stride_ww,
    stride_sn, stride_sg, stride_zn, stride_zg, stride_om, stride_on,
    KIND: tl.constexpr, GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, SCALE_IN_DT: tl.constexpr,
    EVEN: tl.constexpr, F32: tl.constexpr, INTERPRET: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, CHUNKS: tl.constexpr, SPLIT_K: tl.constexpr,
):  # fmt: skip
    DT: tl.constexpr = x_ptr.dtype.element_ty
    HP: tl.constexpr = BLOCK_N // 2  # row pairs (g, g + 8) of the program's tiles
    RUNS: tl.constexpr = CHUNKS * 4  # 16-byte runs (16 codes of each row of a pair) per step
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)

    rp = tl.arange(0, HP)
    tile = pid_n * (BLOCK_N // 16) + rp // 8
    g = rp % 8
    rn_lo = tile * 16 + g  # the low nibbles' rows
    rn_hi = rn_lo + 8  # the high nibbles'
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rr = tl.arange(0, RUNS)
    rj = tl.arange(0, 16)
    t_ok = tile < NT
    lo_ok = rn_lo < N
    hi_ok = rn_hi < N
    m_ok = rm < M

    c_start = pid_k * CPS
    c_end = tl.minimum(c_start + CPS, KW)

    # weight bytes (HP, RUNS, 16): run r of row pair (tile, g) is lane 4g + r % 4
    # of window r // 4 -- a window of a row pair is 64 contiguous bytes
    w_ptrs = (
        w_ptr
        + (tile * stride_wt + g * 64)[:, None, None]
        + (c_start * stride_ww + (rr // 4) * stride_ww + (rr % 4) * 16)[None, :, None]
        + rj[None, None, :]
    )
    # activation in K order (byte j of a run holds K offset j with bits 0 and
    # 1 swapped: the bytes are put in K order in registers after the load)
    kk = tl.arange(0, CHUNKS * 64)
    x_ptrs = x_ptr + rm[None, :] * stride_xm + (c_start * 64 + kk)[:, None]  # x: K contiguous
    s_lo_rows = s_ptr + rn_lo[:, None] * stride_sn
    s_hi_rows = s_ptr + rn_hi[:, None] * stride_sn
    z_lo_rows = z_ptr + rn_lo[:, None] * stride_zn
    z_hi_rows = z_ptr + rn_hi[:, None] * stride_zn

    acc_lo = tl.zeros((HP, BLOCK_M), dtype=tl.float32)
    acc_hi = tl.zeros((HP, BLOCK_M), dtype=tl.float32)
    for c0 in range(c_start, c_end, CHUNKS):
        run_ok = (c0 + rr // 4) < c_end  # (RUNS,)
        if EVEN:
            b = tl.load(w_ptrs)
            x = tl.load(x_ptrs, mask=m_ok[None, :], other=0.0)
        else:
            b = tl.load(w_ptrs, mask=t_ok[:, None, None] & run_ok[None, :, None], other=0)
            x = tl.load(x_ptrs, mask=((c0 * 64 + kk) < K)[:, None] & m_ok[None, :], other=0.0)
        if KIND == 2:  # NVFP4's shuffled words -> bf16 bits of value * 2**-126, K order
            bits_lo, bits_hi = _e2m1_bits(tl.reshape(b, (HP, RUNS, 4, 4)), HP, RUNS)
        else:  # bytes (0, 2, 1, 3) of each word -> (0, 1, 2, 3): K order
            b = tl.reshape(tl.permute(tl.reshape(b, (HP, RUNS, 4, 2, 2)), (0, 1, 2, 4, 3)), (HP, RUNS, 16))

        # one scale (and zero point) per row and run: a run is 16 codes of one
        # group; a run wholly past K (its activation is zero) takes the last
        # group's, so no load leaves the grid
        grp = tl.minimum((c0 * 64 + rr * 16) // GROUP, (K - 1) // GROUP)
        s_lo = tl.load(s_lo_rows + grp[None, :] * stride_sg, mask=lo_ok[:, None] & run_ok[None, :], other=0)
        s_hi = tl.load(s_hi_rows + grp[None, :] * stride_sg, mask=hi_ok[:, None] & run_ok[None, :], other=0)
        z_lo = s_lo
        z_hi = s_hi
        if KIND == 1:
            z_lo = tl.load(z_lo_rows + grp[None, :] * stride_zg, mask=lo_ok[:, None] & run_ok[None, :], other=0)
            z_hi = tl.load(z_hi_rows + grp[None, :] * stride_zg, mask=hi_ok[:, None] & run_ok[None, :], other=0)

        if KIND == 2:
            w_lo = _dequant_e2m1(bits_lo, s_lo[:, :, None], DT, F32, INTERPRET)
            w_hi = _dequant_e2m1(bits_hi, s_hi[:, :, None], DT, F32, INTERPRET)
        else:
            w_lo = _dequant(b, s_lo[:, :, None], z_lo[:, :, None], False, KIND, DT, SCALE_IN_DT, F32, INTERPRET)
            w_hi = _dequant(b, s_hi[:, :, None], z_hi[:, :, None], True, KIND, DT, SCALE_IN_DT, F32, INTERPRET)
        w_lo = tl.reshape(w_lo, (HP, RUNS * 16))
        w_hi = tl.reshape(w_hi, (HP, RUNS * 16))
        if INTERPRET:  # bf16 is raw uint16 there: the dot on exact values in fp32
            xf = x.to(tl.float32)
            acc_lo = tl.dot(w_lo, xf, acc_lo, input_precision="ieee")
            acc_hi = tl.dot(w_hi, xf, acc_hi, input_precision="ieee")
        else:
            acc_lo = tl.dot(w_lo, x, acc_lo)
            acc_hi = tl.dot(w_hi, x, acc_hi)
        w_ptrs += CHUNKS * stride_ww
        x_ptrs += CHUNKS * 64

    if KIND == 2:
        acc_lo = acc_lo * (tl.load(gs_ptr) / _nvfp4_pre(DT))
        acc_hi = acc_hi * (tl.load(gs_ptr) / _nvfp4_pre(DT))

    lo_mask = lo_ok[:, None] & m_ok[None, :]
    hi_mask = hi_ok[:, None] & m_ok[None, :]
    o_lo = out_ptr + rm[None, :] * stride_om + rn_lo[:, None] * stride_on
    o_hi = out_ptr + rm[None, :] * stride_om + rn_hi[:, None] * stride_on
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc_lo += tl.load(bias_ptr + rn_lo, mask=lo_ok, other=0.0).to(tl.float32)[:, None]
            acc_hi += tl.load(bias_ptr + rn_hi, mask=hi_ok, other=0.0).to(tl.float32)[:, None]
        tl.store(o_lo, acc_lo.to(out_ptr.dtype.element_ty), mask=lo_mask)
        tl.store(o_hi, acc_hi.to(out_ptr.dtype.element_ty), mask=hi_mask)
    else:
        # fp32 workspace (64, N), zero between calls; one ticket per row block
        # (split-K runs only for M <= 64: one block of tokens, pid_m == 0)
        ws_lo = ws_ptr + rm[None, :] * N + rn_lo[:, None]
        ws_hi = ws_ptr + rm[None, :] * N + rn_hi[:, None]
        tl.atomic_add(ws_lo, acc_lo, mask=lo_mask, sem="relaxed")
        tl.atomic_add(ws_hi, acc_hi, mask=hi_mask, sem="relaxed")
        tl.debug_barrier()  # every thread's adds before the ticket
        ticket = tl.atomic_add(cnt_ptr + pid_n, 1, sem="acq_rel")
        if ticket == SPLIT_K - 1:  # the last of the row block: finish and clean
            # read the sum and leave zero, in one atomic (as int32 bits: L2's
            # copy, which every program's adds went to)
            zero = tl.zeros_like(acc_lo).to(tl.int32)
            tot_lo = tl.atomic_xchg(ws_lo.to(tl.pointer_type(tl.int32)), zero, mask=lo_mask, sem="relaxed")
            tot_hi = tl.atomic_xchg(ws_hi.to(tl.pointer_type(tl.int32)), zero, mask=hi_mask, sem="relaxed")
            tot_lo = tot_lo.to(tl.float32, bitcast=True)
            tot_hi = tot_hi.to(tl.float32, bitcast=True)
            tl.atomic_xchg(cnt_ptr + pid_n, 0, sem="relaxed")
            if HAS_BIAS:
                tot_lo += tl.load(bias_ptr + rn_lo, mask=lo_ok, other=0.0).to(tl.float32)[:, None]
                tot_hi += tl.load(bias_ptr + rn_hi, mask=hi_ok, other=0.0).to(tl.float32)[:, None]
            tl.store(o_lo, tot_lo.to(out_ptr.dtype.element_ty), mask=lo_mask)
            tl.store(o_hi, tot_hi.to(out_ptr.dtype.element_ty), mask=hi_mask)


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
    :func:`config_for`; an MMA config where :func:`mma_applies` is false
    falls back to the heuristic); ``out``: an (M, N) tensor of ``out_dtype``
    to write into (tests poison it). Returns (M, N) of ``out_dtype``."""
    m = x.shape[0]
    if x.stride(-1) != 1:
        x = x.contiguous()
    if out is None:
        out = torch.empty((m, n), dtype=out_dtype, device=x.device)
    if m == 0 or n == 0:
        return out
    if k == 0:
        return out.zero_() if bias is None else out.copy_(bias.expand(m, n))
    mma = mma_applies(x, qdata, scale, kind, k)
    cfg = config or config_for(x.device, kind, m, n, k, mma)
    if cfg.mma and not mma:
        cfg = _heuristic(m, n, k, _sms(x.device), False)
    if scale.dtype == torch.float8_e4m3fn:
        scale = scale.view(torch.uint8)  # bytes in, decoded in the kernel
    zp = zero_point if zero_point is not None else scale
    gs = global_scale if global_scale is not None else scale
    if cfg.mma:
        return _launch_mma(x, qdata, scale, zp, gs, bias, kind, group, n, k, out, cfg)
    if qdata.stride(3) != 1 or qdata.stride(2) != 16:
        qdata = qdata.contiguous()
    block_m = _block_m(m)
    split = cfg.split_k if m <= _SPLIT_MAX_M else 1
    kw = qdata.shape[1]
    per_split = -(-kw // split)
    cps = -(-per_split // cfg.chunks) * cfg.chunks  # windows per split, whole K steps
    split = -(-kw // cps)
    if split > 1:
        ws, cnt = _workspace(x.device, n)
    else:
        ws, cnt = out, out  # unused
    even = n % cfg.block_n == 0 and kw % cfg.chunks == 0 and k % 64 == 0
    grid = (-(-n // cfg.block_n), split, -(-m // block_m))
    _w4a16_kernel[grid](
        x, qdata, scale, zp, gs, bias if bias is not None else out, out, ws, cnt,
        m, n, k, kw, cps, qdata.shape[0],
        x.stride(0), qdata.stride(0), qdata.stride(1),
        scale.stride(0), scale.stride(1), zp.stride(0), zp.stride(1), out.stride(0), out.stride(1),
        KIND=KINDS[kind], GROUP=group, HAS_BIAS=bias is not None,
        SCALE_IN_DT=scale.dtype == x.dtype, EVEN=even, INTERPRET=_INTERPRET,
        F32=cfg.f32 or _INTERPRET or (kind == "nvfp4" and x.dtype == torch.float16),
        BLOCK_N=cfg.block_n, BLOCK_M=block_m, CHUNKS=cfg.chunks, SPLIT_K=split,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return out


def _launch_mma(x, qdata, scale, zp, gs, bias, kind, group, n, k, out, cfg: Config) -> torch.Tensor:
    """The MMA kernel takes 16 tokens a launch; more run as 16-row chunks
    (the later chunks find much of the weight in L2)."""
    for r0 in range(0, x.shape[0], MMA_CHUNK_M):
        _launch_mma_chunk(x[r0 : r0 + MMA_CHUNK_M], qdata, scale, zp, gs, bias, kind, group, n, k,
                          out[r0 : r0 + MMA_CHUNK_M], cfg)  # fmt: skip
    return out


def _launch_mma_chunk(x, qdata, scale, zp, gs, bias, kind, group, n, k, out, cfg: Config) -> None:
    from . import w4a16_mma

    m = x.shape[0]
    nw = cfg.num_warps
    nt, kw = qdata.shape[0], qdata.shape[1]
    # windows a program; warp-split programs take all of K (their cross-warp
    # sum is replicated over the warps, which the workspace drain does not take)
    wps = kw if cfg.warp_split else -(-kw // cfg.split_k)
    sets = cfg.sets
    if cfg.warp_split:  # the warps share the tiles, each takes 1 / nw of the windows
        tpw = max(1, cfg.block_n // 16)
        wpw = -(-wps // nw)
        wpw += -wpw % sets  # the loop decodes windows in groups of `sets`
        wps = wpw * nw
        tiles = tpw
    else:
        tpw = max(1, cfg.block_n // (16 * nw))  # tiles a warp
        wps += -wps % sets
        wpw = wps
        tiles = tpw * nw
    split = -(-kw // wps)
    if split > 1:
        ws, cnt = _workspace(x.device, n)
    else:
        ws, cnt = out, out  # unused
    fp16 = x.dtype == torch.float16
    two_n = m > 8
    asm, cons = w4a16_mma.mma_asm(KINDS[kind], fp16, two_n)
    pdl = cfg.pdl if PDL and device_facts(x.device)[0][0] >= 9 else 0
    grid = (-(-nt // tiles), split)
    w4a16_mma.w4a16_mma_kernel[grid](
        x, qdata, scale, zp, gs, bias if bias is not None else out, out, ws, cnt,
        m, n, k, kw, wps, wpw, nt, split,
        x.stride(0), qdata.stride(0), scale.stride(0), scale.stride(1), zp.stride(0), zp.stride(1),
        out.stride(0), out.stride(1),
        ASM=asm, CONS=cons, KIND=KINDS[kind], FP16=fp16, GROUP=group, HAS_BIAS=bias is not None,
        TWO_N=two_n, R=tpw, NW=nw, IS_SPLIT=split > 1, WSPLIT=cfg.warp_split, SETS=sets, PDL=pdl,
        num_warps=nw, launch_pdl=pdl > 0,
    )  # fmt: skip


def bench_graph(fns: list, min_calls: int = 24, reps: int = 7) -> float:
    """Per-call time (ms) of ``fns`` -- one product on several weight
    copies, together larger than L2 -- captured round-robin in one CUDA graph
    (at least ``min_calls`` calls) and replayed, median of ``reps`` replays:
    each call reads its weight from device memory and finds L2 holding clean
    lines, as a layer of a decode step does; no host time, no launch gaps.

    (``triton.testing.do_bench`` empties L2 by *zeroing* a 256 MB buffer,
    which leaves L2 full of dirty lines: the timed call then also writes back
    about as many bytes as it reads, up to L2's size -- twice the traffic of
    a 35 MB 4-bit weight; ``benchmarks/results/decode-h100.md``.)"""
    for f in fns:
        f()
    calls = [fns[i % len(fns)] for i in range(max(min_calls, len(fns)))]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for f in calls:
            f()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for f in calls:
            f()
    g.replay()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) / len(calls))
    return sorted(ts)[reps // 2]


def weight_copies(nbytes: int, total: int = 150_000_000) -> int:
    """How many copies of an ``nbytes`` weight :func:`bench_graph` rotates
    (together >= ``total``: three times an H100's L2)."""
    return max(2, -(-total // nbytes))


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
    """Time :func:`candidates` for this problem (CUDA: :func:`bench_graph`
    over copies of the weight), remember the fastest for its (kind, M bucket,
    N, K); returns it and ``{config: ms}``."""
    m = x.shape[0]
    mma = mma_applies(x, qdata, scale, kind, k)
    nbytes = qdata.numel() + scale.numel() * scale.element_size()
    copies = [(qdata, scale, zero_point)] + [
        (qdata.clone(), scale.clone(), zero_point.clone() if zero_point is not None else None)
        for _ in range(weight_copies(nbytes) - 1)
    ]
    times = {}
    for cfg in candidates(m, n, k, mma, _sms(x.device)):
        if cfg.split_k > 1 and m > _SPLIT_MAX_M:
            continue
        fns = [
            (lambda q=q, sc=sc, z=z, cfg=cfg: w4a16_mm(x, q, sc, z, global_scale, None, kind, group, n, k, x.dtype, cfg))
            for q, sc, z in copies
        ]
        try:
            times[cfg] = bench_graph(fns)
        except Exception as e:  # a config the compiler refuses (resources) is skipped
            times[cfg] = float("inf")
            print(f"w4a16 autotune: {cfg} failed: {type(e).__name__}: {str(e)[:200]}")
    best = min(times, key=times.get)
    _CACHE[_key(x.device, kind, m, n, k)] = best
    if save:
        _save_cache_file()
    return best, times
