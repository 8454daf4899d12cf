"""Model files: round trips, and refusal of anything that is not a valid model file."""

import json
import pickle
import zipfile

import numpy as np
import pytest
from scipy import sparse
from sklearn.exceptions import NotFittedError

from ccmc_estim import (
    CCMC,
    CCMCEstimator,
    MixtureCCMCEstimator,
    ModelFile,
    PositionalCCMC,
    Vocabulary,
    load_model,
    make_ccmc_data,
    prompts_from_sequences,
    save_model,
)
from ccmc_estim.io import FORMAT_VERSION


def raw(path):
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def rewrite(path, arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.fixture
def dense_file(tmp_path):
    path = tmp_path / "dense.npz"
    save_model(CCMC(np.arange(9.0).reshape(3, 3)), path, vocabulary=["<unk>", "a", "b"])
    return path


@pytest.fixture
def sparse_file(tmp_path):
    path = tmp_path / "sparse.npz"
    logits = sparse.csc_array(np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -2.0], [3.0, 0.0, 4.0]]))
    save_model(CCMC(logits), path)
    return path


# --------------------------------------------------------------------------- round trips
def test_dense_round_trip(dense_file):
    loaded = load_model(dense_file)
    assert isinstance(loaded, ModelFile)
    assert loaded.kind == "CCMC" and not loaded.model.sparse
    assert loaded.model == CCMC(np.arange(9.0).reshape(3, 3))
    assert loaded.vocabulary == ["<unk>", "a", "b"]
    assert loaded.format_version == FORMAT_VERSION
    import ccmc_estim

    assert loaded.package_version == ccmc_estim.__version__
    assert loaded.estimator is None and loaded.params == {} and loaded.metadata == {}


def test_sparse_round_trip(sparse_file):
    loaded = load_model(sparse_file)
    assert loaded.model.sparse
    original = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -2.0], [3.0, 0.0, 4.0]])
    assert loaded.model == CCMC(sparse.csc_array(original))
    np.testing.assert_array_equal(loaded.model.toarray(), original)
    assert loaded.vocabulary is None
    assert set(raw(sparse_file)) >= {"logits_data", "logits_indices", "logits_indptr"}


def test_positional_round_trip(tmp_path):
    model = PositionalCCMC(np.array([[0.5, -1.0], [2.0, 0.0]]), [0.0, -0.5, -1.5])
    save_model(model, tmp_path / "p.npz")
    loaded = load_model(tmp_path / "p.npz")
    assert loaded.kind == "PositionalCCMC"
    assert loaded.model == model
    prompts = [[0, 1, 1, 0], [1, 0]]
    np.testing.assert_array_equal(loaded.model.predict_proba(prompts),
                                  model.predict_proba(prompts))


def test_estimator_with_string_vocabulary(tmp_path):
    rng = np.random.default_rng(0)
    words = np.array(["the", "cat", "sat", "on", "mat", "a"])
    sequences = [list(words[rng.integers(0, 6, 40)]) for _ in range(30)]
    vocab = Vocabulary()
    X, y = prompts_from_sequences(sequences, 6, vocabulary=vocab)
    keep = np.array([t in p for p, t in zip(X, y, strict=True)])
    est = CCMCEstimator(alpha=0.5, n_tokens=vocab.n_tokens_).fit(X[keep], y[keep])
    path = tmp_path / "est.npz"
    save_model(est, path, vocabulary=vocab, metadata={"context_length": 6, "note": (1, 2)})
    loaded = load_model(path)
    assert loaded.estimator == "CCMCEstimator"
    assert loaded.params["alpha"] == 0.5 and loaded.params["n_tokens"] == vocab.n_tokens_
    assert loaded.metadata == {"context_length": 6, "note": [1, 2]}
    assert loaded.vocabulary == vocab.tokens_
    np.testing.assert_array_equal(loaded.vocabulary_counts, vocab.counts_)
    assert loaded.model == est.model_
    np.testing.assert_allclose(loaded.model.log_likelihood(X[keep], y[keep]),
                               est.score_samples(X[keep], y[keep]))
    again = loaded.to_vocabulary()
    assert again.tokens_ == vocab.tokens_
    seq = ["the", "dog", "sat"]
    np.testing.assert_array_equal(again.transform([seq])[0], vocab.transform([seq])[0])
    np.testing.assert_array_equal(loaded.encode(seq), vocab.transform([seq])[0])
    assert loaded.decode(loaded.encode(["cat", "mat"])) == ["cat", "mat"]


