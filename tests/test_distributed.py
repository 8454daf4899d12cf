"""Fitting and scoring on a Dask cluster (issue 12): a LocalCluster of two worker processes
with one thread each, started once for the module."""

import contextlib
import copy
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")
db = pytest.importorskip("dask.bag")
cloudpickle = pytest.importorskip("cloudpickle")

import joblib  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score, cross_validate  # noqa: E402

import ccmc_estim  # noqa: E402
from ccmc_estim import (  # noqa: E402
    CCMC,
    CCMCEstimator,
    MixtureCCMCEstimator,
    PositionalCCMCEstimator,
    make_ccmc_data,
    prompts_from_sequences,
)
from ccmc_estim import distributed as ccmc_dask  # noqa: E402

# The workers are other processes: classes and functions of this module travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class SlowCCMCEstimator(CCMCEstimator):
    """Solves each column block slowly, so that a worker can be killed mid-fit."""

    def _solve(self, *args, **kwargs):
        time.sleep(0.4)
        return super()._solve(*args, **kwargs)


class SlowPositionalCCMCEstimator(PositionalCCMCEstimator):
    """Solves each column block slowly, so that a worker can be killed mid-search."""

    def _solve(self, *args, **kwargs):
        time.sleep(0.03)
        return super()._solve(*args, **kwargs)


class PidCCMCEstimator(CCMCEstimator):
    """Records the process that fitted it."""

    def fit(self, prompts, outputs, sample_weight=None):
        self.fit_pid_ = os.getpid()
        return super().fit(prompts, outputs, sample_weight)


@contextlib.contextmanager
def _killing_a_worker(client, busy, poll, during):
    """Run the ``with`` body while a thread kills the process of the first worker whose
    processing keys ``busy`` accepts (polled every ``poll`` s, for at most 30 s); fail if no
    worker was killed ``during`` it."""
    pids = client.run(os.getpid)
    killed = []

    def kill():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for addr, keys in client.processing().items():
                if addr in pids and busy(keys):
                    os.kill(pids[addr], signal.SIGKILL)
                    killed.append(addr)
                    return
            time.sleep(poll)

    killer = threading.Thread(target=kill)
    killer.start()
    try:
        yield
    finally:
        killer.join()
    assert killed, f"no worker was killed during {during}"


def _slow(block):
    time.sleep(0.1)
    return block


@pytest.fixture(scope="module")
def client():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. the dashboard's missing optional packages
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=50)
    with cluster, distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def data():
    X, y, _ = make_ccmc_data(4000, 15, (3, 9), random_state=1)
    # make_ccmc_data gives ragged prompts; pad on the left with the first token so that the
    # prompts form one 2-D array (the extra copies change the histograms, not the coverage).
    L = max(len(p) for p in X)
    X = np.array([np.concatenate([[p[0]] * (L - len(p)), p]) for p in X])
    w = np.random.default_rng(0).uniform(0.0, 3.0, y.size)
    w[::17] = 0.0
    return X, y, w


def _equal_fits(ref, est, rtol=1e-10):
    assert sorted(vars(est)) == sorted(vars(ref))
    for name in ("logits_", "n_iter_", "identified_", "classes_", "information_min_eig_"):
        np.testing.assert_allclose(np.asarray(getattr(est, name), float),
                                   np.asarray(getattr(ref, name), float), rtol=rtol, atol=rtol)
    for name in ("objective_", "log_likelihood_", "aic_", "bic_"):
        assert getattr(est, name) == pytest.approx(getattr(ref, name), rel=rtol)
    assert est.n_free_params_ == ref.n_free_params_
    np.testing.assert_allclose(est.logits_se_, ref.logits_se_, rtol=rtol, equal_nan=True)
    assert est.identifiability_.summary() == ref.identifiability_.summary()


@pytest.mark.parametrize("alpha", [1.0, 0.0])
def test_fit_equals_in_memory(client, data, alpha):
    X, y, w = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # alpha=0: the MLE does not exist in some columns
        ref = CCMCEstimator(alpha=alpha).fit(X, y, sample_weight=w)
        est = CCMCEstimator(alpha=alpha).fit(da.from_array(X, chunks=(700, 4)),
                                             da.from_array(y, chunks=900),
                                             da.from_array(w, chunks=500))
    _equal_fits(ref, est)
    # Each column sees the same pairs in the same order: the same floating-point operations.
    np.testing.assert_array_equal(est.logits_, ref.logits_)
    assert est.identifiability_.never_chosen.keys() == ref.identifiability_.never_chosen.keys()
    # The fitted estimator predicts in memory like any other.
    np.testing.assert_array_equal(est.predict_proba(X[:50]), ref.predict_proba(X[:50]))


