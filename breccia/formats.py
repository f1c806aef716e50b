"""Element and scale formats: encode and decode in pure torch, on any device.

Every encoder rounds to nearest, ties to even, and saturates to the format's
largest finite value (PyTorch's own fp8 casts overflow to inf for e5m2 and have
changed behaviour between versions, so we always clamp first). E2M1 and INT4
also support stochastic rounding driven by a caller-supplied uniform noise
tensor (drawn from a ``torch.Generator``), which keeps them reproducible.

4-bit codes are packed two per byte, the even element in the low nibble, as
TransformerEngine, torchao and compressed-tensors do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

__all__ = [
    "ElementFormat",
    "ELEMENT_FORMATS",
    "SCALE_FORMATS",
    "element_format",
    "scale_dtype",
    "encode_fp8",
    "decode_fp8",
    "encode_e2m1",
    "decode_e2m1",
    "encode_int4",
    "decode_int4",
    "pack_nibbles",
    "unpack_nibbles",
    "e8m0_from_exponent",
    "decode_e8m0",
    "rounding_noise",
]


@dataclass(frozen=True)
class ElementFormat:
    """One payload element code.

    ``max`` is the largest finite magnitude (for INT4 the largest code),
    ``emax`` the exponent of the largest power of two the format holds (the
    OCP MX ``emax_elem``), ``bits`` the storage width, ``storage`` the torch
    dtype that holds one (8-bit) element, or ``torch.uint8`` for packed 4-bit.
    """

    name: str
    bits: int
    max: float
    emax: int
    storage: torch.dtype
    is_float: bool = True

    @property
    def packed(self) -> bool:
        return self.bits == 4


ELEMENT_FORMATS: dict[str, ElementFormat] = {
    "e4m3": ElementFormat("e4m3", 8, 448.0, 8, torch.float8_e4m3fn),
    "e5m2": ElementFormat("e5m2", 8, 57344.0, 15, torch.float8_e5m2),
    "e2m1": ElementFormat("e2m1", 4, 6.0, 2, torch.uint8),
    "int4": ElementFormat("int4", 4, 7.0, 0, torch.uint8, is_float=False),
}

#: scale format name -> the torch dtype its values are stored in
SCALE_FORMATS: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "e8m0": torch.float8_e8m0fnu,
    "e4m3": torch.float8_e4m3fn,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def element_format(name: str) -> ElementFormat:
    try:
        return ELEMENT_FORMATS[name]
    except KeyError:
        raise ValueError(
            f"element format: expected one of {sorted(ELEMENT_FORMATS)}, got {name!r}"
        ) from None


def scale_dtype(name: str) -> torch.dtype:
    try:
        return SCALE_FORMATS[name]
    except KeyError:
        raise ValueError(
            f"scale format: expected one of {sorted(SCALE_FORMATS)}, got {name!r}"
        ) from None


# --------------------------------------------------------------------------- FP8


def encode_fp8(x: torch.Tensor, fmt: ElementFormat) -> torch.Tensor:
    """Saturating round-to-nearest-even cast of float32 ``x`` to e4m3 / e5m2.

    NaN stays NaN (clamp propagates it)."""
    m = fmt.max
    return torch.clamp(x, -m, m).to(fmt.storage)


def decode_fp8(q: torch.Tensor) -> torch.Tensor:
    return q.to(torch.float32)


# --------------------------------------------------------------------------- E2M1

# The eight magnitudes of e2m1, by code 0..7.
_E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
# Rounding boundaries between consecutive codes: at a boundary the even code
# wins (RNE), so boundaries next to an even upper code are inclusive ("<").
_E2M1_BOUNDS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)


def _e2m1_table(device: torch.device) -> torch.Tensor:
    vals = torch.tensor(_E2M1_VALUES, dtype=torch.float32, device=device)
    return torch.cat([vals, -vals])


def encode_e2m1(x: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Codes (uint8, 0..15, sign in bit 3) of float32 ``x`` in e2m1.

    Round to nearest even with saturation at 6, or, given ``noise`` (uniform in
    [0, 1), same shape), stochastic rounding between the two neighbouring
    grid points. The sign of zero is kept (``-0.1`` encodes as ``0x8``)."""
    a = x.abs()
    if noise is None:
        code = torch.zeros_like(a, dtype=torch.uint8)
        for i, b in enumerate(_E2M1_BOUNDS):
            # the upper code i+1 is even for i odd: a tie goes up to it.
            upper_even = (i + 1) % 2 == 0
            step = (a >= b) if upper_even else (a > b)
            code += step.to(torch.uint8)
    else:
        a = torch.clamp(a, max=6.0)
        lo = torch.zeros_like(a, dtype=torch.uint8)
        for v in _E2M1_VALUES[1:]:
            lo += (a >= v).to(torch.uint8)
        lo = torch.clamp(lo, max=7)
        grid = _e2m1_table(a.device)[:8]
        lo_v = grid[lo.long()]
        hi_v = grid[torch.clamp(lo + 1, max=7).long()]
        span = torch.where(hi_v > lo_v, hi_v - lo_v, torch.ones_like(hi_v))
        up = noise < (a - lo_v) / span
        code = torch.where(up & (lo < 7), lo + 1, lo).to(torch.uint8)
    sign = torch.signbit(x).to(torch.uint8) << 3
    return code | sign


