"""From an attention layer to its CCMC: logits_from_attention against literal forward passes."""

import numpy as np
import pytest

from ccmc_estim.attention import attention_forward, logits_from_attention


def _orthonormal_rows(K, d, rng, dtype=np.float64):
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)).astype(dtype))
    return Q[:K]


def _ragged_prompts(n, K, rng, max_len=9):
    return [rng.integers(0, K, size=rng.integers(1, max_len + 1)) for _ in range(n)]


def _ccmc_proba(W, prompts, position_bias=None):
    """Numpy twin of a (positional) CCMC: P(k) ∝ sum_{i: x_i = k} exp(b[dist_i]) exp(W[k, q])."""
    K = W.shape[0]
    b = np.zeros(1) if position_bias is None else np.asarray(position_bias, float)
    out = np.zeros((len(prompts), K))
    for r, p in enumerate(prompts):
        p = np.asarray(p)
        dist = np.minimum(np.arange(p.size)[::-1], b.size - 1)
        m = np.bincount(p, weights=np.exp(b[dist]), minlength=K)
        w = m * np.exp(W[:, p[-1]] - W[:, p[-1]].max())
        out[r] = w / w.sum()
    return out


def _literal_qk_forward(E, W_Q, W_K, C, prompt, scale):
    """Scaled dot-product attention written as in PyTorch: rows are vectors, q = e_q W_Q."""
    X = E[np.asarray(prompt)]
    q = X[-1] @ W_Q
    keys = X @ W_K
    s = keys @ q * scale
    a = np.exp(s - s.max())
    a /= a.sum()
    return C @ (a @ X)


# ---------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("K, d", [(1, 1), (3, 3), (5, 8), (7, 16)])
@pytest.mark.parametrize("head", ["pinv", "none", "orthonormal"])
def test_logits_reproduce_the_forward_pass(K, d, head):
    rng = np.random.default_rng(K * 100 + d)
    if head == "orthonormal":
        E = _orthonormal_rows(K, d, rng)
        C = E
    else:
        E = rng.standard_normal((K, d))
        C = np.linalg.pinv(E).T if head == "pinv" else None
    W_att = rng.standard_normal((d, d))
    W = logits_from_attention(E, W_att, C)
    assert W.shape == (K, K) and W.dtype == np.float64
    np.testing.assert_allclose(W, E @ W_att @ E.T, atol=1e-12)
    prompts = _ragged_prompts(40, K, rng)
    forward = attention_forward(E, W_att, C, prompts)
    np.testing.assert_allclose(_ccmc_proba(W, prompts), forward, atol=1e-10)


def test_ccmc_predict_proba_matches_forward():
    CCMC = pytest.importorskip("ccmc_estim").CCMC
    rng = np.random.default_rng(1)
    K, d = 6, 10
    E = _orthonormal_rows(K, d, rng)
    W_att = 2 * rng.standard_normal((d, d))
    prompts = rng.integers(0, K, size=(50, 7))
    model = CCMC(logits_from_attention(E, W_att, E))
    np.testing.assert_allclose(
        model.predict_proba(prompts), attention_forward(E, W_att, E, prompts), atol=1e-10
    )


def test_forward_batches_by_length_like_a_loop():
    rng = np.random.default_rng(2)
    K, d = 4, 6
    E = rng.standard_normal((K, d))
    W_att = rng.standard_normal((d, d))
    C = rng.standard_normal((K, d))  # untied: the forward pass does not require tying
    prompts = _ragged_prompts(30, K, rng)
    batch = attention_forward(E, W_att, C, prompts)
    for p, row in zip(prompts, batch, strict=True):
        X = E[p]
        s = X @ W_att @ X[-1]
        a = np.exp(s - s.max())
        np.testing.assert_allclose(row, C @ X.T @ (a / a.sum()), atol=1e-12)
    # A 2-D array of prompts gives the same as its rows.
    grid = rng.integers(0, K, size=(5, 4))
    np.testing.assert_allclose(
        attention_forward(E, W_att, C, grid), attention_forward(E, W_att, C, list(grid))
    )


