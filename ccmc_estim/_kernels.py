"""Compiled numeric kernels over the flat prompt statistics.

Every function here is a plain ``@njit(cache=True)`` function over flat arrays.  Callers validate
their input first: numba does not check bounds.

Layout (see ``_stats``): prompt ``i`` owns the entries ``indptr[i]:indptr[i + 1]``; entry ``j``
holds a distinct token ``tokens[j]`` (or, for a column problem, its local index ``local[j]``)
and the log of its (possibly position-weighted) count ``logc[j]``.
"""

import numpy as np
from numba import njit

_NOGIL = {"cache": True, "nogil": True}


# --------------------------------------------------------------------------- statistics
@njit(cache=True)
def _insertion_sort(a, lo, hi):
    """Sort ``a[lo:hi]`` in place; prompts hold few distinct tokens, where this is fastest."""
    for i in range(lo + 1, hi):
        v = a[i]
        j = i - 1
        while j >= lo and a[j] > v:
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = v


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
    for i in range(n):
        d = 0
        for j in range(indptr[i], indptr[i + 1]):
            t = flat[j]
            if mark[t] != i:
                mark[t] = i
                d += 1
        nd[i + 1] = nd[i] + d
    tokens = np.empty(nd[n], np.int32)
    counts = np.empty(nd[n], np.float64)
    cnt = np.zeros(n_tokens, np.float64)
    last = dist_weight.size - 1
    mark[:] = -1
    for i in range(n):
        pos = nd[i]
        end = indptr[i + 1] - 1
        for j in range(indptr[i], indptr[i + 1]):
            t = flat[j]
            if mark[t] != i:
                mark[t] = i
                cnt[t] = 0.0
                tokens[pos] = t
                pos += 1
            cnt[t] += dist_weight[min(end - j, last)]
        # Sorted tokens make the statistics independent of the order of the non-last tokens,
        # down to the last bit of every sum over a prompt.
        if nd[i + 1] - nd[i] <= 24:
            _insertion_sort(tokens, nd[i], nd[i + 1])
        else:
            tokens[nd[i] : nd[i + 1]].sort()
        for j in range(nd[i], nd[i + 1]):
            counts[j] = cnt[tokens[j]]
    return nd, tokens, counts


@njit(cache=True)
def output_entries(indptr, tokens, outputs):
    """Entry index of each output inside its prompt's (sorted) tokens, -1 where absent."""
    n = indptr.size - 1
    out = np.full(n, -1, np.int64)
    for i in range(n):
        lo = indptr[i]
        hi = indptr[i + 1]
        y = outputs[i]
        while lo < hi:
            mid = (lo + hi) // 2
            if tokens[mid] < y:
                lo = mid + 1
            else:
                hi = mid
        if lo < indptr[i + 1] and tokens[lo] == y:
            out[i] = lo
    return out


# --------------------------------------------------------------------------- model
@njit(cache=True)
def entry_log_proba(logits, indptr, tokens, logc, query):
    """Log-probability of every entry: ``logits[k, q] + log m_k - logsumexp`` over the prompt."""
    n = indptr.size - 1
    out = np.empty(tokens.size, np.float64)
    for i in range(n):
        q = query[i]
        a = indptr[i]
        b = indptr[i + 1]
        mx = -np.inf
        for j in range(a, b):
            z = logits[tokens[j], q] + logc[j]
            out[j] = z
            if z > mx:
                mx = z
        s = 0.0
        for j in range(a, b):
            s += np.exp(out[j] - mx)
        lse = mx + np.log(s)
        for j in range(a, b):
            out[j] -= lse
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
# indexes the column's parameter vector ``theta`` (its identified tokens) and ``y_entry[i]`` is
# the entry of prompt ``i`` that holds its output.


