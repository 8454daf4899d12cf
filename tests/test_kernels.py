"""Compiled kernels against finite differences and a plain numpy reference."""

import numpy as np
import pytest
from conftest import nll_reference

from ccmc_estim import _kernels
from ccmc_estim._columns import columns_from_stats
from ccmc_estim._stats import prompt_stats

_NO_NLL = np.empty(0)


def _one_column(rng, K=6, n=40, scale=1.0):
    """Prompts that all end in query 0, with outputs drawn from their own tokens."""
    prompts = [np.append(rng.integers(0, K, size=rng.integers(0, 9)), 0) for _ in range(n)]
    outputs = np.array([rng.choice(p) for p in prompts])
    weight = rng.uniform(0.2, 2.0, size=n)
    cd = columns_from_stats(prompt_stats(prompts, K), outputs, weight)
    a, b = cd.col_ptr[0], cd.col_ptr[1]
    args = (cd.indptr[a : b + 1], cd.local, cd.count, cd.y_entry, cd.weight)
    theta = scale * rng.standard_normal(cd.n_params)
    return prompts, outputs, weight, cd, args, theta


def test_nll_matches_numpy_reference(rng):
    prompts, outputs, weight, cd, args, theta = _one_column(rng, scale=2.0)
    logits = cd.to_dense(theta)
    ref = nll_reference(logits, prompts, outputs, weight)
    assert _kernels.column_nll(theta, *args) == pytest.approx(ref, rel=1e-13)
    grad = np.empty_like(theta)
    prob = np.empty(cd.local.size)
    nll = np.empty(len(prompts))
    assert _kernels.column_nll_grad(theta, *args, grad, prob, nll) == pytest.approx(ref, rel=1e-13)
    per_prompt = [
        nll_reference(logits, [p], [y], [1.0]) for p, y in zip(prompts, outputs, strict=True)
    ]
    np.testing.assert_allclose(np.sort(nll), np.sort(per_prompt), rtol=1e-12)


def test_nll_grad_from_kept_probabilities_is_the_same_to_the_last_bit(rng):
    """The entry probabilities and prompt NLLs of one evaluation give the NLL and gradient
    at other weights without exponentials: the same sums, the same bits."""
    *_, args, theta = _one_column(rng, scale=2.0)
    indptr, local, count, y_entry, _ = args
    n_prompts = indptr.size - 1
    grad, prob, nll = np.empty_like(theta), np.empty(local.size), np.empty(n_prompts)
    _kernels.column_nll_grad(theta, *args, grad, prob, nll)
    other = rng.uniform(0.1, 3.0, size=n_prompts)
    g_ref, p_ref = np.empty_like(theta), np.empty(local.size)
    f_ref = _kernels.column_nll_grad(
        theta, indptr, local, count, y_entry, other, g_ref, p_ref, _NO_NLL
    )
    g, p = np.empty_like(theta), np.empty(local.size)
    f = _kernels.column_nll_grad_from(prob, nll, indptr, local, y_entry, other, g, p)
    assert f == f_ref
    np.testing.assert_array_equal(g, g_ref)
    np.testing.assert_array_equal(p, p_ref)


