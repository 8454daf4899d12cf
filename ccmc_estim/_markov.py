"""Stationary distributions and transition operators of Markov chains given by logits.

The base chain of a CCMC has row ``q`` equal to ``softmax(logits[:, q])``.  Two storages:

* dense ``(K, K)`` logits: the stationary distribution is computed by GTH
  (Grassmann-Taksar-Heyman) elimination, which is subtraction-free and therefore accurate to
  a few ulps in every entry even for nearly decomposable chains.  When some transition
  probability would underflow, the elimination runs in log space on ``log P``, so chains
  whose off-diagonal probabilities are ``exp(-1e4)`` are still solved exactly;
* sparse CSC logits, where an entry that is not stored means logit 0 (the column centre, not
  probability 0): every row of ``P`` is sparse plus a constant.  The stationary distribution
  comes from a sparse linear system of size ``K`` built from the stored entries only (memory
  ``O(nnz + K)``), see :func:`stationary_from_logits`.

Nothing here allocates a ``K x K`` array for sparse input.
"""

import warnings

import numpy as np
from numba import njit
from scipy import sparse
from scipy.sparse import linalg as splinalg

from ._graphs import closed_components

#: Below this log-probability the dense solver switches from linear to log-space GTH: with
#: every entry above ``exp(-600)`` no intermediate quantity of GTH can under- or overflow.
_LINEAR_GTH_MIN_LOG = -600.0

#: Largest vocabulary for the sparse LU fallback: beyond it the fill-in of unstructured
#: sparsity would approach ``K^2``.
_DIRECT_MAX = 5_000

#: Sparse problems that look nearly decomposable are solved densely (exactly, in log space)
#: up to this many tokens (a 32 MB array).
_DENSE_FALLBACK_MAX = 2_000


# --------------------------------------------------------------------------- dense GTH
def logsumexp(a, axis=None):
    """``log(sum(exp(a)))`` along ``axis``, safe for ``-inf`` and huge entries.

    ``scipy.special.logsumexp`` does the same but its array-API dispatch costs about a
    millisecond per call, which dominates the mean-field flow's many tiny calls.
    """
    a = np.asarray(a, dtype=np.float64)
    m = a.max(axis=axis, keepdims=True, initial=-np.inf)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.exp(a - m).sum(axis=axis, keepdims=True)) + m
    return out.squeeze() if axis is None else np.squeeze(out, axis=axis)


@njit(cache=True, nogil=True)
def _gth_eliminate(A):
    """In-place GTH elimination of ``A``; the last row/column reduction is kept in ``A``."""
    n = A.shape[0]
    for k in range(n - 1, 0, -1):
        s = 0.0
        for j in range(k):
            s += A[k, j]
        for i in range(k):
            a = A[i, k] / s
            A[i, k] = a
            if a != 0.0:
                for j in range(k):  # row-wise: contiguous in C order
                    A[i, j] += a * A[k, j]


@njit(cache=True, nogil=True)
def _log_gth_eliminate(L):
    """:func:`_gth_eliminate` on ``log A``: sums become ``logaddexp``."""
    n = L.shape[0]
    for k in range(n - 1, 0, -1):
        m = -np.inf
        for j in range(k):
            m = max(m, L[k, j])
        s = 0.0
        for j in range(k):
            s += np.exp(L[k, j] - m)
        ls = m + np.log(s)
        for i in range(k):
            a = L[i, k] - ls
            L[i, k] = a
            if a == -np.inf:
                continue
            for j in range(k):
                b = a + L[k, j]
                x = L[i, j]
                # Terms more than 40 nats below the other change nothing in float64: skip
                # the exp/log1p, which makes the extreme (nearly decomposable) case cheap.
                if b > x:
                    L[i, j] = b + np.log1p(np.exp(x - b)) if x - b > -40.0 else b
                elif b - x > -40.0:
                    L[i, j] = x + np.log1p(np.exp(b - x))


@njit(cache=True, nogil=True)
def _gth_back(A):
    """Unnormalised ``pi`` from the eliminated matrix: ``pi[k] = sum_{i<k} pi[i] A[i, k]``."""
    n = A.shape[0]
    pi = np.empty(n)
    pi[0] = 1.0
    for k in range(1, n):
        s = 0.0
        for i in range(k):
            s += pi[i] * A[i, k]
        pi[k] = s
    return pi


