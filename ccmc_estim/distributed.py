"""Fitting and scoring on a Dask cluster, partitioned by query.

Every pair (prompt, output) touches one query column only, so a fit on data that no machine
holds runs in three steps of Dask tasks:

1. **validate** each input partition on a worker (the same checks as in memory; an error names
   the partition and the sample) and reduce it to flat prompts, outputs and weights, plus a
   small summary (largest token, largest and total weight, work per query column) that a tree
   reduction brings to the driver;
2. **shuffle** once: the driver cuts the columns ``0..K-1`` into contiguous blocks of similar
   work; every partition splits its pairs by block, and every block gathers its pieces from
   all partitions (an all-to-all exchange of the pairs, nothing else);
3. **solve** each block on a worker with the same compiled per-column code as an in-memory
   fit, together with its part of the identifiability report.

The mixture (``MixtureCCMCEstimator``) runs steps 1 and 2 alike, then keeps every block on
its worker for the whole EM: each iteration runs the blocks' E- and M-steps there and brings
a few scalars per block to the driver.  So does the learned position bias
(``PositionalCCMCEstimator`` without ``position_bias``): every L-BFGS evaluation sends the
bias to the blocks and brings back each block's part of the objective and of its gradient.

The driver receives the summaries and the fitted column blocks only, and merges them by
concatenation (a column's parameters are contiguous, blocks are contiguous column ranges):
the fitted estimator is the same object as after an in-memory fit, with the same attributes,
and equal to it (each column sees the same pairs in the same order, so it is solved by the
same floating-point operations).

Dask is optional: nothing here imports it before a Dask collection is passed.  The estimators
accept Dask collections directly (``CCMCEstimator().fit(X, y)`` with ``X``, ``y`` dask
arrays); :func:`windows` turns a ``dask.bag`` of token sequences into such a pair.
"""

import re
import sys
import time
from dataclasses import dataclass
from numbers import Integral

import numpy as np

from ._columns import build_columns
from ._solvers import ColumnSolution, column_ranges
from ._stats import (
    check_covered,
    check_n_tokens,
    check_outputs,
    check_sample_weight,
    n_threads,
    validate_prompts,
)
from .diagnostics import IdentifiabilityReport, report_from_columns, use_sparse

__all__ = ["fit", "is_dask_collection", "predict", "score", "score_samples", "windows"]

_PLAIN = np.ones(1)
_EMPTY_I32 = np.zeros(0, np.int32)


def is_dask_collection(x):
    """Whether ``x`` is a Dask collection, without importing Dask when nobody has.

    A Dask collection can only exist once Dask is imported, so the test is free for everyone
    who does not use Dask.

    Parameters
    ----------
    x : object

    Returns
    -------
    bool

    Examples
    --------
    >>> from ccmc_estim.distributed import is_dask_collection
    >>> is_dask_collection([[0, 1], [1, 0]])
    False
    """
    if "dask" not in sys.modules:
        return False
    import dask

    return dask.is_dask_collection(x)


def _require_dask():
    try:
        import dask
        import dask.array
    except ImportError as exc:  # pragma: no cover - needs an environment without Dask
        raise ImportError(
            "this needs Dask: pip install 'ccmc-estim[dask]' (dask[array,bag] and distributed)."
        ) from exc
    return dask


# --------------------------------------------------------------------------- errors
_INDEX = re.compile(r"\b(sample|prompt|sequence) (\d+)")


def _in_partition(exc, part, offset):
    """``exc`` with the sample it names located in the input: the partition, and the global
    sample number when the partition sizes are known (``offset`` is the partition's first
    sample, None when unknown)."""
    msg = str(exc)
    m = _INDEX.search(msg)
    if m is None:
        new = f"{msg} (in partition {part})"
    else:
        kind, i = m.group(1), int(m.group(2))
        if offset is None or kind == "sequence":
            label = f"{kind} {i} of partition {part}"
        else:
            label = f"{kind} {offset + i} (partition {part}, its {kind} {i})"
        new = msg[: m.start()] + label + msg[m.end() :]
    return type(exc)(new)


# --------------------------------------------------------------------------- input partitions
def _check_context_length(context_length):
    if isinstance(context_length, bool) or not isinstance(context_length, Integral):
        raise TypeError(f"context_length must be an integer, got {context_length!r}.")
    if context_length < 1:
        raise ValueError(f"context_length must be >= 1, got {context_length}.")
    return int(context_length)


def _window_partition(sequences, context_length, part):
    """``prompts_from_sequences`` of one bag partition (empty arrays when no sequence of it
    is longer than the context)."""
    from .datasets import prompts_from_sequences

    try:
        return prompts_from_sequences(list(sequences), context_length)
    except (TypeError, ValueError) as exc:
        # Only the whole bag must hold a sequence longer than the context (checked by the
        # consumer: an empty data set), not each of its partitions.
        if str(exc).startswith("no sequence is longer"):
            return np.zeros((0, context_length), np.int64), np.zeros(0, np.int64)
        raise _in_partition(exc, part, None) from None


