"""Identifiability, existence, uncertainty and model comparison (THEORY.md section 4)."""

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.stats import norm

from ._kernels import column_graphs, union_find_components
from ._stats import check_outputs, column_data, prompt_stats


class IdentifiabilityWarning(UserWarning):
    """Some logits are not identified, or the plain MLE does not exist, for some columns."""


# --------------------------------------------------------------------------- graphs
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
    src = np.asarray(src, np.int64)
    dst = np.asarray(dst, np.int64)
    if src.shape != dst.shape or (src.size and (min(src.min(), dst.min()) < 0
                                                or max(src.max(), dst.max()) >= n_nodes)):
        raise ValueError(f"arcs must be pairs of node ids in 0..{n_nodes - 1}.")
    if not strong:
        return union_find_components(int(n_nodes), src, dst)
    graph = coo_matrix((np.ones(src.size, np.int32), (src, dst)), shape=(n_nodes, n_nodes))
    return connected_components(graph.tocsr(), directed=True, connection="strong")[1]


def _entry_params(cd):
    """Global parameter index of every entry, and the prompt of every entry."""
    lengths = np.diff(cd.indptr)
    row = np.repeat(np.arange(lengths.size), lengths)
    col = np.repeat(np.arange(cd.n_tokens), np.diff(cd.col_ptr))
    return (cd.id_ptr[col][row] + cd.local).astype(np.int64), row


def _column_graphs(cd):
    y_entry = cd.y_entry if cd.y_entry is not None else np.zeros(0, np.int64)
    return column_graphs(cd.col_ptr, cd.indptr, cd.local, y_entry, cd.id_ptr)


def _by_column(cd, mask):
    """Column -> tokens of the parameters selected by ``mask``."""
    idx = np.flatnonzero(mask)
    if not idx.size:
        return {}
    cols, starts = np.unique(cd.id_query[idx], return_index=True)
    toks = np.split(cd.id_tokens[idx].astype(np.int64), starts[1:])
    return dict(zip(cols.tolist(), toks, strict=True))


def _groups(cd, labels, cols):
    """Column -> token groups sharing a label, for the columns ``cols``."""
    out = {}
    for q in cols:
        lab = labels[cd.id_ptr[q] : cd.id_ptr[q + 1]]
        toks = cd.id_tokens[cd.id_ptr[q] : cd.id_ptr[q + 1]].astype(np.int64)
        out[int(q)] = [toks[lab == g] for g in np.unique(lab)]
    return out


