"""Identifiability, existence, uncertainty and model comparison."""

from dataclasses import dataclass, field
from numbers import Integral, Real

import numpy as np
from scipy.stats import norm
from sklearn.utils.validation import check_is_fitted

from ._columns import build_columns, by_column
from ._graphs import closed_components, components
from ._kernels import column_graphs
from ._stats import (
    StrOptions,
    _check_integral,
    check_covered,
    check_memory,
    check_outputs,
    number,
    prompt_stats,
    validate_params,
    validate_prompts,
)

_COUNT = [number(Integral, 0, None, closed="left")]


def use_sparse(sparse, n_tokens, n_identified):
    """Storage rule of ``sparse="auto"``: compressed columns once a dense ``K x K`` array
    would hold over 1,000,000 entries and four times the identified ones."""
    if sparse == "auto":
        K2 = n_tokens * n_tokens
        return K2 > 1_000_000 and K2 > 4 * n_identified
    return bool(sparse)


class IdentifiabilityWarning(UserWarning):
    """Some logits are not identified, or the plain MLE does not exist, for some columns."""


# --------------------------------------------------------------------------- graphs
@validate_params({"n_nodes": _COUNT, "strong": ["boolean"]}, prefer_skip_nested_validation=True)
def graph_components(n_nodes, src, dst, *, strong=False):
    """Component label of every node of a graph given by its arcs ``src[i] -> dst[i]``.

    Parameters
    ----------
    n_nodes : int
    src, dst : array-like of int
        Arcs (edges when ``strong`` is False: direction is then ignored).
    strong : bool
        Strongly connected components of the directed graph instead of connected components.

    Returns
    -------
    ndarray of int, shape (n_nodes,)

    Examples
    --------
    >>> from ccmc_estim.diagnostics import graph_components
    >>> graph_components(4, [0, 2], [1, 3]).tolist()
    [0, 0, 1, 1]
    """
    # Node ids are checked as integers (1.5 is no node), never truncated.
    src = _check_integral(src, "src").astype(np.int64)
    dst = _check_integral(dst, "dst").astype(np.int64)
    if src.ndim != 1:
        raise ValueError(f"src and dst must be 1-D arrays of node ids, got shape {src.shape}.")
    check_memory(16 * n_nodes, f"a graph of {n_nodes} nodes")  # scipy's work arrays
    if src.shape != dst.shape or (src.size and (min(src.min(), dst.min()) < 0
                                                or max(src.max(), dst.max()) >= n_nodes)):
        raise ValueError(f"arcs must be pairs of node ids in 0..{n_nodes - 1}.")
    return components(int(n_nodes), src, dst, strong=strong)[1]


def _entry_params(cd):
    """Global parameter index of every entry, and the prompt of every entry."""
    lengths = np.diff(cd.indptr)
    row = np.repeat(np.arange(lengths.size), lengths)
    col = np.repeat(np.arange(cd.n_tokens), np.diff(cd.col_ptr))
    return (cd.id_ptr[col][row] + cd.local).astype(np.int64), row


def _column_graphs(cd):
    return column_graphs(cd.col_ptr, cd.indptr, cd.local, cd.y_entry, cd.id_ptr)


def mle_existence(cd, dominant=True, graphs=None):
    """Whether each column's finite MLE exists (``alpha=0``), which tokens were ever chosen and
    the always-winning groups.

    A column's MLE is finite iff its "chosen over" graph (an arc ``j -> k`` whenever ``k`` was
    emitted from a prompt that also held ``j``) is strongly connected, i.e. iff every token of
    the column reaches the query token and is reached from it.

    Returns
    -------
    exists : ndarray of bool, shape (K,)
        False for columns never queried.
    chosen : ndarray of bool, shape (n_params,)
        Whether each parameter's token was emitted at least once against competition.
    dominant : dict or None
        Column -> list of token groups that no outsider ever beat (sink strongly connected
        components), for columns whose MLE does not exist; None unless ``dominant``.
    """
    _, chosen, strong = _column_graphs(cd) if graphs is None else graphs
    sizes = np.diff(cd.id_ptr)
    exists = strong & (sizes > 0)
    if not dominant:
        return exists, chosen, None
    failing = np.flatnonzero((sizes > 0) & ~exists)
    if not failing.size:
        return exists, chosen, {}
    param, row = _entry_params(cd)
    y_param = param[cd.y_entry][row]
    keep = (param != y_param) & np.isin(cd.id_query[param], failing)
    src, dst = param[keep], y_param[keep]
    # Closed components: no arc leaves them (no outsider ever beat a member).
    labels, closed = closed_components(cd.n_params, src, dst)
    groups = {}
    for q in failing:
        lab = labels[cd.id_ptr[q] : cd.id_ptr[q + 1]]
        toks = cd.id_tokens[cd.id_ptr[q] : cd.id_ptr[q + 1]].astype(np.int64)
        groups[int(q)] = [toks[lab == g] for g in np.unique(lab) if closed[g]]
    return exists, chosen, groups


