"""Triton quantizers: host side (what to launch, with which constants).

:func:`quantize` reproduces :func:`breccia.quantize.quantize_reference` bit for
bit for every recipe's spec that :func:`supports` accepts; the kernels live in
:mod:`.quant_kernels`, their arithmetic in :mod:`.quant_math`. Both are also
registered as ``torch.library.triton_op`` (``breccia::triton_quantize``,
``breccia::triton_quantize_rowcol``) so that ``torch.compile`` sees the
kernels and can fuse around them.

No launch depends on tensor values: tensorwise and NVFP4 global amaxes are
reduced on the device (per-program partials, folded again by every program
of the next pass), never read back with ``.item()``.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple, Optional

import torch
import triton

from ...formats import ElementFormat
from ...quantize import Quantized, block_for, payload_shape, scale_grid_shape
from ...recipes import WHOLE, QuantSpec
from .launch import Launch, cdiv, device_facts, direct, fast, interpreting, next_pow2, wrapped
from .quant_kernels import (
    E8M0_FLOOR,
    E8M0_RCEIL,
    FP32_AMAX,
    FP32_POW2,
    INT4_ASYM,
    INT4_SYM,
    NVFP4,
    cast_tensorwise_kernel,
    cast_tensorwise_rowcol_kernel,
    partial_amax_kernel,
    quant_blocks_kernel,
    quant_rowcol2d_kernel,
    quant_rowcol_kernel,
    quant_rowwise_loop_kernel,
)

__all__ = ["supports", "quantize", "quantize_rowwise_and_columnwise", "supports_rowcol", "Config"]

#: rowwise rows up to this many elements are quantized as one register tile
ROW_TILE_MAX = 16384
#: the fp8 conversion is emulated in integer arithmetic where this is set
#: (the interpreter always emulates; the GPU check also runs it on the GPU)
FORCE_EMULATION = False

#: e2m1 encoder: 1 = the least of three rounding lines (fewer instructions),
#: 0 = the reference's seven comparisons (kept for the benchmark's comparison)
E2M1_ENCODER = 1

_IN_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


class Config(NamedTuple):
    """Tile shape and warps: ``rows`` x ``width`` elements per program (block
    kernels), or ``width`` elements (tensorwise passes)."""

    rows: int
    width: int
    warps: int


#: the persistent amax pass: programs per SM, elements per iteration, warps
AMAX_PASS = Config(4, 8192, 8)


def _eager(x: torch.Tensor) -> Launch:
    return fast if x.is_cuda and _native(x) else direct


def _aligned(t: torch.Tensor) -> bool:
    return t.data_ptr() % 16 == 0


def _native(x: torch.Tensor) -> bool:
    return x.is_cuda and not FORCE_EMULATION and not interpreting()


def _n_programs(x: torch.Tensor) -> int:
    """Programs of the persistent amax pass: a few per SM."""
    return AMAX_PASS.rows * device_facts(x.device)[1] if x.is_cuda else 4


def _pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


# --------------------------------------------------------------------------- what the kernels take


class _Geometry(NamedTuple):
    kind: str  # "tensor", "row" (one block per row) or "blocks"
    batch: int  # leading entries of 2-D blocks; 1 otherwise
    rows: int  # rows per batch entry
    cols: int  # K, the last dim
    bm: int
    bk: int


@lru_cache(maxsize=4096)
def _geometry(shape: tuple, spec: QuantSpec) -> Optional[_Geometry]:
    nd = len(shape)
    block = block_for(spec.block, nd)
    K = int(shape[-1])
    if all(b == WHOLE for b in block):
        return _Geometry("tensor", 1, math.prod(shape[:-1]), K, 0, 0)
    bk = block[-1]
    bm = block[-2] if nd >= 2 else 1
    if bm == WHOLE or (bk == WHOLE and bm != 1):
        return None
    if bk == WHOLE:
        return _Geometry("row", 1, math.prod(shape[:-1]), K, 1, K)
    if not (_pow2(bk) and 2 <= bk <= 1024 and _pow2(bm) and bm <= 128):
        return None
    if bm == 1:
        return _Geometry("blocks", 1, math.prod(shape[:-1]), K, 1, bk)
    return _Geometry("blocks", math.prod(shape[:-2]), int(shape[-2]), K, bm, bk)


def _geom(shape: tuple, spec: QuantSpec) -> Optional[_Geometry]:
    """:func:`_geometry`, cached for concrete shapes (traced ones may hold SymInts)."""
    return (_geometry if all(type(s) is int for s in shape) else _geometry.__wrapped__)(shape, spec)


def _mode(spec: QuantSpec) -> int:
    rule = spec.scale_rule
    return {
        "fp32": FP32_POW2 if rule == "pow2" else FP32_AMAX,
        "e8m0": E8M0_RCEIL if rule == "rceil" else E8M0_FLOOR,
        "e4m3": NVFP4,
    }.get(spec.scale_format, INT4_SYM if rule == "symmetric" else INT4_ASYM)


def supports(x: torch.Tensor, spec: QuantSpec, amax: Optional[torch.Tensor] = None,
             noise: Optional[torch.Tensor] = None, block_amax: Optional[torch.Tensor] = None) -> bool:
    """Whether :func:`quantize` takes ``x`` with ``spec`` (else use the
    reference): float input with at least one element, blocks that are powers
    of two (at most 128 x 1024), an ``amax`` of one element, a ``block_amax``
    of the scale grid's size."""
    if x.dtype not in _IN_DTYPES or x.dim() == 0 or x.numel() == 0:
        return False
    if not (x.is_cuda or interpreting()):
        return False
    if amax is not None and amax.numel() != 1:
        return False
    if noise is not None and tuple(noise.shape) != tuple(x.shape):
        return False
    shape = tuple(x.shape)
    if block_amax is not None and block_amax.numel() != math.prod(scale_grid_shape(shape, block_for(spec.block, len(shape)))):
        return False
    return _geom(shape, spec) is not None


