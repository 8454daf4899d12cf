"""Bad inputs and extreme numbers against every public entry point (issue 14).

Every malformed prompt, weight or parameter must be refused with a ValueError or TypeError that
says what is wrong: never another exception, a crash in compiled code, a NaN result or a silent
change.  Valid but extreme inputs (huge weights, tiny tolerances, huge windows, logits up to
1e4) must give the answer the mathematics gives.  Everything runs in this process: a fault
that reaches compiled code unchecked crashes the run.
"""

import copy
import pickle
import warnings

import joblib
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import sparse
from scipy.special import log_softmax, logsumexp

import ccmc_estim as ce
from ccmc_estim import (
    CCMC,
    CCMCEstimator,
    MixtureCCMCEstimator,
    PositionalCCMC,
    PositionalCCMCEstimator,
    Vocabulary,
    attention_forward,
    collapse_profile,
    generate,
    generate_batch,
    identifiability_report,
    in_prompt,
    make_ccmc_data,
    trajectory_pairs,
)
from ccmc_estim._stats import PromptStats
from ccmc_estim.consistency import loglog_slope, sample_complexity
from ccmc_estim.diagnostics import graph_components
from ccmc_estim.testing import (
    extreme_logits,
    invalid_numbers,
    malformed_prompts,
    malformed_sample_weights,
)

K = 3
X, Y, TRUTH = make_ccmc_data(60, K, 5, random_state=0)
FIXED_BIAS = [0.0, -0.5, -1.0]


def refused(call):
    """Run ``call``; it must raise a ValueError or TypeError with a message (any other
    exception propagates and fails the test)."""
    with warnings.catch_warnings():
        # A refusal is an exception, not a warning about NaNs computed on the way.
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises((ValueError, TypeError)) as info:
            call()
    assert str(info.value).strip(), f"{type(info.value).__name__} without a message"
    return info.value


@pytest.fixture(scope="module")
def fitted():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "ccmc": CCMCEstimator().fit(X, Y),
            "positional": PositionalCCMCEstimator(max_distance=2, bias_max_iter=5).fit(X, Y),
            "mixture": MixtureCCMCEstimator().fit(X, Y),
        }


def _prompt_calls(fitted):
    """Every public function or method that takes prompts, as ``name -> f(prompts)``."""
    model = CCMC(np.zeros((K, K)))
    pmodel = PositionalCCMC(np.zeros((K, K)), FIXED_BIAS)
    y = np.zeros(2, np.int64)
    calls = {
        "CCMC.predict_proba": model.predict_proba,
        "CCMC.predict_log_proba": model.predict_log_proba,
        "CCMC.predict": model.predict,
        "CCMC.sample": lambda p: model.sample(p, random_state=0),
        "CCMC.log_likelihood": lambda p: model.log_likelihood(p, y),
        "PositionalCCMC.predict_proba": pmodel.predict_proba,
        "PositionalCCMC.sample": lambda p: pmodel.sample(p, random_state=0),
        "identifiability_report": lambda p: identifiability_report(p, n_tokens=K),
        "identifiability_report(outputs)": lambda p: identifiability_report(p, y, n_tokens=K),
        "in_prompt": lambda p: in_prompt(p, y),
        "generate_batch": lambda p: generate_batch(model, p, 3, random_state=0),
        "attention_forward": lambda p: attention_forward(np.eye(K), np.zeros((K, K)),
                                                         np.eye(K), p),
        "CCMCEstimator.fit": lambda p: CCMCEstimator(n_tokens=K).fit(p, y),
        "PositionalCCMCEstimator.fit": lambda p: PositionalCCMCEstimator(
            n_tokens=K, bias_max_iter=2).fit(p, y),
        "MixtureCCMCEstimator.fit": lambda p: MixtureCCMCEstimator(n_tokens=K).fit(p, y),
        "compare_models(test)": lambda p: ce.compare_models(fitted["ccmc"], X, Y, p, y),
        "compare_models(train)": lambda p: ce.compare_models(fitted["ccmc"], p, y, X, Y),
    }
    for name, est in fitted.items():
        calls[f"{name}.predict"] = est.predict
        calls[f"{name}.predict_proba"] = est.predict_proba
        calls[f"{name}.predict_log_proba"] = est.predict_log_proba
        calls[f"{name}.score"] = lambda p, est=est: est.score(p, y)
        calls[f"{name}.score_samples"] = lambda p, est=est: est.score_samples(p, y)
    return calls


