"""``breccia quantize`` and ``breccia inspect``, run in-process on tiny
synthetic Hugging Face checkpoints."""

import json
import os
import sys
import weakref

import pytest
import torch
from conftest import randn
from test_io import assert_same

import breccia
import breccia.io.convert as convert
from breccia.__main__ import main
from breccia.checkpoint import load_checkpoint

pytest.importorskip("safetensors")
from safetensors.torch import load_file, save_file  # noqa: E402

HIDDEN, VOCAB = 64, 96
RECIPE_OF = {
    "fp8": breccia.Float8CurrentScaling(),
    "fp8-row": breccia.Float8CurrentScaling(granularity="row"),
    "fp8-block": breccia.Float8BlockScaling(),
    "mxfp8": breccia.MXFP8BlockScaling(),
    "nvfp4": breccia.NVFP4BlockScaling(),
    "int4": breccia.INT4Scaling(),
}
QUANTIZED = {
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.k_proj.weight",
    "model.layers.0.mlp.up_proj.weight",
    "model.layers.0.mlp.down_proj.weight",
}


def _tensors():
    bf = torch.bfloat16
    return {
        "model.embed_tokens.weight": randn(VOCAB, HIDDEN, dtype=bf, seed=1),
        "model.layers.0.input_layernorm.weight": torch.ones(HIDDEN, dtype=bf),
        "model.layers.0.self_attn.q_proj.weight": randn(HIDDEN, HIDDEN, dtype=bf, seed=2),
        "model.layers.0.self_attn.q_proj.bias": randn(HIDDEN, dtype=bf, seed=3),
        "model.layers.0.self_attn.k_proj.weight": randn(32, HIDDEN, dtype=bf, seed=4),
        "model.layers.0.mlp.up_proj.weight": randn(160, HIDDEN, dtype=bf, seed=5),
        "model.layers.0.mlp.down_proj.weight": randn(HIDDEN, 160, dtype=bf, seed=6),
        "model.norm.weight": torch.ones(HIDDEN, dtype=bf),
        "lm_head.weight": randn(VOCAB, HIDDEN, dtype=bf, seed=7),
        "rotary.inv_freq": randn(HIDDEN // 2),
    }


@pytest.fixture
def hf_dir(tmp_path):
    """A sharded fake HF checkpoint: two shards, an index, config, tokenizer."""
    src = tmp_path / "src"
    src.mkdir()
    t = _tensors()
    names = sorted(t)
    shards = {"model-00001-of-00002.safetensors": names[:5], "model-00002-of-00002.safetensors": names[5:]}
    weight_map = {}
    for fname, keys in shards.items():
        save_file({k: t[k] for k in keys}, src / fname, metadata={"format": "pt"})
        weight_map.update({k: fname for k in keys})
    (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (src / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": HIDDEN, "torch_dtype": "bfloat16"}))
    (src / "tokenizer.json").write_text('{"version": "1.0"}')
    return src


def _check_quantized(out, recipe):
    src = _tensors()
    assert sorted(out) == sorted(src)
    for name, t in src.items():
        if name in QUANTIZED:
            assert_same(breccia.cast(t, recipe, "weight"), out[name])
        else:
            assert not isinstance(out[name], breccia.ScaledTensor), name
            assert torch.equal(out[name], t), name


@pytest.mark.parametrize("recipe", sorted(RECIPE_OF))
def test_quantize_folder_to_breccia(hf_dir, tmp_path, recipe, capsys):
    dst = tmp_path / "dst"
    assert main(["quantize", str(hf_dir), str(dst), "--recipe", recipe, "--quiet"]) == 0
    assert "4 tensors quantized" in capsys.readouterr().out
    assert sorted(os.listdir(dst)) == [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
    ]
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["quantization_config"] == {"quant_method": "breccia", "format_version": 1}
    _check_quantized(load_checkpoint(dst), RECIPE_OF[recipe])
    for f in dst.glob("*.safetensors"):
        load_file(f)  # plain safetensors files


def test_quantize_to_deepseek_v3(hf_dir, tmp_path):
    dst = tmp_path / "ds"
    assert main(["quantize", str(hf_dir), str(dst), "--recipe", "fp8-block", "--format", "deepseek-v3", "--quiet"]) == 0
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "fp8" and cfg["model_type"] == "llama"
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    assert "model.layers.0.mlp.up_proj.weight_scale_inv" in index["weight_map"]
    _check_quantized(load_checkpoint(dst), breccia.Float8BlockScaling())


def test_deepseek_format_needs_fp8_block(hf_dir, tmp_path, capsys):
    dst = tmp_path / "ds"
    assert main(["quantize", str(hf_dir), str(dst), "--recipe", "nvfp4", "--format", "deepseek-v3", "--quiet"]) == 1
    assert "deepseek-v3" in capsys.readouterr().err and not dst.exists()


def test_single_file_in_and_out(hf_dir, tmp_path, capsys):
    src = tmp_path / "one.safetensors"
    save_file(_tensors(), src)
    dst = tmp_path / "out" / "q.safetensors"
    assert main(["quantize", str(src), str(dst), "--recipe", "mxfp8"]) == 0
    assert "quantize" in capsys.readouterr().err  # the progress bar
    _check_quantized(breccia.io.load_safetensors(dst), breccia.MXFP8BlockScaling())
    # a file into a folder: model.safetensors + config.json
    assert main(["quantize", str(src), str(tmp_path / "d"), "--recipe", "int4", "--quiet"]) == 0
    assert sorted(os.listdir(tmp_path / "d")) == ["config.json", "model.safetensors"]
    _check_quantized(load_checkpoint(tmp_path / "d"), breccia.INT4Scaling())


def test_skip_patterns(hf_dir, tmp_path):
    dst = tmp_path / "dst"
    assert main(["quantize", str(hf_dir), str(dst), "--recipe", "fp8", "--quiet", "--skip", "*k_proj*"]) == 0
    out = load_checkpoint(dst)
    assert not isinstance(out["model.layers.0.self_attn.k_proj.weight"], breccia.ScaledTensor)
    assert isinstance(out["model.layers.0.self_attn.q_proj.weight"], breccia.ScaledTensor)
    dst2 = tmp_path / "dst2"
    assert main(["quantize", str(hf_dir), str(dst2), "--recipe", "fp8", "--quiet", "--no-default-skip"]) == 0
    out = load_checkpoint(dst2)
    # 2-D float tensors only: embeddings and lm_head now, never norms (1-D)
    assert isinstance(out["lm_head.weight"], breccia.ScaledTensor)
    assert isinstance(out["model.embed_tokens.weight"], breccia.ScaledTensor)
    assert not isinstance(out["model.norm.weight"], breccia.ScaledTensor)


def test_quantize_streams_one_tensor_at_a_time(hf_dir, tmp_path, monkeypatch):
    real = convert._iter_tensors
    alive = []
    peak = []

    def watched(files):
        for f, key, t in real(files):
            # refcounting frees a dropped tensor at once: no gc needed
            peak.append(sum(r() is not None for r in alive))
            alive.append(weakref.ref(t))
            yield f, key, t
            del t

    monkeypatch.setattr(convert, "_iter_tensors", watched)
    assert main(["quantize", str(hf_dir), str(tmp_path / "dst"), "--recipe", "nvfp4", "--quiet"]) == 0
    assert len(peak) == len(_tensors()) and max(peak) == 0  # no source tensor outlives its turn


def test_refuses_already_quantized_and_missing_sources(hf_dir, tmp_path, capsys):
    dst = tmp_path / "dst"
    assert main(["quantize", str(hf_dir), str(dst), "--recipe", "fp8", "--quiet"]) == 0
    assert main(["quantize", str(dst), str(tmp_path / "again"), "--recipe", "fp8", "--quiet"]) == 1
    assert "already quantized" in capsys.readouterr().err
    assert main(["quantize", str(tmp_path / "nope"), str(tmp_path / "x"), "--recipe", "fp8", "--quiet"]) == 1
    assert "nope" in capsys.readouterr().err


def test_compressed_tensors_output(hf_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "breccia.bridges.compressed_tensors", None)
    args = ["quantize", str(hf_dir), str(tmp_path / "ct"), "--recipe", "fp8", "--format", "compressed-tensors", "--quiet"]
    assert main(args) == 1
    assert "breccia.bridges.compressed_tensors" in capsys.readouterr().err

    saved = {}

    def save_compressed_tensors(sd, d):
        saved.update(sd)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump({"quantization_config": {"quant_method": "compressed-tensors"}}, f)

    fake = type(sys)("breccia.bridges.compressed_tensors")
    fake.save_compressed_tensors = save_compressed_tensors
    monkeypatch.setitem(sys.modules, "breccia.bridges.compressed_tensors", fake)
    assert main(args) == 0
    assert sorted(saved) == sorted(_tensors()) and sum(isinstance(v, breccia.ScaledTensor) for v in saved.values()) == 4
    cfg = json.loads((tmp_path / "ct" / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["quantization_config"]["quant_method"] == "compressed-tensors"


def test_inspect(hf_dir, tmp_path, capsys):
    dst = tmp_path / "dst"
    assert main(["quantize", str(hf_dir), str(dst), "--recipe", "fp8-block", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(dst)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["tensor", "shape", "recipe", "/", "dtype", "bytes"]
    row = next(line for line in lines if line.startswith("model.layers.0.mlp.up_proj.weight "))
    assert "160x64" in row and "Float8BlockScaling e4m3/fp32 [128x128]" in row
    st = breccia.cast(_tensors()["model.layers.0.mlp.up_proj.weight"], breccia.Float8BlockScaling())
    assert row.split()[-1] == f"{st.nbytes_packed():,}"
    assert any(line.startswith("model.norm.weight ") and "bfloat16" in line for line in lines)
    assert lines[-1].startswith("total: 10 tensors (4 quantized)") and "compression" in lines[-1]
    full = sum(t.numel() * t.element_size() for t in _tensors().values())
    assert f"unquantized {full / 1024:.1f} KiB" in lines[-1]
    # the source and a deepseek checkpoint inspect too
    assert main(["inspect", str(hf_dir)]) == 0
    assert "compression 1.00x" in capsys.readouterr().out
    ds = tmp_path / "ds"
    assert main(["quantize", str(hf_dir), str(ds), "--recipe", "fp8-block", "--format", "deepseek-v3", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(ds)]) == 0
    ds_out = capsys.readouterr().out
    assert "(deepseek-v3)" in ds_out and "weight_scale_inv" not in ds_out
    assert main(["inspect", str(tmp_path / "missing")]) == 1


def test_compressed_tensors_through_the_real_bridge(hf_dir, tmp_path, capsys):
    pytest.importorskip("breccia.bridges.compressed_tensors")
    dst = tmp_path / "ct"
    args = ["quantize", str(hf_dir), str(dst), "--recipe", "fp8-block", "--format", "compressed-tensors", "--quiet"]
    assert main(args) == 0
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["quantization_config"]["quant_method"] == "compressed-tensors"
    _check_quantized(load_checkpoint(dst), breccia.Float8BlockScaling())
    capsys.readouterr()
    assert main(["inspect", str(dst)]) == 0
    assert "(4 quantized)" in capsys.readouterr().out


def test_text_progress_without_tqdm(hf_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if not installed
    assert main(["quantize", str(hf_dir), str(tmp_path / "dst"), "--recipe", "fp8"]) == 0
    err = capsys.readouterr().err
    assert "quantize: 1/10" in err and "quantize: 10/10" in err and err.endswith("\n")
