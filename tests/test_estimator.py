import warnings

import numpy as np
import pytest
from conftest import ccmc_proba_reference, nll_reference
from scipy.optimize import minimize
from sklearn.exceptions import ConvergenceWarning

from ccmc_estim import CCMC, CCMCEstimator, IdentifiabilityWarning, make_ccmc_data


def _centre(logits, mask):
    out = np.where(mask, logits, 0.0)
    out -= np.where(mask, out.sum(0) / np.maximum(mask.sum(0), 1), 0.0)
    return np.where(mask, out, 0.0)


@pytest.mark.parametrize("solver", ["newton", "newton-cg"])
@pytest.mark.parametrize("alpha", [0.0, 0.7])
def test_optimum_matches_scipy(solver, alpha):
    X, y, _ = make_ccmc_data(400, 4, (2, 7), random_state=3)
    weight = np.random.default_rng(0).uniform(0.5, 2, size=len(y))
    est = CCMCEstimator(alpha=alpha, solver=solver, tol=1e-10).fit(X, y, sample_weight=weight)
    mask = est.identified_

    def objective(v):
        W = np.zeros((4, 4))
        W[mask] = v
        return nll_reference(W, X, y, weight) + 0.5 * alpha * v @ v

    res = minimize(objective, np.zeros(mask.sum()), method="BFGS", options={"gtol": 1e-9})
    W = np.zeros((4, 4))
    W[mask] = res.x
    np.testing.assert_allclose(est.logits_, _centre(W, mask), atol=2e-5)
    assert est.objective_ == pytest.approx(res.fun, rel=1e-9)
    assert est.objective_ <= res.fun + 1e-9
    np.testing.assert_allclose(est.predict_proba(X), ccmc_proba_reference(est.logits_, X),
                               atol=1e-13)


def test_invariances():
    truth = np.random.default_rng(4).standard_normal((6, 6))
    X, y, _ = make_ccmc_data(800, 6, (3, 9), logits=truth, random_state=4)
    ref = CCMCEstimator(alpha=0.1).fit(X, y)
    rng = np.random.default_rng(1)
    Xp = [np.append(rng.permutation(p[:-1]), p[-1]) for p in X]
    np.testing.assert_array_equal(CCMCEstimator(alpha=0.1).fit(Xp, y).logits_, ref.logits_)
    # weight 2 == duplicated sample
    w = np.ones(len(y))
    w[:100] = 2
    dup = CCMCEstimator(alpha=0.1).fit(list(X) + list(X[:100]), np.append(y, y[:100]))
    np.testing.assert_allclose(CCMCEstimator(alpha=0.1).fit(X, y, sample_weight=w).logits_,
                               dup.logits_, atol=1e-10)
    # weight 0 == removed sample
    w0 = np.ones(len(y))
    w0[:50] = 0
    np.testing.assert_allclose(CCMCEstimator(alpha=0.1).fit(X, y, sample_weight=w0).logits_,
                               CCMCEstimator(alpha=0.1, n_tokens=6).fit(X[50:], y[50:]).logits_,
                               atol=1e-12)
    # shifting a column of the true logits: same data, same fit
    shifted = truth + np.arange(6)[None, :] * 3.0
    X2, y2, _ = make_ccmc_data(800, 6, (3, 9), logits=shifted, random_state=4)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(CCMCEstimator(alpha=0.1).fit(X2, y2).logits_, ref.logits_)


@pytest.mark.parametrize("solver", ["newton", "newton-cg"])
@pytest.mark.parametrize("budget", [None, 10])
def test_n_jobs_identical(solver, budget, monkeypatch, capsys):
    from ccmc_estim import _solvers

    # Threads even for this small problem: one column block per thread, or (with a tiny
    # budget for the dense information) one layout solved by threads.
    monkeypatch.setattr(_solvers, "THREAD_MIN_WORK", 0)
    if budget is not None:
        monkeypatch.setattr(_solvers, "INFO_BUDGET", budget)
    X, y, _ = make_ccmc_data(3000, 12, (3, 15), token_distribution="zipf", random_state=5)
    a = CCMCEstimator(solver=solver, n_jobs=1).fit(X, y)
    for n_jobs in (2, 3):
        b = CCMCEstimator(solver=solver, n_jobs=n_jobs, verbose=2).fit(X, y)
        blocks = "column blocks" in capsys.readouterr().out
        assert blocks == (budget is None)
        _assert_same_fit(a, b)


