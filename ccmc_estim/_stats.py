"""Input validation and the sufficient statistics of prompts.

This is the only module that touches raw user input.  A prompt is reduced once to its query (the
last token) and the histogram of its tokens, stored as CSR-like flat arrays; every consumer (the
models, the estimators, the diagnostics) reads these arrays.
"""

import os
from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise
from numbers import Integral
from operator import attrgetter

import numpy as np
from scipy.sparse import issparse
from sklearn.utils._param_validation import Interval, StrOptions, validate_params

__all__ = ["Interval", "StrOptions", "number", "validate_params"]

from . import _kernels

_PLAIN = np.ones(1)  # every position counts once
_MAX_TOKENS = 2**31 - 1  # token ids fit int32 (and uint32) in every compiled kernel
# Bytes of the arrays of length K that a fit, a prediction or a generation allocates (column
# pointers, marks, scratch counts, per-column results): checked before allocating them.
_BYTES_PER_TOKEN = 128


def _check_integral(values, what):
    """``values`` as an integer array (int64 when converted), raising a clear error for NaN,
    non-integers, complex numbers and booleans."""
    values = np.asarray(values)
    if values.dtype == bool:
        raise TypeError(f"{what} must hold integer token ids, got booleans.")
    if values.dtype.kind in "iu":
        return values
    if values.dtype.kind == "c":
        raise ValueError(f"Complex data not supported: {what} must hold integer token ids.")
    if values.dtype.kind != "f":
        raise TypeError(f"{what} must hold integer token ids, got dtype {values.dtype}.")
    bad = ~np.isfinite(values)
    if bad.any():
        idx = tuple(int(i) for i in np.unravel_index(np.flatnonzero(bad)[0], values.shape))
        raise ValueError(f"{what} contains NaN or infinity ({values[idx]}) at index {idx}.")
    frac = values != np.round(values)
    if frac.any():
        idx = tuple(int(i) for i in np.unravel_index(np.flatnonzero(frac)[0], values.shape))
        raise ValueError(
            f"{what} contains a non-integer token {values[idx]} at index {idx} (Unknown label "
            "type: continuous values; token ids must be integers)."
        )
    if np.abs(values).max(initial=0) > _MAX_TOKENS:
        idx = tuple(int(i) for i in np.unravel_index(np.argmax(np.abs(values)), values.shape))
        raise ValueError(f"{what} contains token {values[idx]:g} at index {idx}, beyond the "
                         f"largest supported id {_MAX_TOKENS}.")
    return values.astype(np.int64)


class _Number(Interval):
    """An :class:`~sklearn.utils._param_validation.Interval` that refuses booleans (``True``
    is an ``Integral`` to Python, never a sensible count or tolerance)."""

    def is_satisfied_by(self, val):
        return not isinstance(val, (bool, np.bool_)) and super().is_satisfied_by(val)


def number(kind, left, right, closed="both"):
    """Declarative constraint of a numeric parameter (no NaN, no infinity, no booleans)."""
    return _Number(kind, left, right, closed=closed)


def n_threads(n_jobs):
    """Threads of the compiled column solvers: ``None`` uses every core (the solvers release
    the GIL and their results do not depend on the number of threads, as in scikit-learn's
    compiled estimators), otherwise joblib's convention (``-1``: all cores)."""
    from joblib import cpu_count, effective_n_jobs

    return cpu_count() if n_jobs is None else effective_n_jobs(n_jobs)


def _has_bool(seq):
    return any(isinstance(x, (bool, np.bool_)) for x in seq)


