import io
import math
import tokenize

import numpy as np
import pytest

from ccmc_estim.datasets import (
    Vocabulary,
    load_python_tokens,
    make_ccmc_data,
    prompts_from_sequences,
)


def test_sliding_windows():
    X, y = prompts_from_sequences([[0, 1, 2, 3, 4], [5, 6, 7]], 2)
    np.testing.assert_array_equal(X, [[0, 1], [1, 2], [2, 3], [5, 6]])
    np.testing.assert_array_equal(y, [2, 3, 4, 7])


def test_vocabulary_tokens():
    seqs = [["the", "cat", "sat", "the", "end"], ["the", "dog", "rare"]]
    vocab = Vocabulary(max_size=4)
    X, y = prompts_from_sequences(seqs, 2, vocabulary=vocab)
    assert vocab.n_tokens_ == 4
    assert vocab.tokens_[1] == "the"
    assert vocab.inverse_transform(X[0]) == ["the", "cat"]
    assert 0 in y or 0 in X  # "rare"/"dog" beyond max_size map to the unknown id
    assert X.max() < 4


def test_errors():
    with pytest.raises(TypeError, match="vocabulary"):
        prompts_from_sequences([["a", "b", "c"]], 1)
    with pytest.raises(ValueError, match="no sequence is longer"):
        prompts_from_sequences([[1, 2]], 5)
    with pytest.raises(ValueError, match="context_length"):
        prompts_from_sequences([[1, 2]], 0)
    with pytest.raises(TypeError, match="scalar"):
        prompts_from_sequences([1, 2, 3], 1)
    with pytest.raises(ValueError, match="negative"):
        prompts_from_sequences([[1, -2, 3]], 1)
    with pytest.raises(TypeError, match="string"):
        prompts_from_sequences(["abc"], 1)


# --- prompts_from_sequences: vocabulary and id range ---------------------------------------


@pytest.mark.parametrize("bad", [{}, {"a": 1}, [], "vocab", 3])
def test_prompts_bad_vocabulary(bad):
    with pytest.raises(TypeError, match="fit and transform"):
        prompts_from_sequences([["a", "b", "c"]], 1, vocabulary=bad)


def test_prompts_vocabulary_class_not_instance():
    with pytest.raises(TypeError, match="instance"):
        prompts_from_sequences([["a", "b", "c"]], 1, vocabulary=Vocabulary)


def test_prompts_fitted_vocabulary_is_not_refitted():
    vocab = Vocabulary().fit([["x", "y", "y", "z"]])
    tokens = list(vocab.tokens_)
    X, y = prompts_from_sequences([["z", "new", "y"]], 1, vocabulary=vocab)
    assert vocab.tokens_ == tokens
    np.testing.assert_array_equal(X[:, 0], [vocab.index_["z"], 0])
    np.testing.assert_array_equal(y, [0, vocab.index_["y"]])


def test_prompts_unfitted_vocabulary_is_fitted():
    vocab = Vocabulary()
    prompts_from_sequences([["a", "b", "a"]], 1, vocabulary=vocab)
    assert vocab.tokens_ == ["<unk>", "a", "b"]


@pytest.mark.parametrize(
    "seq",
    [
        np.array([1, 2**64 - 1, 3], dtype=np.uint64),
        np.array([1, 2**63, 3], dtype=np.uint64),
        [1, 2**64 - 1, 3],  # numpy reads this list as float64
        [1, 2**70, 3],  # ... and this one as object
        [-1, 2**64 - 1],
    ],
)
def test_prompts_ids_beyond_int64(seq):
    with pytest.raises(ValueError, match="sequence 1 .*does not fit int64"):
        prompts_from_sequences([[0, 1, 2], seq], 1)


def test_prompts_uint64_ids_in_range():
    seq = np.array([0, 3, 2**62, 1], dtype=np.uint64)
    X, y = prompts_from_sequences([seq], 1)
    assert X.dtype == np.int64
    np.testing.assert_array_equal(y, [3, 2**62, 1])
    assert (X >= 0).all()


