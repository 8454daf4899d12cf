"""Hypothesis strategies for property-based tests of CCMC estimation.

Requires ``hypothesis`` (installed with the ``test`` extra).  The strategies draw small, valid
objects, so properties run fast; every draw is reproducible from hypothesis' seed.

Examples
--------
>>> from hypothesis import given, settings
>>> from ccmc_estim.testing import ccmc_datasets
>>> @settings(max_examples=5, deadline=None)
... @given(ccmc_datasets(max_tokens=4))
... def test_outputs_occur_in_their_prompt(data):
...     prompts, outputs, model = data
...     assert all(y in p for p, y in zip(prompts, outputs))
>>> test_outputs_occur_in_their_prompt()
"""

import numpy as np
from hypothesis import strategies as st

from .model import CCMC

__all__ = [
    "ccmc_datasets",
    "ccmc_models",
    "extreme_logits",
    "invalid_numbers",
    "malformed_prompts",
    "malformed_sample_weights",
    "prompt_sets",
    "tied_attention_layers",
]


@st.composite
def ccmc_models(draw, min_tokens=2, max_tokens=8, logit_scale=(0.1, 3.0), self_dominant=None):
    """Random :class:`~ccmc_estim.CCMC` models.

    Parameters
    ----------
    min_tokens, max_tokens : int
        Range of the vocabulary size ``K``.
    logit_scale : (float, float)
        Range of the standard deviation of the i.i.d. normal logits.
    self_dominant : bool or None
        True: token 0 is self-dominant (``logits[0, 0]`` beats its column by at least 0.5) and
        no other token is; False: no token is; None: whatever the draw gives.
    """
    K = draw(st.integers(min_tokens, max_tokens))
    scale = draw(st.floats(*logit_scale))
    seed = draw(st.integers(0, 2**32 - 1))
    W = scale * np.random.default_rng(seed).standard_normal((K, K))
    if self_dominant is not None:
        W[np.diag_indices(K)] = W.min(axis=0) - 0.5
        if self_dominant:
            W[0, 0] = np.delete(W[:, 0], 0).max() + 0.5
    return CCMC(W)


@st.composite
def prompt_sets(draw, n_tokens, min_prompts=1, max_prompts=60, min_length=1, max_length=10,
                coverage=None, ragged=None):
    """Sets of prompts over ``n_tokens`` tokens.

    Parameters
    ----------
    n_tokens : int
    min_prompts, max_prompts, min_length, max_length : int
    coverage : bool or None
        True: every token and query is drawn with positive probability (i.i.d. uniform tokens;
        with enough prompts all logits are identified).  False: each query only ever sees a
        random subset of tokens, so some logits are never identified.  None: either.
    ragged : bool or None
        True: a list of 1-D arrays of varying lengths; False: a 2-D array; None: either.
    """
    n = draw(st.integers(min_prompts, max_prompts))
    if ragged is None:
        ragged = draw(st.booleans())
    if coverage is None:
        coverage = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if ragged:
        lengths = rng.integers(min_length, max_length + 1, size=n)
    else:
        lengths = np.full(n, draw(st.integers(min_length, max_length)))
    queries = rng.integers(0, n_tokens, size=n)
    if coverage:
        allowed = np.ones((n_tokens, n_tokens), bool)
    else:
        allowed = rng.random((n_tokens, n_tokens)) < 0.5  # allowed[q, k]
    prompts = []
    for q, L in zip(queries, lengths, strict=True):
        pool = np.flatnonzero(allowed[q])
        body = rng.choice(pool, size=L - 1) if pool.size else np.full(L - 1, q)
        prompts.append(np.append(body, q).astype(np.int64))
    return prompts if ragged else np.array(prompts)


@st.composite
def ccmc_datasets(draw, min_tokens=2, max_tokens=6, min_prompts=1, max_prompts=60,
                  max_length=10, coverage=None, self_dominant=None):
    """``(prompts, outputs, model)``: prompts from :func:`prompt_sets`, outputs sampled from a
    model of :func:`ccmc_models`."""
    model = draw(ccmc_models(min_tokens, max_tokens, self_dominant=self_dominant))
    prompts = draw(prompt_sets(model.n_tokens, min_prompts, max_prompts, 1, max_length,
                               coverage=coverage))
    outputs = model.sample(prompts, random_state=draw(st.integers(0, 2**32 - 1)))
    return prompts, outputs, model


@st.composite
def tied_attention_layers(draw, min_tokens=2, max_tokens=6, extra_dims=(0, 4)):
    """``(E, W_att, C)``: random embeddings with ``d >= K``, attention matrix and the tied head
    ``C = pinv(E)^T``."""
    K = draw(st.integers(min_tokens, max_tokens))
    d = K + draw(st.integers(*extra_dims))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    E = rng.standard_normal((K, d))
    W_att = rng.standard_normal((d, d)) / np.sqrt(d)
    return E, W_att, np.linalg.pinv(E).T


# --------------------------------------------------------------------------- invalid input
# Strategies of values a correct API must refuse with a ValueError or TypeError (never another
# exception, a NaN result or a silent truncation): for testing that every entry point guards
# what reaches compiled code.

_NOT_FINITE = (np.nan, np.inf, -np.inf)


