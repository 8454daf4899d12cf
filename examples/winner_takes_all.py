"""Winner-takes-all: generation from one prompt collapses onto a few tokens.

Left: a model with one self-dominant token (0) and, for contrast, a model with none; the share of
each prompt token in the growing context against generation time (log axis), several seeds, with
the winners predicted by ``winner_analysis`` marked on the right edge.  Right: the same first
second model with a sliding window of 32 tokens, where the winners appear as long runs.

Run: python examples/winner_takes_all.py  (writes docs/figures/winner_takes_all.png)
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ccmc_estim import CCMC, collapse_profile, generate, winner_analysis

OUT = Path(__file__).resolve().parent.parent / "docs" / "figures" / "winner_takes_all.png"
K, N_STEPS, SEEDS = 6, 100_000, range(5)
prompt = np.array([0, 0, 0, 1, 2, 3, 4, 5, 1, 2, 0])

rng = np.random.default_rng(7)
W_single = rng.standard_normal((K, K))
for j in range(1, K):
    W_single[j, j] = W_single[:, j].min() - 0.5
W_single[0, 0] = np.delete(W_single[:, 0], 0).max() + 0.7
W_mixed = rng.standard_normal((K, K))
W_mixed[np.diag_indices(K)] = W_mixed.min(axis=0) - 1.0

colors = plt.cm.tab10(np.arange(K))
fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
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

model = CCMC(W_mixed)
traj = generate(model, prompt, 3_000, window=32, random_state=0)
ax = axes[2]
ax.scatter(np.arange(traj.size), traj, c=colors[traj], s=3)
prof = collapse_profile(traj, prompt, window=32, n_points=40)
ax2 = ax.twinx()
ax2.plot(prof.steps, prof.repetition_rate, color="k", lw=1.5, label="4-gram repetition")
ax2.set_ylim(0, 1.05)
ax2.set_ylabel("repetition rate (last 32 tokens)")
ax.set_xlabel("generated tokens")
ax.set_ylabel("token")
ax.set_title(
    "no self-dominant token, sliding window of 32:\nthe window locks onto the predicted winners"
)
ax2.legend(loc="center right", fontsize=8)
fig.tight_layout()
OUT.parent.mkdir(parents=True, exist_ok=True)
fig.savefig(OUT, dpi=110)
print(f"saved {OUT}")
print(winner_analysis(CCMC(W_single), prompt).summary())
print(winner_analysis(CCMC(W_mixed), prompt).summary())
