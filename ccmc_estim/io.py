"""Model files: a documented ``.npz`` format that loading cannot turn into code.

:func:`save_model` writes a fitted estimator or a model (:class:`~ccmc_estim.CCMC`,
:class:`~ccmc_estim.PositionalCCMC`, :class:`~ccmc_estim.MixtureCCMC`) with its vocabulary,
its estimator's parameters and the package version; :func:`load_model` reads it back into a
:class:`ModelFile`.  The file is a compressed NumPy archive (``np.savez_compressed``) of plain
numeric and unicode arrays only, read with ``allow_pickle=False``: opening a file cannot run
code, and every array is checked (keys, dtypes, shapes, index ranges, finiteness) before a
model is built from it.

Format version 1 holds these arrays (``K`` is the vocabulary size; text fields are 0-d unicode
arrays):

=====================  ===========  ============  ===============================================
key                    dtype        shape         content
=====================  ===========  ============  ===============================================
``format``             unicode      ()            ``"ccmc_estim.model"``
``format_version``     int64        ()            ``1``
``package_version``    unicode      ()            ``ccmc_estim.__version__`` of the writer
``kind``               unicode      ()            ``"CCMC"``, ``"PositionalCCMC"`` or
                                                  ``"MixtureCCMC"``
``n_tokens``           int64        ()            ``K``
``estimator``          unicode      ()            class name of the fitted estimator, or ``""``
``params``             unicode      ()            JSON object: the estimator's ``get_params()``
``metadata``           unicode      ()            JSON object: free-form (the command line
                                                  stores its context length and tokenizer)
``vocabulary``         unicode      ()            optional; JSON array of the ``K`` tokens,
                                                  ``tokens[id]``; id 0 is the unknown token
``vocabulary_counts``  int64        (K,)          optional; the vocabulary's ``counts_``
``logits``             float64      (K, K)        dense logits, ``logits[k, q]``; or instead:
``logits_data``        float64      (nnz,)        the compressed-column (CSC) parts of sparse
``logits_indices``     int32/int64  (nnz,)        logits: row indices sorted within each
``logits_indptr``      int64        (K + 1,)      column, no duplicates
``position_bias``      float64      (D + 1,)      ``PositionalCCMC``, or a ``MixtureCCMC`` whose
                                                  copy part is one
``copy_weight`` ...    numeric                    ``MixtureCCMC`` only: the arrays of its
                                                  ``_to_arrays()`` (copy weights, the base
                                                  chain's counts as CSC parts ``base_counts_*``,
                                                  prior weights, unigram, ``unknown_id``)
=====================  ===========  ============  ===============================================

Any ``X_data``/``X_indices``/``X_indptr`` triple is a ``(K, K)`` CSC matrix and is checked as
one.  A reader refuses a file whose ``format_version`` is newer than the one it knows.
"""

import io as _io
import json
import math
import os
import tempfile
import zipfile
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse

from .model import CCMC, PositionalCCMC

__all__ = ["ModelFile", "load_model", "save_model"]

#: Version of the file format written by :func:`save_model` (read: this one and older).
FORMAT_VERSION = 1
_MAGIC = "ccmc_estim.model"
_TEXT_KEYS = ("format", "package_version", "kind", "estimator", "params", "metadata")
_INT_KEYS = ("format_version", "n_tokens")
_META_KEYS = frozenset((*_TEXT_KEYS, *_INT_KEYS, "vocabulary", "vocabulary_counts"))


# --------------------------------------------------------------------------- kinds
def _ccmc_to_arrays(model):
    if model.sparse:
        ptr, idx, val = model._parts
        out = {"logits_data": val, "logits_indices": idx, "logits_indptr": ptr}
    else:
        out = {"logits": model.logits}
    if isinstance(model, PositionalCCMC):
        out["position_bias"] = model.position_bias
    return out