def windows(sequences, context_length):
    """Lazy sliding-window training pairs of a ``dask.bag`` of token sequences.

    The :func:`~ccmc_estim.prompts_from_sequences` job, done per partition on the workers: a
    sequence of length ``T`` gives ``T - context_length`` pairs (windows never cross
    sequences, so the pairs are those of ``prompts_from_sequences`` on all the sequences, in
    the same order).  Nothing is computed before the result is used.

    Parameters
    ----------
    sequences : dask.bag.Bag
        Token sequences (1-D sequences of integer ids), e.g.
        ``dask.bag.from_sequence(seqs, npartitions=8)`` or a bag read from files.
    context_length : int
        Length of each prompt.

    Returns
    -------
    prompts : dask.array.Array of int64, shape (n_pairs, context_length)
        The windows, one chunk per bag partition (of unknown size until computed).
    outputs : dask.array.Array of int64, shape (n_pairs,)
        The token after each window, chunked like ``prompts``.

    Examples
    --------
    >>> import dask.bag as db
    >>> from ccmc_estim import CCMCEstimator
    >>> from ccmc_estim.distributed import windows
    >>> bag = db.from_sequence([[0, 1, 0, 1, 0, 1], [2, 1, 2, 2]], npartitions=2)
    >>> prompts, outputs = windows(bag, 3)
    >>> prompts.compute().tolist(), outputs.compute().tolist()
    ([[0, 1, 0], [1, 0, 1], [0, 1, 0], [2, 1, 2]], [1, 0, 1, 2])
    >>> CCMCEstimator().fit(prompts, outputs).n_tokens_
    3
    """
    dask = _require_dask()
    import dask.array as da
    import dask.bag as db

    if not isinstance(sequences, db.Bag):
        raise TypeError(
            "sequences must be a dask.bag.Bag of token sequences (for sequences in memory use "
            f"ccmc_estim.prompts_from_sequences), got {type(sequences).__name__}."
        )
    L = _check_context_length(context_length)
    cut = dask.delayed(_window_partition, nout=2)
    pairs = [cut(p, L, i) for i, p in enumerate(sequences.to_delayed())]
    prompts = da.concatenate(
        [da.from_delayed(x, shape=(np.nan, L), dtype=np.int64) for x, _ in pairs])
    outputs = da.concatenate(
        [da.from_delayed(y, shape=(np.nan,), dtype=np.int64) for _, y in pairs])
    return prompts, outputs


def _partitions(prompts, *columns):
    """Aligned row partitions of Dask ``prompts`` and 1-D ``columns`` (each None, a scalar, a
    NumPy array or a Dask array): per partition a delayed block of each, the partitions'
    first samples (None when the sizes are unknown) and their sizes (NaN when unknown)."""
    _require_dask()
    import dask.array as da

    if not isinstance(prompts, da.Array):
        raise TypeError(
            "prompts must be a 2-D dask.array (for a dask.bag of token sequences use "
            f"ccmc_estim.distributed.windows), got {type(prompts).__name__}."
        )
    if prompts.ndim != 2:
        raise ValueError(
            f"prompts must be a 2-D dask.array (n_prompts, prompt_length), got {prompts.ndim} "
            "dimension(s).")
    if prompts.numblocks[1] > 1:  # a prompt must lie whole in one partition
        prompts = prompts.rechunk({1: -1})
    rows = prompts.chunks[0]
    known = not any(np.isnan(r) for r in rows)
    n = int(sum(rows)) if known else None
    blocks = [prompts.to_delayed()[:, 0].tolist()]
    for name, col in columns:
        if col is None or (np.ndim(col) == 0 and not isinstance(col, da.Array)):
            blocks.append([col] * len(rows))
            continue
        if not isinstance(col, da.Array):
            if not known:
                raise ValueError(
                    f"{name} must be a dask.array chunked like prompts when the partition sizes "
                    "of prompts are unknown.")
            col = da.from_array(np.asarray(col), chunks=(rows,) + (-1,) * (np.ndim(col) - 1))
        if col.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {col.shape}.")
        if known and not np.isnan(col.shape[0]):
            if col.shape[0] != n:
                what = "outputs" if name == "outputs" else f"{name} values"
                raise ValueError(f"got {n} prompts but {col.shape[0]} {what}; there must be "
                                 "one per prompt.")
            if col.chunks[0] != rows:
                col = col.rechunk((rows,))
        elif col.numblocks[0] != len(rows):
            raise ValueError(
                f"{name} has {col.numblocks[0]} partitions and prompts {len(rows)}: with "
                "partition sizes unknown they must be chunked alike (compute the sizes with "
                ".compute_chunk_sizes() to rechunk).")
        blocks.append(col.to_delayed().ravel().tolist())
    offsets = np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.int64) if known else None
    offsets = [None] * len(rows) if offsets is None else offsets.tolist()
    return blocks, offsets, rows


def _concat(parts, rows, dtype):
    import dask.array as da

    return da.concatenate(
        [da.from_delayed(p, shape=(r,), dtype=dtype) for p, r in zip(parts, rows, strict=True)])


# --------------------------------------------------------------------------- step 1: validate
def _nbytes(*arrays):
    return sum(a.nbytes for a in arrays)


@dataclass(eq=False)
class _Part:
    """The pairs of one partition with positive weight (flat prompts, outputs, weights)."""

    flat: np.ndarray
    lengths: np.ndarray
    outputs: np.ndarray
    weight: np.ndarray

    def __sizeof__(self):
        # Dask sizes the data it holds and moves with sys.getsizeof: without this it would
        # count a piece of the shuffle as a few bytes (memory limits, spilling, transfer logs).
        return object.__sizeof__(self) + _nbytes(self.flat, self.lengths, self.outputs,
                                                 self.weight)