def test_mixture_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.integers(0, 5, size=(400, 6))
    y = np.where(rng.random(400) < 0.6, X[:, 2], rng.integers(0, 5, 400))
    for storage in (False, True):
        est = MixtureCCMCEstimator(sparse=storage, unknown_id=0).fit(X, y)
        path = tmp_path / f"mix{storage}.npz"
        save_model(est, path)
        loaded = load_model(path)
        assert loaded.kind == "MixtureCCMC" and loaded.estimator == "MixtureCCMCEstimator"
        assert loaded.model.ccmc.sparse == storage
        assert loaded.model.unknown_id == 0
        np.testing.assert_allclose(loaded.model.log_likelihood(X, y), est.score_samples(X, y))
        np.testing.assert_array_equal(loaded.model.copy_weight, est.copy_weight_)


def test_int_and_mixed_tokens_round_trip(tmp_path):
    tokens = ["<unk>", 7, 2.5, True, None]
    save_model(CCMC(np.zeros((5, 5))), tmp_path / "m.npz", vocabulary=tokens)
    loaded = load_model(tmp_path / "m.npz")
    assert loaded.vocabulary == tokens
    assert [type(t) for t in loaded.vocabulary] == [str, int, float, bool, type(None)]


def test_numpy_tokens_are_converted(tmp_path):
    save_model(CCMC(np.zeros((2, 2))), tmp_path / "m.npz",
               vocabulary=np.array(["<unk>", "x"]))
    assert load_model(tmp_path / "m.npz").vocabulary == ["<unk>", "x"]


def test_exact_path_and_no_leftovers(tmp_path):
    path = tmp_path / "model.bin"
    save_model(CCMC(np.eye(2)), path)
    assert path.exists() and not (tmp_path / "model.bin.npz").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]
    save_model(CCMC(2 * np.eye(2)), str(path))  # replaced
    assert load_model(str(path)).model == CCMC(2 * np.eye(2))


def test_file_object(tmp_path, dense_file):
    with open(dense_file, "rb") as f:
        assert load_model(f).vocabulary == ["<unk>", "a", "b"]


def test_format_is_plain_arrays(dense_file):
    arrays = raw(dense_file)
    assert str(arrays["format"]) == "ccmc_estim.model"
    assert int(arrays["format_version"]) == FORMAT_VERSION
    assert str(arrays["kind"]) == "CCMC" and int(arrays["n_tokens"]) == 3
    assert json.loads(str(arrays["vocabulary"])) == ["<unk>", "a", "b"]
    assert arrays["logits"].dtype == np.float64
    assert all(a.dtype.kind in "biufU" for a in arrays.values())


# --------------------------------------------------------------------------- save errors
@pytest.mark.parametrize("token", [("a", "b"), float("nan"), float("inf"), b"x", object()])
def test_unrepresentable_token(tmp_path, token):
    with pytest.raises(ValueError, match="JSON cannot represent"):
        save_model(CCMC(np.eye(2)), tmp_path / "m.npz", vocabulary=["<unk>", token])
    assert not list(tmp_path.iterdir())


def test_vocabulary_size_and_duplicates(tmp_path):
    with pytest.raises(ValueError, match="has 2 tokens but the model has 3"):
        save_model(CCMC(np.eye(3)), tmp_path / "m.npz", vocabulary=["<unk>", "a"])
    with pytest.raises(ValueError, match="same token twice"):
        save_model(CCMC(np.eye(2)), tmp_path / "m.npz", vocabulary=["a", "a"])
    with pytest.raises(TypeError, match="vocabulary must be"):
        save_model(CCMC(np.eye(2)), tmp_path / "m.npz", vocabulary="ab")


def test_save_refuses_non_models(tmp_path):
    with pytest.raises(NotFittedError):
        save_model(CCMCEstimator(), tmp_path / "m.npz")
    with pytest.raises(TypeError, match="CCMC, PositionalCCMC or MixtureCCMC"):
        save_model(np.eye(2), tmp_path / "m.npz")
    with pytest.raises(TypeError, match="fitted model_"):
        save_model(Vocabulary().fit([["a"]]), tmp_path / "m.npz")
    with pytest.raises(TypeError, match="metadata"):
        save_model(CCMC(np.eye(2)), tmp_path / "m.npz", metadata=[1])