def flatten_prompts(prompts):
    """Flat int64 tokens and int64 ``indptr`` of a 2-D array or a sequence of 1-D sequences."""
    if issparse(prompts):
        raise TypeError(
            "sparse input is not supported: pass prompts as a dense 2-D integer array or a "
            "sequence of 1-D integer sequences."
        )
    if isinstance(prompts, (str, bytes)) or np.isscalar(prompts):
        raise TypeError(
            "prompts must be a 2-D integer array or a sequence of 1-D integer sequences, "
            f"got {type(prompts).__name__}."
        )
    arr = None
    # A list of arrays goes prompt by prompt even when they are all of one length (the same
    # tokens either way): an attempt at a 2-D array would cost a tenth of a small fit.
    listed = (isinstance(prompts, (list, tuple)) and len(prompts) > 0
              and isinstance(prompts[0], np.ndarray) and prompts[0].ndim == 1)
    if not listed and not (isinstance(prompts, np.ndarray) and prompts.dtype == object):
        try:
            arr = np.asarray(prompts)
        except ValueError:  # ragged nesting: handled prompt by prompt below
            arr = None
    if arr is not None and arr.dtype != object:
        if arr.ndim == 1 and arr.size == 0:
            raise ValueError("prompts is empty: at least one prompt is required.")
        if arr.ndim != 2:
            raise ValueError(
                "prompts must be a 2-D array (n_prompts, prompt_length) or a sequence of 1-D "
                f"sequences; got an array with {arr.ndim} dimension(s) and shape {arr.shape}."
            )
        if arr.shape[0] == 0:
            raise ValueError("prompts is empty: at least one prompt is required.")
        if arr.shape[1] == 0:
            raise ValueError(
                f"prompt 0 is empty: prompts have 0 feature(s) (shape={arr.shape}) while a "
                "minimum of 1 is required; every prompt needs at least one token."
            )
        flat = _check_integral(arr, "prompts").ravel()
        indptr = np.arange(0, flat.size + 1, arr.shape[1], dtype=np.int64)
        return flat, indptr
    seqs = list(prompts)
    if not seqs:
        raise ValueError("prompts is empty: at least one prompt is required.")
    # Fast path: integer arrays, one per prompt; anything else gets the checks below.  Sets
    # of types and dtypes are built at C speed (a generator over 50,000 prompts is a tenth of
    # a small fit); ranks other than 1 make ``len`` or the concatenation fail, or give a flat
    # array of another rank.
    if (set(map(type, seqs)) == {np.ndarray}
            and all(dt.kind in "iu" for dt in set(map(attrgetter("dtype"), seqs)))):
        try:
            lengths = np.fromiter(map(len, seqs), np.int64, len(seqs))
            flat = np.concatenate(seqs)
        except (TypeError, ValueError):  # a 0-d array, or mixed ranks: named below
            flat = None
        # Signed and unsigned 64-bit ids together concatenate to floats: cast below.
        if (flat is not None and flat.ndim == 1 and flat.dtype.kind in "iu"
                and lengths.min() > 0):
            indptr = np.zeros(len(seqs) + 1, np.int64)
            np.cumsum(lengths, out=indptr[1:])
            return flat, indptr
    parts = []
    for i, p in enumerate(seqs):
        if not isinstance(p, np.ndarray):
            if isinstance(p, (str, bytes)) or np.isscalar(p):
                raise ValueError(
                    f"prompt {i} is a scalar ({p!r}); each prompt must be a 1-D sequence of tokens."
                )
            if isinstance(p, (list, tuple)) and _has_bool(p):
                raise TypeError(f"prompt {i} holds booleans; tokens must be integer ids.")
            try:
                p = np.asarray(p)
            except ValueError:
                raise ValueError(f"prompt {i} is ragged: it must be a flat 1-D sequence.") from None
        if p.dtype == object and p.ndim == 1:
            if _has_bool(p):
                raise TypeError(f"prompt {i} holds booleans; tokens must be integer ids.")
            try:  # an object array of numbers, e.g. a row of an object-dtype 2-D array
                p = np.array(p.tolist())
            except ValueError:
                raise ValueError(f"prompt {i} is ragged: it must be a flat 1-D sequence.") from None
        if p.ndim != 1 or p.dtype == object:
            raise ValueError(
                f"prompt {i} must be a flat 1-D sequence of tokens, got shape {p.shape}."
            )
        if p.size == 0:
            raise ValueError(f"prompt {i} is empty: every prompt needs at least one token.")
        parts.append(p)
    lengths = np.fromiter((a.size for a in parts), np.int64, len(parts))
    indptr = np.zeros(len(parts) + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    for i, p in enumerate(parts):  # name the prompt that is wrong
        if p.dtype.kind not in "iu":
            parts[i] = _check_integral(p, f"prompt {i}")
    kinds = {p.dtype.kind for p in parts}
    if len(kinds) > 1:  # signed and unsigned ids: int64, where no supported id wraps
        for i, p in enumerate(parts):
            if p.dtype.kind == "u" and p.max() > _MAX_TOKENS:
                t = int(np.argmax(p))
                raise ValueError(f"prompt {i} contains token {int(p[t])} at index ({t},), "
                                 f"beyond the largest supported id {_MAX_TOKENS}.")
    flat = np.concatenate(parts) if len(kinds) == 1 else np.concatenate(
        [p.astype(np.int64) for p in parts])
    return flat, indptr


def _locate(flat, indptr, pos):
    """(prompt, position) of flat index ``pos``, for error messages."""
    i = int(np.searchsorted(indptr, pos, side="right") - 1)
    return i, int(pos - indptr[i])


def check_random_state(random_state):
    """A ``numpy.random.Generator`` from None, an int, a Generator or a RandomState.

    A RandomState is wrapped around its own bit generator, so draws advance its state.
    """
    if random_state is None or isinstance(random_state, (Integral, np.random.SeedSequence)):
        return np.random.default_rng(random_state)
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, np.random.RandomState):
        return np.random.Generator(random_state._bit_generator)
    raise TypeError(
        "random_state must be None, an int, a numpy Generator or RandomState, got "
        f"{type(random_state).__name__}."
    )