@njit(**_NOGIL)
def column_nll(theta, indptr, local, logc, y_entry, weight):
    """Weighted negative log-likelihood of one column."""
    f = 0.0
    for i in range(indptr.size - 1):
        s0 = indptr[i]
        s1 = indptr[i + 1]
        mx = -np.inf
        for j in range(s0, s1):
            z = theta[local[j]] + logc[j]
            if z > mx:
                mx = z
        s = 0.0
        for j in range(s0, s1):
            s += np.exp(theta[local[j]] + logc[j] - mx)
        yj = y_entry[i]
        f += weight[i] * (mx + np.log(s) - theta[local[yj]] - logc[yj])
    return f


@njit(**_NOGIL)
def column_nll_grad(theta, indptr, local, logc, y_entry, weight, grad, prob):
    """NLL of one column; fills ``grad`` (per parameter) and ``prob`` (per entry)."""
    grad[:] = 0.0
    f = 0.0
    for i in range(indptr.size - 1):
        s0 = indptr[i]
        s1 = indptr[i + 1]
        mx = -np.inf
        for j in range(s0, s1):
            z = theta[local[j]] + logc[j]
            prob[j] = z
            if z > mx:
                mx = z
        s = 0.0
        for j in range(s0, s1):
            e = np.exp(prob[j] - mx)
            prob[j] = e
            s += e
        w = weight[i]
        yj = y_entry[i]
        f += w * (mx + np.log(s) - theta[local[yj]] - logc[yj])
        inv = 1.0 / s
        for j in range(s0, s1):
            p = prob[j] * inv
            prob[j] = p
            grad[local[j]] += w * p
        grad[local[yj]] -= w
    return f


@njit(**_NOGIL)
def column_hessian(indptr, local, weight, prob, hess):
    """Dense Hessian ``sum_i w_i (diag(p_i) - p_i p_i^T)`` of one column (from entry probs)."""
    hess[:, :] = 0.0
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
    n = hess.shape[0]
    for r in range(n):
        for c in range(r + 1, n):
            hess[c, r] = hess[r, c]


@njit(**_NOGIL)
def column_hessp(v, indptr, local, weight, prob, out):
    """Hessian-vector product of one column from entry probabilities."""
    out[:] = 0.0
    for i in range(indptr.size - 1):
        s0 = indptr[i]
        s1 = indptr[i + 1]
        pv = 0.0
        for j in range(s0, s1):
            pv += prob[j] * v[local[j]]
        w = weight[i]
        for j in range(s0, s1):
            lj = local[j]
            out[lj] += w * prob[j] * (v[lj] - pv)


@njit(**_NOGIL)
def column_information(theta, indptr, local, logc, y_entry, weight, out):
    """Observed information (Hessian of the NLL) of one column at ``theta``, into ``out``."""
    prob = np.empty(local.size)
    grad = np.empty(theta.size)
    column_nll_grad(theta, indptr, local, logc, y_entry, weight, grad, prob)
    column_hessian(indptr, local, weight, prob, out)


@njit(**_NOGIL)
def column_hess_diag(indptr, local, weight, prob, out):
    """Diagonal of the column Hessian (the preconditioner of the truncated Newton solver)."""
    out[:] = 0.0
    for i in range(indptr.size - 1):
        w = weight[i]
        for j in range(indptr[i], indptr[i + 1]):
            p = prob[j]
            out[local[j]] += w * p * (1.0 - p)


# --------------------------------------------------------------------------- graphs
@njit(cache=True)
def _find(parent, v):
    while parent[v] != v:
        parent[v] = parent[parent[v]]  # path halving
        v = parent[v]
    return v


@njit(cache=True)
def _union(parent, a, b):
    ra = _find(parent, a)
    rb = _find(parent, b)
    if ra != rb:
        parent[max(ra, rb)] = min(ra, rb)


@njit(cache=True)
def _component_labels(parent):
    """Labels 0, 1, ... (in order of each component's first node) and their number."""
    n = parent.size
    labels = np.empty(n, np.int64)
    root_label = np.full(n, -1, np.int64)
    count = 0
    for v in range(n):
        r = _find(parent, v)
        if root_label[r] < 0:
            root_label[r] = count
            count += 1
        labels[v] = root_label[r]
    return labels, count


