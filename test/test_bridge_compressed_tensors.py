"""compressed-tensors bridge, tested against the real compressed-tensors library:
its own compressors decompress breccia's tensors and files to breccia's
values, and breccia reads what its ModelCompressor wrote."""

import json
import os

import pytest
import torch

import breccia
from breccia.bridges import compressed_tensors as bct

ct = pytest.importorskip("compressed_tensors", reason="compressed-tensors is not installed")
from compressed_tensors.compressors import BaseCompressor, ModelCompressor  # noqa: E402
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32  # noqa: E402
from compressed_tensors.quantization import (  # noqa: E402
    QuantizationConfig,
    QuantizationScheme,
    preset_name_to_scheme,
)
from compressed_tensors.quantization.lifecycle.apply import apply_quantization_config  # noqa: E402
from compressed_tensors.quantization.lifecycle.forward import dequantize as ct_dequantize  # noqa: E402
from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam  # noqa: E402

RECIPES = {
    "fp8_tensor": breccia.Float8CurrentScaling(),
    "fp8_row": breccia.Float8CurrentScaling(granularity="row"),
    "fp8_block": breccia.Float8BlockScaling(),
    "fp8_group": breccia.Float8BlockScaling(weight_block=(1, 128)),
    "delayed": breccia.DelayedScaling(),
    "mxfp8": breccia.MXFP8BlockScaling(),
    "nvfp4": breccia.NVFP4BlockScaling(),
    "nvfp4_16x16": breccia.NVFP4BlockScaling(weight_block=(16, 16)),
    "int4": breccia.INT4Scaling(),
    "int4_asym": breccia.INT4Scaling(symmetric=False, group_size=32),
    "int4_fp16": breccia.INT4Scaling(scale_dtype="fp16", group_size=64),
}


def weight(n=72, k=256, seed=0, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=g) * 0.05).to(dtype)


def bits(t):
    return t.view(torch.uint8) if t.element_size() == 1 else t


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


def ct_scheme(st, targets=("Linear",)):
    return QuantizationScheme.model_validate({**bct.scheme_for(st), "targets": list(targets)})


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_library_decompresses_breccia_tensors_to_breccia_values(name):
    st = breccia.cast(weight(), RECIPES[name])
    scheme = ct_scheme(st)
    compressor = BaseCompressor.get_value_from_registry(scheme.format)
    local = bct.to_compressed_tensors("weight", st)
    assert set(local) == set(compressor.compression_param_names(scheme))
    out = compressor.decompress(dict(local), scheme)["weight"]
    assert torch.equal(out, breccia.dequantize(st, out.dtype))


def test_nvfp4_global_scale_is_the_reciprocal_within_one_ulp_in_float32():
    st = breccia.cast(weight(seed=3), breccia.NVFP4BlockScaling())
    local = bct.to_compressed_tensors("", st)
    ref = breccia.dequantize(st, torch.float32)
    # ct's own dequantize, in float32 (its compressor casts to bfloat16)
    from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8

    q = unpack_fp4_from_uint8(local["weight_packed"], 72, 256, dtype=torch.float32)
    args = ct_scheme(st).weights
    out = ct_dequantize(q, local["weight_scale"].float(), args=args, global_scale=local["weight_global_scale"])
    ulp = torch.finfo(torch.float32).eps * ref.abs()
    assert bool(((out - ref).abs() <= ulp).all())
    assert torch.equal(local["weight_global_scale"], 1.0 / st.global_scale.reshape(1)) or bool(
        (1.0 / local["weight_global_scale"] == st.global_scale).all()
    )


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_round_trip_is_bit_exact(name):
    recipe = RECIPES[name]
    st = breccia.cast(weight(seed=1), recipe)
    tensors = bct.to_compressed_tensors("model.layers.0.proj.weight", st)
    assert all(k.startswith("model.layers.0.proj.weight") for k in tensors)
    back = bct.from_compressed_tensors("model.layers.0.proj", tensors, bct.scheme_for(st), recipe=recipe)
    assert back.recipe == recipe and back.block == st.block and tuple(back.shape) == tuple(st.shape)
    for attr in ("qdata", "scale", "global_scale", "zero_point"):
        a, b = getattr(back, attr), getattr(st, attr)
        assert (a is None) == (b is None), attr
        if a is not None:
            assert same_bits(a, b), attr


def test_fp8_payload_and_scales_share_memory():
    st = breccia.cast(weight(), breccia.Float8BlockScaling())
    t = bct.to_compressed_tensors("w.weight", st)
    assert t["w.weight"].data_ptr() == st.qdata.data_ptr()
    assert t["w.weight_scale"].data_ptr() == st.scale.data_ptr()
    back = bct.from_compressed_tensors("w", t, bct.scheme_for(st))
    assert back.qdata.data_ptr() == st.qdata.data_ptr()