def _logits_from_arrays(arrays, K):
    """Dense logits or a canonical CSC array from the ``logits*`` keys (validated)."""
    if "logits" in arrays:
        if any(k in arrays for k in ("logits_data", "logits_indices", "logits_indptr")):
            raise ValueError("the file holds both dense 'logits' and sparse 'logits_*' arrays.")
        logits = arrays["logits"]
        _check_array(logits, "logits", "f", (K, K))
        return logits
    return _csc_from_arrays(arrays, "logits", K, "f")


def _ccmc_from_arrays(arrays, K):
    return CCMC(_logits_from_arrays(arrays, K))


def _positional_from_arrays(arrays, K):
    bias = _require(arrays, "position_bias")
    if bias.ndim != 1 or bias.size == 0:
        raise ValueError(f"'position_bias' must be a non-empty 1-D array, got shape "
                         f"{bias.shape}.")
    _check_array(bias, "position_bias", "f", bias.shape)
    return PositionalCCMC(_logits_from_arrays(arrays, K), bias)


def _mixture_class():
    try:
        from .mixture import MixtureCCMC
    except ImportError:  # pragma: no cover - the module ships with the package
        return None
    return MixtureCCMC


def _mixture_to_arrays(model):
    return dict(model._to_arrays())


def _mixture_from_arrays(arrays, K):
    cls = _mixture_class()
    if cls is None:  # pragma: no cover
        raise ValueError("this installation of ccmc_estim cannot read MixtureCCMC files.")
    # The copy part's logits (and bias), checked as for a CCMC (a PositionalCCMC).
    (_positional_from_arrays if "position_bias" in arrays else _logits_from_arrays)(arrays, K)
    model = cls._from_arrays(arrays)
    if model.n_tokens != K:
        raise ValueError(f"the MixtureCCMC arrays describe {model.n_tokens} tokens, "
                         f"'n_tokens' says {K}.")
    return model


@dataclass(frozen=True)
class _Kind:
    to_arrays: object
    from_arrays: object
    keys: frozenset | None  # model keys allowed besides the logits (None: any)


_LOGIT_KEYS = frozenset(("logits", "logits_data", "logits_indices", "logits_indptr"))
_KINDS = {
    "CCMC": _Kind(_ccmc_to_arrays, _ccmc_from_arrays, _LOGIT_KEYS),
    "PositionalCCMC": _Kind(_ccmc_to_arrays, _positional_from_arrays,
                            _LOGIT_KEYS | {"position_bias"}),
    "MixtureCCMC": _Kind(_mixture_to_arrays, _mixture_from_arrays, None),
}


def _kind_of(model):
    """Name of the model kind of ``model`` (dispatch key of :data:`_KINDS`)."""
    if isinstance(model, PositionalCCMC):
        return "PositionalCCMC"
    if isinstance(model, CCMC):
        return "CCMC"
    mixture = _mixture_class()
    if mixture is not None and isinstance(model, mixture):
        return "MixtureCCMC"
    raise TypeError(
        "save_model needs a fitted estimator or a CCMC, PositionalCCMC or MixtureCCMC model, "
        f"got {type(model).__name__}."
    )


# --------------------------------------------------------------------------- checks
def _require(arrays, key):
    if key not in arrays:
        raise ValueError(f"the model file has no {key!r} array.")
    return arrays[key]


def _check_array(arr, key, kinds, shape):
    """Refuse an array whose dtype kind is not in ``kinds`` or whose shape differs."""
    if arr.dtype.kind not in kinds or arr.dtype == np.float16:
        want = {"f": "floating-point", "iu": "integer", "U": "text"}.get(kinds, kinds)
        raise ValueError(f"{key!r} must be a {want} array, got dtype {arr.dtype}.")
    if shape is not None and arr.shape != tuple(shape):
        raise ValueError(f"{key!r} must have shape {tuple(shape)}, got {arr.shape}.")
    if kinds == "f" and not np.isfinite(arr).all():
        raise ValueError(f"{key!r} holds values that are not finite.")