def _physical_memory():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a large machine
        return 1 << 40


def check_memory(n_bytes, what):
    """Refuse, before allocating it, an array of ``n_bytes`` beyond half of this machine's
    memory: a clear ValueError instead of a MemoryError or numpy's "array is too big"."""
    if int(n_bytes) > _physical_memory() // 2:
        raise ValueError(
            f"{what} would need about {int(n_bytes) / 2**30:.3g} GiB, more than half of this "
            "machine's memory."
        )


def check_n_tokens(n_tokens, cause=None):
    """A vocabulary size whose per-token arrays fit this machine, checked before anything of
    that size is allocated; ``cause`` says where an inferred size came from."""
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, Integral):
        raise TypeError(f"n_tokens must be a positive integer, got {n_tokens!r}.")
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be a positive integer, got {n_tokens!r}.")
    need = int(n_tokens) * _BYTES_PER_TOKEN
    if n_tokens > _MAX_TOKENS or need > _physical_memory() // 2:
        why = f"{cause}, so the vocabulary" if cause else f"with n_tokens={n_tokens} the vocabulary"
        raise ValueError(
            f"{why} would have {int(n_tokens):,} tokens: its per-token arrays alone need about "
            f"{need / 2**30:.3g} GiB (at most {_MAX_TOKENS:,} tokens and half of this machine's "
            "memory are supported). Token ids must be compact, 0..K-1: map sparse ids or "
            "strings to ids with ccmc_estim.Vocabulary."
        )
    return int(n_tokens)


