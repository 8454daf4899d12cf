import pickle

import numpy as np
import pytest
from scipy import sparse
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils._param_validation import InvalidParameterError

from ccmc_estim.datasets import Vocabulary

SEQS = [["the", "cat", "sat", "the", "end"], ["the", "dog", "sat", "rare"]]


class LastIdCounter(BaseEstimator):
    """A tiny downstream estimator: remembers how often each last id is followed by y."""

    def fit(self, X, y):
        self.X_ = [np.asarray(x) for x in X]
        self.y_ = np.asarray(y)
        return self

    def predict(self, X):
        return np.array([int(np.asarray(x)[-1]) for x in X])


def test_ids_by_frequency_then_first_appearance():
    vocab = Vocabulary().fit(SEQS)
    assert vocab.tokens_ == ["<unk>", "the", "sat", "cat", "end", "dog", "rare"]
    assert vocab.index_ == {t: i for i, t in enumerate(vocab.tokens_)}
    assert vocab.n_tokens_ == 7
    np.testing.assert_array_equal(vocab.counts_, [0, 3, 2, 1, 1, 1, 1])
    assert vocab.counts_.dtype == np.int64
    assert vocab.unknown_id == vocab.unknown_id_ == Vocabulary.unknown_id == 0


def test_counts_of_unknown():
    vocab = Vocabulary(max_size=3).fit(SEQS)
    assert vocab.tokens_ == ["<unk>", "the", "sat"]
    np.testing.assert_array_equal(vocab.counts_, [4, 3, 2])
    assert vocab.counts_.sum() == sum(map(len, SEQS))
    vocab = Vocabulary(min_count=2, unknown_token="?").fit([*SEQS, ["?", "?"]])
    assert vocab.tokens_ == ["?", "the", "sat"]
    np.testing.assert_array_equal(vocab.counts_, [6, 3, 2])


def test_round_trip():
    vocab = Vocabulary().fit(SEQS)
    ids = vocab.transform(SEQS)
    assert all(isinstance(a, np.ndarray) and a.dtype == np.int64 for a in ids)
    assert vocab.inverse_transform(ids) == SEQS
    assert vocab.inverse_transform(ids[0]) == SEQS[0]
    assert vocab.inverse_transform(list(ids[0])) == SEQS[0]
    assert vocab.inverse_transform([ids[0].tolist(), ids[1].tolist()]) == SEQS
    assert vocab.inverse_transform([]) == []
    assert vocab.inverse_transform(np.array([], dtype=np.int64)) == []
    assert vocab.transform([["the", "zebra"], []])[0].tolist() == [1, 0]
    assert vocab.transform([[]])[0].size == 0


def test_hashable_tokens_of_any_kind():
    seqs = [[1, (2, "a"), "x", 1], np.array([1, 5])]
    vocab = Vocabulary().fit(seqs)
    assert vocab.tokens_ == ["<unk>", 1, (2, "a"), "x", 5]
    ids = vocab.transform(seqs)
    assert vocab.inverse_transform(ids) == [[1, (2, "a"), "x", 1], [1, 5]]


def test_two_d_arrays():
    X = np.array([["a", "b"], ["b", "b"]])
    vocab = Vocabulary()
    ids = vocab.fit_transform(X)
    assert isinstance(ids, np.ndarray) and ids.shape == (2, 2) and ids.dtype == np.int64
    np.testing.assert_array_equal(ids, [[2, 1], [1, 1]])
    assert vocab.inverse_transform(ids) == [["a", "b"], ["b", "b"]]


def test_fit_transform_consumes_iterators_once():
    vocab = Vocabulary()
    ids = vocab.fit_transform(iter(SEQS))
    assert vocab.inverse_transform(ids) == SEQS
    assert vocab.fit_transform(SEQS, None)[0].tolist() == ids[0].tolist()


def test_get_params_clone_pickle():
    vocab = Vocabulary(max_size=5, min_count=2, unknown_token=None)
    assert vocab.get_params() == {"max_size": 5, "min_count": 2, "unknown_token": None}
    copy = clone(vocab)
    assert copy.get_params() == vocab.get_params() and copy is not vocab
    vocab.fit(SEQS)
    assert not hasattr(clone(vocab), "tokens_")
    assert vocab.set_params(max_size=2) is vocab and vocab.max_size == 2
    fitted = Vocabulary().fit(SEQS)
    again = pickle.loads(pickle.dumps(fitted))
    assert again.tokens_ == fitted.tokens_
    assert "max_size=5" in repr(clone(copy))


def test_not_fitted():
    vocab = Vocabulary()
    with pytest.raises(NotFittedError):
        vocab.transform(SEQS)
    with pytest.raises(NotFittedError):
        vocab.inverse_transform([0, 1])


