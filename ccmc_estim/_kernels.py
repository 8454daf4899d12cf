"""Compiled numeric kernels over the flat prompt statistics.

Every function here is a plain ``@njit(cache=True)`` function over flat arrays.  Callers validate
their input first: numba does not check bounds.

Layout (see ``_stats``): prompt ``i`` owns the entries ``indptr[i]:indptr[i + 1]``; entry ``j``
holds a distinct token ``tokens[j]`` and the log of its (possibly position-weighted) count
``logc[j]``; a column problem holds the token's local index ``local[j]`` and the count itself.
"""

import numpy as np
from numba import njit

_NOGIL = {"cache": True, "nogil": True}
# The helpers called once per prompt in the passes over the entries, inlined by numba: as calls
# (each passing arrays) they made the likelihood pass 1.5 times slower, the CCMC's solve on
# the fit benchmark's M workload too; the first fit compiles no slower.
_PER_PROMPT = {**_NOGIL, "inline": "always"}


# --------------------------------------------------------------------------- log-sum-exp
@njit(cache=True, nogil=True)
def logsumexp_inplace(z, a, b, normalise):
    """``log sum exp z[a:b]``, stable for any finite scores (the one log-sum-exp: column
    problems score in linear space with a shared scale, :func:`prompt_log_norm`, and fall back
    to this one through :func:`prompt_log_norm_exact`).

    With ``normalise`` the scores are overwritten by their probabilities ``exp(z - lse)``.
    """
    mx = -np.inf
    for j in range(a, b):
        if z[j] > mx:
            mx = z[j]
    if mx == -np.inf:
        return mx
    s = 0.0
    if normalise:
        # One exponential per score: exp is most of the cost of every pass over the entries.
        for j in range(a, b):
            e = np.exp(z[j] - mx)
            z[j] = e
            s += e
        inv = 1.0 / s
        for j in range(a, b):
            z[j] *= inv
    else:
        for j in range(a, b):
            s += np.exp(z[j] - mx)
    return mx + np.log(s)


# --------------------------------------------------------------------------- statistics
#: Distinct values sorted by rank at most (see :func:`_sorted_into`); more are heapsorted.
RANK_SORT_MAX = 64


@njit(cache=True, nogil=True)
def _sorted_into(src, n, dst, lo):
    """The distinct values ``src[:n]`` sorted into ``dst[lo:lo + n]``: a prompt's tokens
    sorted make every sum over it independent of the order of its non-last tokens, down to
    the last bit.

    Up to ``RANK_SORT_MAX`` of them (a prompt's distinct tokens) each goes straight to its
    rank, the number of smaller ones: comparisons without branches, two to three times
    faster on the prompts of real text than insertion or heapsort, whose branches mispredict
    about every other comparison.  More of them are copied and heapsorted."""
    if n <= RANK_SORT_MAX:
        for i in range(n):
            v = src[i]
            r = 0
            for j in range(n):
                r += src[j] < v
            dst[lo + r] = v
        return
    for i in range(n):
        dst[lo + i] = src[i]
    # Heapsort by hand, in one loop, rather than ``ndarray.sort``: numba's quicksort costs
    # seconds of compilation on the first fit, and sorted integers are the same whatever
    # the method.  First ``start`` goes down building the heap, then ``end`` goes down
    # moving its top to the back; both sift the value at ``start`` down.
    a = dst
    start = n // 2
    end = n
    while end > 1:
        if start > 0:
            start -= 1
        else:
            end -= 1
            v = a[lo + end]
            a[lo + end] = a[lo]
            a[lo] = v
        root = start
        v = a[lo + root]
        while 2 * root + 1 < end:
            child = 2 * root + 1
            if child + 1 < end and a[lo + child + 1] > a[lo + child]:
                child += 1
            if a[lo + child] <= v:
                break
            a[lo + root] = a[lo + child]
            root = child
        a[lo + root] = v


@njit(cache=True, nogil=True)
def _histogram(flat, a, b, stamp, mark, cnt, buf, dist_weight, pos_weight):
    """The distinct tokens of ``flat[a:b]`` into ``buf`` (at least ``b - a`` long), in the
    order of their first occurrence; returns their number and leaves their counts in
    ``cnt``: a token at distance ``d`` from the end counts ``dist_weight[min(d, len - 1)]``,
    or ``pos_weight[j]`` at flat position ``j`` when ``pos_weight`` is not empty.

    Without branches on whether a token is new (every token is written, the position moves
    on for new ones): in real text about one token in three is, a branch on it mispredicts
    that often, and the layout took a third longer.  The counts are summed in a loop of their
    own, in the same order: fused with the first, choosing between 0 and the running count
    per token, it took a third longer."""
    n = 0
    for j in range(a, b):
        t = flat[j]
        new = mark[t] != stamp
        mark[t] = stamp
        buf[n] = t
        n += new
    for k in range(n):
        cnt[buf[k]] = 0.0
    _add_counts(flat, a, b, cnt, dist_weight, pos_weight)
    return n


@njit(**_PER_PROMPT)
def _add_counts(flat, a, b, cnt, dist_weight, pos_weight):
    """Add every position of ``flat[a:b]`` to its token's count in ``cnt``, weighted as in
    :func:`_histogram`: the one order of these sums, so that a layout's counts and their
    recount agree to the last bit."""
    if pos_weight.size > 0:
        for j in range(a, b):
            cnt[flat[j]] += pos_weight[j]
    else:
        last = dist_weight.size - 1
        for j in range(a, b):
            cnt[flat[j]] += dist_weight[min(b - 1 - j, last)]


@njit(cache=True)
def prompt_counts(flat, indptr, n_tokens, dist_weight):
    """Distinct tokens (sorted) and their counts for every prompt of a flat token array.

    A token at distance ``d`` from the end of its prompt (``d = 0`` for the last one) counts
    ``dist_weight[min(d, len - 1)]``: ``[1.0]`` gives plain counts, ``exp(b)`` the
    position-weighted counts of a relative position bias ``b``.
    """
    n = indptr.size - 1
    mark = np.full(n_tokens, -1, np.int64)
    nd = np.empty(n + 1, np.int64)
    nd[0] = 0
    most = 1
    for i in range(n):
        d = 0
        for j in range(indptr[i], indptr[i + 1]):
            t = flat[j]
            d += mark[t] != i
            mark[t] = i
        nd[i + 1] = nd[i] + d
        most = max(most, indptr[i + 1] - indptr[i])
    tokens = np.empty(nd[n], np.uint32)  # sorted as the layout's are (one compilation)
    counts = np.empty(nd[n], np.float64)
    cnt = np.zeros(n_tokens, np.float64)
    mark[:] = -1
    buf = np.empty(most, np.int32)
    for i in range(n):
        m = _histogram(flat, indptr[i], indptr[i + 1], i, mark, cnt, buf, dist_weight,
                       np.empty(0))
        _sorted_into(buf, m, tokens, nd[i])
        for j in range(nd[i], nd[i + 1]):
            counts[j] = cnt[tokens[j]]
    return nd, tokens, counts


@njit(cache=True, nogil=True)
def _lower_bound(a, lo, hi, x):
    """First index in ``a[lo:hi]`` (sorted) whose value is at least ``x``, or ``hi``."""
    while lo < hi:
        mid = (lo + hi) // 2
        if a[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True)
