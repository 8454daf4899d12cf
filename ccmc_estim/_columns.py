"""The column-block layout: pairs grouped by query, logits stored by column.

Every pair (prompt, output) touches one query column only, so the statistics of the data, the
logits, their standard errors and the identifiability graphs all live in one compressed-column
layout: a column pointer, token ids, values.  Nothing here costs memory of order ``K^2``.
"""

from collections import namedtuple
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
from scipy import sparse

from . import _kernels
from ._solvers import THREAD_MIN_WORK, column_ranges, run_threads

_PLAIN = np.ones(1)  # every position counts once

#: The flat arrays of a column problem, as one named argument of compiled code.
Layout = namedtuple("Layout", "col_ptr indptr local count y_entry weight id_ptr")


@dataclass(frozen=True, eq=False)
class ColumnProblem:
    """Per-column estimation problems (one convex problem per query column).

    Column ``q`` owns prompts ``col_ptr[q]:col_ptr[q + 1]`` of the layout; prompt ``r`` owns
    entries ``indptr[r]:indptr[r + 1]``, each a distinct token given by its ``local`` index in
    the column's parameter vector and its (possibly position-weighted) ``count`` in the
    prompt; ``y_entry[r]`` is the entry of the output (empty without outputs).  The
    parameters of column ``q`` are ``id_ptr[q]:id_ptr[q + 1]`` of the flat parameter vector:
    the logits of tokens ``id_tokens[id_ptr[q]:id_ptr[q + 1]]`` (sorted), the entries that
    enter the likelihood.  ``(id_ptr, id_tokens)`` is the CSC structure of the logits.
    ``rows[r]`` is the input prompt behind layout prompt ``r``.

    ``local`` is unsigned (uint32): compiled code indexed by a signed value tests it for a
    negative, wrapped index at every access, and the passes over the entries index by it
    (the solve took 1.15 times as long with int32).
    """

    n_tokens: int
    col_ptr: np.ndarray
    indptr: np.ndarray
    local: np.ndarray
    count: np.ndarray
    y_entry: np.ndarray
    weight: np.ndarray
    id_ptr: np.ndarray
    id_tokens: np.ndarray
    rows: np.ndarray | None = None  # input prompt behind each layout prompt

    @property
    def n_params(self):
        return self.id_tokens.size

    @property
    def has_outputs(self):
        return self.y_entry.size > 0 or self.col_ptr[-1] == 0

    @property
    def layout(self):
        return Layout(self.col_ptr, self.indptr, self.local, self.count, self.y_entry,
                      self.weight, self.id_ptr)

    @cached_property
    def id_query(self):
        """Query (column) of every parameter."""
        return np.repeat(np.arange(self.n_tokens, dtype=np.int32), np.diff(self.id_ptr))

    def with_count(self, count):
        return replace(self, count=count)

    # ------------------------------------------------------------------ values by column
    def to_csc(self, values):
        """``(K, K)`` CSC array holding one value per parameter (zeros stored explicitly)."""
        return by_column(values, self.id_tokens, self.id_ptr, self.n_tokens, sparse=True)

    def to_dense(self, values, fill=0.0):
        return by_column(values, self.id_tokens, self.id_ptr, self.n_tokens, sparse=False,
                         fill=fill)

    def gather(self, logits):
        """The parameters' values in dense or sparse ``(K, K)`` logits (0 where not stored)."""
        if sparse.issparse(logits):
            ptr, idx, val = csc_parts(logits)
            return _kernels.csc_gather(ptr, idx, val, self.id_ptr, self.id_tokens)
        return np.ascontiguousarray(logits[self.id_tokens, self.id_query], dtype=np.float64)


def by_column(values, id_tokens, id_ptr, n_tokens, sparse, fill=0.0):
    """``(K, K)`` array of one value per identified entry, given in the column layout
    ``(id_ptr, id_tokens)``: a CSC array that shares ``values`` and ``id_tokens``, or a dense
    array whose other entries are ``fill`` (the one place values by column become a matrix)."""
    if sparse:
        return csc_from_parts(values, id_tokens, id_ptr, n_tokens)
    out = np.full((n_tokens, n_tokens), fill, dtype=np.asarray(values).dtype)
    out[id_tokens, np.repeat(np.arange(n_tokens), np.diff(id_ptr))] = values
    return out


def csc_from_parts(values, indices, indptr, n_tokens):
    """``(K, K)`` CSC array on ``values`` and ``indices`` without copying them.

    scipy gives both index arrays one dtype: ``indptr`` (int64 in the layouts, ``K + 1``
    entries) is cast to the int32 of ``indices`` when it fits, rather than the ``indices``
    (one per stored entry) to int64.
    """
    ptr = np.asarray(indptr)
    if ptr[-1] <= np.iinfo(indices.dtype).max:
        ptr = ptr.astype(indices.dtype, copy=False)
    return sparse.csc_array((values, indices, ptr), shape=(n_tokens, n_tokens), copy=False)


