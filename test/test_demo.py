"""The demo (``python -m breccia``), its table, and the metrics behind it."""

from __future__ import annotations

import math

import pytest
import torch

import breccia
from breccia.__main__ import main as cli_main
from breccia.demo import DEFAULT_VARIANTS, format_table, recipe_table
from breccia.metrics import builtin_weight, cosine, sqnr_db

FP8_ROWS = [
    "DelayedScaling",
    "Float8CurrentScaling (tensor)",
    "Float8CurrentScaling (row)",
    "Float8BlockScaling (128x128)",
    "MXFP8BlockScaling (1x32)",
]
FOUR_BIT_ROWS = ["NVFP4BlockScaling (1x16)", "INT4Scaling (sym, g128)", "INT4Scaling (asym, g128)"]


@pytest.fixture(scope="module")
def gaussian_table() -> dict:
    rows = recipe_table(builtin_weight((2048, 2048), kind="gaussian"))
    return {r["name"]: r for r in rows}


def _kurtosis(x: torch.Tensor) -> float:
    x = x.double().reshape(-1)
    d = x - x.mean()
    return float(d.pow(4).mean() / d.pow(2).mean().square())


def test_cli_runs_demo_with_a_row_per_recipe(capsys):
    assert cli_main([]) == 0
    out = capsys.readouterr().out
    assert "breccia" in out and torch.__version__ in out
    for label, _ in DEFAULT_VARIANTS:
        # one row per recipe in each of the two tables (Gaussian, Student-t)
        assert out.count(f"| {label} ") == 2, label


def test_default_variants_cover_every_recipe():
    recipes = {type(r) for _, r in DEFAULT_VARIANTS if r is not None}
    assert recipes == {
        breccia.DelayedScaling,
        breccia.Float8CurrentScaling,
        breccia.Float8BlockScaling,
        breccia.MXFP8BlockScaling,
        breccia.NVFP4BlockScaling,
        breccia.INT4Scaling,
    }


def test_bits_per_element(gaussian_table):
    assert 4.4 <= gaussian_table["NVFP4BlockScaling (1x16)"]["bits_per_element"] <= 4.6
    # 4-bit codes plus one bf16 scale per group of 128: 4 + 16/128
    assert gaussian_table["INT4Scaling (sym, g128)"]["bits_per_element"] == 4.125
    assert gaussian_table["bf16"]["bits_per_element"] == 16.0
    n = 2048 * 2048
    for row in gaussian_table.values():
        assert row["ratio_fp32"] == pytest.approx(row["bytes"] / (4 * n))


def test_sqnr_ordering(gaussian_table):
    assert gaussian_table["bf16"]["sqnr_db"] == math.inf  # the weight is bf16 already
    for name in FP8_ROWS:
        assert gaussian_table[name]["sqnr_db"] > 25.0, name
    for name in FOUR_BIT_ROWS:
        assert 12.0 < gaussian_table[name]["sqnr_db"] < 25.0, name
    assert min(gaussian_table[n]["sqnr_db"] for n in FP8_ROWS) > max(
        gaussian_table[n]["sqnr_db"] for n in FOUR_BIT_ROWS
    )
    for row in gaussian_table.values():
        assert 0.97 < row["cosine"] <= 1.0


def test_format_table_is_markdown(gaussian_table):
    text = format_table(list(gaussian_table.values()), ["name", "bits_per_element", "sqnr_db"])
    lines = text.splitlines()
    assert len(lines) == 2 + len(gaussian_table)
    assert lines[0].startswith("| recipe") and set(lines[1]) <= set("|-:")
    assert all(line.count("|") == 4 for line in lines)
    assert " inf |" in text  # the bf16 row is exact


def test_sqnr_of_identical_tensors_is_inf():
    x = torch.randn(64, 64)
    assert sqnr_db(x, x.clone()) == math.inf
    assert sqnr_db(torch.zeros(4), torch.zeros(4)) == math.inf


def test_sqnr_value():
    x = torch.ones(100, dtype=torch.float64)
    # noise power 1% of the signal: 20 dB
    assert sqnr_db(x, x * 1.1) == pytest.approx(20.0)


def test_metrics_accept_a_scaled_tensor():
    x = torch.randn(32, 64)
    st = breccia.cast(x, breccia.Float8CurrentScaling())
    assert sqnr_db(x, st) == pytest.approx(sqnr_db(x, breccia.dequantize(st, torch.float32)))


def test_cosine_of_negation_is_minus_one():
    x = torch.randn(128, 32)
    assert cosine(x, -x) == pytest.approx(-1.0, abs=1e-12)
    assert cosine(x, 3 * x) == pytest.approx(1.0, abs=1e-12)


def test_metrics_reject_shape_mismatch():
    with pytest.raises(ValueError, match="approx"):
        sqnr_db(torch.zeros(4), torch.zeros(5))


@pytest.mark.parametrize("kind", ["gaussian", "student_t"])
def test_builtin_weight_is_deterministic(kind):
    a = builtin_weight((256, 512), kind=kind, seed=7)
    b = builtin_weight((256, 512), kind=kind, seed=7)
    c = builtin_weight((256, 512), kind=kind, seed=8)
    assert a.dtype == torch.bfloat16 and a.shape == (256, 512)
    assert torch.equal(a.view(torch.int16), b.view(torch.int16))
    assert not torch.equal(a, c)
    assert float(a.float().std()) == pytest.approx(0.02, rel=0.15)


def test_student_t_has_heavier_tails():
    g = builtin_weight((512, 512), kind="gaussian")
    t = builtin_weight((512, 512), kind="student_t")
    kg, kt = _kurtosis(g), _kurtosis(t)
    assert kg == pytest.approx(3.0, abs=0.1)
    assert kt > 3 * kg


def test_builtin_weight_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        builtin_weight((4, 4), kind="uniform")
