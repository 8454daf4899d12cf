import numpy as np
import pytest
from conftest import ccmc_proba_reference
from scipy import stats as sps

from ccmc_estim import (
    CCMC,
    collapse_profile,
    generate,
    generate_batch,
    learn_from_trajectory,
    trajectory_pairs,
    winner_analysis,
)
from ccmc_estim._stats import prompt_stats
from ccmc_estim.generation import _trajectory_stats


def _generate_reference(model, prompt, n_steps, window, seed):
    """numpy twin: the same uniforms, the next-token distribution of each context by formula."""
    u = np.random.default_rng(seed).random(n_steps)
    context = list(prompt)
    out = []
    for t in range(n_steps):
        ctx = context if window is None else context[-window:]
        p = ccmc_proba_reference(model.logits, [ctx])[0]
        support = np.flatnonzero(p)
        y = support[np.searchsorted(np.cumsum(p[support]), u[t], side="right")]
        out.append(y)
        context.append(y)
    return np.array(out)


@pytest.mark.parametrize("window", [None, 3, 7])
def test_generation_matches_reference_step_by_step(window):
    model = CCMC(np.random.default_rng(1).standard_normal((6, 6)) * 2)
    prompt = [0, 3, 3, 5, 1, 2]
    got = generate(model, prompt, 400, window=window, random_state=11)
    np.testing.assert_array_equal(got, _generate_reference(model, prompt, 400, window, 11))
    assert set(got) <= set(prompt)  # the support never grows
    if window is not None:
        seq = np.concatenate([prompt, got])
        for t, y in enumerate(got):
            assert y in seq[max(0, len(prompt) + t - window) : len(prompt) + t]


def test_first_step_frequencies_match_predict_proba():
    model = CCMC(np.random.default_rng(2).standard_normal((5, 5)))
    prompt = [4, 0, 0, 2, 3, 3, 3, 1]
    n = 50_000
    first = generate_batch(model, [prompt] * n, 1, random_state=3)[:, 0]
    observed = np.bincount(first, minlength=5)
    expected = model.predict_proba([prompt])[0] * n
    chi2 = ((observed - expected) ** 2 / expected).sum()
    assert chi2 < sps.chi2.ppf(0.999, df=4), chi2


def test_batch_shapes_and_window_growth():
    model = CCMC(np.zeros((4, 4)))
    out = generate_batch(model, [[0, 1], [2, 3, 3]], 50, window=5, random_state=0)
    assert out.shape == (2, 50)
    assert set(out[0]) <= {0, 1} and set(out[1]) <= {2, 3}
    assert generate(model, [1], 20).tolist() == [1] * 20  # a single token repeats forever


def test_extreme_logits_generation():
    model = CCMC(np.array([[700.0, -700.0], [-700.0, 700.0]]))
    with np.errstate(over="raise", invalid="raise"):
        out = generate(model, [1, 0], 50, random_state=0)
    assert (out == 0).all()
    # Query 0 present but column 0 favours token 1 by 1400: all present weights underflow
    # only for impossible tokens, the log-space fallback keeps draws valid.
    model = CCMC(np.array([[-700.0, 0.0], [700.0, 0.0]]))
    out = generate(model, [0, 0, 0], 5, window=2, random_state=0)
    assert (out == 0).all()


def _single_winner_model(seed, K=6):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((K, K))
    for j in range(1, K):  # no other token dominates its own column
        W[j, j] = W[:, j].min() - 0.5
    W[0, 0] = np.delete(W[:, 0], 0).max() + 1.0
    return CCMC(W)


def test_collapse_onto_predicted_single_winner():
    prompt = [0] * 10 + [1, 2, 3, 4, 5, 0]
    hits = 0
    for seed in range(100):
        model = _single_winner_model(seed)
        assert winner_analysis(model, prompt, n_starts=0).single_winners.tolist() == [0]
        traj = generate(model, prompt, 5000, random_state=seed)
        hits += np.mean(traj[-1000:] == 0) > 0.9
    assert hits >= 95, hits


def test_no_single_winner_without_self_dominance():
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        W = rng.standard_normal((6, 6))
        W[np.diag_indices(6)] = W.min(axis=0) - 1.0
        model = CCMC(W)
        analysis = winner_analysis(model, [0, 1, 2, 3, 4, 5])
        assert analysis.single_winners.size == 0
        assert analysis.predicted_winners.size >= 2
        traj = generate(model, [0, 1, 2, 3, 4, 5], 20_000, random_state=seed)
        tail = np.bincount(traj[-5000:], minlength=6) / 5000
        assert tail.max() < 0.9, (seed, tail)


