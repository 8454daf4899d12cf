"""From a one-layer self-attention layer to its CCMC logits, and the layer's literal forward pass.

Conventions.  A vocabulary of ``K`` tokens has embeddings ``E`` (``K x d``,
row ``e_k`` per token) and an output head ``C`` (``K x d``).  In a prompt ``x_1 .. x_L`` the
query is the last token ``q = x_L``; it attends to every position, itself included, with score

    s_i = e_{x_i}^T W_att e_q  (+ position_bias[L - i])

and the layer outputs ``f = C X^T softmax(s)`` (``X`` stacks the embeddings of the prompt; there
is no second softmax).  Under weight tying ``C E^T = I_K`` the output is exactly the CCMC with
logits ``W = E W_att E^T`` (columns are queries: ``W[k, q] = e_k^T W_att e_q``).

Separate query and key matrices, as in PyTorch, are accepted too: with ``q = e_q W_Q`` and
``k_i = e_{x_i} W_K`` (row vectors, ``W_Q`` and ``W_K`` of shape ``d x d_k``) the scaled dot
product score is ``s_i = scale * q . k_i = e_{x_i}^T (scale * W_K W_Q^T) e_q``, hence

    W_att = scale * W_K W_Q^T,        W = scale * (E W_K) (E W_Q)^T.

Note the order: the KEY matrix stands on the left, because the rows of ``W`` are keys (attended
tokens) and its columns queries.

Every matrix may be any array-like, including PyTorch tensors that require grad, live on a GPU or
hold float16/bfloat16 values: objects with ``detach``, ``cpu`` and ``numpy`` methods are converted
through them (torch is never imported here), everything else through ``np.asarray``.  All the
arithmetic is done in float64.
"""

import numpy as np

from ._stats import flatten_prompts

# Safety factor of the default tying tolerance: the measured max |C E^T - I| of orthonormal or
# pinv-tied heads stored in float64/32/16 stays below ~1.5 sqrt(d) eps max|c| max|e| (see
# _default_atol), so 100 leaves a wide margin without accepting untied heads.
_ATOL_FACTOR = 100.0
# Above this the CCMC would misstate probabilities by more than a percent: never accept it
# silently, even in half precision where the dtype rule alone would allow it.
_ATOL_CAP = 1e-2
_EPS64 = float(np.finfo(np.float64).eps)


# ---------------------------------------------------------------------------------- conversion
def _as_float64(x, name):
    """``x`` as a float64 ndarray and the machine epsilon of the precision it was stored in.

    Tensors (anything with ``detach``/``cpu``/``numpy``) go through those methods, so a tensor
    that requires grad or lives on a GPU converts without importing torch.  Integer input is
    exact, so its epsilon is float64's.
    """
    if x is None:
        raise TypeError(f"{name} is required, got None.")
    eps = None
    if all(hasattr(x, m) for m in ("detach", "cpu", "numpy")):
        t = x.detach().cpu()
        if "bfloat16" in str(getattr(t, "dtype", "")):
            # numpy has no bfloat16: widen it (exactly) and remember its precision (8 bits).
            eps = 2.0**-7
            t = t.float()
        try:
            x = t.numpy()
        except (TypeError, RuntimeError) as exc:
            raise TypeError(f"{name}: cannot convert {type(x).__name__} to numpy ({exc}).") from exc
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a numeric array, got {type(x).__name__}.") from exc
    kind = arr.dtype.kind
    if kind == "c":
        raise ValueError(f"{name} must be real, got complex dtype {arr.dtype}.")
    if kind == "b":
        raise TypeError(f"{name} must hold numbers, got booleans.")
    if kind not in "iuf":
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}.")
    if eps is None:
        eps = float(np.finfo(arr.dtype).eps) if kind == "f" else _EPS64
    out = arr.astype(np.float64)  # always a copy: the caller's buffer is never aliased
    if not np.isfinite(out).all():
        idx = tuple(int(i) for i in np.argwhere(~np.isfinite(out))[0])
        where = f"{name}[{', '.join(map(str, idx))}]" if idx else name
        raise ValueError(f"{name} must be finite, got {where} = {out[idx]}.")
    return out, max(eps, _EPS64)


def _check_matrix(x, name):
    arr, eps = _as_float64(x, name)
    if arr.ndim != 2 or 0 in arr.shape:
        raise ValueError(f"{name} must be a non-empty 2-D matrix, got shape {arr.shape}.")
    return arr, eps


def _check_scalar(x, name):
    """A finite real scalar (0-d tensors and numpy scalars included)."""
    if isinstance(x, (bool, np.bool_, str, bytes)):
        raise TypeError(f"{name} must be a real number, got {x!r}.")
    arr, _ = _as_float64(x, name)  # also refuses NaN and infinity, naming the argument
    if arr.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {arr.shape}.")
    return float(arr)