def _single_prompt_calls():
    """Functions that take one prompt (a 1-D sequence), as ``name -> f(prompt)``."""
    model = CCMC(np.zeros((K, K)))
    pmodel = PositionalCCMC(np.zeros((K, K)), FIXED_BIAS)
    return {
        "generate": lambda p: generate(model, p, 3, random_state=0),
        "generate(positional)": lambda p: generate(pmodel, p, 3, window=2, random_state=0),
        "winner_analysis": lambda p: ce.winner_analysis(model, p),
        "learn_from_trajectory": lambda p: ce.learn_from_trajectory(model, p, [2, 4]),
        "trajectory_pairs(prompt)": lambda p: trajectory_pairs(p, [0, 1]),
        "trajectory_pairs(trajectory)": lambda p: trajectory_pairs([0], p),
        "collapse_profile": lambda p: collapse_profile(p, n_tokens=K),
        "collapse_profile(prompt)": lambda p: collapse_profile([0, 1], p, n_tokens=K),
    }


# --------------------------------------------------------------------------- prompts
@given(bad=malformed_prompts(n_tokens=K))
def test_every_prompt_entry_point_refuses_malformed_prompts(fitted, bad):
    for name, call in _prompt_calls(fitted).items():
        try:
            refused(lambda call=call: call(bad))
        except BaseException as exc:
            raise AssertionError(f"{name} on {bad!r}") from exc


@given(bad=malformed_prompts(n_tokens=K))
def test_every_single_prompt_entry_point_refuses_malformed_prompts(bad):
    # A single prompt: the rows of a malformed set that are themselves malformed.
    flat = bad[-1] if isinstance(bad, list) and bad and isinstance(bad[-1], list) else bad

    def ids_below(top):
        return isinstance(flat, list) and bool(flat) and all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t < top for t in flat)

    if ids_below(K):
        return  # a valid single prompt (only the other row of the set was bad)
    for name, call in _single_prompt_calls().items():
        if name.startswith("trajectory_pairs") and ids_below(K + 10**6 + 1):
            continue  # no vocabulary there: any id of a compact size is valid
        try:
            refused(lambda call=call: call(flat))
        except BaseException as exc:
            raise AssertionError(f"{name} on {flat!r}") from exc


def test_internal_prompt_statistics_never_reach_compiled_code(fitted):
    # A hand-built PromptStats with a token id of 1e8 once segfaulted predict_log_proba.
    stats = PromptStats(K, np.array([0, 1]), np.array([10**8], np.int32), np.ones(1),
                        np.array([0], np.int32))
    for name, call in _prompt_calls(fitted).items():
        try:
            refused(lambda call=call: call(stats))
        except BaseException as exc:
            raise AssertionError(name) from exc


def test_malformed_sparse_logits_are_refused_before_any_use():
    # Compressed arrays whose indices leave the matrix: scipy checks them only on request, and
    # toarray, generation and the transition operator used to segfault on them.
    for idx in (10**8, K, -5):
        for fmt in (sparse.csc_array, sparse.csr_array):
            m = fmt((np.ones(1), np.array([idx]), np.array([0, 1, 1, 1])), shape=(K, K))
            refused(lambda m=m: CCMC(m))
    decreasing = sparse.csc_array((np.ones(2), np.array([0, 1]), np.array([0, 2, 1, 2])),
                                  shape=(K, K), copy=False)
    refused(lambda: CCMC(decreasing))


# --------------------------------------------------------------------------- weights
@given(data=st.data())
def test_fit_and_score_refuse_malformed_sample_weights(fitted, data):
    n = len(Y)
    bad = data.draw(malformed_sample_weights(n))
    estimators = [CCMCEstimator(), PositionalCCMCEstimator(max_distance=1, bias_max_iter=2),
                  PositionalCCMCEstimator(position_bias=FIXED_BIAS), MixtureCCMCEstimator()]
    for est in estimators:
        refused(lambda est=est: est.fit(X, Y, sample_weight=bad))
    for est in fitted.values():
        refused(lambda est=est: est.score(X, Y, sample_weight=bad))