# --- make_ccmc_data validation --------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt_length",
    [2.5, 3.0, (2.5, 4), (2, 4.5), (2, 4.0), True, (True, 3), float("nan"), (float("nan"), 3),
     (3, 2), (0, 2), 0, (1, 2, 3), "34", None],
)
def test_make_ccmc_data_bad_prompt_length(prompt_length):
    with pytest.raises(ValueError, match="prompt_length"):
        make_ccmc_data(5, 3, prompt_length, random_state=0)


@pytest.mark.parametrize("prompt_length", [3, np.int64(3), (2, 4), [2, 4], np.array([2, 4])])
def test_make_ccmc_data_good_prompt_length(prompt_length):
    prompts, outputs, _ = make_ccmc_data(6, 3, prompt_length, random_state=0)
    assert len(prompts) == len(outputs) == 6


@pytest.mark.parametrize("kwargs", [
    {"n_prompts": True}, {"n_prompts": 2.0}, {"logit_scale": True},
    {"logit_scale": float("nan")}, {"logit_scale": -1.0}, {"logit_scale": "1"},
    {"token_distribution": ["zipf"]},
])
def test_make_ccmc_data_bad_parameters(kwargs):
    args = {"n_prompts": 5, "n_tokens": 3, "prompt_length": 2, **kwargs}
    with pytest.raises(ValueError):
        make_ccmc_data(**args)


def test_make_ccmc_data_unchanged_stream():
    # validation moved before the draws: the random stream is the same as before
    prompts, _, model = make_ccmc_data(4, 3, (2, 3), random_state=7)
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((3, 3))
    np.testing.assert_allclose(model.logits, logits)
    lengths = rng.integers(2, 4, size=4)
    assert [len(p) for p in prompts] == lengths.tolist()


# --- load_python_tokens ---------------------------------------------------------------------

SOURCE = '''\
"""Doc."""
import os  # a comment


class A:
    x = 1.5e3

    def f(self, y):
        return (self.x +
                y) if y else f"{y!r}"
'''


def _reference_tokens(text, literals="keep", comments=False):
    """Independent token strings of ``text``, straight from tokenize."""
    special = {tokenize.NEWLINE: "<newline>", tokenize.INDENT: "<indent>",
               tokenize.DEDENT: "<dedent>"}
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type in (tokenize.NL, tokenize.ENDMARKER, tokenize.ENCODING):
            continue
        if tok.type == tokenize.COMMENT and not comments:
            continue
        if tok.type in special:
            out.append(special[tok.type])
        elif literals == "placeholder" and tok.type == tokenize.STRING:
            out.append("<str>")
        elif literals == "placeholder" and tok.type == tokenize.NUMBER:
            out.append("<num>")
        elif tok.type == getattr(tokenize, "FSTRING_MIDDLE", None) and literals == "placeholder":
            out.append("<str>")
        else:
            out.append(tok.string)
    return out


@pytest.fixture
def small_file(tmp_path):
    path = tmp_path / "small.py"
    path.write_text(SOURCE)
    return path


def test_load_python_tokens_reconstructs_token_stream(small_file):
    data = load_python_tokens(files=[small_file])
    assert data.files == [str(small_file)]
    assert data.skipped == [] and data.root is None
    tokens = data.sequences[0]
    assert tokens == _reference_tokens(SOURCE)
    assert tokens[:4] == ['"""Doc."""', "<newline>", "import", "os"]
    assert "# a comment" not in tokens and "<indent>" in tokens and "<dedent>" in tokens
    assert tokens.count("<indent>") == tokens.count("<dedent>") == 2
    # the token texts joined by spaces are the same program
    text = " ".join(t for t in tokens if not t.startswith("<"))
    stripped = " ".join(t.string for t in tokenize.generate_tokens(io.StringIO(SOURCE).readline)
                        if t.string.strip() and t.type != tokenize.COMMENT)
    assert text == stripped