def test_gradient_hessian_hvp_against_finite_differences(rng):
    _, _, _, _, args, theta = _one_column(rng)
    indptr, local, _, _, weight = args
    n = theta.size
    grad = np.empty(n)
    prob = np.empty(local.size)
    _kernels.column_nll_grad(theta, *args, grad, prob, _NO_NLL)
    h = 1e-6
    fd = np.array([
        (_kernels.column_nll(theta + h * e, *args) - _kernels.column_nll(theta - h * e, *args))
        / (2 * h)
        for e in np.eye(n)
    ])
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-7)
    hess = np.empty((n, n))
    _kernels.column_hessian(indptr, local, weight, prob, hess)
    g2 = np.empty(n)
    p2 = np.empty(local.size)
    fd_h = []
    for e in np.eye(n):
        _kernels.column_nll_grad(theta + h * e, *args, g2, p2, _NO_NLL)
        up = g2.copy()
        _kernels.column_nll_grad(theta - h * e, *args, g2, p2, _NO_NLL)
        fd_h.append((up - g2) / (2 * h))
    np.testing.assert_allclose(hess, np.array(fd_h), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hess, hess.T, atol=0)
    v = rng.standard_normal(n)
    hv = np.empty(n)
    _kernels.column_hessp(v, indptr, local, weight, prob, hv)
    np.testing.assert_allclose(hv, hess @ v, rtol=1e-12, atol=1e-12)
    # Finite difference of the gradient along v, for the product itself.
    _kernels.column_nll_grad(theta + h * v, *args, g2, p2, _NO_NLL)
    up = g2.copy()
    _kernels.column_nll_grad(theta - h * v, *args, g2, p2, _NO_NLL)
    np.testing.assert_allclose(hv, (up - g2) / (2 * h), rtol=1e-5, atol=1e-6)
    diag = np.empty(n)
    _kernels.column_hess_diag(indptr, local, weight, prob, diag)
    np.testing.assert_allclose(diag, np.diag(hess), rtol=1e-12)
    # Gauge: the all-ones direction is flat.
    np.testing.assert_allclose(hess @ np.ones(n), 0, atol=1e-12)
    assert abs(grad.sum()) < 1e-10


def test_no_overflow_at_700(rng):
    _, _, _, cd, args, theta = _one_column(rng)
    theta = rng.choice([-700.0, 700.0], size=theta.size)
    grad = np.empty_like(theta)
    prob = np.empty(cd.local.size)
    with np.errstate(over="raise", invalid="raise"):
        f = _kernels.column_nll_grad(theta, *args, grad, prob, _NO_NLL)
    assert np.isfinite(f) and np.isfinite(grad).all() and np.isfinite(prob).all()
    assert np.isfinite(_kernels.column_nll(theta, *args))


def test_prompts_far_below_the_column_maximum_match_log_space_reference(rng):
    """Scores are scaled by the column's largest logit; a prompt whose tokens all sit ~1400
    below it underflows that scale and must be scored again in log space."""
    from scipy.special import logsumexp, softmax

    prompts, outputs, weight, cd, args, theta = _one_column(rng, K=8, n=200)
    theta = rng.uniform(-700.0, -690.0, size=theta.size)
    theta[rng.integers(theta.size)] = 700.0
    grad = np.empty_like(theta)
    prob = np.empty(cd.local.size)
    f = _kernels.column_nll_grad(theta, *args, grad, prob, _NO_NLL)
    ref_f, ref_g = 0.0, np.zeros_like(theta)
    ids = cd.id_tokens[cd.id_ptr[0] : cd.id_ptr[1]]
    for p, y, w in zip(prompts, outputs, weight, strict=True):
        tok, cnt = np.unique(p, return_counts=True)
        k = np.searchsorted(ids, tok)
        z = theta[k] + np.log(cnt)
        ref_f += w * (logsumexp(z) - z[tok == y][0])
        np.add.at(ref_g, k, w * softmax(z))
        ref_g[np.searchsorted(ids, y)] -= w
    underflowing = sum(theta[np.searchsorted(ids, np.unique(p))].max() < -600 for p in prompts)
    assert underflowing > 0  # the log-space branch is exercised
    assert f == pytest.approx(ref_f, rel=1e-12)
    np.testing.assert_allclose(grad, ref_g, rtol=1e-9, atol=1e-9)
    assert _kernels.column_nll(theta, *args) == pytest.approx(ref_f, rel=1e-12)
    # The mixture's E-step scores the same prompts by the same arithmetic, underflow included.
    out, entry, nll = np.empty(len(prompts)), np.empty(cd.local.size), np.empty(len(prompts))
    _kernels.layout_output_proba(np.array([0]), cd.layout, theta, out, entry, nll)
    np.testing.assert_array_equal(entry, prob)
    np.testing.assert_array_equal(out, prob[cd.y_entry])
    ref_nll = [logsumexp(theta[np.searchsorted(ids, np.unique(p))] + np.log(np.unique(
        p, return_counts=True)[1])) - theta[np.searchsorted(ids, y)] - np.log(np.sum(p == y))
        for p, y in zip(prompts, outputs, strict=True)]
    np.testing.assert_allclose(nll, ref_nll, rtol=1e-12)


