"""Per-column solvers of the penalised CCMC likelihood.

The objective of column ``q`` is ``NLL_q(theta) + alpha / 2 * ||theta||^2`` over the column's
identified logits.  Columns do not interact, so each is solved on its own: a damped Newton method
with a dense Hessian for small columns, a truncated Newton method (preconditioned conjugate
gradients on Hessian-vector products) for large ones.  Both stop when

    max_k |gradient_k| <= tol * max(1, total sample weight of the column),

i.e. when the gradient of the column's *mean* loss is below ``tol``, or when no step decreases the
objective beyond rounding.  Every column is solved by the same deterministic code whatever thread
runs it, so the result does not depend on ``n_jobs``.  Threads are plain threads of a pool (the
chunks write their results in place into shared arrays), and the same
per-column code solves the column blocks of a Dask fit on the workers (``distributed``).
"""

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from numba import njit

from ._kernels import (
    column_hess_diag,
    column_hessian,
    column_hessp,
    column_mixture_grad,
    column_mixture_hessp,
    column_mixture_nll_grad,
    column_nll_grad,
    column_nll_grad_from,
)

#: Under "auto", columns with more identified logits than this always use truncated Newton
#: (a dense Hessian would cost O(n^2) memory and O(n^3) time per iteration); smaller ones use
#: whichever of the two is cheaper per iteration by an operation count.
DENSE_MAX = 300

#: Under "auto", columns whose dense Newton iteration costs less than this many entry visits
#: (about a millisecond) use it whatever the alternative costs: the difference is too small
#: to matter, and a small fit then never compiles conjugate gradients (the dense Hessian is
#: compiled anyway, for the standard errors), which is a second of a first fit's
#: compilation.
DENSE_SMALL = 1e6

#: Most entries of dense column information kept after a fit (8 bytes each).
INFO_BUDGET = 20_000_000

# Status codes of a column solve.
MAX_ITER, CONVERGED, NO_DECREASE = 0, 1, 2

_EPS = np.finfo(np.float64).eps


# The compiled functions below are written as plain loops over flat arrays, with no array
# expressions, reductions, ``@`` or ``np.linalg``: each of those compiles a numba
# implementation of its own, and the first fit of a fresh install compiles all of this.


@njit(cache=True, nogil=True)
def _dot(a, b):
    s = 0.0
    for k in range(a.size):
        s += a[k] * b[k]
    return s


@njit(cache=True, nogil=True)
def _abs_max(a):
    """``np.abs(a).max()`` (NaN if any is NaN), or 0 for an empty array."""
    m = 0.0
    for k in range(a.size):
        v = abs(a[k])
        if v > m:
            m = v
        elif v != v:
            return v
    return m


@njit(cache=True, nogil=True)
def _dense_direction(grad, indptr, local, weight, prob, alpha):
    """Newton direction from the dense Hessian, by a Cholesky factorisation written here (a
    small loop nest compiles in a fraction of the time of numba's LAPACK binding)."""
    n = grad.size
    hess = np.empty((n, n))
    column_hessian(indptr, local, weight, prob, hess)
    top = 0.0
    for k in range(n):
        hess[k, k] += alpha
        if hess[k, k] > top:
            top = hess[k, k]
    # The unpenalised loss is flat along the all-ones direction (column gauge).  Adding
    # c * 1 1^T leaves the step orthogonal to it, since the gradient is.
    shift = top / n if alpha == 0.0 else 0.0
    jitter = 1e-12 * top + 1e-300  # guards columns whose MLE is at infinity
    # Lower Cholesky factor in place (row by row).  The matrix is positive definite with
    # every eigenvalue >= jitter, hence so is every pivot: one below that is rounding.
    for i in range(n):
        for j in range(i + 1):
            s = hess[i, j] + shift
            for k in range(j):
                s -= hess[i, k] * hess[j, k]
            if j < i:
                hess[i, j] = s / hess[j, j]
            else:
                s += jitter
                hess[i, i] = np.sqrt(s if s > jitter else jitter)
    d = np.empty(n)
    for i in range(n):  # L z = -g
        s = -grad[i]
        for k in range(i):
            s -= hess[i, k] * d[k]
        d[i] = s / hess[i, i]
    for i in range(n - 1, -1, -1):  # L^T d = z
        s = d[i]
        for k in range(i + 1, n):
            s -= hess[k, i] * d[k]
        d[i] = s / hess[i, i]
    return d


