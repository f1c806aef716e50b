"""Layouts: the physical arrangement of payload and scales a kernel wants.

Changing layout is lossless. ``Plain`` is the canonical one: payload row-major
with K (the last logical dim) contiguous, scales as a row-major grid.

- ``ScaleColumnMajor``: an fp32 scale grid ``(..., G0, G1)`` stored
  outer-dim-major, each column padded to 16 bytes (TMA-aligned), as Hopper
  block-scaled GEMMs take activation scales (``torch._scaled_mm`` blockwise,
  DeepGEMM). ``st.scale`` keeps its logical shape; only its strides change.
- ``Swizzled``: MX (e8m0) and NVFP4 (e4m3) scale grids padded to 128x4 tiles
  and swizzled as cuBLAS/CUTLASS expect (``torch._scaled_mm`` on sm100).
  ``st.scale`` is then 1-D.

The payload is the same in those three. ``Packed`` (4-bit INT4 / NVFP4
weights) moves the payload instead: pre-shuffled for the W4A16 kernels,
16 rows x 64 codes per storage tile, in MMA-register order (:mod:`breccia.packing` has it);
its scales stay Plain.

:func:`relayout` always goes through ``Plain`` (X -> Plain -> Y), so each
layout only needs a way in and a way out. ``docs/layouts.md`` has the details.

A layout is an enum member (``breccia.Plain`` is ``Layout.PLAIN``): it travels
in ScaledTensor's flatten context, and torch.compile treats enums as constants.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

import torch

from .quantize import scale_grid_shape

if TYPE_CHECKING:  # tensor.py imports this module
    from .tensor import ScaledTensor

__all__ = [
    "Layout",
    "Plain",
    "ScaleColumnMajor",
    "Swizzled",
    "Packed",
    "layout_from_name",
    "relayout",
    "swizzle_scales",
    "unswizzle_scales",
]


class Layout(enum.Enum):
    """Where payload and scales live in memory."""

    #: payload row-major, K contiguous; scales a row-major grid
    PLAIN = "Plain"
    #: fp32 scale grid stored outer-dim-major, columns padded to 16 bytes
    SCALE_COLUMN_MAJOR = "ScaleColumnMajor"
    #: MX / NVFP4 scales padded to 128x4 tiles, cuBLAS/CUTLASS swizzle, 1-D
    SWIZZLED = "Swizzled"
    #: 4-bit payload pre-shuffled for the W4A16 kernels (breccia.packing)
    PACKED = "Packed"

    def __repr__(self) -> str:
        return self.value

    __str__ = __repr__


Plain = Layout.PLAIN
ScaleColumnMajor = Layout.SCALE_COLUMN_MAJOR
Swizzled = Layout.SWIZZLED
Packed = Layout.PACKED


def layout_from_name(name: str) -> Layout:
    try:
        return Layout(name)
    except ValueError:
        raise ValueError(f"layout: expected one of {[m.value for m in Layout]}, got {name!r}") from None


# --------------------------------------------------------------------------- swizzle

#: a swizzle tile: 128 rows x 4 columns of scales, 512 bytes for 1-byte scales
_TILE_ROWS = 128
_TILE_COLS = 4

#: ScaleColumnMajor pads every column of scales to this many bytes (TMA)
_COLUMN_ALIGN_BYTES = 16

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _round_up(n: Any, m: int) -> Any:
    return (n + m - 1) // m * m


def _row_major(t: torch.Tensor) -> torch.Tensor:
    """A fresh row-major copy of ``t``. ``.contiguous()`` is not enough: it
    returns ``t`` itself, odd strides and padded storage included, whenever
    the only odd strides are on dims of size 0 or 1."""
    return torch.empty(t.shape, dtype=t.dtype, device=t.device).copy_(t)


def _as_bits(t: torch.Tensor) -> torch.Tensor:
    """``t`` viewed as an integer dtype of its width: copies and zero padding
    work the same for every scale dtype (float8 dtypes lack some kernels, and
    e8m0 has no zero: its padding is the byte 0)."""
    return t.view(_INT_OF_SIZE[t.element_size()])


def swizzle_scales(grid: torch.Tensor) -> torch.Tensor:
    """A 2-D scale grid ``(R, C)`` in the cuBLAS/CUTLASS 128x4 tile swizzle.

    The grid is zero-padded (bytes) to ``(roundup(R, 128), roundup(C, 4))`` and
    flattened so that element ``(i, j)`` of the padded grid sits at::

        ((i // 128) * (C_pad // 4) + j // 4) * 512
            + (i % 32) * 16 + ((i % 128) // 32) * 4 + j % 4

    Returns a contiguous 1-D tensor of ``R_pad * C_pad`` elements, same dtype
    and device as ``grid``. Agrees with torchao's ``to_blocked``."""
    if not isinstance(grid, torch.Tensor):
        raise TypeError(f"grid: expected a torch.Tensor, got {type(grid).__name__}")
    if grid.dim() != 2:
        raise ValueError(f"grid: expected a 2-D scale grid (rows, cols), got shape {tuple(grid.shape)}")
    rows, cols = grid.shape
    rows_pad, cols_pad = _round_up(rows, _TILE_ROWS), _round_up(cols, _TILE_COLS)
    bits = _as_bits(grid)
    padded = bits.new_zeros((rows_pad, cols_pad))
    padded[:rows, :cols] = bits
    # row i = (tile row, i%128 // 32, i % 32); col j = (tile col, j % 4)
    tiles = padded.view(rows_pad // _TILE_ROWS, 4, 32, cols_pad // _TILE_COLS, _TILE_COLS)
    # -> (tile row, tile col, i % 32, i%128 // 32, j % 4)
    out = tiles.permute(0, 3, 2, 1, 4).reshape(-1)
    return out.view(grid.dtype)


def unswizzle_scales(flat: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of :func:`swizzle_scales`: the contiguous ``(rows, cols)`` grid
    held in the swizzled 1-D tensor ``flat`` (padding dropped)."""
    if not isinstance(flat, torch.Tensor):
        raise TypeError(f"flat: expected a torch.Tensor, got {type(flat).__name__}")
    for name, v in (("rows", rows), ("cols", cols)):
        if isinstance(v, bool) or not isinstance(v, (int, torch.SymInt)) or v < 0:
            raise ValueError(f"{name}: expected a non-negative int, got {v!r}")
    rows_pad, cols_pad = _round_up(rows, _TILE_ROWS), _round_up(cols, _TILE_COLS)
    if flat.dim() != 1 or flat.numel() != rows_pad * cols_pad:
        raise ValueError(
            f"flat: expected a 1-D swizzled grid of {rows_pad} * {cols_pad} = {rows_pad * cols_pad} "
            f"elements for a ({rows}, {cols}) grid, got shape {tuple(flat.shape)}"
        )
    tiles = _as_bits(flat).reshape(rows_pad // _TILE_ROWS, cols_pad // _TILE_COLS, 32, 4, _TILE_COLS)
    # (tile row, tile col, i % 32, i%128 // 32, j % 4) -> row-major padded grid
    padded = tiles.permute(0, 3, 2, 1, 4).reshape(rows_pad, cols_pad)
    return _row_major(padded[:rows, :cols]).view(flat.dtype)


# --------------------------------------------------------------------------- column-major


def _column_major(grid: torch.Tensor) -> torch.Tensor:
    """The logical grid ``(..., G0, G1)`` as a view of a zeroed storage
    ``(..., G1, G0_pad)``, ``G0_pad`` making each column 16 bytes aligned."""
    g0, g1 = grid.shape[-2], grid.shape[-1]
    g0_pad = _round_up(g0, max(_COLUMN_ALIGN_BYTES // grid.element_size(), 1))
    storage = grid.new_zeros((*grid.shape[:-2], g1, g0_pad))
    storage[..., :g0].copy_(grid.transpose(-1, -2))
    return storage[..., :g0].transpose(-1, -2)


# --------------------------------------------------------------------------- relayout


def _can_take(st: "ScaledTensor", layout: Layout) -> str | None:
    """Why ``st`` cannot take ``layout``, or None if it can."""
    if layout is Plain:
        return None
    if layout is Packed:
        from .packing import packed_incompatibility

        return packed_incompatibility(st)
    fmt = st.spec.scale_format
    if layout is ScaleColumnMajor:
        if fmt != "fp32":
            return f"it applies to fp32 scale grids (FP8 recipes), and {st.recipe.name} has {fmt} scales"
    elif layout is Swizzled:
        if fmt not in ("e8m0", "e4m3"):
            return f"it applies to MX (e8m0) and NVFP4 (e4m3) scales, and {st.recipe.name} has {fmt} scales"
    if st.dim() < 2:
        return f"it needs a scale grid of at least 2 dims, and the tensor has shape {tuple(st.shape)}"
    return None


def _plain_grid(st: "ScaledTensor") -> tuple:
    # scale_grid_shape reads -1 (whole dim) as one scale, even for an empty dim
    return tuple(scale_grid_shape(tuple(st.shape), st.block))


def _rows_cols(grid: tuple) -> tuple:
    rows = 1
    for g in grid[:-1]:
        rows = rows * g
    return rows, grid[-1]


def _to_plain(st: "ScaledTensor") -> "ScaledTensor":
    if st.qlayout is Plain:
        return st
    grid = _plain_grid(st)
    if st.qlayout is ScaleColumnMajor:
        if tuple(st.scale.shape) != grid:
            raise ValueError(
                f"st: a ScaleColumnMajor scale of shape {grid} expected, got {tuple(st.scale.shape)}"
            )
        scale = _row_major(st.scale)
    elif st.qlayout is Swizzled:
        rows, cols = _rows_cols(grid)
        scale = unswizzle_scales(st.scale, rows, cols).reshape(grid)
    elif st.qlayout is Packed:
        from .packing import from_packed

        return from_packed(st)
    else:  # pragma: no cover - a layout added without a way out
        raise NotImplementedError(f"relayout: no conversion from {st.qlayout} to Plain")
    return st.with_inner(scale=scale, qlayout=Plain)


def _from_plain(st: "ScaledTensor", layout: Layout) -> "ScaledTensor":
    if layout is Plain:
        return st
    if layout is Packed:
        from .packing import to_packed

        return to_packed(st)
    grid = _plain_grid(st)
    if tuple(st.scale.shape) != grid:
        raise ValueError(
            f"st: a Plain scale grid of shape {grid} expected for shape {tuple(st.shape)} and block "
            f"{st.block}, got {tuple(st.scale.shape)}"
        )
    if layout is ScaleColumnMajor:
        scale = _column_major(st.scale)
    elif layout is Swizzled:
        scale = swizzle_scales(st.scale.reshape(_rows_cols(grid)))
    else:  # pragma: no cover - a layout added without a way in
        raise NotImplementedError(f"relayout: no conversion from Plain to {layout}")
    return st.with_inner(scale=scale, qlayout=layout)


def relayout(st: "ScaledTensor", layout: Layout) -> "ScaledTensor":
    """``st`` with its scales (and, for later layouts, payload) rearranged
    for ``layout``. Lossless: relayout back gives the same bits.

    ``layout``: ``breccia.Plain``, ``breccia.ScaleColumnMajor`` (fp32 scale
    grids, FP8 recipes, >= 2 dims), ``breccia.Swizzled`` (MXFP8 / NVFP4,
    >= 2 dims) or ``breccia.Packed`` (INT4 / NVFP4 2-D weights with block
    ``(1, g)`` or its transpose ``(g, 1)``, g >= 16). Returns ``st`` itself if it already has that layout; otherwise
    converts through Plain. ``global_scale`` and ``zero_point`` are kept."""
    from .tensor import ScaledTensor

    if not isinstance(st, ScaledTensor):
        raise TypeError(f"st: expected a ScaledTensor, got {type(st).__name__}")
    if not isinstance(layout, Layout):
        raise TypeError(
            f"layout: expected a breccia layout (one of {[f'breccia.{m.value}' for m in Layout]}), "
            f"got {layout!r}; breccia.layouts.layout_from_name converts a name"
        )
    if layout is st.qlayout:
        return st
    why = _can_take(st, layout)
    if why is not None:
        raise ValueError(f"layout: {st.recipe.name} ({st.role}) cannot take {layout}: {why}")
    return _from_plain(_to_plain(st), layout)
