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

__all__ = ["ccmc_datasets", "ccmc_models", "prompt_sets", "tied_attention_layers"]


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
