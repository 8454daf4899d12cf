"""scikit-learn estimators of the CCMC logits (THEORY.md section 3)."""

import time
import warnings
from dataclasses import replace
from numbers import Integral, Real

import numpy as np
from joblib import effective_n_jobs
from scipy.optimize import minimize
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted

from ._kernels import bias_loglik
from ._solvers import DENSE_MAX, MAX_ITER, solve_columns
from ._stats import (
    PromptStats,
    check_outputs,
    check_random_state,
    check_sample_weight,
    column_data,
    prompt_stats,
    stats_from_flat,
    validate_prompts,
)
from .diagnostics import (
    IdentifiabilityWarning,
    centred_covariance,
    normal_quantile,
    report_from_columns,
    softmax_jacobian,
)
from .model import CCMC, PositionalCCMC, check_position_bias

_SOLVERS = ("auto", "newton", "newton-cg")


def _list_columns(cols, limit=10):
    cols = [int(c) for c in cols]
    text = ", ".join(map(str, cols[:limit]))
    return text + (f", ... ({len(cols)} in all)" if len(cols) > limit else "")


class CCMCEstimator(ClassifierMixin, BaseEstimator):
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
    solver : {"auto", "newton", "newton-cg"}, default="auto"
        ``"newton"``: damped Newton with a dense Hessian per column; ``"newton-cg"``: truncated
        Newton with preconditioned conjugate gradients on Hessian-vector products;
        ``"auto"``: dense Newton for columns with at most 300 identified logits, else newton-cg.
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
        Threads over columns (``-1``: all cores).  Results do not depend on it.
    verbose : int, default=0
        Print a summary of the fit when positive.

    Attributes
    ----------
    logits_ : ndarray of shape (K, K)
        Fitted logits, each column centred over its identified entries; 0 elsewhere.
    identified_ : ndarray of bool, shape (K, K)
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
    logits_se_ : ndarray of shape (K, K)
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
        solver="auto",
        tol=1e-6,
        max_iter=100,
        warm_start=False,
        n_jobs=None,
        verbose=0,
    ):
        self.alpha = alpha
        self.n_tokens = n_tokens
        self.solver = solver
        self.tol = tol
        self.max_iter = max_iter
        self.warm_start = warm_start
        self.n_jobs = n_jobs
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        tags.target_tags.required = True
        tags.non_deterministic = False
        return tags

    # ------------------------------------------------------------------ validation
    def _validate_params(self):
        def real(name, low, inclusive=True):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, Real) or not np.isfinite(v):
                raise TypeError(f"{name} must be a finite real number, got {v!r}.")
            if v < low or (v == low and not inclusive):
                op = ">=" if inclusive else ">"
                raise ValueError(f"{name} must be {op} {low}, got {v!r}.")

        real("alpha", 0.0)
        real("tol", 0.0, inclusive=False)
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, Integral):
            raise TypeError(f"max_iter must be an integer, got {self.max_iter!r}.")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}.")
        if self.solver not in _SOLVERS:
            raise ValueError(f"solver must be one of {_SOLVERS}, got {self.solver!r}.")
        if self.n_tokens is not None and (
            isinstance(self.n_tokens, bool)
            or not isinstance(self.n_tokens, Integral)
            or self.n_tokens < 1
        ):
            raise ValueError(f"n_tokens must be None or a positive integer, got {self.n_tokens!r}.")
        if self.n_jobs is not None and (
            isinstance(self.n_jobs, bool)
            or not isinstance(self.n_jobs, Integral)
            or self.n_jobs == 0
        ):
            raise ValueError(f"n_jobs must be None or a non-zero integer, got {self.n_jobs!r}.")

    def _training_data(self, prompts, outputs, sample_weight):
        """Validated flat prompts, their statistics, outputs and weights.

        Precomputed :class:`PromptStats` (used internally, e.g. for the growing contexts of one
        trajectory) pass through, without flat prompts.
        """
        if isinstance(prompts, PromptStats):
            flat = indptr = None
            stats = prompt_stats(prompts, self.n_tokens)
            K, n = stats.n_tokens, stats.n_prompts
        else:
            flat, indptr, K = validate_prompts(prompts, self.n_tokens)
            stats = None
            n = indptr.size - 1
        if self.n_tokens is None:
            outputs = check_outputs(outputs, n, np.iinfo(np.int64).max)
            K = max(K, int(outputs.max()) + 1)
        else:
            outputs = check_outputs(outputs, n, K)
        weight = check_sample_weight(sample_weight, n)
        if stats is None:
            stats = stats_from_flat(flat, indptr, K)
        elif K != stats.n_tokens:
            stats = replace(stats, n_tokens=K)
        return flat, indptr, stats, outputs, weight

    def _solve(self, cd, theta):
        """Solve every column in place (the convex problem in the logits)."""
        return solve_columns(
            cd,
            theta,
            alpha=self.alpha,
            tol=self.tol,
            max_iter=self.max_iter,
            solver=self.solver,
            n_jobs=effective_n_jobs(self.n_jobs),
            info_max=DENSE_MAX,
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
        sample_weight : array-like of shape (n,) or None
            Non-negative weights; a weight of 2 equals a duplicated sample, 0 a removed one.

        Returns
        -------
        self
        """
        self._validate_params()
        t0 = time.perf_counter()
        _, _, stats, outputs, weight = self._training_data(prompts, outputs, sample_weight)
        cd = column_data(stats, outputs, weight)
        n_prompts = stats.n_prompts
        del stats  # the column layout holds all the fit needs; free the memory
        if self.warm_start and getattr(self, "n_tokens_", None) == cd.n_tokens:
            theta = cd.from_matrix(self.logits_)
        else:
            theta = np.zeros(cd.n_params)
        solution = self._solve(cd, theta)
        self._store(cd, theta, solution, weight)
        if self.verbose:
            print(
                f"{type(self).__name__}: {n_prompts} prompts, {cd.n_params} identified "
                f"logits, max {int(self.n_iter_.max())} iterations, objective "
                f"{self.objective_:.10g}, {time.perf_counter() - t0:.3f} s"
            )
        return self

    def _store(self, cd, theta, solution, weight, bias=None, n_bias_params=0):
        """Check a solution and set the fitted attributes from it."""
        objective, n_iter, status, self._information = solution
        # Sink components (always-winning groups) only matter for the alpha=0 warning.
        report = report_from_columns(cd, with_outputs=True, dominant=self.alpha == 0)
        self._check_solution(report, status)
        self._uncertainty_cache = None
        # A learned bias is penalised like the logits; a fixed one is not a parameter.
        bias_penalty = 0.5 * self.alpha * float(bias @ bias) if n_bias_params else 0.0
        penalty = 0.5 * self.alpha * float(theta @ theta) + bias_penalty
        # Centre each column over its identified entries (the reported gauge).
        sizes = np.diff(cd.id_ptr)
        means = np.add.reduceat(theta, cd.id_ptr[:-1][sizes > 0]) / sizes[sizes > 0]
        theta = theta - np.repeat(means, sizes[sizes > 0])
        K = cd.n_tokens
        self.logits_ = cd.to_matrix(theta)
        self.identified_ = cd.identified_mask()
        self.model_ = CCMC(self.logits_) if bias is None else PositionalCCMC(self.logits_, bias)
        self.classes_ = np.arange(K)
        self.n_tokens_ = K
        self.n_iter_ = n_iter
        self.objective_ = float(objective.sum()) + bias_penalty
        self.identifiability_ = report
        self.log_likelihood_ = -(self.objective_ - penalty)
        self.n_free_params_ = report.n_free_params + n_bias_params
        n_obs = float(weight.sum())
        self.aic_ = 2.0 * self.n_free_params_ - 2.0 * self.log_likelihood_
        self.bic_ = np.log(max(n_obs, 1.0)) * self.n_free_params_ - 2.0 * self.log_likelihood_

    def _check_solution(self, report, status):
        bad = np.flatnonzero(status == MAX_ITER)
        if bad.size:
            warnings.warn(
                f"the solver reached max_iter={self.max_iter} before tol={self.tol:g} in "
                f"column(s) {_list_columns(bad)}; increase max_iter or alpha.",
                ConvergenceWarning,
                stacklevel=3,
            )
        if self.alpha > 0:
            return
        split = np.flatnonzero(report.n_components > 1)
        if split.size:
            warnings.warn(
                f"with alpha=0 column(s) {_list_columns(split)} are identified only up to one "
                "shift per connected component of their co-occurrence graph; use alpha > 0.",
                IdentifiabilityWarning,
                stacklevel=3,
            )
        missing = np.flatnonzero(report.queried & ~report.mle_exists)
        if missing.size:
            detail = "; ".join(
                f"column {q}: tokens {report.never_chosen[q].tolist()} never chosen"
                for q in missing[:5]
                if q in report.never_chosen
            )
            warnings.warn(
                "with alpha=0 the maximum-likelihood estimate does not exist (some logits "
                f"go to -inf or +inf) in column(s) {_list_columns(missing)}"
                + (f" ({detail})" if detail else "")
                + ". The returned logits there are finite only because the solver stopped "
                "at tol; use alpha > 0 for a well-defined estimate.",
                IdentifiabilityWarning,
                stacklevel=3,
            )

    # ------------------------------------------------------------------ uncertainty
    def _uncertainty(self):
        check_is_fitted(self, "model_")
        if self._uncertainty_cache is None:
            K = self.n_tokens_
            se = np.full((K, K), np.nan)
            min_eig = np.full(K, np.nan)
            cov = [None] * K
            for q, info in enumerate(self._information):
                if info is None:
                    continue
                cov[q], min_eig[q] = centred_covariance(info, self.alpha)
                se[self.identified_[:, q], q] = np.sqrt(np.clip(np.diag(cov[q]), 0, None))
            self._uncertainty_cache = (se, min_eig, cov)
        return self._uncertainty_cache

    @property
    def logits_se_(self):
        """Standard errors of the centred logits, ``(K, K)``; NaN where not identified.

        From the observed information of each column on its identified subspace: its
        pseudo-inverse when ``alpha=0`` (asymptotic standard errors of the MLE); with
        ``alpha > 0`` the inverse of information + ``alpha I``, i.e. posterior standard
        deviations of the Laplace approximation under the N(0, 1/alpha) prior that the penalty
        encodes (close to the frequentist ones once the information dwarfs ``alpha``).  Columns
        with more than 300 identified logits are not computed (NaN).
        """
        return self._uncertainty()[0]

    @property
    def information_min_eig_(self):
        """Smallest non-zero eigenvalue of each column's observed information, ``(K,)``.

        A conditioning measure: how well the worst-determined direction of the column is pinned
        down (NaN for columns never queried or not computed).
        """
        return self._uncertainty()[1]

    def confidence_intervals(self, level=0.95, kind="logits"):
        """Normal-approximation intervals for the centred logits or the base-chain transitions.

        Parameters
        ----------
        level : float
            Coverage, strictly between 0 and 1.
        kind : {"logits", "transition"}
            ``"logits"``: intervals for ``logits_[k, q]``.  ``"transition"``: intervals for
            ``model_.transition_matrix[q, k]`` by the delta method through the softmax of
            column ``q``.  See ``logits_se_`` for their meaning when ``alpha > 0``.

        Returns
        -------
        lower, upper : ndarray of shape (K, K)
            NaN where not identified.
        """
        z = normal_quantile(level)
        se, _, cov = self._uncertainty()
        if kind == "logits":
            return self.logits_ - z * se, self.logits_ + z * se
        if kind != "transition":
            raise ValueError(f"kind must be 'logits' or 'transition', got {kind!r}.")
        K = self.n_tokens_
        lower = np.full((K, K), np.nan)
        upper = np.full((K, K), np.nan)
        for q in range(K):
            if cov[q] is None:
                continue
            idx = np.flatnonzero(self.identified_[:, q])
            jac, p = softmax_jacobian(self.logits_[:, q])
            sd = np.sqrt(np.clip(np.einsum("ki,ij,kj->k", jac[:, idx], cov[q], jac[:, idx]),
                                 0, None))
            lower[q] = p - z * sd
            upper[q] = p + z * sd
        return np.clip(lower, 0, 1), np.clip(upper, 0, 1)

    # ------------------------------------------------------------------ prediction
    def _model(self):
        check_is_fitted(self, "model_")
        return self.model_

    def predict_proba(self, prompts):
        """Next-token probabilities, shape ``(n, n_tokens_)``; zero for tokens not in a prompt."""
        return self._model().predict_proba(prompts)

    def predict_log_proba(self, prompts):
        """Next-token log-probabilities; ``-inf`` for tokens not in a prompt."""
        return self._model().predict_log_proba(prompts)

    def predict(self, prompts):
        """Most probable next token of each prompt."""
        log_proba = self.predict_log_proba(prompts)
        return self.classes_[np.argmax(log_proba, axis=1)]

    def score_samples(self, prompts, outputs):
        """Log-likelihood of each output given its prompt (``-inf`` if absent from the prompt)."""
        return self._model().log_likelihood(prompts, outputs)

    def score(self, prompts, outputs, sample_weight=None):
        """Mean log-likelihood per prompt (weighted by ``sample_weight``).

        The log-likelihood is a strictly proper scoring rule, so model selection by ``score``
        (as ``GridSearchCV`` does by default) picks the best-calibrated penalty.  Outputs absent
        from their prompt have probability zero and make the score ``-inf``.
        """
        ll = self.score_samples(prompts, outputs)
        w = check_sample_weight(sample_weight, ll.size)
        hit = w > 0
        if np.isneginf(ll[hit]).any():
            return -np.inf
        return float(np.average(ll[hit], weights=w[hit]))


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
    n_tokens, solver, tol, max_iter, warm_start, n_jobs, verbose
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
        solver="auto",
        tol=1e-6,
        max_iter=100,
        warm_start=False,
        n_jobs=None,
        verbose=0,
    ):
        super().__init__(alpha, n_tokens=n_tokens, solver=solver, tol=tol, max_iter=max_iter,
                         warm_start=warm_start, n_jobs=n_jobs, verbose=verbose)
        self.max_distance = max_distance
        self.position_bias = position_bias
        self.n_restarts = n_restarts
        self.random_state = random_state
        self.bias_max_iter = bias_max_iter
        self.bias_tol = bias_tol

    def _validate_params(self):
        super()._validate_params()
        for name, low in (("max_distance", 0), ("n_restarts", 1), ("bias_max_iter", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, Integral) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}.")
        tol = self.bias_tol
        if isinstance(tol, bool) or not isinstance(tol, Real) or not tol > 0:
            raise ValueError(f"bias_tol must be a positive number, got {self.bias_tol!r}.")

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
        if isinstance(prompts, PromptStats):
            raise TypeError("PositionalCCMCEstimator needs the prompts themselves (positions).")
        flat, indptr, stats, outputs, weight = self._training_data(
            prompts, outputs, sample_weight
        )
        cd0 = column_data(stats, outputs, weight, keep_index=True)
        K = stats.n_tokens

        def logits_step(b, theta):
            counts = stats_from_flat(flat, indptr, K, np.exp(b - b.max())).counts
            cd = replace(cd0, logc=np.log(counts[cd0.entry_index]))
            return cd, self._solve(cd, theta)

        if self.position_bias is not None:
            b = check_position_bias(self.position_bias).copy()
            theta = np.zeros(cd0.n_params)
            cd, solution = logits_step(b, theta)
            self.objective_path_ = np.array([solution[0].sum()])
            self.n_bias_iter_ = 0
            self._store(cd, theta, solution, weight, bias=b)
            self.position_bias_ = b
            return self

        D = self.max_distance
        rng = check_random_state(self.random_state)
        best = None
        for start in range(self.n_restarts):
            if start == 0:
                b = np.zeros(D + 1)
                if self.warm_start and getattr(self, "position_bias_", np.zeros(0)).size == D + 1:
                    b = self.position_bias_.copy()
            else:
                b = np.concatenate([[0.0], rng.normal(0.0, 1.0, D)])
            result = self._fit_joint(flat, indptr, outputs, weight, cd0, b, logits_step, start)
            if best is None or result[0] < best[0]:
                best = result
        _, b, theta, cd, solution, path, n_outer = best
        if n_outer >= self.bias_max_iter:
            warnings.warn(
                f"the joint fit reached bias_max_iter={self.bias_max_iter} before bias_tol="
                f"{self.bias_tol:g}; increase bias_max_iter.", ConvergenceWarning, stacklevel=2)
        self.objective_path_ = np.array(path)
        self.n_bias_iter_ = n_outer
        self._store(cd, theta, solution, weight, bias=b, n_bias_params=D)
        self.position_bias_ = b
        return self

    def _fit_joint(self, flat, indptr, outputs, weight, cd0, b, logits_step, start):
        """One start: L-BFGS on the profile objective ``F(b) = min_W objective(W, b)``.

        Every evaluation solves the convex problem in the logits (warm-started); by the envelope
        theorem the gradient of ``F`` is the partial gradient in ``b`` at that solution.  The
        line search accepts only iterates that lower ``F``, so the recorded path never
        increases.
        """
        theta = np.zeros(cd0.n_params)
        query = flat[indptr[1:] - 1]
        grad = np.empty(b.size)
        last = {}

        def profile(free):
            bb = np.concatenate([[0.0], free])
            cd, solution = logits_step(bb, theta)
            f = float(solution[0].sum()) + 0.5 * self.alpha * float(bb @ bb)
            bias_loglik(flat, indptr, query, outputs, weight, cd.to_matrix(theta), bb, grad)
            last.update(x=free.copy(), f=f, cd=cd, solution=solution)
            return f, -grad[1:] + self.alpha * bb[1:]

        path = [profile(b[1:].copy())[0]]

        def record(intermediate_result):
            path.append(float(intermediate_result.fun))
            if self.verbose:
                print(f"start {start} iteration {len(path) - 1}: objective {path[-1]:.12g}")

        res = minimize(profile, b[1:].copy(), jac=True, method="L-BFGS-B", callback=record,
                       options={"maxiter": self.bias_max_iter,
                                "gtol": self.tol * max(1.0, float(weight.sum())),
                                "ftol": self.bias_tol})
        if not np.array_equal(last["x"], res.x):
            profile(res.x)
        b = np.concatenate([[0.0], res.x])
        return last["f"], b, theta, last["cd"], last["solution"], path, int(res.nit)