@dataclass(frozen=True, eq=False)
class PromptStats:
    """Sufficient statistics of a set of prompts: query and token histogram of each prompt.

    Attributes
    ----------
    n_tokens : int
        Vocabulary size ``K``; every token id lies in ``0..K-1``.
    indptr : ndarray of int64, shape (n_prompts + 1,)
        Prompt ``i`` owns entries ``indptr[i]:indptr[i + 1]``.
    tokens : ndarray of int32
        Distinct tokens of each prompt, sorted within the prompt.
    counts : ndarray of float64
        Count of each entry's token in its prompt (real-valued so that position-weighted counts
        fit the same layout).
    query : ndarray of int32, shape (n_prompts,)
        Last token of each prompt.
    """

    n_tokens: int
    indptr: np.ndarray
    tokens: np.ndarray
    counts: np.ndarray
    query: np.ndarray

    @property
    def n_prompts(self):
        return self.query.size

    @cached_property
    def logc(self):
        with np.errstate(divide="ignore"):  # a weight that underflowed to 0 is log 0 = -inf
            return np.log(self.counts)

    @cached_property
    def row(self):
        """Prompt index of every entry."""
        return np.repeat(np.arange(self.n_prompts), np.diff(self.indptr))

    @cached_property
    def by_query(self):
        """``(order, col_ptr)``: prompts ``order[col_ptr[q]:col_ptr[q + 1]]`` have query ``q``."""
        order = np.argsort(self.query, kind="stable")
        col_ptr = np.zeros(self.n_tokens + 1, np.int64)
        np.cumsum(np.bincount(self.query, minlength=self.n_tokens), out=col_ptr[1:])
        return order, col_ptr

    def output_entries(self, outputs):
        """Entry index of every output in its prompt, -1 where the output is absent."""
        return _kernels.output_entries(self.indptr, self.tokens, outputs)



def validate_prompts(prompts, n_tokens=None):
    """Flat int32 tokens, int64 ``indptr`` and vocabulary size of valid prompts."""
    flat, indptr = flatten_prompts(prompts)
    low = int(flat.min())
    if low < 0:
        i, t = _locate(flat, indptr, int(np.argmin(flat)))
        raise ValueError(f"prompt {i} has a negative token {low} at position {t}.")
    top = int(flat.max())
    if n_tokens is None:
        i, t = _locate(flat, indptr, int(np.argmax(flat)))
        n_tokens = check_n_tokens(top + 1, f"the largest token id is {top} (prompt {i}, "
                                            f"position {t})")
    else:
        n_tokens = check_n_tokens(n_tokens)
        if top >= n_tokens:
            i, t = _locate(flat, indptr, int(np.argmax(flat)))
            raise ValueError(
                f"prompt {i} has token {top} at position {t}, outside the vocabulary "
                f"0..{n_tokens - 1} (n_tokens={n_tokens})."
            )
    return flat.astype(np.int32, copy=False), indptr, n_tokens


def stats_from_flat(flat, indptr, n_tokens, dist_weight=_PLAIN):
    """:class:`PromptStats` of validated flat prompts; ``dist_weight`` as in
    ``_kernels.prompt_counts`` (position-weighted counts)."""
    nd, tokens, counts = _kernels.prompt_counts(flat, indptr, n_tokens, dist_weight)
    tokens = tokens.view(np.int32)  # token ids, below n_tokens
    query = flat[indptr[1:] - 1].astype(np.int32)
    return PromptStats(n_tokens, nd, tokens, counts, query)


def prompt_stats(prompts, n_tokens=None, dist_weight=_PLAIN):
    """Validate ``prompts`` and reduce them to their :class:`PromptStats`.

    Parameters
    ----------
    prompts : array-like of shape (n_prompts, L) or sequence of 1-D sequences
        Token ids.  Both forms give identical statistics.
    n_tokens : int or None
        Vocabulary size; inferred as ``max token + 1`` when None.
    dist_weight : ndarray
        Weight of a token at distance ``d`` from the end, ``dist_weight[min(d, len - 1)]``.
    """
    if isinstance(prompts, PromptStats):
        # Statistics are built here from validated prompts only: one handed in from outside
        # could hold any token id and would reach compiled code unchecked (a segfault).
        raise TypeError("prompts must be token ids, not internal prompt statistics.")
    flat, indptr, n_tokens = validate_prompts(prompts, n_tokens)
    return stats_from_flat(flat, indptr, n_tokens, dist_weight)


