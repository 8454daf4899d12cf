"""Simulated data, and training pairs from token sequences."""

from collections import Counter
from numbers import Integral

import numpy as np

from ._stats import check_n_tokens, check_random_state
from .model import CCMC


def _token_distribution(token_distribution, n_tokens):
    if token_distribution == "uniform":
        return np.full(n_tokens, 1.0 / n_tokens)
    if token_distribution == "zipf":
        p = 1.0 / np.arange(1, n_tokens + 1)
        return p / p.sum()
    raise ValueError(f"token_distribution must be 'uniform' or 'zipf', got {token_distribution!r}.")


def make_ccmc_data(
    n_prompts,
    n_tokens,
    prompt_length,
    *,
    logits=None,
    logit_scale=1.0,
    token_distribution="uniform",
    random_state=None,
):
    """Draw prompts and next tokens from a random (or given) CCMC.

    Prompt tokens are i.i.d. from ``token_distribution``, so every token co-occurs with every
    query with positive probability (coverage: all logits are identified).

    Parameters
    ----------
    n_prompts : int
        Number of prompts.
    n_tokens : int
        Vocabulary size ``K``.
    prompt_length : int or (low, high)
        A fixed length (prompts come as a 2-D array), or an inclusive range of lengths drawn
        uniformly (prompts come as a list of 1-D arrays).
    logits : array-like of shape (K, K) or None
        True logits; when None they are i.i.d. normal with standard deviation ``logit_scale``.
    logit_scale : float
        Scale of the random logits.
    token_distribution : {"uniform", "zipf"}
        Frequency of tokens in prompts; ``"zipf"`` gives token ``k`` weight ``1 / (k + 1)``.
    random_state : int, Generator, RandomState or None

    Returns
    -------
    prompts : ndarray of shape (n_prompts, L) or list of ndarray
    outputs : ndarray of int64, shape (n_prompts,)
    model : CCMC
        The true model.

    Examples
    --------
    >>> from ccmc_estim import make_ccmc_data
    >>> prompts, outputs, model = make_ccmc_data(100, 5, 8, random_state=0)
    >>> prompts.shape, outputs.shape, model.n_tokens
    ((100, 8), (100,), 5)
    """
    rng = check_random_state(random_state)
    n_tokens = check_n_tokens(n_tokens)
    if isinstance(n_prompts, bool) or not isinstance(n_prompts, Integral) or n_prompts < 1:
        raise ValueError(f"n_prompts must be a positive integer, got {n_prompts!r}.")
    p = _token_distribution(token_distribution, n_tokens)
    if logits is None:
        if not np.isfinite(logit_scale) or logit_scale < 0:
            raise ValueError(f"logit_scale must be finite and >= 0, got {logit_scale!r}.")
        model = CCMC(logit_scale * rng.standard_normal((n_tokens, n_tokens)))
    else:
        model = CCMC(logits)
        if model.n_tokens != n_tokens:
            raise ValueError(
                f"logits have shape {model.logits.shape}, expected n_tokens={n_tokens}."
            )
    if isinstance(prompt_length, Integral) and not isinstance(prompt_length, bool):
        if prompt_length < 1:
            raise ValueError(f"prompt_length must be >= 1, got {prompt_length}.")
        prompts = rng.choice(n_tokens, size=(n_prompts, int(prompt_length)), p=p)
    else:
        try:
            low, high = (int(v) for v in prompt_length)
        except (TypeError, ValueError):
            raise ValueError(
                f"prompt_length must be an int or a (low, high) pair, got {prompt_length!r}."
            ) from None
        if not 1 <= low <= high:
            raise ValueError(f"prompt_length range needs 1 <= low <= high, got {prompt_length}.")
        lengths = rng.integers(low, high + 1, size=n_prompts)
        flat = rng.choice(n_tokens, size=int(lengths.sum()), p=p)
        prompts = np.split(flat, np.cumsum(lengths)[:-1])
    outputs = model.sample(prompts, random_state=rng)
    return prompts, outputs, model


