"""Recipes: validated arguments, hashable, JSON round trip, per-role specs."""

import json

import pytest
from conftest import RECIPES

import breccia
from breccia.recipes import QuantSpec, recipe_from_dict, recipe_from_json


def test_json_round_trip_and_hash(recipe):
    text = recipe.to_json()
    json.loads(text)
    back = recipe_from_json(text)
    assert back == recipe and hash(back) == hash(recipe) and type(back) is type(recipe)
    assert repr(recipe).startswith(recipe.name + "(")
    assert len({recipe, back}) == 1


def test_recipes_are_frozen():
    r = breccia.Float8CurrentScaling()
    with pytest.raises(Exception):
        r.granularity = "row"


def test_specs_per_role():
    assert breccia.Float8BlockScaling().spec("weight").block == (128, 128)
    assert breccia.Float8BlockScaling().spec("input").block == (1, 128)
    assert breccia.Float8CurrentScaling(granularity="row").spec("input").block == (1, -1)
    mx = breccia.MXFP8BlockScaling().spec("grad_output")
    assert (mx.element, mx.scale_format, mx.block, mx.scale_rule) == ("e4m3", "e8m0", (1, 32), "floor")
    nv = breccia.NVFP4BlockScaling(weight_block=(16, 16))
    assert nv.spec("weight").block == (16, 16) and nv.spec("input").block == (1, 16)
    assert breccia.INT4Scaling(symmetric=False).spec("weight").has_zero_point
    with pytest.raises(ValueError, match="weight-only"):
        breccia.INT4Scaling().spec("input")
    with pytest.raises(ValueError, match="role"):
        breccia.Float8CurrentScaling().spec("bias")


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: breccia.Float8BlockScaling(weight_block=(0, 128)), "weight_block"),
        (lambda: breccia.Float8BlockScaling(input_block=(1, 128, 4)), "input_block"),
        (lambda: breccia.Float8BlockScaling(grad_block=(1.5, 128)), "grad_block"),
        (lambda: breccia.Float8CurrentScaling(fp8_format="e3m4"), "fp8_format"),
        (lambda: breccia.Float8CurrentScaling(granularity="column"), "granularity"),
        (lambda: breccia.MXFP8BlockScaling(block_size=16), "block_size"),
        (lambda: breccia.MXFP8BlockScaling(scale_rule="ceil"), "scale_rule"),
        (lambda: breccia.NVFP4BlockScaling(weight_block=(1, 32)), "weight_block"),
        (lambda: breccia.INT4Scaling(group_size=100), "group_size"),
        (lambda: breccia.INT4Scaling(group_size=8), "group_size"),
        (lambda: breccia.INT4Scaling(scale_dtype="fp32"), "scale_dtype"),
        (lambda: breccia.DelayedScaling(amax_history_len=0), "amax_history_len"),
        (lambda: breccia.DelayedScaling(amax_compute_algo="mean"), "amax_compute_algo"),
        (lambda: breccia.DelayedScaling(margin=0.5), "margin"),
        (lambda: QuantSpec("e4m3", "fp32", (1, 32), "floor"), "scale_rule"),
    ],
)
def test_bad_arguments_name_themselves(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def test_from_dict_rejects_unknown():
    with pytest.raises(ValueError, match="recipe"):
        recipe_from_dict({"recipe": "Float16Scaling"})
    with pytest.raises(ValueError, match="version"):
        recipe_from_dict({"recipe": "INT4Scaling", "version": 7})
    with pytest.raises(ValueError, match="unknown fields"):
        recipe_from_dict({"recipe": "INT4Scaling", "bits": 3})


def test_every_recipe_is_covered():
    assert {type(r).__name__ for r in RECIPES.values()} == set(breccia.recipes.RECIPES)
