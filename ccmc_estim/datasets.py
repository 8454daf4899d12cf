"""Simulated data, training pairs from token sequences, a vocabulary and a Python-code corpus."""

import math
import os
import sysconfig
import tokenize
from collections import Counter
from itertools import repeat
from numbers import Integral, Real
from typing import ClassVar

import numpy as np
from scipy.sparse import issparse
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.exceptions import NotFittedError
from sklearn.utils import Bunch
from sklearn.utils._param_validation import Interval, RealNotInt, StrOptions, validate_params
from sklearn.utils.validation import check_is_fitted

from ._stats import check_n_tokens, check_random_state
from .model import CCMC

_INT64_MAX = np.iinfo(np.int64).max


def _is_int(value):
    """An integer that is not a boolean (``True`` is an ``Integral`` to Python)."""
    return isinstance(value, Integral) and not isinstance(value, (bool, np.bool_))


class _IntInterval(Interval):
    """``Interval(Integral, ...)`` that refuses booleans (``True`` is not a size)."""

    def __init__(self, left, right, *, closed):
        super().__init__(Integral, left, right, closed=closed)

    def is_satisfied_by(self, val):
        return not isinstance(val, (bool, np.bool_)) and super().is_satisfied_by(val)


def _token_distribution(token_distribution, n_tokens):
    if isinstance(token_distribution, str):
        if token_distribution == "uniform":
            return np.full(n_tokens, 1.0 / n_tokens)
        if token_distribution == "zipf":
            p = 1.0 / np.arange(1, n_tokens + 1)
            return p / p.sum()
    raise ValueError(f"token_distribution must be 'uniform' or 'zipf', got {token_distribution!r}.")


def _check_prompt_length(prompt_length):
    """``(length, None)`` for a fixed length, ``(None, (low, high))`` for a range."""
    msg = (
        "prompt_length must be an integer >= 1 or a (low, high) pair of integers with "
        f"1 <= low <= high, got {prompt_length!r}."
    )
    if _is_int(prompt_length):
        if prompt_length < 1:
            raise ValueError(msg)
        return int(prompt_length), None
    if isinstance(prompt_length, (Real, bool, np.bool_, str, bytes)):
        raise ValueError(msg)  # 2.5, nan, True, "3": not truncated, not read as a pair
    try:
        pair = tuple(prompt_length)
    except TypeError:
        raise ValueError(msg) from None
    if len(pair) != 2 or not all(_is_int(v) for v in pair):
        raise ValueError(msg)
    low, high = (int(v) for v in pair)
    if not 1 <= low <= high:
        raise ValueError(msg)
    return None, (low, high)


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
        uniformly (prompts come as a list of 1-D arrays).  Lengths must be integers: ``2.5``,
        ``(2.5, 4)``, NaN or booleans raise ``ValueError`` rather than being truncated.
    logits : array-like of shape (K, K) or None
        True logits; when None they are i.i.d. normal with standard deviation ``logit_scale``.
    logit_scale : float
        Scale of the random logits (finite, >= 0, not a boolean).
    token_distribution : {"uniform", "zipf"}
        Frequency of tokens in prompts; ``"zipf"`` gives token ``k`` weight ``1 / (k + 1)``.
    random_state : int, Generator, RandomState or None
        Seed or generator of all the draws.

    Returns
    -------
    prompts : ndarray of shape (n_prompts, L) or list of ndarray
        Prompts of token ids.
    outputs : ndarray of int64, shape (n_prompts,)
        Next token of each prompt.
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
    if not _is_int(n_prompts) or n_prompts < 1:
        raise ValueError(f"n_prompts must be a positive integer, got {n_prompts!r}.")
    length, length_range = _check_prompt_length(prompt_length)
    if (
        isinstance(logit_scale, (bool, np.bool_))
        or not isinstance(logit_scale, Real)
        or not np.isfinite(logit_scale)
        or logit_scale < 0
    ):
        raise ValueError(f"logit_scale must be a finite real number >= 0, got {logit_scale!r}.")
    p = _token_distribution(token_distribution, n_tokens)
    if logits is None:
        model = CCMC(logit_scale * rng.standard_normal((n_tokens, n_tokens)))
    else:
        model = CCMC(logits)
        if model.n_tokens != n_tokens:
            raise ValueError(
                f"logits have shape {model.logits.shape}, expected n_tokens={n_tokens}."
            )
    if length is not None:
        prompts = rng.choice(n_tokens, size=(n_prompts, length), p=p)
    else:
        low, high = length_range
        lengths = rng.integers(low, high + 1, size=n_prompts)
        flat = rng.choice(n_tokens, size=int(lengths.sum()), p=p)
        prompts = np.split(flat, np.cumsum(lengths)[:-1])
    outputs = model.sample(prompts, random_state=rng)
    return prompts, outputs, model


