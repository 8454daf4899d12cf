"""The context-conditioned Markov chain (THEORY.md sections 1 and 2)."""

from itertools import pairwise

import numpy as np
from scipy.special import softmax

from . import _kernels
from ._stats import check_outputs, check_random_state, flatten_prompts, prompt_stats


def stationary(P):
    """Stationary distribution of a row-stochastic matrix with a single recurrent class."""
    K = P.shape[0]
    # pi (P - I) = 0 with one equation swapped for sum(pi) = 1: nonsingular for one class.
    A = P.T - np.eye(K)
    A[-1] = 1.0
    rhs = np.zeros(K)
    rhs[-1] = 1.0
    pi = np.clip(np.linalg.solve(A, rhs), 0.0, None)
    return pi / pi.sum()


def _check_logits(logits):
    logits = np.array(logits, dtype=np.float64)  # a private copy: the model is immutable
    if logits.ndim != 2 or logits.shape[0] != logits.shape[1] or logits.shape[0] == 0:
        raise ValueError(f"logits must be a square (K, K) matrix, got shape {logits.shape}.")
    if not np.isfinite(logits).all():
        k, q = np.argwhere(~np.isfinite(logits))[0]
        raise ValueError(f"logits must be finite; logits[{k}, {q}] = {logits[k, q]}.")
    logits.setflags(write=False)
    return logits