def test_position_bias_forward_matches_positional_ccmc():
    rng = np.random.default_rng(3)
    K, d = 5, 5
    E = _orthonormal_rows(K, d, rng)
    W_att = rng.standard_normal((d, d))
    bias = [0.0, -0.5, -1.5, 0.7]
    prompts = _ragged_prompts(40, K, rng, max_len=8)
    W = logits_from_attention(E, W_att, E)
    np.testing.assert_allclose(
        attention_forward(E, W_att, E, prompts, position_bias=bias),
        _ccmc_proba(W, prompts, bias),
        atol=1e-10,
    )


# ---------------------------------------------------------------------------------- W_Q, W_K
@pytest.mark.parametrize("d_k", [1, 3, 8])
def test_query_key_projections_match_literal_scaled_dot_product(d_k):
    rng = np.random.default_rng(d_k)
    K, d = 5, 8
    E = rng.standard_normal((K, d))
    C = np.linalg.pinv(E).T
    W_Q, W_K = rng.standard_normal((d, d_k)), rng.standard_normal((d, d_k))
    W = logits_from_attention(E, C=C, W_Q=W_Q, W_K=W_K)
    # The key projection stands on the left: W_att = W_K W_Q^T / sqrt(d_k).
    np.testing.assert_allclose(W, E @ W_K @ W_Q.T @ E.T / np.sqrt(d_k), atol=1e-12)
    prompts = _ragged_prompts(30, K, rng)
    literal = np.array([_literal_qk_forward(E, W_Q, W_K, C, p, 1 / np.sqrt(d_k)) for p in prompts])
    np.testing.assert_allclose(_ccmc_proba(W, prompts), literal, atol=1e-10)
    np.testing.assert_allclose(
        attention_forward(E, None, C, prompts, W_Q=W_Q, W_K=W_K), literal, atol=1e-12
    )
    # An explicit scale replaces 1/sqrt(d_k); with W_att it multiplies the scores too.
    W2 = logits_from_attention(E, C=C, W_Q=W_Q, W_K=W_K, scale=0.3)
    np.testing.assert_allclose(W2, 0.3 * E @ W_K @ W_Q.T @ E.T, atol=1e-12)
    np.testing.assert_allclose(logits_from_attention(E, W_K @ W_Q.T, C, scale=0.3), W2)


def test_torch_scaled_dot_product_attention_agrees():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    torch.manual_seed(0)
    K, d, d_k = 6, 8, 4
    E = torch.randn(K, d, dtype=torch.float64, requires_grad=True)
    C = torch.linalg.pinv(E.detach()).T.clone().requires_grad_(True)
    q_proj = torch.nn.Linear(d, d_k, bias=False, dtype=torch.float64)
    k_proj = torch.nn.Linear(d, d_k, bias=False, dtype=torch.float64)
    # nn.Linear computes x @ weight.T, so the (d, d_k) projections are the transposed weights.
    W = logits_from_attention(E, C=C, W_Q=q_proj.weight.T, W_K=k_proj.weight.T)
    rng = np.random.default_rng(0)
    prompts = _ragged_prompts(20, K, rng)
    with torch.no_grad():
        outs = []
        for p in prompts:
            X = E[torch.as_tensor(p)]
            o = F.scaled_dot_product_attention(q_proj(X[-1:])[None], k_proj(X)[None], X[None])
            outs.append((o[0, 0] @ C.T).numpy())
    np.testing.assert_allclose(_ccmc_proba(W, prompts), np.array(outs), atol=1e-10)