def _assert_same_fit(a, b):
    """Two fitted CCMCEstimators are equal to the last bit, report included."""
    for name in ("logits_", "identified_", "logits_se_"):
        x, z = getattr(a, name), getattr(b, name)
        if hasattr(x, "toarray"):
            x, z = x.toarray(), z.toarray()
        np.testing.assert_array_equal(x, z)
    assert a.model_.sparse == b.model_.sparse
    np.testing.assert_array_equal(a.n_iter_, b.n_iter_)
    assert (a.objective_, a.log_likelihood_, a.bic_, a.n_free_params_) == (
        b.objective_, b.log_likelihood_, b.bic_, b.n_free_params_)
    ra, rb = a.identifiability_, b.identifiability_
    assert ra.summary() == rb.summary()
    for name in ("n_prompts", "n_components", "mle_exists", "id_ptr", "id_tokens",
                 "n_cooccur", "chosen"):
        np.testing.assert_array_equal(getattr(ra, name), getattr(rb, name))
    for da, db in ((ra.dominant or {}, rb.dominant or {}), (ra.components, rb.components)):
        assert list(da) == list(db)
        for q in da:
            np.testing.assert_array_equal(da[q], db[q])


@pytest.mark.parametrize("case", ["alpha0", "zero weights", "sparse", "warm", "large"])
def test_column_blocks_per_thread_are_one_fit(case, monkeypatch, capsys):
    # One column block per thread (or, for large data, blocks in turn with threads inside,
    # each within the information budget) gives the one-thread fit to the last bit.
    from ccmc_estim import _solvers
    from ccmc_estim import estimator as estimator_module

    monkeypatch.setattr(_solvers, "THREAD_MIN_WORK", 0)
    X, y, _ = make_ccmc_data(1500, 15, (2, 12), token_distribution="zipf", random_state=3)
    if case == "large":  # two blocks (fewer than threads), a budget that binds inside each
        n_tokens = sum(len(p) for p in X)
        monkeypatch.setattr(estimator_module, "LAYOUT_BUDGET", 6 * n_tokens + 1)
        monkeypatch.setattr(_solvers, "INFO_BUDGET", 400)
    w = np.random.default_rng(0).integers(0, 3, y.size).astype(float)
    params = dict(alpha=0.0 if case == "alpha0" else 0.5, sparse=case == "sparse",
                  warm_start=case == "warm")
    fit_w = w if case == "zero weights" else None
    fits = []
    for n_jobs in (1, 2, 3):
        est = CCMCEstimator(n_jobs=n_jobs, verbose=2, **params)
        if case == "warm":
            est.fit(X[:500], y[:500])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            est.fit(X, y, sample_weight=fit_w)
        out = capsys.readouterr().out
        assert ("column blocks" in out) == (n_jobs > 1 or case == "large")
        fits.append((est, sorted(str(c.message) for c in caught)))
    (a, warn_a), *rest = fits
    assert a.model_.sparse == (case == "sparse")
    for b, warn_b in rest:
        assert warn_b == warn_a
        _assert_same_fit(a, b)


@pytest.mark.parametrize("solver", ["newton", "newton-cg"])
@pytest.mark.parametrize("max_iter, tol, status", [(1, 1e-6, "MAX_ITER"),
                                                   (100, 1e-6, "CONVERGED"),
                                                   (100, 1e-300, "NO_DECREASE")])
