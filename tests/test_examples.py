"""The gallery examples run as written, draw their figures and write no files."""

import runpy
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))


def test_examples_found():
    assert EXAMPLES, "no examples found"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path, monkeypatch, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = []
    monkeypatch.setattr(plt, "show", lambda *args, **kwargs: shown.append(plt.get_fignums()))
    monkeypatch.chdir(tmp_path)  # anything written to the working directory lands here
    plt.close("all")
    try:
        runpy.run_path(str(path), run_name="__main__")  # an exception fails the test
        assert shown and all(shown), "the example shows no figure"
    finally:
        plt.close("all")
    assert not list(tmp_path.iterdir()), "the example wrote files"
