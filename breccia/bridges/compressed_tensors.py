"""compressed-tensors (vLLM / llm-compressor) checkpoints <-> ScaledTensor.

compressed-tensors stores each quantized linear layer ``<module>`` as a few
tensors next to one ``quantization_config`` in ``config.json``:

=====================  ==========================================================
format                 tensors (``<module>.`` + name)
=====================  ==========================================================
``float-quantized``    ``weight`` e4m3, ``weight_scale`` (fp32 here): tensor ``(1,)``,
                       channel ``(N, 1)``, group ``(N, K/g)``, block ``(ceil N/bh, ceil K/bw)``
``mxfp8-quantized``    ``weight`` e4m3, ``weight_scale`` uint8 = e8m0 biased exponents
``nvfp4-pack-quantized`` ``weight_packed`` uint8 (two e2m1 per byte, even element in
                       the low nibble), ``weight_scale`` e4m3 ``(N, K/16)``,
                       ``weight_global_scale`` fp32 ``(1,)`` = 448*6/amax
``pack-quantized``     ``weight_packed`` int32 (8 nibbles, element i at bits 4i..4i+3),
                       ``weight_shape`` int64 ``[N, K]``, ``weight_scale`` ``(N, K/g)``,
                       ``weight_zero_point`` int32 packed along N (asymmetric only)
=====================  ==========================================================

Every scale is a dequantization multiplier, as in breccia, except the NVFP4
global scale: compressed-tensors divides by it (``q * weight_scale /
weight_global_scale``), so it stores the reciprocal of breccia's
``global_scale``. Packed INT4 nibbles hold ``code + 8``: breccia's signed
(two's complement) symmetric codes flip bit 3; its unsigned asymmetric codes
and zero points are stored unchanged (compressed-tensors keeps signed codes
and zero points in -8..7, both offset by 8 on disk).

Payloads and block scales convert bit-exactly both ways. The NVFP4 global
scale is a reciprocal: see :func:`encode_global_scale` for how close that gets.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any, Mapping, Optional, Sequence

import torch

from ..layouts import Plain, relayout
from ..quantize import block_for
from ..recipes import (
    WHOLE,
    Float8BlockScaling,
    Float8CurrentScaling,
    INT4Scaling,
    MXFP8BlockScaling,
    NVFP4BlockScaling,
    Recipe,
    recipe_from_dict,
)
from ..tensor import ScaledTensor

__all__ = [
    "FP8",
    "MXFP8",
    "NVFP4",
    "INT4",
    "scheme_for",
    "to_compressed_tensors",
    "from_compressed_tensors",
    "quantization_config",
    "save_compressed_tensors",
    "load_compressed_tensors",
    "encode_global_scale",
    "decode_global_scale",
]

FP8 = "float-quantized"
MXFP8 = "mxfp8-quantized"
NVFP4 = "nvfp4-pack-quantized"
INT4 = "pack-quantized"
#: formats whose FP8 weights are stored as plain ``weight`` tensors
_FP8_FORMATS = (FP8, "naive-quantized")
#: the tensor that marks a module as compressed, by format
_ROOT = {FP8: "weight", "naive-quantized": "weight", MXFP8: "weight", NVFP4: "weight_packed", INT4: "weight_packed"}

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
#: safetensors metadata key holding breccia's own context per module
_META_KEY = "breccia"


# --------------------------------------------------------------------------- helpers


def _prefix(name: str) -> str:
    """The module path of a weight name: ``"a.b.weight"`` and ``"a.b"`` give
    ``"a.b"``; ``"weight"`` and ``""`` give ``""`` (local names)."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str (a weight or module name), got {type(name).__name__}")
    if name == "weight":
        return ""
    return name[: -len(".weight")] if name.endswith(".weight") else name


def _key(prefix: str, param: str) -> str:
    return f"{prefix}.{param}" if prefix else param


def _plain_2d(st: Any, name: str = "st") -> ScaledTensor:
    if not isinstance(st, ScaledTensor):
        raise TypeError(f"{name}: expected a breccia ScaledTensor, got {type(st).__name__}")
    if st.dim() != 2:
        raise ValueError(
            f"{name}: compressed-tensors stores 2-D linear weights (N, K), got shape {tuple(st.shape)}"
        )
    return relayout(st, Plain)  # lossless; bridges exchange row-major scale grids


