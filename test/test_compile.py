"""torch.compile traces cast -> dequantize as one graph with the same bits."""

import pytest
import torch
from conftest import randn

import breccia


def _roundtrip(recipe):
    def fn(x):
        st = breccia.cast(x, recipe, "weight")
        return breccia.dequantize(st, torch.float32), st.qdata, st.scale

    return fn


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_cast_dequantize_compiles_fullgraph_same_bits(recipe, backend):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend(backend)
    fn = _roundtrip(recipe)
    compiled = torch.compile(fn, backend=counter, fullgraph=True)
    x = randn(32, 128, dtype=torch.bfloat16, seed=1)
    d, q, s = compiled(x)
    de, qe, se = fn(x)
    assert counter.frame_count == 1
    assert torch.equal(d, de)
    assert torch.equal(q.view(torch.uint8), qe.view(torch.uint8))
    assert torch.equal(s.view(torch.uint8) if s.element_size() == 1 else s, se.view(torch.uint8) if se.element_size() == 1 else se)


def test_scaled_tensor_as_compiled_input_and_output():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    r = breccia.Float8CurrentScaling(granularity="row")

    @torch.compile(backend=counter, fullgraph=True)
    def f(st):
        return breccia.dequantize(st) * 2, breccia.cast(breccia.dequantize(st, torch.float32) + 1, r)

    st = breccia.cast(randn(16, 64), r)
    y, st2 = f(st)
    assert isinstance(st2, breccia.ScaledTensor) and st2.recipe == r
    assert torch.equal(y, breccia.dequantize(st) * 2)
    ref = breccia.cast(breccia.dequantize(st, torch.float32) + 1, r)
    assert torch.equal(st2.qdata.view(torch.uint8), ref.qdata.view(torch.uint8))
    assert counter.frame_count == 1


class _Model(torch.nn.Module):
    def __init__(self, recipe):
        super().__init__()
        self.fc1 = torch.nn.Linear(64, 96)
        self.fc2 = torch.nn.Linear(96, 32, bias=False)
        for lin in (self.fc1, self.fc2):
            lin.weight = torch.nn.Parameter(breccia.cast(lin.weight.detach(), recipe), requires_grad=False)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_module_with_scaled_weights_compiles(recipe, backend):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    model = _Model(recipe)
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    with torch.no_grad():
        for m in (8, 16, 24):  # three batch sizes: at most one recompile (to dynamic shapes)
            x = randn(m, 64, seed=m)
            y, ref = compiled(x), model(x)
            if backend == "aot_eager":
                assert torch.equal(y, ref)
            else:  # inductor may fuse the fp32 epilogue differently
                torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
    assert counter.frame_count <= 2


@pytest.mark.parametrize("name", ["fp8_tensor", "fp8_row"])
def test_fp8_matmul_graph_has_no_fallback_dequantize(name):
    from torch._inductor.utils import run_and_get_code
    from conftest import RECIPES

    torch._dynamo.reset()
    model = _Model(RECIPES[name])
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        _, code = run_and_get_code(compiled, randn(8, 64))
    text = "\n".join(code)
    assert "_scaled_mm" in text
    assert "breccia.dequantize" not in text and "dequantize.default" not in text


@pytest.mark.parametrize("name", ["fp8_row", "mxfp8", "nvfp4", "int4_asym"])
def test_custom_ops_pass_opcheck(name):
    from conftest import RECIPES

    spec = RECIPES[name].spec("weight")
    x = randn(8, 64, dtype=torch.bfloat16)
    # (opcheck's schema test multiplies outputs, which fp8 tensors cannot do on the CPU)
    utils = ("test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(torch.ops.breccia.quantize.default, (x, spec.to_key(), None, None), test_utils=utils)
    st = breccia.cast(x, RECIPES[name])
    args = (st.qdata, st.scale, st.global_scale, st.zero_point, st.spec_key, list(st.block), list(st.shape), torch.float32)
    torch.library.opcheck(torch.ops.breccia.dequantize.default, args, test_utils=utils)


def test_custom_ops_run_their_body_only_in_plain_eager(monkeypatch):
    """Plain eager calls of breccia's custom ops skip the dispatcher (host
    time); compiled, fake, vmapped and autograd-recorded calls reach the op,
    and both give the same bits."""
    from torch._dynamo.testing import CompileCounterWithBackend
    from torch._subclasses.fake_tensor import FakeTensorMode

    from breccia import library

    op = library.quantize_op
    direct = []
    body = op._fn
    monkeypatch.setattr(op, "_fn", lambda *a: direct.append(1) or body(*a))
    key = breccia.Float8CurrentScaling(granularity="row").spec("weight").to_key()
    x = randn(8, 64, dtype=torch.bfloat16, seed=3)

    eager = op(x, key)
    assert direct == [1]
    via_op = op.op(x, key)
    assert all(torch.equal(a.view(torch.uint8), b.view(torch.uint8)) for a, b in zip(eager, via_op))

    x.requires_grad_(True)
    op(x, key)  # autograd would record the op: the op
    with torch.no_grad():
        op(x, key)  # nothing to record: direct
    assert direct == [1, 1]
    x.requires_grad_(False)

    with FakeTensorMode() as mode:
        q, s, _, _ = op(mode.from_tensor(x), key)
    assert q.shape == (8, 64) and s.shape == (8, 1)
    torch.func.vmap(lambda r: op(r, key)[0].view(torch.uint8))(x[None].expand(2, 8, 64))

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(lambda t: op(t, key), backend=counter, fullgraph=True)
    out = compiled(x)
    assert counter.frame_count == 1 and direct == [1, 1]
    assert all(torch.equal(a.view(torch.uint8), b.view(torch.uint8)) for a, b in zip(out, eager))