def test_solution_probabilities_and_information_are_those_at_the_solution(solver, max_iter,
                                                                          tol, status):
    # The solver hands out the probabilities of its last accepted evaluation (and builds the
    # information from them) on every way out of its Newton loop: checked against a plain
    # numpy computation at the returned logits.
    from ccmc_estim import _solvers
    from ccmc_estim._columns import build_columns
    from ccmc_estim._stats import validate_prompts

    X, y, _ = make_ccmc_data(600, 6, (2, 8), random_state=2)
    flat, indptr, K = validate_prompts(X)
    w = np.random.default_rng(3).uniform(0.5, 2.0, len(y))
    cd = build_columns(flat, indptr, K, np.asarray(y, np.int64), w)
    theta = np.zeros(cd.n_params)
    sol = _solvers.solve_columns(cd, theta, alpha=0.5, tol=tol, max_iter=max_iter,
                                 solver=solver, n_jobs=1, info_max=300, cold_start=True,
                                 output_proba=True)
    assert (sol.status == getattr(_solvers, status)).any()
    p = _numpy_entry_proba(cd, theta)
    np.testing.assert_allclose(sol.output_proba, p[cd.y_entry], rtol=1e-12)
    diag = np.zeros(cd.n_params)
    for q in range(K):
        for r in range(cd.col_ptr[q], cd.col_ptr[q + 1]):
            e = slice(cd.indptr[r], cd.indptr[r + 1])
            np.add.at(diag, cd.id_ptr[q] + cd.local[e], cd.weight[r] * p[e] * (1 - p[e]))
    np.testing.assert_allclose(sol.information_diag, diag, rtol=1e-11)


def _numpy_entry_proba(cd, theta):
    """Plain numpy: the probability of every entry of a column layout at ``theta``."""
    out = np.empty(cd.indptr[-1])
    for q in range(cd.n_tokens):
        th = theta[cd.id_ptr[q] : cd.id_ptr[q + 1]]
        for r in range(cd.col_ptr[q], cd.col_ptr[q + 1]):
            e = slice(cd.indptr[r], cd.indptr[r + 1])
            out[e] = cd.count[e] * np.exp(th[cd.local[e]])
            out[e] /= out[e].sum()
    return out


@pytest.mark.parametrize("solver", ["newton", "newton-cg"])
def test_a_solve_started_from_known_probabilities_is_the_same(solver):
    # An EM solves one layout again and again under new weights, each time from the last
    # solution: the entry probabilities kept there start the next solve, which must end bit
    # for bit where a solve that recomputes them ends.  The kept values are checked against
    # plain numpy at the returned logits.
    from dataclasses import replace

    from ccmc_estim import _solvers
    from ccmc_estim._columns import build_columns
    from ccmc_estim._stats import validate_prompts

    X, y, _ = make_ccmc_data(600, 6, (2, 8), random_state=2)
    flat, indptr, K = validate_prompts(X)
    rng = np.random.default_rng(4)
    cd = build_columns(flat, indptr, K, np.asarray(y, np.int64), rng.uniform(0.5, 2, len(y)))
    theta = np.zeros(cd.n_params)
    kw = dict(alpha=0.5, tol=1e-6, solver=solver, n_jobs=1)
    first = _solvers.solve_columns(cd, theta, max_iter=2, cold_start=True, keep_proba=True,
                                   **kw)
    p = _numpy_entry_proba(cd, theta)
    np.testing.assert_allclose(first.proba.entry, p, rtol=1e-12)
    np.testing.assert_allclose(first.proba.nll, -np.log(p[cd.y_entry]), rtol=1e-12, atol=1e-14)
    more = dict(info_max=300, output_proba=True, keep_proba=True, **kw)

    def same_from_kept(problem, theta, kept, max_iter):
        a, b = theta.copy(), theta.copy()
        fresh = _solvers.solve_columns(problem, a, max_iter=max_iter, **more)
        started = _solvers.solve_columns(problem, b, start_proba=kept, max_iter=max_iter,
                                         **more)
        np.testing.assert_array_equal(a, b)
        for name in ("objective", "n_iter", "status", "information_diag", "output_proba"):
            np.testing.assert_array_equal(getattr(fresh, name), getattr(started, name), name)
        np.testing.assert_array_equal(fresh.proba.entry, started.proba.entry)
        np.testing.assert_array_equal(fresh.proba.nll, started.proba.nll)
        return a, fresh

    # Newton steps under new weights.
    reweighted = replace(cd, weight=rng.uniform(0.1, 3.0, cd.weight.size))
    moved, _ = same_from_kept(reweighted, theta, first.proba, 3)
    assert not np.array_equal(moved, theta)
    # No step at all from a solution: the objective is the one from the kept values.
    solved = theta.copy()
    at_solution = _solvers.solve_columns(cd, solved, max_iter=100, keep_proba=True, **kw)
    _, again = same_from_kept(cd, solved, at_solution.proba, 100)
    assert (again.n_iter == 0).all()
    with pytest.raises(ValueError, match="cold start"):
        _solvers.solve_columns(reweighted, theta.copy(), start_proba=first.proba, cold_start=True,
                               max_iter=1, **more)