def test_blocks_and_sparse_storage(client, data):
    X, y, w = data
    ref = CCMCEstimator(sparse=True).fit(X, y, sample_weight=w)
    for n_blocks in (1, 4, 40):
        est = ccmc_dask.fit(CCMCEstimator(sparse=True), da.from_array(X, chunks=1000), y,
                            sample_weight=w, n_blocks=n_blocks)
        assert est.logits_.format == "csc"
        assert (est.logits_ != ref.logits_).nnz == 0


def test_dask_bag_of_sequences(client):
    # Sequences generated by a CCMC over a sliding window: every output occurs in its window.
    rng = np.random.default_rng(3)
    truth = CCMC(rng.normal(size=(6, 6)))
    L = 5
    seqs = [list(rng.integers(0, 6, L)) for _ in range(12)]
    for _ in range(60):
        nxt = truth.sample(np.array([s[-L:] for s in seqs]), random_state=rng)
        for s, t in zip(seqs, nxt, strict=True):
            s.append(int(t))
    seqs = [np.array(s[: L + 1 + 7 * i]) for i, s in enumerate(seqs)]  # ragged lengths
    seqs.insert(3, np.array([1, 2]))  # shorter than the context: no pair
    prompts, outputs = prompts_from_sequences(seqs, L)
    ref = CCMCEstimator().fit(prompts, outputs)
    Xd, yd = ccmc_dask.windows(db.from_sequence(seqs, npartitions=5), L)
    est = CCMCEstimator().fit(Xd, yd)
    _equal_fits(ref, est)
    np.testing.assert_array_equal(est.logits_, ref.logits_)
    assert est.score(Xd, yd) == pytest.approx(ref.score(prompts, outputs), rel=1e-12)


def test_bad_input_is_located(client, data):
    X, y, _ = data
    X = X.copy()
    y = y.copy()
    missing = next(t for t in range(15) if t not in X[1512])
    y[1512] = missing
    with pytest.raises(ValueError, match=rf"output {missing} of sample 1512 \(partition 3, its "
                                         r"sample 12\) does not occur in its prompt"):
        CCMCEstimator().fit(da.from_array(X, chunks=500), da.from_array(y, chunks=500))
    y = data[1]
    X[1005, 1] = -4
    with pytest.raises(ValueError, match=r"prompt 1005 \(partition 2, its prompt 5\) has a "
                                         r"negative token -4"):
        CCMCEstimator().fit(da.from_array(X, chunks=500), da.from_array(y, chunks=500))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        CCMCEstimator(n_tokens=3).fit(da.from_array(data[0], chunks=1000),
                                      da.from_array(data[1], chunks=1000))
    with pytest.raises(ValueError, match="got 4000 prompts but 3999 outputs"):
        CCMCEstimator().fit(da.from_array(data[0], chunks=1000),
                            da.from_array(data[1][1:], chunks=1000))
    with pytest.raises(ValueError, match="sample_weight is zero for every sample"):
        CCMCEstimator().fit(da.from_array(data[0], chunks=1000), data[1], np.zeros(4000))
    bag = db.from_sequence([[0, 1, 0, 1], [1, 0, 1, 0], [2, -1, 2, 2, 1]], npartitions=3)
    with pytest.raises(ValueError, match="sequence 0 of partition 2 holds a negative token"):
        CCMCEstimator().fit(*ccmc_dask.windows(bag, 2))
    with pytest.raises(TypeError, match="dask.bag.Bag"):
        ccmc_dask.windows([[0, 1, 2]], 2)
    with pytest.raises(ValueError, match="context_length must be >= 1"):
        ccmc_dask.windows(bag, 0)