@njit(cache=True, nogil=True)
def _cg_direction(grad, indptr, local, weight, prob, alpha, scale, y_entry, w_var, mode,
                  sentinel, min_forcing):
    """Preconditioned CG on ``H d = -g``, truncated at a forcing tolerance (Eisenstat and
    Walker's, at least ``min_forcing``) or at a direction of non-positive curvature.  With a
    1-D ``mode`` (the mixture's log-odds, see :func:`_solve_columns`), ``H`` is the
    mixture's Hessian of :func:`~ccmc_estim._kernels.column_mixture_hessp`, ``weight`` its
    ``w rho`` (``w`` with a ``sentinel``); the CCMC Hessian's diagonal at those weights,
    positive, preconditions it."""
    n = grad.size
    diag = np.empty(n)
    column_hess_diag(indptr, local, weight, prob, diag)
    top = 0.0  # the entries are >= 0
    for k in range(n):
        top = max(top, diag[k])
    for k in range(n):
        diag[k] += alpha + 1e-12 * top + 1e-300
    gnorm = np.sqrt(_dot(grad, grad))
    eta = max(min(0.5, np.sqrt(gnorm / scale)), min_forcing)
    d = np.zeros(n)
    r = np.empty(n)
    z = np.empty(n)
    p = np.empty(n)
    for k in range(n):
        r[k] = -grad[k]
        z[k] = r[k] / diag[k]
        p[k] = z[k]
    rz = _dot(r, z)
    hp = np.empty(n)
    for _ in range(min(n, 250)):
        if mode.ndim == 1:  # a constant when compiled (see _solve_columns)
            column_mixture_hessp(p, indptr, local, y_entry, weight, w_var, sentinel, prob, hp)
        else:
            column_hessp(p, indptr, local, weight, prob, hp)
        for k in range(n):
            hp[k] += alpha * p[k]
        php = _dot(p, hp)
        if php <= 1e-300:
            break
        step = rz / php
        for k in range(n):
            d[k] += step * p[k]
            r[k] -= step * hp[k]
        if np.sqrt(_dot(r, r)) <= eta * gnorm:
            break
        for k in range(n):
            z[k] = r[k] / diag[k]
        rz_new = _dot(r, z)
        beta = rz_new / rz
        for k in range(n):
            p[k] = z[k] + beta * p[k]
        rz = rz_new
    if _abs_max(d) == 0.0:
        for k in range(n):
            d[k] = -grad[k] / diag[k]
    if alpha == 0.0:
        # Without a penalty the loss is flat along the all-ones direction (the column gauge)
        # and the preconditioned steps are not orthogonal to it: removed, it would otherwise
        # pile up over many iterations (logits of 10^5 at tol=1e-300) and cost digits.
        mean = 0.0
        for k in range(n):
            mean += d[k]
        mean /= n
        for k in range(n):
            d[k] -= mean
    return d


@njit(cache=True, nogil=True)
def _count_start(indptr, local, count, y_entry, weight, unit, theta, chosen, offered):
    """A start for a column from its counts: ``log((chosen + unit / 2) / (offered + unit))``
    per token, centred, where ``offered`` is the weight of the prompts that hold the token
    (with a positive count) and ``chosen`` the weight of those whose output it is.  ``unit``
    is the column's total weight over its number of logits (the mean of ``chosen``), so that
    the start, like the solution, is the same for weights scaled alike and for a weight of 2
    and a duplicated sample.  A token offered nowhere with a positive count (the mixture's
    unknown token) starts at the column's centre, 0.

    Without the pseudo-counts this is the solution when every prompt offers the same tokens
    once each; they shrink it towards 0 as the L2 penalty does.  On the README's M workload
    Newton then takes 3-4 steps per column instead of 4-8 from zero at the default
    ``alpha``, and about 10 instead of 12 without a penalty (smaller pseudo-counts suit
    ``alpha=0`` better and the default worse; weighting ``offered`` by the counts took 8%
    more steps).  ``chosen`` and ``offered`` are scratch space."""
    n = theta.size
    for k in range(n):
        chosen[k] = 0.0
        offered[k] = 0.0
    for r in range(indptr.size - 1):
        for j in range(indptr[r], indptr[r + 1]):
            if count[j] > 0.0:
                offered[local[j]] += weight[r]
        chosen[local[y_entry[r]]] += weight[r]
    mean = 0.0
    n_offered = 0
    for k in range(n):
        # In units of ``unit``: weights far below 1 must not underflow to log(0).
        if offered[k] > 0.0 and unit > 0.0:
            theta[k] = np.log((chosen[k] / unit + 0.5) / (offered[k] / unit + 1.0))
            mean += theta[k]
            n_offered += 1
    if n_offered > 0:
        mean /= n_offered
    for k in range(n):
        theta[k] = theta[k] - mean if offered[k] > 0.0 and unit > 0.0 else 0.0