@njit(cache=True)
def union_find_components(n, src, dst):
    """Connected-component labels (0, 1, ... in order of first node) of an undirected graph."""
    parent = np.arange(n)
    for e in range(src.size):
        _union(parent, src[e], dst[e])
    return _component_labels(parent)[0]


# --------------------------------------------------------------------------- generation
@njit(cache=True)
def _log_space_weights(logits, q, support, counts, w):
    """``w[s] = counts[k] exp(logits[k, q])`` for ``k = support[s]``, scaled by the largest
    term so nothing overflows or underflows to all zeros; returns their sum."""
    mx = -np.inf
    for s in range(support.size):
        k = support[s]
        if counts[k] > 0:
            mx = max(mx, logits[k, q] + np.log(counts[k]))
    tot = 0.0
    for s in range(support.size):
        k = support[s]
        w[s] = np.exp(logits[k, q] + np.log(counts[k]) - mx) if counts[k] > 0 else 0.0
        tot += w[s]
    return tot


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
def generate_tokens(logits, support, context, window, u, out):
    """Autoregressive CCMC generation with incremental counts.

    ``support`` holds the prompt's distinct tokens (the only ones that can ever appear),
    ``context`` the prompt, ``window`` the context length (0: the context grows), ``u`` one
    uniform per step; the generated tokens go to ``out``.
    """
    K = logits.shape[0]
    # exp of column-centred logits: no overflow, and one multiplication per token per step.
    expw = np.empty((K, K))
    for q in range(K):
        mx = logits[:, q].max()
        for k in range(K):
            expw[k, q] = np.exp(logits[k, q] - mx)
    L = context.size
    keep = L if window == 0 or window > L else window
    m = np.zeros(K)
    ring = np.empty(max(window, 1), np.int64)
    for i in range(L - keep, L):
        m[context[i]] += 1.0
        if window > 0:
            ring[i - (L - keep)] = context[i]
    ring_len = keep
    head = 0
    S = support.size
    w = np.empty(S)
    q = context[L - 1]
    for t in range(u.size):
        tot = 0.0
        for s in range(S):
            k = support[s]
            v = m[k] * expw[k, q]
            w[s] = v
            tot += v
        if tot < 1e-250:  # every present token underflowed: redo this step in log space
            tot = _log_space_weights(logits, q, support, m, w)
        y = support[_pick(w, u[t] * tot)]
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
def bias_loglik(flat, indptr, query, outputs, weight, logits, b, grad):
    """Log-likelihood in the relative bias ``b`` with the logits fixed, and its gradient
    ``sum_i w_i (R_i - P_i)``: ``R_i`` is the posterior over the attended distance bucket among
    the positions holding the output, ``P_i`` the attention mass per bucket."""
    n = indptr.size - 1
    B = b.size
    grad[:] = 0.0
    P = np.empty(B)
    R = np.empty(B)
    f = 0.0
    for i in range(n):
        q = query[i]
        y = outputs[i]
        end = indptr[i + 1] - 1
        mx = -np.inf
        for j in range(indptr[i], indptr[i + 1]):
            mx = max(mx, logits[flat[j], q] + b[min(end - j, B - 1)])
        P[:] = 0.0
        R[:] = 0.0
        s = 0.0
        sy = 0.0
        for j in range(indptr[i], indptr[i + 1]):
            d = min(end - j, B - 1)
            e = np.exp(logits[flat[j], q] + b[d] - mx)
            P[d] += e
            s += e
            if flat[j] == y:
                R[d] += e
                sy += e
        w = weight[i]
        f += w * (np.log(sy) - np.log(s))
        for d in range(B):
            grad[d] += w * (R[d] / sy - P[d] / s)
    return f