def test_winner_analysis_mixed_limit_and_summary():
    W = np.zeros((5, 5))
    W[1, 0] = W[0, 1] = 1.0
    W[3:, :] = -3.0
    a = winner_analysis(CCMC(W), [0, 1, 2, 3, 4, 2])
    assert a.single_winners.size == 0
    assert a.predicted_winners.tolist() == [0, 1]
    np.testing.assert_allclose(a.predicted_limit[:2], 0.5, atol=1e-6)
    assert "settles on" in a.summary()


def test_collapse_profile_by_hand():
    prof = collapse_profile([1, 2, 1, 1, 1, 1, 1, 1], prompt=[2, 1], window=4, ngram=2,
                            n_points=8)
    assert prof.steps.tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    # After 2 steps the context is [2, 1, 1, 2]: share 0.5, entropy log 2.
    assert prof.leading_share[1] == 0.5 and prof.entropy[1] == pytest.approx(np.log(2))
    assert prof.distinct_in_window[-1] == 1
    # Last window [1, 1, 1, 1]: three 2-grams, one distinct.
    assert prof.repetition_rate[-1] == pytest.approx(2 / 3)
    assert "rep-2" in prof.summary()


def test_trajectory_pairs_and_fast_statistics():
    prompt = np.array([0, 2, 1])
    traj = np.array([1, 1, 2, 0, 1, 1])
    for window in (None, 2, 4):
        X, y = trajectory_pairs(prompt, traj, window=window)
        assert len(X) == traj.size and (y == traj).all()
        ref = prompt_stats(X, 3)
        fast = _trajectory_stats(prompt, traj, 3, window or 0)
        for f in ("indptr", "tokens", "counts", "query"):
            np.testing.assert_array_equal(getattr(fast, f), getattr(ref, f))


def test_learning_from_one_trajectory():
    W = np.zeros((5, 5))
    W[1, 0] = W[0, 1] = 1.0
    W[3:, :] = -3.0
    res = learn_from_trajectory(CCMC(W), [0, 1, 2, 3, 4, 2], [500, 5000, 50000],
                                random_state=1)
    assert res.winners.tolist() == [0, 1]
    # The winner block is sampled in proportion to the length: its error falls ~ 1/sqrt(n).
    assert res.winner_error[-1] < res.winner_error[0] / 10
    # The rest is seen finitely often (a few emissions): it stays far less accurate.
    assert res.rest_error[-1] > 50 * res.winner_error[-1]
    assert res.rest_error[-1] > res.rest_error[0] / 4


@pytest.mark.parametrize(
    "call, err, match",
    [
        (lambda m: generate(m, [], 5), ValueError, "empty"),
        (lambda m: generate(m, [0, 9], 5), ValueError, "token 9 at position 1"),
        (lambda m: generate(m, [0, -1], 5), ValueError, "token -1"),
        (lambda m: generate(m, [0, 1], -1), ValueError, r"n_steps.* range \[0, inf\)"),
        (lambda m: generate(m, [0, 1], 2.5), TypeError, "n_steps"),
        (lambda m: generate(m, [0, 1], 5, window=0), ValueError, "window"),
        (lambda m: generate(m, [[0, 1]], 5), ValueError, "1-D"),
        (lambda m: generate(m, [True, False], 5), TypeError, "^prompt must hold integer"),
        (lambda m: generate(np.zeros((3, 3)), [0], 5), TypeError, "CCMC"),
        (lambda m: generate_batch(m, [[0], [1, 7]], 5), ValueError, "prompt 1 has token 7"),
        (lambda m: winner_analysis(m, []), ValueError, "empty"),
        (lambda m: collapse_profile([]), ValueError, "empty"),
        (lambda m: collapse_profile([0, 1], window=0), ValueError, "window"),
    ],
)
def test_bad_input(call, err, match):
    with pytest.raises(err, match=match):
        call(CCMC(np.zeros((3, 3))))


def test_collapse_profile_vocabulary_check():
    with pytest.raises(ValueError, match="trajectory has token 3"):
        collapse_profile([0, 1, 3], n_tokens=3)
    with pytest.raises(ValueError, match="prompt has token 5"):
        collapse_profile([0, 1], prompt=[5, 0], n_tokens=3)
    assert collapse_profile([0, 1], n_tokens=3).leading_share.size == 2
