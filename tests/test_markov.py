"""Stationary distributions of the base chain (dense and sparse logits) and winner analysis."""

import tracemalloc
import warnings

import numpy as np
import pytest
from scipy import sparse
from scipy.special import softmax

from ccmc_estim import CCMC, winner_analysis
from ccmc_estim._markov import (
    _gth,
    _log_gth,
    stationary,
    stationary_from_logits,
    stationary_log,
    support_block,
    transition_operator,
    transition_row,
)
from ccmc_estim.generation import _integrate, _is_stable, _mean_field_drift, _polish


def eig_reference(W):
    """Plain numpy reference: the left Perron eigenvector of softmax(W, axis=0).T."""
    P = softmax(W, axis=0).T
    w, v = np.linalg.eig(P.T)
    p = np.real(v[:, np.argmin(np.abs(w - 1))])
    return p / p.sum()


def sparse_twin(rng, K, scale, density):
    """Random logits with entries deleted: dense twin (0 there) and CSC (not stored)."""
    W = rng.standard_normal((K, K)) * scale
    W[rng.random((K, K)) > density] = 0.0
    return W, sparse.csc_array(W)


# --------------------------------------------------------------------------- dense
@pytest.mark.parametrize("K", [1, 2, 3, 7, 40, 150])
def test_dense_matches_eigenvector_reference(K):
    rng = np.random.default_rng(K)
    for scale in (0.5, 2.0):
        W = rng.standard_normal((K, K)) * scale
        ref = eig_reference(W)
        np.testing.assert_allclose(stationary_from_logits(W), ref, rtol=0, atol=1e-12)
        # Both GTH variants on their own, whatever the automatic choice.
        logP = (W - np.log(np.exp(W).sum(axis=0))).T
        np.testing.assert_allclose(_gth(np.exp(logP)), ref, rtol=0, atol=1e-12)
        np.testing.assert_allclose(np.exp(_log_gth(logP)), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("a", [40.0, 100.0, 1e4])
def test_symmetric_extreme_diagonal(a):
    # Log-probabilities of size a carry rounding a * eps: that is the attainable accuracy.
    rtol = 4 * a * np.finfo(float).eps
    for W in (a * np.eye(3), sparse.csc_array(a * np.eye(3))):
        np.testing.assert_allclose(stationary_from_logits(W), 1 / 3, rtol=rtol)
    np.testing.assert_allclose(CCMC(a * np.eye(3)).stationary_distribution(), 1 / 3, rtol=rtol)


@pytest.mark.parametrize("a", [30.0, 800.0, 1e4])
def test_nearly_decomposable_blocks(a):
    # Two blocks {0, 1, 2} and {3, 4, 5}, strongly coupled inside and symmetric under the
    # swap of the blocks and the rotation inside each: pi is uniform, although the coupling
    # between the blocks, exp(-a), underflows for a = 800 and 1e4.
    W = np.zeros((6, 6))
    for b in (0, 3):
        for i in range(3):
            W[b + (i + 1) % 3, b + i] = a
            W[b + i, b + i] = a / 2
    rtol = 8 * a * np.finfo(float).eps
    pi = stationary_from_logits(W)
    np.testing.assert_allclose(pi, 1 / 6, rtol=rtol)
    np.testing.assert_allclose(stationary_from_logits(sparse.csc_array(W)), 1 / 6, rtol=rtol)
    # Unequal blocks: swapping the roles still gives each block half the mass by symmetry
    # of the leak (both blocks leak to every outside token with the same weight 1).
    W[0, 0] = W[3, 3] = a / 3
    pi = stationary_from_logits(W)
    np.testing.assert_allclose(pi[:3].sum(), 0.5, rtol=rtol)


def test_stationary_of_reducible_matrix():
    # Two closed classes {0} and {1, 2}, transient state 3 absorbed in each with prob 1/2.
    P = np.array([[1.0, 0, 0, 0], [0, 0.5, 0.5, 0], [0, 1.0, 0, 0], [0.25, 0.25, 0, 0.5]])
    pi = stationary(P)
    # From uniform: class {0} gets 1/4 + 1/4 * 1/2, class {1, 2} the rest, split 2:1.
    np.testing.assert_allclose(pi, [0.375, 0.625 * 2 / 3, 0.625 / 3, 0.0], atol=1e-15)
    # Irreducible: GTH, accurate for a nearly decomposable chain.
    eps = 1e-30
    P = np.array([[1 - eps, eps], [2 * eps, 1 - 2 * eps]])
    np.testing.assert_allclose(stationary(P), [2 / 3, 1 / 3], rtol=1e-15)
    with pytest.raises(ValueError, match="square"):
        stationary(np.ones(3))


def test_stationary_log_with_impossible_transitions():
    # A 3-cycle with -inf entries (irreducible): uniform.
    logP = np.full((3, 3), -np.inf)
    logP[0, 1] = logP[1, 2] = logP[2, 0] = 0.0
    np.testing.assert_allclose(stationary_log(logP), 1 / 3, rtol=1e-15)


# --------------------------------------------------------------------------- sparse
@pytest.mark.parametrize("K", [2, 5, 30, 120, 300])
def test_sparse_matches_dense(K):
    rng = np.random.default_rng(100 + K)
    for scale in (0.3, 1.0, 3.0, 30.0, 1e3, 1e4):
        for density in (0.05, 0.3, 0.9):
            W, S = sparse_twin(rng, K, scale, density)
            dense = stationary_from_logits(W)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                np.testing.assert_allclose(stationary_from_logits(S), dense, rtol=0,
                                           atol=1e-10)


@pytest.mark.parametrize("method", ["iterative", "direct"])
def test_sparse_solvers_themselves(method):
    # Moderate random logits and huge diagonal logits: both sparse solvers, no fallback.
    rng = np.random.default_rng(7)
    for K in (3, 40, 250):
        W, S = sparse_twin(rng, K, 1.0, 0.2)
        W[np.diag_indices(K)] = rng.uniform(0, 1e4, K)
        S = sparse.csc_array(W)
        np.testing.assert_allclose(stationary_from_logits(S, method=method),
                                   stationary_from_logits(W), rtol=0, atol=1e-10)


def test_sparse_decomposable_in_floating_point():
    # Two 2-cycles coupled by exp(-1e4): the direct solver handles the vanished rank-one part
    # only if the coupling is representable; here auto hands it to dense log-space GTH.
    W = np.zeros((4, 4))
    W[1, 0] = W[0, 1] = W[3, 2] = W[2, 3] = 1e4
    np.testing.assert_allclose(stationary_from_logits(sparse.csc_array(W)), 0.25, rtol=1e-11)
    with pytest.warns(RuntimeWarning, match="GMRES"), pytest.raises(np.linalg.LinAlgError):
        stationary_from_logits(sparse.csc_array(W), method="iterative")
    with pytest.raises(ValueError, match="method"):
        stationary_from_logits(sparse.csc_array(W), method="eig")


def test_transition_operator_and_row():
    rng = np.random.default_rng(3)
    K = 60
    W, S = sparse_twin(rng, K, 2.0, 0.2)
    W[5, 5] = 900.0  # huge logit: the constant of row 5 underflows to a subnormal or 0
    S = sparse.csc_array(W)
    P = softmax(W, axis=0).T
    op = transition_operator(S)
    v = rng.standard_normal(K)
    V = rng.standard_normal((K, 3))
    np.testing.assert_allclose(op @ v, P @ v, atol=1e-14)
    np.testing.assert_allclose(op.rmatvec(v), P.T @ v, atol=1e-14)
    np.testing.assert_allclose(op @ V, P @ V, atol=1e-14)
    np.testing.assert_allclose(op @ np.eye(K), P, atol=1e-15)
    for q in (0, 5, 17):
        tokens, proba, const = transition_row(S, q)
        row = np.full(K, const)
        row[tokens] = proba
        np.testing.assert_allclose(row, P[q], atol=1e-16)
    pi = stationary_from_logits(S)
    np.testing.assert_allclose(op.rmatvec(pi), pi, atol=1e-15)


def test_support_block_dense_and_sparse():
    rng = np.random.default_rng(0)
    W, S = sparse_twin(rng, 20, 1.0, 0.3)
    sup = np.array([1, 4, 7, 19])
    np.testing.assert_array_equal(support_block(S, sup), W[np.ix_(sup, sup)])
    np.testing.assert_array_equal(support_block(W, sup), W[np.ix_(sup, sup)])
    np.testing.assert_array_equal(support_block(sparse.csc_array(W != 0), sup),
                                  (W != 0)[np.ix_(sup, sup)])


def test_sparse_large_vocabulary_memory():
    K, nnz = 50_257, 1_000_000
    rng = np.random.default_rng(0)
    S = sparse.csc_array((rng.standard_normal(nnz), (rng.integers(0, K, nnz),
                                                     rng.integers(0, K, nnz))), shape=(K, K))
    S.sum_duplicates()
    tracemalloc.start()
    try:
        pi = stationary_from_logits(S)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 500 * 2**20, peak  # K^2 float64 would be 20 GB
    assert pi.shape == (K,) and abs(pi.sum() - 1) < 1e-12 and pi.min() > 0
    # Fixed point of the chain, up to the solver tolerance.
    np.testing.assert_allclose(transition_operator(S).rmatvec(pi), pi, rtol=1e-9, atol=0)


# --------------------------------------------------------------------------- winners
def _vertex_limits(analysis):
    return sorted(int(np.argmax(x)) for x in analysis.stable_limits if x.max() == 1.0)


@pytest.mark.parametrize("a", [40.0, 100.0, 1e4])
def test_winner_analysis_extreme_diagonal(a):
    for logits in (a * np.eye(3), sparse.csc_array(a * np.eye(3))):
        res = winner_analysis(CCMC(logits), [0, 1, 2, 0])
        assert res.single_winners.tolist() == [0, 1, 2]
        # Every self-dominant vertex is a stable limit, and nothing else: the faces' centres
        # such as [0.5, 0.5, 0] and the centre of the simplex are saddles.
        assert _vertex_limits(res) == [0, 1, 2]
        assert len(res.stable_limits) == 3
        np.testing.assert_array_equal(res.predicted_limit, [1.0, 0.0, 0.0])


@pytest.mark.parametrize("a", [40.0, 100.0, 1e4])
def test_face_centres_are_saddles(a):
    sub = a * np.eye(3)
    for x in ([0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]):
        x = np.array(x)
        assert np.abs(_mean_field_drift(sub, x)).max() < 8 * a * np.finfo(float).eps
        assert not _is_stable(sub, x)
    for k in range(3):
        assert _is_stable(sub, np.eye(3)[k])


def test_vertex_stability_is_self_dominance():
    rng = np.random.default_rng(5)
    for _ in range(30):
        sub = rng.standard_normal((4, 4)) * rng.choice([1.0, 50.0, 1e4])
        for k in range(4):
            rivals = np.delete(sub[:, k], k)
            assert _is_stable(sub, np.eye(4)[k]) == bool(sub[k, k] > rivals.max())


def test_limits_are_deduplicated_and_polished():
    W = np.zeros((5, 5))
    W[1, 0] = W[0, 1] = 1.0
    W[3:, :] = -3.0
    res = winner_analysis(CCMC(W), [0, 1, 2, 3, 4, 2], n_starts=20)
    assert len(res.stable_limits) == 1
    x = res.stable_limits[0]
    np.testing.assert_allclose(x[:2], 0.5, atol=1e-12)
    assert np.abs(_mean_field_drift(W, x)).max() < 1e-13
    np.testing.assert_array_equal(res.predicted_winners, [0, 1])


def test_polish_refines_the_integrated_limit():
    sub = np.array([[0.0, 1.0], [1.0, 0.0]])
    x = _integrate(sub, np.array([0.9, 0.1]), tol=1e-4)
    y, ok = _polish(sub, x)
    assert ok and np.abs(y - 0.5).max() < 1e-13


def test_single_token_prompt_and_one_token_model():
    res = winner_analysis(CCMC(np.eye(3)), [2, 2, 2])
    assert res.single_winners.tolist() == [2] and res.predicted_winners.tolist() == [2]
    assert len(res.stable_limits) == 1 and res.stable_limits[0].tolist() == [1.0]
    for logits in (np.zeros((1, 1)), np.full((1, 1), 1e4), sparse.csc_array((1, 1))):
        res = winner_analysis(CCMC(logits), [0, 0])
        assert res.single_winners.tolist() == [0]
        assert res.predicted_limit.tolist() == [1.0]
        assert "stable limits found: 1" in res.summary()


def test_learning_single_winner_error_is_nan():
    from ccmc_estim import learn_from_trajectory

    W = np.zeros((3, 3))
    W[0, 0] = 4.0  # token 0 takes over
    res = learn_from_trajectory(CCMC(W), [0, 1, 2, 0], [200, 2000], random_state=0)
    assert res.winners.tolist() == [0]
    assert np.isnan(res.winner_error).all()  # documented: no within-column difference
    assert np.isfinite(res.rest_error).all()