def _mixture_loss_reference(theta, prompts, outputs, weight, cd, log_odds):
    """``sum_i w_i (-log(C_i + exp(t_i)))`` with ``C_i`` the CCMC probability by brute force:
    the order of ``log_odds`` is the layout's, which keeps the prompts' order in one column."""
    from conftest import nll_reference

    logits = cd.to_dense(theta)
    c = np.array([np.exp(-nll_reference(logits, [p], [y], [1.0]))
                  for p, y in zip(prompts, outputs, strict=True)])
    return float(-(weight * np.log(c + np.exp(log_odds))).sum())


def _mixture_eval(theta, args, log_odds, sentinel=False):
    """The mixture's loss by :func:`column_mixture_nll_grad`, checked against the same from
    kept probabilities (:func:`column_mixture_grad`), which must give the same bits."""
    indptr, local, count, y_entry, weight = args
    n_prompts = indptr.size - 1
    prob, nll = np.empty(local.size), np.empty(n_prompts)
    grad, w_rho, w_var = np.empty_like(theta), np.empty(n_prompts), np.empty(n_prompts)
    f = _kernels.column_mixture_nll_grad(theta, indptr, local, count, y_entry, weight, log_odds,
                                         sentinel, grad, prob, nll, w_rho, w_var)
    kept = [np.empty_like(grad), np.empty(n_prompts), np.empty(n_prompts)]
    assert f == _kernels.column_mixture_grad(nll, log_odds, sentinel, indptr, local, y_entry,
                                             weight, prob, *kept)
    for x, y in zip((grad, w_rho, w_var), kept, strict=True):
        np.testing.assert_array_equal(x, y)
    return f, grad, prob, w_rho, w_var


def test_mixture_loss_gradient_and_hvp_against_brute_force_and_finite_differences(rng):
    """The copy-and-generate mixture's loss in the copy logits (ECME's step): the value by
    brute force, the gradient and the exact (not convex) Hessian-vector product by finite
    differences."""
    prompts, outputs, weight, cd, args, theta = _one_column(rng, scale=1.5)
    indptr, local, _, y_entry, _ = args
    log_odds = rng.uniform(-4.0, 2.0, size=indptr.size - 1)
    f, grad, prob, w_rho, w_var = _mixture_eval(theta, args, log_odds)
    ref = _mixture_loss_reference(theta, prompts, outputs, weight, cd, log_odds)
    assert f == pytest.approx(ref, rel=1e-12)
    h = 1e-6
    n = theta.size
    fd = np.array([(_mixture_eval(theta + h * e, args, log_odds)[0]
                    - _mixture_eval(theta - h * e, args, log_odds)[0]) / (2 * h)
                   for e in np.eye(n)])
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-7)
    # The weights of the Hessian: w rho and w rho (1 - rho), rho the posterior copy
    # probability C / (C + exp(t)).
    c = prob[y_entry]  # the CCMC probability of each prompt's output
    rho = c / (c + np.exp(log_odds))
    np.testing.assert_allclose(w_rho, weight * rho, rtol=1e-12)
    np.testing.assert_allclose(w_var, weight * rho * (1 - rho), rtol=1e-10)
    hess = np.array([(_mixture_eval(theta + h * e, args, log_odds)[1]
                      - _mixture_eval(theta - h * e, args, log_odds)[1]) / (2 * h)
                     for e in np.eye(n)])
    v = rng.standard_normal(n)
    hv = np.empty(n)
    _kernels.column_mixture_hessp(v, indptr, local, y_entry, w_rho, w_var, False, prob, hv)
    np.testing.assert_allclose(hv, hess @ v, rtol=1e-5, atol=1e-6)
    # Not the CCMC Hessian at the weights w rho (EM's): the hidden information is missing
    # from that one.
    em = np.empty(n)
    _kernels.column_hessp(v, indptr, local, w_rho, prob, em)
    assert np.abs(em - hess @ v).max() > 1e-3 * np.abs(hv).max()
    # Odds of 0 (log-odds -inf): the CCMC's own loss and gradient (EM's M-step), bit for bit.
    f0, g0, *_ = _mixture_eval(theta, args, np.full(indptr.size - 1, -np.inf))
    g_ref, p_ref = np.empty_like(theta), np.empty(local.size)
    assert f0 == _kernels.column_nll_grad(theta, *args, g_ref, p_ref, _NO_NLL)
    np.testing.assert_array_equal(g0, g_ref)
    # No exponent overflows at odds of exp(+-700).
    with np.errstate(over="raise", invalid="raise"):
        for t in (-700.0, 700.0):
            f, grad, *_ = _mixture_eval(theta, args, np.full(indptr.size - 1, t))
            assert np.isfinite(f) and np.isfinite(grad).all()