def output_entries(indptr, tokens, outputs):
    """Entry index of each output inside its prompt's (sorted) tokens, -1 where absent."""
    n = indptr.size - 1
    out = np.full(n, -1, np.int64)
    for i in range(n):
        j = _lower_bound(tokens, indptr[i], indptr[i + 1], outputs[i])
        if j < indptr[i + 1] and tokens[j] == outputs[i]:
            out[i] = j
    return out


@njit(cache=True, nogil=True)
def layout_sizes(flat, indptr, order, col_ptr, q0, q1, n_tokens, extra, ent_len, n_id):
    """First pass of the column-block layout (see :func:`layout_fill`) over the columns
    ``q0:q1``: the number of distinct tokens of every layout prompt ``r`` into ``ent_len[r]``
    and of every column ``q`` into ``n_id[q]``."""
    # Only np.empty, filled by loops: np.zeros and np.full would be compilations of their own
    # on the first fit.
    mark = np.empty(n_tokens, np.int64)
    colmark = np.empty(n_tokens, np.int64)
    for t in range(n_tokens):
        mark[t] = -1
        colmark[t] = -1
    for q in range(q0, q1):
        m = 0
        for r in range(col_ptr[q], col_ptr[q + 1]):
            i = order[r]
            d = 0
            # Without branches, as in _histogram: a token new to the prompt or the column.
            for j in range(indptr[i], indptr[i + 1]):
                t = flat[j]
                d += mark[t] != r
                mark[t] = r
                m += colmark[t] != q
                colmark[t] = q
            if extra >= 0:
                d += 1
                m += colmark[extra] != q
                colmark[extra] = q
            ent_len[r] = d
        n_id[q] = m


@njit(cache=True, nogil=True)
def layout_fill(flat, indptr, order, col_ptr, q0, q1, outputs, n_tokens, extra, uncounted,
                dist_weight, pos_weight, ent_ptr, id_ptr, local, count, y_entry, id_tokens):
    """Second pass of the column-block layout of the prompts ``order`` (grouped by query, see
    ``col_ptr``) over the columns ``q0:q1``, into arrays sized from :func:`layout_sizes`.

    Prompt ``r`` of the layout owns entries ``ent_ptr[r]:ent_ptr[r + 1]``, each the ``local``
    index (rank of its token among the column's identified tokens, so increasing within a
    prompt) and (weighted) ``count`` of a distinct token, counts as in :func:`_histogram`;
    ``y_entry[r]`` is the entry holding the output (every output must be in its prompt;
    ``outputs`` may be empty); column ``q`` identifies tokens
    ``id_tokens[id_ptr[q]:id_ptr[q+1]]`` (sorted).  Unless ``extra`` is -1, every prompt
    also holds that token (the largest, never in ``flat``) once, before its first, counted
    by ``dist_weight`` at that distance.  Unless ``uncounted`` is -1, that token's entries
    count 0.  Columns are independent: disjoint column ranges can be filled by concurrent
    threads.
    """
    mark = np.empty(n_tokens, np.int64)
    colmark = np.empty(n_tokens, np.int64)
    for t in range(n_tokens):
        mark[t] = -1
        colmark[t] = -1
    cnt = np.empty(n_tokens, np.float64)  # set by _histogram before use
    rank = np.empty(n_tokens, np.int32)  # set for a column's tokens before use
    last = dist_weight.size - 1
    # A prompt's distinct tokens and a column's, each written one past the ones found.
    most = 0
    for r in range(col_ptr[q0], col_ptr[q1]):
        most = max(most, indptr[order[r] + 1] - indptr[order[r]])
    buf = np.empty(most + 1, np.int32)
    col_buf = np.empty(n_tokens + 1, np.int32)
    for q in range(q0, q1):
        m = 0
        for r in range(col_ptr[q], col_ptr[q + 1]):
            i = order[r]
            a = indptr[i]
            b = indptr[i + 1]
            n = _histogram(flat, a, b, r, mark, cnt, buf, dist_weight, pos_weight)
            if extra >= 0:
                buf[n] = extra
                cnt[extra] = dist_weight[min(b - a, last)]
                n += 1
            if uncounted >= 0:
                cnt[uncounted] = 0.0
            e0 = ent_ptr[r]
            _sorted_into(buf, n, local, e0)
            if y_entry.size > 0:
                y_entry[r] = -1
            for j in range(e0, e0 + n):
                t = local[j]
                count[j] = cnt[t]
                col_buf[m] = t
                m += colmark[t] != q
                colmark[t] = q
                if outputs.size > 0 and t == outputs[i]:
                    y_entry[r] = j
        _sorted_into(col_buf, m, id_tokens, id_ptr[q])
        for s in range(id_ptr[q], id_ptr[q + 1]):
            rank[id_tokens[s]] = s - id_ptr[q]
        for j in range(ent_ptr[col_ptr[q]], ent_ptr[col_ptr[q + 1]]):
            local[j] = rank[local[j]]


@njit(cache=True, nogil=True)
def layout_recount(cols, flat, indptr, rows, col_ptr, ent_ptr, local, id_ptr, id_tokens,
                   dist_weight, uncounted, n_tokens, count):
    """The counts of the entries of the columns ``cols`` of a layout (see :func:`layout_fill`)
    at the distance weights ``dist_weight``, into ``count``: the layout's structure does not
    depend on them.  The same sums in the same order as :func:`_histogram`; the token
    ``uncounted`` (unless -1) counts 0.  Not for a layout with a sentinel (``extra``), which
    the prompts do not hold: ``cnt`` has no room for it."""
    cnt = np.empty(n_tokens, np.float64)  # set for a prompt's tokens before use
    for q in cols:
        ids = id_tokens[id_ptr[q] : id_ptr[q + 1]]
        for r in range(col_ptr[q], col_ptr[q + 1]):
            i = rows[r]
            a = indptr[i]
            b = indptr[i + 1]
            for j in range(ent_ptr[r], ent_ptr[r + 1]):
                cnt[ids[local[j]]] = 0.0
            _add_counts(flat, a, b, cnt, dist_weight, np.empty(0))
            if uncounted >= 0:
                cnt[uncounted] = 0.0
            for j in range(ent_ptr[r], ent_ptr[r + 1]):
                count[j] = cnt[ids[local[j]]]


# --------------------------------------------------------------------------- model
@njit(cache=True, nogil=True)
def csc_lookup(indptr, indices, data, k, q, lo):
    """``(W[k, q], position)`` of CSC logits with sorted row indices, searching column ``q``
    from position ``lo`` on (callers visit rows in increasing order); 0 when not stored (the
    column centre)."""
    lo = _lower_bound(indices, lo, indptr[q + 1], k)
    if lo < indptr[q + 1] and indices[lo] == k:
        return data[lo], lo
    return 0.0, lo


@njit(cache=True)
def csc_gather(w_ptr, w_idx, w_val, id_ptr, id_tokens):
    """Values of CSC logits at the parameters ``(id_tokens, column)`` of a column layout."""
    out = np.empty(id_tokens.size)
    for q in range(id_ptr.size - 1):
        lo = w_ptr[q]
        for s in range(id_ptr[q], id_ptr[q + 1]):
            out[s], lo = csc_lookup(w_ptr, w_idx, w_val, id_tokens[s], q, lo)
    return out


