import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import logsumexp

from ccmc_estim import (
    CCMC,
    CCMCEstimator,
    PositionalCCMC,
    PositionalCCMCEstimator,
    attention_forward,
    generate,
    likelihood_ratio_test,
)


def _brute_force(E, W_att, C, bias, prompt):
    """Attention with an additive relative bias, position by position."""
    q = E[prompt[-1]]
    L = len(prompt)
    scores = np.array([E[t] @ W_att @ q + bias[min(L - 1 - i, len(bias) - 1)]
                       for i, t in enumerate(prompt)])
    s = np.exp(scores - scores.max())
    s /= s.sum()
    return C @ sum(si * E[t] for si, t in zip(s, prompt, strict=True))


def _nll(logits, bias, X, outputs):
    """numpy twin of the positional NLL, for a 2-D array of prompts."""
    X = np.asarray(X)
    L = X.shape[1]
    bias = np.asarray(bias)
    z = logits[X, X[:, -1:]] + bias[np.minimum(np.arange(L)[::-1], bias.size - 1)]
    hit = X == np.asarray(outputs)[:, None]
    return -np.sum(logsumexp(np.where(hit, z, -np.inf), axis=1) - logsumexp(z, axis=1))


def _assert_monotone(est):
    path = est.objective_path_
    assert np.all(np.diff(path) <= 1e-10 * abs(path[0])), path


def test_equals_brute_force_attention(rng):
    K, d = 5, 7
    E = rng.standard_normal((K, d))
    W_att = rng.standard_normal((d, d)) / np.sqrt(d)
    C = np.linalg.pinv(E).T
    bias = np.array([0.0, -0.4, 0.3, -1.2])
    model = PositionalCCMC.from_attention(E, W_att, bias, C)
    prompts = [rng.integers(0, K, size=rng.integers(1, 12)) for _ in range(50)]
    brute = np.array([_brute_force(E, W_att, C, bias, p) for p in prompts])
    np.testing.assert_allclose(model.predict_proba(prompts), brute, atol=1e-12)
    np.testing.assert_allclose(attention_forward(E, W_att, C, prompts, bias), brute, atol=1e-12)
    # The gauge: a constant added to the bias changes nothing.
    shifted = PositionalCCMC(model.logits, bias + 3.0)
    np.testing.assert_allclose(shifted.predict_proba(prompts), brute, atol=1e-12)
    np.testing.assert_allclose(shifted.position_bias, model.position_bias, atol=1e-15)
    E2, W2, C2, b2 = model.to_attention(d=d + 1, random_state=0)
    np.testing.assert_allclose(attention_forward(E2, W2, C2, prompts, b2), brute, atol=1e-12)


def test_zero_bias_is_plain_ccmc(rng):
    W = rng.standard_normal((6, 6))
    prompts = [rng.integers(0, 6, size=rng.integers(1, 10)) for _ in range(40)]
    np.testing.assert_allclose(PositionalCCMC(W, np.zeros(4)).predict_proba(prompts),
                               CCMC(W).predict_proba(prompts), atol=1e-14)
    y = CCMC(W).sample(prompts, random_state=0)
    plain = CCMCEstimator(alpha=0.5).fit(prompts, y)
    fixed = PositionalCCMCEstimator(alpha=0.5, position_bias=np.zeros(3)).fit(prompts, y)
    np.testing.assert_allclose(fixed.logits_, plain.logits_, atol=1e-12)


def test_fixed_bias_fit_equals_independent_optimum(rng):
    bias = np.array([0.0, -0.7, -1.4])
    truth = PositionalCCMC(rng.standard_normal((4, 4)), bias)
    X = rng.integers(0, 4, size=(300, 6))
    y = truth.sample(X, random_state=1)
    alpha = 0.3
    est = PositionalCCMCEstimator(alpha=alpha, position_bias=bias, tol=1e-10).fit(X, y)
    mask = est.identified_

    def objective(v):
        W = np.zeros((4, 4))
        W[mask] = v
        return _nll(W, bias, X, y) + 0.5 * alpha * v @ v

    res = minimize(objective, np.zeros(mask.sum()), method="BFGS", options={"gtol": 1e-9})
    assert est.objective_ == pytest.approx(res.fun, rel=1e-9)
    W = np.zeros((4, 4))
    W[mask] = res.x
    np.testing.assert_allclose(est.logits_, W - W.mean(axis=0), atol=1e-5)
    np.testing.assert_array_equal(est.position_bias_, bias)


