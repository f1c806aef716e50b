"""Whole checkpoints: breccia and DeepSeek-V3 formats, sharding, format
detection, atomic writes and bad input."""

import json
import os

import pytest
import torch
from conftest import RECIPES, randn
from test_io import assert_same

import breccia
import breccia.io.files as bfiles
from breccia.checkpoint import detect_format, load_checkpoint, save_checkpoint

pytest.importorskip("safetensors")
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402


def _model_sd(recipe=breccia.Float8BlockScaling()):
    return {
        "embed_tokens.weight": randn(64, 32, dtype=torch.bfloat16),
        "layers.0.q_proj.weight": breccia.cast(randn(160, 300, dtype=torch.bfloat16, seed=1), recipe),
        "layers.0.o_proj.weight": breccia.cast(randn(300, 160, dtype=torch.bfloat16, seed=2), recipe),
        "layers.0.norm.weight": torch.ones(300, dtype=torch.bfloat16),
        "lm_head.weight": randn(64, 300, dtype=torch.bfloat16, seed=3),
    }


def _config(d):
    with open(os.path.join(d, "config.json")) as f:
        return json.load(f)


def test_every_recipe_through_a_breccia_checkpoint(tmp_path):
    sd = {f"{name}.weight": breccia.cast(randn(48, 96, seed=i), r) for i, (name, r) in enumerate(sorted(RECIPES.items()))}
    sd["norm.weight"] = randn(96)
    save_checkpoint(sd, tmp_path, "breccia")
    assert _config(tmp_path)["quantization_config"] == {"quant_method": "breccia", "format_version": 1}
    assert detect_format(tmp_path) == "breccia"
    out = load_checkpoint(tmp_path)
    assert list(out) == list(sd)
    for k in sd:
        assert_same(sd[k], out[k])


def test_sharded_breccia_checkpoint_keeps_inner_tensors_together(tmp_path):
    sd = _model_sd()
    save_checkpoint(sd, tmp_path, "breccia", max_shard_bytes=60_000, config={"model_type": "tiny", "hidden_size": 32})
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and all(f.startswith("model-0000") for f in files)
    assert not (tmp_path / "model.safetensors").exists()
    wm = index["weight_map"]
    assert wm["layers.0.q_proj.weight.qdata"] == wm["layers.0.q_proj.weight.scale"]
    assert index["metadata"]["total_size"] == sum(os.path.getsize(tmp_path / f) for f in files) - sum(
        8 + int.from_bytes((tmp_path / f).read_bytes()[:8], "little") for f in files
    )
    cfg = _config(tmp_path)
    assert cfg["model_type"] == "tiny" and cfg["quantization_config"]["quant_method"] == "breccia"
    out = load_checkpoint(tmp_path)
    for k in sd:
        assert_same(sd[k], out[k])
    # every shard is a plain safetensors file
    for f in files:
        load_file(tmp_path / f)


def test_resave_with_fewer_shards_removes_stale_ones(tmp_path):
    sd = _model_sd()
    save_checkpoint(sd, tmp_path, "breccia", max_shard_bytes=60_000)
    (tmp_path / "tokenizer.json").write_text("{}")
    save_checkpoint(sd, tmp_path, "breccia")
    names = sorted(os.listdir(tmp_path))
    assert names == ["config.json", "model.safetensors", "tokenizer.json"]
    out = load_checkpoint(tmp_path)
    assert sorted(out) == sorted(sd)


@pytest.mark.parametrize("pow2", [False, True])
def test_deepseek_v3_checkpoint(tmp_path, pow2):
    sd = _model_sd(breccia.Float8BlockScaling(power_of_2_scale=pow2))
    save_checkpoint(sd, tmp_path, "deepseek-v3", max_shard_bytes=80_000, config={"model_type": "deepseek_v3"})
    qc = _config(tmp_path)["quantization_config"]
    want = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
    if pow2:
        want["scale_fmt"] = "ue8m0"
    assert qc == want
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    wm = index["weight_map"]
    assert wm["layers.0.q_proj.weight"] == wm["layers.0.q_proj.weight_scale_inv"]
    # what DeepSeek's own loader sees: e4m3 weight + fp32 weight_scale_inv grid
    with safe_open(tmp_path / wm["layers.0.q_proj.weight"], framework="pt") as f:
        w = f.get_tensor("layers.0.q_proj.weight")
        s = f.get_tensor("layers.0.q_proj.weight_scale_inv")
        assert f.metadata() == {"format": "pt"}
    assert w.dtype == torch.float8_e4m3fn and w.shape == (160, 300)
    assert s.dtype == torch.float32 and s.shape == (2, 3)
    assert detect_format(tmp_path) == "deepseek-v3"
    out = load_checkpoint(tmp_path)
    assert sorted(out) == sorted(sd)
    for k in sd:
        assert_same(sd[k], out[k])  # orig dtype bf16 both ways
    # the outer dtype follows the config's torch_dtype
    sd16 = {"w": breccia.cast(randn(130, 200, dtype=torch.float16), breccia.Float8BlockScaling())}
    save_checkpoint(sd16, tmp_path / "fp16", "deepseek-v3", config={"torch_dtype": "float16"})
    assert_same(sd16["w"], load_checkpoint(tmp_path / "fp16")["w"])