@pytest.mark.parametrize("c", [1e-300, 1e100, 1e200, 1e306])
def test_any_finite_weights_fit_the_same_logits(c):
    # Weights c w with penalty c alpha minimise c times the objective of (w, alpha): the same
    # logits for every c.  Huge weights once overflowed (objective 1.7e308, LinAlgError).
    w = np.random.default_rng(1).uniform(0.5, 1.5, len(Y))
    ref = CCMCEstimator(alpha=1.0).fit(X, Y, sample_weight=w)
    est = CCMCEstimator(alpha=c).fit(X, Y, sample_weight=c * w)
    np.testing.assert_allclose(est.logits_, ref.logits_, atol=1e-9)
    assert not np.isnan([est.objective_, est.log_likelihood_, est.aic_, est.bic_]).any()
    if c <= 1e200:
        np.testing.assert_allclose(est.objective_, c * ref.objective_, rtol=1e-9)
        assert np.isfinite([est.aic_, est.bic_]).all()
    # alpha = 0: the logits of the MLE do not depend on the scale of the weights at all.
    mle = CCMCEstimator(alpha=0.0).fit(X, Y, sample_weight=w)
    np.testing.assert_allclose(
        CCMCEstimator(alpha=0.0).fit(X, Y, sample_weight=c * w).logits_, mle.logits_,
        atol=1e-7)


@pytest.mark.parametrize("c", [1e200, 1e306])
def test_positional_fit_with_huge_weights(c):
    w = np.random.default_rng(2).uniform(0.5, 1.5, len(Y))
    for kwargs in ({"max_distance": 2, "bias_max_iter": 20}, {"position_bias": FIXED_BIAS}):
        ref = PositionalCCMCEstimator(alpha=1.0, **kwargs).fit(X, Y, sample_weight=w)
        est = PositionalCCMCEstimator(alpha=c, **kwargs).fit(X, Y, sample_weight=c * w)
        np.testing.assert_allclose(est.logits_, ref.logits_, atol=1e-7)
        np.testing.assert_allclose(est.position_bias_, ref.position_bias_, atol=1e-7)


def test_score_is_scale_free_in_the_weights(fitted):
    w = np.random.default_rng(3).uniform(0.5, 1.5, len(Y))
    for est in fitted.values():
        ref = est.score(X, Y, sample_weight=w)
        for c in (1e-300, 1e300, 1.7e308 / w.max()):
            assert est.score(X, Y, sample_weight=c * w) == pytest.approx(ref, rel=1e-12)
        assert est.score(X, Y, sample_weight=np.full(len(Y), 1e308)) == pytest.approx(
            est.score(X, Y), rel=1e-12)


def test_information_criteria_never_nan_when_the_weights_overflow():
    # One token per prompt: no free parameter, and a total weight beyond float64 (inf * 0).
    est = CCMCEstimator().fit([[0, 0], [1, 1]] * 3, [0, 1] * 3,
                              sample_weight=np.full(6, 1e308))
    assert est.n_free_params_ == 0
    assert not np.isnan([est.aic_, est.bic_, est.objective_]).any()


# --------------------------------------------------------------------------- parameters
def _estimator_params():
    """(estimator class, parameter, constraint of invalid_numbers)."""
    common = [("alpha", {"low": 0.0}), ("tol", {"low": 0.0}),
              ("max_iter", {"integer": True, "low": 1, "high": 10**9}),
              ("n_tokens", {"integer": True, "low": 1, "high": 2**31 - 1}),
              ("verbose", {"integer": True, "low": 0})]
    positional = [("max_distance", {"integer": True, "low": 0, "high": 10**6}),
                  ("n_restarts", {"integer": True, "low": 1}),
                  ("bias_max_iter", {"integer": True, "low": 1}),
                  ("bias_tol", {"low": 0.0})]
    return ([(CCMCEstimator, p, c) for p, c in common]
            + [(PositionalCCMCEstimator, p, c) for p, c in common + positional]
            + [(MixtureCCMCEstimator, p, c) for p, c in common[:2]])


@pytest.mark.parametrize(("cls", "param", "spec"), _estimator_params(),
                         ids=lambda v: getattr(v, "__name__", v) if not isinstance(v, dict)
                         else "")
@given(data=st.data())
def test_estimators_refuse_invalid_parameters(cls, param, spec, data):
    value = data.draw(invalid_numbers(**spec))
    if param in ("alpha", "tol", "bias_tol") and isinstance(value, float) and value == 0.0:
        return
    if param == "verbose" and isinstance(value, (bool, np.bool_)):
        return  # verbose=True is documented
    if param == "n_tokens" and value is None:
        return
    refused(lambda: cls(**{param: value}).fit(X, Y))