def decode_e2m1(codes: torch.Tensor) -> torch.Tensor:
    return _e2m1_table(codes.device)[codes.long()]


# --------------------------------------------------------------------------- INT4


def encode_int4(
    x: torch.Tensor, *, signed: bool, noise: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Codes (uint8 nibbles) of already-scaled float32 ``x``.

    Signed: two's complement of round(x) clamped to [-8, 7]. Unsigned (``x``
    already offset by the zero point): round(x) clamped to [0, 15]. Rounding is
    to nearest even, or stochastic (``floor(x + noise)``) given ``noise``."""
    r = torch.round(x) if noise is None else torch.floor(x + noise)
    lo, hi = (-8.0, 7.0) if signed else (0.0, 15.0)
    q = torch.clamp(r, lo, hi).to(torch.int16)
    return (q & 0xF).to(torch.uint8)


def decode_int4(codes: torch.Tensor, *, signed: bool) -> torch.Tensor:
    c = codes.to(torch.int16)
    if signed:
        c = torch.where(c >= 8, c - 16, c)
    return c.to(torch.float32)


# --------------------------------------------------------------------------- packing


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Pack uint8 codes (0..15) two per byte along the last dim, even element
    in the low nibble. An odd last dim is padded with a zero code."""
    if codes.shape[-1] % 2:
        codes = torch.nn.functional.pad(codes, (0, 1))
    codes = codes.to(torch.uint8)
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_nibbles`: the first ``n`` codes of the last dim."""
    lo = packed & 0xF
    hi = packed >> 4
    codes = torch.stack([lo, hi], dim=-1).flatten(-2)
    return codes[..., :n]


# --------------------------------------------------------------------------- E8M0


def e8m0_from_exponent(exp: torch.Tensor, nan_mask: torch.Tensor) -> torch.Tensor:
    """E8M0 scales (``torch.float8_e8m0fnu``) holding ``2**exp``.

    ``exp`` is an integer tensor, clamped to the format's range [-127, 127];
    where ``nan_mask`` is set the byte is 0xFF (NaN)."""
    biased = torch.clamp(exp, -127, 127) + 127
    biased = torch.where(nan_mask, torch.full_like(biased, 255), biased)
    return biased.to(torch.uint8).view(torch.float8_e8m0fnu)


def decode_e8m0(s: torch.Tensor) -> torch.Tensor:
    """float32 values of E8M0 scales: ``2**(byte - 127)``, 0xFF is NaN, 0x00 is
    2**-127 (a float32 subnormal, represented exactly)."""
    b = s.view(torch.uint8).to(torch.int32)
    # Build the float32 bit pattern directly: exponent field = byte, which is
    # 2**(byte-127) for byte >= 1; byte 0 is the subnormal 2**-127 (bit 22).
    bits = torch.where(b == 0, torch.full_like(b, 1 << 22), b << 23)
    val = bits.view(torch.float32)
    return torch.where(b == 255, torch.full_like(val, math.nan), val)


# --------------------------------------------------------------------------- noise


def rounding_noise(
    shape: torch.Size, device: torch.device, generator: Optional[torch.Generator]
) -> torch.Tensor:
    """Uniform [0, 1) float32 noise for stochastic rounding, from ``generator``."""
    return torch.rand(shape, dtype=torch.float32, device=device, generator=generator)