@pytest.mark.parametrize("params", [
    {"max_size": True}, {"max_size": False}, {"max_size": 0}, {"max_size": -3},
    {"max_size": 2.0}, {"max_size": "10"}, {"min_count": float("nan")}, {"min_count": -1},
    {"min_count": 0}, {"min_count": True}, {"min_count": 1.5}, {"min_count": None},
])
def test_bad_parameters_refused_at_fit(params):
    vocab = Vocabulary(**params)  # scikit-learn convention: __init__ only stores
    with pytest.raises(InvalidParameterError, match=next(iter(params))):
        vocab.fit(SEQS)
    assert issubclass(InvalidParameterError, ValueError)


def test_good_integer_parameters():
    vocab = Vocabulary(max_size=np.int64(2), min_count=np.int32(1)).fit(SEQS)
    assert vocab.n_tokens_ == 2


def test_unhashable_unknown_token():
    with pytest.raises(TypeError, match="unknown_token"):
        Vocabulary(unknown_token=["x"]).fit(SEQS)


@pytest.mark.parametrize("X", ["abc", b"abc", bytearray(b"ab")])
def test_bare_string_refused(X):
    with pytest.raises(TypeError, match="iterable of token sequences"):
        Vocabulary().fit(X)
    with pytest.raises(TypeError, match="iterable of token sequences"):
        Vocabulary().fit_transform(X)
    with pytest.raises(TypeError, match="iterable of token sequences"):
        Vocabulary().fit(SEQS).transform(X)


def test_string_inside_refused():
    with pytest.raises(TypeError, match=r"X\[0\] is a string"):
        Vocabulary().fit(["abc"])
    with pytest.raises(TypeError, match=r"X\[1\] is a string"):
        Vocabulary().fit([["a"], "bc"])
    with pytest.raises(TypeError, match=r"X\[1\] is a string"):
        Vocabulary().fit(SEQS).transform([["a"], b"bc"])


def test_other_bad_inputs():
    with pytest.raises(TypeError, match=r"X\[0\] is of type int"):
        Vocabulary().fit([1, 2, 3])
    with pytest.raises(TypeError, match="iterable of token sequences"):
        Vocabulary().fit(5)
    with pytest.raises(TypeError, match=r"X\[1\] holds an unhashable token"):
        Vocabulary().fit([["a"], [["b"]]])
    with pytest.raises(ValueError, match="1-D"):
        Vocabulary().fit([np.zeros((2, 2))])
    with pytest.raises(TypeError, match="sparse"):
        Vocabulary().fit(sparse.csr_matrix(np.eye(2)))
    vocab = Vocabulary().fit(SEQS)
    with pytest.raises(ValueError, match="outside"):
        vocab.inverse_transform([0, 7])
    with pytest.raises(ValueError, match="outside"):
        vocab.inverse_transform([[0], [-1]])
    with pytest.raises(TypeError, match="integer ids"):
        vocab.inverse_transform([0.5])
    with pytest.raises(TypeError, match="integer ids"):
        vocab.inverse_transform("ab")


def test_in_pipeline():
    y = [0, 1]
    pipe = make_pipeline(Vocabulary(), LastIdCounter())
    pipe.fit(SEQS, y)
    vocab = pipe.named_steps["vocabulary"]
    assert vocab.tokens_[1] == "the"
    last = pipe.named_steps["lastidcounter"]
    np.testing.assert_array_equal(last.X_[0], vocab.transform(SEQS)[0])
    np.testing.assert_array_equal(pipe.predict([["the", "dog"], ["zebra"]]),
                                  [vocab.index_["dog"], 0])
    # parameters route through the pipeline, and clone keeps them
    pipe.set_params(vocabulary__max_size=2)
    assert clone(pipe).get_params()["vocabulary__max_size"] == 2
    np.testing.assert_array_equal(pipe.fit(SEQS, y).predict([["the"], ["dog"]]), [1, 0])


def test_in_pipeline_with_function_transformer():
    pipe = Pipeline([
        ("vocab", Vocabulary(min_count=2)),
        ("count", FunctionTransformer(lambda X: np.array([[np.sum(x == 0)] for x in X]))),
    ])
    out = pipe.fit_transform(SEQS)
    np.testing.assert_array_equal(out, [[2], [2]])


def test_frozen_vocabulary_in_pipeline():
    vocab = Vocabulary().fit([["a", "b", "c"]])
    pipe = make_pipeline(FrozenEstimator(vocab), LastIdCounter())
    pipe.fit([["c", "the"]], [0])
    assert vocab.tokens_ == ["<unk>", "a", "b", "c"]
    np.testing.assert_array_equal(pipe.steps[1][1].X_[0], [3, 0])