@dataclass(eq=False)
class _Summary:
    """What the driver needs of the data before the shuffle: sizes, the largest token (and
    where it is), the largest and total weight, and the work of every query column."""

    n: int
    top: int
    where: str
    wmax: float
    wsum: float
    load: np.ndarray

    def __add__(self, other):
        a, b = (self.load, other.load) if self.load.size >= other.load.size else (
            other.load, self.load)
        load = a.copy()
        load[: b.size] += b
        top, where = max((self.top, self.where), (other.top, other.where))
        return _Summary(self.n + other.n, top, where, max(self.wmax, other.wmax),
                        self.wsum + other.wsum, load)


def _prepare(prompts, outputs, weight, part, offset, n_tokens, covered=True):
    """Validate one partition as an in-memory fit validates its data; return its pairs with
    positive weight and its :class:`_Summary`.  ``covered``: every output must occur in its
    prompt (the CCMC; not the mixture, which also generates)."""
    prompts = np.asarray(prompts)
    n = len(prompts)
    try:
        if n == 0:
            check_outputs(outputs, 0, n_tokens)
            return _Part(_EMPTY_I32, np.zeros(0, np.int64), np.zeros(0, np.int64),
                         np.zeros(0)), _Summary(0, -1, "", 0.0, 0.0, np.zeros(0))
        flat, indptr, k = validate_prompts(prompts, n_tokens)
        y = check_outputs(outputs, n, n_tokens)
        w = check_sample_weight(weight, n, allow_zero=True)
        top, where = int(flat.max()), "prompts"
        if n_tokens is None and y.max() > top:
            top, where = int(y.max()), f"output of sample {int(y.argmax())}"
        if covered:
            check_covered(flat, indptr, y, top + 1 if n_tokens is None else k)
    except (TypeError, ValueError) as exc:
        raise _in_partition(exc, part, offset) from None
    where = f"{where} of partition {part}" if where == "prompts" else _in_partition(
        ValueError(where), part, offset).args[0]
    lengths = np.diff(indptr)
    wmax, wsum = float(w.max()), float(w.sum())
    keep = w > 0
    if not keep.all():  # zero weights never reach a column (as in build_columns): not shipped
        flat = flat[np.repeat(keep, lengths)]
        lengths, y, w = lengths[keep], y[keep], w[keep]
    query = flat[np.cumsum(lengths) - 1]
    # Work of a column: its entries plus one per prompt (what the block solve visits).
    load = np.bincount(query, weights=lengths + 1.0)
    summary = _Summary(n, top, where, wmax, wsum, load)
    return _Part(flat, lengths, y, w), summary


def _add(*summaries):
    total = summaries[0]
    for s in summaries[1:]:
        total = total + s
    return total


def _tree(dask, items, combine, fan_in=8):
    """A tree of ``combine`` tasks over delayed ``items`` (the driver gets one result)."""
    while len(items) > 1:
        items = [dask.delayed(combine, pure=True)(*items[i : i + fan_in])
                 for i in range(0, len(items), fan_in)]
    return items[0]


# --------------------------------------------------------------------------- step 2: shuffle
def _split(part, bounds):
    """The pairs of one partition split by column block (input order kept within a block)."""
    nb = bounds.size - 1
    if not part.lengths.size:
        return tuple(part for _ in range(nb))
    ends = np.cumsum(part.lengths)
    block = np.searchsorted(bounds, part.flat[ends - 1], side="right") - 1
    order = np.argsort(block, kind="stable")
    row_ptr = np.concatenate([[0], np.cumsum(np.bincount(block, minlength=nb))])
    entry_block = np.repeat(block, part.lengths)
    entry_order = np.argsort(entry_block, kind="stable")
    ent_ptr = np.concatenate([[0], np.cumsum(np.bincount(entry_block, minlength=nb))])
    flat = part.flat[entry_order]
    lengths, y, w = part.lengths[order], part.outputs[order], part.weight[order]
    # Copies, so that a piece sent elsewhere does not keep the whole partition alive.
    return tuple(
        _Part(flat[ent_ptr[b] : ent_ptr[b + 1]].copy(), lengths[row_ptr[b] : row_ptr[b + 1]].copy(),
              y[row_ptr[b] : row_ptr[b + 1]].copy(), w[row_ptr[b] : row_ptr[b + 1]].copy())
        for b in range(nb)
    )