def test_sentinel_mixture_loss_against_brute_force_and_finite_differences(rng):
    """The mixture with a sentinel (the copy weight of a prompt is its attention against a
    sentinel logit, the column's largest token): the value by brute force, the gradient and
    the exact Hessian-vector product by finite differences, the kept-probability path to
    the last bit."""
    from scipy.special import logsumexp

    K = 6  # the sentinel is token K, in every prompt; outputs are tokens or the sentinel
    prompts = [np.append(rng.integers(0, K, size=rng.integers(0, 8)), [K, 0]) for _ in range(60)]
    outputs = np.array([rng.choice(p[:-2]) if p.size > 2 and rng.random() < 0.7 else K
                        for p in prompts])
    weight = rng.uniform(0.2, 2.0, size=len(prompts))
    cd = columns_from_stats(prompt_stats(prompts, K + 1), outputs, weight)
    a, b = cd.col_ptr[0], cd.col_ptr[1]
    indptr = cd.indptr[a : b + 1]
    args = (indptr, cd.local, cd.count, cd.y_entry, cd.weight)
    theta = 1.5 * rng.standard_normal(cd.n_params)
    log_b = np.log(rng.uniform(0.01, 0.5, size=len(prompts)))
    # Layout order is the prompts' order in one column; an output that is the sentinel is
    # generated for sure (log-odds -inf: its loss is the sentinel's CCMC loss).
    covered = outputs != K
    log_odds = np.where(covered, log_b, -np.inf)
    assert (cd.id_tokens[cd.id_ptr[1] - 1] == K) and (~covered).any()
    ids = cd.id_tokens[cd.id_ptr[0] : cd.id_ptr[1]]

    def reference(th):
        out = 0.0
        for p, y, w, lb, cov in zip(prompts, outputs, weight, log_b, covered, strict=True):
            tok, cnt = np.unique(p, return_counts=True)
            z = th[np.searchsorted(ids, tok)] + np.log(cnt)
            lse = logsumexp(z)
            if cov:
                out -= w * (np.logaddexp(z[tok == y][0], th[-1] + lb) - lse)
            else:
                out -= w * (th[-1] - lse)
        return out

    f, grad, prob, _, w_var = _mixture_eval(theta, args, log_odds, sentinel=True)
    assert f == pytest.approx(reference(theta), rel=1e-12)
    h = 1e-6
    n = theta.size
    fd = np.array([(reference(theta + h * e) - reference(theta - h * e)) / (2 * h)
                   for e in np.eye(n)])
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-7)
    hess = np.array([(_mixture_eval(theta + h * e, args, log_odds, True)[1]
                      - _mixture_eval(theta - h * e, args, log_odds, True)[1]) / (2 * h)
                     for e in np.eye(n)])
    v = rng.standard_normal(n)
    hv = np.empty(n)
    _kernels.column_mixture_hessp(v, indptr, cd.local, cd.y_entry, cd.weight[a:b], w_var, True,
                                  prob, hv)
    np.testing.assert_allclose(hv, hess @ v, rtol=1e-5, atol=1e-6)
    # Without the sentinel the same numbers are another loss (the per-query mixture's).
    assert _mixture_eval(theta, args, log_odds)[0] != pytest.approx(f, rel=1e-6)