def _function_params(fitted):
    """``name -> (f(value), invalid_numbers spec)`` for the numeric parameters of the public
    functions and methods."""
    model = CCMC(np.zeros((K, K)))
    report = identifiability_report(X, Y)
    profile = collapse_profile([0, 1, 1, 2], window=2)
    est = fitted["ccmc"]
    E = np.eye(K)
    integer = {"integer": True}
    return {
        "generate(n_steps)": (lambda v: generate(model, [0, 1], v), {**integer, "low": 0}),
        "generate(window)": (lambda v: generate(model, [0, 1], 3, window=v),
                             {**integer, "low": 1}),
        "generate_batch(n_steps)": (lambda v: generate_batch(model, [[0, 1]], v),
                                    {**integer, "low": 0}),
        "generate_batch(window)": (lambda v: generate_batch(model, [[0, 1]], 3, window=v),
                                   {**integer, "low": 1}),
        "trajectory_pairs(window)": (lambda v: trajectory_pairs([0], [1, 2], window=v),
                                     {**integer, "low": 1}),
        "collapse_profile(window)": (lambda v: collapse_profile([0, 1], window=v),
                                     {**integer, "low": 1}),
        "collapse_profile(ngram)": (lambda v: collapse_profile([0, 1], ngram=v),
                                    {**integer, "low": 1}),
        "collapse_profile(n_points)": (lambda v: collapse_profile([0, 1], n_points=v),
                                       {**integer, "low": 1}),
        "collapse_profile(n_tokens)": (lambda v: collapse_profile([0, 1], n_tokens=v),
                                       {**integer, "low": 2, "high": 2**31 - 1}),
        "CollapseProfile.summary(rows)": (lambda v: profile.summary(rows=v),
                                          {**integer, "low": 1}),
        "IdentifiabilityReport.summary(max_rows)": (lambda v: report.summary(max_rows=v),
                                                    {**integer, "low": 0}),
        "identifiability_report(n_tokens)": (lambda v: identifiability_report(X, n_tokens=v),
                                             {**integer, "low": K, "high": 2**31 - 1}),
        "confidence_intervals(level)": (lambda v: est.confidence_intervals(level=v),
                                        {"low": 1e-300, "high": 1.0}),
        "compare_models(smoothing)": (lambda v: ce.compare_models(est, X, Y, X, Y,
                                                                  smoothing=v),
                                      {"low": 1e-300}),
        "make_ccmc_data(n_prompts)": (lambda v: make_ccmc_data(v, K, 3), {**integer, "low": 1}),
        "make_ccmc_data(n_tokens)": (lambda v: make_ccmc_data(5, v, 3),
                                     {**integer, "low": 1, "high": 2**31 - 1}),
        "make_ccmc_data(prompt_length)": (lambda v: make_ccmc_data(5, K, v),
                                          {**integer, "low": 1}),
        "make_ccmc_data(logit_scale)": (lambda v: make_ccmc_data(5, K, 3, logit_scale=v),
                                        {"low": 0.0}),
        "sample_complexity(n_repeats)": (lambda v: sample_complexity([2], [5], n_repeats=v),
                                         {**integer, "low": 1}),
        "sample_complexity(n_test)": (lambda v: sample_complexity([2], [5], n_test=v),
                                      {**integer, "low": 1}),
        "sample_complexity(alpha)": (lambda v: sample_complexity([2], [5], alpha=v),
                                     {"low": 0.0}),
        "sample_complexity(n_tokens_list)": (lambda v: sample_complexity([v], [5]),
                                             {**integer, "low": 1}),
        "sample_complexity(n_prompts_list)": (lambda v: sample_complexity([2], [v]),
                                              {**integer, "low": 1}),
        "graph_components(n_nodes)": (lambda v: graph_components(v, [], []),
                                      {**integer, "low": 0}),
        "CCMC.to_attention(d)": (lambda v: model.to_attention(d=v), {**integer, "low": K}),
        "CCMC.from_attention(atol)": (lambda v: CCMC.from_attention(E, E, C=E, atol=v),
                                      {"low": 0.0}),
        "CCMC.from_attention(scale)": (lambda v: CCMC.from_attention(E, E, scale=v), {}),
        "Vocabulary(max_size)": (lambda v: Vocabulary(max_size=v).fit([["a", "b"]]),
                                 {**integer, "low": 1}),
        "Vocabulary(min_count)": (lambda v: Vocabulary(min_count=v).fit([["a", "b"]]),
                                  {**integer, "low": 1}),
        "prompts_from_sequences(context_length)": (
            lambda v: ce.prompts_from_sequences([[0, 1, 2, 0]], v), {**integer, "low": 1}),
    }


