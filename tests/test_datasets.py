import numpy as np
import pytest

from ccmc_estim import Vocabulary, prompts_from_sequences


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
    with pytest.raises(ValueError, match="not fitted"):
        Vocabulary().transform([["a"]])
