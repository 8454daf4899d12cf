"""scikit-learn's estimator checks, and their equivalents for the sequence-of-prompts input."""

import pickle
import tempfile

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils.estimator_checks import parametrize_with_checks

from ccmc_estim import CCMCEstimator, PositionalCCMCEstimator, make_ccmc_data

_CONTINUOUS = (
    "feeds continuous random features; prompts are integer token ids, so the data are rejected "
    "with a clear error before the check's subject is reached"
)
_ABSENT = (
    "draws labels independently of the features; a CCMC gives probability zero to an output "
    "absent from its prompt, and fit rejects such data"
)
#: Checks of scikit-learn that cannot apply to prompts, with the reason.  Their intent is
#: covered by the sequence-input tests below on valid token data.
NOT_APPLICABLE = {
    "check_fit_score_takes_y": _CONTINUOUS,
    "check_estimators_overwrite_params": _CONTINUOUS,
    "check_dont_overwrite_parameters": _CONTINUOUS,
    "check_estimators_fit_returns_self": _CONTINUOUS,
    "check_readonly_memmap_input": _CONTINUOUS,
    "check_n_features_in_after_fitting": _CONTINUOUS,
    "check_n_features_in": _CONTINUOUS,
    "check_positive_only_tag_during_fit": _CONTINUOUS,
    "check_estimators_dtypes": _CONTINUOUS,
    "check_sample_weights_pandas_series": _CONTINUOUS,
    "check_sample_weights_list": _CONTINUOUS,
    "check_all_zero_sample_weights_error": _CONTINUOUS,
    "check_sample_weights_not_an_array": _ABSENT,
    "check_sample_weights_shape": _ABSENT,
    "check_sample_weights_not_overwritten": _ABSENT,
    "check_classifier_data_not_an_array": _ABSENT,
    "check_sample_weight_equivalence_on_dense_data": (
        "passes the target as the keyword y=; the contract names it outputs"
    ),
    "check_dtype_object": "object arrays are read as a sequence of prompts, not as features",
    "check_pipeline_consistency": _CONTINUOUS,
    "check_estimators_nan_inf": _CONTINUOUS + " (NaN itself is rejected: test_stats)",
    "check_estimators_pickle": _CONTINUOUS,
    "check_f_contiguous_array_estimator": _CONTINUOUS,
    "check_classifiers_one_label": _CONTINUOUS,
    "check_classifiers_one_label_sample_weights": _CONTINUOUS,
    "check_classifiers_classes": _CONTINUOUS,
    "check_classifiers_train": _CONTINUOUS,
    "check_supervised_y_2d": _CONTINUOUS,
    "check_non_transformer_estimators_n_iter": _CONTINUOUS,
    "check_methods_sample_order_invariance": _CONTINUOUS,
    "check_methods_subset_invariance": _CONTINUOUS,
    "check_fit2d_1sample": _CONTINUOUS,
    "check_fit2d_1feature": _CONTINUOUS,
    "check_dict_unchanged": _CONTINUOUS,
    "check_fit_idempotent": _CONTINUOUS,
    "check_fit_check_is_fitted": _CONTINUOUS,
    "check_fit2d_predict1d": _CONTINUOUS,
    "check_requires_y_none": _CONTINUOUS,
}


@parametrize_with_checks(
    [CCMCEstimator(), PositionalCCMCEstimator(max_distance=2)],
    expected_failed_checks=lambda est: NOT_APPLICABLE,
)
def test_sklearn_check_estimator(estimator, check):
    check(estimator)


# --------------------------------------------------------------------------- sequence input
@pytest.fixture(scope="module")
def data():
    X, y, _ = make_ccmc_data(600, 6, (3, 10), random_state=0)
    return X, y


def _array_data():
    X, y, _ = make_ccmc_data(600, 6, 8, random_state=1)
    return X, y


