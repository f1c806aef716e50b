"""W4A16 for few tokens (M <= 16): per-lane decode straight into MMA registers.

The Packed layout (:mod:`breccia.packing`) stores each (16-row tile, 64-code
window) of the weight as the 32 lanes of a warp hold the A operand of four
``mma.sync.m16n8k16`` steps, 16 bytes a lane. A program of ``NW`` warps
handles ``R`` tiles a warp over a range of K windows (split-K); per tile and
window a lane:

- loads its 16 bytes (one 16-byte vector, the warp's 512 bytes contiguous),
  its activation operand (16 contiguous elements of token ``lane // 4``, two
  16-byte vectors shared by the warp's ``R`` tiles; lanes past M load
  nothing) and its two rows' scales;
- decodes the four 32-bit words in one inline-PTX block: per bf16x2/f16x2
  register one ``lop3`` (mask, sign flip and magic exponent: the code ORed
  into the mantissa of 2**7 or 2**10), one shift, one ``fma`` subtracting the
  magic plus the zero point (exact) and one ``fma`` by the scale (the one
  rounding, so the bits are ``breccia.dequantize(w, x.dtype)``'s); NVFP4
  words are stored bit-shuffled (:data:`breccia.packing.E2M1_WORD_PIECES`) so
  that one rotation and one mask per register (two for one of the four)
  place sign and e2m1 bits as the bf16 of value * 2**-126, and one ``fma``
  multiplies by ``block_scale * 2**119`` (exact); the global scale * 2**7
  comes at the end;
- runs the four MMA steps (eight for M = 9..16: two token halves) into fp32
  accumulators that stay in registers.

``SETS`` register sets (2-4 windows) each get reloaded right after their
decode, so a window's loads land during the other sets' decodes and the
loop carries no register copies; no shared memory. ``PDL`` (sm90+, the
launch's ``launch_pdl``): the program waits (``griddepcontrol.wait``) for the
previous kernel in the stream before it reads the activation or touches
its output and workspace; modes 2 and 3 load the first windows' weights and
scales before that wait, and the next kernel may start once every program
has begun (1, 2) or left its main loop (3) -- see ``w4a16.PDL_MODES``.
Split-K partial sums go to the same self-cleaning fp32 workspace and ticket
as the tensor-core kernel's (:mod:`.w4a16`). ``WSPLIT`` instead lets a program's warps share
its tiles and split its windows, summed through shared memory (correct, but
slower on the H100; never combined with split-K: the summed accumulator is
replicated over the warps, which the workspace drain does not handle). The PTX needs sm_80 (bf16 fma
and mma); the block is generated per weight kind and dtype by
:func:`mma_asm`, which the CPU tests execute with a small PTX emulator.

This kernel is written in Gluon (explicit layouts: the lane that holds an
element is the lane the PTX expects) and does not run under the Triton
interpreter; there the tensor-core kernel of :mod:`.w4a16` runs instead.
"""

from __future__ import annotations

from functools import lru_cache

from ...packing import e2m1_register_masks

#: NVFP4 weights carry 2**-7 in the MMA (undone with the global scale)
NVFP4_PRE = 2.0**-7
#: bf16 of e4m3 scale * 2**119: the product with the decoded bits is exact
NVFP4_SCALE_MUL = 2.0**119