def check_outputs(outputs, n_prompts, n_tokens):
    """Validate next-token outputs: 1-D int64 in ``0..n_tokens-1`` (any supported id when
    ``n_tokens`` is None), one per prompt."""
    if outputs is None:
        raise ValueError(
            "this estimator requires y to be passed, but the target y is None: pass the "
            "next token of each prompt as outputs."
        )
    if isinstance(outputs, (str, bytes)) or np.isscalar(outputs):
        raise TypeError(f"outputs must be a 1-D integer array, got {type(outputs).__name__}.")
    if isinstance(outputs, (list, tuple)) and _has_bool(outputs):
        raise TypeError("outputs hold booleans; they must be integer token ids.")
    try:
        arr = np.asarray(outputs)
    except ValueError:
        raise ValueError("outputs must be a flat 1-D integer array; it is ragged.") from None
    if arr.ndim != 1:
        raise ValueError(f"outputs must be 1-D, got shape {arr.shape}.")
    arr = _check_integral(arr, "outputs").astype(np.int64, copy=False)
    if arr.size != n_prompts:
        raise ValueError(
            f"got {n_prompts} prompts but {arr.size} outputs; there must be one output per prompt."
        )
    if arr.size:
        if n_tokens is None:
            n_tokens = _MAX_TOKENS
        bad = np.flatnonzero((arr < 0) | (arr >= n_tokens))
        if bad.size:
            raise ValueError(
                f"output {arr[bad[0]]} of sample {bad[0]} is outside the vocabulary "
                f"0..{n_tokens - 1} (n_tokens={n_tokens}); {bad.size} output(s) are."
            )
    return arr


def check_sample_weight(sample_weight, n_prompts, allow_zero=False):
    """Non-negative, finite float64 weights (a scalar applies to every sample), ones when None;
    all zero only with ``allow_zero`` (one partition of a Dask collection may be, the whole
    data set may not)."""
    if sample_weight is None:
        return np.ones(n_prompts)
    w = np.asarray(sample_weight)
    if w.dtype.kind not in "biuf" or w.dtype == bool:
        raise TypeError(f"sample_weight must hold real numbers, got dtype {w.dtype}.")
    w = w.astype(np.float64)
    if w.ndim == 0:
        w = np.full(n_prompts, float(w))
    if w.shape != (n_prompts,):
        raise ValueError(f"sample_weight has shape {w.shape}, expected ({n_prompts},).")
    bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
    if bad.size:
        raise ValueError(
            f"sample_weight must be finite and non-negative; sample {bad[0]} has {w[bad[0]]}."
        )
    if n_prompts and not allow_zero and not w.any():
        raise ValueError("sample_weight is zero for every sample: nothing to fit or score.")
    return w


def check_covered(flat, indptr, outputs, n_tokens):
    """Raise a ValueError naming the first output that does not occur in its prompt."""
    missing = np.flatnonzero(~_kernels.output_in_prompt(flat, indptr, outputs, n_tokens, -1))
    if missing.size:
        n_bad, i = missing.size, missing[0]
        raise ValueError(
            f"output {outputs[i]} of sample {i} does not occur in its prompt, so the CCMC gives it "
            f"probability zero ({n_bad} of {outputs.size} sample(s) are like this). A CCMC can "
            "only copy tokens of its prompt: fit ccmc_estim.MixtureCCMCEstimator, which also "
            "generates tokens, or keep only the covered pairs: "
            "keep = ccmc_estim.in_prompt(prompts, outputs)."
        )


def in_prompt(prompts, outputs):
    """Whether each output occurs in its prompt (the pairs a pure CCMC can explain).

    Parameters
    ----------
    prompts : array-like of shape (n, L) or sequence of 1-D sequences
    outputs : array-like of shape (n,)

    Returns
    -------
    ndarray of bool, shape (n,)

    Examples
    --------
    >>> from ccmc_estim import in_prompt
    >>> in_prompt([[0, 1], [1, 2]], [1, 0]).tolist()
    [True, False]
    """
    flat, indptr, K = validate_prompts(prompts)
    y = check_outputs(outputs, indptr.size - 1, None)
    K = max(K, int(y.max()) + 1)
    return _kernels.output_in_prompt(flat, indptr, y, K, -1)