@njit(cache=True, nogil=True)
def _log_gth_back(L):
    """:func:`_gth_back` in log space."""
    n = L.shape[0]
    lp = np.empty(n)
    lp[0] = 0.0
    for k in range(1, n):
        m = -np.inf
        for i in range(k):
            m = max(m, lp[i] + L[i, k])
        s = 0.0
        for i in range(k):
            s += np.exp(lp[i] + L[i, k] - m)
        lp[k] = m + np.log(s)
    return lp


def _gth(P):
    """GTH elimination on a dense irreducible row-stochastic matrix.

    Eliminating the last state at each step turns the chain into the chain censored on the
    remaining states; the only subtraction-prone quantity, ``1 - P[k, k]``, is replaced by the
    sum of the off-diagonal entries, so every intermediate is a sum of positive terms.
    """
    A = np.array(P, dtype=np.float64, order="C")
    _gth_eliminate(A)
    pi = _gth_back(A)
    return pi / pi.sum()


def _log_gth(logP):
    """GTH elimination carried out on ``log P``; returns ``log pi`` (normalised).

    The same recursion as :func:`_gth` with sums replaced by ``logaddexp``: it stays exact when
    the probabilities themselves underflow (``log P = -1e4``).  Entries may be ``-inf``
    (probability 0) as long as the chain is irreducible.
    """
    L = np.array(logP, dtype=np.float64, order="C")
    _log_gth_eliminate(L)
    logpi = _log_gth_back(L)
    return logpi - logsumexp(logpi)


def stationary_log(logP):
    """Stationary distribution of an irreducible chain given by its log transition matrix.

    Parameters
    ----------
    logP : ndarray of shape (n, n)
        ``log P[q, k]``, rows summing to one in probability (``-inf`` for impossible
        transitions).  The chain must be irreducible (every finite ``logP`` is).

    Returns
    -------
    ndarray of shape (n,)
        ``pi`` with ``pi @ P = pi`` and ``sum(pi) = 1``, accurate to a few ulps per entry.

    Notes
    -----
    Linear GTH is used when every probability exceeds ``exp(-600)`` (then no intermediate can
    under- or overflow), log-space GTH otherwise.  Both cost ``O(n^3)``.
    """
    logP = np.asarray(logP, dtype=np.float64)
    n = logP.shape[0]
    if n == 1:
        return np.ones(1)
    off = logP[~np.eye(n, dtype=bool)]
    if off.min() > _LINEAR_GTH_MIN_LOG:
        return _gth(np.exp(logP))
    return np.exp(_log_gth(logP))


def _closed_classes(P):
    """Strongly connected components of ``P > 0`` and which of them are closed."""
    rows, cols = np.nonzero(P > 0)
    return closed_components(P.shape[0], rows, cols)


def stationary(P):
    """Stationary distribution of a dense row-stochastic matrix, by GTH elimination.

    Parameters
    ----------
    P : array-like of shape (n, n)
        Nonnegative, rows summing to one (rows are renormalised).

    Returns
    -------
    ndarray of shape (n,)
        For an irreducible chain the unique ``pi`` with ``pi @ P = pi``, ``sum(pi) = 1``.  A
        reducible chain has one stationary distribution per closed class; the one returned
        is the long-run distribution of the chain started from the uniform distribution:
        ``sum_C a_C pi_C``, ``pi_C`` the stationary distribution of closed class ``C`` and
        ``a_C`` the probability that the uniformly started chain is absorbed in ``C``.  With a
        single closed class (and possibly transient states) this is the unique stationary
        distribution, zero on the transient states.

    Notes
    -----
    GTH is subtraction-free, hence accurate for nearly decomposable chains where a linear
    solve or an eigensolver lose all accuracy.  ``O(n^3)`` time, ``O(n^2)`` memory.
    """
    P = np.array(P, dtype=np.float64)
    if P.ndim != 2 or P.shape[0] != P.shape[1] or P.shape[0] == 0:
        raise ValueError(f"P must be a non-empty square matrix, got shape {P.shape}.")
    if not np.isfinite(P).all() or (P < 0).any():
        raise ValueError("P must be finite and nonnegative.")
    rows = P.sum(axis=1)
    if (rows <= 0).any():
        raise ValueError("every row of P must have a positive entry.")
    P /= rows[:, None]
    n = P.shape[0]
    labels, closed = _closed_classes(P)
    if labels.max() == 0:
        return _gth(P)
    pi = np.zeros(n)
    trans = ~closed[labels]
    idx_t = np.flatnonzero(trans)
    for c in np.flatnonzero(closed):
        members = np.flatnonzero(labels == c)
        sub = P[np.ix_(members, members)]
        pi_c = _gth(sub / sub.sum(axis=1)[:, None])
        weight = members.size
        if idx_t.size:
            # Absorption probabilities h into class c from the transient states:
            # (I - P_TT) h = P_TC 1; the transient block is nonsingular by definition.
            A = np.eye(idx_t.size) - P[np.ix_(idx_t, idx_t)]
            h = np.linalg.solve(A, P[np.ix_(idx_t, members)].sum(axis=1))
            weight += h.sum()
        pi[members] = weight / n * pi_c
    return pi / pi.sum()