def test_load_python_tokens_options(small_file):
    with_comments = load_python_tokens(files=[small_file], include_comments=True).sequences[0]
    assert with_comments == _reference_tokens(SOURCE, comments=True)
    assert "# a comment" in with_comments
    placeholders = load_python_tokens(files=[small_file], literals="placeholder").sequences[0]
    assert placeholders == _reference_tokens(SOURCE, literals="placeholder")
    assert "<num>" in placeholders and "<str>" in placeholders
    assert "1.5e3" not in placeholders and "1" not in placeholders


def test_load_python_tokens_skips_bad_files(tmp_path, small_file):
    bad = {
        "syntax.py": "def f(:\n    x = '''never closed\n",
        "indent.py": "if x:\n        a = 1\n    b = 2\n",
        "errortoken.py": "x = $\n",
        "latin.py": b"x = '\xff\xfe'\n",
        "cookie.py": "# -*- coding: no-such-codec -*-\nx = 1\n",
    }
    paths = []
    for name, text in bad.items():
        path = tmp_path / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        paths.append(path)
    data = load_python_tokens(files=[*paths, small_file])
    assert data.files == [str(small_file)]
    assert [p for p, _ in data.skipped] == [str(p) for p in paths]
    assert all(isinstance(reason, str) and reason for _, reason in data.skipped)
    # n_files counts files that tokenise
    assert load_python_tokens(1, files=[*paths, small_file]).files == [str(small_file)]


def test_load_python_tokens_directory_and_errors(tmp_path, small_file):
    (tmp_path / "b.py").write_text("y = 2\n")
    (tmp_path / "notes.txt").write_text("not python\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "t.py").write_text("z = 3\n")
    data = load_python_tokens(files=tmp_path)
    assert data.files == [str(tmp_path / "b.py"), str(small_file)]
    assert data.sequences[0] == ["y", "=", "2", "<newline>"]
    data = load_python_tokens(files=[tmp_path], include_tests=True)
    assert data.files[-1] == str(tmp_path / "tests" / "t.py")
    with pytest.raises(FileNotFoundError):
        load_python_tokens(files=[tmp_path / "missing.py"])


def test_load_python_tokens_max_tokens_and_split(tmp_path):
    paths = []
    for i in range(5):
        path = tmp_path / f"m{i}.py"
        path.write_text(f"x{i} = {i}\n")  # 4 tokens each
        paths.append(path)
    data = load_python_tokens(files=paths, max_tokens=10)
    assert [len(s) for s in data.sequences] == [4, 4, 2]
    data = load_python_tokens(files=paths, test_size=0.2)
    assert data.n_train == 4 and len(data.test) == 1
    assert data.train == data.sequences[:4] and data.test == data.sequences[4:]
    assert load_python_tokens(files=paths, test_size=2).n_train == 3
    assert load_python_tokens(files=paths, test_size=0.3).n_train == 5 - math.ceil(1.5)
    assert load_python_tokens(files=paths).test == []


def test_load_python_tokens_stdlib():
    data = load_python_tokens(3)
    assert len(data.sequences) == len(data.files) == 3
    assert data.files == sorted(data.files)
    assert all(f.endswith(".py") and "site-packages" not in f for f in data.files)
    assert all(isinstance(t, str) for seq in data.sequences for t in seq)
    assert sum(map(len, data.sequences)) > 0
    assert load_python_tokens(3).sequences == data.sequences  # deterministic
    with open(data.files[0], "rb") as f:
        reference = _reference_tokens(f.read().decode("utf-8"))
    assert data.sequences[0] == reference


@pytest.mark.parametrize("kwargs", [
    {"n_files": 0}, {"n_files": True}, {"n_files": 1.5}, {"max_tokens": 0},
    {"include_comments": "yes"}, {"literals": "drop"}, {"test_size": 1.0},
    {"test_size": -1}, {"test_size": True},
])
def test_load_python_tokens_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        load_python_tokens(**kwargs)


def test_python_tokens_to_training_pairs(small_file):
    data = load_python_tokens(files=[small_file], literals="placeholder")
    vocab = Vocabulary()
    X, y = prompts_from_sequences(data.sequences, 3, vocabulary=vocab)
    assert len(y) == len(data.sequences[0]) - 3
    assert vocab.inverse_transform(X[0]) == data.sequences[0][:3]
