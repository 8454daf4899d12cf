"""Fit benchmark: ccmc_estim against the peers a user could reach for, in one run.

Workloads (``make_ccmc_data``, Zipf token frequencies, default alpha=1):
  S: K=20,   n=2,000,     lengths 5..30
  M: K=100,  n=50,000,    lengths 5..30
  L: K=1000, n=1,000,000, length 64 (2-D array)

Every method runs in its own fresh process that loads the workload from a file (simulated once),
so the peak memory (max RSS) column is that method's alone, with the data (L: 0.7 GB loaded).
The objective gap is relative to a tight ccmc_estim solve (tol=1e-12) of the same penalised
objective.  Ratios are the method's time over ccmc_estim's end-to-end time on
the same workload.

Methods:
  ccmc_estim          CCMCEstimator().fit with default parameters (all cores) from the raw prompts
  ccmc_estim (solve)  the solver alone, from the prompt statistics
  numpy newton        plain numpy/scipy per-column Newton (sparse Hessian, scipy.linalg.solve),
                      written as a competent user would, from the same prompt statistics;
                      tuned: stops at max |gradient| <= 1e-10 x column weight
  scipy lbfgs         scipy.optimize.minimize(method="L-BFGS-B") per column on the same numpy
                      objective and gradient; tuned: gtol = 1e-6 x column weight (ccmc_estim's
                      default rule), ftol = 0, maxiter 10,000
  torch lbfgs / adam  a tied one-layer attention layer (E = C = I, so W_att = W) trained on the
                      CPU in float64, full batch (only when torch is installed)
  statsmodels         ConditionalLogit on S: one alternative per prompt position, one dummy per
                      logit, L2 through fit_regularized (elastic net with L1_wt=0)
  first fit           a fresh process: import ccmc_estim, simulate S, fit S (numba cache warm)

Usage: python benchmarks/bench_fit.py [--workloads S,M,L] [--repeats 5] [--out FILE]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WORKLOADS = {
    "S": dict(n_prompts=2_000, n_tokens=20, prompt_length=(5, 30)),
    "M": dict(n_prompts=50_000, n_tokens=100, prompt_length=(5, 30)),
    "L": dict(n_prompts=1_000_000, n_tokens=1_000, prompt_length=64),
}
ALPHA = 1.0
METHODS = {
    "ccmc_estim": "SML",
    "ccmc_estim (solve)": "SML",
    "numpy newton": "SM",
    "scipy lbfgs": "SM",
    "torch lbfgs": "SM",
    "torch adam": "SM",
    "statsmodels": "S",
}


CACHE = Path(tempfile.gettempdir()) / "ccmc_estim_bench"


def make_data(name):
    """The workload's prompts and outputs, simulated once and cached on disk, so that every
    measured process only loads them (its peak memory is then the data plus the method)."""
    path = CACHE / f"{name}.npz"
    if not path.exists():
        from ccmc_estim import make_ccmc_data

        X, y, _ = make_ccmc_data(**WORKLOADS[name], token_distribution="zipf", random_state=0)
        CACHE.mkdir(parents=True, exist_ok=True)
        if isinstance(X, np.ndarray):
            np.savez(path, X=X, y=y)
        else:
            np.savez(path, flat=np.concatenate(X), lengths=[len(p) for p in X], y=y)
    data = np.load(path)
    if "X" in data:
        return data["X"], data["y"], None
    X = np.split(data["flat"], np.cumsum(data["lengths"])[:-1])
    return X, data["y"], None


def objective(logits, prompts, outputs, identified):
    """The penalised objective of any logits, evaluated by ccmc_estim's model."""
    from ccmc_estim import CCMC

    nll = -CCMC(logits).log_likelihood(prompts, outputs).sum()
    return float(nll + 0.5 * ALPHA * np.sum(logits[identified] ** 2))


