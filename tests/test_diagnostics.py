import warnings

import numpy as np
import pytest

from ccmc_estim import (
    CCMCEstimator,
    IdentifiabilityWarning,
    compare_models,
    identifiability_report,
    make_ccmc_data,
)
from ccmc_estim.diagnostics import graph_components


def test_graph_components_hand_built():
    # Two triangles joined by nothing, and an isolated node.
    labels = graph_components(7, [0, 1, 2, 3, 4, 5], [1, 2, 0, 4, 5, 3])
    assert len(set(labels[:3])) == 1 and len(set(labels[3:6])) == 1
    assert len(set(labels)) == 3
    # Weak components ignore direction; strong ones do not.
    chain = graph_components(3, [0, 1], [1, 2], strong=True)
    assert len(set(chain)) == 3
    cycle = graph_components(3, [0, 1, 2], [1, 2, 0], strong=True)
    assert len(set(cycle)) == 1
    assert len(set(graph_components(3, [0, 1], [1, 2]))) == 1


@pytest.mark.parametrize("seed", range(6))
def test_report_graphs_match_scipy_on_explicit_graphs(seed):
    """The report's per-column pass against the general routine on the graphs built by hand:
    the co-occurrence graph (one component per queried column) and the "chosen over" graph
    (MLE exists iff strongly connected, dominant groups are its closed components)."""
    rng = np.random.default_rng(seed)
    K = 6
    X = [rng.integers(0, K, size=rng.integers(1, 5)) for _ in range(rng.integers(3, 25))]
    y = [int(rng.choice(p)) for p in X]
    rep = identifiability_report(X, y, n_tokens=K)
    for q in range(K):
        idx = [i for i, p in enumerate(X) if p[-1] == q]
        toks = sorted({int(t) for i in idx for t in X[i]})
        if not idx:
            assert rep.n_components[q] == 0 and not rep.mle_exists[q]
            continue
        pos = {t: k for k, t in enumerate(toks)}
        pairs = [(pos[a], pos[b]) for i in idx for a in X[i] for b in X[i]]
        src, dst = np.array(pairs).T
        assert rep.n_components[q] == len(set(graph_components(len(toks), src, dst)))
        arcs = [(pos[int(t)], pos[y[i]]) for i in idx for t in set(X[i]) if t != y[i]]
        src, dst = np.array(arcs, dtype=np.int64).reshape(-1, 2).T
        strong = graph_components(len(toks), src, dst, strong=True)
        assert rep.mle_exists[q] == (len(set(strong)) == 1), (seed, q)
        if not rep.mle_exists[q]:
            leaving = {strong[a] for a, b in zip(src, dst, strict=True) if strong[a] != strong[b]}
            closed = sorted(sorted(toks[k] for k in np.flatnonzero(strong == g))
                            for g in set(strong) - leaving)
            assert sorted(g.tolist() for g in rep.dominant[q]) == closed


def test_report_never_chosen_and_never_queried():
    X = [[1, 2, 0], [2, 0], [1, 0], [0, 1, 0], [3, 1]]
    y = [1, 0, 0, 1, 3]
    rep = identifiability_report(X, y, n_tokens=5)
    assert rep.queried.tolist() == [True, True, False, False, False]
    assert rep.mle_exists.tolist() == [False, False, False, False, False]
    np.testing.assert_array_equal(rep.never_chosen[0], [2])
    np.testing.assert_array_equal(rep.never_chosen[1], [1])  # query 1 lost to 3 once
    assert [g.tolist() for g in rep.dominant[1]] == [[3]]
    assert rep.identified[:, 0].tolist() == [True, True, True, False, False]
    assert rep.cooccurrence[:, 0].tolist() == [4, 3, 2, 0, 0]
    assert rep.n_components.tolist() == [1, 1, 0, 0, 0]
    assert rep.n_free_params == (3 - 1) + (2 - 1)
    text = rep.summary()
    assert "never queried" in text and "NO" in text
    # Worst columns (no MLE) come before never-queried ones.
    body = text.splitlines()[5:]
    assert body[0].split()[0] in {"0", "1"} and "never queried" in body[-1]


def test_report_always_winning_group():
    # Column 0: tokens 1 and 2 beat each other and always beat 0 and 3 -> {1, 2} dominant.
    X = [[1, 2, 0], [1, 2, 0], [3, 1, 0], [3, 2, 0], [0, 3, 0]]
    y = [1, 2, 1, 2, 3]
    rep = identifiability_report(X, y)
    assert not rep.mle_exists[0]
    assert sorted(g.tolist() for g in rep.dominant[0]) == [[1, 2]]


