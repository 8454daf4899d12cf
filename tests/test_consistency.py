import numpy as np

from ccmc_estim.consistency import loglog_slope, sample_complexity


def test_reduced_sample_complexity_slope():
    table = sample_complexity([5], [2_000, 20_000, 200_000], n_repeats=8, n_test=500)
    for metric in ("mse", "kl"):
        slope = loglog_slope(table["n_prompts"], table[metric])
        assert -1.25 <= slope <= -0.75, (metric, slope)


def test_loglog_slope_exact():
    n = np.array([10, 10, 100, 1000])
    assert abs(loglog_slope(n, 3.0 / n) + 1) < 1e-12