def mle_existence(cd, dominant=True, graphs=None):
    """Whether each column's finite MLE exists (``alpha=0``), its never-chosen tokens and its
    always-winning groups.

    A column's MLE is finite iff its "chosen over" graph (an arc ``j -> k`` whenever ``k`` was
    emitted from a prompt that also held ``j``) is strongly connected, i.e. iff every token of
    the column reaches the query token and is reached from it.

    Returns
    -------
    exists : ndarray of bool, shape (K,)
        False for columns never queried.
    never_chosen : dict
        Column -> tokens available in the column but never emitted against competition.
    dominant : dict or None
        Column -> list of token groups that no outsider ever beat (sink strongly connected
        components), for columns whose MLE does not exist; None unless ``dominant``.
    """
    _, _, chosen, _, strong = _column_graphs(cd) if graphs is None else graphs
    sizes = np.diff(cd.id_ptr)
    exists = strong & (sizes > 0)
    never_chosen = _by_column(cd, ~chosen & (sizes[cd.id_query] > 1))
    if not dominant:
        return exists, never_chosen, None
    failing = np.flatnonzero((sizes > 0) & ~exists)
    if not failing.size:
        return exists, never_chosen, {}
    param, row = _entry_params(cd)
    y_param = param[cd.y_entry][row]
    keep = (param != y_param) & np.isin(cd.id_query[param], failing)
    src, dst = param[keep], y_param[keep]
    labels = graph_components(cd.n_params, src, dst, strong=True)
    # Sink components: no arc leaves them (no outsider ever beat a member).
    leaves = np.zeros(labels.max() + 1, bool)
    cross = labels[src] != labels[dst]
    leaves[labels[src][cross]] = True
    groups = {}
    for q in failing:
        lab = labels[cd.id_ptr[q] : cd.id_ptr[q + 1]]
        toks = cd.id_tokens[cd.id_ptr[q] : cd.id_ptr[q + 1]].astype(np.int64)
        groups[int(q)] = [toks[lab == g] for g in np.unique(lab) if not leaves[g]]
    return exists, never_chosen, groups


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
    cooccurrence : ndarray of int, shape (K, K)
        ``cooccurrence[k, q]``: number of prompts with query ``q`` that contain ``k``.
    identified : ndarray of bool, shape (K, K)
        Entries that enter the likelihood.
    n_components : ndarray of int, shape (K,)
        Connected components of each column's co-occurrence graph (0 if never queried); a
        column is identified up to one shift per component.
    components : dict
        Column -> list of token arrays, for columns with more than one component.
    n_free_params : int
        Identified entries minus one shift per component, over all columns.
    mle_exists : ndarray of bool or None
        With outputs: whether the finite MLE exists per column (False if never queried).
    never_chosen : dict or None
        With outputs: column -> tokens available but never chosen.
    dominant : dict or None
        With outputs: column -> groups of tokens that always beat the rest.
    """

    n_tokens: int
    n_prompts: np.ndarray
    queried: np.ndarray
    cooccurrence: np.ndarray
    identified: np.ndarray
    n_components: np.ndarray
    components: dict
    n_free_params: int
    mle_exists: np.ndarray | None = None
    never_chosen: dict | None = None
    dominant: dict | None = None

    @property
    def fully_identified(self):
        """True when every queried column's co-occurrence graph is connected."""
        return bool((self.n_components[self.queried] == 1).all())

    def summary(self, max_rows=20):
        """A text table, the worst columns first."""
        K = self.n_tokens
        covered = self.identified.sum(axis=0)
        lines = [
            f"Identifiability report: {K} tokens, {int(self.n_prompts.sum())} prompts, "
            f"{int(self.queried.sum())} of {K} columns queried, "
            f"{int(self.identified.sum())} of {K * K} logits identified, "
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
            co = self.cooccurrence[:, q][self.identified[:, q]]
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


def report_from_columns(cd, with_outputs, dominant=True):
    K = cd.n_tokens
    graphs = _column_graphs(cd)
    labels, per_param, _, n_components, _ = graphs
    sizes = np.diff(cd.id_ptr)
    cooc = np.zeros((K, K), np.int64)
    cooc[cd.id_tokens, cd.id_query] = per_param
    report = IdentifiabilityReport(
        n_tokens=K,
        n_prompts=np.diff(cd.col_ptr),
        queried=sizes > 0,
        cooccurrence=cooc,
        identified=cd.identified_mask(),
        n_components=n_components,
        components=_groups(cd, labels, np.flatnonzero(n_components > 1)),
        n_free_params=int(sizes.sum() - n_components.sum()),
    )
    if with_outputs:
        report.mle_exists, report.never_chosen, report.dominant = mle_existence(
            cd, dominant, graphs
        )
    return report


def identifiability_report(prompts, outputs=None, *, n_tokens=None):
    """Which logits a data set identifies, and whether their finite MLE exists.

    Parameters
    ----------
    prompts : array-like of shape (n, L) or sequence of 1-D sequences
    outputs : array-like of shape (n,) or None
        Next tokens; needed for the existence of the MLE.
    n_tokens : int or None
        Vocabulary size; inferred when None.

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
    stats = prompt_stats(prompts, n_tokens)
    if outputs is not None:
        outputs = check_outputs(outputs, stats.n_prompts, stats.n_tokens)
    return report_from_columns(column_data(stats, outputs), outputs is not None)


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


def softmax_jacobian(logits_column):
    """Jacobian of ``softmax`` at one column: ``diag(p) - p p^T``."""
    z = logits_column - logits_column.max()
    p = np.exp(z) / np.exp(z).sum()
    return np.diag(p) - np.outer(p, p), p


def normal_quantile(level):
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level!r}.")
    return float(norm.ppf(0.5 + level / 2))


# --------------------------------------------------------------------------- comparison
@dataclass(eq=False)
class ModelComparison:
    """Held-out comparison of a CCMC with the base Markov chain and a unigram model.

    Attributes
    ----------
    mean_log_likelihood : dict
        Model name -> mean held-out log-likelihood per output.  For ``"ccmc"`` this is ``-inf``
        as soon as one held-out output is absent from its prompt; ``"ccmc (in prompt)"`` averages
        over the others.
    n_outside_prompt : int
        Held-out outputs that do not occur in their prompt (probability zero under any CCMC).
    n_test : int
    """

    mean_log_likelihood: dict
    n_outside_prompt: int
    n_test: int

    def summary(self):
        lines = [
            f"Held-out comparison on {self.n_test} outputs "
            f"({self.n_outside_prompt} outside their prompt):",
            f"{'model':<20} {'mean log-lik':>14}",
        ]
        for name, value in self.mean_log_likelihood.items():
            lines.append(f"{name:<20} {value:>14.5f}")
        return "\n".join(lines)

    def __str__(self):
        return self.summary()


def compare_models(estimator, prompts_train, outputs_train, prompts_test, outputs_test,
                   smoothing=0.5):
    """Compare a fitted CCMC with a base Markov chain and a unigram model on held-out data.

    The base chain ``P(y | q)`` and the unigram ``P(y)`` are fitted on the training data by
    smoothed frequencies (``smoothing`` added to every count), ignoring prompt histograms.

    Parameters
    ----------
    estimator : fitted CCMCEstimator
    prompts_train, outputs_train : training data of the estimator
    prompts_test, outputs_test : held-out data
    smoothing : float
        Additive smoothing of the baseline frequencies.

    Returns
    -------
    ModelComparison
    """
    K = estimator.n_tokens_
    train = prompt_stats(prompts_train, K)
    y_train = check_outputs(outputs_train, train.n_prompts, K)
    test = prompt_stats(prompts_test, K)
    y_test = check_outputs(outputs_test, test.n_prompts, K)
    trans = np.full((K, K), float(smoothing))
    np.add.at(trans, (train.query, y_train), 1.0)
    trans /= trans.sum(axis=1, keepdims=True)
    uni = np.bincount(y_train, minlength=K) + float(smoothing)
    uni = uni / uni.sum()
    ll = estimator.score_samples(test, y_test)
    inside = np.isfinite(ll)
    result = {
        "ccmc": float(ll.mean()) if inside.all() else -np.inf,
        "ccmc (in prompt)": float(ll[inside].mean()) if inside.any() else np.nan,
        "base chain": float(np.log(trans[test.query, y_test]).mean()),
        "unigram": float(np.log(uni[y_test]).mean()),
    }
    return ModelComparison(result, int((~inside).sum()), int(test.n_prompts))


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

    stat = 2.0 * (full.log_likelihood_ - restricted.log_likelihood_)
    df = int(full.n_free_params_ - restricted.n_free_params_)
    if df <= 0:
        raise ValueError(f"the full model must have more free parameters, got df={df}.")
    return float(stat), df, float(chi2.sf(max(stat, 0.0), df))