class Vocabulary:
    """Map hashable tokens to integer ids, with a maximum size and an unknown-token id.

    Id 0 is the unknown token; the others are given by decreasing frequency (ties by first
    appearance).

    Parameters
    ----------
    max_size : int or None
        Largest number of ids, the unknown token included.
    min_count : int
        Tokens seen fewer times map to the unknown id.
    unknown_token : hashable
        What ``inverse_transform`` returns for the unknown id.

    Attributes
    ----------
    tokens_ : list
        Token of each id (``tokens_[0]`` is ``unknown_token``).
    n_tokens_ : int
        Number of ids.

    Examples
    --------
    >>> from ccmc_estim import Vocabulary
    >>> vocab = Vocabulary().fit([["a", "b", "a"], ["c", "a"]])
    >>> vocab.transform([["a", "c", "z"]])
    [array([1, 3, 0])]
    >>> vocab.inverse_transform([1, 0])
    ['a', '<unk>']
    """

    unknown_id = 0

    def __init__(self, max_size=None, min_count=1, unknown_token="<unk>"):
        self.max_size = max_size
        self.min_count = min_count
        self.unknown_token = unknown_token

    def fit(self, sequences):
        if self.max_size is not None and self.max_size < 1:
            raise ValueError(
                f"max_size must be at least 1 (the unknown token), got {self.max_size}."
            )
        counts = Counter()
        for seq in sequences:
            counts.update(seq)
        counts.pop(self.unknown_token, None)
        kept = [t for t, c in counts.most_common() if c >= self.min_count]
        if self.max_size is not None:
            kept = kept[: self.max_size - 1]
        self.tokens_ = [self.unknown_token, *kept]
        self.index_ = {t: i for i, t in enumerate(self.tokens_)}
        self.n_tokens_ = len(self.tokens_)
        return self

    def _check_fitted(self):
        if not hasattr(self, "tokens_"):
            raise ValueError("this Vocabulary is not fitted yet; call fit first.")

    def transform(self, sequences):
        """Id arrays of the given token sequences (unknown tokens map to 0)."""
        self._check_fitted()
        get = self.index_.get
        return [np.fromiter((get(t, 0) for t in seq), np.int64) for seq in sequences]

    def fit_transform(self, sequences):
        sequences = list(sequences)
        return self.fit(sequences).transform(sequences)

    def inverse_transform(self, ids):
        """Tokens of an array of ids."""
        self._check_fitted()
        ids = np.asarray(ids)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_tokens_):
            raise ValueError(f"ids must lie in 0..{self.n_tokens_ - 1}.")
        return [self.tokens_[i] for i in ids.ravel()]


def prompts_from_sequences(sequences, context_length, *, vocabulary=None):
    """Sliding-window training pairs ``(prompt, next token)`` from token sequences.

    Each sequence of length ``T`` gives ``T - context_length`` pairs: the window
    ``seq[t - context_length:t]`` and the token ``seq[t]``.

    Parameters
    ----------
    sequences : iterable of sequences
        Token sequences (wrap a single sequence in a list).  Tokens are integer ids, or any
        hashable tokens when ``vocabulary`` is given.
    context_length : int
        Length of each prompt.
    vocabulary : Vocabulary-like or None
        Object with ``fit``/``transform``/``inverse_transform``; fitted here on ``sequences``
        when it has not been fitted yet.

    Returns
    -------
    prompts : ndarray of int64, shape (n_pairs, context_length)
    outputs : ndarray of int64, shape (n_pairs,)

    Examples
    --------
    >>> from ccmc_estim import prompts_from_sequences
    >>> prompts, outputs = prompts_from_sequences([[0, 1, 2, 1, 0]], 3)
    >>> prompts.tolist(), outputs.tolist()
    ([[0, 1, 2], [1, 2, 1]], [1, 0])
    """
    if isinstance(context_length, bool) or not isinstance(context_length, Integral):
        raise TypeError(f"context_length must be an integer, got {context_length!r}.")
    if context_length < 1:
        raise ValueError(f"context_length must be >= 1, got {context_length}.")
    if isinstance(sequences, (str, bytes)):
        raise TypeError("sequences must be an iterable of token sequences, not a string.")
    sequences = list(sequences)
    if vocabulary is not None:
        if not hasattr(vocabulary, "tokens_") and hasattr(vocabulary, "fit"):
            vocabulary.fit(sequences)
        sequences = vocabulary.transform(sequences)
    prompts, outputs = [], []
    for s, seq in enumerate(sequences):
        if np.isscalar(seq):
            raise TypeError(
                f"sequence {s} is a scalar; pass an iterable of sequences (wrap one in a list)."
            )
        arr = np.asarray(seq)
        if arr.ndim != 1:
            raise ValueError(f"sequence {s} must be 1-D, got shape {arr.shape}.")
        if arr.size and arr.dtype.kind not in "iu":
            raise TypeError(
                f"sequence {s} holds non-integer tokens ({arr.dtype}); pass a vocabulary "
                "(e.g. ccmc_estim.Vocabulary()) to map them to ids."
            )
        if arr.size and arr.min() < 0:
            raise ValueError(f"sequence {s} holds a negative token id {arr.min()}.")
        if arr.size <= context_length:
            continue
        windows = np.lib.stride_tricks.sliding_window_view(arr[:-1], context_length)
        prompts.append(windows.astype(np.int64))
        outputs.append(arr[context_length:].astype(np.int64))
    if not prompts:
        raise ValueError(f"no sequence is longer than context_length={context_length}.")
    return np.concatenate(prompts), np.concatenate(outputs)
