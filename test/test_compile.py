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