def _allowed(name, value):
    """Values that ``invalid_numbers`` draws but a parameter legitimately accepts."""
    if name in ("generate(window)", "generate_batch(window)", "trajectory_pairs(window)",
                "CCMC.to_attention(d)") and value is None:
        return True
    if name == "CCMC.from_attention(scale)":
        return isinstance(value, float) and np.isfinite(value)
    return False


@given(data=st.data())
def test_public_functions_refuse_invalid_parameters(fitted, data):
    calls = _function_params(fitted)
    name = data.draw(st.sampled_from(sorted(calls)))
    call, spec = calls[name]
    value = data.draw(invalid_numbers(**spec))
    if _allowed(name, value):
        return
    try:
        refused(lambda: call(value))
    except BaseException as exc:
        raise AssertionError(f"{name} accepted or crashed on {value!r}") from exc


def test_every_function_parameter_refuses_nan_and_booleans(fitted):
    # The same, exhaustively for the two classic leaks (NaN read as a number, True as 1).
    for name, (call, _) in _function_params(fitted).items():
        for value in (np.nan, True):
            if _allowed(name, value):
                continue
            try:
                refused(lambda call=call, value=value: call(value))
            except BaseException as exc:
                raise AssertionError(f"{name} on {value!r}") from exc


def test_model_constructors_refuse_bad_numbers():
    for bad in (np.full((K, K), np.nan), np.full((K, K), np.inf), np.eye(K) * (1 + 1j),
                np.eye(K, dtype=bool), np.zeros((K, K + 1)), np.zeros((0, 0)),
                np.zeros((K, K, 1)), np.array([["a"] * K] * K), 1.0):
        refused(lambda bad=bad: CCMC(bad))
        refused(lambda bad=bad: CCMC(sparse.csc_array(np.atleast_2d(bad)))
                if np.ndim(bad) == 2 and bad.dtype.kind in "biufc" else CCMC(bad))
    for bias in ([], [0.0, np.nan], [0.0, np.inf], [0, 1j], [[0.0, 1.0]], 1.0, [0.0, 800.0],
                 [True, False], ["a"]):
        refused(lambda bias=bias: PositionalCCMC(np.eye(K), bias))
        refused(lambda bias=bias: PositionalCCMCEstimator(position_bias=bias).fit(X, Y))
        refused(lambda bias=bias: attention_forward(np.eye(K), np.eye(K), np.eye(K), X,
                                                    position_bias=bias)
                if bias not in (1.0, [0.0, 800.0]) else refused_anyway())
    E = np.eye(K)
    for C in (np.full((K, K), np.nan), np.full((K, K), np.inf), E * (1 + 1j), 2 * E):
        refused(lambda C=C: CCMC.from_attention(E, E, C=C))
    refused(lambda: CCMC.from_attention(E, E, C=E, atol=np.nan))


def refused_anyway():
    raise ValueError("a scalar bias or a huge spread is legal in attention_forward")


def test_sample_weights_of_wrong_kind_in_every_estimator():
    for w in (-1.0, np.nan, np.inf, 1j, "1", True):
        for est in (CCMCEstimator(), PositionalCCMCEstimator(position_bias=FIXED_BIAS)):
            refused(lambda est=est, w=w: est.fit(X, Y, sample_weight=w))


def test_outputs_and_random_states(fitted):
    model = CCMC(np.zeros((K, K)))
    for y in ([0.5, 1], [True, False], [[0, 1]], [np.nan, 0], [0], [0, 1, 2], [-1, 0], [K, 0],
              "01", None, [1j, 0]):
        refused(lambda y=y: model.log_likelihood([[0, 1], [1, 0]], y))
        refused(lambda y=y: CCMCEstimator().fit([[0, 1], [1, 0]], y))
    for rs in ("a", 1.5, -1, [object()]):
        refused(lambda rs=rs: model.sample([[0, 1]], random_state=rs))
        refused(lambda rs=rs: generate(model, [0, 1], 3, random_state=rs))


