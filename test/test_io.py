"""breccia's safetensors format: round trips, interop with the plain
safetensors library, lazy loading, atomic writes and bad input."""

import json
import os

import pytest
import torch
from conftest import RECIPES, randn

import breccia
import breccia.io.files as bfiles
import breccia.io.safetensors as bst
from breccia.io import load_safetensors, open_safetensors, save_safetensors

safetensors = pytest.importorskip("safetensors")
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402


def _bits(t):
    return t.view(torch.uint8) if t.element_size() == 1 else t


def assert_same(a, b):
    """Bit-identical: same type, context and inner tensors (dtypes included)."""
    assert type(a) is type(b)
    assert a.shape == b.shape and a.dtype == b.dtype
    if isinstance(a, breccia.ScaledTensor):
        assert (a.recipe, a.role, a.block, a.qlayout, a.orig_dtype) == (b.recipe, b.role, b.block, b.qlayout, b.orig_dtype)
        assert a.spec_key == b.spec_key
        assert sorted(a.inner_tensors()) == sorted(b.inner_tensors())
        for name, t in a.inner_tensors().items():
            u = getattr(b, name)
            assert t.dtype == u.dtype and t.shape == u.shape, name
            assert torch.equal(_bits(t), _bits(u)), name
    else:
        assert torch.equal(_bits(a), _bits(b))


def _state(recipe, shape=(40, 200), dtype=torch.bfloat16):
    return {
        "layer.weight": breccia.cast(randn(*shape, dtype=dtype), recipe, "weight"),
        "layer.bias": randn(shape[0]),
        "step": torch.tensor(7),
    }


# --------------------------------------------------------------------------- round trips


def test_every_recipe_round_trips_bit_exactly(recipe, tmp_path):
    sd = _state(recipe)
    path = tmp_path / "m.safetensors"
    save_safetensors(sd, path)
    out = load_safetensors(path)
    assert sorted(out) == sorted(sd)
    for k in sd:
        assert_same(sd[k], out[k])
    # and the dequantized values agree, of course
    assert torch.equal(breccia.dequantize(sd["layer.weight"]), breccia.dequantize(out["layer.weight"]))


@pytest.mark.parametrize(
    "recipe,role",
    [
        (breccia.DelayedScaling(), "grad_output"),  # e5m2 payload
        (breccia.Float8CurrentScaling(granularity="row"), "input"),
        (breccia.Float8BlockScaling(), "input"),  # 1x128
        (breccia.NVFP4BlockScaling(), "input"),
    ],
)
def test_roles_odd_shapes_and_3d(recipe, role, tmp_path):
    sd = {
        "a": breccia.cast(randn(3, 5, 33, dtype=torch.float16), recipe, role),
        "b": breccia.cast(randn(7, 129), recipe, role),
    }
    save_safetensors(sd, tmp_path / "x.safetensors")
    out = load_safetensors(tmp_path / "x.safetensors")
    for k in sd:
        assert_same(sd[k], out[k])


def test_int4_asymmetric_and_nvfp4_keep_extra_inner_tensors(tmp_path):
    a = breccia.cast(randn(16, 64), breccia.INT4Scaling(symmetric=False, group_size=32))
    n = breccia.cast(randn(16, 64), breccia.NVFP4BlockScaling())
    save_safetensors({"a": a, "n": n}, tmp_path / "x.safetensors")
    raw = load_file(tmp_path / "x.safetensors")
    assert raw["a.zero_point"].dtype == torch.uint8 and raw["a.zero_point"].shape == (16, 2)
    assert raw["n.global_scale"].dtype == torch.float32 and raw["n.global_scale"].shape == ()
    # 4-bit payloads stay packed: half a byte per element
    assert raw["a.qdata"].shape == (16, 32) and raw["n.qdata"].shape == (16, 32)


