"""The ``Packed`` layout: 4-bit weights pre-shuffled for the W4A16 kernels.

A 4-bit weight (INT4 or NVFP4) of logical shape ``(N, K)``, one scale per
``g`` along K (block ``(1, g)``, ``g`` a power of two >= 16), is stored for
:mod:`breccia.kernels.triton.w4a16` as a 4-D uint8 tensor::

    qdata[N_pad / 16, K_pad / 64, 32, 16]     # [tile, window, lane, byte]

A *tile* is 16 rows, a *window* 64 codes along K: 512 bytes, laid out as the
32 lanes of a warp hold the A operand of four ``mma.sync.m16n8k16`` steps
(the weight is the MMA's 16-row side). Lane ``l`` (``g = l // 4``,
``q = l % 4``) owns rows ``16t + g`` and ``16t + g + 8`` at the 16 codes
``64w + 16q + 0..15``, in its 16 bytes ``qdata[t, w, l]``: byte ``4s + b``
holds, in its low nibble, the code of row ``16t + g`` at
``K = 64w + 16q + 4s + (0, 2, 1, 3)[b]`` and, in its high nibble, the code of
row ``16t + g + 8`` at the same K. Read as a little-endian 32-bit word ``s``,
the nibble pairs ``(i, i + 4)`` are the four bf16x2 / f16x2 A registers of
MMA step ``s``: (row g, K +0 +1), (row g+8, K +0 +1), (row g, K +2 +3),
(row g+8, K +2 +3) -- a mask, a shift and an OR with a magic exponent per
register, no byte shuffling. So:

- a warp reads one (tile, window) as 512 contiguous bytes, one 16-byte
  vector per lane, and the lane's activation operand is 16 contiguous
  elements (``K = 64w + 16q + 0..15``);
- each lane's codes lie in one scale group per row (``g >= 16``);
- a kernel without MMA registers (the CPU interpreter, large M) reads row
  pair ``(16t + g, 16t + g + 8)`` of a window as 64 contiguous bytes: low
  nibbles one row, high nibbles the other, K order
  ``64w + (j with bits 0 and 1 swapped)`` for byte ``j``.

NVFP4 words are then bit-shuffled (:data:`E2M1_WORD_PIECES`): the MMA
kernel builds each bf16x2 A register (sign at bit 15, exponent and mantissa
at bits 8-6 of each half: the bf16 of value * 2**-126) with one rotation
and one mask -- one register takes two -- where the nibble order needs a
mask, a multiply and a mask per register. Bytes, nibbles and K order above
describe the word before that shuffle (:func:`unshuffle_e2m1_words`).

N and K are padded with zero codes to 16 rows and 64 codes; the padding is
never read as data (the kernels zero the activation past K and mask rows
past N). Scales, zero points and the NVFP4 global scale keep their Plain
form. Everything here is lossless: :func:`from_packed` returns the Plain bits.

A Packed tensor may also be *transposed* (logical ``(K, N)``, block
``(g, 1)``): ``w.t()`` -- what ``F.linear`` hands the router -- only swaps the
logical shape, the block and the scale grid's strides; the payload stays put.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Optional

import torch

from . import formats

if TYPE_CHECKING:  # tensor.py imports layouts, which imports this module lazily
    from .tensor import ScaledTensor

__all__ = [
    "ROWS",
    "CHUNK",
    "LANES",
    "packed_shape",
    "E2M1_WORD_PIECES",
    "E2M1_BF16_BITS",
    "e2m1_register_masks",
    "shuffle_e2m1_words",
    "unshuffle_e2m1_words",
    "pack_codes",
    "unpack_codes",
    "packed_incompatibility",
    "to_packed",
    "from_packed",
    "transpose_packed",
    "PackedOperands",
    "packed_operands",
]

#: rows in one storage tile (the MMA's M side)
ROWS = 16
#: codes per window along K (four k16 MMA steps; 16 codes a lane)
CHUNK = 64
#: lanes of a (tile, window), 16 bytes each
LANES = 32

_ELEMENTS = ("int4", "e2m1")


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def packed_shape(n: int, k: int) -> tuple[int, int, int, int]:
    """Shape of the Packed payload of an ``(n, k)`` weight."""
    return (_round_up(n, ROWS) // ROWS, _round_up(k, CHUNK) // CHUNK, LANES, 16)


def _k_order() -> torch.Tensor:
    """K offset within a window of byte ``j`` (0..15) of lane quarter ``q``:
    ``(64,)`` indexed by ``16q + j``."""
    j = torch.arange(64)
    return (j & ~3) | ((j & 1) << 1) | ((j >> 1) & 1)


#: bf16 bit that code bit c (m, e0, e1, s) of e2m1 lands on in the low half
#: of an A register (the high half's: + 16): the bf16 of value * 2**-126
E2M1_BF16_BITS = (6, 7, 8, 15)
#: NVFP4 word shuffle, as the decoder reads it: (A register i, code bits,
#: left rotation r) -- register i's listed bits (both halves) are those of
#: ``rotl(word, r)`` at :data:`E2M1_BF16_BITS`. Three registers take one
#: rotation each, the fourth two (no four rotations of the bit pattern
#: {6, 7, 8, 15, 22, 23, 24, 31} tile a 32-bit word).
E2M1_WORD_PIECES = ((0, (0, 1, 2, 3), 0), (1, (0, 1, 2, 3), 4), (2, (0, 1, 2, 3), 10), (3, (0,), 6), (3, (1, 2, 3), 14))


def e2m1_register_masks() -> list[tuple[int, int, int]]:
    """:data:`E2M1_WORD_PIECES` as (register, rotation, mask of the rotated word)."""
    out = []
    for reg, cbits, rot in E2M1_WORD_PIECES:
        mask = 0
        for c in cbits:
            mask |= (1 << E2M1_BF16_BITS[c]) | (1 << (E2M1_BF16_BITS[c] + 16))
        out.append((reg, rot, mask))
    return out


def _e2m1_bit_moves() -> dict[int, int]:
    """Nibble-order word bit -> shuffled word bit (a permutation of 0..31)."""
    moves = {}
    for reg, cbits, rot in E2M1_WORD_PIECES:
        for half in (0, 1):
            for c in cbits:
                src = 4 * (reg + 4 * half) + c  # nibble reg (+ 4): code bit c
                dst = (E2M1_BF16_BITS[c] + 16 * half - rot) % 32  # rotl(word, rot) puts it at the bf16 bit
                moves[src] = dst
    assert sorted(moves) == sorted(moves.values()) == list(range(32))
    return moves


def _move_bits(words: torch.Tensor, moves: dict[int, int]) -> torch.Tensor:
    """Words (int64 holding uint32) with bit ``s`` moved to ``moves[s]``: one
    masked rotation per distinct distance."""
    by_dist: dict[int, int] = {}
    for s, d in moves.items():
        by_dist[(d - s) % 32] = by_dist.get((d - s) % 32, 0) | (1 << s)
    out = torch.zeros_like(words)
    for dist, mask in by_dist.items():
        part = words & mask
        out |= ((part << dist) | (part >> (32 - dist))) & 0xFFFFFFFF
    return out


def _as_words(qdata: torch.Tensor) -> torch.Tensor:
    b = qdata.reshape(*qdata.shape[:-1], qdata.shape[-1] // 4, 4).to(torch.int64)
    return b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16) | (b[..., 3] << 24)


def _as_bytes(words: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    shifts = torch.tensor([0, 8, 16, 24], device=words.device)
    return ((words[..., None] >> shifts) & 0xFF).to(torch.uint8).reshape(shape)


def shuffle_e2m1_words(qdata: torch.Tensor) -> torch.Tensor:
    """Nibble-order Packed bytes (last dim a multiple of 4) -> NVFP4's shuffled words."""
    return _as_bytes(_move_bits(_as_words(qdata), _e2m1_bit_moves()), qdata.shape)