#: Values of ``kind`` (see :func:`_solve_columns`).
NEWTON, NEWTON_CG = np.empty((0, 0)), np.empty(0)

#: ``log_odds`` of the CCMC's own problem (see :func:`_solve_columns`).
PLAIN = np.empty((0, 0))


def _solve_chunk(cols, lay, log_odds, theta, use_cg, settings, out, info_offsets, info,
                 info_diag, out_proba, proba):
    """Solve the columns ``cols`` of a layout in place; per column, record the objective,
    iterations and status in ``out``, the observed information at the solution (dense
    where ``info_offsets[q] >= 0``, its diagonal always) and, unless ``out_proba`` is empty,
    the probability of every layout prompt's output.  ``proba`` is the entry probabilities
    and prompt NLLs at the start and the same at the solution, each pair empty when not
    given or not wanted (see :class:`EntryProba`).  Unless ``log_odds`` is empty, the loss of
    each prompt is the copy-and-generate mixture's (see
    :func:`~ccmc_estim._kernels.column_mixture_grad`).

    The dense and the truncated Newton columns go to two compilations of one compiled loop,
    each made only when first needed: a small first fit never compiles conjugate gradients.
    """
    alpha, tol, max_iter, cold, sentinel, min_forcing = settings
    cg = use_cg[cols]
    for part, kind in ((cols[~cg], NEWTON), (cols[cg], NEWTON_CG)):
        if part.size:
            _solve_columns(part, *lay, log_odds, theta, float(alpha), float(tol), int(max_iter),
                           cold, sentinel, min_forcing, *out, info_offsets, info, info_diag,
                           out_proba, *proba, kind)