def test_transposed_linear_weight_gets_a_hint():
    rng = np.random.default_rng(0)
    E = np.eye(4, 6)
    W_Q = rng.standard_normal((2, 6))  # an nn.Linear weight (out, in) passed as is
    with pytest.raises(ValueError, match=r"W_Q must have shape \(d, d_k\).*weight\.T"):
        logits_from_attention(E, W_Q=W_Q, W_K=W_Q.T)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "give W_att"),
        ({"W_Q": np.eye(3)}, "W_K is missing"),
        ({"W_K": np.eye(3)}, "W_Q is missing"),
        ({"W_att": np.eye(3), "W_Q": np.eye(3), "W_K": np.eye(3)}, "not both"),
        ({"W_Q": np.eye(3), "W_K": np.ones((3, 2))}, "same shape"),
    ],
)
def test_exactly_one_parametrisation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        logits_from_attention(np.eye(3), **kwargs)


# ---------------------------------------------------------------------------------- tying
def test_float32_orthonormal_embeddings_pass_the_default_tolerance():
    rng = np.random.default_rng(0)
    for K, d in [(5, 5), (16, 64), (64, 64)]:
        E = _orthonormal_rows(K, d, rng, dtype=np.float32)
        assert E.dtype == np.float32
        dev = np.abs(E.astype(float) @ E.T.astype(float) - np.eye(K)).max()
        assert 1e-9 < dev < 1e-5  # genuinely float32-accurate only
        W_att = rng.standard_normal((d, d)).astype(np.float32)
        W = logits_from_attention(E, W_att, E)
        np.testing.assert_allclose(W, E.astype(float) @ W_att.astype(float) @ E.T.astype(float))
        # The same rounding error in float64 storage is far above float64's tolerance.
        with pytest.raises(ValueError, match="not tied"):
            logits_from_attention(E.astype(float), W_att, E.astype(float))
        # ... unless the caller says how much to allow.
        logits_from_attention(E.astype(float), W_att, E.astype(float), atol=1e-5)


def test_default_tolerance_is_tight_in_float64():
    rng = np.random.default_rng(1)
    E = _orthonormal_rows(4, 6, rng)
    C = E + 1e-9 * rng.standard_normal(E.shape)
    with pytest.raises(ValueError, match=r"max \|C E\^T - I\| = 1\..*e-09"):
        logits_from_attention(E, np.eye(6), C)
    logits_from_attention(E, np.eye(6), C, atol=1e-8)
    # Rescaling E -> a E, C -> C / a is still tied: the rule follows the row norms.
    G = rng.standard_normal((4, 6))
    for a in (1e-3, 1.0, 1e3):
        logits_from_attention(a * G, np.eye(6), np.linalg.pinv(a * G).T)


def test_tied_shared_weights_need_orthonormal_embeddings():
    rng = np.random.default_rng(2)
    K, d = 4, 7
    E = _orthonormal_rows(K, d, rng)
    W_att = rng.standard_normal((d, d))
    np.testing.assert_allclose(logits_from_attention(E, W_att, E), E @ W_att @ E.T, atol=1e-14)
    G = rng.standard_normal((K, d))
    with pytest.raises(ValueError) as info:
        logits_from_attention(G, W_att, G)
    msg = str(info.value)
    gram = np.abs(G @ G.T - np.eye(K)).max()
    for part in ("C E^T = I_K", "one-hot", "d >= K", "orthonormal", "pinv(E).T", f"{gram:.3g}"):
        assert part in msg, (part, msg)
    # A generic untied head: the explanation without the C = E part.
    with pytest.raises(ValueError, match=r"not tied.*one-hot.*pinv\(E\)\.T") as info:
        logits_from_attention(G, W_att, rng.standard_normal((K, d)))
    assert "C = E" not in str(info.value)


def test_embedding_dimension_below_vocabulary_cannot_be_tied():
    E = np.ones((3, 2))
    for C in (None, E):
        with pytest.raises(ValueError, match="d >= K.*d=2 < K=3"):
            logits_from_attention(E, np.eye(2), C)