# --------------------------------------------------------------------------- sparse logits
def _csc(logits):
    """Canonical CSC parts ``(ptr, idx, val, col)`` of sparse logits (``col`` per entry)."""
    m = sparse.csc_array(logits, dtype=np.float64)
    if not m.has_canonical_format:
        m = m.copy()
        m.sum_duplicates()
    K = m.shape[0]
    ptr = m.indptr.astype(np.int64)
    col = np.repeat(np.arange(K, dtype=np.int64), np.diff(ptr))
    return K, ptr, m.indices.astype(np.int64), m.data, col


def _log_normalisers(K, ptr, idx, val, col):
    """``log Z_q = logsumexp`` of column ``q`` with the missing entries counted as logit 0,
    and the column maxima ``m_q`` (0 included when an entry is missing)."""
    nnz_q = np.diff(ptr)
    m = np.full(K, -np.inf)
    np.maximum.at(m, col, val)
    m = np.where(nnz_q < K, np.maximum(m, 0.0), m)
    with np.errstate(under="ignore"):
        z = np.bincount(col, weights=np.exp(val - m[col]), minlength=K)
        z += (K - nnz_q) * np.exp(-m)
    return m + np.log(z), m


def transition_row(logits, q):
    """Row ``q`` of the base chain of sparse logits, as stored part plus a constant.

    Parameters
    ----------
    logits : scipy.sparse array of shape (K, K)
        Missing entries are logit 0.
    q : int
        Query (row of ``P``, column of the logits).

    Returns
    -------
    tokens : ndarray of int64
        Tokens ``k`` with a stored logit ``logits[k, q]``.
    proba : ndarray
        ``P[q, tokens]``.
    const : float
        ``P[q, k]`` of every other token ``k``.
    """
    col = sparse.csc_array(logits[:, [q]], dtype=np.float64)
    col.sum_duplicates()
    K = logits.shape[0]
    val = col.data
    m = max(val.max(initial=-np.inf), 0.0 if val.size < K else -np.inf)
    with np.errstate(under="ignore"):
        e = np.exp(val - m)
        c = np.exp(-m) if val.size < K else 0.0
    z = e.sum() + (K - val.size) * c
    return col.indices.astype(np.int64), e / z, float(c / z)