@pytest.fixture(params=["ragged", "array"])
def both(request, data):
    return data if request.param == "ragged" else _array_data()


ESTIMATORS = [CCMCEstimator, lambda **kw: PositionalCCMCEstimator(max_distance=3, **kw)]


def test_no_work_in_init_and_params_roundtrip():
    pos = PositionalCCMCEstimator(max_distance=4, position_bias=[0.0, -1.0], random_state=3)
    assert vars(pos) == pos.get_params()
    assert clone(pos).get_params() == pos.get_params()
    est = CCMCEstimator(alpha=0.3, solver="newton", n_jobs=2)
    assert vars(est) == est.get_params()
    est.set_params(alpha=2.0)
    assert est.alpha == 2.0
    assert clone(est).get_params() == est.get_params()


@pytest.mark.parametrize("make", ESTIMATORS)
def test_not_fitted(make, data):
    X, y = data
    est = make()
    for method in ("predict", "predict_proba", "predict_log_proba"):
        with pytest.raises(NotFittedError):
            getattr(est, method)(X)
    with pytest.raises(NotFittedError):
        est.score(X, y)


@pytest.mark.parametrize("make", ESTIMATORS)
def test_fit_returns_self_idempotent_deterministic(make, both):
    X, y = both
    est = make()
    assert est.fit(X, y) is est
    first = est.logits_.copy()
    np.testing.assert_array_equal(est.fit(X, y).logits_, first)
    np.testing.assert_array_equal(make().fit(X, y).logits_, first)
    assert est.get_params() == make().get_params()


@pytest.mark.parametrize("make", ESTIMATORS)
def test_inputs_not_modified_readonly_and_memmap(make, data):
    X, y = data
    X_ro = [np.array(p) for p in X]
    for p in X_ro:
        p.setflags(write=False)
    y_ro = np.array(y)
    y_ro.setflags(write=False)
    ref = make().fit(X, y)
    np.testing.assert_array_equal(make().fit(X_ro, y_ro).logits_, ref.logits_)
    X2, y2 = _array_data()
    with tempfile.TemporaryDirectory() as tmp:
        joblib.dump((X2, y2), f"{tmp}/d.joblib")
        Xm, ym = joblib.load(f"{tmp}/d.joblib", mmap_mode="r")
        assert isinstance(Xm, np.memmap)
        np.testing.assert_array_equal(
            make().fit(Xm, ym).logits_, make().fit(X2, y2).logits_
        )
        np.testing.assert_array_equal(Xm, X2)


@pytest.mark.parametrize("make", ESTIMATORS)
def test_pickle_and_joblib(make, both, tmp_path):
    X, y = both
    est = make().fit(X, y)
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.predict_proba(X), est.predict_proba(X))
    joblib.dump(est, tmp_path / "est.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "est.joblib").predict(X), est.predict(X))


@pytest.mark.parametrize("make", ESTIMATORS)
def test_pipeline_cross_val_and_grid_search(make, both):
    X, y = both
    pipe = Pipeline([("identity", FunctionTransformer(None)), ("ccmc", make())])
    pipe.fit(X, y)
    assert pipe.score(X, y) == make().fit(X, y).score(X, y)
    cv = KFold(3, shuffle=True, random_state=0)
    scores = cross_val_score(make(n_tokens=6), X, y, cv=cv)
    assert scores.shape == (3,) and np.isfinite(scores).all() and (scores < 0).all()
    ll = cross_val_score(make(n_tokens=6), X, y, cv=cv, scoring="neg_log_loss")
    np.testing.assert_allclose(ll, scores, rtol=1e-6)
    grid = GridSearchCV(make(n_tokens=6), {"alpha": [1e-2, 1.0, 1e4]}, cv=cv).fit(X, y)
    assert grid.best_params_["alpha"] in (1e-2, 1.0)  # a huge penalty flattens the logits
    assert grid.best_estimator_.logits_.shape == (6, 6)
