"""Command line: ``ccmc-estim demo``."""

import argparse
import sys
import time

import numpy as np

from . import (
    CCMC,
    CCMCEstimator,
    attention_forward,
    collapse_profile,
    generate,
    make_ccmc_data,
    winner_analysis,
)


def demo(n_tokens=8, n_prompts=20_000, seed=0, out=sys.stdout):
    """Simulate a CCMC, check it against attention, fit it back and report."""
    rng = np.random.default_rng(seed)
    say = lambda *a: print(*a, file=out)  # noqa: E731
    say(f"ccmc_estim demo: K={n_tokens} tokens, {n_prompts} prompts, seed {seed}\n")

    # 1. A tied one-layer attention layer is a CCMC.
    d = n_tokens + 4
    E = rng.standard_normal((n_tokens, d)) / np.sqrt(d)  # logits of order one
    W_att = rng.standard_normal((d, d))
    C = np.linalg.pinv(E).T
    model = CCMC.from_attention(E, W_att, C)
    probe = [rng.integers(0, n_tokens, size=int(rng.integers(3, 12))) for _ in range(200)]
    gap = np.abs(attention_forward(E, W_att, C, probe) - model.predict_proba(probe)).max()
    say("1. attention layer -> CCMC")
    say(f"   max |attention output - CCMC probability| over 200 prompts: {gap:.2e}")
    E2, W2, C2 = model.to_attention(d=d, random_state=seed)
    gap2 = np.abs(attention_forward(E2, W2, C2, probe) - model.predict_proba(probe)).max()
    say(f"   round trip CCMC -> attention (d={d}) -> probabilities: {gap2:.2e}")

    # 2. Simulate data from it and fit it back.
    prompts, outputs, _ = make_ccmc_data(
        n_prompts, n_tokens, (4, 16), logits=model.logits, random_state=seed
    )
    t0 = time.perf_counter()
    est = CCMCEstimator().fit(prompts, outputs)
    elapsed = time.perf_counter() - t0
    truth = model.logits - model.logits.mean(axis=0)
    err = est.logits_ - truth
    say("\n2. fit CCMCEstimator on simulated data")
    say(f"   fit time {elapsed:.3f} s, {int(est.n_iter_.max())} Newton iterations at most")
    say(f"   identified logits: {int(est.identified_.sum())} of {n_tokens**2}")
    say(f"   RMSE of centred logits: {np.sqrt(np.mean(err[est.identified_] ** 2)):.4f}")
    say(f"   mean log-likelihood: fitted {est.score(prompts, outputs):.4f}, "
        f"true {model.log_likelihood(prompts, outputs).mean():.4f}")

    # 3. What the data identify, and how precisely.
    say("\n3. identifiability and uncertainty")
    report = est.identifiability_
    say("   " + report.summary(max_rows=3).replace("\n", "\n   "))
    lo, hi = est.confidence_intervals(0.95)
    inside = (lo <= truth) & (truth <= hi)
    say(f"   95% intervals of the centred logits cover the truth for "
        f"{inside[est.identified_].mean():.0%} of entries; median standard error "
        f"{np.nanmedian(est.logits_se_):.3f}")
    say(f"   log-likelihood {est.log_likelihood_:.1f}, AIC {est.aic_:.1f}, BIC {est.bic_:.1f} "
        f"({est.n_free_params_} free parameters)")

    # 4. The base chain.
    pi = model.stationary_distribution()
    say("\n4. base Markov chain of the true model")
    say("   stationary distribution: " + " ".join(f"{p:.3f}" for p in pi))

    # 5. Generation from one prompt collapses onto a few winners.
    prompt = rng.integers(0, n_tokens, size=12)
    t0 = time.perf_counter()
    traj = generate(model, prompt, 100_000, random_state=seed)
    elapsed = time.perf_counter() - t0
    say("\n5. generation from one prompt " + str(prompt.tolist()))
    say(f"   100,000 tokens in {elapsed:.3f} s; first 30: {traj[:30].tolist()}")
    say("   " + winner_analysis(model, prompt).summary().replace("\n", "\n   "))
    profile = collapse_profile(traj, prompt, n_points=8)
    say("   " + profile.summary().replace("\n", "\n   "))
    return est


def main(argv=None):
    parser = argparse.ArgumentParser(prog="ccmc-estim", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="simulate, check against attention, fit, report")
    p.add_argument("--n-tokens", type=int, default=8)
    p.add_argument("--n-prompts", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo(args.n_tokens, args.n_prompts, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