def test_report_fully_identified():
    X, y, _ = make_ccmc_data(3000, 4, 6, random_state=0)
    rep = identifiability_report(X, y)
    assert rep.fully_identified and rep.identified.all() and rep.mle_exists.all()
    assert rep.never_chosen == {} and rep.n_free_params == 4 * 3
    rep_no_y = identifiability_report(X)
    assert rep_no_y.mle_exists is None and rep_no_y.identified.all()


def test_report_agrees_with_estimator():
    X, y, _ = make_ccmc_data(400, 15, (2, 6), token_distribution="zipf", random_state=2)
    est = CCMCEstimator().fit(X, y)
    rep = identifiability_report(X, y)
    np.testing.assert_array_equal(rep.identified, est.identified_)
    np.testing.assert_array_equal(est.identifiability_.identified, est.identified_)
    np.testing.assert_array_equal(rep.mle_exists, est.identifiability_.mle_exists)
    assert est.n_free_params_ == rep.n_free_params
    assert np.isnan(est.logits_se_[~est.identified_]).all()
    assert np.isfinite(est.logits_se_[est.identified_]).all()


def test_existence_predicts_alpha0_warning():
    X, y, _ = make_ccmc_data(300, 6, (2, 5), token_distribution="zipf", random_state=3)
    rep = identifiability_report(X, y)
    assert not rep.mle_exists[rep.queried].all()
    with pytest.warns(IdentifiabilityWarning, match="does not exist"):
        CCMCEstimator(alpha=0).fit(X, y)
    X, y, _ = make_ccmc_data(5000, 3, 6, random_state=3)
    assert identifiability_report(X, y).mle_exists.all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CCMCEstimator(alpha=0).fit(X, y)


def test_standard_errors_match_fisher_information():
    # Two tokens, query 0 always present: one free logit per column, with closed-form
    # information sum_i p_i (1 - p_i) for the difference of the two logits.
    X, y, _ = make_ccmc_data(4000, 2, 3, random_state=5)
    est = CCMCEstimator(alpha=0).fit(X, y)
    P = est.predict_proba(X)
    for q in range(2):
        rows = X[:, -1] == q
        info = np.sum(P[rows, 0] * P[rows, 1])
        # Centred logits are +-d/2, so their standard error is half that of the difference d.
        np.testing.assert_allclose(est.logits_se_[:, q], 0.5 / np.sqrt(info), rtol=1e-8)
        assert est.information_min_eig_[q] == pytest.approx(2 * info, rel=1e-8)


def test_interval_coverage_calibrated():
    rng = np.random.default_rng(0)
    truth = rng.standard_normal((4, 4))
    centred = truth - truth.mean(axis=0)
    hits = []
    for seed in range(150):
        X, y, _ = make_ccmc_data(3000, 4, 5, logits=truth, random_state=seed)
        est = CCMCEstimator(alpha=0).fit(X, y)
        lo, hi = est.confidence_intervals(0.95)
        hits.append((lo <= centred) & (centred <= hi))
    coverage = np.mean(hits)
    assert 0.92 <= coverage <= 0.98, coverage


def test_transition_intervals_and_errors():
    X, y, _ = make_ccmc_data(5000, 4, 5, random_state=1)
    est = CCMCEstimator(alpha=0.0).fit(X, y)
    lo, hi = est.confidence_intervals(0.9, kind="transition")
    T = est.model_.transition_matrix
    assert ((lo <= T) & (T <= hi)).all() and (lo >= 0).all() and (hi <= 1).all()
    with pytest.raises(ValueError, match="kind"):
        est.confidence_intervals(kind="odds")
    with pytest.raises(ValueError, match="level"):
        est.confidence_intervals(1.5)


def test_information_criteria_and_comparison():
    X, y, model = make_ccmc_data(4000, 5, (3, 8), random_state=6)
    est = CCMCEstimator(alpha=0).fit(X, y)
    ll = est.score_samples(X, y).sum()
    assert est.log_likelihood_ == pytest.approx(ll, rel=1e-10)
    k = 5 * 4
    assert est.aic_ == pytest.approx(2 * k - 2 * ll)
    assert est.bic_ == pytest.approx(np.log(4000) * k - 2 * ll)
    Xt, yt, _ = make_ccmc_data(2000, 5, (3, 8), logits=model.logits, random_state=7)
    yt = yt.copy()
    yt[0] = next(t for t in range(5) if t not in Xt[0]) if len(set(Xt[0])) < 5 else yt[0]
    cmp = compare_models(est, X, y, Xt, yt)
    ll_ = cmp.mean_log_likelihood["covered pairs"]
    assert ll_["ccmc"] > ll_["base chain"] > ll_["unigram"] - 0.05
    assert "ccmc" not in cmp.mean_log_likelihood["all pairs"]
    assert cmp.n_outside_prompt == (0 if yt[0] in Xt[0] else 1)
    assert "unigram" in cmp.summary()
