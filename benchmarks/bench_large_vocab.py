"""Large-vocabulary benchmark: fit, score, predict and generate at K = 50,257 (GPT-2's size).

Workloads:
  XL: K = 50,257, n = 1,000,000 prompts of length 128 (int32, 512 MB), Zipf token frequencies
      (exponent 1), outputs drawn from a CCMC with rank-8 logits W = U V^T (sampled entry by
      entry from U and V, never as a dense K x K matrix).  Fitted from the int32 array, and
      (job XL:auto:int64) from the same prompts held as int64 (1 GB), the type that
      ``prompts_from_sequences`` and ``make_ccmc_data`` return.
  L:  K = 1,000, n = 1,000,000, length 64 (make_ccmc_data, Zipf), fitted with dense and with
      sparse storage: the same logits to 1e-10?

Every measurement runs in a fresh process that loads the data from a file (simulated once, in a
process of its own, and cached); the peak memory is that process's maximum resident set size,
data included.  score,
predict and generate are timed after a call on two prompts, so that a cold numba cache (a new
checkout) does not add their compilation.

Usage: python benchmarks/bench_large_vocab.py [--workloads XL,L] [--out FILE]
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CACHE = Path(tempfile.gettempdir()) / "ccmc_estim_bench"
XL = dict(n_tokens=50_257, n_prompts=1_000_000, length=128, rank=8, n_test=10_000)


def zipf_tokens(rng, K, size):
    p = 1.0 / np.arange(1, K + 1)
    cdf = np.cumsum(p / p.sum())
    return np.minimum(np.searchsorted(cdf, rng.random(size)), K - 1).astype(np.int32)


def low_rank_outputs(prompts, U, V, rng, chunk=50_000):
    """Outputs of a CCMC with logits U V^T, drawn prompt by prompt from its histogram."""
    from ccmc_estim._stats import prompt_stats

    out = np.empty(len(prompts), np.int64)
    for a in range(0, len(prompts), chunk):
        s = prompt_stats(prompts[a : a + chunk], U.shape[0])
        q = s.query[s.row]
        z = np.einsum("ij,ij->i", U[s.tokens], V[q]) + np.log(s.counts)
        # Gumbel-max: one draw per prompt from softmax(z) over its entries.
        z += rng.gumbel(size=z.size)
        best = np.full(s.n_prompts, -np.inf)
        np.maximum.at(best, s.row, z)
        hit = z == best[s.row]
        first = np.unique(s.row[hit], return_index=True)[1]
        out[a : a + s.n_prompts] = s.tokens[np.flatnonzero(hit)[first]]
    return out


def make_xl():
    path = CACHE / "xl.npz"
    if path.exists():
        return path
    CACHE.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    K, n, L, r = XL["n_tokens"], XL["n_prompts"], XL["length"], XL["rank"]
    U = rng.standard_normal((K, r)) / np.sqrt(r)
    V = rng.standard_normal((K, r)) / np.sqrt(r)
    X = zipf_tokens(rng, K, (n + XL["n_test"], L))
    y = low_rank_outputs(X, U, V, rng)
    np.savez(path, X=X[:n], y=y[:n], X_test=X[n:], y_test=y[n:])
    return path


def make_l():
    path = CACHE / "l_vocab.npz"
    if path.exists():
        return path
    CACHE.mkdir(exist_ok=True)
    from ccmc_estim import make_ccmc_data

    X, y, _ = make_ccmc_data(1_000_000, 1000, 64, token_distribution="zipf", random_state=0)
    np.savez(path, X=X.astype(np.int32), y=y)
    return path


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(job):
    """One measurement, in this (fresh) process."""
    from ccmc_estim import CCMCEstimator, generate

    name, storage, *dtype = job.split(":")
    data = np.load(make_xl() if name == "XL" else make_l())
    X, y = data["X"], data["y"]
    if dtype:
        X = X.astype(dtype[0])
    data_mb = X.nbytes / 2**20
    t0 = time.perf_counter()
    est = CCMCEstimator(sparse={"sparse": True, "dense": False, "auto": "auto"}[storage],
                        n_jobs=-1).fit(X, y)
    fit_s = time.perf_counter() - t0
    out = dict(job=job, fit_s=fit_s, fit_peak_mb=peak_mb(), data_mb=data_mb,
               n_params=int(est.identifiability_.n_identified.sum()),
               sparse=bool(est.model_.sparse), objective=est.objective_)
    if name == "XL":
        Xt, yt = data["X_test"], data["y_test"]
        # Compiled once per installation: not what these rows measure.
        est.score(Xt[:2], yt[:2])
        est.predict(Xt[:2])
        generate(est.model_, Xt[0], 2, random_state=0)
        t0 = time.perf_counter()
        out["score"] = est.score(Xt, yt)
        out["score_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        est.predict(Xt)
        out["predict_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        generate(est.model_, Xt[0], 1_000_000, random_state=0)
        out["generate_1e6_s"] = time.perf_counter() - t0
    else:
        np.save(CACHE / f"l_{storage}_logits.npy",
                est.logits_.toarray() if est.model_.sparse else est.logits_)
    out["peak_mb"] = peak_mb()
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", default="XL,L")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", default=None)
    ap.add_argument("--make", default=None)
    args = ap.parse_args()
    if args.child:
        return child(args.child)
    if args.make:
        return (make_xl if args.make == "XL" else make_l)()
    jobs = []
    for w in args.workloads.split(","):
        # Simulated in a process of its own: a child inherits its parent's peak memory
        # (Linux keeps the maximum resident set size across fork and exec).
        subprocess.run([sys.executable, __file__, "--make", w], check=True)
        jobs += [f"{w}:auto", f"{w}:auto:int64"] if w == "XL" else [f"{w}:dense",
                                                                      f"{w}:sparse"]
    results = []
    for job in jobs:
        res = subprocess.run([sys.executable, __file__, "--child", job], capture_output=True,
                             text=True, check=True)
        results.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(results[-1], flush=True)
    lines = ["| job | fit s | fit peak MB | data MB | identified logits | storage | extra |",
             "|---|---:|---:|---:|---:|---|---|"]
    for r in results:
        extra = ", ".join(f"{k} {r[k]:.3g}" for k in ("score_s", "predict_s", "generate_1e6_s",
                                                       "score") if k in r)
        lines.append(f"| {r['job']} | {r['fit_s']:.2f} | {r['fit_peak_mb']:.0f} | "
                     f"{r['data_mb']:.0f} | {r['n_params']:,} | "
                     f"{'sparse' if r['sparse'] else 'dense'} | {extra} |")
    if "L" in args.workloads.split(","):
        a = np.load(CACHE / "l_dense_logits.npy")
        b = np.load(CACHE / "l_sparse_logits.npy")
        lines.append(f"\nL: max |dense - sparse| logits = {np.abs(a - b).max():.3g}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
