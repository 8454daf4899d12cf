"""The context-conditioned Markov chain."""

from numbers import Integral

import numpy as np
from scipy import sparse
from scipy.special import softmax

from . import _kernels
from ._columns import csc_from_parts, csc_parts
from ._stats import (
    PromptStats,
    _check_integral,
    _physical_memory,
    check_memory,
    check_n_tokens,
    check_outputs,
    check_random_state,
    prompt_stats,
)
from .attention import _as_float64, logits_from_attention


def _check_logits(logits, copy=True):
    """A private, read-only copy of dense ``(K, K)`` logits or canonical CSC parts of sparse
    ones, with every entry finite (``copy=False``: freeze the given arrays themselves)."""
    # Booleans are refused as everywhere else (weights, biases, embeddings): True is no logit.
    if sparse.issparse(logits):
        if logits.dtype.kind not in "iuf":
            raise TypeError(f"logits must be real numbers, got a sparse array of dtype "
                            f"{logits.dtype}.")
        shape = logits.shape
    else:
        logits = np.asarray(logits)
        if logits.dtype.kind not in "iuf":
            raise TypeError(f"logits must be real numbers, got dtype {logits.dtype}.")
        shape = logits.shape
    if len(shape) != 2 or shape[0] != shape[1] or shape[0] == 0:
        raise ValueError(f"logits must be a square (K, K) matrix, got shape {shape}.")
    check_n_tokens(shape[0])  # token ids are int32 in the kernels, per-token arrays fit memory
    if sparse.issparse(logits):
        if logits.format in ("csr", "csc", "bsr"):
            # scipy checks the index bounds of compressed arrays only on request: indices out
            # of range would be read and written out of bounds (scipy's own conversions and
            # the compiled kernels segfault on them).
            try:
                logits.check_format(full_check=True)
            except ValueError as exc:
                raise ValueError(f"logits is a malformed sparse array: {exc}") from None
        ptr, idx, val = (a.copy() if copy else a for a in csc_parts(logits))
        bad = np.flatnonzero(~np.isfinite(val))
        if bad.size:
            q = int(np.searchsorted(ptr, bad[0], side="right") - 1)
            raise ValueError(f"logits must be finite; logits[{idx[bad[0]]}, {q}] = "
                             f"{val[bad[0]]}.")
        for arr in (ptr, idx, val):
            # Frozen down to the array that owns the memory: without a copy, the estimators
            # share the token ids with their reports and identified_ masks.
            while isinstance(arr, np.ndarray):
                arr.setflags(write=False)
                arr = arr.base
        return ptr, idx, val
    # A private copy: the model is immutable.
    logits = np.array(logits, dtype=np.float64) if copy else np.asarray(logits, np.float64)
    if not np.isfinite(logits).all():
        k, q = np.argwhere(~np.isfinite(logits))[0]
        raise ValueError(f"logits must be finite; logits[{k}, {q}] = {logits[k, q]}.")
    logits.setflags(write=False)
    return logits


def adopt_logits(cls, logits, *position_bias):
    """A model of class ``cls`` that takes ownership of freshly computed logits: validated and
    frozen in place, without the defensive copy of the constructor (the estimators' results
    at large vocabularies are stored once)."""
    model = cls.__new__(cls)
    model._set_logits(logits, copy=False)
    if position_bias:
        model.position_bias = check_position_bias(position_bias[0])
    return model


def dense_size_check(n_rows, n_cols, what):
    """Refuse a dense float64 array that would take more than half of this machine's memory."""
    need = 8 * int(n_rows) * int(n_cols)
    if need > _physical_memory() // 2:
        raise ValueError(
            f"{what} would be a dense ({n_rows:,}, {n_cols:,}) array of {need / 2**30:.3g} GiB, "
            "more than half of this machine's memory; use the sparse form instead."
        )


#: ``log_norm`` of :func:`~ccmc_estim._kernels.entry_log_proba` when not wanted.
_NO_NORM = np.empty(0)