def test_save_pipeline_takes_vocabulary(tmp_path):
    from sklearn.pipeline import make_pipeline

    X, y, _ = make_ccmc_data(300, 3, 5, random_state=0)
    est = CCMCEstimator(n_tokens=3).fit(X, y)
    vocab = Vocabulary().fit([["x", "y"]])
    pipe = make_pipeline(vocab, est)
    save_model(pipe, tmp_path / "m.npz")
    loaded = load_model(tmp_path / "m.npz")
    assert loaded.vocabulary == ["<unk>", "x", "y"] and loaded.model == est.model_


# --------------------------------------------------------------------------- load errors
def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nope.npz")


def test_refuses_pickle(tmp_path):
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(CCMC(np.eye(2))))
    with pytest.raises(ValueError, match="pickled data, which is never loaded"):
        load_model(path)


def test_refuses_object_array_inside_npz(tmp_path, dense_file):
    arrays = raw(dense_file)
    arrays["params"] = np.array([{"evil": 1}], dtype=object)
    path = tmp_path / "obj.npz"
    with open(path, "wb") as f:
        np.savez(f, **arrays)  # pickles the object array
    with pytest.raises(ValueError, match="'params' cannot be read without pickle"):
        load_model(path)


@pytest.mark.parametrize("content", [b"", b"hello world\n", b"PK\x03\x04garbage"])
def test_refuses_non_npz(tmp_path, content):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a ccmc_estim model file"):
        load_model(path)


def test_refuses_npy_and_foreign_npz(tmp_path):
    np.save(tmp_path / "a.npy", np.eye(2))
    with pytest.raises(ValueError, match="single .npy array"):
        load_model(tmp_path / "a.npy")
    np.savez(tmp_path / "b.npz", logits=np.eye(2))
    with pytest.raises(ValueError, match="'format' entry is missing"):
        load_model(tmp_path / "b.npz")
    with zipfile.ZipFile(tmp_path / "c.npz", "w") as z:
        z.writestr("format.npy", b"not an npy header")
    with pytest.raises(ValueError, match="not a ccmc_estim model file|corrupt|malformed"):
        load_model(tmp_path / "c.npz")


def test_refuses_truncated_file(tmp_path, dense_file):
    data = dense_file.read_bytes()
    path = tmp_path / "cut.npz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError):
        load_model(path)


def _tampered(tmp_path, source, change):
    arrays = raw(source)
    change(arrays)
    path = tmp_path / "tampered.npz"
    rewrite(path, arrays)
    return path


DENSE_TAMPERING = [
    (lambda a: a.pop("logits"), "no 'logits_data' array"),
    (lambda a: a.pop("kind"), "no 'kind' array"),
    (lambda a: a.pop("n_tokens"), "no 'n_tokens' array"),
    (lambda a: a.__setitem__("format_version", np.array(FORMAT_VERSION + 1)),
     "newer than this ccmc_estim reads"),
    (lambda a: a.__setitem__("format_version", np.array(0)), "format_version' must be >= 1"),
    (lambda a: a.__setitem__("format_version", np.array("1")), "0-d integer"),
    (lambda a: a.__setitem__("kind", np.array("Transformer")), "unknown model kind"),
    (lambda a: a.__setitem__("kind", np.array(["CCMC"])), "0-d text"),
    (lambda a: a.__setitem__("n_tokens", np.array(4)), "has 3 tokens but the model has 4"),
    (lambda a: (a.__setitem__("n_tokens", np.array(4)), a.pop("vocabulary")),
     r"must have shape \(4, 4\)"),
    (lambda a: a.__setitem__("n_tokens", np.array(0)), "'n_tokens' must be >= 1"),
    (lambda a: a.__setitem__("logits", a["logits"].astype(np.int64)), "floating-point"),
    (lambda a: a.__setitem__("logits", a["logits"].astype(np.float16)), "floating-point"),
    (lambda a: a.__setitem__("logits", np.zeros((3, 2))), r"shape \(3, 3\)"),
    (lambda a: a.__setitem__("logits", np.full((3, 3), np.nan)), "not finite"),
    (lambda a: a.__setitem__("logits", np.array(["x"] * 9).reshape(3, 3)), "must be numeric"),
    (lambda a: a.__setitem__("params", np.array("{not json")), "not valid JSON"),
    (lambda a: a.__setitem__("params", np.array("[1, 2]")), "JSON dict"),
    (lambda a: a.__setitem__("vocabulary", np.array('["<unk>", "a"]')), "has 2 tokens"),
    (lambda a: a.__setitem__("vocabulary", np.array('["<unk>", "a", [1]]')),
     "JSON cannot represent"),
    (lambda a: a.__setitem__("vocabulary", np.array('{"a": 1}')), "JSON list"),
    (lambda a: a.__setitem__("vocabulary_counts", np.zeros(2, np.int64)), r"shape \(3,\)"),
    (lambda a: a.__setitem__("position_bias", np.zeros(2)), "unexpected arrays"),
    (lambda a: a.__setitem__("logits_data", np.zeros(0)), "both dense"),
]