# --------------------------------------------------------------------------- peers
def _column_objective(cd, q, alpha):
    """``(fgp, n, weight)``: the penalised objective of column ``q`` in plain numpy, returning
    its value, gradient and entry probabilities, as a user would write it."""
    a, b = cd.col_ptr[q], cd.col_ptr[q + 1]
    e0, e1 = cd.indptr[a], cd.indptr[b]
    ip = cd.indptr[a : b + 1] - e0
    loc, lc = cd.local[e0:e1], np.log(cd.count[e0:e1])
    ye, w = cd.y_entry[a:b] - e0, cd.weight[a:b]
    n = cd.id_ptr[q + 1] - cd.id_ptr[q]
    row = np.repeat(np.arange(b - a), np.diff(ip))
    wy = np.bincount(loc[ye], weights=w, minlength=n)

    def fgp(th):
        z = th[loc] + lc
        mx = np.maximum.reduceat(z, ip[:-1])
        e = np.exp(z - mx[row])
        s = np.add.reduceat(e, ip[:-1])
        f = w @ (mx + np.log(s) - z[ye]) + 0.5 * alpha * th @ th
        p = e / s[row]
        g = np.bincount(loc, weights=w[row] * p, minlength=n) - wy + alpha * th
        return f, g, p

    return fgp, n, w, (loc, ip, row)


def numpy_newton(cd, alpha, tol=1e-10, max_iter=100):
    """Per-column Newton in plain numpy/scipy, as a user would write it."""
    from scipy.linalg import solve
    from scipy.sparse import csr_matrix

    theta = np.zeros(cd.n_params)
    for q in range(cd.n_tokens):
        if cd.col_ptr[q] == cd.col_ptr[q + 1]:
            continue
        fgp, n, w, (loc, ip, row) = _column_objective(cd, q, alpha)
        th = np.zeros(n)
        f, g, p = fgp(th)
        for _ in range(max_iter):
            if np.abs(g).max() <= tol * max(w.sum(), 1):
                break
            P = csr_matrix((p, loc, ip), shape=(w.size, n))
            H = np.diag(np.bincount(loc, weights=w[row] * p, minlength=n) + alpha)
            H -= (P.T @ P.multiply(w[:, None])).toarray()
            d = solve(H + 1e-12 * np.eye(n), -g, assume_a="pos")
            t = 1.0
            while True:
                f_new, g_new, p_new = fgp(th + t * d)
                if f_new <= f + 1e-4 * t * (g @ d) or t < 1e-10:
                    break
                t *= 0.5
            th, f, g, p = th + t * d, f_new, g_new, p_new
        theta[cd.id_ptr[q] : cd.id_ptr[q + 1]] = th
    return cd.to_dense(theta)


def scipy_lbfgs(cd, alpha, tol=1e-6):
    """Per-column L-BFGS-B (scipy.optimize.minimize) on the same numpy objective and gradient,
    stopped at the same rule as ccmc_estim's default: max |gradient| <= tol * column weight."""
    from scipy.optimize import minimize

    theta = np.zeros(cd.n_params)
    for q in range(cd.n_tokens):
        if cd.col_ptr[q] == cd.col_ptr[q + 1]:
            continue
        fgp, n, w, _ = _column_objective(cd, q, alpha)
        res = minimize(lambda th, fgp=fgp: fgp(th)[:2], np.zeros(n), jac=True,
                       method="L-BFGS-B",
                       options={"gtol": tol * max(w.sum(), 1), "ftol": 0, "maxiter": 10_000})
        theta[cd.id_ptr[q] : cd.id_ptr[q + 1]] = res.x
    return cd.to_dense(theta)