def gather_pairs(*pieces):
    """The pairs of one column block, gathered from every partition in input order:
    ``(flat, indptr, outputs, weight)`` as ``_columns.build_columns`` takes them.

    The unit of work that any per-column estimator can reuse after the shuffle (the plain
    CCMC here; the E- and M-steps of the mixture are per column too).
    """
    flat = np.concatenate([p.flat for p in pieces]) if pieces else _EMPTY_I32
    lengths = np.concatenate([p.lengths for p in pieces]) if pieces else np.zeros(0, np.int64)
    indptr = np.zeros(lengths.size + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    outputs = np.concatenate([p.outputs for p in pieces]) if pieces else np.zeros(0, np.int64)
    weight = np.concatenate([p.weight for p in pieces]) if pieces else np.zeros(0)
    return flat.astype(np.int32, copy=False), indptr, outputs, weight


# --------------------------------------------------------------------------- step 3: solve
@dataclass(eq=False)
class _Block:
    """The fitted columns ``q0:q1``: parameters, solver results and report pieces."""

    q0: int
    q1: int
    id_ptr: np.ndarray  # from 0, shape (q1 - q0 + 1,)
    id_tokens: np.ndarray
    theta: np.ndarray
    objective: np.ndarray
    n_iter: np.ndarray
    status: np.ndarray
    information: list
    information_diag: np.ndarray
    n_prompts: np.ndarray
    n_components: np.ndarray
    components: dict
    n_cooccur: np.ndarray
    mle_exists: np.ndarray
    chosen: np.ndarray
    dominant: dict | None

    def __sizeof__(self):  # see _Part.__sizeof__
        arrays = [v for v in vars(self).values() if isinstance(v, np.ndarray)]
        return object.__sizeof__(self) + _nbytes(*arrays, *(
            a for a in self.information if a is not None))


def _fit_block(est, n_tokens, q0, q1, scale, dist_weight, *pieces):
    """Solve the columns ``q0:q1`` (all the pairs whose query lies there) on this worker."""
    flat, indptr, outputs, weight = gather_pairs(*pieces)
    problem = build_columns(flat, indptr, n_tokens, outputs, weight, dist_weight,
                            n_jobs=n_threads(est.n_jobs))
    del flat, indptr, outputs, weight
    return solve_block(est, problem, q0, q1, scale)


def solve_block(est, problem, q0, q1, scale, n_jobs=None):
    """Solve a column problem whose pairs all have queries in ``q0:q1`` (on ``n_jobs``
    threads, by default the estimator's) and keep what the fitted estimator needs of it (the
    in-memory fit uses it too)."""
    theta, cold = est._start(problem)
    solution = est._solve(problem, theta, scale, cold_start=cold, n_jobs=n_jobs)
    return block_result(est, problem, theta, solution, q0, q1)


def block_result(est, problem, theta, solution, q0, q1):
    """What the fitted estimator needs of the solved columns ``q0:q1`` of ``problem``
    (parameters ``theta``, ``solution``), with their part of the identifiability report;
    shared by every fit that solves column blocks (the CCMC, and the learned position bias,
    whose blocks solve many times before giving their last solution)."""
    report = report_from_columns(problem, dominant=est.alpha == 0)
    cols = slice(q0, q1)
    # Every parameter of this problem lies in columns q0:q1, so id_ptr[q0] is 0.
    mle = report.mle_exists
    return _Block(
        q0, q1, problem.id_ptr[q0 : q1 + 1].copy(), problem.id_tokens, theta,
        solution.objective[cols].copy(), solution.n_iter[cols].copy(),
        solution.status[cols].copy(), solution.information[cols], solution.information_diag,
        report.n_prompts[cols].copy(), report.n_components[cols].copy(), report.components,
        report.n_cooccur, np.zeros(q1 - q0, bool) if mle is None else mle[cols].copy(),
        np.zeros(problem.n_params, bool) if report.chosen is None else report.chosen,
        None if est.alpha != 0 else report.dominant or {},
    )


def _merge(blocks, n_tokens, sparse):
    """The identifiability report, parameters and solution of all columns, from the blocks
    (in column order, so every per-column and per-parameter array is their concatenation)."""
    def take(name):
        # Each block gives up its piece of a per-parameter field as soon as it is copied: the
        # peak is the results plus one block's piece, not twice the results.
        first = getattr(blocks[0], name)
        out = np.empty(sum(getattr(b, name).size for b in blocks), first.dtype)
        del first
        pos = 0
        for b in blocks:
            piece = getattr(b, name)
            out[pos : pos + piece.size] = piece
            pos += piece.size
            setattr(b, name, None)
            del piece
        return out

    cat = np.concatenate

    sizes = cat([np.diff(b.id_ptr) for b in blocks])
    id_ptr = np.zeros(n_tokens + 1, np.int64)
    np.cumsum(sizes, out=id_ptr[1:])
    n_components = cat([b.n_components for b in blocks])
    dominant = None if blocks[0].dominant is None else {
        q: g for b in blocks for q, g in b.dominant.items()}
    report = IdentifiabilityReport(
        n_tokens=n_tokens,
        n_prompts=cat([b.n_prompts for b in blocks]),
        queried=sizes > 0,
        n_components=n_components,
        components={q: g for b in blocks for q, g in b.components.items()},
        n_free_params=int(sizes.sum() - n_components.sum()),
        mle_exists=cat([b.mle_exists for b in blocks]),
        dominant=dominant,
        sparse=use_sparse(sparse, n_tokens, int(sizes.sum())),
        id_ptr=id_ptr,
        id_tokens=take("id_tokens"),
        n_cooccur=take("n_cooccur"),
        chosen=take("chosen"),
    )
    solution = ColumnSolution(
        objective=cat([b.objective for b in blocks]),
        n_iter=cat([b.n_iter for b in blocks]),
        status=cat([b.status for b in blocks]),
        information=[info for b in blocks for info in b.information],
        information_diag=take("information_diag"),
    )
    return report, take("theta"), solution


def _threads():
    """Worker threads of the current cluster (the cores of this machine for Dask's default
    scheduler)."""
    threads = 1
    if "distributed" in sys.modules:
        from distributed import default_client

        try:
            threads = sum(default_client().nthreads().values())
        except ValueError:  # no client: the local scheduler
            pass
    if threads == 1:
        import os

        threads = os.cpu_count() or 1
    return threads


def _default_blocks(n_partitions):
    """As many blocks as partitions (each fits where a partition fits), and at least one per
    thread of the current cluster."""
    return max(n_partitions, _threads())


def _mixture_blocks(n_partitions):
    """One block per thread of the current cluster: the mixture's blocks all stay in memory
    for the whole EM, so more blocks would not lower any worker's memory, and each costs a
    few tasks per EM iteration."""
    return _threads()


@dataclass(eq=False)
class _Shuffled:
    """Validated input, shuffled by column block (lazy pieces, one list per partition)."""

    summary: _Summary
    n_tokens: int
    bounds: np.ndarray
    pieces: list
    n_partitions: int


def _validate_and_shuffle(dask, prompts, outputs, sample_weight, n_tokens, n_blocks,
                          covered=True, default_blocks=_default_blocks):
    """Steps 1 and 2: validate the partitions on the workers (their pairs kept there), reduce
    their summaries on the driver, cut the columns into blocks and split every partition by
    block (lazily: each block's task gathers its pieces).  ``default_blocks(n_partitions)``
    is the number of blocks when ``n_blocks`` is None."""
    if outputs is None:
        check_outputs(None, 0, None)  # the in-memory error: y is required
    blocks, offsets, rows = _partitions(prompts, ("outputs", outputs),
                                        ("sample_weight", sample_weight))
    prepare = dask.delayed(_prepare, nout=2)
    parts = [prepare(x, y, w, i, offsets[i], n_tokens, covered)
             for i, (x, y, w) in enumerate(zip(*blocks, strict=True))]
    # Kept on the workers between the summary and the shuffle (recomputed if one is lost).
    parts = dask.persist(*[p[0] for p in parts], *[p[1] for p in parts])
    pairs, summaries = parts[: len(rows)], parts[len(rows) :]
    (summary,) = dask.compute(_tree(dask, list(summaries), _add))
    if summary.n == 0:
        raise ValueError("prompts is empty: at least one prompt is required.")
    if summary.wsum == 0:
        raise ValueError("sample_weight is zero for every sample: nothing to fit or score.")
    if n_tokens is None:
        n_tokens = check_n_tokens(summary.top + 1, f"the largest token id is {summary.top} "
                                                   f"({summary.where})")
    if n_blocks is None:
        n_blocks = default_blocks(len(rows))
    elif isinstance(n_blocks, bool) or not isinstance(n_blocks, Integral) or n_blocks < 1:
        raise ValueError(f"n_blocks must be a positive integer, got {n_blocks!r}.")
    bounds = column_ranges(summary.load, n_tokens, int(n_blocks))
    split = dask.delayed(_split, nout=bounds.size - 1, pure=True)
    pieces = [split(p, bounds) for p in pairs]
    return _Shuffled(summary, n_tokens, bounds, pieces, len(rows))


def fit(estimator, prompts, outputs, sample_weight=None, *, n_blocks=None, position_bias=None):
    """Fit an estimator on Dask collections, on the current Dask scheduler.

    What the estimators' ``fit`` run when they are given Dask collections: validate the
    partitions on the workers, shuffle the pairs by query into column blocks once, then fit
    the blocks on the workers.  A CCMC solves each block once and the driver merges the
    fitted blocks; the mixture keeps each block on its worker for the whole EM, the driver
    reducing a few scalars per block and iteration, and the learned position bias keeps them
    for its whole L-BFGS search (see :func:`_fit_positional`).  Call it directly to choose
    the number of column blocks.

    Parameters
    ----------
    estimator : CCMCEstimator, PositionalCCMCEstimator or MixtureCCMCEstimator
        Fitted in place, with its own parameters (``alpha``, ``tol``, ``n_jobs`` threads per
        block, ...).
    prompts : dask.array.Array of shape (n, L)
        Token ids; partitioned by rows (any chunking of the columns is merged).
    outputs : dask.array.Array of shape (n,), or a NumPy array when the partition sizes of
        ``prompts`` are known
    sample_weight : dask.array.Array, array-like, float or None
    n_blocks : int or None
        Number of column blocks; by default as many as input partitions and at least one per
        worker thread (for the mixture, one per worker thread: its blocks all stay in memory
        for the whole EM).  The columns are cut into contiguous ranges of similar work
        (entries of their prompts); a block holds whole columns, so one query's pairs are
        never split.
    position_bias : array-like or None
        Fixed position bias of a ``PositionalCCMCEstimator``; None fits it with its own
        ``position_bias``, learning the bias when that is None too (see
        :func:`_fit_positional`).

    Returns
    -------
    estimator

    Examples
    --------
    >>> import dask.array as da
    >>> from ccmc_estim import CCMCEstimator, make_ccmc_data
    >>> from ccmc_estim import distributed
    >>> X, y, _ = make_ccmc_data(2000, 6, 8, random_state=0)
    >>> est = distributed.fit(CCMCEstimator(), da.from_array(X, chunks=500),
    ...                       da.from_array(y, chunks=500), n_blocks=3)
    >>> bool(abs(est.objective_ - CCMCEstimator().fit(X, y).objective_) < 1e-9)
    True
    """
    from .mixture import MixtureCCMCEstimator

    if isinstance(estimator, MixtureCCMCEstimator):
        if position_bias is not None:
            raise TypeError("position_bias applies to PositionalCCMCEstimator, not to "
                            "MixtureCCMCEstimator.")
        return _fit_mixture(estimator, prompts, outputs, sample_weight, n_blocks=n_blocks)
    from .estimator import PositionalCCMCEstimator

    if isinstance(estimator, PositionalCCMCEstimator) and position_bias is None:
        # Its own bias, fixed or learned (the learned one runs _fit_positional).
        return estimator._fit_dask(prompts, outputs, sample_weight, n_blocks=n_blocks)
    dask = _require_dask()
    from .estimator import weight_scale

    t0 = time.perf_counter()
    estimator._validate_params()
    data = _validate_and_shuffle(dask, prompts, outputs, sample_weight, estimator.n_tokens,
                                 n_blocks)
    summary, n_tokens, bounds = data.summary, data.n_tokens, data.bounds
    scale = weight_scale(np.array([summary.wmax]))
    dist_weight = _PLAIN
    if position_bias is not None:
        dist_weight = np.exp(position_bias - position_bias.max())
    nb = bounds.size - 1
    est = dask.delayed(estimator, traverse=False)
    fitted = [
        dask.delayed(_fit_block, pure=True)(est, n_tokens, int(bounds[b]), int(bounds[b + 1]),
                                            scale, dist_weight, *[p[b] for p in data.pieces])
        for b in range(nb)
    ]
    fitted = dask.compute(*fitted)
    n_partitions = data.n_partitions
    del data
    report, theta, solution = _merge(fitted, n_tokens, estimator.sparse)
    bias = None if position_bias is None else position_bias
    # Dask collections hold integer ids (validated on the workers): no token classes to keep.
    estimator._token_classes = None
    estimator._assemble(report, theta, solution, summary.wsum, bias=bias, scale=scale)
    if estimator.verbose:
        print(
            f"{type(estimator).__name__} (Dask): {summary.n} prompts in {n_partitions} "
            f"partitions, {int(report.n_identified.sum())} identified logits in "
            f"{int(report.queried.sum())} columns solved in {nb} blocks, objective "
            f"{estimator.objective_:.10g}, {time.perf_counter() - t0:.3f} s"
        )
    return estimator


# --------------------------------------------------------------------------- the learned bias
def _bias_block(est, n_tokens, q0, q1, scale, *pieces):
    """The bias-search block of the columns ``q0:q1`` (all the pairs whose query lies there),
    built on this worker from its pieces of every partition."""
    from .estimator import _BiasBlock

    flat, indptr, outputs, weight = gather_pairs(*pieces)
    return _BiasBlock(est, flat, indptr, outputs, weight, n_tokens, q0, q1, scale)


def _fit_positional(estimator, prompts, outputs, sample_weight=None, *, n_blocks=None):
    """Fit a ``PositionalCCMCEstimator`` with a learned position bias on Dask collections.

    The pairs are validated and shuffled by query into column blocks once, as for the CCMC
    (see :func:`fit`); each block is then built on a worker and stays there for the whole
    bias search, as a future.  The driver runs the in-memory fit's L-BFGS-B on the profile
    objective ``F(b) = min_W objective(W, b)``: every evaluation sends ``b`` (``max_distance
    + 1`` numbers) to the blocks, which re-weight their columns' counts, solve their columns
    warm-started from their own previous solution and return their part of the objective (a
    scalar) and of its gradient in ``b`` (a ``max_distance + 1`` vector); the driver adds
    them.  After the search it receives the fitted column blocks of the best start and
    concatenates them.  The in-memory fit runs the same code with a single block.

    Without a ``distributed`` client the blocks are built by Dask's default scheduler and
    the search runs in this process.

    Parameters
    ----------
    estimator : PositionalCCMCEstimator
        With ``position_bias=None``; fitted in place, with its own parameters.
    prompts : dask.array.Array of shape (n, L)
    outputs : dask.array.Array of shape (n,), or a NumPy array when the partition sizes of
        ``prompts`` are known
    sample_weight : dask.array.Array, array-like, float or None
    n_blocks : int or None
        Number of column blocks; by default one per worker thread (all blocks stay in memory
        for the whole search, and every block costs two tasks per evaluation).

    Returns
    -------
    estimator
    """
    dask = _require_dask()
    from sklearn.base import clone

    from .estimator import _BiasBlock, weight_scale

    t0 = time.perf_counter()
    estimator._validate_params()
    data = _validate_and_shuffle(dask, prompts, outputs, sample_weight, estimator.n_tokens,
                                 n_blocks, default_blocks=_mixture_blocks)
    summary, n_tokens, bounds = data.summary, data.n_tokens, data.bounds
    scale = weight_scale(np.array([summary.wmax]))
    nb = bounds.size - 1
    # The blocks need the parameters only (their solver), not a previous fit's arrays.
    est = dask.delayed(clone(estimator), traverse=False)
    blocks = [
        dask.delayed(_bias_block, pure=True)(est, n_tokens, int(bounds[b]), int(bounds[b + 1]),
                                             scale, *[p[b] for p in data.pieces])
        for b in range(nb)
    ]
    run, blocks = _kept_blocks(dask, blocks)
    n_partitions = data.n_partitions
    del data  # the blocks hold the pairs now: the validated partitions can go
    b, states, path, n_outer = estimator._search_bias(run, blocks, scale)
    fitted = run.values(run.map(_BiasBlock.result, blocks, states))
    del states, blocks
    report, theta, solution = _merge(fitted, n_tokens, estimator.sparse)
    # Dask collections hold integer ids (validated on the workers): no token classes to keep.
    estimator._token_classes = None
    estimator._assemble(report, theta, solution, summary.wsum, bias=b,
                        n_bias_params=b.size - 1, scale=scale)
    estimator.objective_path_ = scale * np.array(path)
    estimator.n_bias_iter_ = n_outer
    estimator.position_bias_ = b
    if estimator.verbose:
        print(
            f"{type(estimator).__name__} (Dask): {summary.n} prompts in {n_partitions} "
            f"partitions, {nb} blocks, {n_outer} bias iterations, objective "
            f"{estimator.objective_:.10g}, {time.perf_counter() - t0:.3f} s"
        )
    return estimator


# --------------------------------------------------------------------------- the mixture's EM
def _em_block(config, n_tokens, q0, q1, scale, *pieces):
    """The EM block of the columns ``q0:q1`` (all the pairs whose query lies there), built on
    this worker from its pieces of every partition."""
    from .mixture import _EMBlock

    flat, indptr, outputs, weight = gather_pairs(*pieces)
    return _EMBlock(flat, indptr, outputs, weight / scale, n_tokens, q0, q1, config)


def _identity(x):
    return x


class _ClientRun:
    """Runs per-block computations (the mixture's EM, the bias search) on a ``distributed``
    cluster.

    Every handle is a future: a block, its parameters and its E-steps stay on the worker that
    holds the block (the scheduler runs a task where most of its input bytes are); only what
    :meth:`values` asks for travels to the driver.  Futures keep their lineage, so Dask
    recomputes what a lost worker held.
    """

    def __init__(self, client):
        self.client = client

    def map(self, func, *args):
        """``func`` on every block; an argument is a list (one item per block) or the same
        for all."""
        n = next(len(a) for a in args if isinstance(a, list))
        return [self.client.submit(func, *(a[i] if isinstance(a, list) else a for a in args),
                                   pure=False)
                for i in range(n)]

    def values(self, handles):
        return self.client.gather(handles)

    def share(self, value):
        # A task, not a scatter: its value can be recomputed if the worker holding it dies.
        return self.client.submit(_identity, value, pure=False)


def _kept_blocks(dask, blocks):
    """``(run, handles)`` of column blocks built by the delayed ``blocks`` and kept for many
    rounds of work: futures on the workers of the current client, or objects in this process
    under Dask's default scheduler."""
    from .mixture import _InMemory

    client = _client()
    if client is None:
        return _InMemory(), list(dask.compute(*blocks))
    return _ClientRun(client), client.compute(blocks)


def _client():
    """The current ``distributed`` client, or None (Dask's default scheduler)."""
    if "distributed" not in sys.modules:
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        return None


def _fit_mixture(estimator, prompts, outputs, sample_weight=None, *, n_blocks=None):
    """Fit a ``MixtureCCMCEstimator`` on Dask collections by EM on column blocks.

    The pairs are validated and shuffled by query into column blocks once, as for the CCMC
    (see :func:`fit`); each block is then built on a worker and stays there for the whole EM,
    as a future.  Every EM iteration runs the blocks' E- and M-steps on the workers (the same
    code as an in-memory fit, which is the case of one block) and brings to the driver only
    scalars per block: its parts of the objective, of the SQUAREM norms ``r @ r`` and ``v @ v``
    and, with ``copy_weight="shared"``, of the shared weight's sums.  Before EM the driver
    adds the blocks' Kneser-Ney continuation counts (a K-vector) and sends the unigram back;
    after it, it receives the fitted column blocks and concatenates them.

    Without a ``distributed`` client the blocks are built by Dask's default scheduler and
    the EM runs in this process.

    Parameters
    ----------
    estimator : MixtureCCMCEstimator
        Fitted in place, with its own parameters.
    prompts : dask.array.Array of shape (n, L)
    outputs : dask.array.Array of shape (n,), or a NumPy array when the partition sizes of
        ``prompts`` are known
    sample_weight : dask.array.Array, array-like, float or None
    n_blocks : int or None
        Number of column blocks; by default one per worker thread (all blocks stay in memory
        for the whole EM, and every block costs a few tasks per EM iteration).  The columns
        are cut into contiguous ranges of similar work, as for :func:`fit`.

    Returns
    -------
    estimator

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> from ccmc_estim import MixtureCCMCEstimator
    >>> from ccmc_estim import distributed
    >>> rng = np.random.default_rng(0)
    >>> X = rng.integers(0, 6, size=(2000, 8))
    >>> y = np.where(rng.random(2000) < 0.5, X[:, 3], rng.integers(0, 6, 2000))
    >>> est = distributed.fit(MixtureCCMCEstimator(), da.from_array(X, chunks=500),
    ...                       da.from_array(y, chunks=500), n_blocks=3)
    >>> ref = MixtureCCMCEstimator().fit(X, y)
    >>> est.n_iter_ == ref.n_iter_
    True
    >>> bool(np.allclose(est.copy_weight_, ref.copy_weight_, rtol=1e-10, atol=0))
    True
    """
    dask = _require_dask()
    from .mixture import MixtureCCMCEstimator, _weight_scale

    if not isinstance(estimator, MixtureCCMCEstimator):
        raise TypeError(f"this fits a MixtureCCMCEstimator, got "
                        f"{type(estimator).__name__}.")
    t0 = time.perf_counter()
    estimator._validate_params()
    config = estimator._em_config()
    data = _validate_and_shuffle(dask, prompts, outputs, sample_weight, estimator.n_tokens,
                                 n_blocks, covered=False, default_blocks=_mixture_blocks)
    n_tokens, bounds = data.n_tokens, data.bounds
    estimator._check_unknown_id(n_tokens)
    scale = _weight_scale(data.summary.wmax)
    nb = bounds.size - 1
    blocks = [
        dask.delayed(_em_block, pure=True)(config, n_tokens, int(bounds[b]),
                                           int(bounds[b + 1]), scale,
                                           *[p[b] for p in data.pieces])
        for b in range(nb)
    ]
    run, blocks = _kept_blocks(dask, blocks)
    where = f" (Dask, {data.n_partitions} partitions, {nb} blocks)"
    n_pairs = data.summary.n
    del data  # the blocks hold the pairs now: the validated partitions can go
    # Dask collections hold integer ids (validated on the workers): no token classes to keep.
    estimator._token_classes = None
    return estimator._fit_blocks(run, blocks, n_tokens, n_pairs, t0, where=where)


# --------------------------------------------------------------------------- prediction
def _predict_part(est, prompts, part, offset):
    try:
        return est.predict(np.asarray(prompts))
    except (TypeError, ValueError) as exc:
        raise _in_partition(exc, part, offset) from None


def _score_samples_part(est, prompts, outputs, part, offset):
    try:
        return est.score_samples(np.asarray(prompts), np.asarray(outputs))
    except (TypeError, ValueError) as exc:
        raise _in_partition(exc, part, offset) from None


def _score_part(est, prompts, outputs, weight, part, offset):
    """``(largest weight, sum of w * ll / largest, sum of w / largest, any -inf)`` of one
    partition (dividing by its largest weight keeps huge weights finite)."""
    try:
        prompts = np.asarray(prompts)
        if not len(prompts):
            return 0.0, 0.0, 0.0, False
        ll = est.score_samples(prompts, np.asarray(outputs))
        w = check_sample_weight(weight, ll.size, allow_zero=True)
    except (TypeError, ValueError) as exc:
        raise _in_partition(exc, part, offset) from None
    hit = w > 0
    if not hit.any():
        return 0.0, 0.0, 0.0, False
    top = float(w.max())
    if np.isneginf(ll[hit]).any():
        return top, 0.0, 0.0, True
    w = w[hit] / top
    return top, float(w @ ll[hit]), float(w.sum()), False


def predict(estimator, prompts):
    """Most probable next token of each prompt of a Dask array, as a lazy Dask array.

    Parameters
    ----------
    estimator : fitted estimator
    prompts : dask.array.Array of shape (n, L)

    Returns
    -------
    dask.array.Array of shape (n,)

    Examples
    --------
    >>> import dask.array as da
    >>> from ccmc_estim import CCMCEstimator, make_ccmc_data
    >>> X, y, _ = make_ccmc_data(500, 4, 6, random_state=0)
    >>> est = CCMCEstimator().fit(X, y)
    >>> lazy = est.predict(da.from_array(X, chunks=100))
    >>> bool((lazy.compute() == est.predict(X)).all())
    True
    """
    dask = _require_dask()
    (xs,), offsets, rows = _partitions(prompts)
    est = dask.delayed(estimator, traverse=False)
    parts = [dask.delayed(_predict_part, pure=True)(est, x, i, offsets[i])
             for i, x in enumerate(xs)]
    return _concat(parts, rows, estimator.classes_.dtype)


def score_samples(estimator, prompts, outputs):
    """Log-likelihood of each output of Dask collections, as a lazy Dask array.

    Parameters
    ----------
    estimator : fitted estimator
    prompts : dask.array.Array of shape (n, L)
    outputs : dask.array.Array or array-like of shape (n,)

    Returns
    -------
    dask.array.Array of float64, shape (n,)

    Examples
    --------
    >>> import dask.array as da
    >>> from ccmc_estim import CCMCEstimator, make_ccmc_data
    >>> X, y, _ = make_ccmc_data(500, 4, 6, random_state=0)
    >>> est = CCMCEstimator().fit(X, y)
    >>> lazy = est.score_samples(da.from_array(X, chunks=100), y)
    >>> bool(abs(lazy.sum().compute() - est.score_samples(X, y).sum()) < 1e-9)
    True
    """
    dask = _require_dask()
    (xs, ys), offsets, rows = _partitions(prompts, ("outputs", outputs))
    est = dask.delayed(estimator, traverse=False)
    parts = [dask.delayed(_score_samples_part, pure=True)(est, x, y, i, offsets[i])
             for i, (x, y) in enumerate(zip(xs, ys, strict=True))]
    return _concat(parts, rows, np.float64)


def score(estimator, prompts, outputs, sample_weight=None):
    """Mean log-likelihood of Dask collections, computed on the workers.

    Parameters
    ----------
    estimator : fitted estimator
    prompts : dask.array.Array of shape (n, L)
    outputs : dask.array.Array or array-like of shape (n,)
    sample_weight : dask.array.Array, array-like, float or None

    Returns
    -------
    float
        As ``estimator.score`` on the same data in memory (``-inf`` when an output with
        positive weight is absent from its prompt).

    Examples
    --------
    >>> import dask.array as da
    >>> from ccmc_estim import CCMCEstimator, make_ccmc_data
    >>> X, y, _ = make_ccmc_data(500, 4, 6, random_state=0)
    >>> est = CCMCEstimator().fit(X, y)
    >>> bool(abs(est.score(da.from_array(X, chunks=100), y) - est.score(X, y)) < 1e-12)
    True
    """
    dask = _require_dask()
    if outputs is None:
        check_outputs(None, 0, None)
    (xs, ys, ws), offsets, _ = _partitions(prompts, ("outputs", outputs),
                                           ("sample_weight", sample_weight))
    est = dask.delayed(estimator, traverse=False)
    parts = dask.compute(*[
        dask.delayed(_score_part, pure=True)(est, x, y, w, i, offsets[i])
        for i, (x, y, w) in enumerate(zip(xs, ys, ws, strict=True))])
    tops = np.array([p[0] for p in parts])
    if not tops.any():
        raise ValueError("sample_weight is zero for every sample: nothing to fit or score.")
    if any(p[3] for p in parts):
        return -np.inf
    factor = tops / tops.max()
    return float(factor @ [p[1] for p in parts]) / float(factor @ [p[2] for p in parts])