# --------------------------------------------------------------------------- report
@dataclass(eq=False)
class IdentifiabilityReport:
    """What a data set pins down of the CCMC logits (see :func:`identifiability_report`).

    Attributes
    ----------
    n_tokens : int
    n_prompts : ndarray of int, shape (K,)
        Prompts (with positive weight) per query column.
    queried : ndarray of bool, shape (K,)
    n_identified : ndarray of int, shape (K,)
        Identified logits per column.
    n_components : ndarray of int, shape (K,)
        Connected components of each column's co-occurrence graph: 1 for every queried
        column (its query is in all its prompts, so the graph is a star around it and the
        column is identified up to one shift), 0 for the others.
    components : dict
        Column -> list of token arrays, for columns with more than one component (none, as
        above; kept with ``n_components`` and ``fully_identified`` so that reports keep their
        shape).
    n_free_params : int
        Identified entries minus one shift per component, over all columns.
    mle_exists : ndarray of bool or None
        With outputs: whether the finite MLE exists per column (False if never queried).
    never_chosen : dict or None
        With outputs: column -> tokens available (with at least one other) but never chosen
        (built on access from ``chosen``).
    chosen : ndarray of bool or None
        With outputs: per identified entry (in the order of ``id_tokens``), whether its token
        was chosen at least once against competition.
    dominant : dict or None
        With outputs: column -> groups of tokens that always beat the rest.
    sparse : bool
        Storage of ``identified`` and ``cooccurrence``.
    """

    n_tokens: int
    n_prompts: np.ndarray
    queried: np.ndarray
    n_components: np.ndarray
    components: dict
    n_free_params: int
    mle_exists: np.ndarray | None = None
    dominant: dict | None = None
    sparse: bool = False
    # Column layout of the identified entries and their co-occurrence counts.
    id_ptr: np.ndarray = field(default=None, repr=False)
    id_tokens: np.ndarray = field(default=None, repr=False)
    n_cooccur: np.ndarray = field(default=None, repr=False)
    # Whether each identified entry's token was ever chosen against competition (with outputs).
    chosen: np.ndarray | None = field(default=None, repr=False)

    @property
    def never_chosen(self):
        if self.chosen is None:
            return None
        out = {}
        for q in np.flatnonzero(np.diff(self.id_ptr) > 1):
            toks = self.never_chosen_in(q)
            if toks.size:
                out[int(q)] = toks
        return out

    def never_chosen_in(self, q):
        """Tokens of column ``q`` available with at least one other but never chosen (one
        column of ``never_chosen``, without building it for every column)."""
        a, b = self.id_ptr[q], self.id_ptr[q + 1]
        if b - a < 2:  # a token alone in its column cannot lose
            return np.zeros(0, np.int64)
        return self.id_tokens[a:b][~self.chosen[a:b]].astype(np.int64)

    @property
    def n_identified(self):
        return np.diff(self.id_ptr)

    def _matrix(self, values):
        return by_column(values, self.id_tokens, self.id_ptr, self.n_tokens, self.sparse)

    @property
    def cooccurrence(self):
        """``cooccurrence[k, q]``: number of prompts with query ``q`` that contain ``k``,
        ``(K, K)`` int (a CSC array with sparse storage)."""
        return self._matrix(self.n_cooccur)

    @property
    def identified(self):
        """Entries that enter the likelihood, ``(K, K)`` bool (a CSC array with sparse
        storage)."""
        return self._matrix(np.ones(self.id_tokens.size, bool))

    @property
    def fully_identified(self):
        """True when every queried column's co-occurrence graph is connected."""
        return bool((self.n_components[self.queried] == 1).all())

    @validate_params({"max_rows": _COUNT}, prefer_skip_nested_validation=True)
    def summary(self, max_rows=20):
        """A text table, the worst columns first.

        Parameters
        ----------
        max_rows : int
            Most columns listed.
        """
        K = self.n_tokens
        covered = self.n_identified
        lines = [
            f"Identifiability report: {K} tokens, {int(self.n_prompts.sum())} prompts, "
            f"{int(self.queried.sum())} of {K} columns queried, "
            f"{int(covered.sum())} of {K * K} logits identified, "
            f"{self.n_free_params} free parameters.",
        ]
        if self.mle_exists is not None:
            bad = int((self.queried & ~self.mle_exists).sum())
            lines.append(
                f"Finite MLE (alpha=0) exists in {int(self.mle_exists.sum())} columns; "
                f"{bad} queried column(s) need alpha > 0."
            )
        header = f"{'column':>6} {'prompts':>8} {'covered':>7} {'min co-occ':>10} {'comp':>4}"
        if self.mle_exists is not None:
            header += f" {'MLE':>4}  never chosen"
        lines += ["", header, "-" * len(header)]
        never = self.never_chosen or {}
        # Worst first: no MLE, then disconnected, then fewest prompts; unqueried last.
        key = (
            ~self.queried,
            np.zeros(K, bool) if self.mle_exists is None else self.mle_exists,
            -self.n_components,
            self.n_prompts,
        )
        order = np.lexsort(key[::-1])
        for q in order[:max_rows]:
            if not self.queried[q]:
                line = f"{q:>6} {0:>8} {'-':>7} {'-':>10} {'-':>4}"
                if self.mle_exists is not None:
                    line += f" {'-':>4}"
                lines.append(line + "  (never queried)")
                continue
            co = self.n_cooccur[self.id_ptr[q] : self.id_ptr[q + 1]]
            line = (
                f"{q:>6} {self.n_prompts[q]:>8} {covered[q]:>7} {co.min():>10} "
                f"{self.n_components[q]:>4}"
            )
            if self.mle_exists is not None:
                nc = never.get(int(q), np.array([], int))
                shown = ", ".join(map(str, nc[:8].tolist())) + (" ..." if nc.size > 8 else "")
                line += f" {'yes' if self.mle_exists[q] else 'NO':>4}  {shown}"
            lines.append(line)
        if K > max_rows:
            lines.append(f"... {K - max_rows} more columns")
        return "\n".join(lines)

    def __str__(self):
        return self.summary()

    def plot(self, ax=None, **kwargs):
        """Draw the coverage per column and the identified logits.

        Needs matplotlib (``pip install ccmc-estim[plot]``).

        Parameters
        ----------
        ax : matplotlib Axes or None
            Where to draw; a new figure when None.
        **kwargs
            Passed to :meth:`~ccmc_estim.IdentifiabilityDisplay.plot`.

        Returns
        -------
        IdentifiabilityDisplay
            With the figure (``figure_``), the axes (``ax_``) and the artists.

        Examples
        --------
        >>> from ccmc_estim import identifiability_report
        >>> disp = identifiability_report([[1, 2, 0], [2, 0], [0, 1]], [1, 0, 1]).plot()
        >>> disp.coverage_ax_ is disp.ax_, disp.pattern_ax_ is disp.axes_[1]
        (True, True)
        >>> import matplotlib.pyplot as plt; plt.close(disp.figure_)
        """
        from .plotting import IdentifiabilityDisplay

        return IdentifiabilityDisplay.from_result(self, ax=ax, **kwargs)