class CCMC:
    """Context-conditioned Markov chain: the exact model of a tied one-layer attention layer.

    Given a prompt with last token (query) ``q`` and token histogram ``m``, the next token is
    ``k`` with probability ``m_k exp(logits[k, q]) / sum_j m_j exp(logits[j, q])``.

    Parameters
    ----------
    logits : array-like of shape (K, K)
        ``logits[k, q]`` is the attention logit of token ``k`` when the query is ``q``
        (columns are queries).  Adding a constant to a column changes nothing.

    Attributes
    ----------
    logits : ndarray of shape (K, K)
        Read-only copy of the logits.
    n_tokens : int
        Vocabulary size ``K``.

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
    """

    def __init__(self, logits):
        self.logits = _check_logits(logits)

    @property
    def n_tokens(self):
        return self.logits.shape[0]

    def __repr__(self):
        return f"CCMC(n_tokens={self.n_tokens})"

    def __eq__(self, other):
        return type(other) is type(self) and np.array_equal(self.logits, other.logits)

    __hash__ = None

    # ------------------------------------------------------------------ helpers
    def _stats(self, prompts):
        return prompt_stats(prompts, self.n_tokens)

    def _entry_log_proba(self, stats):
        return _kernels.entry_log_proba(
            self.logits, stats.indptr, stats.tokens, stats.logc, stats.query
        )

    # ------------------------------------------------------------------ probabilities
    def predict_log_proba(self, prompts):
        """Log-probabilities of the next token.

        Parameters
        ----------
        prompts : array-like of shape (n, L) or sequence of 1-D sequences
            Token ids.

        Returns
        -------
        ndarray of shape (n, K)
            Exactly ``-inf`` for tokens absent from a prompt.
        """
        stats = self._stats(prompts)
        out = np.full((stats.n_prompts, self.n_tokens), -np.inf)
        out[stats.row, stats.tokens] = self._entry_log_proba(stats)
        return out

    def predict_proba(self, prompts):
        """Next-token distribution of each prompt, shape ``(n, K)``."""
        stats = self._stats(prompts)
        out = np.zeros((stats.n_prompts, self.n_tokens))
        out[stats.row, stats.tokens] = np.exp(self._entry_log_proba(stats))
        return out

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
        """Base Markov chain, row-stochastic: row ``q`` is ``softmax(logits[:, q])``."""
        return softmax(self.logits, axis=0).T

    def stationary_distribution(self):
        """Stationary distribution ``pi`` of the base chain (``pi @ P = pi``, ``sum(pi) = 1``).

        The base chain has strictly positive transitions, so ``pi`` is unique.
        """
        return stationary(self.transition_matrix)

    # ------------------------------------------------------------------ attention
    @classmethod
    def from_attention(cls, E, W_att, C=None, atol=1e-8):
        """CCMC of a one-layer self-attention layer with a tied output head.

        Parameters
        ----------
        E : array-like of shape (K, d)
            Token embeddings (one row per token), ``d >= K``.
        W_att : array-like of shape (d, d)
            Attention matrix: the score of position ``i`` is ``e_{x_i}^T W_att e_q``.
        C : array-like of shape (K, d) or None
            Output head.  When given it must satisfy weight tying ``C E^T = I`` within ``atol``.
            When None, the tied head ``pinv(E)^T`` is assumed, which needs ``E`` of rank ``K``.
        atol : float
            Tolerance of the tying and rank checks.

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
        E = np.asarray(E, dtype=np.float64)
        W_att = np.asarray(W_att, dtype=np.float64)
        if E.ndim != 2:
            raise ValueError(f"E must be a 2-D (K, d) matrix, got shape {E.shape}.")
        K, d = E.shape
        if W_att.shape != (d, d):
            raise ValueError(f"W_att must have shape ({d}, {d}) to match E, got {W_att.shape}.")
        if d < K:
            raise ValueError(
                f"weight tying C E^T = I needs embedding dimension d >= K, got d={d} < K={K}."
            )
        if C is None:
            sv = np.linalg.svd(E, compute_uv=False)
            if sv[-1] <= atol * max(sv[0], 1.0):
                raise ValueError(
                    "E does not have full row rank, so no output head can be tied to it "
                    f"(smallest singular value {sv[-1]:.3g})."
                )
        else:
            C = np.asarray(C, dtype=np.float64)
            if C.shape != (K, d):
                raise ValueError(f"C must have shape ({K}, {d}) like E, got {C.shape}.")
            dev = np.abs(C @ E.T - np.eye(K)).max()
            if dev > atol:
                raise ValueError(
                    f"the output head is not tied to the embeddings: max |C E^T - I| = {dev:.3g} "
                    f"> atol={atol:g}. The CCMC is exact only for a tied head (e.g. C = pinv(E).T)."
                )
        return cls(E @ W_att @ E.T)

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
            return np.eye(K), self.logits.copy(), np.eye(K)
        if d < K:
            raise ValueError(f"d must be at least K={K}, got {d}.")
        rng = check_random_state(random_state)
        Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        E = Q[:K]
        return E, E.T @ self.logits @ E, E.copy()


def attention_forward(E, W_att, C, prompts, position_bias=None):
    """Literal forward pass of a one-layer self-attention layer, for checking a CCMC.

    The query is the last token and attends to every position, itself included; the output is
    ``C X^T softmax(X W_att e_q + bias)`` with no second softmax.  Costs ``O(L d^2)`` per
    prompt.

    Parameters
    ----------
    E, W_att, C : array-like
        Embeddings ``(K, d)``, attention matrix ``(d, d)`` and head ``(K, d)``.
    prompts : sequence of 1-D integer sequences
    position_bias : array-like or None
        Relative bias added to the score of a position at distance ``d`` from the last one
        (``position_bias[-1]`` for larger distances).

    Returns
    -------
    ndarray of shape (n, K)

    Examples
    --------
    >>> import numpy as np
    >>> from ccmc_estim import CCMC, attention_forward
    >>> E, W, C = CCMC(np.zeros((2, 2))).to_attention()
    >>> attention_forward(E, W, C, [[0, 1, 1]]).round(3)
    array([[0.333, 0.667]])
    """
    E = np.asarray(E, dtype=np.float64)
    W_att = np.asarray(W_att, dtype=np.float64)
    C = np.asarray(C, dtype=np.float64)
    flat, indptr = flatten_prompts(prompts)
    if flat.min() < 0 or flat.max() >= E.shape[0]:
        raise ValueError(f"prompts hold tokens outside 0..{E.shape[0] - 1}, the rows of E.")
    bias = np.zeros(1) if position_bias is None else np.asarray(position_bias, np.float64)
    out = []
    for a, b in pairwise(indptr):
        X = E[flat[a:b]]
        dist = np.minimum(np.arange(b - a)[::-1], bias.size - 1)
        s = softmax(X @ W_att @ X[-1] + bias[dist])
        out.append(C @ (X.T @ s))
    return np.array(out)


def check_position_bias(position_bias):
    b = np.array(position_bias, dtype=np.float64).reshape(-1)
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
        b = self.position_bias
        return prompt_stats(prompts, self.n_tokens, dist_weight=np.exp(b - b.max()))

    @classmethod
    def from_attention(cls, E, W_att, position_bias, C=None, atol=1e-8):
        """Positional CCMC of a tied attention layer with an additive relative position bias.

        See :meth:`CCMC.from_attention`; ``position_bias[d]`` is added to the attention score of
        the position at distance ``d`` from the last token.
        """
        return cls(CCMC.from_attention(E, W_att, C, atol).logits, position_bias)

    def to_attention(self, d=None, random_state=None):
        """``(E, W_att, C, position_bias)`` of an equivalent attention layer."""
        return (*super().to_attention(d, random_state), self.position_bias.copy())