def _csc_from_arrays(arrays, prefix, K, data_kinds):
    """A canonical ``(K, K)`` CSC array from ``prefix_data/_indices/_indptr``, fully checked
    (a malformed index must never reach compiled code)."""
    data = _require(arrays, f"{prefix}_data")
    indices = _require(arrays, f"{prefix}_indices")
    indptr = _require(arrays, f"{prefix}_indptr")
    _check_array(indptr, f"{prefix}_indptr", "iu", (K + 1,))
    nnz = int(indptr[-1]) if indptr.size else 0
    _check_array(indices, f"{prefix}_indices", "iu", None)
    _check_array(data, f"{prefix}_data", data_kinds, None)
    if indices.ndim != 1 or data.ndim != 1 or indices.size != data.size:
        raise ValueError(f"{prefix!r}: '_data' and '_indices' must be 1-D of equal length, got "
                         f"shapes {data.shape} and {indices.shape}.")
    ptr = indptr.astype(np.int64)
    if ptr[0] != 0 or np.any(np.diff(ptr) < 0) or nnz != indices.size:
        raise ValueError(f"{prefix + '_indptr'!r} must rise from 0 to the number of stored "
                         f"entries ({indices.size}).")
    idx = indices.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= K):
        raise ValueError(f"{prefix + '_indices'!r} holds row indices outside 0..{K - 1}.")
    # Strictly increasing within each column: sorted, without duplicates.
    starts = np.zeros(idx.size, bool)
    starts[ptr[:-1][np.diff(ptr) > 0]] = True
    if idx.size > 1 and np.any((np.diff(idx) <= 0) & ~starts[1:]):
        raise ValueError(f"{prefix + '_indices'!r} must be strictly increasing within each "
                         "column.")
    index_dtype = np.int32 if K < 2**31 - 1 else np.int64
    return sparse.csc_array((data, idx.astype(index_dtype), ptr.astype(index_dtype)),
                            shape=(K, K))


def _text(arrays, key):
    arr = _require(arrays, key)
    if arr.dtype.kind != "U" or arr.shape != ():
        raise ValueError(f"{key!r} must be a 0-d text array, got dtype {arr.dtype} and shape "
                         f"{arr.shape}.")
    return str(arr)


def _integer(arrays, key):
    arr = _require(arrays, key)
    if arr.dtype.kind not in "iu" or arr.shape != ():
        raise ValueError(f"{key!r} must be a 0-d integer array, got dtype {arr.dtype} and "
                         f"shape {arr.shape}.")
    return int(arr)


def _json(arrays, key, kind):
    text = _text(arrays, key)
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{key!r} is not valid JSON: {exc}.") from None
    if not isinstance(value, kind):
        raise ValueError(f"{key!r} must hold a JSON {kind.__name__}, got "
                         f"{type(value).__name__}.")
    return value


# --------------------------------------------------------------------------- JSON
def _json_token(token, i):
    """A token as a JSON-representable Python value, or a clear error."""
    if isinstance(token, np.generic):
        token = token.item()
    if isinstance(token, (str, bool, int, type(None))):
        return token
    if isinstance(token, float):
        if not math.isfinite(token):
            raise ValueError(f"vocabulary token {i} is {token!r}: JSON cannot represent it "
                             "(only str, int, finite float, bool and None tokens can be saved).")
        return token
    raise ValueError(
        f"vocabulary token {i} is a {type(token).__name__} ({token!r:.40}): JSON cannot "
        "represent it (only str, int, finite float, bool and None tokens can be saved); map "
        "the tokens to strings first."
    )


def _check_tokens(tokens, K, saving=True):
    """The vocabulary as a list of JSON-representable, distinct tokens of length ``K``."""
    tokens = [_json_token(t, i) for i, t in enumerate(tokens)]
    if len(tokens) != K:
        hint = ("; fit the estimator with n_tokens=len(vocabulary.tokens_) so that every id "
                "has a token") if saving else ""
        raise ValueError(f"the vocabulary has {len(tokens)} tokens but the model has {K}{hint}.")
    if len(set(tokens)) != len(tokens):
        raise ValueError("the vocabulary holds the same token twice.")
    return tokens