def n_free_params(id_ptr):
    """Free parameters of column logits laid out by ``id_ptr``: the query is in every prompt
    of its column, so a column's co-occurrence graph is a star around it, one component (one
    free shift) per queried column."""
    sizes = np.diff(id_ptr)
    return int(sizes.sum() - np.count_nonzero(sizes))


def report_from_columns(cd, dominant=True, sparse=False):
    """:class:`IdentifiabilityReport` of a column problem (with outputs when it has them)."""
    graphs = _column_graphs(cd)
    sizes = np.diff(cd.id_ptr)
    n_components = (sizes > 0).astype(np.int64)  # see n_free_params
    report = IdentifiabilityReport(
        n_tokens=cd.n_tokens,
        n_prompts=np.diff(cd.col_ptr),
        queried=sizes > 0,
        n_components=n_components,
        components={},
        n_free_params=n_free_params(cd.id_ptr),
        sparse=bool(sparse),
        id_ptr=cd.id_ptr,
        id_tokens=cd.id_tokens,
        n_cooccur=graphs[0],
    )
    if cd.y_entry.size:
        report.mle_exists, report.chosen, report.dominant = mle_existence(
            cd, dominant, graphs
        )
    return report


@validate_params(
    {"n_tokens": [None, number(Integral, 1, None, closed="left")],
     "sparse": [StrOptions({"auto"}), "boolean"]},
    prefer_skip_nested_validation=True,
)
def identifiability_report(prompts, outputs=None, *, n_tokens=None, sparse="auto"):
    """Which logits a data set identifies, and whether their finite MLE exists.

    Parameters
    ----------
    prompts : array-like of shape (n, L) or sequence of 1-D sequences
    outputs : array-like of shape (n,) or None
        Next tokens; needed for the existence of the MLE.
    n_tokens : int or None
        Vocabulary size; inferred when None.
    sparse : "auto" or bool
        Storage of the report's ``(K, K)`` arrays, as for the estimators.

    Returns
    -------
    IdentifiabilityReport

    Examples
    --------
    >>> from ccmc_estim import identifiability_report
    >>> rep = identifiability_report([[1, 2, 0], [2, 0], [1, 0]], [1, 0, 0], n_tokens=4)
    >>> rep.queried.tolist(), rep.mle_exists.tolist()
    ([True, False, False, False], [False, False, False, False])
    >>> rep.never_chosen[0].tolist()  # token 2 was available with query 0 but never chosen
    [2]
    >>> rep.identified[:, 0].tolist()
    [True, True, True, False]
    """
    flat, indptr, K = validate_prompts(prompts, n_tokens)
    if outputs is not None:
        outputs = check_outputs(outputs, indptr.size - 1, K)
        check_covered(flat, indptr, outputs, K)
    cd = build_columns(flat, indptr, K, outputs)
    return report_from_columns(cd, sparse=use_sparse(sparse, K, cd.n_params))


