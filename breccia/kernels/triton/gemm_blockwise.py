"""FP8 GEMM with DeepSeek-style block scales: 1x128 activations x 128x128
weights (forward, grad-input), or x 128x1 blocks (grad-weight).

``out = (qa * sa) @ (qb * sb)``: ``qa`` (M, K) FP8 with one fp32 scale per row
per 128 along K, ``qb`` (K, N) FP8 with one fp32 scale per 128x128 block, or
per column per 128 along K (``scale_n=1``: both operands blocked along the
reduction dim, as grad-weight ``dy^T x`` is in blockwise training). The
kernel runs one ``tl.dot`` per 128-wide K step into a fresh fp32 tile and
folds it into the accumulator with that step's scales. With 128x128 weight
blocks and a tile at most 128 wide in N, the weight's scale is one number per
step, so the fold is one FMA per output element per 128 of K (``acc += p *
(sa * sb)[:, None]``); per-column scales cost an outer product more.

This is the fallback for what cuBLAS refuses (``torch._scaled_mm`` blockwise
wants sm90, K a multiple of 512 and N of 128): any M, N, K, any strides,
sm89+. Two ways to load tiles:

- pointers (variant 0): any strides; ragged K is zero-padded by masked loads,
  ragged M and N wrap (``% M``) on load and are masked on store;
- TMA descriptors (variants 1, 2): K-contiguous operands with 16-byte aligned
  rows; out-of-bounds reads are zeros. Variant 2 also asks Triton to
  warp-specialize the loop (loads in their own warps).
- asynchronous wgmma (variants 5 and 6; Hopper, Gluon, the same operands as
  TMA): :mod:`.gemm_wgmma` with a 128-wide slice, whose fold of one slice
  runs while the next slice's MMA does (Triton's ``tl.dot`` loop waits for
  each dot before folding it); variant 6 is its persistent, warp-specialized
  form (0.86-0.99x cuBLAS at large shapes on an H200).

The pointer kernel can also split K over several programs per tile (fp32
partial tiles summed after; ``Config.split_k``): the MX kernel's decode
configs use it; for this kernel it measured slower and no default config
asks for it.

The launcher picks a config from a small fixed list per shape bucket by timing
them once (:class:`Tuner`); ``gemm_mx`` shares the tuner and the helpers.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import triton
import triton.language as tl

from .launch import cdiv, for_tensor, interpreting, next_pow2

__all__ = [
    "blockwise_mm",
    "Tuner",
    "Config",
    "tma_ok",
    "descriptor",
    "split_k_output",
    "reduce_split_k",
]

#: elements per scale along K for the activation, and along K and N for the weight
SCALE_BLOCK = 128


# --------------------------------------------------------------------------- configs and tuning


class Config(tuple):
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages, variant, split_k),
    hashable and printable. ``variant`` picks a kernel's alternative loop (see
    the kernel's module docstring; 0 is the portable one); ``split_k`` > 1
    splits K over that many programs per tile (decode: more programs in
    flight), whose fp32 partial tiles are summed after."""

    def __new__(
        cls, bm: int, bn: int, bk: int, warps: int, stages: int, variant: int = 0, split_k: int = 1
    ) -> "Config":
        return super().__new__(cls, (bm, bn, bk, warps, stages, variant, split_k))

    @property
    def meta(self) -> dict:
        bm, bn, bk, warps, stages = self[:5]
        return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)

    @property
    def variant(self) -> int:
        return self[5]

    @property
    def split_k(self) -> int:
        return self[6]

    def __repr__(self) -> str:
        v, sk = self[5], self[6]
        text = "{}x{}x{} w{} s{}".format(*self[:5])
        return text + (f" v{v}" if v else "") + (f" split{sk}" if sk > 1 else "")


def m_bucket(m: int) -> int:
    """Shapes whose M rounds to the same power of two share a tuned config,
    so a new batch size does not retune."""
    return min(next_pow2(m), 16384)