def test_deepseek_format_refuses_other_recipes(tmp_path):
    sd = {"w": breccia.cast(randn(64, 64), breccia.MXFP8BlockScaling())}
    with pytest.raises(ValueError, match=r"state_dict\['w'\].*deepseek-v3.*Float8BlockScaling"):
        save_checkpoint(sd, tmp_path, "deepseek-v3")
    with pytest.raises(ValueError, match="plain float8_e4m3fn"):
        save_checkpoint({"w": torch.zeros(4, 4, dtype=torch.float8_e4m3fn)}, tmp_path, "deepseek-v3")
    assert os.listdir(tmp_path) == []


def test_format_detection_from_headers_without_config(tmp_path):
    save_checkpoint(_model_sd(), tmp_path / "b", "breccia")
    os.remove(tmp_path / "b" / "config.json")
    assert detect_format(tmp_path / "b") == "breccia"
    save_checkpoint(_model_sd(), tmp_path / "d", "deepseek-v3")
    os.remove(tmp_path / "d" / "config.json")
    assert detect_format(tmp_path / "d") == "deepseek-v3"
    assert isinstance(load_checkpoint(tmp_path / "d")["layers.0.q_proj.weight"], breccia.ScaledTensor)
    (tmp_path / "p").mkdir()
    save_file({"a": randn(3)}, tmp_path / "p" / "weights.safetensors")
    assert detect_format(tmp_path / "p") == "plain"
    assert torch.equal(load_checkpoint(tmp_path / "p")["a"], randn(3))
    # one file works as a checkpoint too
    assert detect_format(tmp_path / "b" / "model.safetensors") == "breccia"
    assert sorted(load_checkpoint(tmp_path / "b" / "model.safetensors")) == sorted(_model_sd())


def test_compressed_tensors_dispatch(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "breccia.bridges.compressed_tensors", None)  # as if absent
    with pytest.raises(NotImplementedError, match="breccia.bridges.compressed_tensors"):
        save_checkpoint(_model_sd(), tmp_path, "compressed-tensors")
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "compressed-tensors"}}))
    with pytest.raises(NotImplementedError, match="breccia.bridges.compressed_tensors"):
        load_checkpoint(tmp_path)

    calls = []
    fake = type(sys)("breccia.bridges.compressed_tensors")
    fake.save_compressed_tensors = lambda sd, d: calls.append(("save", sorted(sd), str(d)))
    fake.load_compressed_tensors = lambda d: calls.append(("load", str(d))) or {"x": torch.ones(1)}
    monkeypatch.setitem(sys.modules, "breccia.bridges.compressed_tensors", fake)
    save_checkpoint({"a": torch.ones(1)}, tmp_path, "compressed-tensors")
    assert torch.equal(load_checkpoint(tmp_path)["x"], torch.ones(1))
    assert calls == [("save", ["a"], str(tmp_path)), ("load", str(tmp_path))]


# --------------------------------------------------------------------------- atomicity


def test_failed_checkpoint_save_leaves_existing_files_whole(tmp_path, monkeypatch):
    sd = _model_sd()
    save_checkpoint(sd, tmp_path, "breccia", max_shard_bytes=60_000)
    before = {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)}
    real = bfiles._write_tensor
    calls = []

    def dying(f, t):
        calls.append(1)
        if len(calls) == 5:
            raise OSError("disk full (simulated)")
        real(f, t)

    monkeypatch.setattr(bfiles, "_write_tensor", dying)
    sd2 = _model_sd(breccia.Float8BlockScaling(power_of_2_scale=True))
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(sd2, tmp_path, "breccia", max_shard_bytes=60_000)
    after = {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)}
    # no temporary files; every file is either the old one or a complete new one
    assert sorted(after) == sorted(before)
    monkeypatch.undo()
    for n in after:
        if n.endswith(".safetensors"):
            load_file(tmp_path / n)
    load_checkpoint(tmp_path)


