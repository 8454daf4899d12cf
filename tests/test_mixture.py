"""The copy-and-generate mixture: likelihood against a plain numpy twin, monotone EM, recovery
of known parameters, baselines of compare_models against independent computations."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import sparse
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV

from ccmc_estim import (
    CCMC,
    BaseChain,
    CCMCEstimator,
    MixtureCCMC,
    MixtureCCMCEstimator,
    PositionalCCMC,
    compare_models,
    generate_batch,
    load_model,
    save_model,
)


def _random_mixture(rng, K, unknown_id=None, bias=None, sentinel=False):
    W = rng.normal(0, 1.5, (K, K))
    counts = sparse.csc_array(rng.poisson(2.0, (K, K)) * (rng.random((K, K)) < 0.4))
    u = rng.dirichlet(np.ones(K))
    chain = BaseChain(counts, rng.uniform(0.5, 3, K), u)
    ccmc = CCMC(W) if bias is None else PositionalCCMC(W, bias)
    return MixtureCCMC(ccmc, chain, rng.uniform(0.1, 0.9, K), unknown_id,
                       rng.normal(1.0, 1.5, K) if sentinel else None)


def _reference_proba(model, prompts):
    """Plain numpy: lam_q * m_k e^{W[k,q]} / Z + (1 - lam_q) * B[:, q], one prompt at a time."""
    K = model.n_tokens
    W = model.ccmc.toarray()
    B = model.base_chain.counts.toarray()
    beta = model.base_chain.prior_weight
    u = model.base_chain.unigram
    bias = getattr(model.ccmc, "position_bias", np.zeros(1))
    out = []
    for p in prompts:
        q = p[-1]
        dist = np.minimum(np.arange(len(p))[::-1], bias.size - 1)
        m = np.bincount(p, weights=np.exp(bias[dist]), minlength=K)
        if model.unknown_id is not None:
            m[model.unknown_id] = 0
        c = m * np.exp(W[:, q])
        Z = c.sum()
        c = c / c.sum() if c.sum() > 0 else c
        base = (B[:, q] + beta[q] * u) / (B[:, q].sum() + beta[q])
        lam = model.copy_weight[q] if c.sum() > 0 else 0.0  # nothing to copy: generate
        if model.sentinel is not None:  # the prompt's attention against the sentinel
            lam = Z / (Z + np.exp(model.sentinel[q]))
        out.append(lam * c + (1 - lam) * base)
    return np.array(out)


@pytest.mark.parametrize("sentinel", [False, True])
@pytest.mark.parametrize("bias", [None, [0.0, 1.5, -0.7, 0.3]])
@pytest.mark.parametrize("unknown_id", [None, 0])
def test_probabilities_match_numpy_twin(rng, unknown_id, bias, sentinel):
    model = _random_mixture(rng, 7, unknown_id, bias, sentinel)
    prompts = [rng.integers(0, 7, rng.integers(1, 9)) for _ in range(40)]
    prompts.append(np.array([0, 0]))  # only the unknown token: nothing can be copied
    P = model.predict_proba(prompts)
    np.testing.assert_allclose(P, _reference_proba(model, prompts), rtol=1e-12)
    np.testing.assert_allclose(P.sum(axis=1), 1.0)
    y = rng.integers(0, 7, len(prompts))
    np.testing.assert_allclose(model.log_likelihood(prompts, y),
                               np.log(P[np.arange(len(y)), y]), rtol=1e-12)
    np.testing.assert_array_equal(model.predict(prompts), P.argmax(axis=1))


def test_unknown_token_is_never_copied(rng):
    model = _random_mixture(rng, 5, unknown_id=0)
    P = model.predict_proba([[0, 0, 0, 3]])
    lam, q = model.copy_weight[3], 3
    base = model.base_chain.columns([q])[0]
    assert P[0, 0] == pytest.approx((1 - lam) * base[0])


def test_sampling_follows_the_probabilities(rng):
    model = _random_mixture(rng, 5)
    prompt = [1, 2, 2, 4]
    draws = model.sample([prompt] * 40_000, random_state=3)
    freq = np.bincount(draws, minlength=5) / draws.size
    np.testing.assert_allclose(freq, model.predict_proba([prompt])[0], atol=0.01)


def _simulate(model, rng, n, L=10):
    X = rng.integers(0, model.n_tokens, (n, L))
    return X, model.sample(X, random_state=rng)


@pytest.mark.parametrize("seed", range(4))
def test_em_is_monotone_and_deterministic(seed):
    rng = np.random.default_rng(seed)
    model = _random_mixture(rng, int(rng.integers(3, 9)))
    X, y = _simulate(model, rng, 1500, int(rng.integers(2, 12)))
    alpha = float(rng.uniform(0.1, 3))
    for algorithm, acceleration, inner_steps in itertools.product(
            ("ecme", "em"), ("squarem", None), (5, 0)):
        est = MixtureCCMCEstimator(alpha=alpha, algorithm=algorithm, acceleration=acceleration,
                                   inner_steps=inner_steps,
                                   copy_weight=("per_query", "shared")[seed % 2]).fit(X, y)
        trace = est.objective_trace_
        assert np.all(np.diff(trace) <= 1e-10 * abs(trace[0])), np.diff(trace).max()
        again = clone(est).fit(X, y)
        np.testing.assert_array_equal(again.objective_trace_, trace)
        np.testing.assert_array_equal(again.copy_weight_, est.copy_weight_)


@pytest.mark.parametrize("copy_weight", ["per_query", "sentinel"])
def test_numpy_scalar_tolerances(rng, copy_weight):
    # A tolerance of any real type reaches compiled code as a float (a float16 one would not
    # compile): the fit equals the one at the same value as a Python float.
    model = _random_mixture(rng, 6)
    X, y = _simulate(model, rng, 600, 8)
    ref = MixtureCCMCEstimator(copy_weight=copy_weight, tol=float(np.float16(1e-3))).fit(X, y)
    for tol in (np.float16(1e-3), np.float32(np.float16(1e-3))):
        est = MixtureCCMCEstimator(copy_weight=copy_weight, tol=tol).fit(X, y)
        np.testing.assert_array_equal(est.objective_trace_, ref.objective_trace_)


@pytest.mark.parametrize("copy_weight", ["per_query", "shared"])
def test_inner_steps_and_ecme_change_the_path_not_the_optimum(copy_weight):
    rng = np.random.default_rng(7)
    model = _random_mixture(rng, 6)
    X, y = _simulate(model, rng, 3000, 6)
    fits = [MixtureCCMCEstimator(alpha=0.5, copy_weight=copy_weight, algorithm=algorithm,
                                 inner_steps=k, tol=1e-13, acceleration="squarem",
                                 max_iter=20_000).fit(X, y)
            for algorithm, k in (("em", 0), ("em", 5), ("ecme", 0), ("ecme", 50))]
    plain = fits[0]
    for other in fits[1:]:
        assert other.objective_trace_[-1] == pytest.approx(plain.objective_trace_[-1],
                                                           rel=1e-9)
        np.testing.assert_allclose(other.copy_weight_, plain.copy_weight_, atol=1e-5)
        np.testing.assert_allclose(other.ccmc_.toarray(), plain.ccmc_.toarray(), atol=2e-4)
    # ECME gets there in fewer iterations than EM, with the same inner steps.
    assert fits[2].n_iter_ < fits[0].n_iter_


def test_m_step_skips_solved_columns(monkeypatch):
    # A column whose mean-loss gradient is below tol / 100 takes no Newton step: late in the
    # EM some do; the objective still never increases and ends where a tight fit's does.
    from ccmc_estim import mixture

    calls = []
    original = mixture.solve_columns

    def solve(problem, theta, **kwargs):
        solution = original(problem, theta, **kwargs)
        queried = np.diff(problem.col_ptr) > 0
        calls.append((kwargs["tol"], int((queried & (solution.n_iter == 0)).sum())))
        return solution

    monkeypatch.setattr(mixture, "solve_columns", solve)
    rng = np.random.default_rng(3)
    model = _random_mixture(rng, 8)
    X, y = _simulate(model, rng, 4000, 8)
    # SQUAREM: an unaccelerated EM stops at tol=1e-6 further from the optimum than 1e-7.
    est = MixtureCCMCEstimator(alpha=0.5, tol=1e-6, acceleration="squarem").fit(X, y)
    assert {tol for tol, _ in calls} == {1e-8}
    skipped = sum(n for _, n in calls)
    trace = est.objective_trace_
    assert np.all(np.diff(trace) <= 1e-10 * abs(trace[0]))
    # The same number of M-steps at a 100 times tighter tolerance skips fewer columns.
    calls.clear()
    with pytest.warns(ConvergenceWarning):  # it stops at max_iter, as intended
        MixtureCCMCEstimator(alpha=0.5, tol=1e-8, max_iter=est.n_iter_,
                             acceleration="squarem").fit(X, y)
    assert skipped > sum(n for _, n in calls)
    monkeypatch.setattr(mixture, "solve_columns", original)
    tight = MixtureCCMCEstimator(alpha=0.5, tol=1e-13, max_iter=20_000).fit(X, y)
    assert trace[-1] == pytest.approx(tight.objective_trace_[-1], rel=1e-7)


@pytest.mark.parametrize("copy_weight", ["per_query", "sentinel"])
def test_partial_newton_steps_stop_their_cg_early(monkeypatch, copy_weight):
    # A lone Newton step per iteration without SQUAREM stops its conjugate gradients at a
    # residual of a quarter of the gradient (the next E-step poses a new system anyway):
    # the path changes, the optimum does not.  SQUAREM, whose extrapolation needs a smooth
    # iteration map, and several Newton steps keep the exact forcing term.
    from ccmc_estim import mixture

    forcing = []
    original = mixture.solve_columns

    def solve(problem, theta, **kwargs):
        forcing.append(kwargs["min_forcing"])
        return original(problem, theta, **kwargs)

    monkeypatch.setattr(mixture, "solve_columns", solve)
    rng = np.random.default_rng(5)
    model = _random_mixture(rng, 8, sentinel=copy_weight == "sentinel")
    X, y = _simulate(model, rng, 4000, 10)
    kw = dict(alpha=0.5, copy_weight=copy_weight, tol=1e-12, max_iter=20_000)
    est = MixtureCCMCEstimator(**kw).fit(X, y)
    assert set(forcing) == {0.25}
    trace = est.objective_trace_
    assert np.all(np.diff(trace) <= 1e-10 * abs(trace[0]))
    for other in ({"acceleration": "squarem"}, {"newton_steps": 2}):
        forcing.clear()
        MixtureCCMCEstimator(**kw, **other).fit(X, y)
        assert set(forcing) == {0.0}
    monkeypatch.setattr(mixture, "_PARTIAL_STEP_FORCING", 0.0)
    exact = MixtureCCMCEstimator(**kw).fit(X, y)
    assert not np.array_equal(exact.objective_trace_, trace)  # the floor took effect
    assert trace[-1] == pytest.approx(exact.objective_trace_[-1], rel=1e-9)
    np.testing.assert_allclose(est.ccmc_.toarray(), exact.ccmc_.toarray(), atol=1e-4)


def test_cached_copy_probabilities_equal_a_recomputation(monkeypatch):
    # An E-step at an M-step's result reuses the M-step's probabilities: they must be the
    # very numbers a pass over the prompts gives at those logits.
    from ccmc_estim import mixture

    checked = []
    original = mixture._EMBlock.responsibilities

    def responsibilities(self, params):
        if params.copy_p is not None:
            np.testing.assert_array_equal(params.copy_p, self.copy_proba(params.theta))
            checked.append(params.copy_p.size)
        return original(self, params)

    monkeypatch.setattr(mixture._EMBlock, "responsibilities", responsibilities)
    rng = np.random.default_rng(11)
    model = _random_mixture(rng, 7)
    X, y = _simulate(model, rng, 2000, 6)
    for copy_weight, unknown_id in (("per_query", None), ("shared", 0)):
        MixtureCCMCEstimator(copy_weight=copy_weight, unknown_id=unknown_id).fit(X, y)
    assert len(checked) >= 6


def test_an_m_step_uses_kept_probabilities_only_at_their_logits(rng):
    # A block keeps the probabilities of its last evaluation; an M-step from other logits
    # must not use them (SQUAREM steps from a point other than the last one evaluated).
    from ccmc_estim import mixture

    K = 6
    model = _random_mixture(rng, K)
    X, y = _simulate(model, rng, 1500, 7)
    config = MixtureCCMCEstimator()._em_config()
    flat, indptr = X.astype(np.int32).ravel(), np.arange(0, X.size + 1, X.shape[1])

    def block():
        return mixture._EMBlock(flat, indptr, np.asarray(y, np.int64), np.ones(len(y)), K, 0,
                                K, config)

    kept, r = block(), rng.uniform(0, 1, len(y))
    first = kept.m_step(np.zeros(kept.problem.n_params), r)
    for theta in (rng.normal(0, 1, first.theta.size), first.theta):
        a, b = kept.m_step(theta, r), block().m_step(theta, r)
        np.testing.assert_array_equal(a.theta, b.theta)
        np.testing.assert_array_equal(a.copy_p, b.copy_p)


def test_m_steps_start_from_the_last_probabilities(monkeypatch):
    # Most M-steps start from the entry probabilities the last E- or M-step computed at
    # their logits (kept on the block); the fit must be bit for bit the one that recomputes
    # them, with a learned bias too (whose steps change the counts, hence the probabilities).
    from ccmc_estim import mixture

    rng = np.random.default_rng(5)
    model = _random_mixture(rng, 7, unknown_id=0)
    X, y = _simulate(model, rng, 3000, 8)
    original = mixture.solve_columns
    starts = []

    def solve(problem, theta, **kwargs):
        starts.append(kwargs["start_proba"] is not None)
        return original(problem, theta, **kwargs)

    monkeypatch.setattr(mixture, "solve_columns", solve)
    for kw in ({"unknown_id": 0}, {"unknown_id": 0, "max_distance": 4, "tol": 1e-7}):
        starts.clear()
        cached = MixtureCCMCEstimator(**kw).fit(X, y)
        assert not starts[0] and sum(starts) >= len(starts) / 2, starts
        monkeypatch.setattr(mixture, "solve_columns",
                            lambda p, t, **k: original(p, t, **{**k, "start_proba": None}))
        fresh = MixtureCCMCEstimator(**kw).fit(X, y)
        monkeypatch.setattr(mixture, "solve_columns", solve)
        np.testing.assert_array_equal(cached.objective_trace_, fresh.objective_trace_)
        np.testing.assert_array_equal(cached.ccmc_.toarray(), fresh.ccmc_.toarray())
        np.testing.assert_array_equal(cached.copy_weight_, fresh.copy_weight_)
        np.testing.assert_array_equal(cached.position_bias_, fresh.position_bias_)
    assert cached.n_bias_iter_ > 0


@pytest.mark.parametrize("copy_weight", ["per_query", "shared", "sentinel"])
def test_warm_start_continues_from_the_previous_fit(copy_weight):
    # The previous logits, copy weights and base-chain counts: the refit on the same data
    # starts no higher than where the first fit ended, and goes on down.
    rng = np.random.default_rng(3)
    model = _random_mixture(rng, 6)
    X, y = _simulate(model, rng, 2000, 6)
    est = MixtureCCMCEstimator(warm_start=True, copy_weight=copy_weight).fit(X, y)
    end = est.objective_trace_[-1]
    est.fit(X, y)
    assert est.objective_trace_[0] <= end + 1e-12 * abs(end)
    assert est.objective_trace_[-1] <= est.objective_trace_[0]


def test_recovers_known_parameters():
    rng = np.random.default_rng(0)
    # Short prompts over a larger vocabulary: copying and generating differ enough for the
    # copy weights to be well identified.
    K = 10
    W = rng.normal(0, 1.0, (K, K))
    counts = sparse.csc_array(np.full((K, K), 1000.0) * rng.dirichlet(np.ones(K), K).T)
    truth = MixtureCCMC(CCMC(W), BaseChain(counts, np.zeros(K), np.full(K, 1 / K)),
                        np.linspace(0.2, 0.8, K))
    X, y = _simulate(truth, rng, 80_000, 4)
    est = MixtureCCMCEstimator(alpha=0.1, tol=1e-9).fit(X, y)
    np.testing.assert_allclose(est.copy_weight_, truth.copy_weight, atol=0.04)
    centred = W - W.mean(axis=0)
    # About 8,000 pairs per column, half of them copied from 4-token prompts: the logits'
    # standard errors are about 0.1 to 0.2.
    assert np.sqrt(np.mean((est.ccmc_.toarray() - centred) ** 2)) < 0.25
    B_true = truth.base_chain.toarray()
    # 800 to 6,400 generated pairs per column, entangled with the copy part.
    assert np.sqrt(np.mean((est.base_chain_.toarray() - B_true) ** 2)) < 0.02
    # The fitted mixture explains held-out data about as well as the truth.
    Xt, yt = _simulate(truth, rng, 20_000, 4)
    assert est.score(Xt, yt) > truth.log_likelihood(Xt, yt).mean() - 0.01


def test_plain_ccmc_refuses_uncovered_pairs_and_names_the_mixture():
    with pytest.raises(ValueError, match="MixtureCCMCEstimator.*in_prompt"):
        CCMCEstimator().fit([[0, 1], [1, 2]], [1, 0])


def test_compare_models_against_independent_baselines(rng):
    truth = _random_mixture(rng, 6)
    X, y = _simulate(truth, rng, 4000, 6)
    Xt, yt = _simulate(truth, rng, 2000, 6)
    est = MixtureCCMCEstimator().fit(X, y)
    cmp = compare_models(est, X, y, Xt, yt)
    allp, cov = cmp.mean_log_likelihood["all pairs"], cmp.mean_log_likelihood["covered pairs"]
    assert allp["mixture"] == pytest.approx(est.score(Xt, yt))
    # Witten-Bell bigram with the continuation unigram, by hand.
    K = 6
    C = np.zeros((K, K))
    np.add.at(C, (y, X[:, -1]), 1)
    T = (C > 0).sum(axis=0)
    cont = (C > 0).sum(axis=1)  # Kneser-Ney continuation counts
    u = (cont + 1 / K) / (cont.sum() + 1)
    beta = np.where(T > 0, T, 1)
    B = (C + beta * u[:, None]) / (C.sum(axis=0) + beta)
    base = np.log(B[yt, Xt[:, -1]])
    assert allp["base chain"] == pytest.approx(base.mean())
    assert allp["unigram"] == pytest.approx(np.log(u[yt]).mean())
    share = np.array([np.mean(p == t) for p, t in zip(Xt, yt, strict=True)])
    grid = [np.mean(np.log(lam * B[yt, Xt[:, -1]] + (1 - lam) * share))
            for lam in np.linspace(0.01, 1, 100)]
    assert allp["cache (tuned)"] >= max(grid) - 1e-6
    covered = share > 0
    assert cmp.n_covered == covered.sum()
    assert cov["base chain"] == pytest.approx(base[covered].mean())
    assert allp["mixture"] > allp["cache (tuned)"] > allp["unigram"]
    assert "covered pairs" in cmp.summary() and "ccmc" in cov


def test_grid_search_and_shared_weight():
    rng = np.random.default_rng(1)
    truth = _random_mixture(rng, 4)
    X, y = _simulate(truth, rng, 1500, 6)
    search = GridSearchCV(MixtureCCMCEstimator(), {"alpha": [0.1, 10.0]}, cv=3).fit(X, y)
    assert search.best_params_["alpha"] in (0.1, 10.0)
    shared = MixtureCCMCEstimator(copy_weight="shared").fit(X, y)
    assert np.ptp(shared.copy_weight_) == 0


def test_generation_grows_the_support_and_follows_the_model(rng):
    from ccmc_estim import generate, generate_batch, winner_analysis

    model = _random_mixture(rng, 6)
    prompt = [1, 1, 2]
    out = generate(model, prompt, 5000, random_state=0)
    assert set(np.unique(out)) - {1, 2}  # tokens outside the prompt appear
    # One step from a fixed context follows predict_proba.
    first = generate_batch(model, [prompt] * 20_000, 1, random_state=1)[:, 0]
    np.testing.assert_allclose(np.bincount(first, minlength=6) / first.size,
                               model.predict_proba([prompt])[0], atol=0.012)
    # With a window, the next step depends on the last tokens only.
    w = generate(model, prompt, 2000, window=3, random_state=2)
    assert w.min() >= 0 and w.max() < 6
    with pytest.raises(TypeError, match="MixtureCCMC"):
        winner_analysis(model, prompt)


def test_string_tokens_give_the_same_fits_as_ids():
    from ccmc_estim import make_ccmc_data

    X, y, _ = make_ccmc_data(1500, 6, (3, 8), random_state=0)
    names = np.array([f"t{i:02d}" for i in range(6)])
    Xs, ys = [names[p].tolist() for p in X], names[y]
    a, b = CCMCEstimator().fit(X, y), CCMCEstimator().fit(Xs, ys)
    np.testing.assert_array_equal(a.logits_, b.logits_)
    np.testing.assert_array_equal(b.classes_, names)
    np.testing.assert_array_equal(b.predict(Xs), names[a.predict(X)])
    np.testing.assert_array_equal(b.predict_proba(Xs), a.predict_proba(X))
    assert b.score(Xs, ys) == a.score(X, y)
    m1, m2 = MixtureCCMCEstimator().fit(X, y), MixtureCCMCEstimator().fit(Xs, ys)
    np.testing.assert_array_equal(m1.objective_trace_, m2.objective_trace_)
    np.testing.assert_array_equal(m2.predict(Xs), names[m1.predict(X)])
    with pytest.raises(ValueError, match="token 1 of prompt 0 is 'zz'"):
        b.predict([["t00", "zz"]])
    with pytest.raises(ValueError, match="n_tokens"):
        CCMCEstimator(n_tokens=6).fit(Xs, ys)


def test_vocabulary_in_a_pipeline_with_the_mixture():
    from sklearn.pipeline import make_pipeline

    from ccmc_estim import Vocabulary, prompts_from_sequences

    words = ("the cat sat on the mat and the dog sat on the log " * 40).split()
    vocab = Vocabulary().fit([words])
    X, y = prompts_from_sequences([words], 6, vocabulary=vocab)
    pipe = make_pipeline(Vocabulary(), MixtureCCMCEstimator(unknown_id=0))
    Xw = [vocab.inverse_transform(p) for p in X]
    pipe.fit(Xw, y)
    assert pipe.score(Xw, y) > np.log(1 / 8)


def test_zero_weight_removes_the_sample():
    # A weight of 0 equals a removed sample, as for the CCMC and a Dask fit (which never ships
    # such pairs): here the only pair with query 9 must not enter the base chain's support.
    rng = np.random.default_rng(0)
    X = rng.integers(0, 10, (2000, 5))
    X[:, -1] = np.where(X[:, -1] == 9, 8, X[:, -1])
    X[0, -1] = 9
    y = X[np.arange(2000), rng.integers(0, 5, 2000)]
    w = np.ones(2000)
    w[0] = 0.0
    a = MixtureCCMCEstimator().fit(X, y, sample_weight=w)
    b = MixtureCCMCEstimator().fit(X[1:], y[1:])
    np.testing.assert_array_equal(a.objective_trace_, b.objective_trace_)
    np.testing.assert_array_equal(a.base_chain_.toarray(), b.base_chain_.toarray())
    assert (a.n_free_params_, a.bic_) == (b.n_free_params_, b.bic_)


def test_improper_copy_prior_with_unseen_queries():
    """With copy_prior=(0, 0) a query without copyable pairs has no copy weight from data or
    prior: it gets 1/2 (what the default prior gives) instead of NaN."""
    X = np.array([[1, 2, 0], [2, 1, 0], [0, 1, 2]])
    y = np.array([1, 3, 2])
    est = MixtureCCMCEstimator(copy_prior=(0, 0), n_tokens=5, max_iter=500).fit(X, y)
    lam = est.copy_weight_
    np.testing.assert_array_equal(lam[[1, 3, 4]], 0.5)  # never a query
    assert np.isfinite(lam).all() and np.isfinite(est.score(X, y))
    # Where there are data the weight is their maximum-likelihood value.
    assert lam[0] < 1e-6 and lam[2] > 1 - 1e-6


def _positional_truth(rng, K=6, bias=(0.0, 2.0, -1.0, 0.5, -0.5)):
    model = _random_mixture(rng, K, bias=np.array(bias))
    return MixtureCCMC(model.ccmc, model.base_chain, np.full(K, 0.7))


def test_learned_position_bias_recovers_the_truth():
    rng = np.random.default_rng(3)
    truth = _positional_truth(rng)
    X, y = _simulate(truth, rng, 40_000, 12)
    est = MixtureCCMCEstimator(max_distance=4, alpha=0.1, tol=1e-8).fit(X, y)
    trace = est.objective_trace_
    assert np.all(np.diff(trace) <= 1e-10 * abs(trace[0])), np.diff(trace).max()
    assert est.n_bias_iter_ >= 2
    assert isinstance(est.ccmc_, PositionalCCMC)
    np.testing.assert_array_equal(est.ccmc_.position_bias, est.position_bias_)
    # The search ends below the objective at the true bias (its penalty added) ...
    b = truth.ccmc.position_bias
    at_truth = MixtureCCMCEstimator(position_bias=b, alpha=0.1, tol=1e-8).fit(X, y)
    assert trace[-1] < at_truth.objective_trace_[-1] + 0.05 * b @ b
    # ... and near the truth: over 8 samples of this size the errors' standard deviations were
    # 0.09 to 0.14 (the entries move together, relative to the gauge b[0] = 0).
    np.testing.assert_allclose(est.position_bias_, b, atol=0.4)
    plain = MixtureCCMCEstimator(alpha=0.1, tol=1e-8).fit(X, y)
    assert est.n_free_params_ == plain.n_free_params_ + 4
    Xt, yt = _simulate(truth, rng, 20_000, 12)
    assert est.score(Xt, yt) > plain.score(Xt, yt) + 0.05
    assert est.score(Xt, yt) > truth.log_likelihood(Xt, yt).mean() - 0.01
    again = clone(est).fit(X, y)
    np.testing.assert_array_equal(again.objective_trace_, trace)
    np.testing.assert_array_equal(again.position_bias_, est.position_bias_)


def test_fixed_position_bias():
    rng = np.random.default_rng(4)
    truth = _positional_truth(rng)
    X, y = _simulate(truth, rng, 3000, 8)
    b = truth.ccmc.position_bias
    est = MixtureCCMCEstimator(position_bias=b, unknown_id=0).fit(X, y)
    np.testing.assert_array_equal(est.position_bias_, b)
    assert est.n_bias_iter_ == 0
    # A fixed bias has no free parameter; an all-zero one is the plain mixture.
    plain = MixtureCCMCEstimator(unknown_id=0).fit(X, y)
    zero = MixtureCCMCEstimator(position_bias=np.zeros(5), unknown_id=0).fit(X, y)
    assert zero.n_free_params_ == plain.n_free_params_
    np.testing.assert_allclose(zero.objective_trace_, plain.objective_trace_, rtol=1e-12)
    np.testing.assert_allclose(zero.predict_proba(X[:100]), plain.predict_proba(X[:100]),
                               rtol=1e-10, atol=1e-14)
    shifted = MixtureCCMCEstimator(position_bias=b + 3.0, unknown_id=0).fit(X, y)
    np.testing.assert_array_equal(shifted.position_bias_, b)  # the gauge b[0] = 0
    with pytest.raises(ValueError, match="position_bias"):
        MixtureCCMCEstimator(position_bias=[0.0, np.nan]).fit(X, y)


def test_bias_step_likelihood_against_brute_force(rng):
    """The compiled distance sums give the copy log-likelihood at any bias (and its
    gradient), checked against the attention formula prompt by prompt and finite
    differences."""
    from ccmc_estim import mixture

    K, D, unk = 6, 3, 0
    X = rng.integers(0, K, (300, 9))
    y = np.where(rng.random(300) < 0.7, X[:, 4], rng.integers(0, K, 300))
    config = MixtureCCMCEstimator(unknown_id=unk, max_distance=D)._em_config()
    w = rng.uniform(0.5, 2.0, 300)
    flat, indptr = X.astype(np.int32).ravel(), np.arange(0, 301 * 9, 9)
    block = mixture._EMBlock(flat, indptr, y, w, K, 0, K, config)
    theta = rng.normal(0, 1, block.problem.n_params)
    r = rng.uniform(0, 1, 300)
    params = mixture._Params(theta, np.full(K, 0.5), np.zeros(block.keys.size))
    data = block.bias_data(params, mixture._Evaluation((), r, None, None))
    W = block.problem.to_dense(theta)
    b = rng.normal(0, 1, D + 1)
    b[0] = 0
    f, g = mixture._bias_value(data, b)
    expected = 0.0
    for i in range(300):
        p, q = X[i], X[i, -1]
        if y[i] == unk or y[i] not in p:
            continue
        s = W[p, q] + b[np.minimum(np.arange(9)[::-1], D)]
        s[p == unk] = -np.inf
        expected += w[i] * r[i] * (np.logaddexp.reduce(s[p == y[i]]) - np.logaddexp.reduce(s))
    assert f == pytest.approx(expected, rel=1e-12)
    h = 1e-6
    for d in range(D + 1):
        e = np.zeros(D + 1)
        e[d] = h
        fd = (mixture._bias_value(data, b + e)[0] - mixture._bias_value(data, b - e)[0]) / 2 / h
        assert g[d] == pytest.approx(fd, rel=1e-6, abs=1e-6)


def _check_three_steps(model, prompt):
    """The marginals of three generated steps with a window of 6, by enumerating the paths
    with predict_proba, against 60,000 generated trajectories (chi-square, 5 degrees of
    freedom)."""
    window, n = 6, 60_000
    paths = {(): 1.0}
    for _ in range(3):
        paths = {(*path, t): pr * P for path, pr in paths.items()
                 for t, P in enumerate(model.predict_proba(
                     [np.concatenate([prompt, path]).astype(int)[-window:]])[0])}
    exact = np.zeros((3, 6))
    for path, pr in paths.items():
        exact[np.arange(3), path] += pr
    out = generate_batch(model, np.repeat(prompt[None], n, 0), 3, window=window,
                         random_state=1)
    for k in range(3):
        f = np.bincount(out[:, k], minlength=6) / n
        assert n * np.sum((f - exact[k]) ** 2 / exact[k]) < 25  # p = 1e-4


def test_positional_mixture_generation_and_files(rng, tmp_path):
    model = _random_mixture(rng, 6, unknown_id=5, bias=np.array([0.0, 2.5, -1.0, 0.4]))
    prompt = np.array([1, 3, 2, 5, 4, 1, 0, 2])
    _check_three_steps(model, prompt)
    save_model(model, tmp_path / "m.npz")
    back = load_model(tmp_path / "m.npz").model
    np.testing.assert_array_equal(back.ccmc.position_bias, model.ccmc.position_bias)
    np.testing.assert_array_equal(back.predict_proba([prompt]), model.predict_proba([prompt]))


def test_learned_bias_does_not_depend_on_threads(monkeypatch):
    from ccmc_estim import _columns, _solvers

    monkeypatch.setattr(_solvers, "THREAD_MIN_WORK", 0)
    monkeypatch.setattr(_columns, "THREAD_MIN_WORK", 0)
    rng = np.random.default_rng(6)
    truth = _positional_truth(rng)
    X, y = _simulate(truth, rng, 4000, 10)
    fits = [MixtureCCMCEstimator(max_distance=9, unknown_id=0, n_jobs=j).fit(X, y)
            for j in (1, 2, 3)]
    assert fits[0].n_bias_iter_ >= 2
    for est in fits[1:]:
        np.testing.assert_array_equal(est.objective_trace_, fits[0].objective_trace_)
        np.testing.assert_array_equal(est.position_bias_, fits[0].position_bias_)
        np.testing.assert_array_equal(est.ccmc_.toarray(), fits[0].ccmc_.toarray())
        np.testing.assert_array_equal(est.copy_weight_, fits[0].copy_weight_)
        np.testing.assert_array_equal(est.base_chain_.toarray(), fits[0].base_chain_.toarray())
    b = fits[0].position_bias_
    assert b.size == 10 and np.all(b[1:] != 0)
    plain = MixtureCCMCEstimator(unknown_id=0).fit(X, y)
    assert fits[0].n_free_params_ == plain.n_free_params_ + 9
    # A max_distance beyond the prompts' 10 positions (distances 0 to 9) is cut to 9: the
    # same model, fitted alike.
    for D in (12, 10**6):
        est = MixtureCCMCEstimator(max_distance=D, unknown_id=0).fit(X, y)
        np.testing.assert_array_equal(est.objective_trace_, fits[0].objective_trace_)
        np.testing.assert_array_equal(est.position_bias_, b)
        assert est.n_free_params_ == fits[0].n_free_params_


def test_warm_start_on_shorter_prompts_cuts_the_bias():
    rng = np.random.default_rng(9)
    truth = _positional_truth(rng)
    X, y = _simulate(truth, rng, 3000, 8)
    # SQUAREM, which reaches a tight tol in fewer iterations than the default.
    est = MixtureCCMCEstimator(max_distance=6, warm_start=True, tol=1e-9,
                               acceleration="squarem").fit(X, y)
    assert est.position_bias_.size == 7
    # Prompts of 3 tokens: distances 0 to 2.  The previous bias is cut there (its entries
    # beyond would change predictions on longer prompts), and the fit ends where a cold one
    # does (with a tight tol: bias and logits are learned in turn, and on prompts this short
    # they trade off, so a loose tol stops them early, at different points).
    Xs = X[:, -3:]
    est.fit(Xs, y)
    cold = MixtureCCMCEstimator(max_distance=6, tol=1e-9, acceleration="squarem").fit(Xs, y)
    assert est.position_bias_.size == 3
    np.testing.assert_allclose(est.position_bias_, cold.position_bias_, atol=0.02)
    assert est.objective_trace_[-1] == pytest.approx(cold.objective_trace_[-1], rel=1e-8)
    # A bias cut at the longest prompt warm-starts a refit with the same max_distance: the
    # refit starts where the fit ended (it restarted from 0 before).
    est.fit(Xs, y)
    end = est.objective_trace_[-1]
    est.fit(Xs, y)
    assert est.objective_trace_[0] <= end + 1e-9 * abs(end)
    # One token per prompt: nothing to learn, no bias at all.
    one = MixtureCCMCEstimator(max_distance=6, warm_start=True).fit(X, y).fit(X[:, -1:], y)
    np.testing.assert_array_equal(one.position_bias_, [0.0])
    assert one.n_bias_iter_ == 0


def test_a_bias_step_that_does_not_help_is_undone(monkeypatch):
    from types import SimpleNamespace

    from ccmc_estim import mixture

    rng = np.random.default_rng(8)
    model = _random_mixture(rng, 5)  # no position bias: a far-off one is worse
    X, y = _simulate(model, rng, 3000, 6)

    def bad_step(fun, x0, **kwargs):
        return SimpleNamespace(x=x0 + 3.0 * (-1.0) ** np.arange(x0.size))

    monkeypatch.setattr(mixture, "minimize", bad_step)
    est = MixtureCCMCEstimator(max_distance=4).fit(X, y)
    at_zero = MixtureCCMCEstimator(position_bias=np.zeros(5)).fit(X, y)
    assert est.n_bias_iter_ == 0
    np.testing.assert_array_equal(est.position_bias_, np.zeros(5))
    np.testing.assert_array_equal(est.objective_trace_, at_zero.objective_trace_)
    np.testing.assert_array_equal(est.ccmc_.toarray(), at_zero.ccmc_.toarray())
    np.testing.assert_array_equal(est.predict_proba(X[:20]), at_zero.predict_proba(X[:20]))


def test_generation_compiles_once_for_every_mixture(rng):
    # Plain and positional copy parts, fresh, pickled and copied: one compiled signature (a
    # writable array is another type to numba, and a new compilation of seconds).
    import copy
    import pickle

    from ccmc_estim import _kernels, generate

    models = [_random_mixture(rng, 5), _random_mixture(rng, 5, bias=np.array([0.0, 1.0]))]
    sparse_copy = models[0].ccmc.toarray()
    sparse_copy[sparse_copy < 0] = 0.0
    models.append(MixtureCCMC(CCMC(sparse.csc_array(sparse_copy)), models[0].base_chain,
                              models[0].copy_weight))
    models += [pickle.loads(pickle.dumps(m)) for m in models]
    models += [copy.deepcopy(m) for m in models[:3]]
    X = rng.integers(0, 5, (500, 6))
    models.append(MixtureCCMCEstimator(sparse=True).fit(X, X[:, 2]).model_)
    for m in models:
        generate(m, [1, 2, 3], 4, random_state=0)
    assert len(_kernels.generate_mixture.signatures) == 1


def test_a_bias_too_large_for_memory_is_refused_before_the_fit(monkeypatch):
    from ccmc_estim import _stats

    monkeypatch.setattr(_stats, "_physical_memory", lambda: 2 * 8 * 1500 * 7)
    X = np.tile(np.arange(8), (1500, 1))
    y = X[:, 3]
    MixtureCCMCEstimator(max_distance=5).fit(X, y)  # 1,500 x 6 buckets: within the budget
    with pytest.raises(ValueError, match="max_distance=7 distances would need"):
        MixtureCCMCEstimator(max_distance=7).fit(X, y)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 7), st.integers(0, 5), st.booleans(), st.data())
def test_positional_probabilities_match_numpy_twin_property(K, D, with_unknown, data):
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    bias = np.concatenate([[0.0], rng.normal(0, 2, D)])
    model = _random_mixture(rng, K, 0 if with_unknown else None, bias)
    prompts = [rng.integers(0, K, int(rng.integers(1, 12))) for _ in range(15)]
    P = model.predict_proba(prompts)
    np.testing.assert_allclose(P, _reference_proba(model, prompts), rtol=1e-11, atol=1e-15)
    y = rng.integers(0, K, len(prompts))
    np.testing.assert_allclose(model.log_likelihood(prompts, y),
                               np.log(P[np.arange(len(y)), y]), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("seed", range(3))
def test_em_with_learned_bias_is_monotone_and_deterministic(seed):
    rng = np.random.default_rng(100 + seed)
    K = int(rng.integers(3, 8))
    truth = _random_mixture(rng, K, bias=np.concatenate([[0.0], rng.normal(0, 1, 3)]))
    X, y = _simulate(truth, rng, 2000, int(rng.integers(2, 12)))
    est = MixtureCCMCEstimator(max_distance=int(rng.integers(1, 6)),
                               alpha=float(rng.uniform(0.1, 3)),
                               unknown_id=(None, 0)[seed % 2],
                               copy_weight=("per_query", "shared")[seed % 2]).fit(X, y)
    trace = est.objective_trace_
    assert trace.size == est.n_iter_ + est.n_bias_iter_ + 1
    assert np.all(np.diff(trace) <= 1e-10 * abs(trace[0])), np.diff(trace).max()
    again = clone(est).fit(X, y)
    np.testing.assert_array_equal(again.objective_trace_, trace)
    np.testing.assert_array_equal(again.position_bias_, est.position_bias_)


def test_a_base_chain_without_counts_scores_by_its_prior():
    # No stored count at all (a chain of its prior alone): it used to index an empty array.
    chain = BaseChain(sparse.csc_array((3, 3)), np.ones(3), np.array([0.5, 0.25, 0.25]))
    np.testing.assert_allclose(chain.log_proba([0, 2], [1, 0]), np.log([0.25, 0.5]))
    model = MixtureCCMC(CCMC(np.zeros((3, 3))), chain, [0.5, 0.5, 0.5])
    np.testing.assert_allclose(model.log_likelihood([[0, 0, 1]], [2]), np.log(0.5 * 0.25))


def test_a_new_bias_recounts_the_layout_as_a_fresh_one_would(rng, monkeypatch):
    """A bias step lays the copy part out again by recomputing only the counts: equal, to
    the last bit, to a layout built from scratch at that bias, on threads too."""
    from dataclasses import replace

    from ccmc_estim import _columns, _solvers, mixture

    monkeypatch.setattr(_solvers, "THREAD_MIN_WORK", 0)
    monkeypatch.setattr(_columns, "THREAD_MIN_WORK", 0)
    K, D, n = 8, 5, 400
    indptr = np.concatenate([[0], np.cumsum(rng.integers(1, 12, n))])
    flat = rng.integers(0, K, indptr[-1]).astype(np.int32)
    y = np.where(rng.random(n) < 0.7, flat[indptr[:-1]], rng.integers(0, K, n))
    w = rng.uniform(0.5, 2.0, n)
    config = MixtureCCMCEstimator(unknown_id=0, max_distance=D, n_jobs=2)._em_config()
    block = mixture._EMBlock(flat, indptr, y, w, K, 0, K, config)
    assert len(block.chunks) == 2
    bias = np.concatenate([[0.0], rng.normal(0, 1, D)])
    new = block.with_bias(bias).problem
    fresh = mixture._EMBlock(flat, indptr, y, w, K, 0, K,
                             replace(config, position_bias=bias)).problem
    for name in ("col_ptr", "indptr", "local", "count", "y_entry", "id_ptr", "id_tokens",
                 "rows", "weight"):
        np.testing.assert_array_equal(getattr(new, name), getattr(fresh, name), err_msg=name)
    assert not np.array_equal(new.count, block.problem.count)  # the old layout is untouched


def test_expected_counts_are_the_per_column_and_per_key_sums(rng):
    """The M-step's and inner steps' expected counts (one compiled pass): per query column the
    weight copied, per base-chain key the weight generated, as plain numpy sums them."""
    from ccmc_estim import mixture

    K, n = 9, 300
    indptr = np.concatenate([[0], np.cumsum(rng.integers(1, 10, n))])
    flat = rng.integers(0, K, indptr[-1]).astype(np.int32)
    y = rng.integers(0, K, n)
    w = rng.uniform(0.5, 2.0, n)
    config = MixtureCCMCEstimator(unknown_id=0)._em_config()
    block = mixture._EMBlock(flat, indptr, y, w, K, 0, K, config)
    r = rng.random(n)
    wr, c = block._sums(r)
    q = flat[indptr[1:] - 1]
    np.testing.assert_allclose(wr, [np.sum(w * r * (q == k)) for k in range(K)], rtol=1e-14)
    keys = q.astype(np.int64) * K + y
    np.testing.assert_allclose(c, [np.sum(w * (1 - r) * (keys == k)) for k in block.keys],
                               rtol=1e-14)


# --------------------------------------------------------------------------- sentinel
@pytest.mark.parametrize("seed", range(3))
def test_sentinel_em_is_monotone_deterministic_and_scores_its_objective(seed):
    rng = np.random.default_rng(seed)
    model = _random_mixture(rng, int(rng.integers(3, 9)), sentinel=True)
    X, y = _simulate(model, rng, 1500, int(rng.integers(2, 12)))
    alpha = float(rng.uniform(0.1, 3))
    for acceleration, inner_steps in itertools.product(("squarem", None), (5, 0)):
        est = MixtureCCMCEstimator(alpha=alpha, acceleration=acceleration,
                                   inner_steps=inner_steps, copy_weight="sentinel").fit(X, y)
        trace = est.objective_trace_
        assert np.all(np.diff(trace) <= 1e-10 * abs(trace[0])), np.diff(trace).max()
        again = clone(est).fit(X, y)
        np.testing.assert_array_equal(again.objective_trace_, trace)
        np.testing.assert_array_equal(again.sentinel_, est.sentinel_)
    # The objective is minus the model's log-likelihood plus the penalty of the copy part's
    # logits, sentinel logits included (centring moves both alike and keeps the model).
    ll = est.score_samples(X, y).sum()
    assert est.log_likelihood_ == pytest.approx(ll, rel=1e-12)
    # The stored copy weight is each query's mean attention over its training prompts that
    # hold something to copy, weighted.
    w = rng.uniform(0.5, 2.0, y.size)
    est = MixtureCCMCEstimator(copy_weight="sentinel", unknown_id=0).fit(X, y, sample_weight=w)
    lam = est.model_.prompt_copy_weights(X)
    q = X[:, -1]
    has = (X != 0).any(axis=1)
    for k in np.unique(q):
        sel = (q == k) & has
        expected = np.average(lam[sel], weights=w[sel]) if sel.any() else 0.0
        np.testing.assert_allclose(est.copy_weight_[k], expected, rtol=1e-10, atol=1e-300)


def test_sentinel_recovers_known_parameters():
    rng = np.random.default_rng(1)
    K = 6
    W = rng.normal(0, 1.0, (K, K))
    counts = sparse.csc_array(np.full((K, K), 1000.0) * rng.dirichlet(np.ones(K), K).T)
    sentinel = rng.normal(1.0, 0.7, K)
    truth = MixtureCCMC(CCMC(W), BaseChain(counts, np.zeros(K), np.full(K, 1 / K)),
                        np.full(K, 0.5), sentinel=sentinel)
    X, y = _simulate(truth, rng, 60_000, 5)
    est = MixtureCCMCEstimator(alpha=1e-3, tol=1e-10, copy_weight="sentinel").fit(X, y)
    # Logits and sentinel are identified up to one shift per column.
    shift = W.mean(axis=0) - est.ccmc_.toarray().mean(axis=0)
    np.testing.assert_allclose(est.sentinel_ + shift, sentinel, atol=0.15)
    assert np.sqrt(np.mean((est.ccmc_.toarray() + shift - W) ** 2)) < 0.2
    Xt, yt = _simulate(truth, rng, 20_000, 5)
    np.testing.assert_allclose(est.predict_proba(Xt[:200]), truth.predict_proba(Xt[:200]),
                               atol=0.03)
    assert est.score(Xt, yt) > truth.log_likelihood(Xt, yt).mean() - 0.005
    # A per-query copy weight is another model: it explains these data less well.
    per_query = MixtureCCMCEstimator(alpha=1e-3).fit(X, y)
    assert per_query.score(Xt, yt) < est.score(Xt, yt) - 0.005


def test_sentinel_generation_follows_the_model_and_files_keep_it(rng, tmp_path):
    # With a bias by distance too: the attention against the sentinel is exp(W + b) summed.
    model = _random_mixture(rng, 6, unknown_id=5, bias=np.array([0.0, 2.5, -1.0, 0.4]),
                            sentinel=True)
    prompt = np.array([1, 3, 2, 5, 4, 1, 0, 2])
    _check_three_steps(model, prompt)
    save_model(model, tmp_path / "m.npz")
    back = load_model(tmp_path / "m.npz").model
    np.testing.assert_array_equal(back.sentinel, model.sentinel)
    np.testing.assert_array_equal(back.predict_proba([prompt]), model.predict_proba([prompt]))
    import pickle

    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.predict_proba([prompt]), model.predict_proba([prompt]))
    assert not again.sentinel.flags.writeable


def test_sentinel_storage_and_refusals():
    rng = np.random.default_rng(5)
    model = _random_mixture(rng, 7, unknown_id=0, sentinel=True)
    X, y = _simulate(model, rng, 2000, 6)
    kw = dict(copy_weight="sentinel", unknown_id=0, tol=1e-9)
    dense = MixtureCCMCEstimator(sparse=False, **kw).fit(X, y)
    sp = MixtureCCMCEstimator(sparse=True, **kw).fit(X, y)
    np.testing.assert_array_equal(dense.sentinel_, sp.sentinel_)
    np.testing.assert_allclose(sp.predict_proba(X[:100]), dense.predict_proba(X[:100]),
                               rtol=1e-13, atol=1e-15)
    # The sentinel logits count among the free parameters, each column's shift does not, and
    # no copy weight does: the sentinel fit's logits replace the per-query fit's copy weights.
    assert dense.n_free_params_ == sp.n_free_params_
    n_base = dense.n_free_params_ - sp.ccmc_.logits.nnz
    per_query = MixtureCCMCEstimator(unknown_id=0, sparse=True).fit(X, y)
    n_cols = np.count_nonzero(np.diff(per_query.ccmc_.logits.indptr))
    assert per_query.n_free_params_ == (per_query.ccmc_.logits.nnz - n_cols
                                        + np.unique(X[(X != 0).any(axis=1), -1]).size
                                        + n_base)
    with pytest.raises(ValueError, match="position bias"):
        MixtureCCMCEstimator(copy_weight="sentinel", max_distance=3).fit(X, y)
    with pytest.raises(ValueError, match="ecme"):
        MixtureCCMCEstimator(copy_weight="sentinel", algorithm="em").fit(X, y)