@pytest.mark.parametrize(("change", "message"), DENSE_TAMPERING)
def test_refuses_tampered_dense(tmp_path, dense_file, change, message):
    path = _tampered(tmp_path, dense_file, change)
    with pytest.raises(ValueError, match=message) as info:
        load_model(path)
    assert "tampered.npz" in str(info.value)


def _set(key, value):
    return lambda a: a.__setitem__(key, value)


SPARSE_TAMPERING = [
    (_set("logits_indices", np.array([0, 2, 5, 2], np.int32)), "outside 0..2"),
    (_set("logits_indices", np.array([0, 2, -1, 2], np.int32)), "outside 0..2"),
    (_set("logits_indices", np.array([2, 0, 1, 2], np.int32)), "strictly increasing"),
    (_set("logits_indices", np.array([0, 0, 1, 2], np.int32)), "strictly increasing"),
    (_set("logits_indices", np.array([0, 2, 1], np.int32)), "equal length"),
    (_set("logits_indices", np.array([0.0, 2, 1, 2])), "integer"),
    (_set("logits_indptr", np.array([0, 2, 1, 4])), "must rise from 0"),
    (_set("logits_indptr", np.array([1, 2, 2, 4])), "must rise from 0"),
    (_set("logits_indptr", np.array([0, 2, 2, 9])), "must rise from 0"),
    (_set("logits_indptr", np.array([0, 2, 4])), r"shape \(4,\)"),
    (_set("logits_data", np.array([1.0, np.inf, -2.0, 4.0])), "not finite"),
    (lambda a: a.pop("logits_indptr"), "no 'logits_indptr'"),
]


@pytest.mark.parametrize(("change", "message"), SPARSE_TAMPERING)
def test_refuses_tampered_sparse(tmp_path, sparse_file, change, message):
    path = _tampered(tmp_path, sparse_file, change)
    with pytest.raises(ValueError, match=message):
        load_model(path)


def test_refuses_tampered_positional(tmp_path):
    save_model(PositionalCCMC(np.eye(2), [0.0, -1.0]), tmp_path / "p.npz")
    for change, message in [
        (lambda a: a.pop("position_bias"), "no 'position_bias'"),
        (_set("position_bias", np.array([0.0, 5000.0])), "at most 700"),
        (_set("position_bias", np.zeros((2, 2))), "1-D"),
        (_set("position_bias", np.array([0.0, np.nan])), "not finite"),
    ]:
        with pytest.raises(ValueError, match=message):
            load_model(_tampered(tmp_path, tmp_path / "p.npz", change))


def test_refuses_tampered_mixture(tmp_path):
    rng = np.random.default_rng(2)
    X = rng.integers(0, 4, size=(200, 5))
    y = np.where(rng.random(200) < 0.5, X[:, 1], rng.integers(0, 4, 200))
    save_model(MixtureCCMCEstimator(sparse=True).fit(X, y), tmp_path / "m.npz")
    arrays = raw(tmp_path / "m.npz")
    n = arrays["base_counts_indices"].size
    for change in [
        _set("base_counts_indices", np.full(n, 99, np.int32)),
        _set("copy_weight", np.full(4, 2.0)),
        _set("copy_weight", np.full(5, 0.5)),
        _set("logits_indices", np.full(arrays["logits_indices"].size, 7, np.int32)),
        lambda a: a.pop("base_unigram"),
        _set("unknown_id", np.array("zero")),
    ]:
        with pytest.raises(ValueError, match="m.npz|tampered.npz"):
            load_model(_tampered(tmp_path, tmp_path / "m.npz", change))


def test_encode_without_vocabulary(sparse_file):
    loaded = load_model(sparse_file)
    np.testing.assert_array_equal(loaded.encode(["2", 1, "0"]), [2, 1, 0])
    assert loaded.decode([2, 0]) == [2, 0]
    with pytest.raises(ValueError, match="not an id in 0..2"):
        loaded.encode(["3"])
    with pytest.raises(ValueError, match="no vocabulary"):
        loaded.to_vocabulary()
