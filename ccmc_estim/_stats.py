"""Input validation and the sufficient statistics of prompts (THEORY.md section 2).

This is the only module that touches raw user input.  A prompt is reduced once to its query (the
last token) and the histogram of its tokens, stored as CSR-like flat arrays; every consumer (the
models, the estimators, the diagnostics) reads these arrays.
"""

from dataclasses import dataclass
from functools import cached_property
from numbers import Integral

import numpy as np
from scipy.sparse import issparse

from . import _kernels

_PLAIN = np.ones(1)  # every position counts once


def _check_integral(values, what):
    """Return ``values`` as int64, raising a clear error for NaN, non-integers and booleans."""
    values = np.asarray(values)
    if values.dtype == bool:
        raise TypeError(f"{what} must hold integer token ids, got booleans.")
    if values.dtype.kind in "iu":
        return values.astype(np.int64, copy=False)
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
    return values.astype(np.int64)


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
    if not (isinstance(prompts, np.ndarray) and prompts.dtype == object):
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
    try:  # fast path: flat 1-D numeric prompts; anything else gets the checks below
        lengths = np.fromiter(map(len, seqs), np.int64, len(seqs))
        flat = np.concatenate(seqs)
        fast = flat.ndim == 1 and flat.size == lengths.sum() and flat.dtype.kind in "iuf"
    except (TypeError, ValueError):
        fast = False
    if fast and lengths.min() > 0:
        indptr = np.zeros(len(seqs) + 1, np.int64)
        np.cumsum(lengths, out=indptr[1:])
        if flat.dtype.kind in "iu":
            return flat.astype(np.int64, copy=False), indptr
    parts = []
    for i, p in enumerate(seqs):
        if not isinstance(p, np.ndarray):
            if isinstance(p, (str, bytes)) or np.isscalar(p):
                raise ValueError(
                    f"prompt {i} is a scalar ({p!r}); each prompt must be a 1-D sequence of tokens."
                )
            try:
                p = np.asarray(p)
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
    flat = np.concatenate(parts)
    try:
        flat = _check_integral(flat, "prompts")
    except (TypeError, ValueError) as exc:
        # Name the prompt: re-check the offending one on its own.
        for i, p in enumerate(parts):
            _check_integral(p, f"prompt {i}")
        raise exc
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


def check_n_tokens(n_tokens):
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, Integral) or n_tokens < 1:
        raise ValueError(f"n_tokens must be a positive integer, got {n_tokens!r}.")
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
    """Flat tokens, ``indptr`` and vocabulary size of valid prompts (see :func:`prompt_stats`)."""
    flat, indptr = flatten_prompts(prompts)
    if flat.min() < 0:
        i, t = _locate(flat, indptr, int(np.argmin(flat)))
        raise ValueError(f"prompt {i} has a negative token {flat.min()} at position {t}.")
    top = int(flat.max())
    if n_tokens is None:
        n_tokens = top + 1
    else:
        n_tokens = check_n_tokens(n_tokens)
        if top >= n_tokens:
            i, t = _locate(flat, indptr, int(np.argmax(flat)))
            raise ValueError(
                f"prompt {i} has token {top} at position {t}, outside the vocabulary "
                f"0..{n_tokens - 1} (n_tokens={n_tokens})."
            )
    return flat, indptr, n_tokens


def stats_from_flat(flat, indptr, n_tokens, dist_weight=_PLAIN):
    """:class:`PromptStats` of validated flat prompts; ``dist_weight`` as in
    ``_kernels.prompt_counts`` (position-weighted counts)."""
    nd, tokens, counts = _kernels.prompt_counts(flat, indptr, n_tokens, dist_weight)
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
        if n_tokens is not None and prompts.n_tokens != n_tokens:
            raise ValueError(
                f"prompt statistics have n_tokens={prompts.n_tokens}, expected {n_tokens}."
            )
        return prompts
    flat, indptr, n_tokens = validate_prompts(prompts, n_tokens)
    return stats_from_flat(flat, indptr, n_tokens, dist_weight)


def check_outputs(outputs, n_prompts, n_tokens):
    """Validate next-token outputs: 1-D integers in ``0..n_tokens-1``, one per prompt."""
    if outputs is None:
        raise ValueError(
            "this estimator requires y to be passed, but the target y is None: pass the "
            "next token of each prompt as outputs."
        )
    if isinstance(outputs, (str, bytes)) or np.isscalar(outputs):
        raise TypeError(f"outputs must be a 1-D integer array, got {type(outputs).__name__}.")
    try:
        arr = np.asarray(outputs)
    except ValueError:
        raise ValueError("outputs must be a flat 1-D integer array; it is ragged.") from None
    if arr.ndim != 1:
        raise ValueError(f"outputs must be 1-D, got shape {arr.shape}.")
    arr = _check_integral(arr, "outputs")
    if arr.size != n_prompts:
        raise ValueError(
            f"got {n_prompts} prompts but {arr.size} outputs; there must be one output per prompt."
        )
    if arr.size:
        bad = np.flatnonzero((arr < 0) | (arr >= n_tokens))
        if bad.size:
            raise ValueError(
                f"output {arr[bad[0]]} of sample {bad[0]} is outside the vocabulary "
                f"0..{n_tokens - 1} (n_tokens={n_tokens}); {bad.size} output(s) are."
            )
    return arr