def _check_atol(atol):
    if atol is None:
        return None
    atol = _check_scalar(atol, "atol")
    if atol < 0:
        raise ValueError(f"atol must be non-negative, got {atol}.")
    return atol


# ---------------------------------------------------------------------------------- the layer
def _attention_matrices(E, W_att, W_Q, W_K, scale):
    """Validated ``(E, eps_E, A, B)`` with scores ``X A B^T e_q``, i.e. ``W_att = A B^T``.

    Both parametrisations come out in this factored form so that the (d x d) ``W_att`` of
    low-rank ``W_Q``/``W_K`` is never formed.
    """
    E, eps_E = _check_matrix(E, "E")
    d = E.shape[1]
    if W_att is not None:
        if W_Q is not None or W_K is not None:
            raise ValueError(
                "give either W_att or the pair (W_Q, W_K), not both: W_att = scale * W_K W_Q^T."
            )
        W_att, _ = _check_matrix(W_att, "W_att")
        if W_att.shape != (d, d):
            raise ValueError(
                f"W_att must have shape ({d}, {d}) to match E of shape {E.shape}, "
                f"got {W_att.shape}."
            )
        s = 1.0 if scale is None else _check_scalar(scale, "scale")
        return E, eps_E, s * W_att, np.eye(d)
    if W_Q is None and W_K is None:
        raise ValueError(
            "the attention scores are missing: give W_att (d x d) or both W_Q and W_K (d x d_k)."
        )
    if W_Q is None or W_K is None:
        missing = "W_Q" if W_Q is None else "W_K"
        raise ValueError(f"{missing} is missing: W_Q and W_K must be given together.")
    W_Q, _ = _check_matrix(W_Q, "W_Q")
    W_K, _ = _check_matrix(W_K, "W_K")
    for name, M in (("W_Q", W_Q), ("W_K", W_K)):
        if M.shape[0] != d:
            hint = (
                " It looks transposed: torch.nn.Linear stores its weight as (out, in), so pass "
                "`linear.weight.T`."
                if M.shape[1] == d
                else ""
            )
            raise ValueError(
                f"{name} must have shape (d, d_k) = ({d}, d_k) to act on embeddings of "
                f"dimension d={d}, got {M.shape}.{hint}"
            )
    if W_Q.shape != W_K.shape:
        raise ValueError(
            f"W_Q and W_K must have the same shape (d, d_k), got {W_Q.shape} and {W_K.shape}."
        )
    d_k = W_Q.shape[1]
    s = 1.0 / np.sqrt(d_k) if scale is None else _check_scalar(scale, "scale")
    return E, eps_E, s * W_K, W_Q


def _default_atol(E, C, eps):
    """Tying tolerance from the storage precision: ``100 sqrt(d) eps max|c_k| max|e_j|``.

    Rounding ``C`` and ``E`` to ``eps`` perturbs ``c_k . e_j`` by about ``eps |c_k| |e_j|``
    (more for heads computed, e.g. by a pinv, in that precision); the row norms make the rule
    invariant to rescaling ``E -> a E``, ``C -> C / a``.  Capped at 1e-2.
    """
    d = E.shape[1]
    norms = np.linalg.norm(C, axis=1).max() * np.linalg.norm(E, axis=1).max()
    return min(_ATOL_FACTOR * np.sqrt(d) * eps * max(1.0, float(norms)), _ATOL_CAP)


