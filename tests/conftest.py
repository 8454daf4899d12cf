import numpy as np
import pytest


def ccmc_proba_reference(logits, prompts):
    """Plain numpy twin of the CCMC: m_k exp(W[k, q]) normalised, one prompt at a time."""
    K = logits.shape[0]
    out = []
    for p in prompts:
        p = np.asarray(p)
        m = np.bincount(p, minlength=K).astype(float)
        z = logits[:, p[-1]] - logits[:, p[-1]].max()
        w = m * np.exp(z)
        out.append(w / w.sum())
    return np.array(out)


def nll_reference(logits, prompts, outputs, weight=None):
    proba = ccmc_proba_reference(logits, prompts)
    weight = np.ones(len(outputs)) if weight is None else weight
    return -np.sum(weight * np.log(proba[np.arange(len(outputs)), outputs]))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


# Hypothesis profiles: "ci" (default, fast and derandomised) and "thorough" (deep runs).
# Select with CCMC_HYPOTHESIS_PROFILE=thorough.
import os  # noqa: E402

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough", max_examples=400, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("CCMC_HYPOTHESIS_PROFILE", "ci"))