def transition_operator(logits):
    """Transition matrix ``P`` of the base chain of sparse logits, as a linear operator.

    Row ``q`` of ``P`` is ``exp(logits[k, q]) / Z_q`` on the stored entries and ``1 / Z_q``
    elsewhere (missing logits are 0): ``P = diag(1 / Z) (S^T + c 1^T)`` with ``S`` sparse on the
    stored pattern and ``c`` one constant per row, so products cost and keep ``O(nnz + K)``.

    Parameters
    ----------
    logits : scipy.sparse array or ndarray of shape (K, K)

    Returns
    -------
    scipy.sparse.linalg.LinearOperator
        ``(K, K)``, float64, with ``matvec`` (``P @ v``), ``rmatvec`` (``P.T @ u``, e.g. one
        step of a distribution: ``(u @ P) = P.T @ u``) and their matrix versions.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import sparse
    >>> W = sparse.csc_array(np.array([[2.0, 0.0], [0.0, 1.0]]))
    >>> P = transition_operator(W)
    >>> (P @ np.eye(2)).round(3)
    array([[0.881, 0.119],
           [0.269, 0.731]])
    """
    K, ptr, idx, val, col = _csc(logits)
    logz, m = _log_normalisers(K, ptr, idx, val, col)
    # Shift every column by its maximum so that exp never overflows; the shared constant of
    # row q is exp(-m_q) / Z_q, and the stored part holds the difference to it.
    with np.errstate(under="ignore"):
        inv_z = np.exp(-(logz - m))  # 1 / (Z_q exp(-m_q)), at most 1
        c = np.exp(-m) * inv_z  # P[q, k] of a missing entry
        vals = np.exp(val - logz[col]) - c[col]
    St = sparse.csr_array((vals, idx, ptr), shape=(K, K))  # row q: stored part of P[q]

    def matvec(v):
        v = np.asarray(v, dtype=np.float64)
        tot = v.sum(axis=0)
        out = St @ v
        return out + (np.outer(c, tot) if v.ndim == 2 else c * tot)

    def rmatvec(u):
        u = np.asarray(u, dtype=np.float64)
        out = St.T @ u
        return out + (c @ u)

    return splinalg.LinearOperator(
        (K, K), matvec=matvec, rmatvec=rmatvec, matmat=matvec, rmatmat=rmatvec,
        dtype=np.float64,
    )


def _flux_system(K, ptr, idx, val, col):
    """The sparse flux-balance system ``M x = (c^T x) 1`` of the base chain.

    With a per-column shift ``s_q`` (the largest stored off-diagonal logit of column ``q``, at
    least 0) let ``e[k, q] = exp(logits[k, q] - s_q)``, ``c_q = exp(-s_q)`` (the weight of a
    missing entry) and ``Z~_q = Z_q exp(-s_q)``.  Then ``P^T = (E + 1 c^T) diag(1 / Z~)`` with
    ``E[k, q] = e[k, q] - c_q`` on the stored entries, and ``x = pi / Z~`` solves
    ``(diag(Z~) - E) x = (c^T x) 1``.  ``M = diag(Z~) - E`` equals
    ``(I - P^T) diag(Z~) + 1 c^T``: nonsingular whenever ``c != 0``.

    Its diagonal ``Z~_q - E[q, q] = sum_{k != q stored} e[k, q] + (K - n_q) c_q`` (``n_q``
    stored off-diagonal entries) is formed without subtraction and without the diagonal logit:
    a huge self-logit, which makes ``Z_q`` overflow and ``1 - P[q, q]`` vanish in floating
    point, does not enter the system at all.  Only off-diagonal logits are shifted, so every
    entry of ``M`` is at most ``K`` in magnitude.

    Returns ``M`` (CSC), ``c`` and ``log Z~`` (shifted: ``pi`` is proportional to ``Z~ x``).
    """
    off = idx != col
    io, co, vo = idx[off], col[off], val[off]
    s = np.zeros(K)
    np.maximum.at(s, co, vo)
    with np.errstate(under="ignore"):
        c = np.exp(-s)
        e = np.exp(vo - s[co])
    n_off = np.bincount(co, minlength=K)
    diag = np.bincount(co, weights=e, minlength=K) + (K - n_off) * c
    M = sparse.csc_array((-(e - c[co]), (io, co)), shape=(K, K))
    M = (M + sparse.diags_array(diag, format="csc")).tocsc()
    # log Z_q = logaddexp(diagonal logit (0 when missing), s_q + log(off-diagonal weight)).
    dlog = np.zeros(K)
    on = ~off
    dlog[col[on]] = val[on]
    rest = diag - c  # sum of off-diagonal weights, missing ones included, shifted by s_q
    with np.errstate(divide="ignore"):
        logz = np.logaddexp(dlog - s, np.log(rest))
    return M, c, logz