def _check_tying(E, eps_E, C, atol):
    """Raise unless ``C E^T = I_K`` (or, for ``C=None``, unless ``E`` has full row rank)."""
    K, d = E.shape
    if d < K:
        raise ValueError(
            f"weight tying C E^T = I_K needs embedding dimension d >= K (one independent "
            f"direction per token), got d={d} < K={K}: no output head can be tied to E."
        )
    if C is None:
        # The tied head pinv(E)^T exists iff E has full row rank; the rank tolerance follows
        # numpy.linalg.matrix_rank (max(K, d) eps times the largest singular value).
        sv = np.linalg.svd(E, compute_uv=False)
        rtol = max(K, d) * eps_E if atol is None else atol
        if sv[-1] <= rtol * sv[0]:
            raise ValueError(
                "E does not have full row rank, so no output head can be tied to it "
                f"(singular values {sv[0]:.3g} .. {sv[-1]:.3g}, relative tolerance {rtol:.3g})."
            )
        return
    C, eps_C = _check_matrix(C, "C")
    if C.shape != (K, d):
        raise ValueError(f"C must have shape ({K}, {d}) like E, got {C.shape}.")
    eps = max(eps_E, eps_C)  # the least precise of the two limits how well they can be tied
    if atol is None:
        atol = _default_atol(E, C, eps)
        rule = f"atol={atol:.3g} chosen from their precision (eps={eps:.3g}); pass atol to relax"
    else:
        rule = f"atol={atol:.3g}"
    dev_matrix = np.abs(C @ E.T - np.eye(K))
    dev = float(dev_matrix.max())
    if dev <= atol:
        return
    k, j = (int(i) for i in np.unravel_index(np.argmax(dev_matrix), dev_matrix.shape))
    msg = (
        f"the output head C is not tied to the embeddings E: max |C E^T - I| = {dev:.3g} "
        f"(at [{k}, {j}]) > {rule}.  Tying here means C E^T = I_K: the head maps the embedding "
        f"of token k back to the one-hot vector of k (this needs d >= K; here K={K}, d={d}); "
        "only then is the layer exactly a CCMC."
    )
    if np.array_equal(C, E):
        gram = np.abs(E @ E.T - np.eye(K)).max()
        msg += (
            f"  With C = E (language-model style shared weights) this requires orthonormal "
            f"embedding rows, E E^T = I; here max |E E^T - I| = {gram:.3g}.  Use orthonormal "
            "embeddings, or the head C = pinv(E).T (or C=None, which assumes it)."
        )
    else:
        msg += "  A tied head for these embeddings is C = pinv(E).T (or pass C=None)."
    raise ValueError(msg)


def logits_from_attention(E, W_att=None, C=None, *, W_Q=None, W_K=None, scale=None, atol=None):
    """CCMC logits ``E W_att E^T`` of a one-layer self-attention layer with a tied output head.

    Parameters
    ----------
    E : array-like or tensor of shape (K, d)
        Token embeddings, one row per token; ``d >= K``.
    W_att : array-like or tensor of shape (d, d) or None
        Attention matrix: position ``i`` scores ``e_{x_i}^T W_att e_q`` for the query (last
        token) ``q``.  Give either ``W_att`` or both ``W_Q`` and ``W_K``.
    C : array-like or tensor of shape (K, d) or None
        Output head.  It must be tied, ``C E^T = I_K`` within ``atol``.  ``C = E`` (shared
        weights) qualifies when the embeddings are orthonormal.  None assumes the tied head
        ``pinv(E).T``, which exists when ``E`` has full row rank.
    W_Q, W_K : array-like or tensor of shape (d, d_k) or None
        Query and key projections acting on row embeddings (``q = e_q W_Q``, ``k = e_x W_K``);
        ``W_att = scale * W_K W_Q^T``.  A ``torch.nn.Linear`` projection is ``linear.weight.T``.
    scale : float or None
        Factor applied to the scores; None means ``1 / sqrt(d_k)`` with ``W_Q``/``W_K`` (scaled
        dot product) and 1 with ``W_att``.
    atol : float or None
        Tolerance on ``max |C E^T - I|``.  None picks it from the precision of ``E`` and ``C``
        (the least precise, e.g. float32 for float32 tensors):
        ``min(100 sqrt(d) eps max_k |c_k| max_j |e_j|, 1e-2)``, about ``2e-13`` for
        orthonormal float64 and ``1e-4`` for orthonormal float32 embeddings with ``d = 64``.
        With ``C=None`` it is the relative tolerance of the rank check instead (default
        ``max(K, d) eps``, as :func:`numpy.linalg.matrix_rank`).

    Returns
    -------
    ndarray of float64, shape (K, K)
        ``logits[k, q] = e_k^T W_att e_q``: columns are queries.

    Raises
    ------
    ValueError
        On NaN or infinity in any argument, mismatched shapes, an untied head, ``d < K``, a
        rank-deficient ``E`` with ``C=None``, or logits that overflow.

    Examples
    --------
    >>> import numpy as np
    >>> from ccmc_estim.attention import logits_from_attention
    >>> E = np.eye(3)
    >>> logits_from_attention(E, np.diag([1.0, 2.0, 3.0]), C=E).diagonal()
    array([1., 2., 3.])

    Separate query and key projections, as in PyTorch (here ``d_k = 1``, scale ``1``):

    >>> W_Q, W_K = np.ones((3, 1)), np.array([[0.0], [1.0], [2.0]])
    >>> logits_from_attention(E, W_Q=W_Q, W_K=W_K)[:, 0]  # the keys' scores for query 0
    array([0., 1., 2.])
    """
    atol = _check_atol(atol)
    E, eps_E, A, B = _attention_matrices(E, W_att, W_Q, W_K, scale)
    _check_tying(E, eps_E, C, atol)
    with np.errstate(over="ignore", invalid="ignore"):
        logits = (E @ A) @ (E @ B).T
    if not np.isfinite(logits).all():
        raise ValueError(
            "the logits E W_att E^T overflow float64: the attention weights are too large."
        )
    return logits