def unshuffle_e2m1_words(qdata: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`shuffle_e2m1_words`."""
    back = {d: s for s, d in _e2m1_bit_moves().items()}
    return _as_bytes(_move_bits(_as_words(qdata), back), qdata.shape)


def pack_codes(codes: torch.Tensor, element: str) -> torch.Tensor:
    """``codes`` (N, K) uint8 in 0..15 of ``element`` ("int4" or "e2m1") ->
    the Packed payload (see module doc)."""
    if element not in _ELEMENTS:
        raise ValueError(f"pack_codes: element must be one of {_ELEMENTS}, got {element!r}")
    n, k = codes.shape
    nt, nw, _, _ = packed_shape(n, k)
    padded = codes.new_zeros((nt * ROWS, nw * CHUNK), dtype=torch.uint8)
    padded[:n, :k] = codes
    # (tile, half h (row g + 8h), g, window, K in window) -> K in lane order
    c = padded.view(nt, 2, 8, nw, CHUNK)[..., _k_order().to(codes.device)]
    byte = c[:, 0] | (c[:, 1] << 4)  # (tile, g, window, 16q + j)
    byte = byte.view(nt, 8, nw, 4, 16).permute(0, 2, 1, 3, 4)  # (tile, window, g, q, j)
    byte = byte.reshape(nt, nw, LANES, 16).contiguous()
    return shuffle_e2m1_words(byte) if element == "e2m1" else byte


def unpack_codes(qdata: torch.Tensor, n: int, k: int, element: str) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: the (n, k) uint8 codes."""
    if element not in _ELEMENTS:
        raise ValueError(f"unpack_codes: element must be one of {_ELEMENTS}, got {element!r}")
    if element == "e2m1":
        qdata = unshuffle_e2m1_words(qdata)
    nt, nw = qdata.shape[0], qdata.shape[1]
    b = qdata.view(nt, nw, 8, 64).permute(0, 2, 1, 3)  # (tile, g, window, 16q + j)
    halves = torch.stack([b & 0xF, b >> 4], dim=1)  # (tile, h, g, window, lane order)
    codes = torch.empty_like(halves)
    codes[..., _k_order().to(qdata.device)] = halves
    return codes.reshape(nt * ROWS, nw * CHUNK)[:n, :k]


def _k_dim(st: "ScaledTensor") -> Optional[int]:
    """The dim holding K (the one with the scale groups): 1 for a weight
    ``(N, K)`` with block ``(1, g)``, 0 for its transpose; None if neither."""
    if st.dim() != 2:
        return None
    b0, b1 = st.block
    if b0 == 1 and b1 >= 16:
        return 1
    if b1 == 1 and b0 >= 16:
        return 0
    return None


def packed_incompatibility(st: "ScaledTensor") -> Optional[str]:
    """Why ``st`` cannot take the Packed layout, or None if it can."""
    spec = st.spec
    if spec.element not in _ELEMENTS:
        return f"it applies to 4-bit weights (INT4, NVFP4), and {st.recipe.name} has {spec.element} elements"
    if st.dim() != 2:
        return f"it needs a 2-D weight, and the tensor has shape {tuple(st.shape)}"
    kd = _k_dim(st)
    if kd is None:
        return f"it needs one scale per group of >= 16 along one dim (block (1, g) or (g, 1)), got block {st.block}"
    g = st.block[kd]
    if g & (g - 1) or g % 16:
        return f"its groups must be a power of two >= 16, got {g}"
    return None


def to_packed(st: "ScaledTensor") -> "ScaledTensor":
    """A Plain 4-bit ``st`` in the Packed layout (kept transposed if it was)."""
    from .layouts import Packed

    kd = _k_dim(st)
    codes = formats.unpack_nibbles(st.qdata, int(st.shape[-1]))
    grids = {"scale": st.scale, "zero_point": st.zero_point}
    if kd == 0:  # (K, N): pack the (N, K) weight, keep (K, N)-shaped grid views
        codes = codes.t()
        grids = {k: v.t().contiguous().t() if v is not None else None for k, v in grids.items()}
    else:
        grids = {k: v.contiguous() if v is not None else None for k, v in grids.items()}
    return st.with_inner(qdata=pack_codes(codes, st.spec.element), qlayout=Packed, **grids)


def from_packed(st: "ScaledTensor") -> "ScaledTensor":
    """A Packed ``st`` back in the Plain layout (bit-identical to before)."""
    from .layouts import Plain

    kd = _k_dim(st)
    n, k = (st.shape[1], st.shape[0]) if kd == 0 else (st.shape[0], st.shape[1])
    codes = unpack_codes(st.qdata, int(n), int(k), st.spec.element)
    if kd == 0:
        codes = codes.t()
    grids = {"scale": st.scale.contiguous()}
    if st.zero_point is not None:
        grids["zero_point"] = st.zero_point.contiguous()
    return st.with_inner(qdata=formats.pack_nibbles(codes).contiguous(), qlayout=Plain, **grids)


def transpose_packed(st: "ScaledTensor") -> "ScaledTensor":
    """``st.t()`` for a Packed 2-D tensor: metadata only (shape, block and the
    grids' strides swap; the payload is shared). No copy, no pass over the
    weight: this is what keeps ``F.linear`` on a Packed weight cheap."""
    grids = {"scale": st.scale.t()}
    if st.zero_point is not None:
        grids["zero_point"] = st.zero_point.t()
    return st.with_inner(shape=(st.shape[1], st.shape[0]), block=(st.block[1], st.block[0]), **grids)


class PackedOperands(NamedTuple):
    """What the W4A16 kernel reads: the weight as ``(N, K)`` whichever way
    the ScaledTensor is oriented."""

    qdata: torch.Tensor  # (N_pad/16, K_pad/64, 32, 16) uint8
    scale: torch.Tensor  # (N, G), any strides
    zero_point: Optional[torch.Tensor]  # (N, G) uint8 or None
    global_scale: Optional[torch.Tensor]  # () fp32 or None
    n: int
    k: int
    group: int
    kind: str  # "int4_sym", "int4_asym" or "nvfp4"


def packed_operands(st: "ScaledTensor") -> PackedOperands:
    kd = _k_dim(st)
    if kd == 0:  # transposed view: physical grids are the .t() of the views
        n, k, scale = st.shape[1], st.shape[0], st.scale.t()
        zp = st.zero_point.t() if st.zero_point is not None else None
    else:
        n, k, scale, zp = st.shape[0], st.shape[1], st.scale, st.zero_point
    spec = st.spec
    if spec.element == "e2m1":
        kind = "nvfp4"
    else:
        kind = "int4_sym" if spec.scale_rule == "symmetric" else "int4_asym"
    return PackedOperands(st.qdata, scale, zp, st.global_scale, int(n), int(k), int(st.block[kd]), kind)