@njit(cache=True)
def entry_log_proba(w_ptr, w_idx, w_val, indptr, tokens, logc, query, log_norm):
    """Log-probability of every entry: ``W[k, q] + log m_k - logsumexp`` over the prompt, with
    ``W`` in CSC form (missing entries 0); unless ``log_norm`` is empty, it receives each
    prompt's logsumexp (``-inf`` for a prompt without entries)."""
    n = indptr.size - 1
    out = np.empty(tokens.size, np.float64)
    for i in range(n):
        q = query[i]
        a = indptr[i]
        b = indptr[i + 1]
        lo = w_ptr[q]
        for j in range(a, b):  # tokens are sorted within a prompt
            v, lo = csc_lookup(w_ptr, w_idx, w_val, tokens[j], q, lo)
            out[j] = v + logc[j]
        lse = logsumexp_inplace(out, a, b, False)
        if log_norm.size > 0:
            log_norm[i] = lse
        for j in range(a, b):
            out[j] -= lse
    return out


@njit(cache=True)
def entry_argmax(logp, indptr):
    """Entry of the largest value of each prompt (the first of ties: the smallest token)."""
    n = indptr.size - 1
    out = np.empty(n, np.int64)
    for i in range(n):
        best = indptr[i]
        for j in range(indptr[i] + 1, indptr[i + 1]):
            if logp[j] > logp[best]:
                best = j
        out[i] = best
    return out


@njit(cache=True)
def sample_entries(logp, indptr, u):
    """Inverse-CDF draw of one entry per prompt from entry log-probabilities and uniforms."""
    n = indptr.size - 1
    out = np.empty(n, np.int64)
    for i in range(n):
        a = indptr[i]
        b = indptr[i + 1]
        c = 0.0
        pick = b - 1
        for j in range(a, b):
            c += np.exp(logp[j])
            if u[i] < c:
                pick = j
                break
        out[i] = pick
    return out


# --------------------------------------------------------------------------- column problems
# A column problem holds the prompts of one query token: ``indptr`` starts at 0, ``local[j]``
# indexes the column's parameter vector ``theta`` (its identified tokens), ``count[j]`` is the
# (weighted) count of entry ``j``'s token in its prompt and ``y_entry[i]`` is the entry of
# prompt ``i`` that holds its output.
#
# Scores are ``count_j * exp(theta_k - m)`` with ``m`` the column's largest logit: one
# exponential per parameter instead of one per entry, which is most of the cost of a pass over
# the entries (about 4x on real prompts).  A prompt whose sum underflows is scored again in log
# space by the log-sum-exp.

#: A scaled sum below this may have lost digits to underflow (see :func:`prompt_log_norm`).
_TINY = 1e-250


@njit(cache=True, nogil=True)
def column_exp(theta, e):
    """``e[k] = exp(theta[k] - m)`` with ``m = max(theta)``, returned (-inf for no logits)."""
    m = -np.inf
    for k in range(theta.size):
        if theta[k] > m:
            m = theta[k]
    for k in range(theta.size):
        e[k] = np.exp(theta[k] - m)
    return m


@njit(**_PER_PROMPT)
def prompt_log_norm(e, m, local, count, s0, s1, prob, normalise):
    """``log sum_j count_j exp(theta[local_j])`` over the entries ``s0:s1``, from ``e`` and ``m``
    of :func:`column_exp`, or NaN when the scaled sum may have lost digits to underflow (every
    logit of the prompt far below the column's largest) or is not a number (NaN or infinite
    logits or counts): the caller then takes :func:`prompt_log_norm_exact`.  With
    ``normalise``, ``prob[s0:s1]`` receives the probabilities; without, it is scratch space.

    That call is the caller's own: made from this inlined helper, a call passing arrays keeps
    numba's reference counting of them inside the loop over the prompts, and the likelihood
    pass took twice as long."""
    s = 0.0
    for j in range(s0, s1):
        v = count[j] * e[local[j]]
        prob[j] = v
        s += v
    if s >= _TINY:
        if normalise:
            inv = 1.0 / s
            for j in range(s0, s1):
                prob[j] *= inv
        return m + np.log(s)
    return np.nan


@njit(**_NOGIL)
def prompt_log_norm_exact(theta, local, count, s0, s1, prob):
    """:func:`prompt_log_norm` from the logits ``theta`` themselves, by the log-sum-exp;
    ``prob[s0:s1]`` receives the probabilities (normalised whatever the caller needs: the
    call is rare, and one type of call is one compilation)."""
    for j in range(s0, s1):
        prob[j] = theta[local[j]] + np.log(count[j])
    return logsumexp_inplace(prob, s0, s1, True)


@njit(**_PER_PROMPT)
def prompt_nll(lse, theta, local, count, yj):
    """``-log C(y)`` of a prompt whose output is entry ``yj``, from its log-normaliser."""
    return lse - theta[local[yj]] - np.log(count[yj])


@njit(cache=True, nogil=True)
def column_nll_grad(theta, indptr, local, count, y_entry, weight, grad, prob, nll):
    """Weighted NLL of one column; when ``grad`` is not empty, the gradient (per parameter)
    and the entry probabilities in ``prob`` (otherwise ``prob`` is scratch space); unless
    ``nll`` is empty, every prompt's unweighted NLL in it.  Probabilities and NLLs do not
    depend on the weights: :func:`column_nll_grad_from` gives the NLL and gradient at other
    weights from them, to the last bit."""
    none = np.empty(0)
    return _column_pass(theta, indptr, local, count, y_entry, weight, np.empty((0, 0)), False,
                        grad, prob, nll, none, none)


@njit(cache=True, nogil=True)
def _column_pass(theta, indptr, local, count, y_entry, weight, log_odds, sentinel, grad, prob,
                 nll, w_rho, w_var):
    """The pass over a column's prompts of :func:`column_nll_grad` (``log_odds`` 2-D) and of
    :func:`column_mixture_nll_grad` (``log_odds`` 1-D: each prompt's loss and gradient weight
    are the mixture's, with a ``sentinel`` or not).  The type of ``log_odds`` is a constant
    when compiled: a CCMC never compiles the mixture's branch."""
    with_grad = grad.size > 0
    for k in range(grad.size):  # a loop compiles faster than ``grad[:] = 0.0``
        grad[k] = 0.0
    e = np.empty(theta.size)
    m = column_exp(theta, e)
    f = 0.0
    for i in range(indptr.size - 1):
        s0 = indptr[i]
        s1 = indptr[i + 1]
        yj = y_entry[i]
        normalise = with_grad or sentinel
        lse = prompt_log_norm(e, m, local, count, s0, s1, prob, normalise)
        if lse != lse:
            lse = prompt_log_norm_exact(theta, local, count, s0, s1, prob)
        v = prompt_nll(lse, theta, local, count, yj)
        if nll.size > 0:
            nll[i] = v
        if log_odds.ndim == 1:
            # With a sentinel (the prompt's last entry), generating needs its attention too.
            t = log_odds[i] + np.log(prob[s1 - 1]) if sentinel else log_odds[i]
            f += _mixture_prompt(i, v, t, weight, w_rho, w_var)
            w = weight[i] if sentinel else w_rho[i]
            w_y = w_rho[i]
        else:
            w = weight[i]
            w_y = w
            f += w * v
        if with_grad:
            _add_prompt_grad(grad, local, prob, s0, s1, yj, w, w_y, sentinel)
    return f


