"""Generation speed: 10^6 steps from one prompt, K=100, growing context and sliding window.

Baseline measured in the same run: a plain numpy loop that recomputes the next-token
distribution from the running counts at every step (what a user would write without a
compiled kernel), timed on 10^4 steps and scaled.

Run: python benchmarks/bench_generate.py
"""

import time

import numpy as np

from ccmc_estim import CCMC, PositionalCCMC, generate


def numpy_generate(model, prompt, n_steps, seed):
    rng = np.random.default_rng(seed)
    counts = np.bincount(prompt, minlength=model.n_tokens).astype(float)
    expw = np.exp(model.logits - model.logits.max(axis=0))
    q = prompt[-1]
    out = np.empty(n_steps, np.int64)
    for t in range(n_steps):
        w = counts * expw[:, q]
        y = np.searchsorted(np.cumsum(w), rng.random() * w.sum(), side="right")
        out[t] = y
        counts[y] += 1
        q = y
    return out


def main():
    K = 100
    rng = np.random.default_rng(0)
    model = CCMC(rng.standard_normal((K, K)))
    prompt = rng.integers(0, K, size=200)  # ~87 distinct tokens
    generate(model, prompt, 10, random_state=0)  # compile or load the cache
    rows = []
    for label, m, window in (
        ("growing context", model, None),
        ("sliding window 64", model, 64),
        ("positional, 32 biases", PositionalCCMC(model.logits, -0.1 * np.arange(32)), None),
    ):
        generate(m, prompt, 10, window=window, random_state=0)
        times = []
        for seed in range(5):
            t0 = time.perf_counter()
            generate(m, prompt, 1_000_000, window=window, random_state=seed)
            times.append(time.perf_counter() - t0)
        rows.append((label, float(np.median(times))))
    t0 = time.perf_counter()
    numpy_generate(model, prompt, 10_000, 0)
    base = (time.perf_counter() - t0) * 100
    print(f"| generation of 10^6 tokens, K={K}, {np.unique(prompt).size} prompt tokens | median s "
          "| speed-up over numpy loop |")
    print("|---|---:|---:|")
    for label, t in rows:
        print(f"| {label} | {t:.3f} | {base / t:.0f}x |")
    print(f"| numpy loop (10^4 steps, scaled) | {base:.1f} | 1x |")


if __name__ == "__main__":
    main()