def test_lazy_predict_and_score(client, data):
    X, y, w = data
    est = CCMCEstimator().fit(X, y, sample_weight=w)
    Xd = da.from_array(X, chunks=600)
    pred = est.predict(Xd)
    assert isinstance(pred, da.Array)
    np.testing.assert_array_equal(pred.compute(), est.predict(X))
    ll = est.score_samples(Xd, da.from_array(y, chunks=600))
    assert isinstance(ll, da.Array)
    np.testing.assert_array_equal(ll.compute(), est.score_samples(X, y))
    score = est.score(Xd, da.from_array(y, chunks=600), da.from_array(w, chunks=600))
    assert isinstance(score, float)
    assert score == pytest.approx(est.score(X, y, w), rel=1e-12)
    y_bad = y.copy()
    y_bad[5] = next(t for t in range(15) if t not in X[5])
    assert est.score(Xd, y_bad) == -np.inf


def test_positional_on_dask(client, data):
    X, y, _ = data
    bias = np.array([0.0, -0.3, -0.6, -1.0])
    ref = PositionalCCMCEstimator(position_bias=bias).fit(X, y)
    est = PositionalCCMCEstimator(position_bias=bias).fit(da.from_array(X, chunks=1000),
                                                          da.from_array(y, chunks=1000))
    _equal_fits(ref, est)
    np.testing.assert_array_equal(est.position_bias_, ref.position_bias_)
    np.testing.assert_array_equal(est.objective_path_, ref.objective_path_)