@njit(**_PER_PROMPT)
def _add_prompt_grad(grad, local, prob, s0, s1, yj, w, w_y, sentinel):
    """Add a prompt's gradient ``w p - w_y e_y``, and with a ``sentinel`` (its last entry)
    ``- (w - w_y) e_sentinel``: ``w (p - e_y)`` for the CCMC (``w_y = w``), and with a
    sentinel ``w_y = w rho``, the output copied with posterior ``rho``, else generated.  One
    place for every likelihood kernel, so that they agree to the last bit."""
    for j in range(s0, s1):
        grad[local[j]] += w * prob[j]
    grad[local[yj]] -= w_y
    if sentinel:
        grad[local[s1 - 1]] -= w - w_y


@njit(cache=True, nogil=True)
def column_nll_grad_from(prob_in, nll_in, indptr, local, y_entry, weight, grad, prob):
    """:func:`column_nll_grad` from the entry probabilities ``prob_in`` and prompt NLLs
    ``nll_in`` it gave at the same logits (under any weights): the same sums in the same
    order, without the exponentials and logarithms.  ``prob`` receives ``prob_in``."""
    for k in range(grad.size):
        grad[k] = 0.0
    for j in range(prob.size):
        prob[j] = prob_in[j]
    f = 0.0
    for i in range(indptr.size - 1):
        f += weight[i] * nll_in[i]
        _add_prompt_grad(grad, local, prob, indptr[i], indptr[i + 1], y_entry[i], weight[i],
                         weight[i], False)
    return f


@njit(cache=True, nogil=True)
def column_nll(theta, indptr, local, count, y_entry, weight):
    """Weighted negative log-likelihood of one column."""
    return column_nll_grad(theta, indptr, local, count, y_entry, weight, np.empty(0),
                           np.empty(local.size), np.empty(0))


@njit(**_NOGIL)
def column_hessian(indptr, local, weight, prob, hess):
    """Dense Hessian ``sum_i w_i (diag(p_i) - p_i p_i^T)`` of one column (from entry probs)."""
    n = hess.shape[0]
    for r in range(n):  # loops compile faster than ``hess[:, :] = 0.0``
        for c in range(n):
            hess[r, c] = 0.0
    for i in range(indptr.size - 1):
        w = weight[i]
        s0 = indptr[i]
        s1 = indptr[i + 1]
        for j in range(s0, s1):
            lj = local[j]
            wpj = w * prob[j]
            hess[lj, lj] += wpj * (1.0 - prob[j])
            for k in range(j + 1, s1):
                hess[lj, local[k]] -= wpj * prob[k]
    # Only pairs j < k were accumulated; tokens are sorted, so local[j] < local[k]: upper half.
    for r in range(n):
        for c in range(r + 1, n):
            hess[c, r] = hess[r, c]


@njit(**_NOGIL)
def column_hessp(v, indptr, local, weight, prob, out):
    """Hessian-vector product of one column from entry probabilities."""
    _hessp(v, indptr, local, np.empty(0, np.int64), weight, np.empty((0, 0)), False, prob, out)


@njit(**_NOGIL)
def _hessp(v, indptr, local, y_entry, weight, w_var, sentinel, prob, out):
    """The pass of :func:`column_hessp` (``w_var`` 2-D) and of :func:`column_mixture_hessp`
    (``w_var`` 1-D: minus the mixture's rank-one terms, ``weight`` its ``w rho``, or ``w``
    with a ``sentinel``).  The type of ``w_var`` is a constant when compiled: a CCMC never
    compiles the mixture's branch."""
    for k in range(out.size):  # a loop compiles faster than ``out[:] = 0.0``
        out[k] = 0.0
    for i in range(indptr.size - 1):
        s0 = indptr[i]
        s1 = indptr[i + 1]
        pv = 0.0
        for j in range(s0, s1):
            pv += prob[j] * v[local[j]]
        w = weight[i]
        if w_var.ndim == 1 and not sentinel:
            ly = local[y_entry[i]]
            c = w_var[i] * (pv - v[ly])
            for j in range(s0, s1):
                lj = local[j]
                out[lj] += prob[j] * (w * (v[lj] - pv) - c)
            out[ly] += c
        else:
            for j in range(s0, s1):
                lj = local[j]
                out[lj] += w * prob[j] * (v[lj] - pv)
            if w_var.ndim == 1:  # the sentinel's rank-one term, on the output and sentinel
                ly = local[y_entry[i]]
                ls = local[s1 - 1]
                c = w_var[i] * (v[ly] - v[ls])
                out[ly] -= c
                out[ls] += c


@njit(cache=True, nogil=True)
def column_mixture_grad(nll, log_odds, sentinel, indptr, local, y_entry, weight, prob, grad,
                        w_rho, w_var):
    """The copy-and-generate mixture's loss of one column as a function of its copy logits,
    ``sum_i w_i (-log(C_i + exp(t_i)))`` with ``C_i = exp(-nll_i)`` the CCMC probability of
    prompt ``i``'s output and ``t_i = log_odds[i]`` the log-odds of generating it
    (``log((1 - lam) B / lam)``, fixed), from the prompts' NLLs and entry probabilities.
    ``grad`` receives its gradient, ``sum_i w_i rho_i (p_i - e_y)`` with ``rho_i`` the
    posterior copy probability; ``w_rho`` and ``w_var`` receive ``w rho`` and
    ``w rho (1 - rho)``, the weights of the Hessian (:func:`column_mixture_hessp`).

    With a ``sentinel``, the last entry of every prompt, whose attention is the weight of
    generating (the copy weight is the prompt's own): ``t_i = log_odds[i] + log
    p_sentinel`` with ``log_odds[i] = log B``, ``C_i`` the output's share of the attention
    including the sentinel's, and the gradient ``w_i (p_i - rho_i e_y - (1 - rho_i)
    e_sentinel)``."""
    for k in range(grad.size):
        grad[k] = 0.0
    f = 0.0
    for i in range(indptr.size - 1):
        s0 = indptr[i]
        s1 = indptr[i + 1]
        t = log_odds[i] + np.log(prob[s1 - 1]) if sentinel else log_odds[i]
        f += _mixture_prompt(i, nll[i], t, weight, w_rho, w_var)
        w = weight[i] if sentinel else w_rho[i]
        _add_prompt_grad(grad, local, prob, s0, s1, y_entry[i], w, w_rho[i], sentinel)
    return f


@njit(cache=True, nogil=True)
def column_mixture_nll_grad(theta, indptr, local, count, y_entry, weight, log_odds, sentinel,
                            grad, prob, nll, w_rho, w_var):
    """:func:`column_mixture_grad` at the logits ``theta``, in one pass over the prompts: the
    entry probabilities into ``prob`` and the prompts' CCMC NLLs into ``nll`` as well (each
    prompt's gradient is added while its entries are in cache)."""
    return _column_pass(theta, indptr, local, count, y_entry, weight, log_odds, sentinel, grad,
                        prob, nll, w_rho, w_var)