def _solve_direct(M):
    """Solve ``M x = (c^T x) 1`` up to scale by a bordered sparse LU.

    The unknown scale ``g = c^T x`` becomes an extra unknown and ``x_r = 1`` the extra
    equation: the bordered matrix ``[[M, -1], [e_r^T, 0]]`` is nonsingular even when ``c``
    underflows to 0 (then ``M`` itself is singular with null vector ``pi / Z~``), and it has
    only ``K`` more entries than ``M``.
    """
    K = M.shape[0]
    x = None
    r = int(np.argmax(M.diagonal()))
    for _ in range(2):  # a second pass if x_r turned out negligible next to max(x)
        border_col = sparse.csc_array((-np.ones(K), (np.arange(K), np.zeros(K, np.int64))),
                                      shape=(K, 1))
        border_row = sparse.csc_array(([1.0], ([0], [r])), shape=(1, K))
        A = sparse.block_array([[M, border_col], [border_row, None]], format="csc")
        rhs = np.zeros(K + 1)
        rhs[K] = 1.0
        x = splinalg.spsolve(A, rhs)[:K]
        best = int(np.argmax(x))
        if x[best] <= 1e8 * abs(x[r]):
            break
        r = best
    return x


def _solve_iterative(M, rtol=1e-13):
    """Solve ``M x = 1`` by GMRES with a Jacobi preconditioner; None if it does not converge.

    Needs ``c != 0``.  The diagonal of ``M`` is the total off-diagonal weight of each column,
    so the preconditioned operator is ``I`` minus the jump chain plus the rank-one term: GMRES
    converges in as many iterations as the jump chain needs to mix.
    """
    K = M.shape[0]
    d = M.diagonal()
    pre = splinalg.LinearOperator((K, K), matvec=lambda v: v / d, dtype=np.float64)
    b = np.ones(K)
    # At most about 600 products: a well-mixing chain converges in far fewer, and a nearly
    # decomposable one should fail fast (LinAlgError) rather than grind.
    x, info = splinalg.gmres(M, b, x0=b / d, M=pre, rtol=rtol, atol=0.0, restart=60,
                             maxiter=10)
    if info != 0 or not np.isfinite(x).all():
        return None
    return x


def _stationary_sparse(logits, method="auto"):
    K, ptr, idx, val, col = _csc(logits)
    if K == 1:
        return np.ones(1)
    M, c, logz = _flux_system(K, ptr, idx, val, col)
    if method == "auto":
        # beta_q: share of the missing (logit 0) entries in the off-diagonal weight of
        # column q, i.e. the probability that a jump from q goes to a uniformly spread
        # target.  It bounds the mixing time of the jump chain, hence the condition number
        # of the linear system (about 1 / min beta); below 1e-6 a small problem is handed
        # to the exact dense log-space GTH instead.
        n_miss = K - 1 - (np.bincount(col[idx != col], minlength=K))
        with np.errstate(invalid="ignore", divide="ignore"):
            # 0 / 0: a column whose off-diagonal weight underflows entirely (an absorbing
            # state in floating point), the most decomposable case.
            beta = np.nan_to_num(n_miss * c / (M.diagonal() - c), nan=0.0)
        if beta.min() < 1e-6 and K <= _DENSE_FALLBACK_MAX:
            method = "dense"
        else:
            method = "iterative" if c.any() else "direct"
    if method == "dense":
        return stationary_from_logits(sparse.csc_array(logits).toarray())
    x = _solve_iterative(M) if method == "iterative" else None
    if x is None and K > _DIRECT_MAX:
        raise np.linalg.LinAlgError(
            f"GMRES did not converge for the stationary distribution of {K:,} tokens: the "
            "base chain is nearly decomposable (huge logits make some groups of tokens "
            "almost closed), beyond what a linear solve in floating point can resolve."
        )
    if x is None:  # the direct solver also covers c = 0 (every column's constant underflowed)
        if method == "iterative":
            warnings.warn("GMRES did not converge for the stationary distribution; falling "
                          "back to a sparse LU.", RuntimeWarning, stacklevel=3)
        with warnings.catch_warnings():
            warnings.simplefilter("error", splinalg.MatrixRankWarning)
            try:
                x = _solve_direct(M)
            except splinalg.MatrixRankWarning:
                raise np.linalg.LinAlgError(
                    "the base chain is decomposable in floating point (huge off-diagonal "
                    "logits leave no representable coupling between some groups of tokens); "
                    "use dense logits, whose stationary distribution is computed in log "
                    "space."
                ) from None
    x = x / x.max()
    # Roundoff can leave entries of size eps below zero where pi is negligible.
    with np.errstate(divide="ignore"):
        logpi = np.log(np.clip(x, 0.0, None)) + logz
    logpi -= logsumexp(logpi)
    return np.exp(logpi)