def torch_fit(prompts, outputs, identified, method, ref_obj):
    import torch

    torch.set_num_threads(os.cpu_count())
    lengths = np.array([len(p) for p in prompts])
    L = lengths.max()
    X = np.zeros((len(prompts), L), np.int64)
    pad = np.arange(L)[None, :] >= lengths[:, None]
    for i, p in enumerate(prompts):
        X[i, : len(p)] = p
    Xt = torch.from_numpy(X)
    q = torch.from_numpy(X[np.arange(len(prompts)), lengths - 1])
    padt = torch.from_numpy(pad)
    is_y = torch.from_numpy(X == np.asarray(outputs)[:, None]) & ~padt
    mask = torch.from_numpy(identified)
    K = identified.shape[0]
    # E = C = I_K (tied), W_att = W: the attention scores are W[x_i, q].
    W = torch.zeros((K, K), dtype=torch.float64, requires_grad=True)

    def loss_fn():
        S = W[Xt, q[:, None]].masked_fill(padt, -torch.inf)
        nll = torch.logsumexp(S, 1) - torch.logsumexp(S.masked_fill(~is_y, -torch.inf), 1)
        return nll.sum() + 0.5 * ALPHA * (W[mask] ** 2).sum()

    history = []
    if method == "lbfgs":
        opt = torch.optim.LBFGS([W], lr=1, max_iter=50, history_size=20,
                                tolerance_grad=1e-10, tolerance_change=1e-16,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            return loss

        for _ in range(100):
            loss = opt.step(closure)
            history.append(float(loss))
            if float(loss) - ref_obj <= 1e-8 * abs(ref_obj):
                break
    else:
        opt = torch.optim.Adam([W], lr=0.05)
        for _ in range(2000):
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            opt.step()
            if float(loss) - ref_obj <= 1e-8 * abs(ref_obj):
                break
    return W.detach().numpy().copy()


def statsmodels_fit(identified, cd):
    """ConditionalLogit with an L2 penalty: one group per prompt, one alternative per distinct
    token (offset log m_k), one dummy per identified logit; BFGS, statsmodels' default."""
    from statsmodels.base._penalized import PenalizedMixin
    from statsmodels.base._penalties import L2
    from statsmodels.discrete.conditional_models import ConditionalLogit

    class PenalizedConditionalLogit(PenalizedMixin, ConditionalLogit):
        pass

    lengths = np.diff(cd.indptr)
    groups = np.repeat(np.arange(lengths.size), lengths)
    col = np.repeat(np.arange(cd.n_tokens), np.diff(cd.col_ptr))
    param = (cd.id_ptr[col][groups] + cd.local).astype(np.int64)
    exog = np.zeros((param.size, cd.n_params))
    exog[np.arange(param.size), param] = 1.0
    endog = np.zeros(param.size)
    endog[cd.y_entry] = 1.0
    # The penalty is pen_weight * sum(b^2): pen_weight = alpha / 2 gives alpha/2 ||b||^2.
    model = PenalizedConditionalLogit(endog, exog, groups=groups, offset=np.log(cd.count),
                                      penal=L2(), pen_weight=ALPHA / 2)
    res = model.fit(method="bfgs", maxiter=10_000, gtol=1e-8, disp=False)
    return cd.to_dense(np.asarray(res.params))


# --------------------------------------------------------------------------- one run
def run_one(method, workload, repeats):
    from ccmc_estim import CCMCEstimator
    from ccmc_estim._columns import build_columns
    from ccmc_estim._solvers import solve_columns
    from ccmc_estim._stats import validate_prompts

    prompts, outputs, _ = make_data(workload)
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ref = CCMCEstimator(tol=1e-12, n_jobs=-1).fit(prompts, outputs) if method != "ccmc_estim" \
        else None
    times = []
    for _ in range(repeats):
        if method == "ccmc_estim":
            t0 = time.perf_counter()
            est = CCMCEstimator().fit(prompts, outputs)  # default parameters
            times.append(time.perf_counter() - t0)
            logits, identified = est.logits_, est.identified_
            continue
        flat, indptr, K = validate_prompts(prompts)
        cd = build_columns(flat, indptr, K, np.asarray(outputs), np.ones(len(outputs)))
        identified = ref.identified_
        t0 = time.perf_counter()
        if method == "ccmc_estim (solve)":
            theta = np.zeros(cd.n_params)
            solve_columns(cd, theta, alpha=ALPHA, tol=1e-6, max_iter=100, solver="auto",
                          n_jobs=os.cpu_count(), cold_start=True)
            logits = cd.to_dense(theta)
        elif method == "numpy newton":
            logits = numpy_newton(cd, ALPHA)
        elif method == "scipy lbfgs":
            logits = scipy_lbfgs(cd, ALPHA)
        elif method.startswith("torch"):
            logits = torch_fit(prompts, outputs, identified, method.split()[1], ref.objective_)
        elif method == "statsmodels":
            logits = statsmodels_fit(identified, cd)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # before the reference solve
    obj = objective(logits, prompts, outputs, identified)
    if ref is None:
        ref = CCMCEstimator(tol=1e-12, n_jobs=-1).fit(prompts, outputs)
    return {
        "median_s": float(np.median(times)),
        "gap": (obj - ref.objective_) / abs(ref.objective_),
        "peak_mb": peak / 1024,
        "data_mb": rss_data / 1024,
    }


def first_fit():
    code = (
        "import time; t0 = time.perf_counter()\n"
        "import ccmc_estim; t1 = time.perf_counter()\n"
        "X, y, _ = ccmc_estim.make_ccmc_data(2000, 20, (5, 30), token_distribution='zipf',"
        " random_state=0); t2 = time.perf_counter()\n"
        "ccmc_estim.CCMCEstimator().fit(X, y); t3 = time.perf_counter()\n"
        "print(t1 - t0, t2 - t1, t3 - t2)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)  # warm cache
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    imp, data, fit = map(float, out.stdout.split())
    return {"import_s": imp, "simulate_s": data, "fit_s": fit, "process_wall_s": wall}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="S,M,L")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "fit.md"))
    parser.add_argument("--run", nargs=3, metavar=("METHOD", "WORKLOAD", "REPEATS"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--make", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:
        make_data(args.make)
        return
    if args.run:
        print(json.dumps(run_one(args.run[0], args.run[1], int(args.run[2]))))
        return
    try:
        import torch  # noqa: F401
        has_torch = True
    except ImportError:
        has_torch = False
    rows = []
    for wl in args.workloads.split(","):
        subprocess.run([sys.executable, __file__, "--make", wl], check=True)
        base = None
        for method in args.methods.split(","):
            if wl not in METHODS[method] or (method.startswith("torch") and not has_torch):
                continue
            repeats = 1 if (wl == "L" or method.startswith(("torch", "statsmodels"))) \
                else args.repeats
            proc = subprocess.run(
                [sys.executable, __file__, "--run", method, wl, str(repeats)],
                capture_output=True, text=True,
            )
            if proc.returncode:
                print(f"{wl} {method} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            if method == "ccmc_estim":
                base = r["median_s"]
            r["ratio"] = r["median_s"] / base if base else float("nan")
            rows.append((wl, method, r))
            print(f"{wl:2} {method:20} {r['median_s']:9.4f} s  gap {r['gap']:9.1e}  "
                  f"x{r['ratio']:8.1f}  peak {r['peak_mb']:7.0f} MB", flush=True)
    ff = first_fit()
    lines = [
        "| workload | method | median s | objective gap | ratio to ccmc_estim | peak MB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for wl, method, r in rows:
        lines.append(f"| {wl} | {method} | {r['median_s']:.4f} | {r['gap']:.1e} | "
                     f"{r['ratio']:.1f} | {r['peak_mb']:.0f} |")
    lines.append("")
    lines.append(
        f"Fresh process (numba cache warm): import {ff['import_s']:.2f} s, simulate S "
        f"{ff['simulate_s']:.2f} s, first fit of S {ff['fit_s']:.2f} s; import + first fit "
        f"{ff['import_s'] + ff['fit_s']:.2f} s; whole process {ff['process_wall_s']:.2f} s."
    )
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