# --------------------------------------------------------------------------- uncertainty
def centred_covariance(information, alpha):
    """Covariance of a column's centred logits, and the smallest non-zero eigenvalue of its
    information.

    With ``alpha = 0``: the pseudo-inverse of the information (asymptotic covariance of the
    MLE; the all-ones direction, the column shift, is its null space).  With ``alpha > 0``: the
    centred inverse of ``information + alpha I``, the Laplace approximation of the posterior
    under the N(0, 1/alpha) prior that the penalty encodes.
    """
    n = information.shape[0]
    vals, vecs = np.linalg.eigh(information)
    tol = max(vals.max(), 1e-300) * n * np.finfo(float).eps * 10
    positive = vals > tol
    min_eig = float(vals[positive].min()) if positive.any() else 0.0
    if alpha > 0:
        cov = (vecs / (vals + alpha)) @ vecs.T
        centre = np.eye(n) - 1.0 / n
        cov = centre @ cov @ centre
    else:
        inv = np.where(positive, 1.0 / np.where(positive, vals, 1.0), 0.0)
        cov = (vecs * inv) @ vecs.T
    return cov, min_eig


@dataclass(eq=False)
class ColumnUncertainty:
    """Standard errors of the centred logits, per identified parameter (column layout).

    ``cov[q]`` is the dense covariance of column ``q`` where it was computed exactly (None
    where the diagonal approximation was used); ``var`` the variances of all parameters.
    """

    id_ptr: np.ndarray
    var: np.ndarray
    min_eig: np.ndarray
    cov: list

    @property
    def se(self):
        return np.sqrt(np.clip(self.var, 0.0, None))

    def transition_sd(self, theta, n_tokens):
        """Base-chain transitions ``P[q, k]`` at the identified entries and their delta-method
        standard deviations (missing logits are the column centre, 0, and fixed)."""
        p = np.empty_like(theta)
        sd = np.empty_like(theta)
        for q in np.flatnonzero(np.diff(self.id_ptr)):
            a, b = self.id_ptr[q], self.id_ptr[q + 1]
            t = theta[a:b]
            mx = max(t.max(), 0.0)
            e = np.exp(t - mx)
            pq = e / (e.sum() + (n_tokens - (b - a)) * np.exp(-mx))
            if self.cov[q] is not None:
                C = self.cov[q]
                Cp = C @ pq
                v = np.diag(C) - 2.0 * Cp + pq @ Cp
            else:
                vq = self.var[a:b]
                v = vq - 2.0 * vq * pq + (vq * pq * pq).sum()
            p[a:b] = pq
            sd[a:b] = pq * np.sqrt(np.clip(v, 0.0, None))
        return p, sd