def _token_sequences(X):
    """``X`` as a list of token lists, refusing strings where sequences are expected."""
    if isinstance(X, (str, bytes, bytearray)):
        raise TypeError(
            "X must be an iterable of token sequences (e.g. [['the', 'cat'], ['a', 'dog']]), "
            f"got a bare {type(X).__name__} string. Split text into tokens first (e.g. "
            "text.split()) and wrap a single sequence in a list."
        )
    if issparse(X):
        raise TypeError(
            "X must be an iterable of token sequences; sparse matrices are not supported."
        )
    if isinstance(X, np.ndarray) and X.ndim == 0:
        raise TypeError("X must be an iterable of token sequences, got a 0-d array.")
    try:
        items = iter(X)
    except TypeError:
        raise TypeError(
            f"X must be an iterable of token sequences, got {type(X).__name__}."
        ) from None
    sequences = []
    for i, seq in enumerate(items):
        if isinstance(seq, (str, bytes, bytearray)):
            raise TypeError(
                f"X[{i}] is a string ({seq[:30]!r}), not a sequence of tokens. "
                "Strings are refused rather than read as sequences of characters: pass "
                "s.split() for words or list(s) for characters."
            )
        if isinstance(seq, np.ndarray):
            if seq.ndim != 1:
                raise ValueError(f"X[{i}] must be a 1-D sequence of tokens, got shape {seq.shape}.")
            sequences.append(seq.tolist())  # numpy scalars -> Python ints / strs
            continue
        try:
            sequences.append(list(seq))
        except TypeError:
            raise TypeError(
                f"X[{i}] is of type {type(seq).__name__}, not a sequence of tokens; X must be an "
                "iterable of token sequences (wrap a single sequence in a list)."
            ) from None
    return sequences


