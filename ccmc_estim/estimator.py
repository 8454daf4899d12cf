"""scikit-learn estimators of the CCMC logits."""

import time
import warnings
from dataclasses import dataclass, replace
from numbers import Integral, Real

import numpy as np
from scipy import sparse as sp
from scipy.optimize import minimize
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted

from . import _solvers
from ._columns import build_columns, by_column, columns_from_stats, query_order
from ._kernels import bias_loglik
from ._solvers import DENSE_MAX, MAX_ITER, column_ranges, run_threads, solve_columns
from ._stats import (
    _MAX_TOKENS,
    StrOptions,
    check_covered,
    check_n_tokens,
    check_outputs,
    check_random_state,
    check_sample_weight,
    encode_outputs,
    encode_prompts,
    n_threads,
    number,
    token_classes,
    validate_params,
    validate_prompts,
)
from .diagnostics import (
    IdentifiabilityWarning,
    column_uncertainty,
    normal_quantile,
    report_from_columns,
    use_sparse,
)
from .distributed import is_dask_collection
from .model import CCMC, PositionalCCMC, adopt_logits, check_position_bias

_SOLVERS = ("auto", "newton", "newton-cg")

#: Largest column layout built at once by an in-memory fit (bytes); larger data are laid out
#: and solved in blocks of columns.  The layout costs at most 12 bytes per prompt token.
LAYOUT_BUDGET = 384 * 2**20
_LAYOUT_BYTES = 12


def centre_columns(theta, id_ptr, chunk=4096):
    """Centre each column of flat parameters over its identified entries, in place (columns
    in chunks, so the temporary is small whatever the number of parameters)."""
    sizes = np.diff(id_ptr)
    nz = sizes > 0
    means = np.zeros(sizes.size)
    if theta.size:
        means[nz] = np.add.reduceat(theta, id_ptr[:-1][nz]) / sizes[nz]
    for a in range(0, sizes.size, chunk):
        b = min(a + chunk, sizes.size)
        theta[id_ptr[a] : id_ptr[b]] -= np.repeat(means[a:b], sizes[a:b])
    return theta


def weight_scale(weight):
    """Divisor that keeps huge weights from overflowing sums and tiny ones from looking
    converged at the start (the stopping rule scales the gradient by the column's weight, at
    least 1, so weights of 1e-300 stopped at their start).  Any finite weights work: the
    minimiser does not change when the weights and the penalty are divided alike."""
    top = float(weight.max())
    if top < 1.0:
        return top if top > 0.0 else 1.0
    return max(1.0, top / 1e100)


def _any_dask(*args):
    return any(is_dask_collection(a) for a in args)


def _list_columns(cols, limit=10):
    cols = [int(c) for c in cols]
    text = ", ".join(map(str, cols[:limit]))
    return text + (f", ... ({len(cols)} in all)" if len(cols) > limit else "")