@njit(cache=True, nogil=True)
def _solve_columns(cols, col_ptr, indptr, local_all, count_all, y_all, weight_all, id_ptr,
                   log_odds_all, theta, alpha, tol, max_iter, cold, sentinel, min_forcing,
                   objective, n_iter, status, info_offsets, info, info_diag, out_proba, prob_in,
                   nll_in, prob_out, nll_out, kind):
    """The compiled loop of :func:`_solve_chunk`: minimise each column's penalised NLL in place
    by damped Newton steps, then record its information.

    ``kind`` selects the method by its type, so that numba compiles only the one a call uses:
    :data:`NEWTON_CG` (1-D) truncated Newton, :data:`NEWTON` (2-D) the dense Hessian.  One
    function with flat arguments, since every compiled level above the kernels optimises again
    all that it calls, and a namedtuple or tuple argument costs compilation time of its own.
    """
    # Entry probabilities of the current and the trial point, allocated once for the largest
    # column: fresh memory for every column costs page faults on every pass.
    most = 0
    for q in cols:
        most = max(most, indptr[col_ptr[q + 1]] - indptr[col_ptr[q]])
    prob_buf = np.empty(most)
    prob_t_buf = np.empty(most)
    most_prompts = 0
    for q in cols:
        most_prompts = max(most_prompts, col_ptr[q + 1] - col_ptr[q])
    keep = prob_out.size > 0
    # The mixture's problem when ``log_odds_all`` is 1-D (:data:`PLAIN`, 2-D, otherwise): a
    # constant when compiled, as ``kind``, so a CCMC fit never compiles the mixture's code.
    mixture = log_odds_all.ndim == 1
    n_nll = most_prompts if keep or mixture else 0
    nll_buf = np.empty(n_nll)
    nll_t_buf = np.empty(n_nll)
    n_mix = most_prompts if mixture else 0
    w_rho_buf, w_var_buf = np.empty(n_mix), np.empty(n_mix)
    w_rho_t_buf, w_var_t_buf = np.empty(n_mix), np.empty(n_mix)
    for q in cols:
        a = col_ptr[q]
        b = col_ptr[q + 1]
        e0 = indptr[a]
        e1 = indptr[b]
        p0 = id_ptr[q]
        p1 = id_ptr[q + 1]
        n = p1 - p0
        theta_q = theta[p0:p1]
        # The column's pointers from 0, by loops (an array expression would compile a kernel).
        ip = np.empty(b - a + 1, np.int64)
        for r in range(b - a + 1):
            ip[r] = indptr[a + r] - e0
        y = np.empty(b - a, np.int64)
        for r in range(b - a):
            y[r] = y_all[a + r] - e0
        local = local_all[e0:e1]
        count = count_all[e0:e1]
        w = weight_all[a:b]

        # Newton's method on the penalised objective NLL + alpha / 2 ||theta||^2.
        grad = np.empty(n)
        prob = prob_buf[: e1 - e0]
        trial = np.empty(n)
        grad_t = np.empty(n)
        prob_t = prob_t_buf[: e1 - e0]
        nll = nll_buf[: b - a if n_nll > 0 else 0]
        nll_t = nll_t_buf[: b - a if n_nll > 0 else 0]
        lo = log_odds_all[a:b]
        w_rho = w_rho_buf[: b - a if mixture else 0]
        w_var = w_var_buf[: b - a if mixture else 0]
        w_rho_t = w_rho_t_buf[: b - a if mixture else 0]
        w_var_t = w_var_t_buf[: b - a if mixture else 0]
        total = 0.0
        for r in range(b - a):
            total += w[r]
        scale = total if total > 1.0 else 1.0
        if cold:
            _count_start(ip, local, count, y, w, total / n, theta_q, trial, grad_t)
        gtol = tol * scale
        f = 0.0
        if prob_in.size > 0:  # the probabilities at theta_q are known: the same numbers
            for r in range(nll.size):
                nll[r] = nll_in[a + r]
            if log_odds_all.ndim == 1:
                for j in range(e1 - e0):
                    prob[j] = prob_in[e0 + j]
                f = column_mixture_grad(nll, lo, sentinel, ip, local, y, w, prob, grad, w_rho,
                                        w_var)
            else:
                f = column_nll_grad_from(prob_in[e0:e1], nll_in[a:b], ip, local, y, w, grad,
                                         prob)
        elif log_odds_all.ndim == 1:
            f = column_mixture_nll_grad(theta_q, ip, local, count, y, w, lo, sentinel, grad,
                                        prob, nll, w_rho, w_var)
        else:
            f = column_nll_grad(theta_q, ip, local, count, y, w, grad, prob, nll)
        for k in range(n):
            grad[k] += alpha * theta_q[k]
        f += 0.5 * alpha * _dot(theta_q, theta_q)
        st = MAX_ITER
        it = 0
        while True:
            if _abs_max(grad) <= gtol:
                st = CONVERGED
                break
            if it >= max_iter:
                break
            it += 1
            # The mixture's loss is not convex: its dense Newton steps take the CCMC Hessian
            # at the weights w rho (EM's; w with a sentinel, which EM's also has),
            # positive definite; CG takes the exact one.
            w_h = w_rho if mixture and not sentinel else w
            if kind.ndim == 1:  # a constant when compiled: the other branch is not compiled
                d = _cg_direction(grad, ip, local, w_h, prob, alpha, scale, y, w_var, lo,
                                  sentinel, min_forcing)
            else:
                d = _dense_direction(grad, ip, local, w_h, prob, alpha)
            gd = _dot(grad, d)
            if not gd < 0.0:  # not a descent direction (numerical breakdown): steepest descent
                for k in range(n):
                    d[k] = -grad[k]
                gd = -_dot(grad, grad)
            # Armijo backtracking; a change within rounding of f counts as no increase.  Each
            # trial comes with its gradient, since Newton steps are accepted almost always.
            slack = 8.0 * _EPS * abs(f)
            t = 1.0
            while True:
                for k in range(n):
                    trial[k] = theta_q[k] + t * d[k]
                if log_odds_all.ndim == 1:
                    ft = column_mixture_nll_grad(trial, ip, local, count, y, w, lo, sentinel,
                                                 grad_t, prob_t, nll_t, w_rho_t, w_var_t)
                else:
                    ft = column_nll_grad(trial, ip, local, count, y, w, grad_t, prob_t, nll_t)
                for k in range(n):
                    grad_t[k] += alpha * trial[k]
                ft += 0.5 * alpha * _dot(trial, trial)
                if not (ft > f + 1e-4 * t * gd + slack and t > 1e-18):
                    break
                t *= 0.5
            if ft > f + 1e-4 * t * gd + slack:
                st = NO_DECREASE
                break
            g_old = _abs_max(grad)
            for k in range(n):
                theta_q[k] = trial[k]
            grad, grad_t = grad_t, grad
            prob, prob_t = prob_t, prob
            nll, nll_t = nll_t, nll
            w_rho, w_rho_t = w_rho_t, w_rho
            w_var, w_var_t = w_var_t, w_var
            f_old = f
            f = ft
            if f_old - f <= slack and (t < 1.0 or _abs_max(grad) > 0.5 * g_old):
                # The objective no longer decreases beyond rounding: only a damped step was
                # possible, or a full step that did not even halve the gradient (it is
                # rounding noise, which is how a tol below what float64 resolves, e.g.
                # 1e-300, ends).  A full step that still shrinks the gradient goes on: Newton
                # is converging quadratically and the next step gains digits of the solution.
                st = NO_DECREASE
                break
        objective[q] = f
        n_iter[q] = it
        status[q] = st
        # ``prob`` holds the entry probabilities at ``theta_q``: those of the start, or of the
        # last accepted trial (a rejected one wrote into ``prob_t``).
        if out_proba.size > 0:
            for r in range(b - a):
                out_proba[a + r] = prob[y[r]]
        if keep:
            for j in range(e1 - e0):
                prob_out[e0 + j] = prob[j]
            for r in range(b - a):
                nll_out[a + r] = nll[r]

        if info_diag.size == 0:  # no information wanted (e.g. an EM M-step)
            continue
        column_hess_diag(ip, local, w, prob, info_diag[p0:p1])
        o = info_offsets[q]
        if o >= 0:
            # Copied by a loop into the flat buffer rather than written through ``reshape``,
            # which costs a compilation of its own.
            hess = np.empty((n, n))
            column_hessian(ip, local, w, prob, hess)
            for r in range(n):
                for c in range(n):
                    info[o + r * n + c] = hess[r, c]