# --------------------------------------------------------------------------- hashable tokens
def _is_id_array(values):
    """Whether ``values`` hold (or would hold) integer token ids rather than other tokens."""
    if isinstance(values, np.ndarray):
        return values.dtype.kind in "iufcb" or (values.dtype == object and values.size > 0
                                                and _numeric(values.flat[0]))
    try:
        first = next(iter(values))
    except (TypeError, StopIteration):
        return True
    if isinstance(first, (list, tuple, np.ndarray)):  # a prompt: look at its first token
        for p in values:
            arr = np.asarray(p) if not isinstance(p, np.ndarray) else p
            if arr.size:
                return arr.dtype.kind in "iufcb" or (arr.dtype == object and _numeric(arr[0]))
        return True
    return _numeric(first)


def _numeric(x):
    return isinstance(x, (Integral, float, np.floating, complex, bool, np.bool_))


def _token_array(prompts):
    """Flat object/str array of the tokens of hashable prompts and their ``indptr``."""
    if isinstance(prompts, np.ndarray) and prompts.ndim == 2:
        return prompts.ravel(), np.arange(0, prompts.size + 1, prompts.shape[1],
                                          dtype=np.int64)
    if isinstance(prompts, (str, bytes)):
        raise TypeError("prompts must be a sequence of token sequences, not a string.")
    parts = []
    for i, p in enumerate(prompts):
        if isinstance(p, (str, bytes)):
            raise TypeError(f"prompt {i} is a string; pass a sequence of tokens (e.g. "
                            "text.split()).")
        parts.append(np.asarray(p, dtype=object if not isinstance(p, np.ndarray) else None))
    if not parts:
        raise ValueError("prompts is empty: at least one prompt is required.")
    lengths = np.fromiter((a.size for a in parts), np.int64, len(parts))
    indptr = np.zeros(len(parts) + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    flat = np.concatenate([a.astype(object) for a in parts]) if parts else np.zeros(0, object)
    return flat, indptr


def token_classes(prompts, outputs):
    """None when prompts and outputs are integer ids (the fast path); otherwise the sorted
    distinct tokens, which become the estimator's ``classes_`` (ids are positions in it)."""
    if _is_id_array(outputs if not isinstance(outputs, (list, tuple)) else list(outputs)):
        return None
    flat, _ = _token_array(prompts)
    everything = np.concatenate([flat, np.asarray(list(outputs), dtype=object)])
    try:
        classes = np.unique(everything)
    except TypeError:  # tokens of mixed types: order by type name, then value
        uniq = list(dict.fromkeys(everything.tolist()))
        classes = np.array(sorted(uniq, key=lambda t: (type(t).__name__, repr(t))),
                           dtype=object)
    return classes


def encode_tokens(values, classes, what):
    """Positions of hashable tokens in ``classes``; a ValueError names an unknown one."""
    index = {t: i for i, t in enumerate(classes.tolist())}
    out = np.empty(len(values), np.int64)
    for i, t in enumerate(values.tolist() if isinstance(values, np.ndarray) else values):
        try:
            out[i] = index[t]
        except KeyError:
            raise ValueError(
                f"{what(i)} is {t!r}, a token not seen in training (not in classes_). Map an "
                "open vocabulary with ccmc_estim.Vocabulary, whose unknown token takes "
                "unseen tokens."
            ) from None
        except TypeError:
            raise TypeError(f"{what(i)} is {t!r}, which is not hashable.") from None
    return out


def encode_prompts(prompts, classes):
    """Hashable-token prompts as id arrays (a list, or a 2-D array for a 2-D input)."""
    flat, indptr = _token_array(prompts)

    def where(j):
        i = int(np.searchsorted(indptr, j, side="right") - 1)
        return f"token {j - indptr[i]} of prompt {i}"

    ids = encode_tokens(flat, classes, where)
    if isinstance(prompts, np.ndarray) and prompts.ndim == 2:
        return ids.reshape(prompts.shape)
    return [ids[a:b] for a, b in pairwise(indptr)]


def encode_outputs(outputs, classes):
    if outputs is None:
        return None
    values = list(outputs) if not isinstance(outputs, np.ndarray) else outputs
    return encode_tokens(values, classes, lambda i: f"output {i}")