def column_uncertainty(id_ptr, information, information_diag, alpha, scale=1.0, verbose=0):
    """:class:`ColumnUncertainty` from the observed information at a solution.

    Columns with a dense information block get the exact covariance of
    :func:`centred_covariance`.  The others (more than 300 identified logits) use the diagonal
    approximation: each logit's variance ``1 / (H_kk + alpha)`` from its own curvature,
    ignoring its covariance with the rest of the column, then centred as if independent,
    ``v_k (1 - 2 / n) + sum(v) / n^2``.  ``scale`` multiplies the stored information (weights
    that were scaled down for the solver).
    """
    K = id_ptr.size - 1
    sizes = np.diff(id_ptr)
    with np.errstate(divide="ignore"):
        v = 1.0 / (scale * information_diag + alpha)
    v[~np.isfinite(v)] = np.nan  # zero curvature, no penalty: not determined
    n = np.repeat(sizes, sizes).astype(np.float64)
    starts = id_ptr[:-1][sizes > 0]
    total = np.repeat(np.add.reduceat(v, starts) if starts.size else np.zeros(0),
                      sizes[sizes > 0])
    var = v * (1.0 - 2.0 / n) + total / n**2
    var[n == 1] = 0.0  # a lone identified logit is the column centre itself
    min_eig = np.full(K, np.nan)
    cov = [None] * K
    exact = [q for q, info in enumerate(information) if info is not None]
    for i, q in enumerate(exact):
        cov[q], min_eig[q] = centred_covariance(scale * information[q], alpha)
        var[id_ptr[q] : id_ptr[q + 1]] = np.diag(cov[q])
        if verbose and len(exact) > 1000 and (i + 1) % 1000 == 0:
            print(f"standard errors: {i + 1} of {len(exact)} exact columns")
    return ColumnUncertainty(id_ptr, var, min_eig, cov)


def normal_quantile(level):
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level!r}.")
    return float(norm.ppf(0.5 + level / 2))