class Vocabulary(TransformerMixin, BaseEstimator):
    """Map hashable tokens to integer ids, with a maximum size and an unknown-token id.

    A scikit-learn transformer from token sequences to id arrays, usable first in a
    :class:`~sklearn.pipeline.Pipeline`.  Id ``unknown_id = 0`` is the unknown token; the
    others are given by decreasing frequency in the fit data, ties by first appearance.
    Tokens can be any hashable objects (strings, ints, tuples, ...).

    Parameters
    ----------
    max_size : int or None, default=None
        Largest number of ids, the unknown token included (an integer >= 1; booleans are
        refused).  The least frequent tokens beyond it map to the unknown id.
    min_count : int, default=1
        Tokens seen fewer times in the fit data map to the unknown id (an integer >= 1).
    unknown_token : hashable, default="<unk>"
        What ``inverse_transform`` returns for the unknown id.  Occurrences of this token in
        the data map to the unknown id.

    Attributes
    ----------
    tokens_ : list
        Token of each id (``tokens_[0]`` is ``unknown_token``).
    index_ : dict
        Id of each known token (the inverse of ``tokens_``).
    n_tokens_ : int
        Number of ids, ``len(tokens_)``.
    counts_ : ndarray of int64, shape (n_tokens_,)
        Occurrences of each id in the fit data; ``counts_[0]`` counts the occurrences that
        map to the unknown id.
    unknown_id_ : int
        Id of the unknown token, always 0 (also the class attribute ``unknown_id``).

    See Also
    --------
    prompts_from_sequences : Training pairs from token sequences, through a vocabulary.

    Notes
    -----
    ``X`` is an iterable of token sequences.  A bare string, or a string where a sequence is
    expected (``fit(["the cat"])``), raises ``TypeError``: a string is almost always a
    mistake, not a sequence of characters; pass ``list(s)`` for characters.  Tokens are
    compared as dictionary keys, so ``1``, ``1.0`` and ``True`` are the same token.

    In a pipeline only ``X`` goes through the vocabulary: the targets ``y`` must already be
    ids.  To use a vocabulary fitted beforehand (e.g. on a larger corpus, also used to map
    the targets), wrap it in :class:`sklearn.frozen.FrozenEstimator`.

    Examples
    --------
    >>> from ccmc_estim import Vocabulary
    >>> vocab = Vocabulary().fit([["a", "b", "a"], ["c", "a"]])
    >>> vocab.tokens_, vocab.counts_.tolist()
    (['<unk>', 'a', 'b', 'c'], [0, 3, 1, 1])
    >>> vocab.transform([["a", "c", "z"]])
    [array([1, 3, 0])]
    >>> vocab.inverse_transform([1, 0])
    ['a', '<unk>']
    """

    unknown_id = 0

    _parameter_constraints: ClassVar[dict] = {
        "max_size": [_IntInterval(1, None, closed="left"), None],
        "min_count": [_IntInterval(1, None, closed="left")],
        "unknown_token": "no_validation",
    }

    def __init__(self, max_size=None, min_count=1, unknown_token="<unk>"):
        self.max_size = max_size
        self.min_count = min_count
        self.unknown_token = unknown_token

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Learn the ids of the tokens of ``X``.

        Parameters
        ----------
        X : iterable of sequences of hashable tokens
            Token sequences; a string in place of ``X`` or of a sequence raises ``TypeError``.
        y : None
            Ignored.

        Returns
        -------
        self : Vocabulary
            The fitted vocabulary.

        Examples
        --------
        >>> from ccmc_estim import Vocabulary
        >>> Vocabulary(max_size=2).fit([["x", "y", "y"]]).tokens_
        ['<unk>', 'y']
        """
        try:
            hash(self.unknown_token)
        except TypeError:
            raise TypeError(
                f"unknown_token must be hashable, got {type(self.unknown_token).__name__}."
            ) from None
        sequences = _token_sequences(X)
        counts = Counter()
        for i, seq in enumerate(sequences):
            try:
                counts.update(seq)
            except TypeError as exc:
                raise TypeError(f"X[{i}] holds an unhashable token: {exc}.") from None
        total = sum(counts.values())
        counts.pop(self.unknown_token, None)
        # most_common sorts stably, so ties keep their order of first appearance
        kept = [(t, c) for t, c in counts.most_common() if c >= self.min_count]
        if self.max_size is not None:
            kept = kept[: self.max_size - 1]
        known = sum(c for _, c in kept)
        self.tokens_ = [self.unknown_token, *(t for t, _ in kept)]
        self.index_ = {t: i for i, t in enumerate(self.tokens_)}
        self.n_tokens_ = len(self.tokens_)
        self.counts_ = np.array([total - known, *(c for _, c in kept)], dtype=np.int64)
        self.unknown_id_ = self.unknown_id
        return self

    def transform(self, X):
        """Id arrays of token sequences (unknown tokens map to ``unknown_id = 0``).

        Parameters
        ----------
        X : iterable of sequences of hashable tokens
            Token sequences, as in :meth:`fit`.

        Returns
        -------
        ids : list of ndarray of int64, or ndarray of int64 of shape (n, L)
            One 1-D id array per sequence; a 2-D array when ``X`` is a 2-D array.

        Examples
        --------
        >>> from ccmc_estim import Vocabulary
        >>> vocab = Vocabulary().fit([["x", "y", "y"]])
        >>> vocab.transform([["y", "x"], ["w"]])
        [array([1, 2]), array([0])]
        """
        check_is_fitted(self)
        sequences = _token_sequences(X)
        get = self.index_.get
        out = []
        for i, seq in enumerate(sequences):
            try:
                out.append(np.fromiter(map(get, seq, repeat(0)), np.int64, count=len(seq)))
            except TypeError as exc:
                raise TypeError(f"X[{i}] holds an unhashable token: {exc}.") from None
        if isinstance(X, np.ndarray) and X.ndim == 2:
            return np.array(out, dtype=np.int64).reshape(X.shape)
        return out

    def fit_transform(self, X, y=None):
        """Fit on ``X`` and return its id arrays (``X`` may be a one-pass iterator).

        Parameters
        ----------
        X : iterable of sequences of hashable tokens
            Token sequences, as in :meth:`fit`.
        y : None
            Ignored.

        Returns
        -------
        ids : list of ndarray of int64, or ndarray of int64 of shape (n, L)
            As returned by :meth:`transform`.

        Examples
        --------
        >>> from ccmc_estim import Vocabulary
        >>> Vocabulary().fit_transform(iter([["b", "a", "a"]]))
        [array([2, 1, 1])]
        """
        if not (isinstance(X, np.ndarray) or isinstance(X, (str, bytes, bytearray))):
            X = _token_sequences(X)  # an iterator would be exhausted by fit
        return self.fit(X, y).transform(X)

    def _tokens_of(self, ids, where):
        arr = np.asarray(ids)
        if arr.ndim != 1:
            raise ValueError(f"{where} must be a 1-D array of ids, got shape {arr.shape}.")
        if arr.size == 0:
            return []
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{where} must hold integer ids, got dtype {arr.dtype}.")
        if arr.min() < 0 or arr.max() >= self.n_tokens_:
            raise ValueError(f"{where} holds ids outside 0..{self.n_tokens_ - 1}.")
        tokens = self.tokens_
        return [tokens[i] for i in arr.tolist()]

    def inverse_transform(self, X):
        """Tokens of ids: a flat list for a 1-D array of ids, nested lists for id sequences.

        Parameters
        ----------
        X : array-like of int, 1-D or 2-D, or list of 1-D arrays of int
            A 1-D array (or list) of ids gives a list of tokens; a 2-D array, or a list of
            id arrays / lists (the output of :meth:`transform`), gives a list of token
            lists.  Ids must lie in ``0..n_tokens_ - 1``; the unknown id gives
            ``unknown_token``.

        Returns
        -------
        tokens : list or list of lists
            The tokens.

        Examples
        --------
        >>> from ccmc_estim import Vocabulary
        >>> vocab = Vocabulary().fit([["x", "y", "y"]])
        >>> vocab.inverse_transform([1, 2, 0])
        ['y', 'x', '<unk>']
        >>> vocab.inverse_transform(vocab.transform([["x"], ["y", "z"]]))
        [['x'], ['y', '<unk>']]
        """
        check_is_fitted(self)
        if isinstance(X, (str, bytes, bytearray)):
            raise TypeError("X must hold integer ids, got a string.")
        if isinstance(X, np.ndarray):
            if X.ndim == 1 and X.dtype != object:
                return self._tokens_of(X, "X")
            if X.ndim == 2:
                return [self._tokens_of(row, f"X[{i}]") for i, row in enumerate(X)]
            if X.ndim != 1:
                raise ValueError(f"X must be a 1-D or 2-D array of ids, got shape {X.shape}.")
        items = list(X)
        if all(np.ndim(x) == 0 for x in items):
            return self._tokens_of(np.asarray(items), "X")
        return [self._tokens_of(x, f"X[{i}]") for i, x in enumerate(items)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.transformer_tags.preserves_dtype = []
        return tags


def _is_fitted(estimator):
    try:
        check_is_fitted(estimator)
    except NotFittedError:
        return False
    except TypeError:  # no __dict__ to look for fitted attributes in
        return hasattr(estimator, "tokens_")
    return True


def _too_large_for_int64(seq, arr):
    """Largest id of ``seq`` when it is an integer id that does not fit int64, else None."""
    if arr.dtype.kind == "u":
        top = arr.max()
        return int(top) if top > _INT64_MAX else None
    if arr.dtype.kind in "fO" and not isinstance(seq, np.ndarray):
        values = list(seq)  # numpy turns [1, 2**64 - 1] into float64 and [2**65] into object
        if all(_is_int(v) for v in values) and max(values) > _INT64_MAX:
            return int(max(values))
    return None


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
    vocabulary : Vocabulary, transformer with ``fit`` and ``transform``, or None
        Maps tokens to ids; fitted here on ``sequences`` when it is not fitted yet (checked
        with :func:`sklearn.utils.validation.check_is_fitted`), used as it is when fitted.
        An object without ``fit`` and ``transform`` methods (e.g. a dict) raises
        ``TypeError``.

    Returns
    -------
    prompts : ndarray of int64, shape (n_pairs, context_length)
        The windows.
    outputs : ndarray of int64, shape (n_pairs,)
        The token following each window.

    Raises
    ------
    TypeError
        For non-integer tokens without a vocabulary, a scalar or string where a sequence is
        expected, or a vocabulary without ``fit``/``transform``.
    ValueError
        For negative ids, ids that do not fit int64 (e.g. uint64 values >= 2**63), or when
        no sequence is longer than ``context_length``.

    Examples
    --------
    >>> from ccmc_estim import prompts_from_sequences
    >>> prompts, outputs = prompts_from_sequences([[0, 1, 2, 1, 0]], 3)
    >>> prompts.tolist(), outputs.tolist()
    ([[0, 1, 2], [1, 2, 1]], [1, 0])
    """
    if not _is_int(context_length):
        raise TypeError(f"context_length must be an integer, got {context_length!r}.")
    if context_length < 1:
        raise ValueError(f"context_length must be >= 1, got {context_length}.")
    if isinstance(sequences, (str, bytes, bytearray)):
        raise TypeError("sequences must be an iterable of token sequences, not a string.")
    if vocabulary is not None:
        if isinstance(vocabulary, type):
            raise TypeError(
                f"vocabulary must be an instance, e.g. {vocabulary.__name__}(), not the class."
            )
        if not (
            callable(getattr(vocabulary, "fit", None))
            and callable(getattr(vocabulary, "transform", None))
        ):
            raise TypeError(
                "vocabulary must be a ccmc_estim.Vocabulary or another object with fit and "
                f"transform methods, got {type(vocabulary).__name__}."
            )
    sequences = list(sequences)
    if vocabulary is not None:
        if not _is_fitted(vocabulary):
            vocabulary.fit(sequences)
        sequences = vocabulary.transform(sequences)
    prompts, outputs = [], []
    for s, seq in enumerate(sequences):
        if isinstance(seq, (str, bytes, bytearray)):
            raise TypeError(
                f"sequence {s} is a string; pass sequences of tokens (e.g. s.split()) through "
                "a vocabulary (e.g. ccmc_estim.Vocabulary())."
            )
        if np.isscalar(seq):
            raise TypeError(
                f"sequence {s} is a scalar; pass an iterable of sequences (wrap one in a list)."
            )
        arr = np.asarray(seq)
        if arr.ndim != 1:
            raise ValueError(f"sequence {s} must be 1-D, got shape {arr.shape}.")
        if arr.size:
            too_large = _too_large_for_int64(seq, arr)
            if too_large is not None:
                raise ValueError(
                    f"sequence {s} holds token id {too_large}, which does not fit int64; ids "
                    "must be compact, 0..K-1: map sparse ids to ids with ccmc_estim.Vocabulary."
                )
            if arr.dtype.kind not in "iu":
                raise TypeError(
                    f"sequence {s} holds non-integer tokens ({arr.dtype}); pass a vocabulary "
                    "(e.g. ccmc_estim.Vocabulary()) to map them to ids."
                )
            if arr.min() < 0:
                raise ValueError(f"sequence {s} holds a negative token id {arr.min()}.")
        if arr.size <= context_length:
            continue
        windows = np.lib.stride_tricks.sliding_window_view(arr[:-1], context_length)
        prompts.append(windows.astype(np.int64))
        outputs.append(arr[context_length:].astype(np.int64))
    if not prompts:
        raise ValueError(f"no sequence is longer than context_length={context_length}.")
    return np.concatenate(prompts), np.concatenate(outputs)


