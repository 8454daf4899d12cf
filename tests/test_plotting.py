"""The Display objects: each draws, returns itself with its figure and artists, accepts an
existing Axes, and works without a dense K x K array for sparse reports; without matplotlib a
clear ImportError."""

import sys
import tracemalloc

import numpy as np
import pytest

from ccmc_estim import (
    CCMC,
    CollapseProfileDisplay,
    IdentifiabilityDisplay,
    ModelComparisonDisplay,
    PositionalCCMC,
    PositionalCCMCEstimator,
    PositionBiasDisplay,
    SampleComplexityDisplay,
    WinnerDisplay,
    collapse_profile,
    generate,
    identifiability_report,
    winner_analysis,
)
from ccmc_estim.diagnostics import ModelComparison

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    plt.close("all")
    yield
    plt.close("all")


# --------------------------------------------------------------------------- results
W_MIXED = np.array([[0.0, 1.0, 0.5], [1.0, 0.0, 0.2], [0.3, 0.9, -1.0]])
PROMPT = [0, 1, 2, 0, 1]


def _profile():
    model = CCMC(np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
    traj = generate(model, PROMPT, 3000, random_state=0)
    return collapse_profile(traj, PROMPT, window=50, ngram=3)


def _winners():
    return winner_analysis(CCMC(W_MIXED), PROMPT)


def _report(n=300, K=12, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, K, size=(n, 6))
    y = X[np.arange(n), rng.integers(0, 6, size=n)]
    return identifiability_report(X, y, n_tokens=K)


def _table():
    ns = np.array([100, 1000, 10000] * 2 * 3)
    Ks = np.repeat([3, 6], 9)
    err = Ks**2 / ns * np.exp(np.random.default_rng(0).normal(0, 0.1, ns.size))
    return {"n_tokens": Ks, "n_prompts": ns, "repeat": np.tile(np.repeat([0, 1, 2], 3), 2),
            "mse": err, "kl": err / 2}


def _comparison():
    blocks = {"all pairs": {"mixture": -1.5, "base chain": -2.0, "unigram": -2.4},
              "covered pairs": {"mixture": -1.1, "ccmc": -1.2, "base chain": -1.9,
                                "unigram": -2.2}}
    return ModelComparison(blocks, cache_weight={}, n_test=500, n_covered=450)


def _draw(disp):
    disp.figure_.canvas.draw()
    return disp


# Display class, a function that draws from a result with a given ax, and one with ax=None.
CASES = {
    "collapse": (CollapseProfileDisplay, lambda ax: _profile().plot(ax=ax)),
    "winner": (WinnerDisplay, lambda ax: _winners().plot(ax=ax)),
    "identifiability": (IdentifiabilityDisplay,
                        lambda ax: _report().plot(ax=ax, kind="coverage")),
    "sample_complexity": (SampleComplexityDisplay,
                          lambda ax: SampleComplexityDisplay.from_result(_table(), ax=ax)),
    "position_bias": (PositionBiasDisplay, lambda ax: PositionBiasDisplay.from_model(
        PositionalCCMC(np.zeros((3, 3)), -0.4 * np.arange(6)), ax=ax)),
    "comparison": (ModelComparisonDisplay, lambda ax: _comparison().plot(ax=ax)),
}


@pytest.mark.parametrize("case", CASES)
def test_display_draws_on_a_new_figure(case):
    cls, draw = CASES[case]
    disp = _draw(draw(None))
    assert isinstance(disp, cls)
    assert isinstance(disp.ax_, Axes)
    assert disp.ax_.figure is disp.figure_
    assert plt.get_fignums() == [disp.figure_.number]


@pytest.mark.parametrize("case", CASES)
def test_display_uses_the_given_axes(case):
    cls, draw = CASES[case]
    fig, ax = plt.subplots()
    disp = _draw(draw(ax))
    assert isinstance(disp, cls)
    assert disp.ax_ is ax
    assert disp.figure_ is fig
    assert plt.get_fignums() == [fig.number]  # no new figure


def test_display_rejects_non_axes():
    with pytest.raises(TypeError, match="ax must be"):
        _winners().plot(ax="left")


# --------------------------------------------------------------------------- each display
def test_collapse_profile_display():
    prof = _profile()
    disp = prof.plot(lw=2)
    assert set(disp.lines_) == {"leading_share", "repetition_rate", "entropy"}
    np.testing.assert_array_equal(disp.lines_["entropy"].get_ydata(), prof.entropy)
    np.testing.assert_array_equal(disp.lines_["leading_share"].get_xdata(), prof.steps)
    assert disp.lines_["repetition_rate"].get_linewidth() == 2
    assert disp.ax_.get_xscale() == "log"
    assert disp.entropy_ax_ is not None and disp.entropy_ax_ is not disp.ax_
    no_entropy = CollapseProfileDisplay.from_result(prof, entropy=False)
    assert no_entropy.entropy_ax_ is None and "entropy" not in no_entropy.lines_


def test_winner_display():
    res = _winners()
    disp = res.plot()
    assert len(disp.initial_bars_) == len(disp.limit_bars_) == res.support.size
    heights = [b.get_height() for b in disp.limit_bars_]
    np.testing.assert_allclose(heights, res.predicted_limit)
    assert len(disp.stable_markers_) == len(res.stable_limits)
    # Self-dominant tokens are starred; names replace ids.
    W = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    disp = WinnerDisplay.from_result(winner_analysis(CCMC(W), [0, 1, 2]),
                                     token_names=["a", "b", "c"])
    assert [t.get_text() for t in disp.ax_.get_xticklabels()] == ["a*", "b", "c"]


def test_identifiability_display_panels():
    rep = _report()
    disp = _draw(rep.plot())
    assert len(disp.axes_) == 2
    assert disp.coverage_ax_ is disp.ax_ and disp.pattern_ax_ is disp.axes_[1]
    image = disp.image_.get_array()
    C = rep.cooccurrence
    np.testing.assert_array_equal(image.filled(0), C)
    assert disp.colorbar_ is not None
    # Coverage points: one per queried column, split by MLE status.
    assert sum(len(s.get_offsets()) for s in disp.scatter_) == int(rep.queried.sum())
    # One given Axes is split into the two panels; a pair is used as given.
    fig, ax = plt.subplots()
    disp = _draw(rep.plot(ax=ax))
    assert len(disp.axes_) == 2 and disp.figure_ is fig and ax not in fig.axes
    fig, axes = plt.subplots(1, 2)
    disp = _draw(rep.plot(ax=axes))
    assert disp.coverage_ax_ is axes[0] and disp.pattern_ax_ is axes[1]
    disp = IdentifiabilityDisplay.from_result(rep, kind="pattern")
    assert disp.coverage_ax_ is None and disp.ax_ is disp.pattern_ax_
    with pytest.raises(ValueError, match="kind"):
        rep.plot(kind="spy")
    with pytest.raises(TypeError, match="sequence of 2"):
        rep.plot(ax=[axes[0]])


def test_identifiability_display_blocks_match_the_pattern():
    rep = _report(n=2000, K=50)
    disp = rep.plot(kind="pattern", max_pixels=10)
    share = disp.image_.get_array().filled(0)
    assert share.shape == (10, 10)
    dense = rep.identified
    expect = dense.reshape(10, 5, 10, 5).mean(axis=(1, 3))
    np.testing.assert_allclose(share, expect)


def test_identifiability_display_sparse_large_vocabulary():
    """K = 20,000 with sparse storage: no dense K x K array is built (that would be 400 MB of
    booleans or 3.2 GB of counts)."""
    K, n = 20_000, 20_000
    rng = np.random.default_rng(0)
    X = rng.integers(0, K, size=(n, 8))
    y = X[:, 3]
    rep = identifiability_report(X, y, n_tokens=K)
    assert rep.sparse
    tracemalloc.start()
    try:
        disp = _draw(rep.plot())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100e6, f"peak {peak / 1e6:.0f} MB"
    assert disp.image_.get_array().shape == (200, 200)
    assert sum(len(s.get_offsets()) for s in disp.scatter_) == int(rep.queried.sum())


def test_sample_complexity_display():
    table = _table()
    disp = SampleComplexityDisplay.from_result(table, error="kl")
    assert sorted(disp.lines_) == [3, 6]
    for K, slope in disp.slopes_.items():
        assert slope == pytest.approx(-1, abs=0.1), K
    np.testing.assert_allclose(disp.reference_line_.get_xdata(), [100, 10000])
    ref = disp.reference_line_.get_ydata()
    assert np.log(ref[1] / ref[0]) / np.log(100) == pytest.approx(-1)
    assert disp.ax_.get_xscale() == disp.ax_.get_yscale() == "log"
    assert "KL" in disp.ax_.get_ylabel()
    flat = SampleComplexityDisplay.from_result(table, rescale=True)
    y = flat.lines_[3].get_ydata()
    assert y.max() / y.min() < 1.5  # error * n / K^2 is flat at the K^2 / n rate
    assert len(set(flat.reference_line_.get_ydata())) == 1
    none = SampleComplexityDisplay.from_result(table, reference=False)
    assert none.reference_line_ is None
    with pytest.raises(ValueError, match="no column"):
        SampleComplexityDisplay.from_result(table, error="rmse")


def test_sample_complexity_display_from_the_study():
    from ccmc_estim.consistency import sample_complexity

    table = sample_complexity([3], [300, 3000], n_repeats=2, n_test=100)
    disp = _draw(SampleComplexityDisplay.from_result(table))
    assert disp.lines_[3].get_xdata().tolist() == [300, 3000]


def test_position_bias_display_from_estimator_overlays():
    truth = PositionalCCMC(np.zeros((4, 4)), -0.5 * np.arange(5))
    rng = np.random.default_rng(0)
    X = rng.integers(0, 4, size=(3000, 8))
    y = truth.sample(X, random_state=0)
    est = PositionalCCMCEstimator(max_distance=4).fit(X, y)
    ref = PositionBiasDisplay.from_model(truth, name="truth", ls="--")
    disp = PositionBiasDisplay.from_estimator(est, ax=ref.ax_, name="fitted")
    assert disp.ax_ is ref.ax_ and len(ref.ax_.lines) == 2
    np.testing.assert_array_equal(disp.line_.get_ydata(), est.position_bias_)
    assert [t.get_text() for t in disp.ax_.get_legend().get_texts()] == ["truth", "fitted"]
    assert disp.ax_.get_xticklabels()[-1].get_text() == "≥4"
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        PositionBiasDisplay.from_estimator(PositionalCCMCEstimator())
    with pytest.raises(TypeError, match="PositionalCCMC"):
        PositionBiasDisplay.from_model(CCMC(np.zeros((2, 2))))


def test_model_comparison_display_flat_and_blocks():
    disp = _comparison().plot()
    assert [t.get_text() for t in disp.ax_.get_yticklabels()] == [
        "mixture", "base chain", "unigram", "ccmc"]
    assert [b.get_width() for b in disp.bars_["covered pairs"]] == [-1.1, -1.9, -2.2, -1.2]
    assert disp.ax_.get_title() == "held-out comparison on 500 pairs (450 covered)"
    assert [t.get_text() for t in disp.ax_.texts if t.get_text() == "not scored"]
    # A flat dict.
    flat = ModelComparisonDisplay({"ccmc": -1.2, "base chain": -1.9}).plot()
    assert [b.get_width() for b in flat.bars_[None]] == [-1.2, -1.9]
    assert flat.ax_.get_legend() is None
    # Blocks (dict of dicts), missing and infinite values.
    blocks = {"all pairs": {"ccmc": -np.inf, "ccmc (in prompt)": -1.1, "base chain": -2.0},
              "covered pairs": {"ccmc": -1.0, "base chain": -1.8, "mixture": -0.9}}
    disp = _draw(ModelComparisonDisplay(blocks, n_test=10).plot())
    assert list(disp.bars_) == ["all pairs", "covered pairs"]
    labels = [t.get_text() for t in disp.ax_.get_yticklabels()]
    assert labels == ["ccmc", "ccmc (in prompt)", "base chain", "mixture"]
    widths = [b.get_width() for b in disp.bars_["all pairs"]]
    assert widths == [0.0, -1.1, -2.0, 0.0]
    texts = [t.get_text() for t in disp.ax_.texts]
    assert "-inf" in texts and "not scored" in texts
    assert [t.get_text() for t in disp.ax_.get_legend().get_texts()] == list(blocks)
    with pytest.raises(TypeError, match="dict"):
        ModelComparisonDisplay([("ccmc", -1.0)])


# --------------------------------------------------------------------------- no matplotlib
@pytest.mark.parametrize("case", CASES)
def test_clear_error_without_matplotlib(case, monkeypatch):
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.setitem(sys.modules, name, None)
    _, draw = CASES[case]
    with pytest.raises(ImportError, match=r"pip install ccmc-estim\[plot\]"):
        draw(None)


def test_import_needs_no_matplotlib():
    """``import ccmc_estim`` does not import matplotlib (checked in a fresh interpreter)."""
    import subprocess

    code = ("import sys; sys.modules['matplotlib'] = None; import ccmc_estim; "
            "print(ccmc_estim.WinnerDisplay.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "WinnerDisplay"