@njit(**_PER_PROMPT)
def _mixture_prompt(i, nll, t, weight, w_rho, w_var):
    """Prompt ``i``'s mixture loss ``-w log(C + exp(t))`` from its CCMC NLL ``-log C`` (in log
    space: no overflow for odds up to ``exp(+-700)``); records ``w rho`` and
    ``w rho (1 - rho)``."""
    a = -nll
    w = weight[i]
    if t == -np.inf:  # never generated: the CCMC's own loss (EM's M-step), to the last bit
        w_rho[i] = w
        w_var[i] = 0.0
        return w * nll
    # One exponential: the smaller term over the larger, e <= 1.
    e = np.exp(-abs(a - t))
    inv = 1.0 / (1.0 + e)
    rho = inv if a >= t else e * inv
    w_rho[i] = w * rho
    w_var[i] = w * rho * (e * inv if a >= t else inv)
    return -w * ((a if a >= t else t) + np.log1p(e))


@njit(**_NOGIL)
def column_mixture_hessp(v, indptr, local, y_entry, w_rho, w_var, sentinel, prob, out):
    """Hessian-vector product of :func:`column_mixture_grad`'s loss: the CCMC Hessian at
    weights ``w rho`` minus ``sum_i w_i rho_i (1 - rho_i) g_i g_i^T`` with ``g_i = p_i - e_y``
    (the information the latent choice hides; the loss is not convex).  With a ``sentinel``,
    ``w_rho`` holds the weights ``w`` and ``g_i = e_y - e_sentinel``."""
    _hessp(v, indptr, local, y_entry, w_rho, w_var, sentinel, prob, out)


@njit(**_NOGIL)
def column_hess_diag(indptr, local, weight, prob, out):
    """Diagonal of the column Hessian (the preconditioner of the truncated Newton solver)."""
    for k in range(out.size):  # a loop compiles faster than ``out[:] = 0.0``
        out[k] = 0.0
    for i in range(indptr.size - 1):
        w = weight[i]
        for j in range(indptr[i], indptr[i + 1]):
            p = prob[j]
            out[local[j]] += w * p * (1.0 - p)


# --------------------------------------------------------------------------- generation
@njit(cache=True)
def _log_space_weights(block, q, counts, w):
    """``w[s] = counts[s] exp(block[s, q])``, scaled by the largest term so that nothing
    overflows or underflows to all zeros; returns their sum."""
    S = counts.size
    for s in range(S):
        w[s] = block[s, q] + np.log(counts[s]) if counts[s] > 0 else -np.inf
    logsumexp_inplace(w, 0, S, True)
    return 1.0


@njit(cache=True)
def _pick(w, threshold):
    """Inverse CDF: the first index whose cumulative weight exceeds ``threshold`` (the last
    positive one, should rounding leave the threshold above the total)."""
    c = 0.0
    pick = -1
    for s in range(w.size):
        if w[s] > 0:
            pick = s
            c += w[s]
            if threshold < c:
                break
    return pick


@njit(cache=True)
def generate_tokens(block, context, window, u, out):
    """Autoregressive CCMC generation with incremental counts, in support-local ids.

    ``block[s, r]`` holds the logits among the prompt's distinct tokens (the only ones that can
    ever appear), ``context`` the prompt in local ids, ``window`` the context length (0: the
    context grows), ``u`` one uniform per step; the generated local ids go to ``out``.
    """
    S = block.shape[0]
    # exp of column-centred logits: no overflow, and one multiplication per token per step.
    expw = np.empty((S, S))
    for q in range(S):
        mx = block[:, q].max()
        for k in range(S):
            expw[k, q] = np.exp(block[k, q] - mx)
    L = context.size
    keep = L if window == 0 or window > L else window
    m = np.zeros(S)
    ring = np.empty(max(min(window, L + u.size), 1), np.int64)
    for i in range(L - keep, L):
        m[context[i]] += 1.0
        if window > 0:
            ring[i - (L - keep)] = context[i]
    ring_len = keep
    head = 0
    w = np.empty(S)
    q = context[L - 1]
    for t in range(u.size):
        tot = 0.0
        for s in range(S):
            v = m[s] * expw[s, q]
            w[s] = v
            tot += v
        if tot < 1e-250:  # every present token underflowed: redo this step in log space
            tot = _log_space_weights(block, q, m, w)
        y = _pick(w, u[t] * tot)
        out[t] = y
        m[y] += 1.0
        if window > 0:
            if ring_len == window:
                m[ring[head]] -= 1.0
                ring[head] = y
                head = (head + 1) % window
            else:
                ring[(head + ring_len) % window] = y
                ring_len += 1
        q = y


@njit(cache=True)
def prefix_counts(seq, start, support, window):
    """Statistics of the contexts ``seq[lo_t:t]`` for ``t = start .. len(seq) - 1``, where
    ``lo_t = 0`` (``window == 0``) or ``max(0, t - window)``; each context's next token is
    ``seq[t]``.  ``support`` (sorted) must hold every token of ``seq``."""
    n = seq.size - start
    K = support.max() + 1
    m = np.zeros(K)
    lo = 0 if window == 0 else max(0, start - window)
    for i in range(lo, start):
        m[seq[i]] += 1.0
    indptr = np.zeros(n + 1, np.int64)
    tokens = np.empty(n * support.size, np.int32)
    counts = np.empty(n * support.size)
    query = np.empty(n, np.int32)
    pos = 0
    for i in range(n):
        t = start + i
        for k in support:
            if m[k] > 0:
                tokens[pos] = k
                counts[pos] = m[k]
                pos += 1
        indptr[i + 1] = pos
        query[i] = seq[t - 1]
        m[seq[t]] += 1.0
        if window > 0 and t - window >= 0:
            m[seq[t - window]] -= 1.0
    return indptr, tokens[:pos].copy(), counts[:pos].copy(), query


# --------------------------------------------------------------------------- position bias
@njit(cache=True)
def bias_loglik(flat, indptr, query, outputs, weight, w_ptr, w_idx, w_val, b, grad):
    """Log-likelihood in the relative bias ``b`` with the logits (CSC) fixed, and its gradient
    ``sum_i w_i (R_i - P_i)``: ``R_i`` is the posterior over the attended distance bucket among
    the positions holding the output, ``P_i`` the attention mass per bucket."""
    n = indptr.size - 1
    B = b.size
    grad[:] = 0.0
    L = 0
    for i in range(n):
        L = max(L, indptr[i + 1] - indptr[i])
    z = np.empty(L)
    zy = np.empty(L)
    f = 0.0
    for i in range(n):
        q = query[i]
        y = outputs[i]
        a = indptr[i]
        end = indptr[i + 1] - 1
        ny = 0
        for j in range(a, indptr[i + 1]):
            v = csc_lookup(w_ptr, w_idx, w_val, flat[j], q, w_ptr[q])[0]
            z[j - a] = v + b[min(end - j, B - 1)]
            if flat[j] == y:
                zy[ny] = z[j - a]
                ny += 1
        lse = logsumexp_inplace(z, 0, end + 1 - a, True)
        lse_y = logsumexp_inplace(zy, 0, ny, True)
        w = weight[i]
        f += w * (lse_y - lse)
        ny = 0
        for j in range(a, indptr[i + 1]):
            d = min(end - j, B - 1)
            grad[d] -= w * z[j - a]
            if flat[j] == y:
                grad[d] += w * zy[ny]
                ny += 1
    return f