def test_joint_objective_matches_numpy_and_is_monotone(rng):
    truth = PositionalCCMC(rng.standard_normal((4, 4)), [0.0, -0.5, -1.0, -1.5])
    X = rng.integers(0, 4, size=(400, 7))
    y = truth.sample(X, random_state=2)
    est = PositionalCCMCEstimator(max_distance=3, alpha=0.2, n_restarts=3, random_state=0,
                                  tol=1e-9).fit(X, y)
    _assert_monotone(est)
    W, b = est.logits_, est.position_bias_
    expected = _nll(W, b, X, y) + 0.1 * (np.sum(W[est.identified_] ** 2) + b @ b)
    assert est.objective_ == pytest.approx(expected, rel=1e-9)
    assert est.n_free_params_ == est.identifiability_.n_free_params + 3
    assert est.score(X, y) == pytest.approx(
        -_nll(W, b, X, y) / len(y), rel=1e-12)


def test_recovery_improves_with_n():
    rng = np.random.default_rng(0)
    K, slope = 6, 0.4
    bias = -slope * np.arange(7)  # ALiBi-like
    W = rng.standard_normal((K, K))
    truth = PositionalCCMC(W, bias)
    errs = []
    for n in (2_000, 20_000, 200_000):
        X = rng.integers(0, K, size=(n, 10))
        y = truth.sample(X, random_state=n)
        est = PositionalCCMCEstimator(max_distance=6, alpha=1e-2).fit(X, y)
        _assert_monotone(est)
        errs.append((np.sqrt(np.mean((est.position_bias_ - bias) ** 2)),
                     np.sqrt(np.mean((est.logits_ - (W - W.mean(0))) ** 2))))
    errs = np.array(errs)
    assert (errs[1:] < errs[:-1] / 2).all(), errs
    assert errs[-1, 0] < 0.05 and errs[-1, 1] < 0.05


def test_likelihood_ratio_detects_position_bias():
    rng = np.random.default_rng(3)
    W = rng.standard_normal((5, 5))
    X = rng.integers(0, 5, size=(5_000, 8))
    for bias, significant in ((-0.3 * np.arange(5), True), (np.zeros(5), False)):
        y = PositionalCCMC(W, bias).sample(X, random_state=4)
        full = PositionalCCMCEstimator(max_distance=4, alpha=1e-6).fit(X, y)
        plain = CCMCEstimator(alpha=1e-6).fit(X, y)
        stat, df, p = likelihood_ratio_test(full, plain)
        assert df == 4 and stat >= -1e-6
        assert (p < 1e-6) if significant else (p > 1e-3), (stat, p)


def test_positional_generation_matches_reference():
    rng = np.random.default_rng(5)
    model = PositionalCCMC(rng.standard_normal((5, 5)), [0.0, -0.5, -2.0])
    prompt = [0, 1, 2, 3, 4, 1, 1]
    for window in (None, 4, 9):
        got = generate(model, prompt, 200, window=window, random_state=7)
        u = np.random.default_rng(7).random(200)
        context = list(prompt)
        for t in range(200):
            ctx = context if window is None else context[-window:]
            p = model.predict_proba([ctx])[0]
            y = np.flatnonzero(p)[np.searchsorted(np.cumsum(p[p > 0]), u[t], side="right")]
            assert got[t] == y, (window, t)
            context.append(y)


def test_positional_validation():
    with pytest.raises(ValueError, match="position_bias"):
        PositionalCCMC(np.zeros((2, 2)), [])
    with pytest.raises(ValueError, match="spans 800"):
        PositionalCCMC(np.zeros((2, 2)), [0.0, 800.0])
    # The widest supported bias still gives finite probabilities for a one-token prompt.
    with np.errstate(over="raise", invalid="raise"):
        P = PositionalCCMC(np.zeros((2, 2)), [0.0, 700.0]).predict_proba([[1], [0, 1]])
    np.testing.assert_allclose(P, [[0.0, 1.0], [1.0, np.exp(-700.0)]], rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="max_distance"):
        PositionalCCMCEstimator(max_distance=-1).fit([[0, 1]], [1])
    with pytest.raises(ValueError, match="n_restarts"):
        PositionalCCMCEstimator(n_restarts=0).fit([[0, 1]], [1])