# --------------------------------------------------------------------------- comparison
@dataclass(eq=False)
class ModelComparison:
    """Held-out comparison of models scored on the same pairs (see :func:`compare_models`).

    Attributes
    ----------
    mean_log_likelihood : dict
        ``{"all pairs": {model: value}, "covered pairs": {model: value}}``: mean held-out
        log-likelihood per pair.  Every model of a block is scored on exactly the same pairs:
        all held-out pairs, or the covered ones (output inside its prompt), where a pure CCMC
        can be compared too.
    cache_weight : dict
        Block -> the cache model's base-chain weight, tuned on the held-out pairs of that block.
    n_test : int
        Held-out pairs.
    n_covered : int
        Held-out pairs whose output occurs in its prompt (never counting the unknown token).
    """

    mean_log_likelihood: dict
    cache_weight: dict
    n_test: int
    n_covered: int

    @property
    def n_outside_prompt(self):
        return self.n_test - self.n_covered

    def summary(self):
        """Both blocks as a text table, with what each row is scored on."""
        lines = ["Held-out comparison: mean log-likelihood per pair (higher is better).",
                 ""]
        counts = {"all pairs": self.n_test, "covered pairs": self.n_covered}
        notes = {"all pairs": "every held-out pair",
                 "covered pairs": "pairs whose output occurs in its prompt; a pure CCMC "
                                  "can only be scored here"}
        for block, rows in self.mean_log_likelihood.items():
            lines.append(f"{block} ({counts[block]} pairs: {notes[block]})")
            for name, value in rows.items():
                extra = ""
                if name.startswith("cache"):
                    extra = f"  (base-chain weight {self.cache_weight[block]:.3f}, tuned)"
                lines.append(f"  {name:<22} {value:>12.5f}{extra}")
            lines.append("")
        return "\n".join(lines).rstrip()

    def __str__(self):
        return self.summary()

    def plot(self, ax=None, **kwargs):
        """Draw the mean held-out log-likelihoods as horizontal bars.

        Needs matplotlib (``pip install ccmc-estim[plot]``).

        Parameters
        ----------
        ax : matplotlib Axes or None
            Where to draw; a new figure when None.
        **kwargs
            Passed to :meth:`~ccmc_estim.ModelComparisonDisplay.plot`.

        Returns
        -------
        ModelComparisonDisplay
            With the figure (``figure_``), the axes (``ax_``) and the artists.

        Examples
        --------
        >>> from ccmc_estim.diagnostics import ModelComparison
        >>> cmp = ModelComparison({"all pairs": {"base chain": -2.0},
        ...                        "covered pairs": {"ccmc": -1.2, "base chain": -1.9}},
        ...                       cache_weight={}, n_test=100, n_covered=90)
        >>> disp = cmp.plot()
        >>> list(disp.bars_), disp.ax_.get_title()
        (['all pairs', 'covered pairs'], 'held-out comparison on 100 pairs (90 covered)')
        >>> import matplotlib.pyplot as plt; plt.close(disp.figure_)
        """
        from .plotting import ModelComparisonDisplay

        return ModelComparisonDisplay.from_result(self, ax=ax, **kwargs)