# --------------------------------------------------------------------------- bad input


def test_index_naming_a_missing_file(tmp_path):
    save_checkpoint(_model_sd(), tmp_path, "breccia", max_shard_bytes=60_000)
    victim = sorted(n for n in os.listdir(tmp_path) if n.startswith("model-"))[-1]
    os.remove(tmp_path / victim)
    with pytest.raises(ValueError, match=f"model.safetensors.index.json.*{victim}"):
        load_checkpoint(tmp_path)


def test_index_disagreeing_with_a_shard(tmp_path):
    save_checkpoint(_model_sd(), tmp_path, "breccia", max_shard_bytes=60_000)
    path = tmp_path / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    index["weight_map"]["ghost.weight"] = sorted(set(index["weight_map"].values()))[0]
    path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match="index.json.*ghost.weight"):
        load_checkpoint(tmp_path)


def _deepseek_dir(tmp_path, tensors, qc=None):
    tmp_path.mkdir()
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    qc = qc or {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": qc}))
    return tmp_path


def test_deepseek_config_disagreeing_with_tensors(tmp_path):
    w = torch.zeros(256, 200, dtype=torch.float8_e4m3fn)
    d = _deepseek_dir(tmp_path / "a", {"x.weight": w})
    with pytest.raises(ValueError, match=r"model.safetensors.*'x.weight'.*no 'x.weight_scale_inv'"):
        load_checkpoint(d)
    d = _deepseek_dir(tmp_path / "b", {"x.weight": w, "x.weight_scale_inv": torch.ones(2, 1)})
    with pytest.raises(ValueError, match=r"model.safetensors.*'x.weight'.*\[2, 2\].*\[2, 1\]"):
        load_checkpoint(d)
    d = _deepseek_dir(tmp_path / "c", {"x.weight_scale_inv": torch.ones(2, 2)})
    with pytest.raises(ValueError, match="has no weight 'x.weight'"):
        load_checkpoint(d)
    qc = {"quant_method": "fp8", "weight_block_size": [64, 64]}
    d = _deepseek_dir(tmp_path / "e", {"x.weight": w, "x.weight_scale_inv": torch.ones(2, 2)}, qc)
    with pytest.raises(ValueError, match=r"config.json.*weight_block_size \[64, 64\]"):
        load_checkpoint(d)
    qc = {"quant_method": "fp8", "scale_fmt": "ue8m0"}
    d = _deepseek_dir(tmp_path / "f", {"x.weight": w, "x.weight_scale_inv": torch.full((2, 2), 0.3)}, qc)
    with pytest.raises(ValueError, match="model.safetensors.*not powers of two"):
        load_checkpoint(d)


def test_unknown_quant_method_and_bad_config(tmp_path):
    save_checkpoint(_model_sd(), tmp_path, "breccia")
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "gptq"}}))
    with pytest.raises(ValueError, match="config.json.*'gptq'"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "breccia", "format_version": 2}}))
    with pytest.raises(ValueError, match="config.json.*format_version 2"):
        load_checkpoint(tmp_path)
    # a config naming the wrong format for the files
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "fp8"}}))
    with pytest.raises(ValueError, match="model.safetensors: a breccia-format file.*'fp8'"):
        load_checkpoint(tmp_path)
    (tmp_path / "p").mkdir()
    save_file({"a": randn(3)}, tmp_path / "p" / "model.safetensors")
    (tmp_path / "p" / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "breccia", "format_version": 1}}))
    with pytest.raises(ValueError, match="model.safetensors: config.json says quant_method 'breccia'.*no breccia metadata"):
        load_checkpoint(tmp_path / "p")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        load_checkpoint(tmp_path)


def test_missing_and_empty_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_checkpoint(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no \\*.safetensors"):
        load_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="format"):
        save_checkpoint({}, tmp_path, "gguf")
    with pytest.raises(ValueError, match="max_shard_bytes"):
        save_checkpoint({}, tmp_path, max_shard_bytes=0)


def test_compressed_tensors_through_the_real_bridge(tmp_path):
    pytest.importorskip("breccia.bridges.compressed_tensors")
    sd = _model_sd()
    save_checkpoint(sd, tmp_path, "compressed-tensors", config={"model_type": "tiny"})
    cfg = _config(tmp_path)
    assert cfg["model_type"] == "tiny" and cfg["quantization_config"]["quant_method"] == "compressed-tensors"
    assert detect_format(tmp_path) == "compressed-tensors"
    out = load_checkpoint(tmp_path)
    assert sorted(out) == sorted(sd)
    for k in sd:
        assert_same(sd[k], out[k])