def _balanced_chunks(cols, cost, n_chunks):
    """Split columns into ``n_chunks`` lists of similar total cost (longest first)."""
    bins = [[] for _ in range(n_chunks)]
    load = np.zeros(n_chunks)
    for q in cols[np.argsort(-cost[cols], kind="stable")]:
        b = int(np.argmin(load))
        bins[b].append(q)
        load[b] += cost[q]
    return [np.array(sorted(b), np.int64) for b in bins if b]


def column_ranges(load, n_tokens, n_ranges):
    """Contiguous column ranges ``bounds[b]:bounds[b + 1]`` of similar total ``load`` (work
    per column, zero beyond ``load.size``), at most ``n_ranges`` of them: the blocks of a large
    or distributed fit and the threads' shares of the column layout."""
    work = np.zeros(n_tokens)
    work[: load.size] = load
    cum = np.cumsum(work)
    if n_ranges <= 1 or cum[-1] == 0:
        return np.array([0, n_tokens], np.int64)
    cuts = np.searchsorted(cum, cum[-1] * np.arange(1, n_ranges) / n_ranges) + 1
    return np.unique(np.concatenate([[0], np.minimum(cuts, n_tokens), [n_tokens]])).astype(
        np.int64)


#: Below this much work (entry visits) threads cost more than they save: one chunk.
THREAD_MIN_WORK = 300_000