def test_mixture_em_steps_against_numpy(rng):
    """EM steps for the copy weights and the base chain at fixed copy probabilities: the
    posterior copy probability of each pair, the expected counts and the copy weights'
    closed form, by plain numpy."""
    nq, n_keys, n = 5, 12, 300
    key_col = np.sort(rng.integers(0, nq, n_keys))
    key = rng.integers(0, n_keys, n)
    q = key_col[key]
    copy = np.where(rng.random(n) < 0.7, rng.uniform(0, 1, n), 0.0)  # 0: cannot be copied
    copy[:3] = 1e-320  # copyable in principle, underflowed
    w = rng.uniform(0.1, 2.0, n)
    beta = rng.uniform(0.5, 3.0, nq)
    u_key = rng.uniform(0.01, 0.2, n_keys)  # the unigram probability of each key's output
    u = u_key[key]
    n_q = np.bincount(q, weights=w, minlength=nq) + np.array([0, 0, 1.5, 0, 0])
    a, b = 1.0, 2.0
    lam0 = rng.uniform(0.05, 0.95, nq)
    c0 = rng.uniform(0, 5, n_keys)

    own = rng.uniform(0.05, 0.95, n)  # each pair's own copy weight (a sentinel's attention)

    def numpy_steps(n_steps, shared, sentinel, tol=0.0):
        # A column stops once a step moves none of its counts, nor its copy weight times its
        # weight of copyable pairs, by more than tol times sum c + beta (before the step).
        lam, c, wr = lam0.copy(), c0.copy(), np.full(nq, np.nan)
        done, steps = np.zeros(nq, bool), np.zeros(nq, int)
        for _ in range(n_steps):
            total = np.bincount(key_col, weights=c, minlength=nq)
            lam_i = own if sentinel else lam[q]
            cp = lam_i * copy
            base = (1 - lam_i) * (c[key] + beta[q] * u) / (total[q] + beta[q])
            r = cp / (cp + base)
            wr_new = np.bincount(q, weights=w * r, minlength=nq)
            c_new = np.bincount(key, weights=w * (1 - r), minlength=n_keys)
            moved = np.zeros(nq)
            np.maximum.at(moved, key_col, np.abs(c_new - c))
            if not (shared or sentinel):
                lam_new = (wr_new + a) / (n_q + a + b)
                moved = np.maximum(moved, np.abs(lam_new - lam) * n_q)
                lam = np.where(done, lam, lam_new)
            wr = np.where(done, wr, wr_new)
            c = np.where(done[key_col], c, c_new)
            steps += ~done
            done |= moved <= tol * (total + beta)
        return lam, c, wr, steps

    act = np.flatnonzero(copy > 0)
    act = act[np.argsort(key[act], kind="stable")]
    ptr = np.concatenate([[0], np.cumsum(np.bincount(key[act], minlength=n_keys))])
    fixed = np.setdiff1d(np.arange(n), act)
    c_fixed = np.bincount(key[fixed], weights=w[fixed], minlength=n_keys)
    key_ptr = np.concatenate([[0], np.cumsum(np.bincount(key_col, minlength=nq))])

    def kernel_steps(n_steps, tol, pair_copy, pair_gen, shared, split):
        lam, c, wr = lam0.copy(), c0.copy(), np.full(nq, np.nan)
        for cols in split:
            _kernels.mixture_em_steps(cols, n_steps, tol, key_ptr, ptr, w[act], pair_copy,
                                      pair_gen, beta[key_col] * u_key, beta, n_q, a, b, shared,
                                      lam, c, c_fixed, wr)
        return lam, c, wr

    for n_steps, shared, sentinel in ((1, True, False), (4, False, False), (4, True, False),
                                      (4, False, True)):
        lam_ref, c_ref, wr_ref, _ = numpy_steps(n_steps, shared, sentinel)
        pair_copy = (own * copy)[act] if sentinel else copy[act]
        pair = (pair_copy, (1 - own)[act] if sentinel else np.empty(0))
        results = []
        for split in ([np.arange(nq)], [np.arange(1, nq, 2), np.arange(0, nq, 2)]):
            lam, c, wr = kernel_steps(n_steps, 0.0, *pair, shared, split)
            np.testing.assert_allclose(wr, wr_ref, rtol=1e-12)
            np.testing.assert_allclose(c, c_ref, rtol=1e-12)
            np.testing.assert_allclose(lam, lam_ref, rtol=1e-12)
            results.append((lam, c, wr))
        # Columns do not interact: the threads' split of them changes no bit.
        for x, y in zip(*results, strict=True):
            np.testing.assert_array_equal(x, y)
        # A tolerance stops each column where the rule says: after its first step at any
        # tolerance, after different numbers of steps at a small one.
        whole = [np.arange(nq)]
        for x, y in zip(kernel_steps(n_steps, np.inf, *pair, shared, whole),
                        kernel_steps(1, 0.0, *pair, shared, whole), strict=True):
            np.testing.assert_array_equal(x, y)
        *ref, steps = numpy_steps(400, shared, sentinel, tol=1e-4)
        assert np.unique(steps[np.isin(np.arange(nq), key_col)]).size > 1  # stops differ
        assert steps.max() < 400
        for x, y in zip(kernel_steps(400, 1e-4, *pair, shared, whole), ref, strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-12)