@pytest.mark.parametrize("n", [8, 13, 72])
def test_int32_packing_matches_the_library(n):
    g = torch.Generator().manual_seed(n)
    codes = torch.randint(0, 16, (n, 40), generator=g, dtype=torch.uint8)
    signed = (codes.to(torch.int8) - 8)
    assert torch.equal(bct._pack_int32(codes), pack_to_int32(signed, 4))
    # zero points: packed along dim 0
    zp = codes[:, :3]
    ours = bct._pack_int32(zp.t().contiguous()).t().contiguous()
    assert torch.equal(ours, pack_to_int32(zp.to(torch.int8) - 8, 4, packed_dim=0))
    assert torch.equal(bct._unpack_int32(bct._pack_int32(codes), 40), codes)


# --------------------------------------------------------------------------- library -> breccia


def _qparams(w, args, gs=None):
    n, k = w.shape
    if args.strategy == "tensor":
        mn, mx = w.amin().reshape(1), w.amax().reshape(1)
    elif args.strategy == "channel":
        mn, mx = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    elif args.strategy in ("group", "tensor_group"):
        v = w.unflatten(-1, (k // args.group_size, args.group_size))
        mn, mx = v.amin(-1), v.amax(-1)
    else:
        bh, bw = args.block_structure  # partial edge blocks: zero padding never raises an amax
        v = torch.nn.functional.pad(w, (0, -k % bw, 0, -n % bh)).reshape(-(-n // bh), bh, -(-k // bw), bw)
        mn, mx = v.amin((1, 3)), v.amax((1, 3))
    return calculate_qparams(mn, mx, args, global_scale=gs)


def _library_checkpoint(preset, directory):
    """A two-layer model quantized and compressed by compressed-tensors itself,
    saved as a checkpoint directory (safetensors + config.json)."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 128, bias=False), torch.nn.Linear(128, 64, bias=False))
    model = model.to(torch.bfloat16)
    scheme = preset_name_to_scheme(preset, ["Linear"])
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme}), show_progress=False)
    for lin in model:
        w, args, gs = lin.weight.data, scheme.weights, None
        if args.strategy == "tensor_group":
            gs = generate_gparam(w.amin(), w.amax())
            lin.weight_global_scale.data.copy_(gs)
        s, zp = _qparams(w, args, gs)
        lin.weight_scale.data = s.to(lin.weight_scale.dtype)
        if hasattr(lin, "weight_zero_point"):
            lin.weight_zero_point.data = zp.to(lin.weight_zero_point.dtype)
    mc = ModelCompressor.from_pretrained_model(model)
    mc.compress_model(model)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(directory, "model.safetensors"))
    mc.update_config(directory)
    return sd, mc.quantization_config.config_groups["group_0"]


@pytest.mark.parametrize("preset", ["FP8", "FP8_DYNAMIC", "FP8_BLOCK", "MXFP8", "NVFP4A16", "W4A16", "W4A16_ASYM"])
def test_breccia_reads_what_the_library_compressed(preset, tmp_path):
    sd, scheme = _library_checkpoint(preset, tmp_path)
    loaded = bct.load_compressed_tensors(tmp_path)
    compressor = BaseCompressor.get_value_from_registry(scheme.format)
    for i in range(2):
        st = loaded[f"{i}.weight"]
        assert isinstance(st, breccia.ScaledTensor)
        local = {k[2:]: v for k, v in sd.items() if k.startswith(f"{i}.")}
        want = compressor.decompress(dict(local), scheme)["weight"]
        assert torch.equal(breccia.dequantize(st, want.dtype), want), preset
        # and back: breccia writes the library's tensors again, bit for bit
        again = bct.to_compressed_tensors("", st)
        for key, v in again.items():
            if key == "weight_global_scale":  # a reciprocal: exact, or one ulp off
                diff = (v.view(torch.int32) - local[key].view(torch.int32)).abs()
                assert int(diff.max()) <= 1
            elif key == "weight_scale" and v.dtype != local[key].dtype:
                assert torch.equal(v, local[key].to(v.dtype))  # fp32 here, bf16 there: same values
            else:
                assert same_bits(v, local[key]), (preset, key)
    assert "0.input_scale" in loaded or preset != "FP8"  # other tensors pass through


# --------------------------------------------------------------------------- directories


def _state_dict():
    return {
        "embed.weight": weight(32, 64, seed=9),
        "layers.0.q_proj.weight": breccia.cast(weight(128, 256, seed=1), breccia.Float8BlockScaling()),
        "layers.0.k_proj.weight": breccia.cast(weight(64, 256, seed=2), breccia.Float8BlockScaling()),
        "layers.0.o_proj.weight": breccia.cast(weight(64, 128, seed=3), breccia.NVFP4BlockScaling()),
        "layers.0.up.weight": breccia.cast(weight(96, 256, seed=4), breccia.INT4Scaling(symmetric=False)),
        "layers.0.down.weight": breccia.cast(weight(64, 96, seed=5), breccia.MXFP8BlockScaling()),
        "layers.0.gate.weight": breccia.cast(weight(64, 128, seed=6), breccia.DelayedScaling()),
        "layers.0.norm.weight": torch.ones(64),
    }


def test_directory_round_trip_and_library_dequantizer(tmp_path):
    from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import CompressedTensorsDequantizer
    from safetensors.torch import load_file

    sd = _state_dict()
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "toy", "hidden_size": 64}))
    bct.save_compressed_tensors(sd, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "toy"  # other keys kept
    qc = QuantizationConfig.model_validate(config["quantization_config"])
    assert qc.format == "mixed-precision" and len(qc.config_groups) == 5
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]  # no temp files left

    # the library's own model-free dequantizer reads breccia's directory
    deq = CompressedTensorsDequantizer(str(tmp_path), dtype=torch.float32)
    dense = deq.process(load_file(str(tmp_path / "model.safetensors")))
    for name, t in sd.items():
        if isinstance(t, breccia.ScaledTensor):
            # the library decompresses MX / NVFP4 in bfloat16 and INT4 in the scale dtype
            native = {"fp32": torch.float32, "e8m0": torch.bfloat16, "e4m3": torch.bfloat16}.get(
                t.spec.scale_format, t.scale.dtype
            )
            assert torch.equal(dense[name], breccia.dequantize(t, native).float()), name
        else:
            assert torch.equal(dense[name], t)

    loaded = bct.load_compressed_tensors(tmp_path)
    assert sorted(loaded) == sorted(sd)
    for name, t in sd.items():
        got = loaded[name]
        if isinstance(t, breccia.ScaledTensor):
            assert got.recipe == t.recipe and got.orig_dtype == t.orig_dtype and got.block == t.block
            for attr in ("qdata", "scale", "global_scale", "zero_point"):
                a, b = getattr(got, attr), getattr(t, attr)
                assert (a is None) == (b is None)
                if a is not None:
                    assert same_bits(a, b), (name, attr)
        else:
            assert torch.equal(got, t)


def test_quantization_config_adds_dynamic_activations():
    sd = {"a.weight": breccia.cast(weight(), breccia.Float8CurrentScaling(granularity="row"))}
    qc = bct.quantization_config(sd)
    group = qc["config_groups"]["group_0"]
    assert group["targets"] == ["a"] and group["format"] == "float-quantized"
    assert group["input_activations"]["strategy"] == "token" and group["input_activations"]["dynamic"]
    parsed = QuantizationConfig.model_validate(qc)
    assert parsed.config_groups["group_0"].input_activations.strategy == "token"
    assert bct.quantization_config(sd, activations=False)["config_groups"]["group_0"]["input_activations"] is None


def test_save_is_atomic(tmp_path, monkeypatch):
    sd = _state_dict()
    bct.save_compressed_tensors(sd, tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()
    import safetensors.torch

    def broken(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        bct.save_compressed_tensors(sd, tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]


def test_errors_name_the_argument(tmp_path):
    st = breccia.cast(weight(), breccia.Float8CurrentScaling())
    with pytest.raises(ValueError, match="e4m3 only"):
        bct.to_compressed_tensors("w", breccia.cast(weight(), breccia.Float8CurrentScaling(fp8_format="e5m2")))
    with pytest.raises(ValueError, match="2-D"):
        bct.to_compressed_tensors("w", breccia.cast(torch.randn(2, 8, 32), breccia.Float8CurrentScaling()))
    with pytest.raises(ValueError, match="divisible"):
        bct.to_compressed_tensors("w", breccia.cast(torch.randn(8, 48), breccia.INT4Scaling(group_size=32)))
    with pytest.raises(TypeError, match="st: expected a breccia ScaledTensor"):
        bct.to_compressed_tensors("w", torch.randn(4, 4))
    with pytest.raises(ValueError, match="w.weight_scale"):
        bct.from_compressed_tensors("w", {"w.weight": st.qdata}, bct.scheme_for(st))
    with pytest.raises(ValueError, match="recipe"):
        t = bct.to_compressed_tensors("w", st)
        bct.from_compressed_tensors("w", t, bct.scheme_for(st), recipe=breccia.Float8BlockScaling())
    with pytest.raises(TypeError, match="scheme"):
        bct.from_compressed_tensors("w", {}, "FP8")
    (tmp_path / "other.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="other weight files"):
        bct.save_compressed_tensors({"w.weight": st}, tmp_path)
    with pytest.raises(ValueError, match="config.json"):
        bct.load_compressed_tensors(tmp_path / "missing")


def test_truncated_file_is_a_clear_error(tmp_path):
    bct.save_compressed_tensors(_state_dict(), tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        bct.load_compressed_tensors(tmp_path)
