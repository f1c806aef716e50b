"""tutorials/04_decode.py: its CPU part (greedy tokens of the INT4 and NVFP4
models equal those of their dequantized twins) runs as written."""

import importlib.util
import os
import sys

HERE = os.path.dirname(__file__)


def test_decode_tutorial_tokens_match_dequantized(capsys):
    spec = importlib.util.spec_from_file_location("decode", os.path.join(HERE, "..", "tutorials", "04_decode.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["decode"] = mod  # its dataclasses look their module up
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.modules.pop("decode", None)
    res = mod.main(["--check-steps", "8"])
    for name in ("INT4", "NVFP4"):
        quantized, dequantized = res["cpu"][name]
        assert len(quantized) == 8 and quantized == dequantized, name
    assert "same as the dequantized model: True" in capsys.readouterr().out
