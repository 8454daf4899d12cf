"""
Winner-takes-all generation
===========================

Generating from one prompt, a CCMC feeds its own output back into the context: every emitted
token raises its own count, tokens outside the prompt never appear, and the context collapses
onto a few winner tokens. :func:`~ccmc_estim.winner_analysis` predicts the winners from the logits
and the prompt; :func:`~ccmc_estim.generate` simulates the process and
:func:`~ccmc_estim.collapse_profile` measures the collapse.

Run it with ``python examples/plot_winner_takes_all.py``.
"""

# %%
# Two models over six tokens
# --------------------------
# In the first model token 0 is self-dominant (``W[0, 0]`` beats every other entry of column 0)
# and no other token is; in the second no token is self-dominant.

import matplotlib.pyplot as plt
import numpy as np

from ccmc_estim import CCMC, collapse_profile, generate, winner_analysis

K, N_STEPS, SEEDS = 6, 100_000, range(5)
prompt = np.array([0, 0, 0, 1, 2, 3, 4, 5, 1, 2, 0])

rng = np.random.default_rng(7)
W_single = rng.standard_normal((K, K))
for j in range(1, K):
    W_single[j, j] = W_single[:, j].min() - 0.5
W_single[0, 0] = np.delete(W_single[:, 0], 0).max() + 0.7
W_mixed = rng.standard_normal((K, K))
W_mixed[np.diag_indices(K)] = W_mixed.min(axis=0) - 1.0

# %%
# What ``winner_analysis`` predicts
# ---------------------------------
# Bars: each token's share of the prompt and of the limit the mean-field dynamics reach from
# it; circles: every stable limit found (``*`` marks self-dominant tokens).

fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for ax, W, title in ((axes[0], W_single, "one self-dominant token"),
                     (axes[1], W_mixed, "no self-dominant token")):
    analysis = winner_analysis(CCMC(W), prompt)
    print(analysis.summary())
    analysis.plot(ax=ax)
    ax.set_title(title)
fig.tight_layout()
plt.show()

# %%
# A growing context
# -----------------
# The share of each prompt token in the growing context against generation time (log axis), for
# several seeds. Arrows on the right edge mark the limits predicted by ``winner_analysis``. With
# one self-dominant token the context collapses onto it in every run; without one it settles on
# the predicted mixed limit.

colors = plt.cm.tab10(np.arange(K))
fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
for ax, W, title in ((axes[0], W_single, "one self-dominant token"),
                     (axes[1], W_mixed, "no self-dominant token")):
    model = CCMC(W)
    analysis = winner_analysis(model, prompt)
    for seed in SEEDS:
        traj = generate(model, prompt, N_STEPS, random_state=seed)
        context = np.concatenate([prompt, traj])
        t = np.unique(np.geomspace(1, N_STEPS, 200).astype(int))
        counts = np.cumsum(np.eye(K)[context], axis=0)[prompt.size + t - 1]
        shares = counts / counts.sum(axis=1, keepdims=True)
        for k in range(K):
            ax.plot(t, shares[:, k], color=colors[k], lw=1, alpha=0.7,
                    label=f"token {k}" if seed == 0 else None)
    marked = [(k, x) for k, x in zip(analysis.support, analysis.predicted_limit, strict=True)
              if x > analysis.threshold]
    for i, (k, x) in enumerate(marked):  # side by side when limits coincide
        ax.plot(N_STEPS * 1.3 * 1.6**i, x, marker="<", ms=10, color=colors[k], clip_on=False)
    ax.set_xscale("log")
    ax.set_xlim(1, N_STEPS * 1.3)
    ax.set_ylim(0, 1)
    ax.set_xlabel("generated tokens")
    ax.set_ylabel("share of the context")
    winners = analysis.single_winners.tolist() or "none"
    ax.set_title(f"{title}\nself-dominant: {winners}; arrows: predicted limit")
axes[0].legend(loc="upper left", fontsize=8)
fig.tight_layout()
plt.show()

# %%
# A sliding window
# ----------------
# With a fixed context of 32 tokens the process is a finite-state Markov chain on windows, and
# the winners show up as long runs: the window locks onto them and the rate of repeated 4-grams
# climbs towards 1 (right: ``collapse_profile(...).plot()``).

model = CCMC(W_mixed)
traj = generate(model, prompt, 3_000, window=32, random_state=0)
prof = collapse_profile(traj, prompt, window=32, n_points=40)
print(prof.summary())

fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
ax.scatter(np.arange(traj.size), traj, c=colors[traj], s=3)
ax.set_xlabel("generated tokens")
ax.set_ylabel("token")
ax.set_title("no self-dominant token, sliding window of 32")
prof.plot(ax=ax2)
ax2.set_title("the window locks onto the predicted winners")
fig.tight_layout()
plt.show()