def compare_models(estimator, prompts_train, outputs_train, prompts_test, outputs_test,
                   smoothing="witten-bell"):
    """Score a fitted model and the standard baselines on the same held-out pairs.

    Two blocks.  **All pairs**: the fitted model when it can score every pair (a
    :class:`~ccmc_estim.MixtureCCMCEstimator`), the base chain (a smoothed bigram of the
    training pairs), the unigram, and the cache model ``lam B[y, q] + (1 - lam) m_y / L``
    (the bigram interpolated with the prompt's token frequencies) with ``lam`` tuned on the
    held-out pairs themselves (generous to the baseline).  **Covered pairs** (output inside its
    prompt): the same models on that subset, plus the pure CCMC (the estimator itself, or a
    mixture's copy part), which gives probability zero elsewhere.  The unknown token of a
    mixture (``unknown_id``) is never copied, by the cache model either.

    Parameters
    ----------
    estimator : fitted CCMCEstimator, PositionalCCMCEstimator or MixtureCCMCEstimator
    prompts_train, outputs_train : the estimator's training pairs (for the baselines)
    prompts_test, outputs_test : held-out pairs
    smoothing : "witten-bell" or float
        Smoothing of the baseline bigram, as for the mixture's base chain.

    Returns
    -------
    ModelComparison

    Examples
    --------
    >>> from ccmc_estim import CCMCEstimator, compare_models, make_ccmc_data
    >>> X, y, _ = make_ccmc_data(3000, 5, 8, random_state=0)
    >>> est = CCMCEstimator().fit(X[:2000], y[:2000])
    >>> cmp = compare_models(est, X[:2000], y[:2000], X[2000:], y[2000:])
    >>> sorted(cmp.mean_log_likelihood["covered pairs"])
    ['base chain', 'cache (tuned)', 'ccmc', 'unigram']
    """
    from scipy.optimize import minimize_scalar

    from .mixture import MixtureCCMCEstimator, fit_base_chain

    check_is_fitted(estimator, "model_")
    if not (isinstance(smoothing, str) and smoothing == "witten-bell") and (
            isinstance(smoothing, bool) or not isinstance(smoothing, Real)
            or not 0 < smoothing < np.inf):
        raise ValueError("smoothing must be 'witten-bell' or a positive finite number, got "
                         f"{smoothing!r}.")
    K = estimator.n_tokens_
    flat, indptr, _ = validate_prompts(prompts_train, K)
    y_train = check_outputs(outputs_train, indptr.size - 1, K)
    q_train = flat[indptr[1:] - 1].astype(np.int64)
    del flat, indptr
    chain = fit_base_chain(q_train, y_train, np.ones(y_train.size), K, smoothing)
    test = prompt_stats(prompts_test, K)
    y_test = check_outputs(outputs_test, test.n_prompts, K)
    q_test = test.query.astype(np.int64)
    mixture = isinstance(estimator, MixtureCCMCEstimator)
    unk = estimator.unknown_id if mixture else None
    entries = test.output_entries(y_test)
    found = entries >= 0
    if unk is not None:
        found &= y_test != unk
    counts = np.bincount(test.row, weights=test.counts, minlength=test.n_prompts)
    if unk is not None:  # the unknown token is not copyable: remove it from the lengths
        counts -= np.bincount(test.row, weights=test.counts * (test.tokens == unk),
                              minlength=test.n_prompts)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(found, test.counts[np.maximum(entries, 0)] / counts, 0.0)
    log_base = chain.log_proba(q_test, y_test)
    log_uni = np.log(chain.unigram[y_test])
    if mixture:
        log_model, log_copy = estimator.model_._pair_log_proba(prompts_test, y_test)
        log_ccmc = np.where(found, log_copy, -np.inf)
    else:
        log_ccmc = estimator.score_samples(prompts_test, y_test)

    def cache(mask):
        b = np.exp(log_base[mask])
        s = share[mask]

        def loss(lam):
            with np.errstate(divide="ignore"):
                return -np.mean(np.log(lam * b + (1 - lam) * s))

        res = minimize_scalar(loss, bounds=(1e-6, 1.0), method="bounded",
                              options={"xatol": 1e-6})
        return -float(res.fun), float(res.x)

    blocks, weights = {}, {}
    for block, mask in (("all pairs", np.ones(y_test.size, bool)), ("covered pairs", found)):
        rows = {}
        if not mask.any():
            continue
        if mixture:
            rows["mixture"] = float(log_model[mask].mean())
        if block == "covered pairs":
            rows["ccmc"] = float(log_ccmc[mask].mean())
        rows["base chain"] = float(log_base[mask].mean())
        rows["unigram"] = float(log_uni[mask].mean())
        rows["cache (tuned)"], weights[block] = cache(mask)
        blocks[block] = rows
    return ModelComparison(blocks, weights, int(y_test.size), int(found.sum()))


def likelihood_ratio_test(full, restricted):
    """Likelihood-ratio test of a fitted model against a nested, simpler one.

    For example a :class:`~ccmc_estim.PositionalCCMCEstimator` against a
    :class:`~ccmc_estim.CCMCEstimator` fitted on the same data: the statistic
    ``2 (LL_full - LL_restricted)`` is asymptotically chi-square with
    ``n_free_params_`` difference degrees of freedom under the restricted model.  Exact only
    for unpenalised fits; with a small ``alpha`` it is approximate.

    Parameters
    ----------
    full, restricted : fitted estimators
        With ``log_likelihood_`` and ``n_free_params_``, fitted on the same data.

    Returns
    -------
    statistic : float
    df : int
    p_value : float
    """
    from scipy.stats import chi2

    check_is_fitted(full, "model_")
    check_is_fitted(restricted, "model_")
    stat = 2.0 * (full.log_likelihood_ - restricted.log_likelihood_)
    df = int(full.n_free_params_ - restricted.n_free_params_)
    if df <= 0:
        raise ValueError(f"the full model must have more free parameters, got df={df}.")
    return float(stat), df, float(chi2.sf(max(stat, 0.0), df))
