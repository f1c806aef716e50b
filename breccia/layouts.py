"""Layouts: the physical arrangement of payload and scales a kernel wants.

Changing layout is lossless. ``Plain`` is the canonical one: payload row-major
with K (the last logical dim) contiguous, scales as a row-major grid.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Layout", "Plain", "LAYOUTS", "layout_from_name"]


class Layout:
    """Base of the layouts; each is a frozen, hashable dataclass."""

    @property
    def name(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        return self.name


@dataclass(frozen=True, repr=False)
class Plain(Layout):
    """Payload row-major, K contiguous; scales a row-major grid."""


LAYOUTS: dict[str, type] = {"Plain": Plain}


def layout_from_name(name: str) -> Layout:
    try:
        return LAYOUTS[name]()
    except KeyError:
        raise ValueError(f"layout: expected one of {sorted(LAYOUTS)}, got {name!r}") from None