def check_sample_weight(sample_weight, n_prompts):
    """Non-negative, finite float64 weights, ones when None."""
    if sample_weight is None:
        return np.ones(n_prompts)
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.ndim == 0:
        return np.full(n_prompts, float(w))
    if w.shape != (n_prompts,):
        raise ValueError(f"sample_weight has shape {w.shape}, expected ({n_prompts},).")
    bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
    if bad.size:
        raise ValueError(
            f"sample_weight must be finite and non-negative; sample {bad[0]} has {w[bad[0]]}."
        )
    return w


def check_outputs_in_prompts(stats, outputs):
    """Entry of every output in its prompt; a ValueError names the first output that is absent."""
    entries = stats.output_entries(outputs)
    missing = np.flatnonzero(entries < 0)
    if missing.size:
        i = missing[0]
        raise ValueError(
            f"output {outputs[i]} of sample {i} does not occur in its prompt, so the CCMC gives it "
            f"probability zero ({missing.size} sample(s) are like this). A CCMC can only emit "
            "tokens present in the prompt."
        )
    return entries


@dataclass(frozen=True, eq=False)
class ColumnData:
    """Per-column estimation problems (THEORY.md section 3): prompts grouped by query.

    Column ``q`` owns prompts ``col_ptr[q]:col_ptr[q + 1]`` of the reordered layout and the
    parameters ``id_ptr[q]:id_ptr[q + 1]`` of the flat parameter vector, which are the logits of
    tokens ``id_tokens[id_ptr[q]:id_ptr[q + 1]]`` (the identified entries of the column).
    """

    n_tokens: int
    col_ptr: np.ndarray
    indptr: np.ndarray
    local: np.ndarray
    logc: np.ndarray
    y_entry: np.ndarray
    weight: np.ndarray
    id_ptr: np.ndarray
    id_tokens: np.ndarray
    entry_index: np.ndarray | None  # entry of the source statistics behind each entry

    @property
    def n_params(self):
        return self.id_tokens.size

    @cached_property
    def id_query(self):
        """Query (column) of every parameter."""
        return np.repeat(np.arange(self.n_tokens), np.diff(self.id_ptr))

    def identified_mask(self):
        mask = np.zeros((self.n_tokens, self.n_tokens), bool)
        mask[self.id_tokens, self.id_query] = True
        return mask

    def to_matrix(self, theta, fill=0.0):
        out = np.full((self.n_tokens, self.n_tokens), fill, dtype=np.float64)
        out[self.id_tokens, self.id_query] = theta
        return out

    def from_matrix(self, logits):
        return np.ascontiguousarray(logits[self.id_tokens, self.id_query], dtype=np.float64)


def column_data(stats, outputs=None, weight=None, keep_index=False):
    """Group prompts with positive weight by query and index each column's identified tokens.

    Without ``outputs`` the result describes the prompts only (``y_entry`` is None).  With
    ``keep_index`` it records, for each entry, its entry in ``stats`` (to refresh ``logc`` for
    new position weights).
    """
    weight = np.ones(stats.n_prompts) if weight is None else weight
    order, _ = stats.by_query
    order = order[weight[order] > 0]
    K = stats.n_tokens
    lengths = np.diff(stats.indptr)[order]
    indptr = np.zeros(order.size + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    src = np.repeat(stats.indptr[order] - indptr[:-1], lengths)
    src += np.arange(indptr[-1])
    tokens = stats.tokens[src]
    with np.errstate(divide="ignore"):  # a weight that underflowed to 0 is log 0 = -inf
        logc = np.log(stats.counts[src])
    query = stats.query[order]
    col_ptr = np.zeros(K + 1, np.int64)
    np.cumsum(np.bincount(query, minlength=K), out=col_ptr[1:])
    q_entry = np.repeat(query, lengths)
    mask = np.zeros((K, K), bool)
    mask[tokens, q_entry] = True
    # Rank of each identified token within its column, in token order.
    rank = np.cumsum(mask, axis=0, dtype=np.int32) - 1
    local = rank[tokens, q_entry]
    del tokens, q_entry, rank
    id_ptr = np.zeros(K + 1, np.int64)
    np.cumsum(mask.sum(axis=0), out=id_ptr[1:])
    _, id_tokens = np.nonzero(mask.T)
    y_entry = None
    if outputs is not None:
        entries = check_outputs_in_prompts(stats, outputs)
        y_entry = entries[order] - stats.indptr[order] + indptr[:-1]
    return ColumnData(
        n_tokens=K,
        col_ptr=col_ptr,
        indptr=indptr,
        local=local,
        logc=logc,
        y_entry=y_entry,
        weight=np.ascontiguousarray(weight[order]),
        id_ptr=id_ptr,
        id_tokens=id_tokens.astype(np.int32),
        entry_index=src if keep_index else None,
    )