@pytest.mark.parametrize("solver", ["newton-cg", "newton"])
def test_mixture_solve_reaches_the_minimum_of_a_generic_optimiser(rng, solver):
    """``solve_columns(log_odds=...)`` (ECME's step, on a loss that is not convex) ends where
    scipy's L-BFGS on the brute-force loss ends, from the same start: truncated Newton on
    the exact Hessian, or dense steps on EM's positive definite part of it."""
    from scipy.optimize import minimize

    from ccmc_estim._solvers import CONVERGED, solve_columns

    prompts, outputs, weight, cd, _, theta0 = _one_column(rng, n=60)
    log_odds = rng.uniform(-3.0, 1.0, size=len(prompts))
    alpha = 0.3

    def objective(t):
        return (_mixture_loss_reference(t, prompts, outputs, weight, cd, log_odds)
                + 0.5 * alpha * t @ t)

    theta = theta0.copy()
    sol = solve_columns(cd, theta, alpha=alpha, tol=1e-12, max_iter=100, solver=solver,
                        n_jobs=1, info_max=-1, log_odds=log_odds)
    ref = minimize(objective, theta0, method="L-BFGS-B", options={"ftol": 1e-15, "gtol": 1e-10})
    assert sol.objective[0] + 0.0 == pytest.approx(objective(theta), rel=1e-12)
    assert objective(theta) <= ref.fun + 1e-9 * abs(ref.fun)
    np.testing.assert_allclose(theta, ref.x, atol=1e-4)
    # Newton's quadratic convergence with the exact Hessian; linear with EM's part of it.
    assert sol.status[0] == CONVERGED
    assert sol.n_iter[0] <= (12 if solver == "newton-cg" else 60)
    # Compiled code does not check bounds: a wrong size is refused, as is the CCMC's
    # information, which is not the mixture's.
    for bad, info_max in ((log_odds[:-1], -1), (log_odds, 0)):
        with pytest.raises(ValueError, match="log_odds"):
            solve_columns(cd, theta0.copy(), alpha=alpha, tol=1e-8, max_iter=5, solver=solver,
                          n_jobs=1, info_max=info_max, log_odds=bad)
