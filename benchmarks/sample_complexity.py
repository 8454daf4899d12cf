"""The K^2/n sample-complexity study: error of the fitted CCMC against the number of prompts.

For K in (5, 10, 20, 40) and n over three decades (n = 10 K^2 .. 10^4 K^2, capped for time at
K=40), 20 repetitions each: mean squared error of the centred logits and KL divergence of the
predictions on held-out prompts.  Fits the log-log slope against n per K (expected -1) and
reports error * n / K^2, which should be roughly flat across K.

Run: python benchmarks/sample_complexity.py [--repeats 20]
Writes docs/figures/sample_complexity.png and docs/sample_complexity.md.
"""

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ccmc_estim.consistency import loglog_slope, sample_complexity

ROOT = Path(__file__).resolve().parent.parent
KS = (5, 10, 20, 40)


def sizes(K):
    return [int(K * K * f) for f in (10, 100, 1000)] + ([K * K * 10_000] if K <= 10 else [])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    t0 = time.perf_counter()
    table = sample_complexity(KS, sizes, n_repeats=args.repeats, random_state=0)
    elapsed = time.perf_counter() - t0
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    lines = [
        f"Sample complexity study ({args.repeats} repetitions per point, prompt length 10, "
        f"logit scale 1, alpha=0.01; {elapsed:.0f} s).",
        "",
        "| K | n | mean MSE of centred logits | MSE * n / K^2 | mean KL | KL * n / K^2 |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    slopes = []
    for K in KS:
        sel = table["n_tokens"] == K
        n = table["n_prompts"][sel]
        for metric, ax in (("mse", axes[0]), ("kl", axes[1])):
            ns = np.unique(n)
            means = np.array([table[metric][sel][n == s].mean() for s in ns])
            ax.loglog(ns, means * ns / K**2, "o-", label=f"K={K}")
        s_mse = loglog_slope(n, table["mse"][sel])
        s_kl = loglog_slope(n, table["kl"][sel])
        slopes.append((K, s_mse, s_kl))
        for s in np.unique(n):
            mse = table["mse"][sel][n == s].mean()
            kl = table["kl"][sel][n == s].mean()
            lines.append(f"| {K} | {s} | {mse:.3e} | {mse * s / K**2:.3f} | {kl:.3e} | "
                         f"{kl * s / K**2:.3f} |")
    lines += ["", "| K | log-log slope of MSE | log-log slope of KL |", "|---:|---:|---:|"]
    lines += [f"| {K} | {a:.3f} | {b:.3f} |" for K, a, b in slopes]
    for ax, name in zip(axes, ("MSE of centred logits", "KL divergence of predictions"),
                        strict=True):
        ax.set_xlabel("number of prompts n")
        ax.set_ylabel(f"{name} x n / K^2")
        ax.set_title(f"{name}, rescaled: flat = K^2/n rate")
        ax.legend()
    fig.tight_layout()
    (ROOT / "docs" / "figures").mkdir(parents=True, exist_ok=True)
    fig.savefig(ROOT / "docs" / "figures" / "sample_complexity.png", dpi=110)
    text = "\n".join(lines) + "\n"
    (ROOT / "docs" / "sample_complexity.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