@njit(cache=True)
def generate_positional(logits, b, support, context, window, u, out):
    """Generation from a CCMC with a relative position bias ``b`` (``b[-1]`` for all larger
    distances): tokens at distance ``>= len(b) - 1`` share one weight and are counted
    incrementally; the more recent ones are summed explicitly, ``O(len(b) + support)`` a step."""
    K = logits.shape[0]
    B = b.size
    expb = np.exp(b - b.max())
    L = context.size
    seq = np.empty(L + u.size, np.int64)
    seq[:L] = context
    old = np.zeros(K)  # counts of the positions rlo..rhi-1 (the context's old part)
    rlo = 0 if window == 0 else max(0, L - window)
    rhi = rlo
    S = support.size
    wk = np.zeros(K)
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
            wk[support[s]] = old[support[s]] * expb[B - 1]
        for p in range(hi, n):
            wk[seq[p]] += expb[n - 1 - p]
        tot = _log_space_weights(logits, q, support, wk, w)
        y = support[_pick(w, u[t] * tot)]
        out[t] = y
        seq[n] = y


@njit(cache=True)
def column_graphs(col_ptr, indptr, local, y_entry, id_ptr):
    """Per-column graph diagnostics, one column at a time (memory of the largest column).

    Returns, per parameter: ``label`` (connected component of the co-occurrence graph within its
    column, tokens joined when they share a prompt), ``n_prompts`` (prompts of the column holding
    it) and ``chosen`` (emitted at least once against another token); per column:
    ``n_components`` and ``strong`` (the "chosen over" graph, an arc ``j -> y`` whenever ``y``
    was emitted from a prompt holding ``j``, is strongly connected).  ``y_entry`` may be empty
    (no outputs): ``chosen`` and ``strong`` are then all False.
    """
    K = col_ptr.size - 1
    n_params = id_ptr[K]
    label = np.zeros(n_params, np.int32)
    n_prompts = np.zeros(n_params, np.int64)
    chosen = np.zeros(n_params, np.bool_)
    n_components = np.zeros(K, np.int64)
    strong = np.zeros(K, np.bool_)
    has_y = y_entry.size > 0
    for q in range(K):
        a = col_ptr[q]
        b = col_ptr[q + 1]
        n = id_ptr[q + 1] - id_ptr[q]
        if a == b or n == 0:
            continue
        base = id_ptr[q]
        parent = np.arange(n)
        out_deg = np.zeros(n + 1, np.int64)
        in_deg = np.zeros(n + 1, np.int64)
        root = -1
        for i in range(a, b):
            first = local[indptr[i]]
            last = local[indptr[i + 1] - 1]
            for j in range(indptr[i], indptr[i + 1]):
                v = local[j]
                n_prompts[base + v] += 1
                _union(parent, first, v)  # a star per prompt: the same components as a clique
            root = last  # the query itself: the last token is q in every prompt
            if has_y:
                y = local[y_entry[i]]
                for j in range(indptr[i], indptr[i + 1]):
                    if local[j] != y:
                        out_deg[local[j] + 1] += 1
                        in_deg[y + 1] += 1
                        chosen[base + y] = True
        labels, n_components[q] = _component_labels(parent)
        label[base : base + n] = labels
        if not has_y:
            continue
        for v in range(n):
            out_deg[v + 1] += out_deg[v]
            in_deg[v + 1] += in_deg[v]
        fwd = np.empty(out_deg[n], np.int32)
        bwd = np.empty(in_deg[n], np.int32)
        fo = out_deg[:-1].copy()
        fi = in_deg[:-1].copy()
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
            seen = np.zeros(n, np.bool_)
            stack = np.empty(n, np.int64)
            seen[root] = True
            stack[0] = root
            top = 1
            reached = 1
            while top > 0:
                top -= 1
                v = stack[top]
                for k in range(start[v], start[v + 1]):
                    w = adj[k]
                    if not seen[w]:
                        seen[w] = True
                        reached += 1
                        stack[top] = w
                        top += 1
            ok = ok and reached == n
        strong[q] = ok
    return label, n_prompts, chosen, n_components, strong