def stationary_from_logits(logits, *, method="auto"):
    """Stationary distribution of the base chain of a CCMC, from its logits.

    The base chain has row ``q`` equal to ``softmax(logits[:, q])``.

    Parameters
    ----------
    logits : ndarray or scipy.sparse array of shape (K, K)
        Columns are queries.  In sparse form a missing entry is logit 0 (the column centre).
    method : {"auto", "iterative", "direct", "dense"}
        Sparse input only.  ``"iterative"``: GMRES with a diagonal preconditioner on the
        flux-balance system (fast, ``O(nnz + K)`` memory); if it does not converge, the
        ``"direct"`` solver takes over when ``K <= 5000`` and ``LinAlgError`` is raised
        above.  ``"direct"``: bordered sparse LU of the same system (also valid when the
        rank-one part underflows, but the LU fill-in of unstructured sparsity can approach
        ``K^2``).  ``"dense"``: densify and use the dense algorithm.  ``"auto"``:
        ``"dense"`` when the chain looks nearly decomposable (some column puts less than
        ``1e-6`` of its off-diagonal weight on missing entries) and ``K <= 2000``, else
        ``"iterative"`` (``"direct"`` when every column's missing-entry weight underflows).

    Returns
    -------
    ndarray of shape (K,)
        ``pi`` with ``pi @ P = pi`` and ``sum(pi) = 1``; unique since every transition
        probability is positive for finite logits.

    Notes
    -----
    Dense logits: GTH elimination on ``log P[q, k] = logits[k, q] - logsumexp(logits[:, q])``
    (linear GTH when no probability is below ``exp(-600)``, log-space GTH otherwise), accurate
    to a few ulps per entry for any finite logits, including nearly decomposable chains
    (``1e4 * eye(K)`` gives the uniform distribution).  ``O(K^3)`` time, ``O(K^2)`` memory.
    Finite logits make every probability positive, so the chain is irreducible in exact
    arithmetic; in log space it stays so (no ``-inf``), and GTH never divides by zero.

    Sparse logits: with ``x = pi / Z`` (``Z_q`` the softmax normaliser of column ``q``) the
    balance equations become a sparse system on the stored pattern plus a rank-one term
    (see ``_flux_system``), solved in ``O(nnz + K)`` memory.  Huge diagonal logits are exact
    (they do not enter the system); the accuracy for nearly decomposable chains created by
    huge off-diagonal logits is that of a linear solve (relative error about machine epsilon
    times the chain's condition number), unlike the dense GTH; hence the dense fallback of
    ``"auto"`` for small nearly decomposable problems.  A chain that is decomposable in
    floating point (no representable coupling between groups of tokens) raises
    ``numpy.linalg.LinAlgError`` in the sparse solvers.

    Examples
    --------
    >>> import numpy as np
    >>> stationary_from_logits(1e4 * np.eye(3))
    array([0.33333333, 0.33333333, 0.33333333])
    """
    if sparse.issparse(logits):
        if method not in ("auto", "iterative", "direct", "dense"):
            raise ValueError("method must be 'auto', 'iterative', 'direct' or 'dense', got "
                             f"{method!r}.")
        return _stationary_sparse(logits, method)
    W = np.asarray(logits, dtype=np.float64)
    logP = (W - logsumexp(W, axis=0)).T
    return stationary_log(logP)


# --------------------------------------------------------------------------- small blocks
def support_block(matrix, support):
    """Dense block ``matrix[support][:, support]`` of a dense or sparse ``(K, K)`` matrix.

    Entries missing from sparse storage are 0 (False for a boolean matrix), so for logits the
    block holds the column-centre logit 0 there.  Only the small block is ever densified.

    Parameters
    ----------
    matrix : ndarray or scipy.sparse array of shape (K, K)
    support : 1-D array of int

    Returns
    -------
    ndarray of shape (len(support), len(support))
    """
    support = np.asarray(support, dtype=np.int64)
    if sparse.issparse(matrix):
        return sparse.csc_array(matrix)[:, support][support, :].toarray()
    return np.asarray(matrix)[np.ix_(support, support)]
