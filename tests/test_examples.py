"""The examples run as written (they save their figures under docs/figures)."""

import runpy
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path, capsys):
    pytest.importorskip("matplotlib")
    runpy.run_path(str(path), run_name="__main__")
    assert "saved" in capsys.readouterr().out