def test_cg_steps_without_penalty_keep_the_column_gauge():
    # At alpha=0 the loss is flat along each column's all-ones direction: the truncated
    # Newton steps must not wander along it (they did, to logits of 10^2 to 10^5, at
    # tol=1e-300).  From the centred count start, every column stays centred.
    from ccmc_estim import _solvers
    from ccmc_estim._columns import build_columns
    from ccmc_estim._stats import validate_prompts

    X, y, _ = make_ccmc_data(2000, 10, (2, 12), random_state=1)
    flat, indptr, K = validate_prompts(X)
    for scale in (1.0, 1e-310):
        cd = build_columns(flat, indptr, K, np.asarray(y, np.int64), np.full(len(y), scale))
        theta = np.zeros(cd.n_params)
        _solvers.solve_columns(cd, theta, alpha=0.0, tol=1e-300, max_iter=100,
                               solver="newton-cg", n_jobs=1, cold_start=True)
        for q in range(K):
            th = theta[cd.id_ptr[q] : cd.id_ptr[q + 1]]
            assert abs(th.mean()) <= 1e-12 * max(1.0, np.abs(th).max()), (scale, q, th.mean())


def test_solvers_agree():
    X, y, _ = make_ccmc_data(3000, 12, (3, 15), random_state=6)
    a = CCMCEstimator(solver="newton", tol=1e-10).fit(X, y)
    b = CCMCEstimator(solver="newton-cg", tol=1e-10).fit(X, y)
    np.testing.assert_allclose(a.logits_, b.logits_, atol=1e-7)
    assert abs(a.objective_ - b.objective_) <= 1e-10 * a.objective_


def test_recovery_error_shrinks():
    truth = np.random.default_rng(0).standard_normal((8, 8))
    errors = []
    for n in (1_000, 10_000, 100_000):
        X, y, _ = make_ccmc_data(n, 8, (3, 12), logits=truth, random_state=n)
        est = CCMCEstimator(alpha=1.0).fit(X, y)
        errors.append(np.mean((est.logits_ - (truth - truth.mean(0))) ** 2))
    # K^2/n rate: each tenfold increase of n divides the error by about ten.
    assert errors[1] < errors[0] / 4 and errors[2] < errors[1] / 4, errors


def test_warm_start_reaches_same_optimum():
    X, y, _ = make_ccmc_data(2000, 6, (3, 9), random_state=7)
    est = CCMCEstimator(warm_start=True, tol=1e-10).fit(X, y)
    first_iter = est.n_iter_.sum()
    est.fit(X, y)
    assert est.n_iter_.sum() < first_iter
    np.testing.assert_allclose(est.logits_, CCMCEstimator(tol=1e-10).fit(X, y).logits_, atol=1e-9)


def test_mle_does_not_exist_warns_and_stays_finite():
    # Column 0: token 2 is available but never chosen -> its logit goes to -inf at alpha=0.
    X = [[1, 2, 0], [2, 0], [1, 0], [0, 1, 0]]
    y = [1, 0, 0, 1]
    with pytest.warns(IdentifiabilityWarning, match=r"column\(s\) 0 .*tokens \[2\] never chosen"):
        est = CCMCEstimator(alpha=0).fit(X, y)
    assert np.isfinite(est.logits_).all()
    assert est.logits_[2, 0] < est.logits_[1, 0] - 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CCMCEstimator(alpha=1.0).fit(X, y)  # the default penalty: no warning