def balanced_chunks(cols, cost, n_jobs):
    """At most ``n_jobs`` lists of the columns ``cols`` of similar total ``cost`` (a single one
    for small problems, where starting threads costs more than it saves)."""
    if cost[cols].sum() < THREAD_MIN_WORK:
        n_jobs = 1
    return _balanced_chunks(cols, cost, max(1, min(int(n_jobs), cols.size)))


def run_threads(func, chunks, *args):
    """``[func(chunk, *args) for chunk in chunks]``, in threads when there are several (the
    compiled kernels release the GIL)."""
    if len(chunks) <= 1:
        return [func(chunk, *args) for chunk in chunks]
    # A pool of our own rather than joblib's threading backend, which takes about 13 ms to
    # start and collect two trivial tasks (a pool takes 0.3 ms), a cost an EM pays dozens of
    # times; and no joblib backend in effect (a grid search on a Dask cluster) can send the
    # chunks to other processes, where their in-place writes would be lost.
    with ThreadPoolExecutor(len(chunks)) as pool:
        futures = [pool.submit(func, chunk, *args) for chunk in chunks]
        return [f.result() for f in futures]


@dataclass(eq=False)
class EntryProba:
    """The probability of every entry and the NLL of every prompt of a column layout at some
    logits: a solve started there needs no pass over the prompts' tokens for its first
    gradient (they do not depend on the weights, which an EM changes between its M-steps)."""

    entry: np.ndarray
    nll: np.ndarray

    def __sizeof__(self):
        return object.__sizeof__(self) + self.entry.nbytes + self.nll.nbytes


@dataclass(eq=False)
class ColumnSolution:
    """What the per-column solver returns (arrays of shape ``(K,)`` unless noted).

    ``status`` is ``MAX_ITER``, ``CONVERGED`` or ``NO_DECREASE``; ``information`` holds, per
    column, the dense observed information at the solution (None for columns above
    ``info_max`` identified logits or beyond the memory budget); ``information_diag`` its
    diagonal for every parameter, shape ``(n_params,)``; ``output_proba`` the probability of
    every layout prompt's output at the solution, when asked for; ``proba`` the
    :class:`EntryProba` at the solution, when asked for.
    """

    objective: np.ndarray
    n_iter: np.ndarray
    status: np.ndarray
    information: list
    information_diag: np.ndarray
    output_proba: np.ndarray | None = None
    proba: EntryProba | None = None