def test_learned_bias_on_dask_equals_in_memory(client, data, capsys):
    # Every block solves its columns by the same floating-point operations as in memory;
    # only the sums over the blocks (objective, gradient in the bias, total weight) are
    # rounded differently, by ~1e-16 relative, which the L-BFGS-B steps carry into the bias
    # and the logits (measured on this data with 2 to 5 blocks: the same iterations, the
    # path within 4e-16 relative, bias and logits within 1e-14 absolute).  The 1e-8 relative
    # of the issue leaves room for L-BFGS-B stopping one accepted step apart near its
    # bias_tol=1e-9 and for nothing else: a pair lost or doubled in a block, or a block's
    # gradient part dropped, moves the fit at 1e-4 or more.  The bias entries are O(1) and
    # can be near 0, so 1e-8 is also their absolute tolerance.
    X, y, w = data
    ref = PositionalCCMCEstimator(max_distance=3).fit(X, y, sample_weight=w)
    est = PositionalCCMCEstimator(max_distance=3, verbose=1).fit(
        da.from_array(X, chunks=(700, 4)), da.from_array(y, chunks=900),
        da.from_array(w, chunks=500))
    assert "6 partitions, 2 blocks" in capsys.readouterr().out  # a block per thread
    assert ref.n_bias_iter_ >= 5  # a real search, not one step
    assert np.abs(ref.position_bias_[1:]).max() > 0.05  # a bias away from its start
    assert est.n_bias_iter_ == ref.n_bias_iter_
    np.testing.assert_allclose(est.position_bias_, ref.position_bias_, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(est.objective_path_, ref.objective_path_, rtol=1e-8, atol=0)
    _equal_fits(ref, est, rtol=1e-8)
    np.testing.assert_allclose(est.predict_proba(X[:50]), ref.predict_proba(X[:50]),
                               rtol=1e-8, atol=1e-10)


def test_learned_bias_one_block_is_the_in_memory_fit(client, data):
    # One column block runs the in-memory fit's arithmetic exactly, restarts included (the
    # weights have no zeros: the Dask fit drops zero-weight pairs before the sums).
    X, y, _ = data
    w = np.random.default_rng(2).uniform(0.5, 2.0, y.size)
    params = dict(max_distance=2, n_restarts=2, random_state=0)
    ref = PositionalCCMCEstimator(**params).fit(X, y, sample_weight=w)
    est = ccmc_dask.fit(PositionalCCMCEstimator(**params), da.from_array(X, chunks=1000),
                        da.from_array(y, chunks=1000), da.from_array(w, chunks=1000),
                        n_blocks=1)
    np.testing.assert_array_equal(est.objective_path_, ref.objective_path_)
    np.testing.assert_array_equal(est.position_bias_, ref.position_bias_)
    np.testing.assert_array_equal(est.logits_, ref.logits_)
    assert (est.n_bias_iter_, est.log_likelihood_, est.bic_) == (
        ref.n_bias_iter_, ref.log_likelihood_, ref.bic_)


def test_joblib_dask_backend(client, data):
    X, y, _ = data
    grid = {"alpha": [0.3, 3.0]}
    ref = GridSearchCV(CCMCEstimator(n_jobs=2), grid, cv=3).fit(X, y)
    ref_cv = cross_val_score(CCMCEstimator(), X, y, cv=3)
    with joblib.parallel_backend("dask"):
        gs = GridSearchCV(CCMCEstimator(n_jobs=2), grid, cv=3).fit(X, y)
        cv = cross_val_score(CCMCEstimator(), X, y, cv=3)
        fits = cross_validate(PidCCMCEstimator(), X, y, cv=3, return_estimator=True)
    workers = set(client.run(os.getpid).values())
    assert {e.fit_pid_ for e in fits["estimator"]} <= workers  # the fits ran on the cluster
    np.testing.assert_array_equal(gs.cv_results_["mean_test_score"],
                                  ref.cv_results_["mean_test_score"])
    np.testing.assert_array_equal(cv, ref_cv)
    # Inside the dask backend the column threads stay threads of this process: same result.
    with joblib.parallel_backend("dask"):
        a = CCMCEstimator(n_jobs=3).fit(X, y)
    np.testing.assert_array_equal(a.logits_, CCMCEstimator(n_jobs=1).fit(X, y).logits_)


def test_worker_dies_mid_fit(client, data):
    X, y, w = data
    ref = CCMCEstimator().fit(X, y, sample_weight=w)
    # Kill the process of a worker as soon as it solves a column block (it also holds
    # validated partitions and shuffled pieces, which the scheduler must recompute).
    with _killing_a_worker(client, lambda keys: any("_fit_block" in str(k) for k in keys),
                           0.02, "the fit"):
        Xd = da.from_array(X, chunks=500).map_blocks(_slow)
        est = SlowCCMCEstimator().fit(Xd, da.from_array(y, chunks=500),
                                      da.from_array(w, chunks=500))
    np.testing.assert_array_equal(est.logits_, ref.logits_)
    assert est.objective_ == pytest.approx(ref.objective_, rel=1e-12)


def test_import_does_not_load_dask():
    # Fitting and scoring without Dask run through the same checks (the rest of the suite);
    # what matters is that neither importing the package nor checking an input imports it.
    code = (
        "import sys, numpy, ccmc_estim\n"
        "assert not ccmc_estim.estimator._any_dask([[0, 1]], numpy.zeros(2), None)\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert ccmc_estim.distributed.is_dask_collection(np.zeros(3)) is False


# --------------------------------------------------------------------------- the mixture
@pytest.fixture(scope="module")
def mixture_data(data):
    """The CCMC data with 40% of the outputs replaced by random tokens: generated, often
    absent from their prompts (what the mixture is for)."""
    X, y, w = data
    rng = np.random.default_rng(5)
    y = np.where(rng.random(y.size) < 0.4, rng.integers(0, 15, y.size), y)
    return X, y, w


def _equal_mixtures(ref, est, rtol=1e-10):
    """A Dask fit equals the in-memory fit.  Every per-column computation sees the same
    pairs in the same order (bitwise equal); only the sums over column blocks (objective,
    SQUAREM norms, shared copy weight) are rounded differently, by ~1e-16 relative, which the
    SQUAREM step sizes and the shared weight carry into the parameters at ~1e-14.  1e-10
    leaves room for that and for nothing else: a pair in the wrong block or a missing one
    changes the fit at 1e-4 or more.  Logits, copy weights and probabilities are O(1) and can
    be 0, so the same 1e-10 is also their absolute tolerance."""
    assert sorted(vars(est)) == sorted(vars(ref))
    assert est.n_iter_ == ref.n_iter_
    np.testing.assert_allclose(est.objective_trace_, ref.objective_trace_, rtol=rtol, atol=0)
    np.testing.assert_allclose(est.ccmc_.toarray(), ref.ccmc_.toarray(), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(est.copy_weight_, ref.copy_weight_, rtol=rtol, atol=rtol)
    if ref.sentinel_ is not None:
        np.testing.assert_allclose(est.sentinel_, ref.sentinel_, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(est.base_chain_.toarray(), ref.base_chain_.toarray(), rtol=rtol,
                               atol=rtol)
    np.testing.assert_array_equal(est.base_chain_.prior_weight, ref.base_chain_.prior_weight)
    np.testing.assert_array_equal(est.base_chain_.unigram, ref.base_chain_.unigram)
    for name in ("log_likelihood_", "aic_", "bic_"):
        assert getattr(est, name) == pytest.approx(getattr(ref, name), rel=rtol, abs=0)
    assert est.n_free_params_ == ref.n_free_params_
    np.testing.assert_array_equal(est.classes_, ref.classes_)


@pytest.mark.parametrize("copy_weight, acceleration",
                         [("per_query", None), ("shared", None), ("per_query", "squarem"),
                          ("sentinel", None)])
def test_mixture_fit_equals_in_memory(client, mixture_data, copy_weight, acceleration, capsys):
    X, y, w = mixture_data
    kw = dict(copy_weight=copy_weight, acceleration=acceleration, tol=1e-8)
    ref = MixtureCCMCEstimator(**kw).fit(X, y, sample_weight=w)
    est = MixtureCCMCEstimator(**kw, verbose=1).fit(
        da.from_array(X, chunks=(700, 4)), da.from_array(y, chunks=900),
        da.from_array(w, chunks=500))
    assert "(Dask, 6 partitions, 2 blocks)" in capsys.readouterr().out  # a block per thread
    assert ref.n_iter_ >= 5  # a real EM path, not one step
    _equal_mixtures(ref, est)
    # The fitted estimator predicts in memory like any other.
    np.testing.assert_allclose(est.predict_proba(X[:50]), ref.predict_proba(X[:50]),
                               rtol=1e-10, atol=1e-12)


def test_mixture_with_learned_position_bias_equals_in_memory(client, mixture_data):
    # The bias search sums the blocks' parts of its objective and gradient (rounded
    # differently, see _equal_mixtures) and lays every block out again at each new bias.
    X, y, w = mixture_data
    ref = MixtureCCMCEstimator(max_distance=3, unknown_id=0, tol=1e-8).fit(
        X, y, sample_weight=w)
    est = MixtureCCMCEstimator(max_distance=3, unknown_id=0, tol=1e-8).fit(
        da.from_array(X, chunks=(700, 4)), da.from_array(y, chunks=900),
        da.from_array(w, chunks=500))
    assert ref.n_bias_iter_ >= 2
    assert est.n_bias_iter_ == ref.n_bias_iter_
    np.testing.assert_allclose(est.position_bias_, ref.position_bias_, rtol=1e-10,
                               atol=1e-10)
    _equal_mixtures(ref, est)


def test_mixture_one_block_is_the_in_memory_fit(client, mixture_data):
    # One column block runs the in-memory fit's arithmetic exactly, warm start included.
    X, y, w = mixture_data
    ref = MixtureCCMCEstimator(unknown_id=0, warm_start=True).fit(X[:1500], y[:1500])
    est = copy.deepcopy(ref)
    ref.fit(X, y, sample_weight=w)
    ccmc_dask.fit(est, da.from_array(X, chunks=1000), da.from_array(y, chunks=1000),
                  da.from_array(w, chunks=1000), n_blocks=1)
    np.testing.assert_array_equal(est.objective_trace_, ref.objective_trace_)
    np.testing.assert_array_equal(est.ccmc_.toarray(), ref.ccmc_.toarray())
    np.testing.assert_array_equal(est.copy_weight_, ref.copy_weight_)
    np.testing.assert_array_equal(est.base_chain_.toarray(), ref.base_chain_.toarray())
    assert (est.log_likelihood_, est.bic_) == (ref.log_likelihood_, ref.bic_)


def test_mixture_dask_bag_of_sequences(client):
    rng = np.random.default_rng(7)
    seqs = [rng.integers(0, 8, int(rng.integers(2, 90))) for _ in range(25)]
    L = 4
    prompts, outputs = prompts_from_sequences(seqs, L)
    ref = MixtureCCMCEstimator().fit(prompts, outputs)
    est = MixtureCCMCEstimator().fit(*ccmc_dask.windows(db.from_sequence(seqs, npartitions=4),
                                                        L))
    _equal_mixtures(ref, est)


def test_mixture_lazy_predict_and_score(client, mixture_data):
    X, y, w = mixture_data
    est = MixtureCCMCEstimator().fit(X, y, sample_weight=w)
    Xd, yd = da.from_array(X, chunks=600), da.from_array(y, chunks=600)
    pred = est.predict(Xd)
    assert isinstance(pred, da.Array)
    np.testing.assert_array_equal(pred.compute(), est.predict(X))
    ll = est.score_samples(Xd, yd)
    assert isinstance(ll, da.Array)
    np.testing.assert_array_equal(ll.compute(), est.score_samples(X, y))
    score = est.score(Xd, yd, da.from_array(w, chunks=600))
    assert isinstance(score, float)
    assert score == pytest.approx(est.score(X, y, w), rel=1e-12)


def test_mixture_bad_input_is_located(client, mixture_data):
    X, y, _ = mixture_data
    Xb = X.copy()
    Xb[1005, 1] = -4
    with pytest.raises(ValueError, match=r"prompt 1005 \(partition 2, its prompt 5\) has a "
                                         r"negative token -4"):
        MixtureCCMCEstimator().fit(da.from_array(Xb, chunks=500), da.from_array(y, chunks=500))
    with pytest.raises(ValueError, match=r"unknown_id=20 is outside the vocabulary 0\.\.14"):
        MixtureCCMCEstimator(unknown_id=20).fit(da.from_array(X, chunks=1000), y)
    # As for the CCMC, Dask collections hold integer ids (a Vocabulary maps other tokens).
    with pytest.raises(TypeError, match="prompts must hold integer token ids"):
        MixtureCCMCEstimator().fit(da.from_array(X.astype(str), chunks=1000), y.astype(str))


def test_mixture_worker_dies_mid_em(client, mixture_data):
    # The blocks, their parameters and E-steps are futures with lineage: Dask recomputes
    # what a killed worker held (the block from the input partitions, then the EM steps).
    X, y, w = mixture_data
    ref = MixtureCCMCEstimator(tol=1e-10).fit(X, y, sample_weight=w)
    with _killing_a_worker(client, lambda keys: any(str(k).startswith("step-") for k in keys),
                           0.01, "the EM"):
        est = MixtureCCMCEstimator(tol=1e-10).fit(da.from_array(X, chunks=1000),
                                                  da.from_array(y, chunks=1000),
                                                  da.from_array(w, chunks=1000))
    _equal_mixtures(ref, est)


def test_worker_dies_mid_bias_search(client, data):
    # The blocks and their states are futures with lineage: Dask recomputes what a killed
    # worker held (the block from the input partitions, then its chain of evaluations).
    X, y, w = data
    ref = PositionalCCMCEstimator(max_distance=3).fit(X, y, sample_weight=w)
    seen = set()

    def evaluating_past_the_first(keys):
        # Past the first evaluations, so that a chain of states is lost.
        evaluating = {k for k in keys if str(k).startswith("evaluate-")}
        if evaluating and len(seen) > 6:
            return True
        seen.update(evaluating)
        return False

    with _killing_a_worker(client, evaluating_past_the_first, 0.005, "the bias search"):
        est = SlowPositionalCCMCEstimator(max_distance=3).fit(
            da.from_array(X, chunks=1000), da.from_array(y, chunks=1000),
            da.from_array(w, chunks=1000))
    assert est.n_bias_iter_ == ref.n_bias_iter_
    np.testing.assert_allclose(est.position_bias_, ref.position_bias_, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(est.objective_path_, ref.objective_path_, rtol=1e-8, atol=0)
    np.testing.assert_allclose(est.logits_, ref.logits_, rtol=1e-8, atol=1e-8)


def test_empty_trailing_column_block(client):
    """Queries all in column 0 while tokens 1..3 only occur inside prompts: the last of two
    load-balanced blocks holds no pair at all."""
    rng = np.random.default_rng(3)
    X = np.concatenate([rng.integers(1, 4, size=(300, 4)), np.zeros((300, 1), int)], axis=1)
    y = X[np.arange(300), rng.integers(0, 5, size=300)]
    ref = CCMCEstimator().fit(X, y)
    est = ccmc_dask.fit(CCMCEstimator(), da.from_array(X, chunks=100),
                        da.from_array(y, chunks=100), n_blocks=2)
    np.testing.assert_allclose(est.logits_, ref.logits_, rtol=1e-10, atol=1e-12)
    assert est.identifiability_.never_chosen.keys() == ref.identifiability_.never_chosen.keys()