def test_rank_deficient_embeddings_without_head():
    E = np.array([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="full row rank"):
        logits_from_attention(E, np.eye(3))
    E = np.array([[1.0, 0.0, 0.0], [1.0, 1e-9, 0.0]])
    logits_from_attention(E, np.eye(3))  # nearly dependent but numerically full rank
    with pytest.raises(ValueError, match="full row rank"):
        logits_from_attention(E, np.eye(3), atol=1e-6)


# ---------------------------------------------------------------------------------- torch
def test_torch_tensors_requiring_grad():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    K, d = 5, 8
    E_np = _orthonormal_rows(K, d, rng, dtype=np.float32)
    W_np = rng.standard_normal((d, d)).astype(np.float32)
    E = torch.tensor(E_np, requires_grad=True)
    W_att = torch.tensor(W_np, requires_grad=True)
    expected = E_np.astype(float) @ W_np.astype(float) @ E_np.T.astype(float)
    np.testing.assert_allclose(logits_from_attention(E, W_att, E), expected, rtol=1e-12)
    np.testing.assert_allclose(logits_from_attention(E, W_att), expected, rtol=1e-12)
    prompts = _ragged_prompts(10, K, rng)
    np.testing.assert_allclose(
        attention_forward(E, W_att, E, prompts, position_bias=torch.zeros(3, requires_grad=True)),
        attention_forward(E_np, W_np, E_np, prompts),
    )
    # W_Q, W_K and scale as tensors too.
    W_Q = torch.randn(d, 2, requires_grad=True)
    W_K = torch.randn(d, 2, requires_grad=True)
    W = logits_from_attention(E, C=E, W_Q=W_Q, W_K=W_K, scale=torch.tensor(0.5))
    expected = 0.5 * (E_np @ W_K.detach().numpy()) @ (E_np @ W_Q.detach().numpy()).T
    np.testing.assert_allclose(W, expected, rtol=1e-5, atol=1e-6)
    assert E.grad is None  # nothing was differentiated or modified


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_torch_low_precision_orthonormal_embeddings(dtype):
    torch = pytest.importorskip("torch")
    dtype = getattr(torch, dtype)
    torch.manual_seed(0)
    K, d = 8, 16
    Q = torch.empty(d, d, dtype=torch.float64)  # rounded to dtype below: dtype-accurate
    torch.nn.init.orthogonal_(Q)
    E = Q[:K].to(dtype)
    W_att = torch.randn(d, d).to(dtype)
    W = logits_from_attention(E, W_att, E)
    expected = E.double() @ W_att.double() @ E.double().T
    np.testing.assert_allclose(W, expected.numpy(), rtol=1e-12, atol=1e-12)
    # A head that is clearly not tied is refused whatever the precision.
    with pytest.raises(ValueError, match="not tied"):
        logits_from_attention(E, W_att, (1.1 * Q[:K]).to(dtype))


# ---------------------------------------------------------------------------------- validation
_ARGS = {"E": np.eye(3), "W_att": np.eye(3), "C": np.eye(3)}


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", ["E", "W_att", "C", "W_Q", "W_K"])
def test_non_finite_matrices_are_refused(name, bad):
    if name in ("W_Q", "W_K"):
        kwargs = {"E": np.eye(3), "C": np.eye(3), "W_Q": np.eye(3), "W_K": np.eye(3)}
    else:
        kwargs = dict(_ARGS)
    kwargs[name] = kwargs[name].copy()
    kwargs[name][1, 2] = bad
    with pytest.raises(ValueError, match=rf"{name} must be finite.*{name}\[1, 2\]"):
        logits_from_attention(**kwargs)
    fwd = {k: kwargs.get(k) for k in ("E", "W_att", "C")}
    extra = {k: kwargs[k] for k in ("W_Q", "W_K") if k in kwargs}
    with pytest.raises(ValueError, match=rf"{name} must be finite"):
        attention_forward(**fwd, prompts=[[0, 1, 2]], **extra)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_tolerance_and_scale_are_refused(bad):
    with pytest.raises(ValueError, match="atol must be finite"):
        logits_from_attention(**_ARGS, atol=bad)
    with pytest.raises(ValueError, match="scale must be finite"):
        logits_from_attention(**_ARGS, scale=bad)
    with pytest.raises(ValueError, match="scale must be finite"):
        attention_forward(**_ARGS, prompts=[[0]], scale=bad)


@pytest.mark.parametrize(
    "atol, error",
    [(-1e-3, ValueError), (True, TypeError), ("1e-8", TypeError), ([1e-8], ValueError)],
)
def test_invalid_tolerance(atol, error):
    with pytest.raises(error, match="atol"):
        logits_from_attention(**_ARGS, atol=atol)


def test_nan_head_is_not_silently_accepted():
    # NaN > atol is False: a naive tying check would let this through.
    C = np.eye(3)
    C[0, 0] = np.nan
    with pytest.raises(ValueError, match="C must be finite"):
        logits_from_attention(np.eye(3), np.eye(3), C, atol=1e-8)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"E": np.ones(3)}, r"E must be a non-empty 2-D matrix, got shape \(3,\)"),
        ({"E": np.ones((0, 3))}, "E must be a non-empty 2-D"),
        ({"W_att": np.eye(4)}, r"W_att must have shape \(3, 3\)"),
        ({"W_att": np.ones((3, 3, 1))}, "W_att must be a non-empty 2-D"),
        ({"C": np.eye(4, 3)}, r"C must have shape \(3, 3\)"),
        ({"E": np.eye(3, dtype=complex)}, "E must be real"),
        ({"E": np.eye(3, dtype=bool)}, "E must hold numbers"),
    ],
)
def test_bad_shapes_and_types(kwargs, match):
    args = dict(_ARGS, **kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        logits_from_attention(**args)


def test_overflowing_logits_are_refused():
    with pytest.raises(ValueError, match="overflow"):
        logits_from_attention(10 * np.eye(2), np.full((2, 2), 1e308))
    with pytest.raises(ValueError, match="overflow"):
        logits_from_attention(np.eye(2) * 1e200, np.eye(2) * 1e200)


def test_integer_inputs_and_no_aliasing():
    E = np.eye(3, dtype=np.int64)
    W_att = np.arange(9).reshape(3, 3)
    W = logits_from_attention(E, W_att, E)
    np.testing.assert_array_equal(W, W_att)
    W[0, 0] = 100.0
    assert W_att[0, 0] == 0


# ---------------------------------------------------------------------------------- forward
@pytest.mark.parametrize(
    "bias, match",
    [
        ([0.0, np.nan], r"position_bias must be finite.*position_bias\[1\]"),
        ([[0.0, -1.0]], "position_bias must be a non-empty 1-D"),
        ([], "position_bias must be a non-empty 1-D"),
        (0.0, "position_bias must be a non-empty 1-D"),
        ([0.0, np.inf], "position_bias must be finite"),
    ],
)
def test_forward_refuses_bad_position_bias(bias, match):
    with pytest.raises(ValueError, match=match):
        attention_forward(**_ARGS, prompts=[[0, 1]], position_bias=bias)


@pytest.mark.parametrize("prompts", [[[0, 3]], [[-1, 0]], np.array([[0, 5]])])
def test_forward_refuses_tokens_out_of_range(prompts):
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        attention_forward(**_ARGS, prompts=prompts)


def test_forward_with_default_head_is_the_pinv_head():
    rng = np.random.default_rng(4)
    E = rng.standard_normal((3, 5))
    W_att = rng.standard_normal((5, 5))
    prompts = _ragged_prompts(10, 3, rng)
    np.testing.assert_allclose(
        attention_forward(E, W_att, None, prompts),
        attention_forward(E, W_att, np.linalg.pinv(E).T, prompts),
    )
    np.testing.assert_allclose(
        attention_forward(E, W_att, None, prompts),
        _ccmc_proba(logits_from_attention(E, W_att), prompts),
        atol=1e-10,
    )