def test_model_state_dict(tmp_path):
    lin = torch.nn.Linear(64, 32)
    lin.weight = torch.nn.Parameter(breccia.cast(lin.weight.detach(), breccia.MXFP8BlockScaling()), requires_grad=False)
    sd = lin.state_dict()
    save_safetensors(sd, tmp_path / "lin.safetensors")
    out = load_safetensors(tmp_path / "lin.safetensors")
    for k in sd:
        assert_same(sd[k], out[k])
    other = torch.nn.Linear(64, 32)
    other.weight = torch.nn.Parameter(breccia.cast(torch.zeros(32, 64), breccia.MXFP8BlockScaling()), requires_grad=False)
    other.load_state_dict(out)
    x = randn(4, 64)
    assert torch.equal(other(x), lin(x))


def test_non_plain_layouts_are_stored_plain(tmp_path):
    relayout = getattr(breccia.layouts, "relayout", None)
    if relayout is None:
        pytest.skip("breccia.layouts.relayout not there yet")
    from breccia.layouts import ScaleColumnMajor, Swizzled

    mx = breccia.cast(randn(64, 96), breccia.MXFP8BlockScaling())
    blk = breccia.cast(randn(64, 256), breccia.Float8BlockScaling(), "input")
    sd = {"mx": relayout(mx, Swizzled), "blk": relayout(blk, ScaleColumnMajor)}
    save_safetensors(sd, tmp_path / "l.safetensors")
    out = load_safetensors(tmp_path / "l.safetensors")
    assert_same(mx, out["mx"])
    assert_same(blk, out["blk"])


def test_e8m0_scales_are_stored_as_u8_and_come_back_as_e8m0(tmp_path):
    st = breccia.cast(randn(8, 64), breccia.MXFP8BlockScaling())
    e8 = torch.arange(120, 130, dtype=torch.uint8).view(torch.float8_e8m0fnu)
    save_safetensors({"w": st, "plain_e8": e8}, tmp_path / "x.safetensors")
    raw = load_file(tmp_path / "x.safetensors")
    assert raw["w.scale"].dtype == torch.uint8 and raw["plain_e8"].dtype == torch.uint8
    out = load_safetensors(tmp_path / "x.safetensors")
    assert out["w"].scale.dtype == torch.float8_e8m0fnu
    assert out["plain_e8"].dtype == torch.float8_e8m0fnu and torch.equal(_bits(out["plain_e8"]), _bits(e8))


# --------------------------------------------------------------------------- interop and laziness


def test_plain_safetensors_library_reads_every_file(tmp_path):
    sd = {name: breccia.cast(randn(32, 64), r) for name, r in RECIPES.items()}
    sd["bias"] = randn(32)
    path = tmp_path / "all.safetensors"
    save_safetensors(sd, path, metadata={"origin": "test"})
    raw = load_file(path)  # the whole file, with the library's own reader
    with open(path, "rb") as f:
        raw_bytes = safetensors.torch.load(f.read()) if hasattr(safetensors, "torch") else None
    assert raw_bytes is None or sorted(raw_bytes) == sorted(raw)
    for name, st in sd.items():
        if isinstance(st, breccia.ScaledTensor):
            assert torch.equal(_bits(raw[f"{name}.qdata"]), _bits(st.qdata))
            assert torch.equal(_bits(raw[f"{name}.scale"]), _bits(st.scale))
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    assert meta["origin"] == "test"
    doc = json.loads(meta["breccia"])
    assert doc["format_version"] == 1
    entry = doc["scaled"]["nvfp4"]
    assert entry["recipe"]["recipe"] == "NVFP4BlockScaling" and entry["layout"] == "Plain"
    assert entry["shape"] == [32, 64] and entry["orig_dtype"] == "float32" and entry["block"] == [1, 16]
    assert entry["inner"]["qdata"] == {"key": "nvfp4.qdata", "dtype": "uint8", "shape": [32, 32]}


def test_files_written_by_the_library_load_as_plain_tensors(tmp_path):
    t = {"a": randn(3, 4), "b": torch.arange(5)}
    save_file(t, tmp_path / "p.safetensors")
    out = load_safetensors(tmp_path / "p.safetensors")
    assert all(torch.equal(out[k], t[k]) for k in t)