def _json_value(value):
    """A parameter value as JSON data (arrays and tuples as lists; other objects as their
    ``repr``, since parameters are a record, not used to rebuild the model)."""
    if isinstance(value, np.ndarray):
        return _json_value(value.tolist())
    if isinstance(value, np.generic):
        return _json_value(value.item())
    if isinstance(value, (str, bool, int, type(None))):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    return repr(value)


def _dumps(value):
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


# --------------------------------------------------------------------------- result
@dataclass(frozen=True, eq=False)
class ModelFile:
    """What :func:`load_model` returns: the model with its vocabulary and records.

    Attributes
    ----------
    model : CCMC, PositionalCCMC or MixtureCCMC
        The model, ready to predict, score or generate.
    vocabulary : list or None
        ``vocabulary[id]`` is the token of each id (id 0 the unknown token), or None when the
        model was saved without one (its tokens are the ids themselves).
    vocabulary_counts : ndarray of int64 or None
        Occurrences of each id in the vocabulary's fit data, when saved.
    kind : str
        ``"CCMC"``, ``"PositionalCCMC"`` or ``"MixtureCCMC"``.
    estimator : str or None
        Class name of the estimator that was saved, None for a bare model.
    params : dict
        The estimator's parameters (``get_params()``, as JSON data).
    metadata : dict
        Free-form record given to :func:`save_model` (the command line stores its context
        length, tokenizer and training-data counts here).
    package_version : str
        Version of ``ccmc_estim`` that wrote the file.
    format_version : int
        Version of the file format.

    Examples
    --------
    >>> import numpy as np, pathlib, tempfile
    >>> from ccmc_estim import CCMC, load_model, save_model
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "model.npz"
    >>> save_model(CCMC(np.eye(3)), path, vocabulary=["<unk>", "a", "b"])
    >>> loaded = load_model(path)
    >>> loaded.model, loaded.vocabulary
    (CCMC(n_tokens=3), ['<unk>', 'a', 'b'])
    >>> loaded.encode(["a", "b", "zzz"]).tolist(), loaded.decode([2, 1])
    ([1, 2, 0], ['b', 'a'])
    """

    model: object
    vocabulary: list | None = None
    vocabulary_counts: np.ndarray | None = None
    kind: str = "CCMC"
    estimator: str | None = None
    params: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    package_version: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def n_tokens(self):
        """Vocabulary size ``K`` of the model."""
        return self.model.n_tokens

    def encode(self, tokens):
        """Ids of a sequence of tokens; tokens outside the vocabulary get the unknown id 0.

        Without a vocabulary the tokens must be integer ids below ``K`` (strings of digits
        are read as ids).

        Parameters
        ----------
        tokens : sequence
            Tokens of one sequence.

        Returns
        -------
        ndarray of int64
            One id per token.
        """
        tokens = list(tokens)
        if self.vocabulary is not None:
            index = {t: i for i, t in enumerate(self.vocabulary)}
            if all(_is_int(t) for t in self.vocabulary[1:]) and self.vocabulary[1:]:
                tokens = [_as_int(t) if isinstance(t, str) else t for t in tokens]
            return np.array([index.get(t, 0) for t in tokens], dtype=np.int64)
        ids = []
        for t in tokens:
            value = _as_int(t) if isinstance(t, str) else t
            if not _is_int(value) or not 0 <= value < self.n_tokens:
                raise ValueError(f"token {t!r} is not an id in 0..{self.n_tokens - 1} (the "
                                 "model file has no vocabulary).")
            ids.append(int(value))
        return np.array(ids, dtype=np.int64)

    def decode(self, ids):
        """Tokens of a sequence of ids (the ids themselves without a vocabulary).

        Parameters
        ----------
        ids : sequence of int

        Returns
        -------
        list
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if self.vocabulary is None:
            return ids.tolist()
        return [self.vocabulary[i] for i in ids]

    def to_vocabulary(self):
        """A fitted :class:`~ccmc_estim.Vocabulary` with the stored tokens.

        Returns
        -------
        Vocabulary
            ``tokens_`` as stored; ``counts_`` as stored, zeros when not saved.
        """
        from .datasets import Vocabulary

        if self.vocabulary is None:
            raise ValueError("the model file has no vocabulary.")
        vocab = Vocabulary(unknown_token=self.vocabulary[0])
        vocab.tokens_ = list(self.vocabulary)
        vocab.index_ = {t: i for i, t in enumerate(vocab.tokens_)}
        vocab.n_tokens_ = len(vocab.tokens_)
        counts = self.vocabulary_counts
        vocab.counts_ = (np.zeros(vocab.n_tokens_, np.int64) if counts is None
                         else counts.copy())
        vocab.unknown_id_ = 0
        return vocab


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _as_int(text):
    try:
        return int(text)
    except ValueError:
        return text


# --------------------------------------------------------------------------- save
def _split_object(obj, vocabulary):
    """``(model, estimator name, params, vocabulary)`` of what was passed to save_model."""
    from sklearn.exceptions import NotFittedError

    estimator, params = None, {}
    steps = getattr(obj, "steps", None)
    if isinstance(steps, list) and steps and hasattr(steps[-1][1], "get_params"):
        first = steps[0][1]  # a Pipeline(Vocabulary(), estimator)
        if vocabulary is None and len(steps) > 1 and hasattr(first, "tokens_"):
            vocabulary = first
        obj = steps[-1][1]
    if hasattr(obj, "get_params") and not isinstance(obj, CCMC):
        if not hasattr(obj, "model_"):
            fitted = any(k.endswith("_") and not k.startswith("_") for k in vars(obj))
            if fitted or not hasattr(obj, "fit"):
                raise TypeError(f"save_model needs an estimator with a fitted model_, got "
                                f"{type(obj).__name__}.")
            raise NotFittedError(f"This {type(obj).__name__} instance is not fitted yet; fit "
                                 "it before saving it.")
        estimator = type(obj).__name__
        params = {k: _json_value(v) for k, v in obj.get_params(deep=False).items()}
        obj = obj.model_
    return obj, estimator, params, vocabulary


def save_model(model, path, *, vocabulary=None, metadata=None):
    """Write a fitted estimator or a model to a ``.npz`` model file (no pickle).

    Parameters
    ----------
    model : estimator, CCMC, PositionalCCMC or MixtureCCMC
        A fitted estimator (its ``model_`` and parameters are saved), a model, or a
        :class:`~sklearn.pipeline.Pipeline` whose last step is a fitted estimator (a fitted
        :class:`~ccmc_estim.Vocabulary` first step is saved as the vocabulary).
    path : str or path-like
        File to write, exactly this name (no suffix is added); replaced atomically.
    vocabulary : Vocabulary, sequence or None, default=None
        A fitted :class:`~ccmc_estim.Vocabulary` (its ``tokens_`` and ``counts_``) or the
        sequence of the ``K`` tokens, ``tokens[id]``.  Tokens must be str, int, finite float,
        bool or None (what JSON represents); anything else raises ``ValueError``.
    metadata : dict or None, default=None
        Free-form record stored as JSON (values JSON cannot hold are stored as their
        ``repr``).

    Returns
    -------
    None

    Raises
    ------
    TypeError
        For an object that is neither an estimator nor a model.
    sklearn.exceptions.NotFittedError
        For an estimator that is not fitted.
    ValueError
        For a vocabulary that JSON cannot represent or whose size is not ``K``.

    See Also
    --------
    load_model : Read the file back.

    Notes
    -----
    The format is described in :mod:`ccmc_estim.io` and in the usage guide.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from ccmc_estim import CCMCEstimator, load_model, make_ccmc_data, save_model
    >>> X, y, _ = make_ccmc_data(500, 4, 6, random_state=0)
    >>> est = CCMCEstimator().fit(X, y)
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "model.npz"
    >>> save_model(est, path)
    >>> loaded = load_model(path)
    >>> loaded.estimator, loaded.params["alpha"], loaded.model == est.model_
    ('CCMCEstimator', 1.0, True)
    """
    from . import __version__

    model, estimator, params, vocabulary = _split_object(model, vocabulary)
    kind = _kind_of(model)
    K = int(model.n_tokens)
    arrays = {k: np.asarray(v) for k, v in _KINDS[kind].to_arrays(model).items()}
    clash = sorted(_META_KEYS.intersection(arrays))
    if clash:  # pragma: no cover - a plug-in's bug
        raise ValueError(f"the {kind} arrays use reserved keys {clash}.")
    counts = None
    if vocabulary is not None:
        if hasattr(vocabulary, "tokens_"):
            counts = getattr(vocabulary, "counts_", None)
            vocabulary = vocabulary.tokens_
        elif isinstance(vocabulary, (str, bytes)) or not hasattr(vocabulary, "__iter__"):
            raise TypeError("vocabulary must be a fitted Vocabulary or a sequence of tokens, "
                            f"got {type(vocabulary).__name__}.")
        tokens = _check_tokens(list(vocabulary), K)
        arrays["vocabulary"] = np.array(_dumps(tokens))
        if counts is not None:
            counts = np.asarray(counts, dtype=np.int64)
            if counts.shape == (K,):
                arrays["vocabulary_counts"] = counts
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict or None, got {type(metadata).__name__}.")
    arrays.update(
        format=np.array(_MAGIC),
        format_version=np.array(FORMAT_VERSION, dtype=np.int64),
        package_version=np.array(str(__version__)),
        kind=np.array(kind),
        n_tokens=np.array(K, dtype=np.int64),
        estimator=np.array(estimator or ""),
        params=np.array(_dumps(params)),
        metadata=np.array(_dumps(_json_value(metadata or {}))),
    )
    for key, arr in arrays.items():
        if arr.dtype.kind not in "biufU":  # pragma: no cover - a plug-in's bug
            raise TypeError(f"array {key!r} of dtype {arr.dtype} cannot be saved without "
                            "pickle.")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".ccmc-", suffix=".npz.tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- load
def _read_arrays(path):
    """Every array of an ``.npz`` file, read without pickle; ValueError for anything else."""
    name = os.fspath(path) if not hasattr(path, "read") else getattr(path, "name", "<file>")
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        why = "it holds pickled data, which is never loaded" if "pickle" in str(exc) else exc
        raise ValueError(f"{name} is not a ccmc_estim model file (not a readable .npz "
                         f"archive: {why}).") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{name} is not a ccmc_estim model file (a single .npy array, not "
                         "an .npz archive).")
    arrays = {}
    with data:
        for key in data.files:
            try:
                arrays[key] = data[key]
            except ValueError as exc:  # object arrays (pickles) land here
                raise ValueError(f"{name}: array {key!r} cannot be read without pickle or is "
                                 f"malformed ({exc}).") from None
            except (OSError, EOFError, zipfile.BadZipFile, MemoryError, _io.UnsupportedOperation,
                    KeyError) as exc:
                raise ValueError(f"{name}: array {key!r} is corrupt ({type(exc).__name__}: "
                                 f"{exc}).") from None
            if not isinstance(arrays[key], np.ndarray):  # a member that is not .npy
                raise ValueError(f"{name}: member {key!r} is not a NumPy array (not a "
                                 "ccmc_estim model file).")
    return name, arrays


def load_model(path):
    """Read a model file written by :func:`save_model`; loading never runs code.

    Parameters
    ----------
    path : str, path-like or binary file object
        The ``.npz`` model file.

    Returns
    -------
    ModelFile
        ``.model`` is the :class:`~ccmc_estim.CCMC`, :class:`~ccmc_estim.PositionalCCMC` or
        :class:`~ccmc_estim.MixtureCCMC`; ``.vocabulary`` the list of tokens by id (None when
        saved without one; ``.to_vocabulary()`` rebuilds a fitted
        :class:`~ccmc_estim.Vocabulary`, ``.encode``/``.decode`` map tokens and ids);
        ``.estimator``, ``.params``, ``.metadata``, ``.package_version`` and
        ``.format_version`` the records.

    Raises
    ------
    FileNotFoundError
        When there is no such file.
    ValueError
        For anything that is not a valid model file, naming the problem: not an ``.npz``
        archive, a pickled or object array, a missing key, a wrong dtype or shape, an index
        out of range, a non-finite logit, a format version newer than this package reads.

    See Also
    --------
    save_model : Write a model file.

    Examples
    --------
    >>> import numpy as np, pathlib, tempfile
    >>> from ccmc_estim import PositionalCCMC, load_model, save_model
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "positional.npz"
    >>> save_model(PositionalCCMC(np.eye(2), [0.0, -1.0]), path)
    >>> load_model(path).model.position_bias
    array([ 0., -1.])
    """
    name, arrays = _read_arrays(path)
    try:
        magic = _text(arrays, "format")
    except ValueError:
        magic = None
    if magic != _MAGIC:
        raise ValueError(f"{name} is not a ccmc_estim model file (its 'format' entry is "
                         f"{'missing or wrong' if magic is None else repr(magic)}).")
    try:
        return _from_arrays(arrays)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    except (TypeError, IndexError, KeyError, OverflowError, MemoryError) as exc:
        raise ValueError(f"{name}: malformed model arrays ({type(exc).__name__}: {exc}).") \
            from None


def _from_arrays(arrays):
    version = _integer(arrays, "format_version")
    if version > FORMAT_VERSION:
        raise ValueError(f"the file has format version {version}, newer than this ccmc_estim "
                         f"reads (up to {FORMAT_VERSION}); upgrade ccmc_estim.")
    if version < 1:
        raise ValueError(f"'format_version' must be >= 1, got {version}.")
    package_version = _text(arrays, "package_version")
    kind = _text(arrays, "kind")
    if kind not in _KINDS:
        raise ValueError(f"unknown model kind {kind!r} (expected one of {sorted(_KINDS)}).")
    K = _integer(arrays, "n_tokens")
    if K < 1:
        raise ValueError(f"'n_tokens' must be >= 1, got {K}.")
    estimator = _text(arrays, "estimator") or None
    params = _json(arrays, "params", dict)
    metadata = _json(arrays, "metadata", dict)
    vocabulary = None
    if "vocabulary" in arrays:
        tokens = _json(arrays, "vocabulary", list)
        vocabulary = _check_tokens(tokens, K, saving=False)
    counts = None
    if "vocabulary_counts" in arrays:
        if vocabulary is None:
            raise ValueError("'vocabulary_counts' without 'vocabulary'.")
        counts = arrays["vocabulary_counts"]
        _check_array(counts, "vocabulary_counts", "iu", (K,))
        counts = counts.astype(np.int64)
    model_arrays = {k: v for k, v in arrays.items() if k not in _META_KEYS}
    allowed = _KINDS[kind].keys
    if allowed is not None:
        extra = sorted(set(model_arrays) - allowed)
        if extra:
            raise ValueError(f"unexpected arrays {extra} in a {kind} file.")
    for key, arr in model_arrays.items():
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"{key!r} must be numeric, got dtype {arr.dtype}.")
        if key.endswith("_indptr"):  # any CSC triple is a (K, K) matrix: check it whole
            prefix = key[: -len("_indptr")]
            _csc_from_arrays(model_arrays, prefix, K, "f")
    model = _KINDS[kind].from_arrays(model_arrays, K)
    return ModelFile(model=model, vocabulary=vocabulary, vocabulary_counts=counts, kind=kind,
                     estimator=estimator, params=params, metadata=metadata,
                     package_version=package_version, format_version=version)