class CCMC:
    """Context-conditioned Markov chain: the exact model of a tied one-layer attention layer.

    Given a prompt with last token (query) ``q`` and token histogram ``m``, the next token is
    ``k`` with probability ``m_k exp(logits[k, q]) / sum_j m_j exp(logits[j, q])``.

    Parameters
    ----------
    logits : array-like of shape (K, K) or scipy.sparse array of shape (K, K)
        ``logits[k, q]`` is the attention logit of token ``k`` when the query is ``q``
        (columns are queries).  Adding a constant to a column changes nothing.  In sparse
        (compressed-column) form an entry that is not stored is the column centre, 0: memory
        in proportion to the stored entries, for vocabularies of any size.  Dense and sparse
        forms of the same matrix give identical probabilities.

    Attributes
    ----------
    logits : ndarray or scipy.sparse.csc_array of shape (K, K)
        Read-only logits, in the storage they were given in.
    n_tokens : int
        Vocabulary size ``K``.
    sparse : bool
        Whether the logits are stored in compressed-column form.

    Examples
    --------
    >>> import numpy as np
    >>> from ccmc_estim import CCMC
    >>> model = CCMC(np.array([[2.0, 0.0], [0.0, 1.0]]))
    >>> model.predict_proba([[0, 1, 1]]).round(3)
    array([[0.155, 0.845]])
    >>> model.transition_matrix.round(3)
    array([[0.881, 0.119],
           [0.269, 0.731]])
    >>> from scipy import sparse
    >>> sparse_model = CCMC(sparse.csc_array(model.logits))
    >>> sparse_model.predict_proba([[0, 1, 1]]).toarray().round(3)
    array([[0.155, 0.845]])
    """

    def __init__(self, logits):
        self._set_logits(logits)

    def _set_logits(self, logits, copy=True):
        checked = _check_logits(logits, copy)
        if isinstance(checked, tuple):
            self._dense = None
            self._parts = checked
            self.n_tokens = checked[0].size - 1
        else:
            self._dense = checked
            self._parts = None
            self.n_tokens = checked.shape[0]

    # The checks made at construction must survive pickle, joblib and deepcopy: the state is
    # validated and frozen again when it is restored.
    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_csc_cache", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._set_logits(self.logits)
        if "position_bias" in state:
            self.position_bias = check_position_bias(state["position_bias"])

    @property
    def sparse(self):
        return self._dense is None

    @property
    def logits(self):
        if self._dense is not None:
            return self._dense
        K = self.n_tokens
        ptr, idx, val = self._parts
        return csc_from_parts(val, idx, ptr, K)

    def toarray(self):
        """The logits as a dense ``(K, K)`` array (a copy; missing sparse entries are 0).

        Raises a ValueError instead of allocating more than half of this machine's memory.
        """
        if self._dense is not None:
            return self._dense.copy()
        dense_size_check(self.n_tokens, self.n_tokens, "the logits")
        return self.logits.toarray()

    @property
    def _csc(self):
        """CSC parts of the logits for the compiled kernels (all entries of a dense model)."""
        if self._parts is not None:
            return self._parts
        cache = self.__dict__.get("_csc_cache")
        if cache is None:
            cache = csc_parts(self._dense)
            for arr in cache:  # read-only as a sparse model's: one compiled type for kernels
                arr.setflags(write=False)
            self.__dict__["_csc_cache"] = cache
        return cache

    def __repr__(self):
        kind = ", sparse" if self.sparse else ""
        return f"{type(self).__name__}(n_tokens={self.n_tokens}{kind})"

    def __eq__(self, other):
        if type(other) is not type(self) or other.sparse != self.sparse:
            return False
        if self.sparse:
            return all(np.array_equal(a, b) for a, b in zip(self._parts, other._parts,
                                                            strict=True))
        return np.array_equal(self._dense, other._dense)

    __hash__ = None

    # ------------------------------------------------------------------ helpers
    def _stats(self, prompts):
        if isinstance(prompts, PromptStats):
            raise TypeError("prompts must be token ids, not internal prompt statistics.")
        return prompt_stats(prompts, self.n_tokens)

    def _entry_log_proba(self, stats):
        return _kernels.entry_log_proba(*self._csc, stats.indptr, stats.tokens, stats.logc,
                                        stats.query, _NO_NORM)

    def support_block(self, support):
        """Dense logits ``logits[support][:, support]`` among a few tokens (0 where missing)."""
        # Token ids as everywhere: a float is not truncated, nor a negative id wrapped around.
        support = _check_integral(support, "support").astype(np.int64, copy=False)
        if support.ndim != 1:
            raise ValueError(f"support must be a 1-D array of token ids, got {support.shape}.")
        bad = (support < 0) | (support >= self.n_tokens)
        if bad.any():
            raise ValueError(f"support holds token {support[bad][0]} outside the vocabulary "
                             f"0..{self.n_tokens - 1}.")
        check_memory(8 * support.size**2, f"a block of {support.size} tokens")
        if self._dense is not None:
            return self._dense[np.ix_(support, support)]
        return self.logits[:, support][support, :].toarray()

    def _by_prompt(self, stats, values, fill):
        """``(n, K)`` result holding one value per entry: CSR for a sparse model (entries not
        stored mean ``fill``), dense otherwise."""
        if self.sparse:
            return sparse.csr_array((values, stats.tokens, stats.indptr),
                                    shape=(stats.n_prompts, self.n_tokens))
        dense_size_check(stats.n_prompts, self.n_tokens, "the result")
        out = np.full((stats.n_prompts, self.n_tokens), fill)
        out[stats.row, stats.tokens] = values
        return out

    # ------------------------------------------------------------------ probabilities
    def predict_log_proba(self, prompts):
        """Log-probabilities of the next token.

        Parameters
        ----------
        prompts : array-like of shape (n, L) or sequence of 1-D sequences
            Token ids.

        Returns
        -------
        ndarray or scipy.sparse.csr_array of shape (n, K)
            Exactly ``-inf`` for tokens absent from a prompt.  For a sparse model a CSR array
            that stores the log-probabilities of each prompt's tokens only: an entry that is
            not stored is ``-inf``, not 0.
        """
        stats = self._stats(prompts)
        return self._by_prompt(stats, self._entry_log_proba(stats), -np.inf)

    def predict_proba(self, prompts):
        """Next-token distribution of each prompt.

        Parameters
        ----------
        prompts : array-like of shape (n, L) or sequence of 1-D sequences

        Returns
        -------
        ndarray or scipy.sparse.csr_array of shape (n, K)
            Dense for a dense model; for a sparse model a CSR array (nonzero only on each
            prompt's tokens; ``.toarray()`` gives the dense form for small ``K``).
        """
        stats = self._stats(prompts)
        return self._by_prompt(stats, np.exp(self._entry_log_proba(stats)), 0.0)

    def predict(self, prompts):
        """Most probable next token of each prompt (ties: the smallest id), shape ``(n,)``."""
        stats = self._stats(prompts)
        logp = self._entry_log_proba(stats)
        return stats.tokens[_kernels.entry_argmax(logp, stats.indptr)].astype(np.int64)

    def log_likelihood(self, prompts, outputs):
        """Log-probability of each output given its prompt (``-inf`` when absent from it).

        Returns
        -------
        ndarray of shape (n,)
        """
        stats = self._stats(prompts)
        outputs = check_outputs(outputs, stats.n_prompts, self.n_tokens)
        entries = stats.output_entries(outputs)
        logp = self._entry_log_proba(stats)
        return np.where(entries >= 0, logp[np.maximum(entries, 0)], -np.inf)

    def sample(self, prompts, random_state=None):
        """Draw one next token for each prompt.

        Parameters
        ----------
        prompts : array-like of shape (n, L) or sequence of 1-D sequences
        random_state : int, Generator, RandomState or None

        Returns
        -------
        ndarray of int64, shape (n,)
        """
        stats = self._stats(prompts)
        u = check_random_state(random_state).random(stats.n_prompts)
        entries = _kernels.sample_entries(self._entry_log_proba(stats), stats.indptr, u)
        return stats.tokens[entries].astype(np.int64)

    # ------------------------------------------------------------------ base chain
    @property
    def transition_matrix(self):
        """Base Markov chain, row-stochastic: row ``q`` is ``softmax(logits[:, q])``.

        A dense ``(K, K)`` array for a dense model; for a sparse model a
        ``scipy.sparse.linalg.LinearOperator`` (each row is sparse plus a constant, since
        missing logits are 0), with memory in proportion to the stored logits.
        """
        from ._markov import transition_operator

        if self.sparse:
            return transition_operator(self.logits)
        return softmax(self._dense, axis=0).T

    def stationary_distribution(self):
        """Stationary distribution ``pi`` of the base chain (``pi @ P = pi``, ``sum(pi) = 1``).

        The base chain has strictly positive transitions, so ``pi`` is unique; it is computed
        by a method that stays accurate for nearly decomposable chains (huge logits), and for
        sparse logits by a sparse solver, never a dense ``K x K`` array.
        """
        from ._markov import stationary_from_logits

        return stationary_from_logits(self.logits)

    # ------------------------------------------------------------------ attention
    @classmethod
    def from_attention(cls, E, W_att=None, C=None, atol=None, *, W_Q=None, W_K=None,
                       scale=None):
        """CCMC of a one-layer self-attention layer with a tied output head.

        Parameters
        ----------
        E : array-like of shape (K, d)
            Token embeddings (one row per token), ``d >= K``.  Anything array-like, PyTorch
            tensors included (detached and moved to the CPU).
        W_att : array-like of shape (d, d) or None
            Attention matrix: the score of position ``i`` is ``e_{x_i}^T W_att e_q``.
        C : array-like of shape (K, d) or None
            Output head.  When given it must satisfy weight tying ``C E^T = I`` (the head maps
            the embedding of token ``k`` back to its one-hot); ``C = E`` qualifies when the
            embeddings are orthonormal.  When None, the tied head ``pinv(E)^T`` is assumed,
            which needs ``E`` of rank ``K``.
        atol : float or None
            Tolerance of the tying check; None chooses it from the inputs' floating-point
            precision (``100 sqrt(d) eps`` times the rows' norms, at most 0.01), so float32
            layers pass.
        W_Q, W_K : array-like of shape (d, d_k) or None
            Separate query and key projections instead of ``W_att``:
            ``W_att = scale * W_K W_Q^T`` (``scale`` defaults to ``1 / sqrt(d_k)``).
        scale : float or None

        Returns
        -------
        CCMC
            The model with ``logits = E W_att E^T``.

        Examples
        --------
        >>> import numpy as np
        >>> from ccmc_estim import CCMC
        >>> E = np.eye(3)
        >>> float(CCMC.from_attention(E, np.diag([1.0, 2.0, 3.0])).logits[2, 2])
        3.0
        """
        return cls(logits_from_attention(E, W_att, C, W_Q=W_Q, W_K=W_K, scale=scale,
                                         atol=atol))

    def to_attention(self, d=None, random_state=None):
        """An attention layer ``(E, W_att, C)`` with exactly this model's output distribution.

        Parameters
        ----------
        d : int or None
            Embedding dimension (``>= K``).  None gives ``E = C = I_K`` and ``W_att = logits``.
        random_state : int, Generator, RandomState or None
            With ``d`` given, ``E`` has random orthonormal rows drawn from it.

        Returns
        -------
        E : ndarray of shape (K, d)
        W_att : ndarray of shape (d, d)
        C : ndarray of shape (K, d)
            Tied to ``E``: ``C E^T = I``.
        """
        K = self.n_tokens
        if d is None:
            return np.eye(K), self.toarray(), np.eye(K)
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, Integral):
            raise TypeError(f"d must be None or an integer, got {d!r}.")
        if d < K:
            raise ValueError(f"d must be at least K={K}, got {d}.")
        # E, W_att and the QR factor of a d x d Gaussian: refuse before allocating them.
        check_memory(8 * d * (3 * d + K), f"an attention layer of dimension d={d}")
        rng = check_random_state(random_state)
        Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        E = Q[:K]
        return E, E.T @ self.toarray() @ E, E.copy()


