"""Sample complexity of CCMC estimation: error against data size.

With ``K^2`` free logits, coverage and bounded logits, the mean squared error of the centred
logits and the excess KL divergence of the predictions fall like ``K^2 / n``.
"""

from numbers import Integral, Real

import numpy as np

from ._stats import check_n_tokens, number, validate_params
from .datasets import make_ccmc_data
from .estimator import CCMCEstimator


def _check_sizes(values, name):
    """A non-empty list of positive ints (no float, NaN or boolean truncated into a size)."""
    values = list(values)
    bad = [v for v in values if isinstance(v, (bool, np.bool_)) or not isinstance(v, Integral)
           or v < 1]
    if not values or bad:
        raise ValueError(f"{name} must hold positive integers, got {bad[0] if bad else values!r}.")
    return [int(v) for v in values]


@validate_params(
    {"n_tokens_list": ["array-like"],
     "n_prompts_list": ["array-like", callable],
     "n_repeats": [number(Integral, 1, None, closed="left")],
     "logit_scale": [number(Real, 0, None, closed="left")],
     "alpha": [number(Real, 0, None, closed="left")],
     "n_test": [number(Integral, 1, None, closed="left")],
     "random_state": [None, number(Integral, 0, None, closed="left")]},
    prefer_skip_nested_validation=True,
)

def sample_complexity(n_tokens_list, n_prompts_list, *, n_repeats=20, prompt_length=10,
                      logit_scale=1.0, alpha=1e-2, n_test=2000, random_state=0):
    """Fit CCMCs on simulated data of growing size and record the estimation error.

    For every vocabulary size ``K`` a fixed true model is drawn; for every ``n`` and repetition
    a fresh data set is simulated from it and fitted.

    Parameters
    ----------
    n_tokens_list : sequence of int
        Vocabulary sizes ``K``.
    n_prompts_list : sequence of int or callable
        Data sizes; a callable ``K -> sizes`` gives sizes per ``K``.
    n_repeats : int
        Repetitions per ``(K, n)``.
    prompt_length : int
    logit_scale : float
    alpha : float
        Penalty of the fits (small: it only keeps the fits finite).
    n_test : int
        Held-out prompts for the KL divergence.
    random_state : int

    Returns
    -------
    dict of ndarray
        Columns ``n_tokens``, ``n_prompts``, ``repeat``, ``mse`` (centred identified logits)
        and ``kl`` (mean KL divergence from the true to the fitted next-token distribution on
        held-out prompts), one row per fit.

    Examples
    --------
    >>> from ccmc_estim.consistency import loglog_slope, sample_complexity
    >>> t = sample_complexity([3], [500, 5000], n_repeats=2, n_test=100)
    >>> t["mse"].shape
    (4,)
    """
    n_tokens_list = [check_n_tokens(K) for K in _check_sizes(n_tokens_list, "n_tokens_list")]
    if not callable(n_prompts_list):
        n_prompts_list = _check_sizes(n_prompts_list, "n_prompts_list")
    rows = {k: [] for k in ("n_tokens", "n_prompts", "repeat", "mse", "kl")}
    ss = np.random.SeedSequence(random_state)
    for K, seq in zip(n_tokens_list, ss.spawn(len(n_tokens_list)), strict=True):
        rng = np.random.default_rng(seq)
        truth = logit_scale * rng.standard_normal((K, K))
        centred = truth - truth.mean(axis=0)
        X_test, _, model = make_ccmc_data(n_test, K, prompt_length, logits=truth,
                                          random_state=rng)
        logp_true = model.predict_log_proba(X_test)
        p_true = np.exp(logp_true)
        sizes = (_check_sizes(n_prompts_list(K), f"n_prompts_list({K})")
                 if callable(n_prompts_list) else n_prompts_list)
        for n in sizes:
            for r in range(n_repeats):
                X, y, _ = make_ccmc_data(int(n), K, prompt_length, logits=truth,
                                         random_state=rng)
                est = CCMCEstimator(alpha=alpha).fit(X, y)
                err = (est.logits_ - centred)[est.identified_]
                logp_hat = est.predict_log_proba(X_test)
                support = p_true > 0
                gap = np.where(support, logp_true, 0.0) - np.where(support, logp_hat, 0.0)
                kl = np.where(support, p_true * gap, 0.0)
                rows["n_tokens"].append(K)
                rows["n_prompts"].append(int(n))
                rows["repeat"].append(r)
                rows["mse"].append(float(np.mean(err**2)))
                rows["kl"].append(float(kl.sum(axis=1).mean()))
    return {k: np.array(v) for k, v in rows.items()}


@validate_params({"n": ["array-like"], "error": ["array-like"]},
                 prefer_skip_nested_validation=True)
def loglog_slope(n, error):
    """Least-squares slope of ``log(error)`` against ``log(n)`` (of the means per ``n``)."""
    n = np.asarray(n, float)
    error = np.asarray(error, float)
    if n.ndim != 1 or n.shape != error.shape:
        raise ValueError(f"n and error must be 1-D of one length, got shapes {n.shape} and "
                         f"{error.shape}.")
    # The slope takes logarithms of n and of the mean errors: anything not finite and positive
    # would make it NaN (or fail inside the least-squares solver).
    if not (np.isfinite(n) & (n > 0)).all() or not np.isfinite(error).all():
        raise ValueError("n must hold finite positive numbers and error finite ones.")
    sizes = np.unique(n)
    if sizes.size < 2:
        raise ValueError("a slope needs at least two distinct sizes n.")
    means = np.array([error[n == s].mean() for s in sizes])
    if not (means > 0).all():
        raise ValueError("the mean error of every size n must be positive (its log is taken).")
    return float(np.polyfit(np.log(sizes), np.log(means), 1)[0])