# ---------------------------------------------------------------------------------- forward pass
def _check_position_bias(position_bias):
    bias, _ = _as_float64(position_bias, "position_bias")
    if bias.ndim != 1 or bias.size == 0:
        raise ValueError(
            "position_bias must be a non-empty 1-D array (bias by distance from the last "
            f"token), got shape {bias.shape}."
        )
    return bias


def attention_forward(E, W_att, C, prompts, position_bias=None, *, W_Q=None, W_K=None, scale=None):
    """Literal forward pass of a one-layer self-attention layer, for checking a CCMC.

    The query is the last token and attends to every position, itself included; the output is
    ``C X^T softmax(scores)`` with no second softmax.  The scores are ``X W_att e_q`` or, with
    separate projections, ``scale * (X W_K) (e_q W_Q)`` computed literally as in PyTorch, plus
    ``position_bias``.  No tying is required here: an untied head gives outputs that are not
    distributions, which is what a check wants to see.  Costs ``O(L d^2)`` per prompt.

    Parameters
    ----------
    E : array-like or tensor of shape (K, d)
        Token embeddings.
    W_att : array-like or tensor of shape (d, d) or None
        Attention matrix; None when ``W_Q`` and ``W_K`` are given.
    C : array-like or tensor of shape (K, d) or None
        Output head; None uses ``pinv(E).T``.
    prompts : array-like of shape (n, L) or sequence of 1-D sequences
        Token ids in ``0 .. K - 1``.
    position_bias : array-like or tensor of shape (D + 1,) or None
        Relative bias added to the score of the position at distance ``t`` from the last one
        (``position_bias[-1]`` for larger distances).
    W_Q, W_K : array-like or tensor of shape (d, d_k) or None
        Query and key projections (see :func:`logits_from_attention`).
    scale : float or None
        Score factor: ``1 / sqrt(d_k)`` with ``W_Q``/``W_K``, 1 with ``W_att`` when None.

    Returns
    -------
    ndarray of float64, shape (n, K)

    Examples
    --------
    >>> import numpy as np
    >>> from ccmc_estim.attention import attention_forward
    >>> E = np.eye(2)
    >>> attention_forward(E, np.zeros((2, 2)), E, [[0, 1, 1]]).round(3)
    array([[0.333, 0.667]])
    >>> attention_forward(E, np.zeros((2, 2)), E, [[0, 1]], position_bias=[0.0, -np.log(2)])
    array([[0.33333333, 0.66666667]])
    """
    E, _, A, B = _attention_matrices(E, W_att, W_Q, W_K, scale)
    K, d = E.shape
    if C is None:
        C = np.linalg.pinv(E).T
    else:
        C, _ = _check_matrix(C, "C")
        if C.shape != (K, d):
            raise ValueError(f"C must have shape ({K}, {d}) like E, got {C.shape}.")
    bias = np.zeros(1) if position_bias is None else _check_position_bias(position_bias)
    flat, indptr = flatten_prompts(prompts)
    if flat.min() < 0 or flat.max() >= K:
        bad = flat[(flat < 0) | (flat >= K)][0]
        raise ValueError(
            f"prompts hold token {bad} outside 0..{K - 1}, the rows of E (K={K} tokens)."
        )
    lengths = np.diff(indptr)
    out = np.empty((lengths.size, K))
    # Prompts of one length form a batch (n_L, L, d): a loop over lengths, not over prompts.
    for L in np.unique(lengths):
        rows = np.flatnonzero(lengths == L)
        idx = indptr[rows, None] + np.arange(L)
        X = E[flat[idx]]  # (n_L, L, d)
        with np.errstate(over="ignore", invalid="ignore"):
            keys = X @ A  # (n_L, L, d_k): W_att = A B^T
            query = X[:, -1] @ B  # (n_L, d_k)
            scores = np.einsum("nld,nd->nl", keys, query)
            dist = np.minimum(np.arange(L)[::-1], bias.size - 1)
            scores = scores + bias[dist]
            scores -= scores.max(axis=1, keepdims=True)  # stable softmax
            p = np.exp(scores)
            p /= p.sum(axis=1, keepdims=True)
            out[rows] = np.einsum("nl,nld->nd", p, X) @ C.T
    if not np.isfinite(out).all():
        raise ValueError("the attention scores overflow float64: the weights are too large.")
    return out