def solve_columns(problem, theta, *, alpha, tol, max_iter, solver, n_jobs, info_max=0,
                  cold_start=False, output_proba=False, chunks=None, start_proba=None,
                  keep_proba=False, log_odds=None, sentinel=False, min_forcing=0.0):
    """Solve every column of a :class:`~ccmc_estim._columns.ColumnProblem` in place.

    Parameters
    ----------
    problem : ColumnProblem
    theta : ndarray of float64, shape (problem.n_params,)
        Starting point, overwritten with the solution.
    cold_start : bool
        Start every column from its counts (see :func:`_count_start`) rather than from
        ``theta``, whose values are then ignored.
    output_proba : bool
        Also return the probability of every layout prompt's output at the solution (what
        the last likelihood evaluation computed anyway: an EM's next E-step needs it).
    chunks : list of ndarray or None
        The columns of each thread, when the caller solves the same layout again and again
        (an EM); by default :func:`balanced_chunks` of the work.
    start_proba : EntryProba or None
        The probabilities at ``theta`` (not with ``cold_start``): the solution is the same.
    keep_proba : bool
        Also return the :class:`EntryProba` at the solution.
    log_odds : ndarray of float64, shape (problem.col_ptr[-1],), or None
        Solve the copy-and-generate mixture's problem in the copy logits instead: prompt
        ``r``'s loss is ``-log(C_r + exp(log_odds[r]))``, its output generated with those
        odds against being copied (see :func:`~ccmc_estim._kernels.column_mixture_grad`).
    sentinel : bool
        With ``log_odds``: the last entry of every prompt is a sentinel, whose attention is
        the weight of generating, and ``log_odds`` the log-probability of generating the
        output (see :func:`~ccmc_estim._kernels.column_mixture_grad`).
    min_forcing : float
        Least forcing term of the truncated Newton steps' conjugate gradients (see
        ``mixture``'s partial M-steps); 0 keeps Eisenstat and Walker's, which makes the
        steps converge superlinearly.
    solver : {"auto", "newton", "newton-cg"}
    n_jobs : int
        Number of threads (the compiled solver releases the GIL).
    info_max : int
        Keep the dense observed information of the columns with at most this many
        identified logits (within ``INFO_BUDGET`` entries in all).

    Returns
    -------
    ColumnSolution
    """
    cd = problem
    K = cd.n_tokens
    sizes = np.diff(cd.id_ptr).astype(np.float64)
    nnz = np.diff(cd.indptr[cd.col_ptr]).astype(np.float64)
    if solver == "auto":
        # Work per iteration, in units of one entry visit: a dense Hessian costs a pair visit
        # per token pair of each prompt plus a factorisation; CG costs about ten
        # Hessian-vector products of two entry visits each.  Measured on the S and M workloads.
        d = np.diff(cd.indptr).astype(np.float64)
        pairs = np.diff(np.concatenate([[0.0], np.cumsum(d * d / 2)])[cd.col_ptr])
        dense_cost = pairs + 3.0 * sizes**3
        use_cg = ((20.0 * nnz < dense_cost) & (dense_cost > DENSE_SMALL)) | (sizes > DENSE_MAX)
    else:
        use_cg = np.full(K, solver == "newton-cg")
    cost = nnz + np.where(use_cg, 0.0, sizes**3 / 3)
    cols = np.flatnonzero(np.diff(cd.col_ptr) > 0)
    objective = np.zeros(K)
    n_iter = np.zeros(K, np.int64)
    status = np.full(K, CONVERGED, np.int64)
    n_id = np.diff(cd.id_ptr)
    want = (n_id > 0) & (n_id <= info_max)
    blocks = np.where(want, n_id**2, 0)
    # Columns beyond the budget get only the diagonal (see the estimators' logits_se_).
    want &= np.cumsum(blocks) <= INFO_BUDGET
    blocks = np.where(want, blocks, 0)
    info_offsets = np.where(want, np.cumsum(blocks) - blocks, -1)
    info = np.empty(int(blocks.sum()))
    info_diag = np.empty(cd.n_params if info_max >= 0 else 0)  # info_max < 0: none at all
    if sentinel and log_odds is None:
        raise ValueError("a sentinel needs log_odds.")
    settings = (float(alpha), float(tol), int(max_iter), bool(cold_start), bool(sentinel),
                float(min_forcing))
    out = (objective, n_iter, status)
    out_proba = np.full(cd.col_ptr[-1] if output_proba else 0, np.nan)  # NaN: not solved
    if log_odds is not None:
        # Compiled code does not check bounds; the information computed after a solve is the
        # CCMC's, not the mixture's.
        if np.shape(log_odds) != (cd.col_ptr[-1],) or info_max >= 0:
            raise ValueError("log_odds needs one value per layout prompt and info_max < 0.")
        log_odds = np.ascontiguousarray(log_odds, dtype=np.float64)
    if start_proba is not None and cold_start:
        raise ValueError("start_proba holds the probabilities at theta, which a cold start "
                         "does not use.")
    none = np.empty(0)
    kept = EntryProba(np.empty(cd.indptr[-1]), np.empty(cd.col_ptr[-1])) if keep_proba else None
    proba = ((none, none) if start_proba is None else (start_proba.entry, start_proba.nll)) + (
        (none, none) if kept is None else (kept.entry, kept.nll))
    args = (cd.layout, PLAIN if log_odds is None else log_odds, theta, use_cg, settings, out,
            info_offsets, info, info_diag, out_proba, proba)
    if chunks is None:
        chunks = balanced_chunks(cols, cost, n_jobs)
    run_threads(_solve_chunk, chunks, *args)
    information = [info[o : o + n * n].reshape(n, n) if o >= 0 else None
                   for o, n in zip(info_offsets, n_id, strict=True)]
    return ColumnSolution(objective, n_iter, status, information, info_diag,
                          out_proba if output_proba else None, kept)