@st.composite
def malformed_prompts(draw, n_tokens=3):
    """Prompt inputs that no prompt-taking function may accept, over a vocabulary of
    ``n_tokens`` tokens: empty input or prompts, wrong dimensions, scalars and strings,
    negative, fractional, non-finite, complex, boolean or out-of-vocabulary tokens (also
    hidden in one prompt of a ragged list), ids beyond int32, nesting and sparse matrices."""
    from scipy import sparse

    L = draw(st.integers(1, 4))
    good = [int(t) for t in draw(st.lists(st.integers(0, n_tokens - 1), min_size=L,
                                          max_size=L))]
    bad_token = draw(st.sampled_from([
        -1, -(2**40), n_tokens, n_tokens + 10**6, 2**31, 2**63, 0.5, 1.0 + 1e-9, *_NOT_FINITE,
        1j, True, "a", None,
    ]))
    kind = draw(st.sampled_from([
        "token in 2-D", "token in ragged", "empty", "empty 2-D", "empty prompt", "scalar",
        "string", "3-D", "nested", "sparse", "all bool", "float dtype", "complex dtype",
        "object junk", "dict",
    ]))
    if kind == "token in 2-D":
        rows = [list(good), list(good)]
        rows[draw(st.integers(0, 1))][draw(st.integers(0, L - 1))] = bad_token
        return rows
    if kind == "token in ragged":
        rows = [list(good), [*good, 0]]
        rows[1][draw(st.integers(0, L))] = bad_token
        return rows
    return {
        "empty": lambda: [],
        "empty 2-D": lambda: np.zeros((0, L), np.int64),
        "empty prompt": lambda: [good, []],
        "scalar": lambda: draw(st.sampled_from([0, 1.5, np.int64(2)])),
        "string": lambda: draw(st.sampled_from(["0 1 2", b"\x00\x01"])),
        "3-D": lambda: np.zeros((2, L, 2), np.int64),
        "nested": lambda: [[good, good]],
        "sparse": lambda: sparse.csr_array(np.array([good])),
        "all bool": lambda: np.ones((2, L), bool),
        "float dtype": lambda: np.array([good], float) + 0.25,
        "complex dtype": lambda: np.array([good], complex) + 1j,
        "object junk": lambda: np.array([[object()] * L], dtype=object),
        "dict": lambda: {0: good},
    }[kind]()


@st.composite
def malformed_sample_weights(draw, n_samples):
    """Sample weights for ``n_samples`` samples that fitting and scoring must refuse:
    negative, non-finite, complex, boolean or non-numeric entries (alone or as a scalar),
    the wrong shape, or zero everywhere."""
    ok = np.asarray(draw(st.lists(st.floats(0.0, 10.0), min_size=n_samples,
                                  max_size=n_samples)))
    kind = draw(st.sampled_from(["entry", "scalar", "shape", "zeros", "dtype"]))
    bad = draw(st.sampled_from([-1.0, -1e-300, -np.inf, *_NOT_FINITE]))
    if kind == "entry":
        w = ok.copy()
        w[draw(st.integers(0, n_samples - 1))] = bad
        return w
    if kind == "scalar":
        return bad
    if kind == "shape":
        return draw(st.sampled_from([np.ones(n_samples + 1), np.ones((n_samples, 1)),
                                     np.ones(max(n_samples - 1, 0)), np.ones((1, n_samples))]))
    if kind == "zeros":
        return np.zeros(n_samples)
    return draw(st.sampled_from([ok.astype(complex) + 1j, np.ones(n_samples, bool),
                                 np.array(["1"] * n_samples), 1j, "1"]))


@st.composite
def invalid_numbers(draw, integer=False, low=None, high=None):
    """Values a numeric parameter must refuse: NaN, infinities, booleans, strings, complex
    numbers, None-like containers, values outside ``[low, high]`` and (with ``integer``)
    non-integral floats."""
    choices = [*_NOT_FINITE, True, False, np.bool_(True), "1", 1j, [1], object()]
    if integer:
        choices += [1.5, 2.0, np.float64(3.0), 10.0**20]
    if low is not None:
        below = low - 1 if integer else low - max(1.0, abs(low))
        choices += [below, low - 10**30]
    if high is not None:
        choices += [high + 1, high + 10**30]
    return draw(st.sampled_from(choices))


@st.composite
def extreme_logits(draw, min_tokens=2, max_tokens=6, max_scale=1e4):
    """Dense ``(K, K)`` logits whose entries reach ``max_scale`` in absolute value (spreads far
    beyond what ``exp`` represents), with ties and one-hot columns: for numerics tests."""
    K = draw(st.integers(min_tokens, max_tokens))
    scale = draw(st.sampled_from([1.0, 50.0, 800.0, max_scale]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["normal", "diagonal", "integers", "signs"]))
    if kind == "normal":
        W = rng.standard_normal((K, K))
        W /= np.abs(W).max()
    elif kind == "diagonal":
        W = np.eye(K) * rng.choice([-1.0, 1.0])
    elif kind == "integers":
        W = rng.integers(-2, 3, size=(K, K)) / 2.0
    else:
        W = rng.choice([-1.0, 0.0, 1.0], size=(K, K))
    return scale * W
