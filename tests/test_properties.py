"""Property-based consistency suite, built on the public strategies of ccmc_estim.testing."""

import warnings

import numpy as np
import pytest
from conftest import ccmc_proba_reference
from hypothesis import given, settings
from hypothesis import strategies as st

from ccmc_estim import CCMC, CCMCEstimator, attention_forward, identifiability_report
from ccmc_estim.testing import ccmc_datasets, ccmc_models, prompt_sets, tied_attention_layers


@given(tied_attention_layers(), st.data())
def test_ccmc_equals_attention(layer, data):
    E, W_att, C = layer
    K = E.shape[0]
    prompts = data.draw(prompt_sets(K, max_prompts=20, ragged=True))
    model = CCMC.from_attention(E, W_att, C, atol=1e-6)
    np.testing.assert_allclose(model.predict_proba(prompts),
                               attention_forward(E, W_att, C, prompts), atol=1e-9)


@given(ccmc_models(), st.data())
def test_column_shift_and_permutation_invariance(model, data):
    K = model.n_tokens
    prompts = data.draw(prompt_sets(K, ragged=True))
    shift = data.draw(st.lists(st.floats(-50, 50), min_size=K, max_size=K))
    shifted = CCMC(model.logits + np.array(shift)[None, :])
    P = model.predict_proba(prompts)
    np.testing.assert_allclose(shifted.predict_proba(prompts), P, atol=1e-12)
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    permuted = [np.append(rng.permutation(p[:-1]), p[-1]) for p in prompts]
    np.testing.assert_array_equal(model.predict_proba(permuted), P)
    np.testing.assert_allclose(P, ccmc_proba_reference(model.logits, prompts), atol=1e-13)


@given(ccmc_datasets(min_prompts=5), st.data())
def test_weights_equal_duplicates_and_input_forms(dataset, data):
    prompts, outputs, _ = dataset
    n = len(outputs)
    reps = np.array(data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
    if reps.sum() == 0:
        reps[0] = 1
    K = int(max(max(p.max() for p in prompts), outputs.max())) + 1
    weighted = CCMCEstimator(n_tokens=K, tol=1e-10).fit(prompts, outputs, sample_weight=reps)
    idx = np.repeat(np.arange(n), reps)
    dup = CCMCEstimator(n_tokens=K, tol=1e-10).fit([prompts[i] for i in idx], outputs[idx])
    np.testing.assert_allclose(weighted.logits_, dup.logits_, atol=1e-6)
    as_list = CCMCEstimator(n_tokens=K).fit([list(map(int, p)) for p in prompts], outputs)
    as_arrays = CCMCEstimator(n_tokens=K).fit(list(prompts), outputs)
    np.testing.assert_array_equal(as_list.logits_, as_arrays.logits_)


def _kkt_residual(est, prompts, outputs, alpha):
    """Largest gradient component of the penalised objective, per column scaled by its weight,
    from the numpy formula (independent of the compiled kernels)."""
    K = est.n_tokens_
    P = ccmc_proba_reference(est.logits_, prompts)
    grad = np.zeros((K, K))
    for i, p in enumerate(prompts):
        grad[:, p[-1]] += P[i]
        grad[outputs[i], p[-1]] -= 1.0
    grad += alpha * est.logits_
    grad[~est.identified_] = 0.0
    counts = np.bincount([p[-1] for p in prompts], minlength=K)
    return (np.abs(grad).max(axis=0) / np.maximum(counts, 1)).max()


@given(ccmc_datasets(), st.sampled_from([1e-2, 1.0, 10.0]))
def test_fit_satisfies_kkt(dataset, alpha):
    prompts, outputs, _ = dataset
    est = CCMCEstimator(alpha=alpha, tol=1e-8).fit(prompts, outputs)
    assert _kkt_residual(est, prompts, outputs, alpha) <= 1e-7


@given(ccmc_datasets(max_prompts=40, max_length=5))
def test_existence_condition_predicts_bounded_mle(dataset):
    prompts, outputs, _ = dataset
    report = identifiability_report(prompts, outputs)
    fits = []
    for tol in (1e-4, 1e-11):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fits.append(CCMCEstimator(alpha=0, tol=tol, max_iter=500).fit(prompts, outputs))
    K = fits[0].n_tokens_
    for q in np.flatnonzero(report.queried):
        ident = fits[0].identified_[:, q]
        spread = [np.ptp(f.logits_[ident, q]) for f in fits]
        if report.mle_exists[q]:
            # Bounded: the estimate is the same whatever the tolerance.
            assert abs(spread[1] - spread[0]) < 1e-2, (q, spread)
        else:
            # Unbounded: a tighter tolerance drives some logits further out.
            assert spread[1] > spread[0] + 5, (q, spread)
    assert K == report.n_tokens


@settings(max_examples=8)
@given(ccmc_models(min_tokens=3, max_tokens=4, logit_scale=(0.2, 1.5)), st.integers(0, 10_000))
def test_teacher_student_consistency(model, seed):
    from ccmc_estim import make_ccmc_data

    K = model.n_tokens
    truth = model.logits - model.logits.mean(axis=0)
    errors = []
    for n in (300 * K, 30_000 * K):
        sq = []
        for rep in range(6):  # pooled over replicates: >= 36 free parameters per point
            X, y, _ = make_ccmc_data(n, K, 6, logits=model.logits, random_state=seed + rep)
            est = CCMCEstimator(alpha=1e-2).fit(X, y)
            sq.append((est.logits_ - truth)[est.identified_] ** 2)
        errors.append(np.mean(sq))
    # Expected ratio 100 (error ~ K^2 / n); 10 leaves a wide margin for sampling noise.
    assert errors[1] < errors[0] / 10, errors


@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 3))
def test_two_token_closed_form(n_other, n_query, m_other):
    # Prompts [1]*m_other + [0]: query 0, counts (1, m_other).  With n_other outputs 1 and
    # n_query outputs 0, the MLE of d = W[1, 0] - W[0, 0] solves
    # m e^d / (1 + m e^d) = n_other / n, i.e. d = log(n_other / (m n_query)).
    prompt = [1] * m_other + [0]
    X = [prompt] * (n_other + n_query)
    y = [1] * n_other + [0] * n_query
    est = CCMCEstimator(alpha=0, tol=1e-12).fit(X, y)
    d = np.log(n_other / (m_other * n_query))
    np.testing.assert_allclose(est.logits_[:, 0], [-d / 2, d / 2], atol=1e-8)


@pytest.mark.parametrize("self_dominant", [True, False])
@given(data=st.data())
def test_model_strategy_self_dominance(self_dominant, data):
    model = data.draw(ccmc_models(self_dominant=self_dominant))
    W = model.logits
    dominant = [k for k in range(model.n_tokens)
                if W[k, k] > np.delete(W[:, k], k).max()]
    assert dominant == ([0] if self_dominant else [])
