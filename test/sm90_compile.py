"""Compile a Gluon kernel for an H100 on a machine without one, in a process
of its own: the Triton interpreter the rest of the suite runs under patches
the language for the process, which breaks a real compile.

    python test/sm90_compile.py wgmma '[[bm, bn, bk, warps, stages, slice_k, scalar], ...]'
    python test/sm90_compile.py w4a16 '[[kind, two_n, tiles_a_warp, warps, sets, pdl, split], ...]'

prints one JSON object per config: ``gemm_wgmma``'s wgmma instructions,
waits and shared memory; the W4A16 MMA kernel's ``mma.sync`` instructions
and shared memory."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _compile_sm90(kernel_fn, sig: dict, const: dict, warps: int, **options):
    """``kernel_fn`` (a Gluon kernel) compiled for sm90: ``sig`` the runtime
    arguments' types, ``const`` the constexpr values (appended to ``sig``)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    sig = dict(sig, **{name: "constexpr" for name in const})
    src = GluonASTSource(kernel_fn, sig, {(list(sig).index(name),): v for name, v in const.items()})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, **options))


def compile_config(
    bm: int, bn: int, bk: int, warps: int, stages: int, slice_k: int, scalar: bool, ws: bool = False
) -> dict:
    import torch
    from triton.experimental.gluon import language as gl
    from triton.runtime.jit import mangle_type

    from breccia.kernels.triton import gemm_wgmma

    m, n, k = 512, 512, 1024
    kb = k // slice_k
    fp8 = gl.NVMMASharedLayout.get_default_for([bm, bk], gl.float8e4nv)
    fp8_b = gl.NVMMASharedLayout.get_default_for([bn, bk], gl.float8e4nv)
    flat = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=2)
    desc = gemm_wgmma._GluonDescriptor
    a_desc = desc(torch.empty(m, k, dtype=torch.float8_e4m3fn), [m, k], [k, 1], [bm, bk], fp8)
    b_desc = desc(torch.empty(n, k, dtype=torch.float8_e4m3fn), [n, k], [k, 1], [bn, bk], fp8_b)
    sa_desc = desc(torch.empty(kb, m), [kb, m], [m, 1], [bk // slice_k, bm], flat)
    sb_desc = sa_desc if scalar else desc(torch.empty(kb, n), [kb, n], [n, 1], [bk // slice_k, bn], flat)
    sig = dict(
        a_desc=mangle_type(a_desc), b_desc=mangle_type(b_desc), sa_desc=mangle_type(sa_desc),
        sb_desc=mangle_type(sb_desc), sb_ptr="*fp32", c_ptr="*bf16", bias_ptr="*bf16",
        **{name: "i32" for name in ("M", "N", "K", "stride_cm", "stride_cn", "stride_sbk", "stride_sbn")},
    )  # fmt: skip
    # (in the kernel's parameter order: constants are matched by position)
    const = dict(SLICE=slice_k, SB_SCALAR=scalar, SB_BLOCK_N=128 if scalar else 1, HAS_BIAS=True, STAGES=stages)
    const.update(WARPS_N=1 if ws else (16 * warps) // bm, GROUP_M=8, WS=ws, CONSUMER_REGS=240, num_warps=warps)
    kernel = _compile_sm90(gemm_wgmma._scaled_wgmma_kernel, sig, const, warps, **({"maxnreg": 168} if ws else {}))
    ptx = kernel.asm["ptx"]
    if os.environ.get("SM90_DUMP"):  # inspection: the PTX, written to $SM90_DUMP.ptx
        open(os.environ["SM90_DUMP"] + ".ptx", "w").write(ptx)
    return {"wgmma": ptx.count("wgmma.mma_async"), "waits": ptx.count("wgmma.wait_group"),
            "shared": kernel.metadata.shared}  # fmt: skip


def compile_w4a16(kind: int, two_n: bool, tpw: int, warps: int, sets: int, pdl: int, split: bool) -> dict:
    from breccia.kernels.triton import w4a16_mma

    asm, cons = w4a16_mma.mma_asm(kind, False, two_n)
    scale_ty = "*u8" if kind == 2 else "*bf16"
    ptrs = dict(x_ptr="*bf16", w_ptr="*u8", s_ptr=scale_ty, z_ptr=scale_ty, gs_ptr="*fp32", bias_ptr="*bf16",
                out_ptr="*bf16", ws_ptr="*fp32", cnt_ptr="*i32")  # fmt: skip
    ints = ("M N K KW WPS WPW NT SPLIT_K stride_xm stride_wt stride_sn stride_sg stride_zn stride_zg "
            "stride_om stride_on").split()  # fmt: skip
    sig = dict(ptrs, **{name: "i32" for name in ints})
    const = dict(ASM=asm, CONS=cons, KIND=kind, FP16=False, GROUP=16 if kind == 2 else 128, HAS_BIAS=False,
                 TWO_N=two_n, R=tpw, NW=warps, IS_SPLIT=split, WSPLIT=False, SETS=sets, PDL=pdl)  # fmt: skip
    kernel = _compile_sm90(w4a16_mma.w4a16_mma_kernel, sig, const, warps)
    ptx = kernel.asm["ptx"]
    return {"mma": ptx.count("mma.sync.aligned"), "shared": kernel.metadata.shared}


if __name__ == "__main__":
    compile_one = {"wgmma": compile_config, "w4a16": compile_w4a16}[sys.argv[1]]
    for cfg in json.loads(sys.argv[2]):
        print(json.dumps(compile_one(*cfg)), flush=True)
