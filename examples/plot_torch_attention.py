"""
Training an attention layer in PyTorch versus fitting its CCMC
==============================================================

A one-layer self-attention layer whose output head is tied to its embeddings (``C E^T = I``)
is exactly a context-conditioned Markov chain with logits ``W = E W_att E^T``.  So the same
data can be fitted two ways:

1. train the layer in PyTorch by full-batch L-BFGS on the negative log-likelihood of its
   outputs (embeddings fixed and orthonormal, ``C = E``; only ``W_att`` is learned);
2. fit :class:`~ccmc_estim.CCMCEstimator`, the penalised maximum-likelihood estimator of the
   CCMC, which solves the same (convex) problem directly.

Both are compared on wall time, held-out mean log-likelihood and the error of the recovered
logits (columns centred: adding a constant to a column changes nothing), the trained layer
being converted to its CCMC by :func:`ccmc_estim.attention.logits_from_attention`.

PyTorch is optional: without it only the CCMC part runs.  Run it with
``python examples/plot_torch_attention.py``.
"""

# %%
# Data from a random CCMC
# -----------------------
# ``K = 10`` tokens, prompts of 8 tokens, 20,000 prompts for training and 5,000 held out.

import time

import matplotlib.pyplot as plt
import numpy as np

from ccmc_estim import CCMC, CCMCEstimator, make_ccmc_data
from ccmc_estim.attention import logits_from_attention

try:
    import torch
except ImportError:  # the gallery must still build: the torch part is skipped below
    torch = None
    print("PyTorch is not installed: only the CCMC estimator runs in this example.")

K, L, d = 10, 8, 16
n_train, n_test = 20_000, 5_000
prompts, outputs, truth = make_ccmc_data(n_train + n_test, K, L, random_state=0)
X_train, y_train = prompts[:n_train], outputs[:n_train]
X_test, y_test = prompts[n_train:], outputs[n_train:]
W_true = truth.logits - truth.logits.mean(axis=0)


def logit_rmse(W):
    """RMSE of logits against the truth after centring columns (their only identified part)."""
    W = np.asarray(W)
    return float(np.sqrt(np.mean((W - W.mean(axis=0) - W_true) ** 2)))


results = {"truth": (np.nan, truth.log_likelihood(X_test, y_test).mean(), 0.0)}

# %%
# The CCMC estimator
# ------------------
# Its kernels are compiled by numba on first use; a tiny warm-up fit keeps that one-off cost out
# of the timing, as it would be in any session that fits more than once.

CCMCEstimator().fit(X_train[:100], y_train[:100])
t0 = time.perf_counter()
est = CCMCEstimator().fit(X_train, y_train)
t_ccmc = time.perf_counter() - t0
results["CCMCEstimator"] = (t_ccmc, est.score(X_test, y_test), logit_rmse(est.logits_))
nll_ccmc = -est.score(X_train, y_train)

# %%
# The attention layer in PyTorch
# ------------------------------
# Fixed orthonormal embeddings ``E`` (``K x d`` with ``d = 16``, float32 as usual in PyTorch),
# shared output head ``C = E`` (tied because ``E E^T = I``) and a learned ``d x d`` attention
# matrix.  The output is the literal forward pass: the last token queries every position, and
# the attention mass is carried back to tokens by the head, ``f = C X^T softmax(X W_att e_q)``.
# Full-batch L-BFGS on the negative log-likelihood of the outputs.

if torch is not None:
    torch.manual_seed(0)
    E = torch.empty(d, d, dtype=torch.float64)
    torch.nn.init.orthogonal_(E)
    E = E[:K].float()  # orthonormal rows, rounded to float32
    W_att = torch.zeros(d, d, requires_grad=True)
    X = E[torch.as_tensor(X_train)]  # (n, L, d): the embedded prompts
    yt = torch.as_tensor(y_train)

    def forward(W_att):
        query = X[:, -1] @ W_att.T  # W_att e_q, one row per prompt
        attn = torch.softmax((X * query[:, None, :]).sum(-1), dim=1)  # over positions
        return (attn[..., None] * X).sum(1) @ E.T  # C X^T attn: probabilities, (n, K)

    opt = torch.optim.LBFGS([W_att], max_iter=100, history_size=20, line_search_fn="strong_wolfe")
    losses = []

    def closure():
        opt.zero_grad()
        loss = -torch.log(forward(W_att)[torch.arange(n_train), yt]).mean()
        loss.backward()
        losses.append(loss.item())
        return loss

    t0 = time.perf_counter()
    opt.step(closure)
    t_torch = time.perf_counter() - t0

    # The trained layer as a CCMC: tensors (even ones requiring grad) are accepted as they are,
    # and the tying check uses a float32 tolerance because E is float32.
    W_torch = logits_from_attention(E, W_att, E)
    torch_model = CCMC(W_torch)
    results["PyTorch attention"] = (
        t_torch,
        torch_model.log_likelihood(X_test, y_test).mean(),
        logit_rmse(W_torch),
    )

# %%
# Comparison
# ----------

print(f"{'model':<20}{'fit time (s)':>14}{'held-out mean LL':>18}{'logit RMSE':>12}")
for name, (t, ll, err) in results.items():
    t_str = "-" if np.isnan(t) else f"{t:.3f}"
    print(f"{name:<20}{t_str:>14}{ll:>18.4f}{err:>12.4f}")

fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
ax = axes[0]
if torch is not None:
    ax.plot(np.arange(1, len(losses) + 1), losses, label=f"PyTorch attention ({t_torch:.2f} s)")
ax.axhline(nll_ccmc, color="k", ls="--", label=f"CCMCEstimator ({t_ccmc:.2f} s)")
ax.set_xscale("log")
ax.set_xlabel("loss evaluation (full batch L-BFGS)")
ax.set_ylabel("training NLL per prompt")
ax.set_title("training loss")
ax.legend()

ax = axes[1]
names = [name for name in results if name != "truth"]
errors = [results[name][2] for name in names]
ax.bar(names, errors, color=["C7", "C0"][: len(names)])
ax.set_ylabel("RMSE of centred logits")
ax.set_title(f"logit error (K={K}, n={n_train})")
plt.tight_layout()
plt.show()

# %%
# Both routes reach the same maximum-likelihood solution up to optimisation error and the small
# ridge penalty of the estimator; the CCMC estimator gets there by a convex solver on the
# sufficient statistics (each prompt reduced to its query and token counts) instead of
# back-propagating through the attention layer.