def test_loglog_slope_refuses_what_has_no_log():
    for n, err in (([1, 2], [np.nan, 1.0]), ([1, 1], [1.0, 2.0]), ([1, 2], [0.0, 0.0]),
                   ([0, 2], [1.0, 1.0]), ([1, 2, 3], [1.0, 1.0]), ([[1, 2]], [[1.0, 1.0]])):
        refused(lambda n=n, err=err: loglog_slope(n, err))
    assert loglog_slope([1, 10], [1.0, 0.1]) == pytest.approx(-1.0)


# --------------------------------------------------------------------------- extreme but valid
def test_tiny_tolerance_stops_at_rounding_not_at_max_iter():
    # tol=1e-300 is below anything float64 resolves: every column must stop on "no decrease"
    # within a few Newton steps, at the solution of a realistic tolerance, without a warning.
    for solver in ("newton", "newton-cg"):
        for alpha in (1.0, 1e-3):
            ref = CCMCEstimator(alpha=alpha, solver=solver, tol=1e-12).fit(X, Y)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                est = CCMCEstimator(alpha=alpha, solver=solver, tol=1e-300, max_iter=100)
                est.fit(X, Y)
            assert est.n_iter_.max() <= ref.n_iter_.max() + 5
            np.testing.assert_allclose(est.logits_, ref.logits_, atol=1e-8)


def test_huge_windows_equal_a_growing_context():
    # A window at least as long as the whole context changes nothing: it must neither allocate
    # by the window (MemoryError) nor overflow int64 (numba's "array is too big").
    for model in (CCMC(np.random.default_rng(0).normal(size=(K, K))),
                  PositionalCCMC(np.random.default_rng(0).normal(size=(K, K)), FIXED_BIAS)):
        grow = generate(model, [0, 1, 2], 50, random_state=3)
        for window in (53, 10**12, 2**60, 2**63, 10**30):
            np.testing.assert_array_equal(
                generate(model, [0, 1, 2], 50, window=window, random_state=3), grow)
        batch = generate_batch(model, [[0, 1, 2]], 50, window=10**30, random_state=3)
        assert batch.shape == (1, 50)
    X1, y1 = trajectory_pairs([0, 1], [1, 0, 2], window=10**30)
    X0, y0 = trajectory_pairs([0, 1], [1, 0, 2])
    assert [x.tolist() for x in X1] == [x.tolist() for x in X0]
    assert y1.dtype == np.int64 and y1.tolist() == y0.tolist()
    prof = collapse_profile([0, 1, 1, 2], window=10**30, ngram=10**30, n_points=10**30)
    assert prof.distinct_in_window[-1] == K and prof.repetition_rate[-1] == 0.0


def test_generation_that_cannot_fit_in_memory_is_refused_up_front():
    model = CCMC(np.zeros((K, K)))
    refused(lambda: generate(model, [0, 1], 10**15))
    refused(lambda: generate_batch(model, [[0, 1]] * 3, 10**14))
    refused(lambda: model.to_attention(d=10**9))


def _reference_log_proba(W, prompts):
    """Log-space twin of the CCMC: log m_k + W[k, q], normalised by logsumexp."""
    out = []
    for p in prompts:
        m = np.bincount(p, minlength=W.shape[0]).astype(float)
        with np.errstate(divide="ignore"):
            z = np.log(m) + W[:, p[-1]]
        out.append(z - logsumexp(z))
    return np.array(out)