@njit(cache=True)
def output_occurrences(flat, indptr, rows, outputs):
    """How often the output of each laid-out prompt (its pair ``rows[p]``) occurs in it."""
    out = np.zeros(rows.size, np.int64)
    for p in range(rows.size):
        i = rows[p]
        y = outputs[i]
        for j in range(indptr[i], indptr[i + 1]):
            if flat[j] == y:
                out[p] += 1
    return out


@njit(cache=True, nogil=True)
def distance_sums(cols, flat, indptr, rows, col_ptr, id_ptr, id_tokens, theta, outputs, unk,
                  A, y_ptr, y_bucket, y_val):
    """Attention at fixed logits, summed by distance bucket (``min(d, n_buckets - 1)``,
    ``n_buckets = A.shape[1]``), for each laid-out prompt ``p`` of the columns ``cols`` (its
    pair ``rows[p]``): ``A[p, d]`` over all its positions and, in ``y_ptr[p]:y_ptr[p + 1]``
    of ``y_bucket``/``y_val``, each position holding its output, all scaled by the prompt's
    largest ``exp(theta)``.  The token ``unk`` (-1: none) is never attended.  The copy
    likelihood at any bias ``b`` is then ``log(Y_p . e^b) - log(A_p . e^b)``, a few dense
    products instead of a pass over the prompts (see ``mixture._BiasData``)."""
    n_buckets = A.shape[1]
    mark = np.zeros(id_ptr.size - 1, np.int64)
    for q in cols:
        for k in range(id_ptr[q], id_ptr[q + 1]):
            mark[id_tokens[k]] = k
        for p in range(col_ptr[q], col_ptr[q + 1]):
            i = rows[p]
            a = indptr[i]
            end = indptr[i + 1] - 1
            m = -np.inf
            for j in range(a, end + 1):
                if flat[j] != unk:
                    m = max(m, theta[mark[flat[j]]])
            y = outputs[i]
            k = y_ptr[p]
            for j in range(a, end + 1):
                t = flat[j]
                if t == unk:
                    continue
                d = min(end - j, n_buckets - 1)
                e = np.exp(theta[mark[t]] - m)
                A[p, d] += e
                if t == y:
                    y_bucket[k] = d
                    y_val[k] = e
                    k += 1


@njit(cache=True)
def generate_positional(block, b, context, window, u, out):
    """Generation from a CCMC with a relative position bias ``b`` (``b[-1]`` for all larger
    distances), in support-local ids as :func:`generate_tokens`: tokens at distance
    ``>= len(b) - 1`` share one weight and are counted incrementally; the more recent ones are
    summed explicitly, ``O(len(b) + support)`` a step."""
    S = block.shape[0]
    B = b.size
    expb = np.exp(b - b.max())
    L = context.size
    seq = np.empty(L + u.size, np.int64)
    seq[:L] = context
    old = np.zeros(S)  # counts of the positions rlo..rhi-1 (the context's old part)
    rlo = 0 if window == 0 else max(0, L - window)
    rhi = rlo
    wk = np.zeros(S)
    w = np.empty(S)
    for t in range(u.size):
        n = L + t  # the context is seq[lo:n]
        lo = 0 if window == 0 else max(0, n - window)
        hi = max(lo, n - B + 1)
        while rlo < lo:
            if rlo < rhi:
                old[seq[rlo]] -= 1.0
            rlo += 1
        rhi = max(rhi, rlo)
        while rhi < hi:
            old[seq[rhi]] += 1.0
            rhi += 1
        q = seq[n - 1]
        for s in range(S):
            wk[s] = old[s] * expb[B - 1]
        for p in range(hi, n):
            wk[seq[p]] += expb[n - 1 - p]
        tot = _log_space_weights(block, q, wk, w)
        y = _pick(w, u[t] * tot)
        out[t] = y
        seq[n] = y


@njit(cache=True, nogil=True)
def column_graphs(col_ptr, indptr, local, y_entry, id_ptr):
    """Per-column graph diagnostics, one column at a time (memory of the largest column).

    Returns, per parameter: ``n_prompts`` (prompts of the column holding it) and ``chosen``
    (emitted at least once against another token); per column: ``strong``, whether the
    "chosen over" graph (an arc ``j -> y`` whenever ``y`` was emitted from a prompt holding
    ``j``) is strongly connected, tested as: every token is reached from the query and reaches
    it.  ``y_entry`` may be empty (no outputs): ``chosen`` and ``strong`` are then all False.
    (Co-occurrence needs no graph: the query is in every prompt of its column.)
    """
    # Self-contained, with int64 work arrays only: the first fit runs this, and every helper
    # function or extra dtype would be one more compilation.
    K = col_ptr.size - 1
    n_params = id_ptr[K]
    # np.empty and loops rather than np.zeros: each (allocator, dtype) pair is a compilation.
    n_prompts = np.empty(n_params, np.int32)  # prompts of a column: below 2**31
    chosen = np.empty(n_params, np.bool_)
    for s in range(n_params):
        n_prompts[s] = 0
        chosen[s] = False
    strong = np.empty(K, np.bool_)
    has_y = y_entry.size > 0
    m = 0  # work arrays sized for the largest column serve every column
    for q in range(K):
        strong[q] = False
        if id_ptr[q + 1] - id_ptr[q] > m:
            m = id_ptr[q + 1] - id_ptr[q]
    out_deg = np.empty(m + 1, np.int64)
    in_deg = np.empty(m + 1, np.int64)
    fo = np.empty(m, np.int64)
    fi = np.empty(m, np.int64)
    seen = np.empty(m, np.int64)  # the last search (2 q + direction) that reached a node
    stack = np.empty(m, np.int64)
    for v in range(m):
        seen[v] = -1
    for q in range(K):
        a = col_ptr[q]
        b = col_ptr[q + 1]
        n = id_ptr[q + 1] - id_ptr[q]
        if a == b or n == 0:
            continue
        base = id_ptr[q]
        for v in range(n + 1):
            out_deg[v] = 0
            in_deg[v] = 0
        root = 0
        for i in range(a, b):
            for j in range(indptr[i], indptr[i + 1]):
                n_prompts[base + local[j]] += 1
            root = local[indptr[i]]  # any token of the column serves as the root
            if has_y:
                y = local[y_entry[i]]
                for j in range(indptr[i], indptr[i + 1]):
                    if local[j] != y:
                        out_deg[local[j] + 1] += 1
                        in_deg[y + 1] += 1
                        chosen[base + y] = True
        if not has_y:
            continue
        for v in range(n):
            out_deg[v + 1] += out_deg[v]
            in_deg[v + 1] += in_deg[v]
            fo[v] = out_deg[v]
            fi[v] = in_deg[v]
        fwd = np.empty(out_deg[n], np.int64)
        bwd = np.empty(in_deg[n], np.int64)
        for i in range(a, b):
            y = local[y_entry[i]]
            for j in range(indptr[i], indptr[i + 1]):
                v = local[j]
                if v != y:
                    fwd[fo[v]] = y
                    fo[v] += 1
                    bwd[fi[y]] = v
                    fi[y] += 1
        ok = True
        for direction in range(2):
            start = out_deg if direction == 0 else in_deg
            adj = fwd if direction == 0 else bwd
            stamp = 2 * q + direction
            seen[root] = stamp
            stack[0] = root
            top = 1
            reached = 1
            while top > 0:
                top -= 1
                v = stack[top]
                for k in range(start[v], start[v + 1]):
                    w = adj[k]
                    if seen[w] != stamp:
                        seen[w] = stamp
                        reached += 1
                        stack[top] = w
                        top += 1
            ok = ok and reached == n
        strong[q] = ok
    return n_prompts, chosen, strong