def check_position_bias(position_bias):
    """A frozen copy of a valid relative position bias, shifted so that ``b[0] = 0``."""
    b = np.array(position_bias)
    if b.dtype.kind not in "iuf" or b.dtype == bool:
        raise TypeError(f"position_bias must hold real numbers, got dtype {b.dtype}.")
    if b.ndim != 1:
        # A scalar would silently mean "no bias" once shifted to b[0] = 0.
        raise ValueError(f"position_bias must be 1-D, got shape {b.shape}.")
    b = b.astype(np.float64).reshape(-1)
    if b.size == 0 or not np.isfinite(b).all():
        raise ValueError("position_bias must be a non-empty 1-D array of finite numbers.")
    if np.ptp(b) > 700:
        # Position weights are exp(b - max b): a spread beyond 700 underflows to zero weight.
        raise ValueError(
            f"position_bias spans {np.ptp(b):.4g} (max - min); at most 700 is supported."
        )
    b -= b[0]  # gauge: only differences between distances matter
    b.setflags(write=False)
    return b


class PositionalCCMC(CCMC):
    """CCMC of an attention layer with a relative position bias (ALiBi- or T5-like).

    The score of position ``i`` of a prompt of length ``L`` gains ``b[L - i]`` (distance from
    the last token, ``0`` for the query itself), so

        P(y = k | prompt) ∝ exp(logits[k, q]) * sum over positions i holding k of exp(b[L - i]).

    Distances beyond ``len(b) - 1`` use ``b[-1]``.  The gauge is ``b[0] = 0`` (the bias is
    stored shifted so).  ``b = 0`` gives the plain :class:`CCMC`.

    Parameters
    ----------
    logits : array-like of shape (K, K)
    position_bias : array-like of shape (D + 1,)

    Examples
    --------
    >>> import numpy as np
    >>> from ccmc_estim import PositionalCCMC
    >>> model = PositionalCCMC(np.zeros((2, 2)), [0.0, -np.log(2)])
    >>> model.predict_proba([[0, 1]]).round(3)  # the older token has half the weight
    array([[0.333, 0.667]])
    """

    def __init__(self, logits, position_bias):
        super().__init__(logits)
        self.position_bias = check_position_bias(position_bias)

    def __repr__(self):
        return f"PositionalCCMC(n_tokens={self.n_tokens}, max_distance={self.max_distance})"

    def __eq__(self, other):
        return super().__eq__(other) and np.array_equal(self.position_bias, other.position_bias)

    __hash__ = None

    @property
    def max_distance(self):
        return self.position_bias.size - 1

    def _stats(self, prompts):
        if isinstance(prompts, PromptStats):
            raise TypeError("prompts must be token ids, not internal prompt statistics.")
        b = self.position_bias
        return prompt_stats(prompts, self.n_tokens, dist_weight=np.exp(b - b.max()))

    @classmethod
    def from_attention(cls, E, W_att=None, position_bias=None, C=None, atol=None, *, W_Q=None,
                       W_K=None, scale=None):
        """Positional CCMC of a tied attention layer with an additive relative position bias.

        See :meth:`CCMC.from_attention`; ``position_bias[d]`` is added to the attention score of
        the position at distance ``d`` from the last token.
        """
        if position_bias is None:
            raise ValueError("position_bias is required.")
        logits = logits_from_attention(E, W_att, C, W_Q=W_Q, W_K=W_K, scale=scale, atol=atol)
        return cls(logits, _as_float64(position_bias, "position_bias")[0])

    def to_attention(self, d=None, random_state=None):
        """``(E, W_att, C, position_bias)`` of an equivalent attention layer."""
        return (*super().to_attention(d, random_state), self.position_bias.copy())
