"""The tutorials run as written."""

import os
import runpy

import pytest

HERE = os.path.dirname(__file__)


@pytest.mark.parametrize("name", ["01_cast.py"])
def test_tutorial_runs(name, capsys):
    runpy.run_path(os.path.join(HERE, "..", "tutorials", name), run_name="__main__")
    assert "bit-identical" in capsys.readouterr().out