class _HashableTokens:
    """Prompts and outputs of any hashable tokens, the way a scikit-learn classifier takes
    string labels: ``classes_`` holds the sorted tokens, ids are positions in it, ``predict``
    returns tokens and ``predict_proba`` columns follow ``classes_``.  Integer ids ``0..K-1``
    stay the fast path (``classes_`` is then ``arange(K)``), with identical results.  Also
    the scikit-learn tags the estimators share."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        tags.target_tags.required = True
        tags.non_deterministic = False
        return tags

    def _training_data(self, prompts, outputs, sample_weight):
        """Validated flat prompts, vocabulary size, outputs and weights, every size checked
        before anything of that size is allocated."""
        flat, indptr, K = validate_prompts(prompts, self.n_tokens)
        n = indptr.size - 1
        if self.n_tokens is None:
            outputs = check_outputs(outputs, n, None)
            top = int(outputs.max())
            if top >= K:
                K = check_n_tokens(top + 1, f"output {top} of sample {int(outputs.argmax())} "
                                            "is the largest token id")
        else:
            outputs = check_outputs(outputs, n, K)
        weight = check_sample_weight(sample_weight, n)
        return flat, indptr, K, outputs, weight

    def _encode_fit(self, prompts, outputs):
        classes = token_classes(prompts, outputs)
        self._token_classes = classes
        if classes is None:
            return prompts, outputs
        if self.n_tokens is not None:
            raise ValueError("n_tokens applies to integer token ids; with other tokens the "
                             "vocabulary is the set of tokens seen in training (classes_).")
        return encode_prompts(prompts, classes), encode_outputs(outputs, classes)

    def _encode(self, prompts, outputs=None):
        classes = getattr(self, "_token_classes", None)
        if classes is None:
            return prompts, outputs
        return encode_prompts(prompts, classes), encode_outputs(outputs, classes)

    def _classes(self, n_tokens):
        classes = getattr(self, "_token_classes", None)
        return np.arange(n_tokens) if classes is None else classes


class CCMCEstimator(_HashableTokens, ClassifierMixin, BaseEstimator):
    """Penalised maximum-likelihood estimator of a context-conditioned Markov chain.

    Minimises, over the logits that enter the likelihood,

        sum_i w_i [log sum_k m_ik exp(W[k, q_i]) - W[y_i, q_i] - log m_{i, y_i}]
        + alpha / 2 * ||W||^2,

    which splits into one convex problem per query column, solved in parallel.

    Parameters
    ----------
    alpha : float, default=1.0
        L2 penalty on the identified logits, added to the *total* weighted NLL, so its influence
        fades as the data grow and the estimate stays consistent.  It is the MAP estimate under a
        standard normal prior on each logit: it keeps the fit finite where the plain MLE does not
        exist (a token that is available but never chosen would otherwise get logit -inf).
        ``alpha=0`` is the plain MLE.
    n_tokens : int or None, default=None
        Vocabulary size ``K``; inferred from the training data as ``max token + 1`` when None.
    sparse : "auto" or bool, default="auto"
        Storage of ``logits_`` and the other ``(K, K)`` results: a ``scipy.sparse`` CSC array
        holding the identified entries only (memory in proportion to the data, for
        vocabularies of any size; an entry not stored is the column centre, 0) or a dense
        array.  ``"auto"`` goes sparse when a dense array would have over 10^6 entries and
        more than four times the identified ones.  Both give the same fit and the same
        probabilities; ``model_.toarray()`` gives dense logits on request.
    solver : {"auto", "newton", "newton-cg"}, default="auto"
        ``"newton"``: damped Newton with a dense Hessian per column; ``"newton-cg"``: truncated
        Newton with preconditioned conjugate gradients on Hessian-vector products;
        ``"auto"``: per column the one with fewer operations per iteration, the dense one where
        its iteration costs under about a millisecond, newton-cg above 300 identified logits.
        Every column starts from its counts (the theory page of the docs) unless warm-started.
    tol : float, default=1e-6
        A column stops when the largest absolute gradient of its mean loss (gradient divided by
        the column's total sample weight, at least 1) is at most ``tol``, or when no step lowers
        the objective beyond rounding.
    max_iter : int, default=100
        Maximum Newton iterations per column; a column that reaches it raises a
        ``ConvergenceWarning``.
    warm_start : bool, default=False
        Start from the previous solution when refitting with the same vocabulary.
    n_jobs : int or None, default=None
        Threads over columns; None uses every core (``-1`` too), as scikit-learn's compiled
        estimators do.  Results do not depend on it.
    verbose : int, default=0
        1: a summary line after the fit (and a line per column block for large data); 2: also
        a line per stage (validation, layout, solve, report) with the elapsed time.

    Attributes
    ----------
    logits_ : ndarray or scipy.sparse.csc_array of shape (K, K)
        Fitted logits, each column centred over its identified entries; 0 elsewhere (not
        stored in sparse form).
    identified_ : ndarray or scipy.sparse.csc_array of bool, shape (K, K)
        Entries ``(k, q)`` that entered the likelihood (``k`` occurred in a prompt with query
        ``q``).
    model_ : CCMC
        The fitted model.
    classes_ : ndarray of shape (K,)
        Token ids ``0..K-1``.
    n_tokens_ : int
    n_iter_ : ndarray of shape (K,)
        Newton iterations per column.
    objective_ : float
        Penalised objective at the solution.
    log_likelihood_ : float
        Weighted log-likelihood of the training data at the solution (penalty excluded).
    n_free_params_ : int
        Effective number of parameters: identified logits minus one shift per column
        (per connected component of its co-occurrence graph).
    aic_, bic_ : float
        ``2 k - 2 LL`` and ``k log(n) - 2 LL`` with ``k = n_free_params_`` and ``n`` the total
        sample weight.  Exact information criteria for ``alpha=0``; for ``alpha > 0`` they
        ignore the shrinkage.
    identifiability_ : IdentifiabilityReport
        What the training data identify, and where the plain MLE exists (its ``dominant``
        groups are computed only when ``alpha=0``; ``identifiability_report`` always does).
    logits_se_ : ndarray or scipy.sparse.csc_array of shape (K, K)
        Standard errors of the centred logits (computed on first access).
    information_min_eig_ : ndarray of shape (K,)
        Smallest non-zero eigenvalue of each column's observed information.

    Examples
    --------
    >>> from ccmc_estim import CCMCEstimator, make_ccmc_data
    >>> prompts, outputs, truth = make_ccmc_data(2000, 5, 10, random_state=0)
    >>> est = CCMCEstimator().fit(prompts, outputs)
    >>> est.logits_.shape
    (5, 5)
    >>> round(est.score(prompts, outputs), 2) < 0
    True
    """

    def __init__(
        self,
        alpha=1.0,
        *,
        n_tokens=None,
        sparse="auto",
        solver="auto",
        tol=1e-6,
        max_iter=100,
        warm_start=False,
        n_jobs=None,
        verbose=0,
    ):
        self.alpha = alpha
        self.n_tokens = n_tokens
        self.sparse = sparse
        self.solver = solver
        self.tol = tol
        self.max_iter = max_iter
        self.warm_start = warm_start
        self.n_jobs = n_jobs
        self.verbose = verbose

    _parameter_constraints = {  # noqa: RUF012 (scikit-learn's declarative convention)
        "alpha": [number(Real, 0, None, closed="left")],
        "n_tokens": [None, number(Integral, 1, _MAX_TOKENS)],
        "sparse": [StrOptions({"auto"}), "boolean"],
        "solver": [StrOptions(set(_SOLVERS))],
        "tol": [number(Real, 0, None, closed="neither")],
        "max_iter": [number(Integral, 1, 10**9)],
        "warm_start": ["boolean"],
        "n_jobs": [None, number(Integral, None, -1, closed="right"),
                   number(Integral, 1, None, closed="left")],
        "verbose": [number(Integral, 0, None, closed="left"), "boolean"],
    }

    def _start(self, problem):
        """``(theta, cold_start)`` for a fit of ``problem``: the previous fit's logits at its
        parameters with ``warm_start`` on the same vocabulary, else zeros that the solver
        replaces by its start from the counts."""
        if self.warm_start and getattr(self, "n_tokens_", None) == problem.n_tokens:
            return problem.gather(self.logits_), False
        return np.zeros(problem.n_params), True

    def _solve(self, problem, theta, scale=1.0, cold_start=False, n_jobs=None):
        """Solve every column in place (the convex problem in the logits), with the weights
        and the penalty divided by ``scale``; with ``cold_start``, from the counts rather than
        from ``theta``; on ``n_jobs`` threads (default: the estimator's)."""
        if scale != 1.0:
            problem = replace(problem, weight=problem.weight / scale)
        return solve_columns(
            problem,
            theta,
            alpha=self.alpha / scale,
            tol=self.tol,
            max_iter=self.max_iter,
            solver=self.solver,
            n_jobs=n_threads(self.n_jobs) if n_jobs is None else n_jobs,
            info_max=DENSE_MAX,
            cold_start=cold_start,
        )

    # ------------------------------------------------------------------ fit
    def fit(self, prompts, outputs, sample_weight=None):
        """Fit the logits by penalised maximum likelihood.

        Parameters
        ----------
        prompts : array-like of shape (n, L) or sequence of 1-D sequences
            Token ids; the last token of each prompt is its query.
        outputs : array-like of shape (n,)
            Next token of each prompt; it must occur in the prompt.
        sample_weight : array-like of shape (n,), float or None
            Non-negative weights; a weight of 2 equals a duplicated sample, 0 a removed one.

        Dask collections (a 2-D ``dask.array`` of prompts with 1-D ones of outputs and
        weights, or the pair that :func:`ccmc_estim.distributed.windows` cuts from a
        ``dask.bag`` of sequences) are fitted on the current Dask scheduler without any
        process holding all the data (see :func:`ccmc_estim.distributed.fit`); the fitted
        estimator is the same as in memory.

        Returns
        -------
        self
        """
        self._validate_params()
        if _any_dask(prompts, outputs, sample_weight):
            from . import distributed

            return distributed.fit(self, prompts, outputs, sample_weight)
        t0 = time.perf_counter()
        prompts, outputs = self._encode_fit(prompts, outputs)
        flat, indptr, K, outputs, weight = self._training_data(prompts, outputs, sample_weight)
        check_covered(flat, indptr, outputs, K)
        self._stage("validated the data", t0)
        query = flat[indptr[1:] - 1]
        load = np.bincount(query, weights=np.diff(indptr) * (weight > 0), minlength=K)
        n_blocks = int(np.ceil(_LAYOUT_BYTES * flat.size / LAYOUT_BUDGET))
        threads = n_threads(self.n_jobs) if flat.size >= _solvers.THREAD_MIN_WORK else 1
        # Columns of at most DENSE_MAX identified logits keep their dense information within
        # the solver's budget, in column order: blocks solved side by side must not reach
        # it, or which columns keep it would depend on n_jobs.
        cap = np.minimum(np.minimum(load, K), DENSE_MAX)
        if n_blocks > 1 or (threads > 1 and float(cap @ cap) <= _solvers.INFO_BUDGET):
            prompts = [flat, indptr]
            del flat, indptr  # _fit_blocks lets them go once they are no longer needed
            return self._fit_blocks(prompts, query, K, outputs, weight, load, n_blocks,
                                    threads, t0)
        problem = build_columns(flat, indptr, K, outputs, weight, query=query, n_jobs=threads)
        del flat, indptr  # the column layout holds all the fit needs
        self._stage(f"column layout: {problem.indptr[-1]:,} entries, {problem.n_params:,} "
                    "identified logits", t0)
        return self._fit_problem(problem, weight, t0)

    def _stage(self, what, t0):
        """With ``verbose >= 2``, one line per stage of the fit, with the elapsed time."""
        if self.verbose >= 2:
            print(f"{type(self).__name__}: {what} ({time.perf_counter() - t0:.3f} s)",
                  flush=True)

    def _fit_blocks(self, prompts, query, K, outputs, weight, load, n_blocks, threads, t0):
        """The fit in contiguous blocks of columns of similar ``load``, each laid out, solved
        and reduced to its results on its own.

        With ``n_blocks > 1`` (data whose column layout would be large) the blocks are taken
        one at a time, each on ``threads`` threads, so the memory is the data plus one block;
        otherwise there is one block per thread, so that the whole fit is one parallel
        section (each starts and collects a pool of threads), and the caller has
        checked that the blocks' dense information stays within the solver's budget: the
        results are then those of one block, to the last bit.  ``prompts`` is the list
        ``[flat, indptr]`` of the validated prompts, which the caller no longer references:
        one block at a time, it is emptied once the last block is laid out, so that a copy
        made by the validation (of int64 prompts, say) is freed before that block is solved;
        with a block per thread, once every block is solved.
        """
        from .distributed import _merge, solve_block

        scale = weight_scale(weight)
        # The blocks of large data depend on their size only, never on n_jobs: each block
        # keeps the dense information of its columns within the solver's budget.
        bounds = column_ranges(load, K, n_blocks if n_blocks > 1 else threads)
        inner = threads if n_blocks > 1 else 1
        # One sort for all blocks: the prompts of columns q0:q1 are a slice of it.
        order = query_order(query, weight)
        start = np.searchsorted(query[order], bounds)

        def fit_block(b):
            q0, q1 = int(bounds[b]), int(bounds[b + 1])
            problem = build_columns(*prompts, K, outputs, weight, query=query, n_jobs=inner,
                                    order=order[start[b] : start[b + 1]])
            if n_blocks > 1 and b == bounds.size - 2:
                prompts.clear()  # the last layout is built: the prompts go before its solve
            block = solve_block(self, problem, q0, q1, scale, n_jobs=inner)
            if self.verbose and n_blocks > 1:
                print(f"{type(self).__name__}: columns {q0}..{q1 - 1} solved "
                      f"(block {b + 1} of {bounds.size - 1})")
            return block

        indices = list(range(bounds.size - 1))
        if n_blocks > 1:  # one block at a time: the next layout replaces the last one
            blocks = [fit_block(b) for b in indices]
        else:
            blocks = run_threads(fit_block, indices)
            prompts.clear()
        self._stage(f"laid out and solved {len(indices)} column blocks", t0)
        report, theta, solution = _merge(blocks, K, self.sparse)
        del blocks
        n_obs = scale * float((weight / scale).sum())
        self._assemble(report, theta, solution, n_obs, scale=scale)
        self._stage("identifiability report and fitted attributes", t0)
        self._summary(weight, t0)
        return self

    def _fit_stats(self, stats, outputs):
        """Fit on prompt statistics built by this package (the growing contexts of one
        trajectory, see ``generation``); never reached with user data."""
        self._validate_params()
        self._token_classes = None
        outputs = check_outputs(outputs, stats.n_prompts, stats.n_tokens)
        weight = np.ones(stats.n_prompts)
        problem = columns_from_stats(stats, outputs, weight)
        return self._fit_problem(problem, weight, time.perf_counter())

    def _fit_problem(self, problem, weight, t0):
        theta, cold = self._start(problem)
        # Any finite weights work: the solver sees weights scaled to at most 1 when they are
        # huge (the minimiser is unchanged, the penalty scaled alike).
        scale = weight_scale(weight)
        solution = self._solve(problem, theta, scale, cold_start=cold)
        self._stage(f"solved {int((np.diff(problem.col_ptr) > 0).sum())} columns, at most "
                    f"{int(solution.n_iter.max(initial=0))} Newton iterations", t0)
        self._store(problem, theta, solution, weight, scale=scale)
        self._stage("identifiability report and fitted attributes", t0)
        self._summary(weight, t0)
        return self

    def _summary(self, weight, t0):
        """With ``verbose``, one line on the fitted estimator."""
        if self.verbose:
            print(
                f"{type(self).__name__}: {int((weight > 0).sum())} prompts, "
                f"{self.identifiability_.id_tokens.size} identified logits in "
                f"{int(self.identifiability_.queried.sum())} columns "
                f"({'sparse' if self.model_.sparse else 'dense'} storage), max "
                f"{int(self.n_iter_.max())} iterations, objective {self.objective_:.10g}, "
                f"{time.perf_counter() - t0:.3f} s"
            )

    def _store(self, problem, theta, solution, weight, bias=None, n_bias_params=0, scale=1.0):
        """Check a solution and set the fitted attributes from it."""
        # Sink components (always-winning groups) only matter for the alpha=0 warning.
        sparse = use_sparse(self.sparse, problem.n_tokens, problem.n_params)
        report = report_from_columns(problem, dominant=self.alpha == 0, sparse=sparse)
        # The total weight is summed scaled (no overflow warning; beyond float64 it is inf).
        n_obs = scale * float((weight / scale).sum())
        self._assemble(report, theta, solution, n_obs, bias, n_bias_params, scale)

    def _assemble(self, report, theta, solution, n_obs, bias=None, n_bias_params=0, scale=1.0):
        """Set the fitted attributes from the identifiability report and the solution of every
        column; shared by the in-memory fit and the Dask fit, which merges both from column
        blocks solved on the workers (``report.id_ptr``/``id_tokens`` give the layout)."""
        K = report.n_tokens
        sparse = report.sparse
        self._check_solution(report, solution.status)
        # A learned bias is penalised like the logits; a fixed one is not a parameter.
        bias_penalty = 0.5 * self.alpha * float(bias @ bias) if n_bias_params else 0.0
        penalty = 0.5 * self.alpha * float(theta @ theta) + bias_penalty
        # Centre each column over its identified entries (the reported gauge).
        id_ptr, id_tokens = report.id_ptr, report.id_tokens
        # One copy of the token ids serves the model, logits_, identified_ and the report:
        # frozen before any of them takes a view, so that none can change the model.
        for arr in (id_ptr, id_tokens, report.n_cooccur, report.chosen):
            if arr is not None:
                arr.setflags(write=False)
        theta = centre_columns(theta.copy() if theta.base is not None else theta, id_ptr)
        self._columns = (id_ptr, id_tokens)
        logits = by_column(theta, id_tokens, id_ptr, K, sparse)
        del theta
        self.identified_ = report.identified
        # The model takes the fresh logits without a defensive copy; logits_ is its view.
        self.model_ = (adopt_logits(CCMC, logits) if bias is None
                       else adopt_logits(PositionalCCMC, logits, bias))
        self.logits_ = self.model_.logits
        self.classes_ = self._classes(K)
        self.n_tokens_ = K
        self.n_iter_ = solution.n_iter
        self.objective_ = scale * float(solution.objective.sum()) + bias_penalty
        self.identifiability_ = report
        self.log_likelihood_ = -(self.objective_ - penalty)
        self.n_free_params_ = report.n_free_params + n_bias_params
        self.aic_ = 2.0 * self.n_free_params_ - 2.0 * self.log_likelihood_
        # No free parameter costs nothing, even when the total weight overflows (inf * 0).
        log_n = np.log(max(n_obs, 1.0)) if self.n_free_params_ else 0.0
        self.bic_ = log_n * self.n_free_params_ - 2.0 * self.log_likelihood_
        self._information = (solution.information, solution.information_diag, scale)
        self._uncertainty_cache = None

    def _check_solution(self, report, status):
        bad = np.flatnonzero(status == MAX_ITER)
        if bad.size:
            warnings.warn(
                f"the solver reached max_iter={self.max_iter} before tol={self.tol:g} in "
                f"column(s) {_list_columns(bad)}; increase max_iter or alpha.",
                ConvergenceWarning,
                stacklevel=4,
            )
        if self.alpha > 0:
            return
        missing = np.flatnonzero(report.queried & ~report.mle_exists)
        if missing.size:
            detail = "; ".join(
                f"column {q}: tokens {toks.tolist()} never chosen"
                for q in missing[:5]
                if (toks := report.never_chosen_in(q)).size
            )
            warnings.warn(
                "with alpha=0 the maximum-likelihood estimate does not exist (some logits "
                f"go to -inf or +inf) in column(s) {_list_columns(missing)}"
                + (f" ({detail})" if detail else "")
                + ". The returned logits there are finite only because the solver stopped "
                "at tol; use alpha > 0 for a well-defined estimate.",
                IdentifiabilityWarning,
                stacklevel=4,
            )

    # ------------------------------------------------------------------ uncertainty
    def _uncertainty(self):
        check_is_fitted(self, "model_")
        if self._uncertainty_cache is None:
            info, diag, scale = self._information
            self._uncertainty_cache = column_uncertainty(
                self._columns[0], info, diag, self.alpha, scale, verbose=self.verbose
            )
        return self._uncertainty_cache

    def _by_entry(self, values, fill=np.nan):
        """Per-parameter values in the storage of ``logits_`` (sparse: missing = ``fill``)."""
        id_ptr, id_tokens = self._columns
        K = self.n_tokens_
        return by_column(np.asarray(values, np.float64), id_tokens, id_ptr, K,
                         sp.issparse(self.logits_), fill)

    @property
    def logits_se_(self):
        """Standard errors of the centred logits, ``(K, K)``; NaN where not identified.

        From the observed information of each column on its identified subspace: its
        pseudo-inverse when ``alpha=0`` (asymptotic standard errors of the MLE); with
        ``alpha > 0`` the inverse of information + ``alpha I``, i.e. posterior standard
        deviations of the Laplace approximation under the N(0, 1/alpha) prior that the penalty
        encodes (close to the frequentist ones once the information dwarfs ``alpha``).  Exact
        for columns with at most 300 identified logits; larger columns use the diagonal of the
        information (each logit's own curvature, ignoring its covariance with the others),
        documented with its measured error in the usage guide.  With sparse storage a CSC
        array whose stored entries are the identified logits (entries not stored are not
        identified).
        """
        return self._by_entry(self._uncertainty().se)

    @property
    def information_min_eig_(self):
        """Smallest non-zero eigenvalue of each column's observed information, ``(K,)``.

        A conditioning measure: how well the worst-determined direction of the column is pinned
        down (NaN for columns never queried or above 300 identified logits).
        """
        return self._uncertainty().min_eig

    @validate_params(
        {"level": [number(Real, 0, 1, closed="neither")],
         "kind": [StrOptions({"logits", "transition"})]},
        prefer_skip_nested_validation=True,
    )
    def confidence_intervals(self, level=0.95, kind="logits"):
        """Normal-approximation intervals for the centred logits or the base-chain transitions.

        Parameters
        ----------
        level : float
            Coverage, strictly between 0 and 1.
        kind : {"logits", "transition"}
            ``"logits"``: intervals for ``logits_[k, q]``.  ``"transition"``: intervals for
            the base-chain transition ``P[q, k]`` (row ``q`` of ``model_.transition_matrix``)
            by the delta method through the softmax of column ``q``.  See ``logits_se_`` for
            their meaning when ``alpha > 0``.

        Returns
        -------
        lower, upper : ndarray of shape (K, K), or sparse arrays
            NaN where not identified (a token never seen with its query has no interval).  With
            sparse storage, CSC (logits, indexed ``[k, q]``) or CSR (transitions, indexed
            ``[q, k]``) arrays holding the identified entries only.
        """
        z = normal_quantile(level)
        unc = self._uncertainty()
        if kind == "logits":
            theta = self._identified_values()
            return (self._by_entry(theta - z * unc.se), self._by_entry(theta + z * unc.se))
        if kind != "transition":
            raise ValueError(f"kind must be 'logits' or 'transition', got {kind!r}.")
        p, sd = unc.transition_sd(self._identified_values(), self.n_tokens_)
        lower = np.clip(p - z * sd, 0, 1)
        upper = np.clip(p + z * sd, 0, 1)
        id_ptr, id_tokens = self._columns
        K = self.n_tokens_
        if sp.issparse(self.logits_):
            return (sp.csr_array((lower, id_tokens, id_ptr), shape=(K, K)),
                    sp.csr_array((upper, id_tokens, id_ptr), shape=(K, K)))
        return self._by_entry(lower).T.copy(), self._by_entry(upper).T.copy()

    def _identified_values(self):
        id_ptr, id_tokens = self._columns
        if sp.issparse(self.logits_):
            return np.asarray(self.logits_.data)
        return self.logits_[id_tokens, np.repeat(np.arange(self.n_tokens_), np.diff(id_ptr))]

    # ------------------------------------------------------------------ prediction
    def _model(self):
        check_is_fitted(self, "model_")
        return self.model_

    def _fitted(self):
        check_is_fitted(self, "model_")
        return self

    def predict_proba(self, prompts):
        """Next-token probabilities, shape ``(n, n_tokens_)``; zero for tokens not in a prompt.

        A dense array for dense storage; a ``scipy.sparse.csr_array`` for sparse storage
        (``.toarray()`` gives the dense form when ``K`` is small).
        """
        model = self._model()
        return model.predict_proba(self._encode(prompts)[0])

    def predict_log_proba(self, prompts):
        """Next-token log-probabilities; ``-inf`` for tokens not in a prompt.

        With sparse storage, a CSR array storing each prompt's tokens only (not stored:
        ``-inf``).
        """
        model = self._model()
        return model.predict_log_proba(self._encode(prompts)[0])

    def predict(self, prompts):
        """Most probable next token of each prompt (a lazy ``dask.array`` for a Dask
        array of prompts)."""
        if is_dask_collection(prompts):
            from . import distributed

            return distributed.predict(self._fitted(), prompts)
        model = self._model()
        return self.classes_[model.predict(self._encode(prompts)[0])]

    def score_samples(self, prompts, outputs):
        """Log-likelihood of each output given its prompt (``-inf`` if absent from the prompt);
        a lazy ``dask.array`` for Dask collections."""
        if _any_dask(prompts, outputs):
            from . import distributed

            return distributed.score_samples(self._fitted(), prompts, outputs)
        model = self._model()
        return model.log_likelihood(*self._encode(prompts, outputs))

    def score(self, prompts, outputs, sample_weight=None):
        """Mean log-likelihood per prompt (weighted by ``sample_weight``).

        The log-likelihood is a strictly proper scoring rule, so model selection by ``score``
        (as ``GridSearchCV`` does by default) picks the best-calibrated penalty.  Outputs absent
        from their prompt have probability zero and make the score ``-inf``.  For Dask
        collections it is computed on the workers.
        """
        if _any_dask(prompts, outputs, sample_weight):
            from . import distributed

            return distributed.score(self._fitted(), prompts, outputs, sample_weight)
        ll = self.score_samples(prompts, outputs)
        w = check_sample_weight(sample_weight, ll.size)
        hit = w > 0
        if np.isneginf(ll[hit]).any():
            return -np.inf
        w = w[hit] / w[hit].max()  # any finite weights: the average is scale-free
        return float(np.average(ll[hit], weights=w))


class PositionalCCMCEstimator(CCMCEstimator):
    """Penalised maximum-likelihood estimator of a CCMC with a relative position bias.

    The model is :class:`PositionalCCMC`: the attention score of a position at distance ``d``
    from the last token gains ``b[min(d, max_distance)]``, with ``b[0] = 0``.  With
    ``position_bias`` given, ``b`` is fixed and the fit is the convex problem in the logits.
    Otherwise ``b`` is learned jointly.  The problem is convex in the logits for a fixed
    ``b`` but not jointly (which position was attended is hidden), so the fit minimises the
    profile objective ``F(b) = min_W objective(W, b)`` by L-BFGS over ``b[1:]``: every
    evaluation solves the convex problem in the logits exactly (warm-started), and by the
    envelope theorem the gradient of ``F`` is the partial gradient in ``b`` at that solution,
    i.e. the EM gradient: the posterior of the attended distance among the positions holding
    the output, minus the attention mass at that distance.  The line search accepts only
    iterates that lower ``F``, so the objective never increases along ``objective_path_``.

    The objective is the weighted NLL plus ``alpha / 2`` times the squared norms of the logits
    and of the learned bias.  It stops when an iteration lowers it by less than
    ``bias_tol * max(1, |objective|)``, or when the gradient in ``b`` falls below
    ``tol * total weight``; it keeps the best of ``n_restarts`` starts (the first from
    ``b = 0``, the others random).

    Parameters
    ----------
    max_distance : int, default=8
        Number of free bias entries ``b[1..max_distance]``; larger distances share the last.
    alpha : float, default=1.0
    position_bias : array-like or None, default=None
        A fixed bias (``max_distance`` is then ``len(position_bias) - 1``).
    n_restarts : int, default=1
    random_state : int, Generator, RandomState or None
        Draws the starting biases of restarts after the first.
    bias_max_iter : int, default=200
        Maximum L-BFGS iterations in ``b`` per start.
    bias_tol : float, default=1e-9
        Relative decrease of the objective below which the bias search stops.
    n_tokens, sparse, solver, tol, max_iter, warm_start, n_jobs, verbose
        As in :class:`CCMCEstimator` (``verbose`` prints the objective at every iteration).

    Attributes
    ----------
    position_bias_ : ndarray of shape (max_distance + 1,)
    objective_path_ : ndarray
        Objective at the start and after every iteration of the best start (non-increasing).
    n_bias_iter_ : int
    logits_, identified_, model_, classes_, n_tokens_, n_iter_, objective_, log_likelihood_,
    n_free_params_, aic_, bic_, identifiability_, logits_se_, information_min_eig_
        As in :class:`CCMCEstimator`; ``n_free_params_`` counts the learned bias entries, and
        standard errors and intervals of the logits are conditional on the fitted bias.

    Examples
    --------
    >>> import numpy as np
    >>> from ccmc_estim import PositionalCCMC, PositionalCCMCEstimator
    >>> truth = PositionalCCMC(np.zeros((4, 4)), -0.5 * np.arange(5))
    >>> rng = np.random.default_rng(0)
    >>> X = rng.integers(0, 4, size=(5000, 8))
    >>> y = truth.sample(X, random_state=0)
    >>> est = PositionalCCMCEstimator(max_distance=4).fit(X, y)
    >>> bool(np.all(np.diff(est.objective_path_) <= 1e-9 * abs(est.objective_)))
    True
    """

    def __init__(
        self,
        max_distance=8,
        alpha=1.0,
        *,
        position_bias=None,
        n_restarts=1,
        random_state=None,
        bias_max_iter=200,
        bias_tol=1e-9,
        n_tokens=None,
        sparse="auto",
        solver="auto",
        tol=1e-6,
        max_iter=100,
        warm_start=False,
        n_jobs=None,
        verbose=0,
    ):
        super().__init__(alpha, n_tokens=n_tokens, sparse=sparse, solver=solver, tol=tol,
                         max_iter=max_iter, warm_start=warm_start, n_jobs=n_jobs,
                         verbose=verbose)
        self.max_distance = max_distance
        self.position_bias = position_bias
        self.n_restarts = n_restarts
        self.random_state = random_state
        self.bias_max_iter = bias_max_iter
        self.bias_tol = bias_tol

    _parameter_constraints = {  # noqa: RUF012
        **CCMCEstimator._parameter_constraints,
        "max_distance": [number(Integral, 0, 10**6)],
        "position_bias": [None, "array-like"],
        "n_restarts": [number(Integral, 1, 10**6)],
        "random_state": ["random_state"],
        "bias_max_iter": [number(Integral, 1, 10**9)],
        "bias_tol": [number(Real, 0, None, closed="neither")],
    }

    def fit(self, prompts, outputs, sample_weight=None):
        """Fit the logits and (unless fixed) the position bias.

        Parameters
        ----------
        prompts : array-like of shape (n, L) or sequence of 1-D sequences
        outputs : array-like of shape (n,)
        sample_weight : array-like of shape (n,) or None

        Returns
        -------
        self
        """
        self._validate_params()
        if _any_dask(prompts, outputs, sample_weight):
            return self._fit_dask(prompts, outputs, sample_weight)
        from .mixture import _InMemory

        prompts, outputs = self._encode_fit(prompts, outputs)
        flat, indptr, K, outputs, weight = self._training_data(prompts, outputs, sample_weight)
        check_covered(flat, indptr, outputs, K)
        scale = weight_scale(weight)
        # All the columns as one block: the Dask fit runs the same code on column blocks.
        block = _BiasBlock(self, flat, indptr, outputs, weight, K, 0, K, scale)
        del flat, indptr

        if self.position_bias is not None:
            b = check_position_bias(self.position_bias).copy()
            theta, cold = self._start(block.layout)
            cd, solution = block.solve(theta, b, cold_start=cold)
            self.objective_path_ = np.array([scale * solution.objective.sum()])
            self.n_bias_iter_ = 0
            self._store(cd, theta, solution, weight, bias=b, scale=scale)
            self.position_bias_ = b
            return self

        b, (state,), path, n_outer = self._search_bias(_InMemory(), [block], scale)
        del block
        self.objective_path_ = scale * np.array(path)
        self.n_bias_iter_ = n_outer
        self._store(state.problem, state.theta, state.solution, weight, bias=b,
                    n_bias_params=b.size - 1, scale=scale)
        self.position_bias_ = b
        return self

    def _fit_dask(self, prompts, outputs, sample_weight, n_blocks=None):
        """Fit Dask collections, partitioned by query.

        A fixed bias leaves one convex problem per column, fitted like the plain CCMC (see
        :func:`ccmc_estim.distributed.fit`).  A learned bias couples all columns at every
        step of its search: the pairs are shuffled into column blocks once and kept on the
        workers, and every evaluation of the profile objective sends the bias to the blocks
        and brings back each block's part of the objective and of its gradient in the bias
        (see :func:`ccmc_estim.distributed._fit_positional`); the driver runs the L-BFGS-B
        of the in-memory fit on their sums.  Either way the fitted estimator is the same as
        in memory (to rounding: the sums over blocks are rounded differently).
        """
        from . import distributed

        if self.position_bias is None:
            return distributed._fit_positional(self, prompts, outputs, sample_weight,
                                               n_blocks=n_blocks)
        b = check_position_bias(self.position_bias).copy()
        distributed.fit(self, prompts, outputs, sample_weight, n_blocks=n_blocks,
                        position_bias=b)
        self.objective_path_ = np.array([self.objective_])
        self.n_bias_iter_ = 0
        self.position_bias_ = b
        return self

    def _search_bias(self, run, blocks, scale):
        """The bias search over column blocks: the best of ``n_restarts`` L-BFGS-B starts.

        Parameters
        ----------
        run : runner
            Runs the blocks' methods: in this process (``mixture._InMemory``) or on a Dask
            cluster (``distributed._ClientRun``).
        blocks : list
            Handles of :class:`_BiasBlock` covering the columns ``0..K-1``.
        scale : float
            The fit's weight scale (weights and penalty are divided by it).

        Returns
        -------
        b : ndarray of shape (max_distance + 1,)
            The fitted bias.
        states : list
            Handles of every block's :class:`_BiasState` at ``b``.
        path : list of float
            Scaled objective at the start and after every iteration of the best start.
        n_outer : int
            L-BFGS iterations of the best start.
        """
        D = self.max_distance
        rng = check_random_state(self.random_state)
        total = _sum_parts(run.values(run.map(_total_weight, blocks)))
        best = None
        for start in range(self.n_restarts):
            if start == 0:
                b = np.zeros(D + 1)
                if self.warm_start and getattr(self, "position_bias_", np.zeros(0)).size == D + 1:
                    b = self.position_bias_.copy()
            else:
                b = np.concatenate([[0.0], rng.normal(0.0, 1.0, D)])
            result = self._fit_joint(run, blocks, b, start, scale, total)
            if best is None or result[0] < best[0]:
                best = result
        _, b, states, path, n_outer = best
        if n_outer >= self.bias_max_iter:
            warnings.warn(
                f"the joint fit reached bias_max_iter={self.bias_max_iter} before bias_tol="
                f"{self.bias_tol:g}; increase bias_max_iter.", ConvergenceWarning, stacklevel=3)
        return b, states, path, n_outer

    def _fit_joint(self, run, blocks, b, start, scale, total):
        """One start: L-BFGS on the profile objective ``F(b) = min_W objective(W, b)`` (with
        weights and penalty divided by ``scale``; ``total`` is the scaled total weight).

        Every evaluation has every block solve its columns (warm-started from its previous
        solution) and return its part of ``F`` and of the partial gradient in ``b`` at that
        solution, which by the envelope theorem is the gradient of ``F``; only these sums
        couple the blocks.  The line search accepts only iterates that lower ``F``, so the
        recorded path never increases.
        """
        states = [None] * len(blocks)
        last = {}

        def profile(free):
            nonlocal states
            bb = np.concatenate([[0.0], free])
            states = run.map(_BiasBlock.evaluate, blocks, states, bb)
            parts = run.values(run.map(_bias_parts, states))
            alpha = self.alpha / scale
            f = _sum_parts(p[0] for p in parts) + 0.5 * alpha * float(bb @ bb)
            grad = np.array([_sum_parts(p[1][d] for p in parts) for d in range(bb.size)])
            last.update(x=free.copy(), f=f, states=states)
            return f, -grad[1:] + alpha * bb[1:]

        path = [profile(b[1:].copy())[0]]

        def record(intermediate_result):
            path.append(float(intermediate_result.fun))
            if self.verbose:
                print(f"start {start} iteration {len(path) - 1}: objective "
                      f"{scale * path[-1]:.12g}")

        res = minimize(profile, b[1:].copy(), jac=True, method="L-BFGS-B", callback=record,
                       options={"maxiter": self.bias_max_iter,
                                "gtol": self.tol * max(1.0, total),
                                "ftol": self.bias_tol})
        if not np.array_equal(last["x"], res.x):
            profile(res.x)
        b = np.concatenate([[0.0], res.x])
        return last["f"], b, last["states"], path, int(res.nit)


def _sum_parts(values):
    """Sum of the blocks' parts, exactly rounded (independent of the blocks' order); a single
    part is returned as it is, which keeps the in-memory fit's arithmetic."""
    from .mixture import _sum

    return _sum(values)


def _nbytes(*arrays):
    return sum(a.nbytes for a in arrays if a is not None)


@dataclass(eq=False)
class _BiasState:
    """A block's columns solved at one bias: their parameters, position-weighted columns and
    solution, with the block's part of the profile objective and of the log-likelihood's
    gradient in the bias (weights divided by the fit's scale)."""

    theta: np.ndarray
    problem: object
    solution: object
    objective: float
    grad: np.ndarray

    def __sizeof__(self):
        # What Dask counts for a state held on a worker (the layout is the block's).
        return object.__sizeof__(self) + _nbytes(
            self.theta, self.grad, self.problem.count, self.solution.information_diag,
            *self.solution.information)


class _BiasBlock:
    """The pairs of the query columns ``q0:q1`` and the bias search's maths on them.

    Every method is a pure function of the block and its arguments (it returns new arrays),
    so that a Dask fit can keep a block on a worker and recompute lost results from their
    lineage.  The in-memory fit is the case of one block holding all the columns.

    Parameters
    ----------
    est : PositionalCCMCEstimator
        Its parameters (``alpha``, ``tol``, ``solver``, ...) and solver.
    flat, indptr : ndarray
        Validated prompts (int32 tokens, int64 pointers) with queries in ``q0:q1``.
    outputs : ndarray of int64
        Outputs, each in its prompt.
    weight : ndarray of float64
        Non-negative weights (not divided by ``scale``).
    n_tokens : int
    q0, q1 : int
        The block's columns.
    scale : float
        The fit's weight scale.
    """

    def __init__(self, est, flat, indptr, outputs, weight, n_tokens, q0, q1, scale):
        self.est, self.K, self.q0, self.q1, self.scale = est, n_tokens, int(q0), int(q1), scale
        self.flat, self.indptr, self.outputs, self.weight = flat, indptr, outputs, weight
        self.query = flat[indptr[1:] - 1]
        self.scaled = weight / scale
        self.n_jobs = n_threads(est.n_jobs)
        # The layout does not depend on the bias: only the position-weighted counts change.
        self.layout = build_columns(flat, indptr, n_tokens, outputs, weight,
                                    n_jobs=self.n_jobs)

    def __sizeof__(self):  # see distributed._Part.__sizeof__
        layout = [v for v in vars(self.layout).values() if isinstance(v, np.ndarray)]
        return object.__sizeof__(self) + _nbytes(
            self.flat, self.indptr, self.outputs, self.weight, self.query, self.scaled, *layout)

    def solve(self, theta, b, cold_start=False):
        """The columns with counts weighted by the bias ``b``, and their solution from
        ``theta`` (solved in place; from the counts with ``cold_start``)."""
        w = np.exp(b - b.max())
        cd = self.layout.with_count(build_columns(self.flat, self.indptr, self.K, self.outputs,
                                                  self.weight, w, n_jobs=self.n_jobs).count)
        return cd, self.est._solve(cd, theta, self.scale, cold_start)

    def evaluate(self, previous, b):
        """The :class:`_BiasState` at ``b``, warm-started from ``previous`` (None: from the
        counts)."""
        theta = (np.zeros(self.layout.n_params) if previous is None
                 else previous.theta.copy())
        cd, solution = self.solve(theta, b, cold_start=previous is None)
        grad = np.empty(b.size)
        bias_loglik(self.flat, self.indptr, self.query, self.outputs, self.scaled, cd.id_ptr,
                    cd.id_tokens, theta, b, grad)
        return _BiasState(theta, cd, solution, float(solution.objective.sum()), grad)

    def result(self, state):
        """The fitted columns at ``state``, as the Dask fit merges them."""
        from .distributed import block_result

        return block_result(self.est, state.problem, state.theta, state.solution, self.q0,
                            self.q1)


def _total_weight(block):
    return float(block.scaled.sum())


def _bias_parts(state):
    """What the driver needs of a block's state: its objective and gradient parts."""
    return state.objective, state.grad