class Tuner:
    """Picks a config per (kernel, M bucket, N, K, dtypes) from a fixed list by
    timing each once on the GPU, then caches it.

    Timing syncs the host, so it happens on the first call for a shape only,
    and never while a CUDA graph is being captured (the first candidate is
    used then). A candidate whose result differs from the last candidate's
    (the portable pointer kernel) by a relative error over 1e-3 is dropped: a
    miscompiled variant cannot win by being fast. Under the interpreter the
    first candidate is used."""

    def __init__(self) -> None:
        self.cache: dict[tuple, Config] = {}
        #: what each tuning measured, (ms, config) per key (benchmarks print it)
        self.timings: dict[tuple, list[tuple[float, Config]]] = {}

    def pick(
        self, key: tuple, candidates: Callable[[], Sequence[Config]], launch: Callable[[Config], torch.Tensor]
    ) -> Config:
        cfg = self.cache.get(key)
        if cfg is not None:
            return cfg
        cands = candidates()
        if len(cands) == 1 or interpreting() or torch.cuda.is_current_stream_capturing():
            return cands[0]
        from triton.testing import do_bench

        times: list[tuple[float, Config]] = []
        ref = launch(cands[-1]).float()  # the last candidate is the portable pointer kernel
        for c in cands:
            try:
                out = launch(c).float()
                if ((out - ref).norm() / ref.norm().clamp(min=1e-30)).item() > 1e-3:
                    continue
                times.append((do_bench(lambda: launch(c), warmup=5, rep=20, return_mode="median"), c))
            except Exception:  # a config that does not compile or fit (shared memory) is skipped
                continue
        cfg = min(times)[1] if times else cands[0]
        self.cache[key] = cfg
        self.timings[key] = sorted(times)
        return cfg


def tma_ok(*tensors: torch.Tensor) -> bool:
    """Whether 2-D tensors can be read through TMA descriptors: last dim
    contiguous, base and row stride 16-byte aligned, on a GPU (or the
    interpreter)."""
    for t in tensors:
        if t.device.type != "cuda" and not interpreting():
            return False
        if t.stride(1) != 1 or (t.stride(0) * t.element_size()) % 16 or t.data_ptr() % 16:
            return False
    return True


def descriptor(t: torch.Tensor, block: Sequence[int]):
    """A host-side TMA descriptor over the 2-D tensor ``t``; reads past its
    edges give zeros, so ragged shapes need no masks."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    return TensorDescriptor(t, list(t.shape), list(t.stride()), list(block))


def _candidates(m: int, n: int, k: int, tma: bool, wgmma: bool = False) -> list[Config]:
    # Two fp32 tiles live per program (the accumulator and the step's dot):
    # 128x128 on 8 warps for large M; small M is weight-bandwidth bound: thin
    # tiles, deep pipelines. The last candidate is the portable pointer
    # kernel (the tuner's reference). The lists keep what won somewhere on an
    # H100 (benchmarks/results/gemm-h100.md); 64x128 tiles on 4 warps and a
    # hand-pipelined fold measured slower everywhere, split-K everywhere but
    # at M <= 16 on an H200.
    if m <= 64:
        bm = 16 if m <= 16 else 64
        ptr = [Config(bm, 64, 128, 4, 5), Config(bm, 32, 128, 4, 6)]
        if m <= 16:  # CUDA-graphed at N = K = 8192 on an H200: 1.10x cuBLAS at M = 1 (unsplit 0.85-0.95x)
            ptr = [Config(16, 128, 128, 4, 4, 0, 4)] + ptr
        tmas = [Config(64, 64, 128, 4, 6, 1)]
    elif m <= 256:
        ptr = [Config(64, 64, 128, 4, 5), Config(64, 128, 128, 4, 4)]
        tmas = [Config(64, 128, 128, 4, 4, 1)]
    else:
        ptr = [Config(128, 128, 128, 8, 3), Config(128, 128, 128, 8, 4)]
        tmas = [
            Config(128, 128, 128, 8, 4, 1),
            Config(128, 128, 128, 8, 3, 1),
            Config(128, 128, 128, 8, 4, 2),
            Config(128, 128, 128, 8, 3, 2),
        ]
    if wgmma and m > 256:  # ``wgmma``: variants 5 and 6 can run (``gemm_wgmma.wgmma_ok``)
        # variant 6 (warp-specialized, persistent): 1.12-1.18x variant 5 at large M on an H200, with
        # 128x128 weight blocks and per-column scales (grad-weight) alike; variant 5 was level with
        # variant 1 on the first, 1.5-1.7x it on the second
        tmas = [Config(128, 128, 256, 4, 3, 6), Config(128, 128, 256, 8, 3, 5)] + tmas
    return tmas + ptr if tma else ptr


_TUNER = Tuner()


# --------------------------------------------------------------------------- kernels


@triton.jit
def _tile_ids(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Grouped tile order: GROUP_M row-tiles share each column of B in L2."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m
    return pid_m, pid_n


@triton.jit
def _k_range(K, BLOCK_K: tl.constexpr):
    """The K steps [kt0, kt1) of this program: all of them, or this
    split-K slice's share (``program_id(1)`` of ``num_programs(1)``)."""
    n_kt = tl.cdiv(K, BLOCK_K)
    per = tl.cdiv(n_kt, tl.num_programs(1))
    kt0 = tl.program_id(1) * per
    return kt0, tl.minimum(kt0 + per, n_kt)


