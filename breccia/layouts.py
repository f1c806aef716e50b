"""Layouts: the physical arrangement of payload and scales a kernel wants.

Changing layout is lossless. ``Plain`` is the canonical one: payload row-major
with K (the last logical dim) contiguous, scales as a row-major grid.

A layout is an enum member (``breccia.Plain`` is ``Layout.PLAIN``): it travels
in ScaledTensor's flatten context, and torch.compile treats enums as constants.
"""

from __future__ import annotations

import enum

__all__ = ["Layout", "Plain", "layout_from_name"]


class Layout(enum.Enum):
    """Where payload and scales live in memory."""

    #: payload row-major, K contiguous; scales a row-major grid
    PLAIN = "Plain"

    def __repr__(self) -> str:
        return self.value

    __str__ = __repr__


Plain = Layout.PLAIN


def layout_from_name(name: str) -> Layout:
    try:
        return Layout(name)
    except ValueError:
        raise ValueError(f"layout: expected one of {[m.value for m in Layout]}, got {name!r}") from None
