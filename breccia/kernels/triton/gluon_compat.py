"""Gluon (Triton's explicit-layout dialect) across Triton releases: one
import guard, and the names that moved between releases (the GPU image has
Triton 3.6; this package allows newer)."""

from __future__ import annotations

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl

    #: a barrier among the program's threads (``thread_barrier`` before 3.9, ``barrier`` after)
    cta_barrier = getattr(gl, "thread_barrier", None) or gl.barrier
    HAS_GLUON = True
except Exception:  # pragma: no cover - a Triton without Gluon: callers take their other kernels
    gluon = gl = cta_barrier = None
    HAS_GLUON = False

__all__ = ["HAS_GLUON", "gluon", "gl", "cta_barrier"]