# --------------------------------------------------------------------------------------
# A real corpus that ships with Python: the tokens of the standard library's source files.

_SPECIAL = {
    tokenize.NEWLINE: "<newline>",
    tokenize.INDENT: "<indent>",
    tokenize.DEDENT: "<dedent>",
}
_DROPPED = {tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER}
# Python >= 3.12 splits f-strings (3.14: t-strings) into START, MIDDLE..., END tokens.
_STRING_PARTS = {
    getattr(tokenize, name)
    for name in ("FSTRING_MIDDLE", "TSTRING_MIDDLE")
    if hasattr(tokenize, name)
}
_SKIPPED_DIRS = {"site-packages", "dist-packages", "__pycache__"}
_TEST_DIRS = {"test", "tests", "idle_test"}


class _ErrorToken(SyntaxError):  # reported as "ErrorToken: ..." in skipped
    """The pure-Python tokenizer (Python < 3.12) reports invalid source as ERRORTOKEN."""


def _file_tokens(path, include_comments, literals):
    """Token strings of one Python source file (raises on files that do not tokenise)."""
    placeholders = literals == "placeholder"
    name, op, string_, number = tokenize.NAME, tokenize.OP, tokenize.STRING, tokenize.NUMBER
    special, dropped, comment = _SPECIAL, _DROPPED, tokenize.COMMENT
    out = []
    append = out.append
    with tokenize.open(path) as f:
        for kind, text, start, _, _ in tokenize.generate_tokens(f.readline):
            if kind == name or kind == op:  # most tokens: test them first
                append(text)
            elif kind in dropped:
                pass
            elif kind in special:
                append(special[kind])
            elif kind == comment:
                if include_comments:
                    append(text)
            elif kind == tokenize.ERRORTOKEN:
                raise _ErrorToken(f"invalid token {text!r} at line {start[0]}")
            elif placeholders and (kind == string_ or kind in _STRING_PARTS):
                append("<str>")
            elif placeholders and kind == number:
                append("<num>")
            else:
                append(text)
    return out