def test_lazy_load_reads_one_tensor(tmp_path, monkeypatch):
    sd = {f"w{i}": breccia.cast(randn(16, 64, seed=i), breccia.NVFP4BlockScaling()) for i in range(4)}
    sd["plain"] = randn(3)
    path = tmp_path / "lazy.safetensors"
    save_safetensors(sd, path, metadata={"k": "v"})
    with open_safetensors(path) as f:
        assert sorted(f.keys()) == sorted(sd) and "w2" in f and "w2.qdata" not in f
        assert f.metadata == {"k": "v"}
        info = f.info("w2")
        assert info.shape == (16, 64) and info.recipe == breccia.NVFP4BlockScaling() and info.role == "weight"
        assert info.nbytes == sd["w2"].nbytes_packed()
        read = []
        real = f._raw
        monkeypatch.setattr(f, "_raw", lambda k: read.append(k) or real(k))
        assert_same(sd["w2"], f["w2"])
        assert sorted(read) == ["w2.global_scale", "w2.qdata", "w2.scale"]
        with pytest.raises(KeyError, match="nope"):
            f.get("nope")


# --------------------------------------------------------------------------- atomic writes


def _leftovers(d):
    return sorted(n for n in os.listdir(d) if n.endswith(".tmp"))


def test_failed_save_leaves_existing_file_untouched(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    good = {"w": breccia.cast(randn(32, 64), breccia.Float8BlockScaling())}
    save_safetensors(good, path)
    before = path.read_bytes()

    calls = []
    real = bfiles._write_tensor

    def dying(f, t):
        calls.append(1)
        if len(calls) == 2:  # after the header and one tensor are on disk
            raise OSError("disk full (simulated)")
        real(f, t)

    monkeypatch.setattr(bfiles, "_write_tensor", dying)
    with pytest.raises(OSError, match="simulated"):
        save_safetensors({"w": breccia.cast(randn(32, 64, seed=1), breccia.MXFP8BlockScaling())}, path)
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []
    monkeypatch.undo()
    assert_same(good["w"], load_safetensors(path)["w"])


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(bfiles, "_write_tensor", lambda f, t: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        save_safetensors({"w": randn(4, 4)}, tmp_path / "new.safetensors")
    assert os.listdir(tmp_path) == []


def test_streaming_writer_holds_one_tensor_and_is_atomic(tmp_path):
    path = tmp_path / "s.safetensors"
    with bst.BrecciaWriter(path) as w:
        w.add("a", breccia.cast(randn(16, 64), breccia.INT4Scaling(group_size=32)))
        w.add("b", randn(5))
        assert not path.exists()  # nothing visible before commit
        w.commit({"note": "x"})
    out = load_safetensors(path)
    assert sorted(out) == ["a", "b"]
    with bst.BrecciaWriter(path) as w:  # abandoned: the file stays as it was
        w.add("c", randn(3))
    assert sorted(load_safetensors(path)) == ["a", "b"]
    assert _leftovers(tmp_path) == []


# --------------------------------------------------------------------------- bad input


def test_save_rejects_bad_input(tmp_path):
    p = tmp_path / "x.safetensors"
    with pytest.raises(TypeError, match="tensors"):
        save_safetensors([randn(2)], p)
    with pytest.raises(TypeError, match=r"tensors\['a'\]"):
        save_safetensors({"a": 3.0}, p)
    with pytest.raises(ValueError, match="reserved"):
        save_safetensors({"a": randn(2)}, p, metadata={"breccia": "x"})
    with pytest.raises(TypeError, match="metadata"):
        save_safetensors({"a": randn(2)}, p, metadata={"k": 1})
    st = breccia.cast(randn(8, 32), breccia.Float8CurrentScaling())
    with pytest.raises(ValueError, match="clashes"):
        save_safetensors({"w": st, "w.qdata": randn(2)}, p)
    with pytest.raises(ValueError, match="complex128"):
        save_safetensors({"c": torch.zeros(2, dtype=torch.complex128)}, p)
    assert not p.exists()


def _good_file(tmp_path, recipe=None):
    recipe = recipe or breccia.NVFP4BlockScaling()
    path = tmp_path / "good.safetensors"
    save_safetensors({"w": breccia.cast(randn(16, 64), recipe), "b": randn(16)}, path)
    return path


def _rewrite(tmp_path, path, edit_meta=None, drop=None, replace=None):
    """A copy of ``path`` written by the plain library, with its breccia
    metadata, tensors or both changed."""
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    doc = json.loads(meta["breccia"])
    if edit_meta:
        edit_meta(doc)
    meta["breccia"] = json.dumps(doc)
    for k in drop or ():
        del tensors[k]
    tensors.update(replace or {})
    out = tmp_path / "bad.safetensors"
    save_file(tensors, out, metadata=meta)
    return out


def test_truncated_and_garbage_files(tmp_path):
    path = _good_file(tmp_path)
    data = path.read_bytes()
    for n, what in [(len(data) - 10, "truncated"), (4, "8-byte"), (200, "truncated")]:
        bad = tmp_path / f"cut{n}.safetensors"
        bad.write_bytes(data[:n])
        with pytest.raises(ValueError, match=f"cut{n}.safetensors.*{what}"):
            load_safetensors(bad)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + b"\0" * 64)
    with pytest.raises(ValueError, match="junk.safetensors.*not valid JSON"):
        load_safetensors(junk)
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(os.urandom(64))
    with pytest.raises(ValueError, match="huge.safetensors"):
        open_safetensors(huge)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_safetensors(tmp_path / "missing.safetensors")


def test_unknown_format_version(tmp_path):
    bad = _rewrite(tmp_path, _good_file(tmp_path), edit_meta=lambda d: d.update(format_version=99))
    with pytest.raises(ValueError, match="bad.safetensors.*format version 99"):
        load_safetensors(bad)
    not_json = tmp_path / "nj.safetensors"
    save_file({"a": randn(2)}, not_json, metadata={"breccia": "{oops"})
    with pytest.raises(ValueError, match="nj.safetensors.*not valid JSON"):
        load_safetensors(not_json)


def test_missing_inner_tensor(tmp_path):
    bad = _rewrite(tmp_path, _good_file(tmp_path), drop=["w.scale"])
    with pytest.raises(ValueError, match="bad.safetensors.*'w'.*'scale' is missing.*'w.scale'"):
        load_safetensors(bad)


def test_metadata_disagreeing_with_tensors(tmp_path):
    path = _good_file(tmp_path)

    def shape(d):
        d["scaled"]["w"]["shape"] = [32, 64]

    def dtype(d):
        d["scaled"]["w"]["inner"]["scale"]["dtype"] = "float32"

    def recipe(d):
        d["scaled"]["w"]["recipe"] = breccia.MXFP8BlockScaling().to_dict()

    def recipe_no_spec(d):
        recipe(d)
        del d["scaled"]["w"]["spec"]

    def unknown_recipe(d):
        d["scaled"]["w"]["recipe"] = {"recipe": "FP3Magic"}

    def layout(d):
        d["scaled"]["w"]["layout"] = "Swizzled"

    def inner_shape(d):
        d["scaled"]["w"]["inner"]["qdata"]["shape"] = [16, 64]

    cases = [
        (shape, "metadata disagrees"),
        (dtype, "stored as F8_E4M3, but the metadata says float32"),
        (recipe, "disagrees with its recipe"),
        (recipe_no_spec, "inner tensors"),
        (unknown_recipe, "FP3Magic"),
        (layout, "Plain"),
        (inner_shape, "shape"),
    ]
    for edit, msg in cases:
        bad = _rewrite(tmp_path, path, edit_meta=edit)
        with pytest.raises(ValueError, match="bad.safetensors") as e:
            load_safetensors(bad)
        assert msg in str(e.value), (edit.__name__, str(e.value))
    # a stored tensor of the wrong shape for the logical shape
    bad = _rewrite(tmp_path, path, replace={"w.scale": torch.zeros(16, 2, dtype=torch.float8_e4m3fn)})
    with pytest.raises(ValueError, match="bad.safetensors.*'w'.*(metadata says|scale)"):
        load_safetensors(bad)