def test_max_iter_warns():
    X, y, _ = make_ccmc_data(500, 5, 6, random_state=0)
    with pytest.warns(ConvergenceWarning, match="max_iter=1"):
        CCMCEstimator(max_iter=1, tol=1e-12).fit(X, y)


def test_output_absent_from_prompt():
    X = [[0, 1], [1, 2], [2, 0], [0, 0]]
    msg = r"output 0 of sample 1 .* \(2 of 4 sample\(s\).*MixtureCCMCEstimator.*in_prompt"
    with pytest.raises(ValueError, match=msg):
        CCMCEstimator().fit(X, [1, 0, 0, 1])
    est = CCMCEstimator().fit(X, [1, 1, 2, 0])
    with np.errstate(all="raise"):
        ll = est.score_samples(X, [1, 0, 0, 1])
        assert est.score(X, [1, 0, 0, 1]) == -np.inf
    assert np.isneginf(ll[[1, 3]]).all() and np.isfinite(ll[[0, 2]]).all()


@pytest.mark.parametrize(
    "params, err, match",
    [
        ({"alpha": -1}, ValueError, "'alpha' parameter .* range"),
        ({"alpha": "big"}, TypeError, "'alpha' parameter .* float"),
        ({"alpha": np.nan}, ValueError, "'alpha' parameter"),
        ({"alpha": np.inf}, ValueError, "'alpha' parameter"),
        ({"solver": "foo"}, ValueError, "'solver' parameter .* among"),
        ({"tol": 0}, ValueError, "'tol' parameter"),
        ({"tol": "a"}, TypeError, "'tol' parameter"),
        ({"max_iter": 0}, ValueError, "'max_iter' parameter"),
        ({"max_iter": 1.5}, ValueError, "'max_iter' parameter"),
        ({"max_iter": 10**20}, ValueError, "'max_iter' parameter"),
        ({"max_iter": True}, ValueError, "'max_iter' parameter"),
        ({"n_tokens": 0}, ValueError, "'n_tokens' parameter"),
        ({"n_tokens": 1.5}, TypeError, "'n_tokens' parameter"),
        ({"n_jobs": 0}, ValueError, "'n_jobs' parameter"),
        ({"sparse": "yes"}, ValueError, "'sparse' parameter"),
    ],
)
def test_bad_parameters(params, err, match):
    with pytest.raises(err, match=match):
        CCMCEstimator(**params).fit([[0, 1]], [1])


def test_bad_data():
    est = CCMCEstimator(n_tokens=3)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        est.fit([[0, 3]], [0])
    with pytest.raises(ValueError, match="2 prompts but 1 outputs"):
        est.fit([[0, 1], [1, 2]], [0])
    with pytest.raises(ValueError, match="sample_weight must be finite and non-negative; sample 1"):
        est.fit([[0, 1], [1, 2]], [0, 1], sample_weight=[1, -1])
    with pytest.raises(ValueError, match="sample_weight has shape"):
        est.fit([[0, 1], [1, 2]], [0, 1], sample_weight=[1, 1, 1])
    fitted = CCMCEstimator().fit([[0, 1], [1, 2]], [0, 1])
    with pytest.raises(ValueError, match="outside the vocabulary 0..2"):
        fitted.predict([[0, 5]])


def test_inferred_vocabulary_and_predict():
    est = CCMCEstimator().fit([[0, 1], [1, 4, 1]], [0, 4])
    assert est.n_tokens_ == 5 and est.classes_.tolist() == [0, 1, 2, 3, 4]
    assert not est.identified_[2].any() and est.identified_[4, 1]
    assert set(est.predict([[0, 1], [4, 4, 1]]).tolist()) <= {0, 1, 4}
    assert isinstance(est.model_, CCMC)