@given(W=extreme_logits(max_scale=1e4), seed=st.integers(0, 2**32 - 1))
def test_probabilities_with_extreme_logits(W, seed):
    Kw = W.shape[0]
    prompts = np.random.default_rng(seed).integers(0, Kw, size=(8, 5))
    model = CCMC(W)
    logp = model.predict_log_proba(prompts)
    ref = _reference_log_proba(W, prompts)
    present = np.isfinite(ref)
    np.testing.assert_array_equal(np.isfinite(logp), present)
    np.testing.assert_allclose(logp[present], ref[present], rtol=1e-12, atol=1e-9)
    P = model.predict_proba(prompts)
    assert not np.isnan(P).any()
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-12)
    # The sparse form is the same model.
    np.testing.assert_allclose(CCMC(sparse.csc_array(W)).predict_proba(prompts).toarray(), P,
                               atol=1e-12)
    # Sampling draws only tokens of positive probability.
    draws = model.sample(np.repeat(prompts, 20, axis=0), random_state=seed)
    assert (np.repeat(P, 20, axis=0)[np.arange(draws.size), draws] > 0).all()
    # The literal attention layer agrees (E = C = I, W_att = W).
    A = attention_forward(np.eye(Kw), W, np.eye(Kw), prompts)
    np.testing.assert_allclose(A, P, atol=1e-9)
    # The base chain: stochastic rows, a distribution as stationary law.
    T = model.transition_matrix
    np.testing.assert_allclose(T.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(T, np.exp(log_softmax(W, axis=0).T), atol=1e-12)
    pi = model.stationary_distribution()
    assert np.isfinite(pi).all() and (pi >= 0).all() and pi.sum() == pytest.approx(1.0)


@given(W=extreme_logits(max_scale=1e4), seed=st.integers(0, 2**32 - 1),
       window=st.sampled_from([None, 2, 6]), positional=st.booleans())
def test_generation_with_extreme_logits(W, seed, window, positional):
    Kw = W.shape[0]
    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, Kw, size=rng.integers(1, 6))
    model = PositionalCCMC(W, [0.0, -700.0]) if positional else CCMC(W)
    traj = generate(model, prompt, 60, window=window, random_state=seed)
    assert np.isin(traj, prompt).all()  # never leaves the prompt's tokens
    # Every step draws a token of positive probability given its context (log space: the
    # weights underflow in linear space for spreads of 1e4).
    seq = np.concatenate([prompt, traj])
    contexts = [seq[max(0, t - window) if window else 0 : t]
                for t in range(prompt.size, seq.size)]
    logp = model.predict_log_proba(contexts)
    assert np.isfinite(logp[np.arange(traj.size), traj]).all()


def test_one_hot_columns_of_huge_logits():
    # Spreads of 1e4 make every probability 0 or 1 exactly; still no NaN anywhere.
    for s in (1e4, -1e4):
        model = CCMC(s * np.eye(K))
        P = model.predict_proba([[0, 1, 2], [2, 2, 1], [1]])
        assert not np.isnan(P).any()
        np.testing.assert_allclose(P.sum(axis=1), 1.0)
        traj = generate(model, [0, 1, 2], 30, random_state=0)
        assert np.isin(traj, [0, 1, 2]).all()
    np.testing.assert_allclose(CCMC(1e4 * np.eye(K)).stationary_distribution(), 1 / K)
    out = attention_forward(np.eye(K), 1e4 * np.eye(K), np.eye(K), [[0, 1, 2]])
    np.testing.assert_allclose(out, [[0.0, 0.0, 1.0]])


# --------------------------------------------------------------------------- frozen models
def test_restored_models_are_validated_and_frozen():
    model = PositionalCCMC(np.eye(2), [0.0, -1.0])
    for restored in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model),
                     joblib.load(_dump(model))):
        assert restored == model
        for arr in (restored.logits, restored.position_bias):
            refused(lambda arr=arr: arr.__setitem__(1, 5000.0))
    state = model.__getstate__()
    state["position_bias"] = np.array([0.0, 5000.0])
    tampered = PositionalCCMC.__new__(PositionalCCMC)
    refused(lambda: tampered.__setstate__(state))


def _dump(model, _cache={}):  # noqa: B006 (one temporary file per session)
    import tempfile

    path = _cache.setdefault("path", tempfile.mkstemp(suffix=".joblib")[1])
    joblib.dump(model, path)
    return path


@pytest.mark.parametrize("kwargs", [{"threshold": np.nan}, {"threshold": 0}, {"n_starts": -1},
                                    {"threshold": True}])
def test_winner_analysis_parameters(kwargs):
    from ccmc_estim import CCMC, winner_analysis

    with pytest.raises((ValueError, TypeError), match="parameter"):
        winner_analysis(CCMC(np.eye(3)), [0, 1, 2], **kwargs)


@pytest.mark.parametrize("kwargs", [{"lengths": [10.5, 20]}, {"share": np.nan},
                                    {"lengths": [np.nan]}, {"share": 1.5}])
def test_learn_from_trajectory_parameters(kwargs):
    from ccmc_estim import CCMC, learn_from_trajectory

    args = {"lengths": [10, 20], **kwargs}
    with pytest.raises((ValueError, TypeError), match="lengths|share"):
        learn_from_trajectory(CCMC(np.eye(3)), [0, 1, 2], **args)