@lru_cache(maxsize=None)
def mma_asm(kind: int, fp16: bool, two_n: bool) -> tuple[str, str]:
    """The inline PTX of one (tile, window) for one lane, and its constraints.

    Operands, 4 registers each (``pack=4``): outputs ``acc`` (and ``acc2``,
    tokens 8-15); inputs the 4 weight words, activation words 0-3 and 4-7
    (and 0-3, 4-7 of tokens 8-15), the scales of rows g and g + 8 as x2 words
    (a broadcast value: 4 copies each), for asymmetric INT4 the offsets
    ``-(magic + zero point)`` likewise, then the accumulators in."""
    n_acc = 2 if two_n else 1
    n_x = 4 if two_n else 2
    nxt = iter(range(1000))

    def regs(n=4):
        return [f"${next(nxt)}" for _ in range(n)]

    out = [regs() for _ in range(n_acc)]
    w = regs()
    x = [regs() for _ in range(n_x)]
    sc = [regs()[0], regs()[0]]  # rows g, g + 8
    zo = [regs()[0], regs()[0]] if kind == 1 else None
    acc_in = [regs() for _ in range(n_acc)]
    ty = "f16" if fp16 else "bf16"
    one = "0x3C003C00" if fp16 else "0x3F803F80"
    lines = ["{", ".reg .b32 a<4>, t, one, nz, off;", f"mov.b32 one, {one};", "mov.b32 nz, 0x80008000;"]
    if kind == 0:  # -(magic + 8): bf16 -136, f16 -1032
        lines.append(f"mov.b32 off, {'0xE408E408' if fp16 else '0xC308C308'};")
    magic = 0x64006400 if fp16 else 0x43004300
    for s in range(4):
        ws = w[s]
        if kind in (0, 1):
            # a_i = (word >> 4i) & 0x000F000F, sign bit flipped (symmetric), | magic
            imm = hex(magic ^ 0x00080008) if kind == 0 else hex(magic)
            lut = "0x6A" if kind == 0 else "0xEA"  # (a & b) ^ c  /  (a & b) | c
            for i in range(4):
                src = ws
                if i:
                    lines.append(f"shr.u32 t, {ws}, {4 * i};")
                    src = "t"
                lines.append(f"lop3.b32 a{i}, {src}, 0x000F000F, {imm}, {lut};")
            for i in range(4):
                off = "off" if kind == 0 else zo[i % 2]
                lines.append(f"fma.rn.{ty}x2 a{i}, a{i}, one, {off};")  # q (- zero point), exact
                lines.append(f"fma.rn.{ty}x2 a{i}, a{i}, {sc[i % 2]}, nz;")  # * scale, rounded once
        else:
            # NVFP4's shuffled word (packing.E2M1_WORD_PIECES): each register
            # is rotl(word, r) & mask -- the bf16 bits s.0000000.e1 e0 m of
            # both codes -- ORed over its pieces (one rotation, or two)
            done = set()
            for i, rot, mask in e2m1_register_masks():
                src = ws
                if rot:
                    lines.append(f"shf.l.wrap.b32 t, {ws}, {ws}, {rot};")
                    src = "t"
                if i in done:
                    lines.append(f"lop3.b32 a{i}, {src}, {hex(mask)}, a{i}, 0xEA;")  # (src & mask) | a
                else:
                    lines.append(f"and.b32 a{i}, {src}, {hex(mask)};")
                    done.add(i)
            for i in range(4):
                lines.append(f"fma.rn.bf16x2 a{i}, a{i}, {sc[i % 2]}, nz;")
        for h in range(n_acc):
            xs = x[2 * h + s // 2]
            b0, b1 = xs[2 * (s % 2)], xs[2 * (s % 2) + 1]
            c = acc_in[h] if s == 0 else out[h]
            lines.append(
                f"mma.sync.aligned.m16n8k16.row.col.f32.{ty}.{ty}.f32 "
                f"{{{', '.join(out[h])}}}, {{a0, a1, a2, a3}}, {{{b0}, {b1}}}, {{{', '.join(c)}}};"
            )
    lines.append("}")
    n_in_r = 4 * (1 + n_x + 2 + (2 if kind == 1 else 0))
    cons = ",".join(["=f"] * (4 * n_acc) + ["r"] * n_in_r + ["f"] * (4 * n_acc))
    return "\n".join(lines), cons


from .gluon_compat import HAS_GLUON, cta_barrier, gl, gluon

if HAS_GLUON:

    @gluon.jit
    def _scale_words(sv, KIND: gl.constexpr, FP16: gl.constexpr):
        """Scales -> x2 words (the value in both halves): INT4 the scale's
        own bits (its dtype is the activation's), NVFP4 bf16(e4m3 * 2**119)."""
        if KIND == 2:
            sf = sv.to(gl.float8e4nv, bitcast=True).to(gl.float32) * 6.646139978924579e35
            sb = sf.to(gl.bfloat16).to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF
        else:
            sb = sv.to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF
        return sb | (sb << 16)

    @gluon.jit
    def _zero_words(zv, FP16: gl.constexpr):
        """Asymmetric INT4: -(magic + zero point) as x2 words (exact)."""
        if FP16:
            zf = -(zv.to(gl.float32) + 1024.0)
            zb = zf.to(gl.float16).to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF
        else:
            zf = -(zv.to(gl.float32) + 128.0)
            zb = zf.to(gl.bfloat16).to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF
        return zb | (zb << 16)

    @gluon.jit
    def _load_w(it, wb3, last3, wbs, lasts, wp, w_off, K, s_base, s_base8, z_base, z_base8, kq3, stride_sg, stride_zg,
                KIND: gl.constexpr, GROUP: gl.constexpr):  # fmt: skip
        """The weight words of window ``wb + it`` (a window past the warp's
        range rereads its last one) and its scales (and zero points)."""
        wv = gl.load(wp + w_off + gl.minimum(wb3 + it, last3) * 128)
        # a run wholly past K (activation zero) takes the last group's scale: no load leaves the grid
        grp = gl.minimum((gl.minimum(wbs + it, lasts) * 64 + kq3) // GROUP, (K - 1) // GROUP)
        sv = gl.load(s_base + grp * stride_sg)
        svb = gl.load(s_base8 + grp * stride_sg)
        if KIND == 1:
            zv = gl.load(z_base + grp * stride_zg)
            zvb = gl.load(z_base8 + grp * stride_zg)
        else:
            zv = sv
            zvb = svb
        return wv, sv, svb, zv, zvb

    @gluon.jit
    def _load_x(it, wb2, wend2, last2, xp, x_off, x_off2, x_ok, x_ok2, kq, K, TWO_N: gl.constexpr):
        """The activation words of window ``wb + it`` (zero past K, past M
        and past the range)."""
        w2 = wb2 + it
        kok = (w2 * 64 + kq < K) & (w2 < wend2)
        xw = gl.minimum(w2, last2) * 32
        xa = gl.load(xp + x_off + xw, mask=x_ok & kok, other=0)
        xb = gl.load(xp + x_off + xw + 4, mask=x_ok & kok, other=0)
        if TWO_N:
            xc = gl.load(xp + x_off2 + xw, mask=x_ok2 & kok, other=0)
            xd = gl.load(xp + x_off2 + xw + 4, mask=x_ok2 & kok, other=0)
        else:
            xc = xa
            xd = xb
        return xa, xb, xc, xd

    @gluon.jit
    def _load(it, wb3, last3, wbs, lasts, wp, w_off, K, s_base, s_base8, z_base, z_base8, kq3, stride_sg, stride_zg,
              wb2, wend2, last2, xp, x_off, x_off2, x_ok, x_ok2, kq,
              KIND: gl.constexpr, GROUP: gl.constexpr, TWO_N: gl.constexpr):  # fmt: skip
        """The registers of window ``wb + it`` (each warp its own ``wb``, in the
        three layouts its tensors use): weight words, activation words,
        scales (and zero points)."""
        wv, sv, svb, zv, zvb = _load_w(it, wb3, last3, wbs, lasts, wp, w_off, K, s_base, s_base8, z_base, z_base8,
                                       kq3, stride_sg, stride_zg, KIND, GROUP)  # fmt: skip
        xa, xb, xc, xd = _load_x(it, wb2, wend2, last2, xp, x_off, x_off2, x_ok, x_ok2, kq, K, TWO_N)
        return wv, xa, xb, xc, xd, sv, svb, zv, zvb

    @gluon.jit
    def _gdc_wait():
        """Programmatic dependent launch: wait for the previous kernel in the
        stream to finish (its writes visible)."""
        gl.inline_asm_elementwise("griddepcontrol.wait; // $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1)

    @gluon.jit
    def _gdc_launch():
        """Programmatic dependent launch: let the next kernel in the stream
        start its programs (they wait for this one before touching its data)."""
        gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1)

    @gluon.jit
    def _step(wv, xa, xb, xc, xd, sv, svb, zv, zvb, acc, acc2, ASM: gl.constexpr, CONS: gl.constexpr,
              KIND: gl.constexpr, FP16: gl.constexpr, TWO_N: gl.constexpr):  # fmt: skip
        """Decode one window and run its MMA steps (the inline PTX)."""
        sw = gl.expand_dims(_scale_words(sv, KIND, FP16), 2)
        swb = gl.expand_dims(_scale_words(svb, KIND, FP16), 2)
        xa3 = gl.expand_dims(xa, 0)
        xb3 = gl.expand_dims(xb, 0)
        if TWO_N:
            xc3 = gl.expand_dims(xc, 0)
            xd3 = gl.expand_dims(xd, 0)
            if KIND == 1:
                zw = gl.expand_dims(_zero_words(zv, FP16), 2)
                zwb = gl.expand_dims(_zero_words(zvb, FP16), 2)
                args = [wv, xa3, xb3, xc3, xd3, sw, swb, zw, zwb, acc, acc2]
            else:
                args = [wv, xa3, xb3, xc3, xd3, sw, swb, acc, acc2]
            acc, acc2 = gl.inline_asm_elementwise(ASM, CONS, args, dtype=(gl.float32, gl.float32), is_pure=True, pack=4)
        else:
            if KIND == 1:
                zw = gl.expand_dims(_zero_words(zv, FP16), 2)
                zwb = gl.expand_dims(_zero_words(zvb, FP16), 2)
                args = [wv, xa3, xb3, sw, swb, zw, zwb, acc]
            else:
                args = [wv, xa3, xb3, sw, swb, acc]
            acc = gl.inline_asm_elementwise(ASM, CONS, args, dtype=gl.float32, is_pure=True, pack=4)
        return acc, acc2

    @gluon.jit
    def _finish(acc, orow, otok, gs_ptr, bias_ptr, out_ptr, ws_ptr, M, N, stride_om, stride_on,
                KIND: gl.constexpr, HAS_BIAS: gl.constexpr, IS_SPLIT: gl.constexpr):  # fmt: skip
        """Write one accumulator (or add it to the split-K workspace)."""
        o_mask = (orow < N) & (otok < M)
        if KIND == 2:
            acc = acc * (gl.load(gs_ptr) * 128.0)
        o_ptrs = out_ptr + otok * stride_om + orow * stride_on
        if not IS_SPLIT:
            if HAS_BIAS:
                acc += gl.load(bias_ptr + orow, mask=orow < N, other=0.0).to(gl.float32)
            gl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=o_mask)
        else:
            gl.atomic_add(ws_ptr + otok * N + orow, acc, mask=o_mask, sem="relaxed")

    @gluon.jit
    def _drain(acc_layout_like, orow, otok, bias_ptr, out_ptr, ws_ptr, M, N, stride_om, stride_on, HAS_BIAS: gl.constexpr):
        """The last split of a row block: read the sum and leave zero (one
        atomic exchange, L2's copy), add the bias, write the output."""
        o_mask = (orow < N) & (otok < M)
        ws_ptrs = (ws_ptr + otok * N + orow).to(gl.pointer_type(gl.int32))
        tot = gl.atomic_xchg(ws_ptrs, gl.zeros_like(acc_layout_like).to(gl.int32), mask=o_mask, sem="relaxed")
        tot = tot.to(gl.float32, bitcast=True)
        if HAS_BIAS:
            tot += gl.load(bias_ptr + orow, mask=orow < N, other=0.0).to(gl.float32)
        gl.store(out_ptr + otok * stride_om + orow * stride_on, tot.to(out_ptr.dtype.element_ty), mask=o_mask)

    @gluon.jit(do_not_specialize=["M", "WPS", "WPW", "SPLIT_K"])
    def w4a16_mma_kernel(
        x_ptr, w_ptr, s_ptr, z_ptr, gs_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr,
        M, N, K, KW, WPS, WPW, NT, SPLIT_K,
        stride_xm, stride_wt, stride_sn, stride_sg, stride_zn, stride_zg, stride_om, stride_on,
        ASM: gl.constexpr, CONS: gl.constexpr, KIND: gl.constexpr, FP16: gl.constexpr, GROUP: gl.constexpr,
        HAS_BIAS: gl.constexpr, TWO_N: gl.constexpr, R: gl.constexpr, NW: gl.constexpr, IS_SPLIT: gl.constexpr,
        WSPLIT: gl.constexpr, SETS: gl.constexpr, PDL: gl.constexpr,
    ):  # fmt: skip
        if PDL == 1 or PDL == 2:  # the next kernel may start its programs (they wait for this one's end)
            _gdc_launch()
        # [R tiles, 32 * NW lanes, 4 words]: element (r, t, j) is word j of
        # lane t % 32 of warp t // 32, tile r of that warp
        L: gl.constexpr = gl.BlockedLayout([R, 1, 4], [1, 32, 1], [1, NW, 1], [2, 1, 0])
        L2: gl.constexpr = gl.SliceLayout(0, L)  # [32 * NW, 4]: the activation words
        T: gl.constexpr = 32 * NW
        pid_n = gl.program_id(0)
        pid_k = gl.program_id(1)

        r3 = gl.expand_dims(gl.expand_dims(gl.arange(0, R, layout=gl.SliceLayout(1, gl.SliceLayout(2, L))), 1), 2)
        t3 = gl.expand_dims(gl.expand_dims(gl.arange(0, T, layout=gl.SliceLayout(0, gl.SliceLayout(2, L))), 0), 2)
        j3 = gl.expand_dims(gl.expand_dims(gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, L))), 0), 1)
        lane3 = t3 % 32
        g3 = lane3 // 4
        q3 = lane3 % 4
        if WSPLIT:  # the warps share the tiles and split the windows
            tile3 = pid_n * R + r3 + 0 * t3  # [R, T, 1]
        else:  # each warp its own tiles
            tile3 = pid_n * (R * NW) + (t3 // 32) * R + r3

        # windows: the program's [w_start, w_end); a warp's from wb (its own with WSPLIT)
        w_start = pid_k * WPS
        w_end = gl.minimum(w_start + WPS, KW)
        warp3 = t3 // 32
        if WSPLIT:
            wb3 = w_start + warp3 * WPW
        else:
            wb3 = w_start + 0 * warp3
        last3 = gl.minimum(wb3 + WPW, w_end) - 1

        # weight words: (tile, window, lane, word); tiles past the end read tile 0
        wp = w_ptr.to(gl.pointer_type(gl.int32))
        w_off = gl.where(tile3 < NT, tile3, 0) * (stride_wt // 4) + lane3 * 4 + j3
        # activation words: token g (+ 8), K 64w + 16q + 2j (+ 8)
        t2 = gl.expand_dims(gl.arange(0, T, layout=gl.SliceLayout(1, L2)), 1)
        j2 = gl.expand_dims(gl.arange(0, 4, layout=gl.SliceLayout(0, L2)), 0)
        g2 = (t2 % 32) // 4
        kq = ((t2 % 32) % 4) * 16  # [T, 1]
        if WSPLIT:
            wb2 = w_start + (t2 // 32) * WPW
        else:
            wb2 = w_start + 0 * t2
        wend2 = gl.minimum(wb2 + WPW, w_end)
        last2 = wend2 - 1
        xp = x_ptr.to(gl.pointer_type(gl.int32))
        x_off = g2 * (stride_xm // 2) + kq // 2 + j2
        x_ok = g2 < M
        x_off2 = x_off + 8 * (stride_xm // 2)
        x_ok2 = (g2 + 8) < M
        # scales (and zero points) of rows g and g + 8, group of K 64w + 16q:
        # [R, T] tensors, broadcast over the 4 words
        LS: gl.constexpr = gl.SliceLayout(2, L)
        r_s = gl.expand_dims(gl.arange(0, R, layout=gl.SliceLayout(1, LS)), 1)
        t_s = gl.expand_dims(gl.arange(0, T, layout=gl.SliceLayout(0, LS)), 0)
        if WSPLIT:
            row_s = (pid_n * R + r_s) * 16 + (t_s % 32) // 4
            wbs = w_start + (t_s // 32) * WPW
        else:
            row_s = (pid_n * (R * NW) + (t_s // 32) * R + r_s) * 16 + (t_s % 32) // 4
            wbs = w_start + 0 * t_s
        lasts = gl.minimum(wbs + WPW, w_end) - 1
        row_s8 = gl.where(row_s + 8 < N, row_s + 8, 0)
        row_s = gl.where(row_s < N, row_s, 0)
        s_base = s_ptr + row_s * stride_sn
        s_base8 = s_ptr + row_s8 * stride_sn
        z_base = z_ptr + row_s * stride_zn
        z_base8 = z_ptr + row_s8 * stride_zn
        kq3 = ((t_s % 32) % 4) * 16

        acc = gl.zeros([R, T, 4], gl.float32, L)
        acc2 = gl.zeros([R, T, 4], gl.float32, L)
        # SETS register sets (windows it, it + 1, ...): a set is reloaded right
        # after its decode, so each load has the other sets' decodes to land
        # in, and the loop carries no register copies. A window past the
        # split's end rereads the last one with the activation masked to zero.
        LW = (wb3, last3, wbs, lasts, wp, w_off, K, s_base, s_base8, z_base, z_base8, kq3, stride_sg, stride_zg)
        LX = (wb2, wend2, last2, xp, x_off, x_off2, x_ok, x_ok2, kq)
        if PDL >= 2:
            # the first windows' weights and scales before waiting for the
            # previous kernel (the contract: a weight is not that kernel's
            # output; ``w4a16.PDL = False`` otherwise); the activation only after
            a_w, a_s, a_sb, a_z, a_zb = _load_w(0, *LW, KIND, GROUP)
            b_w, b_s, b_sb, b_z, b_zb = _load_w(1, *LW, KIND, GROUP)
            if SETS >= 3:
                c_w, c_s, c_sb, c_z, c_zb = _load_w(2, *LW, KIND, GROUP)
            if SETS >= 4:
                d_w, d_s, d_sb, d_z, d_zb = _load_w(3, *LW, KIND, GROUP)
            _gdc_wait()
            a_xa, a_xb, a_xc, a_xd = _load_x(0, *LX, K, TWO_N)
            b_xa, b_xb, b_xc, b_xd = _load_x(1, *LX, K, TWO_N)
            if SETS >= 3:
                c_xa, c_xb, c_xc, c_xd = _load_x(2, *LX, K, TWO_N)
            if SETS >= 4:
                d_xa, d_xb, d_xc, d_xd = _load_x(3, *LX, K, TWO_N)
        else:
            if PDL == 1:
                _gdc_wait()
            a_w, a_xa, a_xb, a_xc, a_xd, a_s, a_sb, a_z, a_zb = _load(0, *LW, *LX, KIND, GROUP, TWO_N)
            b_w, b_xa, b_xb, b_xc, b_xd, b_s, b_sb, b_z, b_zb = _load(1, *LW, *LX, KIND, GROUP, TWO_N)
            if SETS >= 3:
                c_w, c_xa, c_xb, c_xc, c_xd, c_s, c_sb, c_z, c_zb = _load(2, *LW, *LX, KIND, GROUP, TWO_N)
            if SETS >= 4:
                d_w, d_xa, d_xb, d_xc, d_xd, d_s, d_sb, d_z, d_zb = _load(3, *LW, *LX, KIND, GROUP, TWO_N)
        if SETS == 2:
            for it in range(0, WPW, 2):
                acc, acc2 = _step(a_w, a_xa, a_xb, a_xc, a_xd, a_s, a_sb, a_z, a_zb, acc, acc2, ASM, CONS, KIND, FP16, TWO_N)
                a_w, a_xa, a_xb, a_xc, a_xd, a_s, a_sb, a_z, a_zb = _load(it + 2, *LW, *LX, KIND, GROUP, TWO_N)
                acc, acc2 = _step(b_w, b_xa, b_xb, b_xc, b_xd, b_s, b_sb, b_z, b_zb, acc, acc2, ASM, CONS, KIND, FP16, TWO_N)
                b_w, b_xa, b_xb, b_xc, b_xd, b_s, b_sb, b_z, b_zb = _load(it + 3, *LW, *LX, KIND, GROUP, TWO_N)
        elif SETS == 3:
            for it in range(0, WPW, 3):
                acc, acc2 = _step(a_w, a_xa, a_xb, a_xc, a_xd, a_s, a_sb, a_z, a_zb, acc, acc2, ASM, CONS, KIND, FP16, TWO_N)
                a_w, a_xa, a_xb, a_xc, a_xd, a_s, a_sb, a_z, a_zb = _load(it + 3, *LW, *LX, KIND, GROUP, TWO_N)
                acc, acc2 = _step(b_w, b_xa, b_xb, b_xc, b_xd, b_s, b_sb, b_z, b_zb, acc, acc2, ASM, CONS, KIND, FP16, TWO_N)
                b_w, b_xa, b_xb, b_xc, b_xd, b_s, b_sb, b_z, b_zb = _load(it + 4, *LW, *LX, KIND, GROUP, TWO_N)
                acc, acc2 = _step(c_w, c_xa, c_xb, c_xc, c_xd, c_s, c_sb, c_z, c_zb, acc, acc2, ASM, CONS, KIND, FP16, TWO_N)
                c_w, c_xa, c_xb, c_xc, c_xd, c_s, c_sb, c_z, c_zb = _load(it + 5, *LW, *LX, KIND, GROUP, TWO_N)
        else:
            for it in range(0, WPW, 4):
                acc, acc2 = _step(a_w, a_xa, a_xb, a_xc, a_xd, a_s, a_sb, a_z, a_zb, acc, acc2, ASM, CONS, KIND, FP16, TWO_N)
                a_w, a_xa, a_xb, a_xc, a_xd, a_s, a_sb, a_z, a_zb = _load(it + 4, *LW, *LX, KIND, GROUP, TWO_N)
                acc, acc2 = _step(b_w, b_xa, b_xb, b_xc, b_xd, b_s, b_sb, b_z, b_zb, acc, acc2, ASM, CONS, KIND, FP16, TWO_N)
                b_w, b_xa, b_xb, b_xc, b_xd, b_s, b_sb, b_z, b_zb = _load(it + 5, *LW, *LX, KIND, GROUP, TWO_N)
                acc, acc2 = _step(c_w, c_xa, c_xb, c_xc, c_xd, c_s, c_sb, c_z, c_zb, acc, acc2, ASM, CONS, KIND, FP16, TWO_N)
                c_w, c_xa, c_xb, c_xc, c_xd, c_s, c_sb, c_z, c_zb = _load(it + 6, *LW, *LX, KIND, GROUP, TWO_N)
                acc, acc2 = _step(d_w, d_xa, d_xb, d_xc, d_xd, d_s, d_sb, d_z, d_zb, acc, acc2, ASM, CONS, KIND, FP16, TWO_N)
                d_w, d_xa, d_xb, d_xc, d_xd, d_s, d_sb, d_z, d_zb = _load(it + 7, *LW, *LX, KIND, GROUP, TWO_N)

        if PDL == 3:  # the next kernel may start once every program is past its loads
            _gdc_launch()
        # C fragment: element j -> row g + 8 * (j // 2), token 2q + j % 2 (+ 8: acc2)
        orow = tile3 * 16 + g3 + 8 * (j3 // 2)
        otok = 2 * q3 + (j3 % 2) + 0 * r3
        if WSPLIT:  # sum the warps' partial products (through shared memory)
            acc = gl.sum(gl.reshape(acc, [R, NW, 32, 4]), axis=1)
            if TWO_N:
                acc2 = gl.sum(gl.reshape(acc2, [R, NW, 32, 4]), axis=1)
            orow = gl.max(gl.reshape(orow, [R, NW, 32, 4]), axis=1)
            otok = gl.max(gl.reshape(otok, [R, NW, 32, 4]), axis=1)
        _finish(acc, orow, otok, gs_ptr, bias_ptr, out_ptr, ws_ptr, M, N, stride_om, stride_on, KIND, HAS_BIAS, IS_SPLIT)
        if TWO_N:
            _finish(acc2, orow, otok + 8, gs_ptr, bias_ptr, out_ptr, ws_ptr, M, N, stride_om, stride_on,
                    KIND, HAS_BIAS, IS_SPLIT)  # fmt: skip
        if IS_SPLIT:
            cta_barrier()  # every thread's adds before the ticket
            ticket = gl.atomic_add(cnt_ptr + pid_n, 1, sem="acq_rel")
            if ticket == SPLIT_K - 1:  # the last split of this row block: finish and clean
                _drain(acc, orow, otok, bias_ptr, out_ptr, ws_ptr, M, N, stride_om, stride_on, HAS_BIAS)
                if TWO_N:
                    _drain(acc, orow, otok + 8, bias_ptr, out_ptr, ws_ptr, M, N, stride_om, stride_on, HAS_BIAS)
                gl.atomic_xchg(cnt_ptr + pid_n, 0, sem="relaxed")