def _grid(block: tuple, shape: tuple) -> tuple:
    """Scale-grid shape of ``shape`` in ``block`` (``-1`` = whole dim)."""
    return tuple(1 if b == WHOLE else (s + b - 1) // b for s, b in zip(shape, block))


def _fp8_recipe(block: tuple, element: str) -> Recipe:
    """The breccia recipe whose weight spec has ``block`` (2-D) and ``element``."""
    if block == (WHOLE, WHOLE):
        return Float8CurrentScaling(fp8_format=element)
    if block == (1, WHOLE):
        return Float8CurrentScaling(fp8_format=element, granularity="row")
    return Float8BlockScaling(fp8_format=element, weight_block=block)


# --------------------------------------------------------------------------- NVFP4 global scale


def encode_global_scale(global_scale: torch.Tensor) -> torch.Tensor:
    """compressed-tensors' ``weight_global_scale`` (``(1,)`` float32) for
    breccia's NVFP4 ``global_scale`` ``g``: the float32 nearest ``1/g`` whose
    reciprocal rounds back to ``g`` (``fl(1/fl(1/g))`` misses ``g`` for about
    one float in six), so breccia -> compressed-tensors -> breccia is
    bit-exact. compressed-tensors then dequantizes with ``scale / G``, which
    can differ from breccia's ``scale * g`` by one float32 ulp."""
    g = global_scale.detach().to(torch.float32).reshape(1)
    enc = torch.ones_like(g) / g
    if not bool(torch.isfinite(enc).all()) or bool((g == 0).any()):
        return enc
    bits = enc.view(torch.int32)
    for step in (0, -1, 1, -2, 2):  # neighbours of 1/g, nearest first
        cand = (bits + step).view(torch.float32)
        if bool((torch.ones_like(cand) / cand == g).all()):
            return cand
    return enc


def decode_global_scale(weight_global_scale: torch.Tensor) -> torch.Tensor:
    """breccia's NVFP4 ``global_scale`` (0-d float32) from compressed-tensors'
    ``weight_global_scale``: its correctly rounded reciprocal."""
    enc = weight_global_scale.detach().to(torch.float32).reshape(())
    return torch.ones_like(enc) / enc


# --------------------------------------------------------------------------- INT4 packing


def _pack_int32(codes: torch.Tensor) -> torch.Tensor:
    """uint8 nibbles ``(R, C)`` -> int32 ``(R, ceil(C/8))``, element ``i`` of a
    word at bits ``4i..4i+3``, zero-padded (compressed-tensors' ``pack_to_int32``).
    Arithmetic, not a byte view: independent of the host's byte order."""
    r, c = codes.shape
    pad = (-c) % 8
    v = torch.nn.functional.pad(codes.to(torch.int64), (0, pad)).reshape(r, -1, 8)
    shifts = torch.arange(0, 32, 4, dtype=torch.int64, device=codes.device)
    word = (v << shifts).sum(-1)
    return torch.where(word >= 2**31, word - 2**32, word).to(torch.int32)


def _unpack_int32(words: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`_pack_int32`: the first ``n`` nibbles of each row (uint8)."""
    w = words.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(0, 32, 4, dtype=torch.int64, device=words.device)
    nib = (w.unsqueeze(-1) >> shifts) & 0xF
    return nib.reshape(words.shape[0], -1)[:, :n].to(torch.uint8)


def _nibbles(packed: torch.Tensor, n: int) -> torch.Tensor:
    lo, hi = packed & 0xF, packed >> 4
    return torch.stack([lo, hi], dim=-1).flatten(-2)[..., :n]


def _pack_bytes(codes: torch.Tensor) -> torch.Tensor:
    if codes.shape[-1] % 2:
        codes = torch.nn.functional.pad(codes, (0, 1))
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).contiguous()


# --------------------------------------------------------------------------- schemes


def _format_of(st: ScaledTensor) -> str:
    fmt = st.spec.scale_format
    if fmt == "fp32":
        return FP8
    if fmt == "e8m0":
        return MXFP8
    if fmt == "e4m3":
        return NVFP4
    return INT4


def _fp8_strategy(block: tuple, k: int) -> dict:
    if block == (WHOLE, WHOLE):
        return {"strategy": "tensor"}
    if block == (1, WHOLE):
        return {"strategy": "channel"}
    bh, bw = block
    if bh == 1 and bw != WHOLE:
        if k % bw:
            raise ValueError(
                f"st: compressed-tensors' group strategy needs K divisible by the group size, "
                f"got K={k} and group {bw}"
            )
        return {"strategy": "group", "group_size": bw}
    if bh != WHOLE and bw != WHOLE:
        return {"strategy": "block", "block_structure": [bh, bw]}
    raise ValueError(f"st: block {block} has no compressed-tensors strategy (tensor, channel, group or block)")


def _input_args(recipe: Recipe, fmt: str) -> Optional[dict]:
    """Dynamic activation args matching the recipe's input spec, or None
    (weight-only recipes; NVFP4, whose activations need a calibrated static
    global scale that a weight checkpoint does not carry)."""
    if recipe.weight_only or fmt not in (FP8, MXFP8):
        return None
    spec = recipe.spec("input")
    if spec.element != "e4m3":  # compressed-tensors has no e5m2
        return None
    base = {"num_bits": 8, "type": "float", "symmetric": True, "dynamic": True}
    if fmt == MXFP8:
        return {**base, "strategy": "group", "group_size": 32, "scale_dtype": "torch.uint8", "zp_dtype": "torch.uint8"}
    block = block_for(spec.block, 2)
    if block == (WHOLE, WHOLE):
        return {**base, "strategy": "tensor"}
    if block == (1, WHOLE):
        return {**base, "strategy": "token"}
    if block[0] == 1:
        return {**base, "strategy": "group", "group_size": block[1]}
    return None


def scheme_for(st: ScaledTensor, *, activations: bool = True) -> dict:
    """The compressed-tensors ``QuantizationScheme`` (as JSON, less ``targets``)
    that describes ``st``. ``activations``: add the dynamic input-activation
    args that match ``st.recipe`` (FP8 and MXFP8 recipes only)."""
    st = _plain_2d(st)
    spec, fmt = st.spec, _format_of(st)
    k = st.shape[-1]
    if fmt in (FP8, MXFP8) and spec.element != "e4m3":
        raise ValueError(
            f"st: compressed-tensors stores FP8 as e4m3 only, got {spec.element} ({st.recipe.name}, role {st.role!r})"
        )
    if fmt == FP8:
        weights = {"num_bits": 8, "type": "float", "symmetric": True, "dynamic": False, **_fp8_strategy(st.block, k)}
    elif fmt == MXFP8:
        if k % 32:
            raise ValueError(f"st: mxfp8-quantized needs K divisible by 32, got K={k}")
        weights = {
            "num_bits": 8, "type": "float", "symmetric": True, "dynamic": False, "strategy": "group",
            "group_size": 32, "scale_dtype": "torch.uint8", "zp_dtype": "torch.uint8",
        }
    elif fmt == NVFP4:
        if k % 16:
            raise ValueError(f"st: nvfp4-pack-quantized needs K divisible by 16, got K={k}")
        weights = {
            "num_bits": 4, "type": "float", "symmetric": True, "dynamic": False, "strategy": "tensor_group",
            "group_size": 16, "scale_dtype": "torch.float8_e4m3fn", "zp_dtype": "torch.float8_e4m3fn",
        }
    else:
        g = st.block[-1]
        if k % g:
            raise ValueError(f"st: pack-quantized needs K divisible by the group size, got K={k} and group {g}")
        weights = {
            "num_bits": 4, "type": "int", "symmetric": spec.scale_rule == "symmetric", "dynamic": False,
            "strategy": "group", "group_size": g,
        }
    inputs = _input_args(st.recipe, fmt) if activations else None
    return {"weights": weights, "input_activations": inputs, "output_activations": None, "format": fmt}


def _scheme_dict(scheme: Any) -> dict:
    if hasattr(scheme, "model_dump"):  # a compressed_tensors.QuantizationScheme
        scheme = scheme.model_dump(mode="json")
    if not isinstance(scheme, Mapping) or not isinstance(scheme.get("weights"), Mapping):
        raise TypeError(
            "scheme: expected a compressed_tensors QuantizationScheme or its JSON dict with a 'weights' entry, "
            f"got {type(scheme).__name__}"
        )
    return dict(scheme)


def _infer_format(weights: Mapping) -> str:
    """The format compressed-tensors itself would pick for these weight args."""
    bits, typ = weights.get("num_bits"), weights.get("type")
    if typ == "float" and bits == 8:
        mx = weights.get("group_size") == 32 and str(weights.get("scale_dtype")).endswith("uint8")
        return MXFP8 if mx else FP8
    if typ == "float" and bits == 4 and weights.get("group_size") == 16:
        return NVFP4
    if typ == "int" and bits == 4:
        return INT4
    raise ValueError(
        f"scheme: breccia reads FP8, MXFP8, NVFP4 and INT4 weights, got num_bits={bits!r} type={typ!r} "
        f"group_size={weights.get('group_size')!r}"
    )


def _scheme_format(scheme: Mapping, default: Optional[str] = None) -> str:
    fmt = scheme.get("format") or default
    if fmt in (None, "mixed-precision", "dense"):
        fmt = _infer_format(scheme["weights"])
    if fmt not in _ROOT:
        raise ValueError(f"scheme: format {fmt!r} is not one breccia reads ({sorted(_ROOT)})")
    return fmt


# --------------------------------------------------------------------------- tensors


def to_compressed_tensors(name: str, st: ScaledTensor) -> dict[str, torch.Tensor]:
    """``st`` as compressed-tensors' on-disk tensors, keyed ``<module>.<param>``.

    ``name``: the weight's name (``"model.layers.0.mlp.down_proj.weight"``) or
    its module path; ``"weight"`` or ``""`` gives local names (``weight``,
    ``weight_scale``, ...), the keys a compressor's ``decompress`` takes.
    FP8/MXFP8 payloads and all scales share storage with ``st``."""
    p = _prefix(name)
    st = _plain_2d(st)
    scheme_for(st, activations=False)  # validates shape and format constraints
    fmt = _format_of(st)
    n, k = st.shape
    out: dict[str, torch.Tensor] = {}
    if fmt == FP8:
        scale = st.scale.reshape(1) if st.block == (WHOLE, WHOLE) else st.scale
        out[_key(p, "weight")] = st.qdata
        out[_key(p, "weight_scale")] = scale
    elif fmt == MXFP8:
        out[_key(p, "weight")] = st.qdata
        out[_key(p, "weight_scale")] = st.scale.view(torch.uint8)
    elif fmt == NVFP4:
        scale = st.scale
        if st.block[0] != 1:  # 16x16 blocks: one scale row per 16 rows, repeated
            scale = scale.repeat_interleave(st.block[0], dim=0)[:n]
        out[_key(p, "weight_packed")] = st.qdata
        out[_key(p, "weight_scale")] = scale
        out[_key(p, "weight_global_scale")] = encode_global_scale(st.global_scale)
    else:
        codes = _nibbles(st.qdata, k)
        if st.zero_point is None:
            codes = codes ^ 8  # signed two's complement -> code + 8
        out[_key(p, "weight_packed")] = _pack_int32(codes)
        out[_key(p, "weight_shape")] = torch.tensor([n, k], dtype=torch.int64)
        out[_key(p, "weight_scale")] = st.scale
        if st.zero_point is not None:
            # ct packs zero points along N: the transposed grid, packed, transposed back
            out[_key(p, "weight_zero_point")] = _pack_int32(st.zero_point.t().contiguous()).t().contiguous()
    return out


def _get(tensors: Mapping[str, torch.Tensor], prefix: str, param: str) -> torch.Tensor:
    key = _key(prefix, param)
    t = tensors.get(key)
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"tensors: expected a tensor {key!r} (compressed-tensors {param}), found none")
    return t


def _exact_as(t: torch.Tensor, dtype: torch.dtype, what: str) -> torch.Tensor:
    """``t`` in ``dtype`` if that loses nothing, else ValueError."""
    if t.dtype == dtype:
        return t
    r = t.to(dtype)
    if not torch.equal(r.to(t.dtype), t):
        raise ValueError(f"{what}: {t.dtype} values are not exactly representable in {dtype}")
    return r


def _check_recipe(recipe: Recipe, role: str, block: tuple, element: str, scale_format: str, zp: bool, where: str) -> None:
    spec = recipe.spec(role)
    got = (spec.element, spec.scale_format, block_for(spec.block, 2), spec.has_zero_point)
    want = (element, scale_format, block, zp)
    if got != want:
        raise ValueError(
            f"recipe: {recipe!r} (role {role!r}) quantizes as element/scale/block/zero-point {got}, "
            f"but {where} holds {want}"
        )


def from_compressed_tensors(
    prefix: str,
    tensors: Mapping[str, torch.Tensor],
    scheme: Any,
    *,
    recipe: Optional[Recipe] = None,
    role: str = "weight",
    orig_dtype: Optional[torch.dtype] = None,
) -> ScaledTensor:
    """The ScaledTensor stored under ``prefix`` in compressed-tensors ``tensors``.

    ``prefix``: the module path (``"model.layers.0.mlp.down_proj"``; a trailing
    ``.weight`` is dropped; ``""`` for local names); ``scheme``: its
    ``QuantizationScheme`` (object or JSON dict); ``recipe``: the breccia
    recipe to attach (default: the one the scheme implies; a given recipe must
    quantize with the stored element, scale format and block);
    ``orig_dtype``: the outer dtype (default: the INT4 scale dtype, else
    bfloat16). Payloads and scales are not copied where the formats agree."""
    p = _prefix(prefix)
    if recipe is not None and not isinstance(recipe, Recipe):
        raise TypeError(f"recipe: expected a breccia recipe or None, got {type(recipe).__name__}")
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors: expected a mapping of names to tensors, got {type(tensors).__name__}")
    sch = _scheme_dict(scheme)
    fmt = _scheme_format(sch)
    w = sch["weights"]
    where = f"module {p!r}"
    gs = zp = None
    if fmt in _FP8_FORMATS or fmt == MXFP8:
        q = _get(tensors, p, "weight")
        if q.dtype not in (torch.float8_e4m3fn, torch.float8_e5m2) or q.dim() != 2:
            raise ValueError(f"{_key(p, 'weight')}: expected a 2-D float8 tensor, got {q.dim()}-D {q.dtype}")
        element = "e4m3" if q.dtype == torch.float8_e4m3fn else "e5m2"
        n, k = q.shape
        s = _get(tensors, p, "weight_scale")
        if fmt == MXFP8:
            block, scale_format = (1, 32), "e8m0"
            if s.dtype != torch.float8_e8m0fnu:  # ct stores the biased exponent bytes as uint8
                s = _exact_as(s, torch.uint8, _key(p, "weight_scale")).view(torch.float8_e8m0fnu)
            scale = s
            default = MXFP8BlockScaling(fp8_format=element)
        else:
            strategy = w.get("strategy") or ("channel" if w.get("group_size") == -1 else "tensor")
            if strategy == "tensor":
                block = (WHOLE, WHOLE)
            elif strategy == "channel":
                block = (1, WHOLE)
            elif strategy == "group":
                block = (1, int(w["group_size"]))
            elif strategy == "block":
                block = tuple(int(b) for b in w["block_structure"])
            else:
                raise ValueError(f"scheme: FP8 weight strategy {strategy!r} is not one breccia reads")
            scale_format = "fp32"
            grid = _grid(block, (n, k))
            if s.numel() != grid[0] * grid[1] or not s.dtype.is_floating_point:
                raise ValueError(
                    f"{_key(p, 'weight_scale')}: expected {grid[0] * grid[1]} float scales for strategy "
                    f"{strategy!r} on a {n}x{k} weight, got {list(s.shape)} {s.dtype}"
                )
            scale = s.to(torch.float32).reshape(grid)  # bf16/fp16 -> fp32 is exact
            default = _fp8_recipe(block, element)
    elif fmt == NVFP4:
        q = _get(tensors, p, "weight_packed")
        if q.dtype != torch.uint8 or q.dim() != 2:
            raise ValueError(f"{_key(p, 'weight_packed')}: expected 2-D uint8, got {q.dim()}-D {q.dtype}")
        n, k = q.shape[0], q.shape[1] * 2
        element, scale_format, block = "e2m1", "e4m3", (1, 16)
        scale = _exact_as(_get(tensors, p, "weight_scale"), torch.float8_e4m3fn, _key(p, "weight_scale"))
        gs = decode_global_scale(_get(tensors, p, "weight_global_scale"))
        default = NVFP4BlockScaling()
        if recipe is not None and block_for(recipe.spec(role).block, 2) == (16, 16):
            rows = scale[::16]
            if not torch.equal(rows.repeat_interleave(16, dim=0)[:n].view(torch.uint8), scale.view(torch.uint8)):
                raise ValueError(f"recipe: 16x16 NVFP4 blocks, but {where}'s scales differ within 16-row groups")
            scale, block = rows, (16, 16)
    elif fmt == INT4:
        packed = _get(tensors, p, "weight_packed")
        shape = _get(tensors, p, "weight_shape")
        if packed.dtype != torch.int32 or packed.dim() != 2 or shape.numel() != 2:
            raise ValueError(
                f"{_key(p, 'weight_packed')}: expected 2-D int32 with a 2-element weight_shape, "
                f"got {packed.dim()}-D {packed.dtype} and weight_shape {shape.tolist()}"
            )
        n, k = (int(v) for v in shape.tolist())
        if tuple(packed.shape) != (n, (k + 7) // 8):
            raise ValueError(
                f"{_key(p, 'weight_packed')}: expected shape {[n, (k + 7) // 8]} for weight_shape {[n, k]}, "
                f"got {list(packed.shape)}"
            )
        s = _get(tensors, p, "weight_scale")
        sdt = s.dtype if s.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
        scale = _exact_as(s, sdt, _key(p, "weight_scale"))
        g = int(w.get("group_size") or -1)
        if w.get("strategy") == "channel" or g == -1:
            g = k  # one group per row
        symmetric = bool(w.get("symmetric", True))
        codes = _unpack_int32(packed, k)
        if symmetric:
            codes = codes ^ 8  # code + 8 -> signed two's complement nibble
        else:
            zpw = _get(tensors, p, "weight_zero_point")
            zp = _unpack_int32(zpw.t().contiguous(), n).t().contiguous()  # packed along N
        q = _pack_bytes(codes)
        element, scale_format, block = "int4", "bf16" if sdt == torch.bfloat16 else "fp16", (1, g)
        try:
            default = INT4Scaling(group_size=g, symmetric=symmetric, scale_dtype=scale_format)
        except ValueError as e:
            raise ValueError(f"{where}: INT4 group size {g} has no breccia recipe ({e})") from None
        orig_dtype = orig_dtype or sdt
    else:  # pragma: no cover - _scheme_format rejects others
        raise ValueError(f"scheme: unsupported format {fmt!r}")

    if recipe is None:
        recipe = default
    _check_recipe(recipe, role, block, element, scale_format, zp is not None, where)
    st = ScaledTensor(
        q, scale, recipe=recipe, role=role, block=block, shape=(n, k),
        orig_dtype=orig_dtype or torch.bfloat16, global_scale=gs, zero_point=zp,
    )
    try:
        st.check_consistent()
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    return st


# --------------------------------------------------------------------------- config


def quantization_config(
    state_dict: Mapping[str, Any], *, activations: bool = True, ignore: Sequence[str] = ()
) -> dict:
    """The ``quantization_config`` entry of ``config.json`` for the
    ScaledTensors in ``state_dict`` (other entries stay dense): one config
    group per distinct scheme, targeting its modules by exact name.
    ``compressed_tensors.QuantizationConfig.model_validate`` parses it."""
    groups: dict[str, tuple[dict, list]] = {}
    for name, t in state_dict.items():
        if isinstance(t, ScaledTensor):
            scheme = scheme_for(t, activations=activations)
            key = json.dumps(scheme, sort_keys=True)
            groups.setdefault(key, (scheme, []))[1].append(_prefix(name))
    config_groups = {
        f"group_{i}": {**scheme, "targets": sorted(targets)} for i, (scheme, targets) in enumerate(groups.values())
    }
    formats = {g["format"] for g in config_groups.values()}
    fmt = "dense" if not formats else formats.pop() if len(formats) == 1 else "mixed-precision"
    return {
        "quant_method": "compressed-tensors",
        "format": fmt,
        "quantization_status": "compressed",
        "config_groups": config_groups,
        "ignore": list(ignore),
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
        "sparsity_config": {},
        "transform_config": {},
    }


# --------------------------------------------------------------------------- files


def _atomic_write(path: str, write) -> None:
    """``write(tmp_path)`` then fsync and rename over ``path``: a failure
    never leaves a half-written file in place of a good one."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=d)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename durable too
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - some filesystems refuse directory fsync
        pass


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_from_name(name: Any) -> Optional[torch.dtype]:
    dt = getattr(torch, str(name).removeprefix("torch."), None) if isinstance(name, str) else None
    return dt if isinstance(dt, torch.dtype) and dt.is_floating_point else None


def save_compressed_tensors(
    state_dict: Mapping[str, Any],
    directory: str | os.PathLike,
    *,
    activations: bool = True,
    ignore: Sequence[str] = (),
) -> None:
    """Write ``state_dict`` as a compressed-tensors checkpoint: ``model.safetensors``
    (ScaledTensors compressed, other tensors as they are) and ``config.json``
    (an existing one keeps its other keys; ``quantization_config`` is replaced).
    breccia's recipe, role and outer dtype ride along in the safetensors
    metadata, so :func:`load_compressed_tensors` restores them exactly."""
    from safetensors.torch import save_file

    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict: expected a mapping of names to tensors, got {type(state_dict).__name__}")
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    stale = [f for f in os.listdir(directory) if f.endswith(".safetensors") and f != WEIGHTS_NAME]
    stale += [f for f in os.listdir(directory) if f.endswith(".safetensors.index.json")]
    if stale:
        raise ValueError(
            f"directory: {directory!r} already holds other weight files {sorted(stale)}; "
            "a loader would mix them with this checkpoint -- save into an empty directory"
        )
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, dict] = {}
    seen: set = set()
    for name, t in state_dict.items():
        if isinstance(t, ScaledTensor):
            parts = to_compressed_tensors(name, t)
            meta[_prefix(name)] = {"recipe": t.recipe.to_dict(), "role": t.role, "orig_dtype": _dtype_name(t.orig_dtype)}
        elif isinstance(t, torch.Tensor):
            parts = {name: t.detach()}
        else:
            raise TypeError(f"state_dict[{name!r}]: expected a tensor or ScaledTensor, got {type(t).__name__}")
        for key, v in parts.items():
            if key in tensors:
                raise ValueError(f"state_dict: two entries both write {key!r}")
            v = v.detach().to("cpu").contiguous()
            # safetensors refuses entries that share memory (tied weights, views)
            ptr = v.untyped_storage().data_ptr() if v.numel() else None
            if ptr in seen:
                v = v.clone()
            elif ptr is not None:
                seen.add(ptr)
            tensors[key] = v
    metadata = {"format": "pt", _META_KEY: json.dumps(meta, sort_keys=True)}
    _atomic_write(os.path.join(directory, WEIGHTS_NAME), lambda tmp: save_file(tensors, tmp, metadata=metadata))

    cfg_path = os.path.join(directory, CONFIG_NAME)
    config: dict = {}
    if os.path.exists(cfg_path):
        with open(cfg_path) as f:
            try:
                config = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"directory: {cfg_path!r} is not valid JSON ({e})") from None
        if not isinstance(config, dict):
            raise ValueError(f"directory: {cfg_path!r} holds {type(config).__name__}, expected a JSON object")
    config["quantization_config"] = quantization_config(state_dict, activations=activations, ignore=ignore)
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"

    def write_config(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    _atomic_write(cfg_path, write_config)


def _match(name: str, target: str) -> bool:
    # compressed-tensors' match_name: "re:" prefixes a regex (re.match), else exact
    return re.match(target[3:], name) is not None if target.startswith("re:") else target == name


def _quant_config(config: dict, path: str) -> dict:
    # the places vLLM and compressed-tensors look, in their order
    qc = config.get("quantization_config")
    if qc is None and isinstance(config.get("text_config"), dict):
        qc = config["text_config"].get("quantization_config")
    if qc is None:
        qc = config.get("compression_config")
    if not isinstance(qc, dict) or not isinstance(qc.get("config_groups"), dict):
        raise ValueError(f"directory: {path!r} has no compressed-tensors quantization_config with config_groups")
    return qc


def load_compressed_tensors(directory: str | os.PathLike, *, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a compressed-tensors checkpoint directory: ``{name: Tensor |
    ScaledTensor}``, each compressed module as one ScaledTensor under
    ``<module>.weight``, everything else as stored. Reads what
    :func:`save_compressed_tensors` writes and what llm-compressor writes
    (FP8, MXFP8, NVFP4 and INT4 groups; other formats raise ValueError)."""
    from safetensors import SafetensorError, safe_open

    directory = os.fspath(directory)
    cfg_path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(cfg_path):
        raise ValueError(f"directory: expected {cfg_path!r} (a compressed-tensors checkpoint), found none")
    with open(cfg_path) as f:
        try:
            qc = _quant_config(json.load(f), cfg_path)
        except json.JSONDecodeError as e:
            raise ValueError(f"directory: {cfg_path!r} is not valid JSON ({e})") from None
    index = os.path.join(directory, WEIGHTS_NAME + ".index.json")
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
    if not files:
        raise ValueError(f"directory: {directory!r} holds no .safetensors files")

    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, dict] = {}
    for fname in files:
        path = os.path.join(directory, fname)
        try:
            with safe_open(path, framework="pt", device=str(device)) as f:
                header = f.metadata() or {}
                for k in f.keys():
                    tensors[k] = f.get_tensor(k)
        except (SafetensorError, OSError) as e:
            raise ValueError(f"directory: {path!r} is not a readable safetensors file ({e})") from None
        if _META_KEY in header:
            meta.update(json.loads(header[_META_KEY]))

    out: dict[str, Any] = {}
    ignore = qc.get("ignore") or []
    default_fmt = qc.get("format")
    for scheme in qc["config_groups"].values():
        if not isinstance(scheme, dict) or scheme.get("weights") is None:
            continue
        fmt = _scheme_format(scheme, default_fmt)
        root = _ROOT[fmt]
        targets = scheme.get("targets") or []
        for name in list(tensors):
            module, _, param = name.rpartition(".")
            if param != root or name not in tensors:
                continue
            if targets and "Linear" not in targets and not any(_match(module, t) for t in targets):
                continue
            if any(_match(module, t) for t in ignore):
                continue
            if fmt in _FP8_FORMATS + (MXFP8,) and (
                _key(module, "weight_scale") not in tensors or not tensors[name].dtype.is_floating_point
                or tensors[name].element_size() != 1
            ):
                continue  # a dense weight (not compressed) that a broad target also names
            info = meta.get(module, {})
            recipe = recipe_from_dict(info["recipe"]) if "recipe" in info else None
            st = from_compressed_tensors(
                module, tensors, scheme, recipe=recipe, role=info.get("role", "weight"),
                orig_dtype=_dtype_from_name(info.get("orig_dtype")),
            )
            for param_name in ("weight", "weight_packed", "weight_scale", "weight_global_scale", "weight_shape",
                               "weight_zero_point"):
                tensors.pop(_key(module, param_name), None)
            out[_key(module, "weight")] = st
    out.update(tensors)
    return out