@lru_cache(maxsize=None)
def _fp8_constants(fmt: ElementFormat, margin: int) -> dict:
    inv_max = float(torch.tensor(1.0 / fmt.max, dtype=torch.float32))  # the reference's fp32 1/max
    return dict(E4M3=fmt.name == "e4m3", FMAX=fmt.max, MARGIN_MUL=2.0**margin,
                TARGET=fmt.max * 2.0**-margin, EMAX=fmt.emax, INV_MAX=inv_max)


_E4M3 = ElementFormat("e4m3", 8, 448.0, 8, torch.float8_e4m3fn)
_TENSOR_KEYS = ("E4M3", "FMAX", "MARGIN_MUL", "TARGET")


def _block_config(g: _Geometry, mode: int) -> Config:
    """Default tiles, from the H100 sweep in ``benchmarks/bench_quantize.py``
    (8192 x 8192 bf16): 4K-8K elements per program, wide along K."""
    kp2 = triton.next_power_of_2(g.cols)
    if g.kind == "row":  # one row per tile row; 64 elements per thread
        return Config(max(1, 8192 // kp2), kp2, max(4, min(16, kp2 // 2048)))
    if g.bm > 1:  # 2-D blocks: the tile is one block tall
        width = max(g.bk, min(kp2, 8192 // g.bm))
        return Config(g.bm, width, 16 if g.bm * width >= 16384 else 4)
    if mode == NVFP4:  # 64 elements a thread: the per-program set-up spread thinner (H200 sweep)
        width = max(g.bk, min(kp2, 1024))
        return Config(max(1, 8192 // width), width, 4)
    width = max(g.bk, min(kp2, 2048))
    if mode == FP32_AMAX:  # division-heavy: smaller tiles, more of them
        return Config(max(1, 4096 // width), width, 4)
    return Config(max(1, min(64, 8192 // width)), width, 8)


def _amax_pass_size(n: int, n_programs: int, amax_pass: Config) -> tuple[int, int]:
    """(programs, iterations each) of the amax pass over ``n`` elements."""
    n_blk = cdiv(n, amax_pass.width)
    n_part = max(1, min(n_blk, n_programs))
    return n_part, cdiv(n_blk, n_part)


def _amax_partials(x: torch.Tensor, n_part: int, part_iters: int, launch: Launch, key) -> torch.Tensor:
    """Pass 1 of a tensorwise / NVFP4 cast: ``n_part`` partial amaxes (int32
    bits), folded again by every program of pass 2."""
    part = torch.empty(n_part, dtype=torch.int32, device=x.device)
    launch(partial_amax_kernel, (n_part,), key and ("amax",) + key)(
        x, part, x.numel(), part_iters, BLOCK=AMAX_PASS.width, num_warps=AMAX_PASS.warps)
    return part


class _Plan(NamedTuple):
    """Everything host-side about one launch that depends only on shapes and
    flags (cached per call signature in eager mode)."""

    n_part: int  # programs of the amax pass (0: no amax pass)
    part_iters: int
    kernel: str  # "tensor", "rowloop" or "blocks"
    grid: tuple
    ints: tuple  # runtime int arguments after the pointers
    meta: dict  # constexprs and num_warps
    grid_shape: tuple  # of the scales
    payload_shape: tuple


def _plan(spec: QuantSpec, shape: tuple, given: bool, has_bamax: bool, has_noise: bool, native: bool,
          config: Optional[Config], reverse: bool, n_programs: int, enc: int, amax_pass: Config) -> _Plan:
    fmt = spec.fmt
    g = _geom(shape, spec)
    mode = _mode(spec)
    N = math.prod(shape)
    shapes = (scale_grid_shape(shape, block_for(spec.block, len(shape))), payload_shape(shape, fmt))
    n_part = part_iters = 0
    if (g.kind == "tensor" or mode == NVFP4) and not given:
        n_part, part_iters = _amax_pass_size(N, n_programs, amax_pass)
    p2 = triton.next_power_of_2(max(n_part, 1))
    consts = _fp8_constants(fmt if fmt.bits == 8 else _E4M3, spec.margin if fmt.bits == 8 else 0)
    if g.kind == "tensor":
        cfg = config or Config(1, 8192, 8)
        meta = dict(BLOCK=cfg.width, PART_P2=p2, MODE=mode, AMAX_GIVEN=given, NATIVE=native, REVERSE=reverse,
                    num_warps=cfg.warps, **{k: consts[k] for k in _TENSOR_KEYS})
        return _Plan(n_part, part_iters, "tensor", (cdiv(N, cfg.width),), (N, n_part), meta, *shapes)
    if g.kind == "row" and triton.next_power_of_2(g.cols) > ROW_TILE_MAX:
        cfg = config or Config(4, 2048, 8)
        R = g.batch * g.rows
        meta = dict(BM=cfg.rows, BK=cfg.width, MODE=mode, AMAX_GIVEN=given, BLOCK_AMAX=has_bamax, NATIVE=native,
                    num_warps=cfg.warps, **{k: consts[k] for k in _TENSOR_KEYS})
        return _Plan(0, 0, "rowloop", (cdiv(R, cfg.rows),), (R, g.cols), meta, *shapes)
    cfg = config or _block_config(g, mode)
    bs = triton.next_power_of_2(g.cols) if g.kind == "row" else g.bk
    width = max(cfg.width, bs)
    rows = g.bm if g.bm > 1 else cfg.rows
    n_mtiles = cdiv(g.rows, rows)
    n_ktiles = cdiv(g.cols, width)
    n_sk = 1 if g.kind == "row" else cdiv(g.cols, g.bk)
    sdt = spec.scale_torch_dtype
    finfo = torch.finfo(sdt) if sdt in (torch.bfloat16, torch.float16) else None
    meta = dict(
        BM=rows, NB=width // bs, BS=bs, ROWS2D=g.bm > 1, MODE=mode,
        FP16=sdt == torch.float16, STINY=finfo.tiny if finfo else 0.0, SMAX=finfo.max if finfo else 0.0,
        ONE_BITS=0x3C00 if sdt == torch.float16 else 0x3F80,
        AMAX_GIVEN=given, BLOCK_AMAX=has_bamax, HAS_NOISE=has_noise, PART_P2=p2, NATIVE=native,
        ODD_K=g.cols % 2 == 1, ENC=enc, REVERSE=reverse and n_part > 0,
        num_warps=cfg.warps, **consts,
    )
    ints = (g.rows, g.cols, (g.cols + 1) // 2, n_mtiles, n_ktiles, n_sk, n_part)
    return _Plan(n_part, part_iters, "blocks", (g.batch * n_mtiles * n_ktiles,), ints, meta, *shapes)


_plan_cached = lru_cache(maxsize=4096)(_plan)


# --------------------------------------------------------------------------- launches


def _run(x: torch.Tensor, spec: QuantSpec, amax: Optional[torch.Tensor], noise: Optional[torch.Tensor],
         block_amax: Optional[torch.Tensor], launch: Launch, config: Optional[Config] = None,
         reverse: bool = True) -> tuple:
    shape = tuple(x.shape)
    fmt = spec.fmt
    mode = _mode(spec)
    x = x.contiguous()
    dev = x.device
    tensorwise = all(b == WHOLE for b in block_for(spec.block, len(shape)))
    if tensorwise and amax is None and block_amax is not None:
        amax, block_amax = block_amax, None  # one block: its amax is the tensor's
    given = amax is not None and mode in (FP32_AMAX, FP32_POW2, NVFP4)
    has_bamax = block_amax is not None
    has_noise = noise is not None and mode in (NVFP4, INT4_SYM, INT4_ASYM)
    pkey = (spec, shape, given, has_bamax, has_noise, _native(x), config, reverse, _n_programs(x), E2M1_ENCODER,
            AMAX_PASS)
    # eager shapes are ints: cache the plan; traced ones may be symbolic
    plan = (_plan if launch is wrapped else _plan_cached)(*pkey)

    grid_shape = plan.grid_shape
    qdata = torch.empty(plan.payload_shape, dtype=fmt.storage, device=dev)
    scale = torch.empty(grid_shape, dtype=spec.scale_torch_dtype, device=dev)
    gs = torch.empty(() if spec.has_global_scale else (0,), dtype=torch.float32, device=dev)
    zp = torch.empty(grid_shape if spec.has_zero_point else (0,), dtype=torch.uint8, device=dev)
    q_arg = qdata.view(torch.uint8)
    es = scale.element_size()
    s_arg = scale if es == 4 else scale.view(torch.int16 if es == 2 else torch.uint8)
    amax_arg = amax.to(device=dev, dtype=torch.float32).reshape(1) if given else x
    bamax_arg = block_amax.to(device=dev, dtype=torch.float32).contiguous() if has_bamax else x
    noise_arg = noise.to(device=dev, dtype=torch.float32).contiguous() if has_noise else x

    key = None
    if launch is fast:  # what Triton specializes on, beyond the plan
        key = (pkey, x.dtype, _aligned(x), _aligned(amax_arg), _aligned(noise_arg), _aligned(bamax_arg), dev.index)
    part = x
    if plan.n_part:
        part = _amax_partials(x, plan.n_part, plan.part_iters, launch, key)
    if plan.kernel == "tensor":
        launch(cast_tensorwise_kernel, plan.grid, key)(x, q_arg, s_arg, amax_arg, part, *plan.ints, **plan.meta)
    elif plan.kernel == "rowloop":
        launch(quant_rowwise_loop_kernel, plan.grid, key)(
            x, q_arg, s_arg, amax_arg, bamax_arg, *plan.ints, **plan.meta)
    else:
        launch(quant_blocks_kernel, plan.grid, key)(
            x, q_arg, s_arg, zp, gs, amax_arg, part, noise_arg, bamax_arg, *plan.ints, **plan.meta
        )
    return qdata, scale, gs, zp


def quantize(x: torch.Tensor, spec: QuantSpec, amax: Optional[torch.Tensor] = None,
             noise: Optional[torch.Tensor] = None, block_amax: Optional[torch.Tensor] = None, *,
             config: Optional[Config] = None, reverse: bool = True) -> Quantized:
    """``quantize_reference(x, spec, amax=amax, noise=noise, block_amax=block_amax)``
    on the Triton kernels (eager: launched directly). Call only where
    :func:`supports`. ``config`` / ``reverse`` are tuning knobs for benchmarks."""
    qdata, scale, gs, zp = _run(x, spec, amax, noise, block_amax, _eager(x), config, reverse)
    return Quantized(qdata, scale, gs if spec.has_global_scale else None, zp if spec.has_zero_point else None)


def quantize_tuple(x: torch.Tensor, spec: QuantSpec, amax: Optional[torch.Tensor] = None,
                   noise: Optional[torch.Tensor] = None, block_amax: Optional[torch.Tensor] = None) -> tuple:
    """:func:`quantize` in ``breccia::quantize``'s output convention: empty
    tensors where the spec has no global scale / zero point."""
    return _run(x, spec, amax, noise, block_amax, _eager(x))


# --------------------------------------------------------------------------- fused transpose


def supports_rowcol(x: torch.Tensor, spec: QuantSpec, amax: Optional[torch.Tensor] = None) -> bool:
    """FP8 of a 2-D tensor, deterministic rounding: tensorwise (``amax``, if
    given, of one element), or (1, B) blocks (fp32 or e8m0 scales, B a power
    of two from 16 to 128)."""
    b = tuple(spec.block)
    if not (
        x.dim() == 2 and x.numel() > 0 and x.dtype in _IN_DTYPES
        and (x.is_cuda or interpreting())
        and spec.fmt.bits == 8 and not spec.stochastic
    ):
        return False
    if spec.tensorwise:
        return amax is None or amax.numel() == 1
    return amax is None and len(b) == 2 and b[0] == 1 and _pow2(b[1]) and 16 <= b[1] <= 128


#: tensorwise rowwise + columnwise cast: (rows, cols) tile, warps; its
#: transposed tile stored by TMA where the device and strides allow (H200,
#: benchmarks/results/rowcol-tiles-h200.md: the least time over the FFN's
#: shapes, 1.2-1.7x the cast followed by a compiled transpose)
TENSOR_ROWCOL = Config(128, 32, 4)
TENSOR_ROWCOL_TMA = True
#: (1, 128) and narrower (1, B) rowcol casts: implementation (Config.rows, see
#: _run_rowcol), tile width, warps
BLOCK_ROWCOL_128 = Config(4, 64, 4)
BLOCK_ROWCOL = Config(2, 128, 4)


try:  # host-side TMA descriptors (Triton 3.4+)
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older Triton: plain stores
    TensorDescriptor = None


def _tma_ok(x: torch.Tensor, M: int, rows: int, width: int) -> bool:
    """A TMA store of (width, rows) uint8 blocks into a (K, M) tensor: sm90+,
    rows of 16-byte multiples, block sides of 16 to 256."""
    if not (TENSOR_ROWCOL_TMA and TensorDescriptor is not None and _native(x)
            and device_facts(x.device)[0][0] >= 9):
        return False
    return M % 16 == 0 and 16 <= rows <= 256 and 16 <= width <= 256


def _run_tensorwise_rowcol(x: torch.Tensor, spec: QuantSpec, amax: Optional[torch.Tensor], launch: Launch,
                           config: Optional[Config] = None) -> tuple:
    """Tensorwise FP8 of ``x`` (M, K) written as (M, K) and as (K, M): the
    amax pass (unless ``amax`` is given), then one pass casting each tile
    once and storing it twice."""
    M, K = x.shape
    dev = x.device
    cfg = config or TENSOR_ROWCOL
    given = amax is not None
    n_part, part_iters = (0, 0) if given else _amax_pass_size(M * K, _n_programs(x), AMAX_PASS)
    q = torch.empty((M, K), dtype=spec.fmt.storage, device=dev)
    qt = torch.empty((K, M), dtype=spec.fmt.storage, device=dev)
    s = torch.empty((1, 1), dtype=torch.float32, device=dev)
    st = torch.empty((1, 1), dtype=torch.float32, device=dev)
    amax_arg = amax.to(device=dev, dtype=torch.float32).reshape(1) if given else x
    tma = launch is not wrapped and _tma_ok(x, M, cfg.rows, cfg.width)  # (traced launches: plain pointers)
    qt_arg = qt.view(torch.uint8)
    if tma:
        qt_arg = TensorDescriptor(qt_arg, shape=[K, M], strides=[M, 1], block_shape=[cfg.width, cfg.rows])
    key = None
    if launch is fast:
        key = ("tensor_rowcol", spec, M, K, cfg, given, tma, _n_programs(x), AMAX_PASS, x.dtype, _aligned(x),
               _aligned(amax_arg), dev.index)
    part = _amax_partials(x, n_part, part_iters, launch, key) if n_part else x
    n_ktiles = cdiv(K, cfg.width)
    consts = _fp8_constants(spec.fmt, spec.margin)
    launch(cast_tensorwise_rowcol_kernel, (cdiv(M, cfg.rows) * n_ktiles,), key)(
        x, q.view(torch.uint8), s, qt_arg, st, amax_arg, part, M, K, n_part, n_ktiles,
        BM=cfg.rows, BK=cfg.width, PART_P2=next_pow2(n_part), MODE=_mode(spec),
        AMAX_GIVEN=given, NATIVE=_native(x), REVERSE=not given, TMA_T=tma, num_warps=cfg.warps,
        **{k: consts[k] for k in _TENSOR_KEYS})
    return q, s, qt, st


def _run_rowcol(x: torch.Tensor, spec: QuantSpec, launch: Launch, config: Optional[Config] = None,
                amax: Optional[torch.Tensor] = None) -> tuple:
    x = x.contiguous()
    if spec.tensorwise:
        return _run_tensorwise_rowcol(x, spec, amax, launch, config)
    M, K = x.shape
    B = spec.block[1]
    dev = x.device
    mode = _mode(spec)
    sd = spec.scale_torch_dtype
    qt = torch.empty((K, M), dtype=spec.fmt.storage, device=dev)
    st = torch.empty((K, cdiv(M, B)), dtype=sd, device=dev)
    # H100, 16384 x 14336 bf16 (benchmarks/results/quantize-h100.md): 1x128
    # two passes, the columns' tile 128 x 64, 0.56 ms against 0.72 at 128 x 128
    # and 1.0 for the one-pass tile (255 registers with spills for its (128,
    # 128) tile, benchmarks/results/kernel-stats-sm90.md; still slower on the
    # H200 with the reciprocal division, rowcol-tiles-h200.md); MX 1x32 one
    # pass 0.54 against 0.65
    cfg = config or (BLOCK_ROWCOL_128 if B == 128 else BLOCK_ROWCOL)
    # the one-pass tiles also cast rows (W a multiple of B); the columns-only pass takes any W
    width = cfg.width if cfg.rows == 4 else max(cfg.width, B)
    # config.rows picks the implementation: 2 = 2-D tile, 3 = (rows, blocks,
    # width) tile, 4 = two passes: the rowwise block kernel, then the 2-D tile
    # writing the columnwise copy only
    if cfg.rows == 4:
        q, s, _, _ = _run(x, spec, None, None, None, launch)
    else:
        q = torch.empty((M, K), dtype=spec.fmt.storage, device=dev)
        s = torch.empty((M, cdiv(K, B)), dtype=sd, device=dev)
    sv = (lambda t: t) if sd == torch.float32 else (lambda t: t.view(torch.uint8))
    key = ("rowcol", spec, M, K, cfg, x.dtype, _aligned(x), dev.index) if launch is fast else None
    args = (x, q.view(torch.uint8), sv(s), qt.view(torch.uint8), sv(st), M, K, cdiv(K, B), cdiv(M, B))
    grid = (cdiv(M, B), cdiv(K, width))
    consts = _fp8_constants(spec.fmt, spec.margin)
    if cfg.rows in (2, 4):
        launch(quant_rowcol2d_kernel, grid, key)(*args, B=B, W=width, MODE=mode, NATIVE=_native(x),
                                                 num_warps=cfg.warps, ROWS=cfg.rows == 2, **consts)
    else:
        launch(quant_rowcol_kernel, grid, key)(*args, B=B, NB=width // B, MODE=mode, NATIVE=_native(x),
                                               num_warps=cfg.warps, **consts)
    return q, s, qt, st


def quantize_rowwise_and_columnwise(x: torch.Tensor, spec: QuantSpec, amax: Optional[torch.Tensor] = None, *,
                                    config: Optional[Config] = None) -> tuple[Quantized, Quantized]:
    """``(quantize_reference(x, spec, amax=amax), quantize_reference(x.T, spec,
    amax=amax))`` from one cast pass over ``x`` (M, K): the columnwise copy is
    (K, M), blocked along M, as the backward GEMMs (``dgrad``/``wgrad``) want
    it. ``amax``: tensorwise only, a precomputed amax (no amax pass).
    ``config``: the tile, for benchmarks (tensorwise: rows x width, warps; for
    blocks see :func:`_run_rowcol`)."""
    if not supports_rowcol(x, spec, amax):
        raise ValueError(
            f"quantize_rowwise_and_columnwise: expected a non-empty 2-D float tensor and an FP8 spec, "
            f"tensorwise (amax of one element) or with (1, B) blocks, B in 16..128 a power of two; got shape "
            f"{tuple(x.shape)}, {x.dtype}, block {spec.block}, amax {None if amax is None else tuple(amax.shape)}"
        )
    q, s, qt, st = _run_rowcol(x, spec, _eager(x), config, amax)
    return Quantized(q, s, None, None), Quantized(qt, st, None, None)


# --------------------------------------------------------------------------- torch.library


@torch.library.triton_op("breccia::triton_quantize", mutates_args=())
def triton_quantize(
    x: torch.Tensor, spec: str, amax: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None,
    block_amax: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``breccia::quantize`` on the Triton kernels, visible to Inductor."""
    return _run(x, QuantSpec.from_key(spec), amax, noise, block_amax, wrapped)


@torch.library.triton_op("breccia::triton_quantize_rowcol", mutates_args=())
def triton_quantize_rowcol(
    x: torch.Tensor, spec: str, amax: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rowwise and columnwise FP8 payloads and scales of 2-D ``x`` (tensorwise
    or (1, B) blocks)."""
    return _run_rowcol(x, QuantSpec.from_key(spec), wrapped, amax=amax)