def csc_parts(matrix):
    """``(indptr int64, indices int32, data float64)`` of a canonical CSC copy of ``matrix``."""
    m = sparse.csc_array(matrix)
    if not m.has_canonical_format:
        m = m.copy()
        m.sum_duplicates()
    return (m.indptr.astype(np.int64, copy=False), m.indices.astype(np.int32, copy=False),
            m.data.astype(np.float64, copy=False))


def build_columns(flat, indptr, n_tokens, outputs=None, weight=None, dist_weight=_PLAIN,
                  query=None, pos_weight=None, n_jobs=1, order=None, sentinel=False,
                  uncounted=-1):
    """Group the prompts with positive weight by query into a :class:`ColumnProblem`.

    ``flat``/``indptr`` are validated prompts (int32 tokens below ``n_tokens``) whose last
    token is the query, unless ``query`` is given (``pos_weight``, when given, is each flat
    position's count, as for prompt statistics); ``outputs`` must all occur in their prompts
    (see ``_stats.check_covered``); ``dist_weight`` as in ``_kernels.prompt_counts``.  Up to
    ``n_jobs`` threads lay out disjoint ranges of columns.  ``order``, when given, is the
    prompts to lay out, of positive weight and stably sorted by query (:func:`query_order`):
    a slice of it lays out a range of columns.  With ``sentinel``, every prompt also holds
    the token ``n_tokens - 1`` (never in ``flat``) before its first, counted as a token
    there (the copy-and-generate mixture's sentinel, laid out without a copy of the prompts).
    The token ``uncounted`` (-1: none) counts 0 wherever it occurs (the mixture's unknown
    token, never copied): its entries stay, as parameters.
    """
    n = indptr.size - 1
    # Compiled code does not check bounds: a sentinel already in a prompt would be counted
    # twice and leave an entry unwritten.
    if sentinel and (pos_weight is not None or (flat.size and flat.max() >= n_tokens - 1)):
        raise ValueError("a sentinel is counted by distance (no pos_weight) and must not "
                         "occur in the prompts.")
    zero = int(uncounted)
    if not -1 <= zero < n_tokens - sentinel:
        raise ValueError(f"uncounted={uncounted} is not a token of the prompts.")
    extra = n_tokens - 1 if sentinel else -1
    if query is None:
        query = flat[indptr[1:] - 1]
    if weight is None:
        weight = np.ones(n)
    if order is None:
        order = query_order(query, weight)
    col_ptr = np.zeros(n_tokens + 1, np.int64)
    np.cumsum(np.bincount(query[order], minlength=n_tokens), out=col_ptr[1:])
    y = np.zeros(0, np.int64) if outputs is None else outputs
    pw = np.zeros(0) if pos_weight is None else pos_weight
    # Contiguous column ranges of similar work (tokens to read), one per thread.
    work = np.zeros(order.size + 1)
    np.cumsum(indptr[order + 1] - indptr[order], out=work[1:])
    load = np.diff(work[col_ptr])
    n_chunks = int(n_jobs) if work[-1] >= THREAD_MIN_WORK else 1
    bounds = column_ranges(load, n_tokens, n_chunks)
    ranges = list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))
    common = (flat, indptr, order, col_ptr)
    ent_ptr = np.zeros(order.size + 1, np.int64)
    id_ptr = np.zeros(n_tokens + 1, np.int64)
    run_threads(lambda r: _kernels.layout_sizes(*common, *r, n_tokens, extra, ent_ptr[1:],
                                                id_ptr[1:]), ranges)
    np.cumsum(ent_ptr, out=ent_ptr)
    np.cumsum(id_ptr, out=id_ptr)
    nnz = int(ent_ptr[-1])
    local = np.empty(nnz, np.uint32)
    count = np.empty(nnz)
    y_entry = np.empty(order.size if y.size else 0, np.int64)
    id_tokens = np.empty(int(id_ptr[-1]), np.int32)
    # The kernel sorts token ids into local and id_tokens alike: one type, one compilation.
    ids = id_tokens.view(np.uint32)
    run_threads(lambda r: _kernels.layout_fill(*common, *r, y, n_tokens, extra, zero,
                                               dist_weight, pw, ent_ptr, id_ptr, local, count,
                                               y_entry, ids), ranges)
    return ColumnProblem(
        n_tokens=n_tokens,
        col_ptr=col_ptr,
        indptr=ent_ptr,
        local=local,
        count=count,
        y_entry=y_entry,
        weight=np.ascontiguousarray(weight[order], dtype=np.float64),
        id_ptr=id_ptr,
        id_tokens=id_tokens,
        rows=order,
    )


def query_order(query, weight):
    """The prompts of positive ``weight``, stably sorted by ``query``: the layout's order."""
    order = np.argsort(query, kind="stable")
    return order[weight[order] > 0]


def columns_from_stats(stats, outputs=None, weight=None):
    """:func:`build_columns` of validated prompt statistics (each entry counted ``counts``)."""
    return build_columns(stats.tokens, stats.indptr, stats.n_tokens, outputs, weight,
                         query=stats.query, pos_weight=stats.counts)
