"""torch.save / torch.load(weights_only=True) and load_state_dict."""

import io

import pytest
import torch
from conftest import randn

import breccia


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _same(a, b):
    assert type(a) is type(b) and a.shape == b.shape and a.dtype == b.dtype
    assert a.recipe == b.recipe and a.role == b.role and a.block == b.block and a.qlayout is b.qlayout
    for name, t in a.inner_tensors().items():
        u = getattr(b, name)
        assert torch.equal(t.view(torch.uint8) if t.element_size() == 1 else t, u.view(torch.uint8) if u.element_size() == 1 else u)


def test_torch_save_load_weights_only(recipe):
    st = breccia.cast(randn(16, 64, dtype=torch.bfloat16), recipe)
    _same(st, _roundtrip(st))


def test_state_dict_round_trip_and_load_state_dict(recipe, tmp_path):
    lin = torch.nn.Linear(64, 32, bias=True)
    lin.weight = torch.nn.Parameter(breccia.cast(lin.weight.detach(), recipe), requires_grad=False)
    sd = lin.state_dict()
    path = tmp_path / "model.pt"
    torch.save(sd, path)
    loaded = torch.load(path, weights_only=True)
    _same(sd["weight"], loaded["weight"])

    other = torch.nn.Linear(64, 32, bias=True)
    other.weight = torch.nn.Parameter(breccia.cast(torch.zeros(32, 64), recipe), requires_grad=False)
    ptr = other.weight.qdata.data_ptr()
    other.load_state_dict(loaded)
    assert other.weight.qdata.data_ptr() == ptr  # copied into place: payload and scales
    _same(other.weight, sd["weight"])
    x = randn(4, 64)
    assert torch.equal(other(x), lin(x))


def test_torch_load_refuses_unknown_classes():
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    buf = io.BytesIO()
    torch.save({"w": breccia.cast(randn(4, 32), breccia.MXFP8BlockScaling()), "x": Evil()}, buf)
    buf.seek(0)
    with pytest.raises(Exception, match="Unsupported global"):
        torch.load(buf, weights_only=True)
