import pickle

import numpy as np
import pytest
from conftest import ccmc_proba_reference
from scipy import stats as sps

from ccmc_estim import CCMC, attention_forward, make_ccmc_data


def _attention_brute_force(E, W_att, C, prompt):
    """Independent loop over positions: scores, softmax, value sum, head."""
    q = E[prompt[-1]]
    scores = np.array([E[t] @ W_att @ q for t in prompt])
    s = np.exp(scores - scores.max())
    s /= s.sum()
    value = sum(s_i * E[t] for s_i, t in zip(s, prompt, strict=True))
    return C @ value


@pytest.mark.parametrize("K, d", [(5, 5), (6, 9), (12, 20)])
def test_ccmc_equals_brute_force_attention(rng, K, d):
    E = rng.standard_normal((K, d))
    W_att = rng.standard_normal((d, d)) / np.sqrt(d)
    C = np.linalg.pinv(E).T
    model = CCMC.from_attention(E, W_att, C)
    prompts = [rng.integers(0, K, size=rng.integers(1, 15)) for _ in range(60)]
    brute = np.array([_attention_brute_force(E, W_att, C, p) for p in prompts])
    np.testing.assert_allclose(model.predict_proba(prompts), brute, atol=1e-12, rtol=0)
    np.testing.assert_allclose(attention_forward(E, W_att, C, prompts), brute, atol=1e-12)
    # to_attention round trip, with the identity and with a random rotation.
    for d2 in (None, d + 3):
        E2, W2, C2 = model.to_attention(d=d2, random_state=0)
        np.testing.assert_allclose(C2 @ E2.T, np.eye(K), atol=1e-12)
        back = np.array([_attention_brute_force(E2, W2, C2, p) for p in prompts])
        np.testing.assert_allclose(back, brute, atol=1e-12)
        np.testing.assert_allclose(CCMC.from_attention(E2, W2, C2).logits, model.logits, atol=1e-12)


def test_from_attention_errors(rng):
    E = rng.standard_normal((4, 6))
    W = rng.standard_normal((6, 6))
    with pytest.raises(ValueError, match="not tied"):
        CCMC.from_attention(E, W, rng.standard_normal((4, 6)))
    with pytest.raises(ValueError, match="d >= K"):
        CCMC.from_attention(E.T, rng.standard_normal((4, 4)))
    with pytest.raises(ValueError, match="W_att must have shape"):
        CCMC.from_attention(E, W[:3])
    E[3] = E[0]
    with pytest.raises(ValueError, match="full row rank"):
        CCMC.from_attention(E, W)


def test_reference_and_log_proba(rng):
    model = CCMC(rng.standard_normal((7, 7)) * 3)
    prompts = [rng.integers(0, 7, size=rng.integers(1, 10)) for _ in range(50)]
    P = model.predict_proba(prompts)
    np.testing.assert_allclose(P, ccmc_proba_reference(model.logits, prompts), atol=1e-13)
    with np.errstate(all="raise"):
        logP = model.predict_log_proba(prompts)
    absent = P == 0
    assert np.isneginf(logP[absent]).all()
    np.testing.assert_allclose(np.exp(logP[~absent]), P[~absent], rtol=1e-13)
    for i, p in enumerate(prompts):
        assert set(np.flatnonzero(P[i])) == set(p.tolist())
    y = np.array([p[0] for p in prompts])
    np.testing.assert_allclose(model.log_likelihood(prompts, y), np.log(P[np.arange(50), y]))
    y_absent = np.array([next(k for k in range(7) if k not in p) if len(set(p)) < 7 else p[0]
                         for p in prompts])
    with np.errstate(all="raise"):
        ll = model.log_likelihood(prompts, y_absent)
    assert np.isneginf(ll[[y_absent[i] not in prompts[i] for i in range(50)]]).all()


def test_extreme_logits_no_overflow(rng):
    logits = rng.choice([-700.0, 700.0, 0.0], size=(5, 5))
    model = CCMC(logits)
    prompts = rng.integers(0, 5, size=(40, 6))
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        P = model.predict_proba(prompts)
    assert np.isfinite(P).all()
    np.testing.assert_allclose(P.sum(axis=1), 1.0)


def test_column_shift_invariance(rng):
    logits = rng.standard_normal((6, 6))
    shifted = logits + rng.standard_normal(6)[None, :] * 50
    prompts = rng.integers(0, 6, size=(30, 5))
    np.testing.assert_allclose(
        CCMC(logits).predict_proba(prompts), CCMC(shifted).predict_proba(prompts), atol=1e-12
    )


def test_full_prompt_gives_base_chain(rng):
    model = CCMC(rng.standard_normal((6, 6)))
    T = model.transition_matrix
    np.testing.assert_allclose(T.sum(axis=1), 1.0)
    for q in range(6):
        prompt = [k for k in rng.permutation(6) if k != q] + [q]
        np.testing.assert_allclose(model.predict_proba([prompt])[0], T[q], atol=1e-14)


def test_stationary_distribution(rng):
    model = CCMC(rng.standard_normal((8, 8)) * 2)
    pi = model.stationary_distribution()
    np.testing.assert_allclose(pi @ model.transition_matrix, pi, atol=1e-12)
    assert pi.min() > 0 and abs(pi.sum() - 1) < 1e-12


def test_sampling_frequencies_match_proba():
    model = CCMC(np.random.default_rng(3).standard_normal((5, 5)))
    prompt = [0, 1, 1, 2, 3, 3, 3, 4, 2]
    n = 200_000
    draws = model.sample([prompt] * n, random_state=7)
    observed = np.bincount(draws, minlength=5)
    expected = model.predict_proba([prompt])[0] * n
    chi2 = ((observed - expected) ** 2 / expected).sum()
    # 4 degrees of freedom: the 0.999 quantile, so a correct sampler fails once in 1000 seeds.
    assert chi2 < sps.chi2.ppf(0.999, df=4), chi2
    # Reproducible and only tokens of the prompt.
    np.testing.assert_array_equal(draws[:100], model.sample([prompt] * 100, random_state=7))
    assert set(np.unique(model.sample([[1, 3]] * 500, random_state=0))) <= {1, 3}


def test_model_validation_and_pickle():
    with pytest.raises(ValueError, match="square"):
        CCMC(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="finite"):
        CCMC([[0, np.inf], [0, 0]])
    model = CCMC(np.eye(3))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.predict_proba([[0, 3]])
    assert pickle.loads(pickle.dumps(model)) == model
    with pytest.raises(ValueError):
        model.logits[0, 0] = 1.0


def test_make_ccmc_data_shapes_and_coverage():
    X, y, _ = make_ccmc_data(500, 6, 7, random_state=0)
    assert X.shape == (500, 7) and y.shape == (500,)
    assert all(y[i] in X[i] for i in range(500))
    Xr, _, _ = make_ccmc_data(300, 6, (2, 9), token_distribution="zipf", random_state=1)
    lengths = [len(p) for p in Xr]
    assert min(lengths) >= 2 and max(lengths) <= 9 and len(set(lengths)) > 3
    X2, y2, _ = make_ccmc_data(500, 6, 7, random_state=0)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    with pytest.raises(ValueError, match="token_distribution"):
        make_ccmc_data(10, 3, 4, token_distribution="pareto")
    with pytest.raises(ValueError, match="prompt_length"):
        make_ccmc_data(10, 3, (5, 2))