# --------------------------------------------------------------------------- mixture
@njit(cache=True, nogil=True)
def layout_output_proba(cols, lay, theta, out, proba_out, nll_out):
    """CCMC probability of the output of every prompt of the columns ``cols`` of a column
    layout, into ``out`` (layout order), from the flat parameter vector ``theta``: the same
    arithmetic as the solver's probabilities (``column_nll_grad``), so that an EM gets the
    same numbers from either.  Unless they are empty, ``proba_out`` receives every entry's
    probability and ``nll_out`` every prompt's NLL, which start a solve at ``theta``."""
    keep = proba_out.size > 0
    for q in cols:
        theta_q = theta[lay.id_ptr[q] : lay.id_ptr[q + 1]]
        e = np.empty(theta_q.size)
        m = column_exp(theta_q, e)
        e0 = lay.indptr[lay.col_ptr[q]]
        e1 = lay.indptr[lay.col_ptr[q + 1]]
        local = lay.local[e0:e1]
        count = lay.count[e0:e1]
        prob = proba_out[e0:e1] if keep else np.empty(local.size)
        for r in range(lay.col_ptr[q], lay.col_ptr[q + 1]):
            yj = lay.y_entry[r] - e0
            s0 = lay.indptr[r] - e0
            s1 = lay.indptr[r + 1] - e0
            lse = prompt_log_norm(e, m, local, count, s0, s1, prob, True)
            if lse != lse:
                lse = prompt_log_norm_exact(theta_q, local, count, s0, s1, prob)
            v = prompt_nll(lse, theta_q, local, count, yj)
            out[r] = prob[yj]
            if keep:
                nll_out[r] = v


@njit(cache=True, nogil=True)
def mixture_posterior(ql, copy_j, gen, c, key_of, col_total, beta, u_y, r, log_p):
    """E-step of the copy-and-generate mixture for every pair ``i`` of a block: the posterior
    copy probability ``r[i]`` and, unless ``log_p`` is empty, ``log_p[i] = log(lam C + (1 -
    lam) B)``, where ``lam C`` is ``copy_j[i]``, ``1 - lam`` is ``gen[i]`` and ``B`` the
    Witten-Bell base chain ``(c[key] + beta u_y) / (col_total + beta)`` of the pair's column
    ``ql[i]`` (``lam`` is the pair's copy weight: its query's, or its attention against a
    sentinel, 0 for a pair with nothing to copy).

    In probability space (both parts are probabilities, at least the base chain's floor, so
    nothing overflows and the sum cannot lose the larger part); the copy probabilities come
    in computed (the E-step at a logits step's result has them from that step)."""
    with_log = log_p.size > 0
    for i in range(ql.size):
        q = ql[i]
        base = gen[i] * (c[key_of[i]] + beta[q] * u_y[i]) / (col_total[q] + beta[q])
        cp = copy_j[i]
        p = cp + base
        if p > 0.0:
            r[i] = cp / p
            if with_log:
                log_p[i] = np.log(p)
        else:  # neither part can emit the output
            r[i] = 0.0
            if with_log:
                log_p[i] = -np.inf


@njit(cache=True, nogil=True)
def mixture_sums(ql, key_of, w, r, wr, c):
    """The copy-and-generate mixture's expected counts at the responsibilities ``r``, in one
    pass over the pairs: per column the weight copied, ``wr[q] = sum w r``, and per base-chain
    key the weight generated, ``c[k] = sum w (1 - r)`` (both overwritten)."""
    wr[:] = 0.0
    c[:] = 0.0
    for i in range(ql.size):
        wr[ql[i]] += w[i] * r[i]
        c[key_of[i]] += w[i] * (1.0 - r[i])


#: The range of a copy weight (``log(1 - lam)`` and ``log(lam)`` finite).
LAM_MIN, LAM_MAX = 1e-300, 1.0 - 1e-16


@njit(cache=True, nogil=True)
def copy_weight(wr, n, a, b):
    """The copy weight's M-step ``(wr + a) / (n + a + b)``, the Beta posterior mode; 1/2 where
    neither data nor prior say anything (``n + a + b = 0``), as the default prior gives there;
    kept inside ``[LAM_MIN, LAM_MAX]`` (with ``a = b = 0`` it can reach 0 or 1)."""
    den = n + a + b
    lam = (wr + a) / den if den > 0.0 else 0.5
    return min(max(lam, LAM_MIN), LAM_MAX)


@njit(cache=True, nogil=True)
def copy_weights(wr, n, a, b, out):
    """:func:`copy_weight` of every column."""
    for q in range(out.size):
        out[q] = copy_weight(wr[q], n[q], a, b)


@njit(cache=True, nogil=True)
def mixture_em_steps(cols, n_steps, tol, key_ptr, pair_ptr, pair_w, pair_copy, pair_gen, prior,
                     beta, n_per_query, a, b, shared, lam, c, c_fixed, wr):
    """``n_steps`` EM steps of the copy-and-generate mixture for its copy weights ``lam`` and
    base chain at fixed copy probabilities, in the columns ``cols``, each column's steps
    together (its data stay in cache).  Column ``q`` holds the base chain's keys
    ``key_ptr[q]:key_ptr[q + 1]``; key ``k`` the pairs ``pair_ptr[k]:pair_ptr[k + 1]`` that
    may be copied (weight ``pair_w``, copy probability ``pair_copy``), its prior mass
    ``prior[k] = beta_q u_y`` and the weight ``c_fixed[k]`` of its pairs that cannot be
    copied.  A step takes every such pair's posterior copy probability ``r`` at ``lam`` and
    the expected counts ``c``, then sets ``wr[q] = sum w r``, ``c[k] = c_fixed[k] + sum w
    (1 - r)`` and, unless ``shared`` (the driver's), ``lam[q] = copy_weight(wr[q],
    n_per_query[q], a, b)``, all in place.  A column stops before ``n_steps`` once a step
    has moved none of its counts, nor its copy weight times ``n_per_query[q]``, by more than
    ``tol`` times its weight ``sum c + beta_q`` (the further steps would change little; 0:
    all steps).  Columns do not interact: any split of them gives the same numbers.

    Unless ``pair_gen`` is empty, every pair has a copy weight of its own (its attention
    against a sentinel, fixed with the copy logits): ``pair_copy`` is then ``lam C`` and
    ``pair_gen`` ``1 - lam``, and ``lam`` is not used."""
    own = pair_gen.size > 0
    for q in cols:
        k0 = key_ptr[q]
        k1 = key_ptr[q + 1]
        c_new = np.empty(k1 - k0)
        for _ in range(n_steps):
            total = 0.0
            for k in range(k0, k1):
                total += c[k]
            lq = 0.0 if own else lam[q]
            scale = (1.0 - lq) / (total + beta[q])
            s = 0.0
            for k in range(k0, k1):
                base = (c[k] + prior[k]) * scale  # the same for all the key's pairs
                g = c_fixed[k]
                for i in range(pair_ptr[k], pair_ptr[k + 1]):
                    if own:
                        cp = pair_copy[i]
                        p = cp + pair_gen[i] * base
                    else:
                        cp = lq * pair_copy[i]
                        p = cp + base
                    r = cp / p if p > 0.0 else 0.0
                    s += pair_w[i] * r
                    g += pair_w[i] * (1.0 - r)
                c_new[k - k0] = g
            wr[q] = s
            moved = 0.0
            for k in range(k0, k1):
                moved = max(moved, abs(c_new[k - k0] - c[k]))
                c[k] = c_new[k - k0]
            if not (shared or own):
                lam_new = copy_weight(s, n_per_query[q], a, b)
                moved = max(moved, abs(lam_new - lam[q]) * n_per_query[q])
                lam[q] = lam_new
            if moved <= tol * (total + beta[q]):
                break