def _python_files(root, include_tests):
    """Sorted paths of the ``*.py`` files under ``root``, without site-packages (and tests)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [
            d
            for d in dirnames
            if d not in _SKIPPED_DIRS
            and not d.startswith(".")
            and (include_tests or d not in _TEST_DIRS)
        ]
        for name in filenames:
            if name.endswith(".py") and (include_tests or not name.startswith("test_")):
                found.append(os.path.join(dirpath, name))
    return sorted(found, key=lambda p: os.path.relpath(p, root).replace(os.sep, "/"))


@validate_params(
    {
        "n_files": [_IntInterval(1, None, closed="left"), None],
        "files": "no_validation",
        "max_tokens": [_IntInterval(1, None, closed="left"), None],
        "include_comments": ["boolean"],
        "include_tests": ["boolean"],
        "literals": [StrOptions({"keep", "placeholder"})],
        "test_size": [
            Interval(RealNotInt, 0, 1, closed="left"),
            _IntInterval(0, None, closed="left"),
            None,
        ],
    },
    prefer_skip_nested_validation=True,
)
def load_python_tokens(
    n_files=None,
    *,
    files=None,
    max_tokens=None,
    include_comments=False,
    include_tests=False,
    literals="keep",
    test_size=None,
):
    """Token sequences of Python source files, by default of the standard library.

    A real corpus that needs nothing but Python and works offline: each ``*.py`` file of the
    standard library (``sysconfig.get_paths()["stdlib"]``, without ``site-packages`` and, by
    default, without test directories) is tokenised with :mod:`tokenize` into one sequence
    of token strings.  Paths are sorted, so the corpus is deterministic for a given Python.

    Tokens are their source text (``"def"``, ``"("``, ``"x"``, ``":"``, ``"'abc'"``,
    ``"1.5"``), except NEWLINE, INDENT and DEDENT which become ``"<newline>"``,
    ``"<indent>"`` and ``"<dedent>"``.  Blank-line and in-bracket line breaks (NL), the
    ENCODING and ENDMARKER tokens and, unless asked, comments are dropped.  Files that fail
    to tokenise (SyntaxError, IndentationError, UnicodeDecodeError, tokenize.TokenError, an
    unreadable file, or an ERRORTOKEN: not valid Python) are skipped and listed in
    ``skipped``.

    Parameters
    ----------
    n_files : int or None, default=None
        Number of files to return: the first ``n_files`` files (in sorted order) that
        tokenise; all of them when None.
    files : iterable of str or path-like, or None, default=None
        Files to tokenise instead of the standard library, in the given order; a directory
        stands for its sorted ``*.py`` files (filtered as the standard library is).  A path
        that does not exist raises ``FileNotFoundError``.
    max_tokens : int or None, default=None
        Stop once this many tokens are collected in all; the last sequence is truncated so
        that the total is exactly ``max_tokens`` (unless the files run out first).
    include_comments : bool, default=False
        Keep each comment as one token, its full text (``"# note"``).
    include_tests : bool, default=False
        Also read the test directories (``test``, ``tests``, ``idle_test``) and
        ``test_*.py`` files of the standard library (or of the directories in ``files``).
        They include files that deliberately fail to tokenise (skipped).
    literals : {"keep", "placeholder"}, default="keep"
        ``"keep"`` keeps string and number literals as their text (a large, heavy-tailed
        vocabulary: each docstring is a token); ``"placeholder"`` maps every string literal
        to ``"<str>"`` and every number to ``"<num>"`` (on Python >= 3.12 an f-string's
        literal parts become ``"<str>"``, its ``f"`` and ``"`` delimiters and fields stay).
    test_size : float in [0, 1), int or None, default=None
        Held-out split by files: the last ``test_size`` files (an int) or the last
        ``ceil(test_size * n)`` of the ``n`` files (a float) form ``test``, the others
        ``train``.  None holds out nothing.  The split is also plain slicing:
        ``sequences[:n_train]`` and ``sequences[n_train:]``.

    Returns
    -------
    data : sklearn.utils.Bunch
        With attributes

        - ``sequences``: list of list of str, one token sequence per file;
        - ``files``: list of str, the path of each sequence;
        - ``n_train``: int, number of training files;
        - ``train``, ``test``: ``sequences[:n_train]`` and ``sequences[n_train:]``;
        - ``skipped``: list of ``(path, reason)`` of the files that failed to tokenise;
        - ``root``: the standard-library directory read, or None when ``files`` is given.

    See Also
    --------
    Vocabulary : Map the token strings to ids.
    prompts_from_sequences : Training pairs from the sequences.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from ccmc_estim.datasets import load_python_tokens
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "f.py"
    >>> _ = path.write_text("def f(x):\\n    return x + 1  # one\\n")
    >>> load_python_tokens(files=[path]).sequences[0]
    ['def', 'f', '(', 'x', ')', ':', '<newline>', '<indent>', 'return', 'x', '+', '1',
     '<newline>', '<dedent>']
    >>> data = load_python_tokens(5, literals="placeholder", test_size=0.2)
    >>> len(data.sequences), len(data.train), len(data.test)
    (5, 4, 1)
    """
    if files is None:
        root = sysconfig.get_paths()["stdlib"]
        paths = _python_files(root, include_tests)
        if not paths:
            raise ValueError(f"no Python source files found in the standard library at {root}.")
    else:
        if isinstance(files, (str, bytes, os.PathLike)):
            files = [files]
        root = None
        paths = []
        for p in files:
            p = os.fspath(p)
            if os.path.isdir(p):
                paths.extend(_python_files(p, include_tests))
            elif os.path.exists(p):
                paths.append(p)
            else:
                raise FileNotFoundError(f"no such file or directory: {p!r}.")

    sequences, used, skipped = [], [], []
    total = 0
    for path in paths:
        if n_files is not None and len(sequences) >= n_files:
            break
        if max_tokens is not None and total >= max_tokens:
            break
        try:
            tokens = _file_tokens(path, include_comments, literals)
        except (SyntaxError, UnicodeDecodeError, tokenize.TokenError, OSError) as exc:
            skipped.append((path, f"{type(exc).__name__.lstrip('_')}: {exc}"))
            continue
        if max_tokens is not None and total + len(tokens) > max_tokens:
            tokens = tokens[: max_tokens - total]
        total += len(tokens)
        sequences.append(tokens)
        used.append(path)

    n = len(sequences)
    if test_size is None:
        n_test = 0
    elif isinstance(test_size, Integral):
        n_test = min(int(test_size), n)
    else:
        n_test = math.ceil(test_size * n)
    n_train = n - n_test
    return Bunch(
        sequences=sequences,
        files=used,
        n_train=n_train,
        train=sequences[:n_train],
        test=sequences[n_train:],
        skipped=skipped,
        root=root,
    )