@triton.jit
def _tile(M, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """This program's output tile and K steps: ``(pid_n, kt0, kt1, rm, rn,
    ram, rbn)``. ``rm``/``rn`` index the (masked) store; ``ram``/``rbn`` wrap
    ragged edges into range for loads (valid rows: no masks in the loop),
    int64 because offsets of large operands overflow int32."""
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    kt0, kt1 = _k_range(K, BLOCK_K)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ram = (rm % M).to(tl.int64)
    rbn = (rn % N).to(tl.int64)
    return pid_n, kt0, kt1, rm, rn, ram, rbn


@triton.jit
def _store_tile(acc, c_ptr, bias_ptr, rm, rn, M, N, stride_cm, stride_cn, HAS_BIAS: tl.constexpr):
    """``acc (+ bias)`` cast to the output dtype, stored inside (M, N)."""
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rn, mask=rn < N, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    c_ptrs = c_ptr + rm.to(tl.int64)[:, None] * stride_cm + rn[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


@triton.jit
def _fold(acc, p, sa, sb_ptrs, ks, stride_sbk, SCALAR_SB: tl.constexpr):
    """``acc + p * sa[:, None] * sb[None, :]`` for one K step: with a tile
    inside one 128-column scale block the weight's scale is a scalar (one FMA
    an element), else a vector."""
    if SCALAR_SB:
        sb = tl.load(sb_ptrs + ks * stride_sbk)
        return acc + p * (sa * sb)[:, None]
    sb = tl.load(sb_ptrs + ks * stride_sbk)
    return acc + p * (sa[:, None] * sb[None, :])


@triton.jit
def _blockwise_kernel(
    a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr, bias_ptr,
    M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
    stride_sam, stride_sak, stride_sbk, stride_sbn, stride_cs,
    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, SCALAR_SB: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, SCALE_K: tl.constexpr, SCALE_N: tl.constexpr,
):  # fmt: skip
    """Variant 0: pointer loads. Program (tile, s) of a split-K grid covers
    K steps [s * per, (s + 1) * per) and writes its fp32 partial tile at
    ``c_ptr + s * stride_cs``."""
    pid_n, kt0, kt1, rm, rn, ram, rbn = _tile(M, N, K, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
    rk = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + ram[:, None] * stride_am + rk[None, :] * stride_ak
    b_ptrs = b_ptr + rk[:, None] * stride_bk + rbn[None, :] * stride_bn
    sa_ptrs = sa_ptr + ram * stride_sam
    if SCALAR_SB:
        sb_ptrs = sb_ptr + ((pid_n * BLOCK_N) // SCALE_N) * stride_sbn
    else:
        sb_ptrs = sb_ptr + (rbn // SCALE_N) * stride_sbn

    a_ptrs += kt0 * BLOCK_K * stride_ak
    b_ptrs += kt0 * BLOCK_K * stride_bk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kt in range(kt0, kt1):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:  # the last step is partial: zeros add nothing to the dot
            k_left = K - kt * BLOCK_K
            a = tl.load(a_ptrs, mask=rk[None, :] < k_left, other=0.0)
            b = tl.load(b_ptrs, mask=rk[:, None] < k_left, other=0.0)
        ks = (kt * BLOCK_K) // SCALE_K
        sa = tl.load(sa_ptrs + ks * stride_sak)
        p = tl.dot(a, b)
        acc = _fold(acc, p, sa, sb_ptrs, ks, stride_sbk, SCALAR_SB)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    c_ptr += tl.program_id(1).to(tl.int64) * stride_cs
    _store_tile(acc, c_ptr, bias_ptr, rm, rn, M, N, stride_cm, stride_cn, HAS_BIAS)


@triton.jit
def _blockwise_tma_kernel(
    a_desc, b_desc, c_ptr, sa_ptr, sb_ptr, bias_ptr,
    M, N, K,
    stride_cm, stride_cn, stride_sam, stride_sak, stride_sbk, stride_sbn,
    HAS_BIAS: tl.constexpr, SCALAR_SB: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, SCALE_K: tl.constexpr, SCALE_N: tl.constexpr,
):  # fmt: skip
    """Variants 1 and 2: A (M, K) and B^T (N, K) through TMA descriptors."""
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    off_m = pid_m * BLOCK_M
    off_n = pid_n * BLOCK_N
    rm = off_m + tl.arange(0, BLOCK_M)
    rn = off_n + tl.arange(0, BLOCK_N)
    sa_ptrs = sa_ptr + (rm % M).to(tl.int64) * stride_sam
    if SCALAR_SB:
        sb_ptrs = sb_ptr + (off_n // SCALE_N) * stride_sbn
    else:
        sb_ptrs = sb_ptr + ((rn % N) // SCALE_N) * stride_sbn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kt in tl.range(0, tl.cdiv(K, BLOCK_K), warp_specialize=WARP_SPECIALIZE):
        a = a_desc.load([off_m, kt * BLOCK_K])
        b = b_desc.load([off_n, kt * BLOCK_K])
        ks = (kt * BLOCK_K) // SCALE_K
        sa = tl.load(sa_ptrs + ks * stride_sak)
        p = tl.dot(a, b.T)
        acc = _fold(acc, p, sa, sb_ptrs, ks, stride_sbk, SCALAR_SB)
    _store_tile(acc, c_ptr, bias_ptr, rm, rn, M, N, stride_cm, stride_cn, HAS_BIAS)


# --------------------------------------------------------------------------- launcher


def _check(qa, sa, qb, sb, scale_n: int) -> tuple[int, int, int]:
    if scale_n not in (SCALE_BLOCK, 1):
        raise ValueError(f"blockwise_mm: scale_n must be {SCALE_BLOCK} or 1, got {scale_n!r}")
    if qa.dim() != 2 or qb.dim() != 2 or qa.shape[1] != qb.shape[0]:
        raise ValueError(
            f"blockwise_mm: expected qa (M, K) and qb (K, N), got {tuple(qa.shape)} and {tuple(qb.shape)}"
        )
    m, k = qa.shape
    n = qb.shape[1]
    kb, nb = cdiv(k, SCALE_BLOCK), cdiv(n, scale_n)
    if tuple(sa.shape) != (m, kb) or tuple(sb.shape) != (kb, nb):
        raise ValueError(
            f"blockwise_mm: expected scales sa {(m, kb)} and sb {(kb, nb)} for M, N, K = {m}, {n}, {k}, "
            f"got {tuple(sa.shape)} and {tuple(sb.shape)}"
        )
    if sa.dtype != torch.float32 or sb.dtype != torch.float32:
        raise ValueError(f"blockwise_mm: expected fp32 scales, got {sa.dtype} and {sb.dtype}")
    return m, n, k


def _empty_product(m, n, k, out_dtype, device, bias) -> Optional[torch.Tensor]:
    """The result when a dimension is 0, else None."""
    if m and n and k:
        return None
    out = torch.empty((m, n), dtype=out_dtype, device=device)
    if k == 0:
        out.zero_()
        if bias is not None:
            out += bias.to(out.dtype)
    return out


def split_k_output(m: int, n: int, split: int, out_dtype: torch.dtype, device) -> tuple[torch.Tensor, int]:
    """The kernel's output: (M, N) of ``out_dtype``, or (split, M, N) fp32
    partial tiles for split-K."""
    if split == 1:
        return torch.empty((m, n), dtype=out_dtype, device=device), 1
    return torch.empty((split, m, n), dtype=torch.float32, device=device), split


def reduce_split_k(
    o: torch.Tensor, split: int, bias: Optional[torch.Tensor], out_dtype: torch.dtype
) -> torch.Tensor:
    """Sum split-K partial tiles in fp32, add the bias, cast."""
    if split == 1:
        return o
    out = o.sum(0)
    if bias is not None:
        out += bias.float()
    return out.to(out_dtype)


def _launch_wgmma(qa, sa, qb, sb, scale_n: int, c: Config, out_dtype, bias) -> torch.Tensor:
    """Variant 5: the weight's scale is one number a tile and step when its
    128-column blocks hold whole tiles, else the kernel reads it per column
    (128x128 blocks spread over the columns: a small copy)."""
    from .gemm_wgmma import scaled_wgmma_mm, tma_rows

    bn = c[1]
    if scale_n % bn == 0:
        sb_arg, block_n = sb, scale_n
    else:
        cols = sb if scale_n == 1 else sb.repeat_interleave(scale_n, dim=1)[:, : qb.shape[1]]
        sb_arg, block_n = tma_rows(cols), 1
    return scaled_wgmma_mm(qa, qb, tma_rows(sa.t()), sb_arg, SCALE_BLOCK, c, out_dtype, bias, block_n)


def blockwise_mm(
    qa: torch.Tensor,
    sa: torch.Tensor,
    qb: torch.Tensor,
    sb: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
    bias: Optional[torch.Tensor] = None,
    config: Optional[Config] = None,
    scale_n: int = SCALE_BLOCK,
) -> torch.Tensor:
    """``(qa * sa) @ (qb * sb) (+ bias)`` as ``out_dtype``.

    ``qa`` (M, K) and ``qb`` (K, N) FP8 (e4m3/e5m2), any strides (K-contiguous
    for both, 16-byte aligned rows, enables the TMA variants); ``sa`` (M,
    ceil(K/128)) and ``sb`` (ceil(K/128), ceil(N/scale_n)) fp32
    dequantization scales, any strides: ``scale_n`` 128 for 128x128 weight
    blocks, 1 for 128x1 blocks. ``config`` forces a tile config (benchmarks,
    tests); otherwise the tuner picks one."""
    m, n, k = _check(qa, sa, qb, sb, scale_n)
    done = _empty_product(m, n, k, out_dtype, qa.device, bias)
    if done is not None:
        return done
    bias_arg = bias if bias is not None else sa  # never read without HAS_BIAS
    qbt = qb.t()  # (N, K): K-contiguous for a column-major qb
    use_tma = tma_ok(qa, qbt)
    from .gemm_wgmma import wgmma_ok  # imports this module

    use_wgmma = use_tma and wgmma_ok(qa, qb)
    run = for_tensor(qa)

    def launch(c: Config) -> torch.Tensor:
        meta = c.meta
        bm, bn, bk = meta["BLOCK_M"], meta["BLOCK_N"], meta["BLOCK_K"]
        if c.variant in (5, 6):  # the Gluon wgmma loops (gemm_wgmma)
            return _launch_wgmma(qa, sa, qb, sb, scale_n, c, out_dtype, bias)
        if bk != SCALE_BLOCK:  # these loops fold one scale per K step
            raise ValueError(f"blockwise_mm: config {c!r} needs BLOCK_K {SCALE_BLOCK} (variants 0-2), got {bk}")
        o, split = split_k_output(m, n, c.split_k, out_dtype, qa.device)
        grid = (cdiv(m, bm) * cdiv(n, bn), split)
        common = dict(HAS_BIAS=bias is not None and split == 1, SCALAR_SB=scale_n % bn == 0, GROUP_M=8,
                      SCALE_K=SCALE_BLOCK, SCALE_N=scale_n, **meta)  # fmt: skip
        if c.variant == 0:
            run(_blockwise_kernel, grid)(
                qa, qb, o, sa, sb, bias_arg, m, n, k,
                qa.stride(0), qa.stride(1), qb.stride(0), qb.stride(1), o.stride(-2), o.stride(-1),
                sa.stride(0), sa.stride(1), sb.stride(0), sb.stride(1), o.stride(0) if split > 1 else 0,
                EVEN_K=k % bk == 0, **common,
            )  # fmt: skip
            return reduce_split_k(o, split, bias, out_dtype)
        else:
            if not use_tma or split > 1:
                raise ValueError(f"blockwise_mm: config {c!r} needs TMA-readable operands and no split-K")
            run(_blockwise_tma_kernel, grid)(
                descriptor(qa, (bm, bk)), descriptor(qbt, (bn, bk)), o, sa, sb, bias_arg, m, n, k,
                o.stride(0), o.stride(1), sa.stride(0), sa.stride(1), sb.stride(0), sb.stride(1),
                WARP_SPECIALIZE=c.variant == 2, **common,
            )  # fmt: skip
        return o

    if config is None:
        key = ("blockwise", scale_n, m_bucket(m), n, k, qa.dtype, qb.dtype, out_dtype, use_wgmma, use_tma,
               qa.device)  # fmt: skip
        config = _TUNER.pick(key, lambda: _candidates(m, n, k, use_tma, use_wgmma), launch)
    return launch(config)