@njit(cache=True)
def output_in_prompt(flat, indptr, outputs, n_tokens, skip):
    """Whether each output occurs in its prompt, never counting the token ``skip`` (-1: none):
    the one coverage test of the estimators, the mixture and ``in_prompt``."""
    mark = np.empty(n_tokens, np.int64)  # not np.full: one compilation fewer on the first fit
    for t in range(n_tokens):
        mark[t] = -1
    out = np.empty(indptr.size - 1, np.bool_)
    for i in range(indptr.size - 1):
        for j in range(indptr[i], indptr[i + 1]):
            mark[flat[j]] = i
        out[i] = mark[outputs[i]] == i and outputs[i] != skip
    return out


@njit(cache=True)
def _search(cdf, lo, hi, target):
    """First index in ``cdf[lo:hi]`` (non-decreasing) whose value exceeds ``target``, clipped
    to the range."""
    a = lo
    b = hi
    while a < b:
        mid = (a + b) // 2
        if cdf[mid] <= target:
            a = mid + 1
        else:
            b = mid
    return min(a, hi - 1)


@njit(cache=True)
def _copy_scores(w_ptr, w_idx, w_val, q, present, n_present, unk, seq, hi, n, old, recent,
                 expb, z):
    """The log attention of the copy part on every present token into ``z``, normalised;
    returns its logsumexp (the positions at distances of at least ``len(expb) - 1`` counted in
    ``old``, the more recent ones summed here)."""
    B = expb.size
    for j in range(hi, n):
        recent[seq[j]] += expb[n - 1 - j]
    for r in range(n_present):
        t = present[r]
        if t == unk:
            z[r] = -np.inf
        else:
            z[r] = (csc_lookup(w_ptr, w_idx, w_val, t, q, w_ptr[q])[0]
                    + np.log(old[t] * expb[B - 1] + recent[t]))
    for j in range(hi, n):
        recent[seq[j]] = 0.0
    return logsumexp_inplace(z, 0, n_present, True)


@njit(cache=True)
def generate_mixture(w_ptr, w_idx, w_val, c_ptr, c_idx, c_cum, total, beta, u_cdf, lam, sentinel,
                     unk, bias, context, window, u, out):
    """Generation from a copy-and-generate mixture: the support grows as the base chain
    emits new tokens.  ``u`` holds three uniforms per step (copy or generate, which source,
    which token); ``c_cum`` the cumulative base-chain counts within each column.  The copy
    part weighs a position at distance ``d`` by ``exp(bias[min(d, len(bias) - 1)])``
    (``bias = [0]``: plain counts): as in :func:`generate_positional`, the positions at
    distances of at least ``len(bias) - 1`` are counted incrementally, the more recent ones
    summed at each step.  The copy weight is ``lam[q]``, or, unless ``sentinel`` is empty,
    the attention ``Z / (Z + exp(sentinel[q]))`` of the context."""
    K = total.size
    L = context.size
    B = bias.size
    own = sentinel.size > 0
    expb = np.exp(bias - bias.max())
    seq = np.empty(L + out.size, np.int64)
    seq[:L] = context
    m = np.zeros(K)  # occurrences in the window
    old = np.zeros(K)  # occurrences at positions lo..rhi-1 (distance >= B - 1)
    recent = np.zeros(K)
    pos = np.full(K, -1, np.int64)  # position of a token in the list of present tokens
    present = np.empty(K, np.int64)
    n_present = 0
    lo = 0 if window == 0 else max(0, L - window)
    for i in range(lo, L):
        t = seq[i]
        if m[t] == 0:
            pos[t] = n_present
            present[n_present] = t
            n_present += 1
        m[t] += 1.0
    rhi = lo
    z = np.empty(K)
    q = context[L - 1]
    for step in range(out.size):
        n = L + step  # the context is seq[lo:n]
        hi = max(lo, n - B + 1)
        while rhi < hi:
            old[seq[rhi]] += 1.0
            rhi += 1
        n_copy = n_present - (1 if unk >= 0 and m[unk] > 0 else 0)
        copy = False
        if n_copy > 0:
            if own:  # the copy weight needs the attention first
                lse = _copy_scores(w_ptr, w_idx, w_val, q, present, n_present, unk, seq, hi, n,
                                   old, recent, expb, z)
                # z was scaled by exp(-max b): Z is exp(lse + max b)
                copy = u[step, 0] * (1.0 + np.exp(sentinel[q] - lse - bias.max())) < 1.0
            elif u[step, 0] < lam[q]:
                _copy_scores(w_ptr, w_idx, w_val, q, present, n_present, unk, seq, hi, n, old,
                             recent, expb, z)
                copy = True
        if copy:
            c = 0.0
            y = -1
            for r in range(n_present):
                if z[r] > 0:
                    y = present[r]
                    c += z[r]
                    if u[step, 2] < c:
                        break
            s = y
        elif u[step, 1] * (total[q] + beta[q]) < total[q]:
            a = c_ptr[q]
            before = c_cum[a - 1] if a > 0 else 0.0
            s = c_idx[_search(c_cum, a, c_ptr[q + 1], before + u[step, 2] * total[q])]
        else:
            s = _search(u_cdf, 0, K, u[step, 2] * u_cdf[K - 1])
        out[step] = s
        seq[n] = s
        if m[s] == 0:
            pos[s] = n_present
            present[n_present] = s
            n_present += 1
        m[s] += 1.0
        if window > 0 and n + 1 - lo > window:  # the oldest position leaves the window
            t = seq[lo]
            if lo < rhi:
                old[t] -= 1.0
            lo += 1
            rhi = max(rhi, lo)
            m[t] -= 1.0
            if m[t] == 0:  # swap-remove from the list of present tokens
                r = pos[t]
                last = present[n_present - 1]
                present[r] = last
                pos[last] = r
                pos[t] = -1
                n_present -= 1
        q = s
