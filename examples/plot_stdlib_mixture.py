"""
Copy or generate? Python's standard library as a corpus
=======================================================

A pure CCMC can only copy a token of its prompt; in real source code a good share of the next
tokens are elsewhere.  The :class:`~ccmc_estim.MixtureCCMCEstimator` mixes, per query token, the
CCMC (copy) with a smoothed base chain (generate).  Here it is fitted on tokenised standard
library files and compared with the usual baselines on held-out files; then we look at which
queries copy most and at what the copy part has learned.
"""

# %%
# Data: the standard library, tokenised with ``tokenize``; the last 20% of the files held out.
# A subset keeps the example quick.
import matplotlib.pyplot as plt
import numpy as np

from ccmc_estim import (
    MixtureCCMCEstimator,
    Vocabulary,
    compare_models,
    load_python_tokens,
    prompts_from_sequences,
)

corpus = load_python_tokens(n_files=40, test_size=0.2)
vocab = Vocabulary(max_size=301).fit(corpus.train)  # id 0: the unknown token
X, y = prompts_from_sequences(corpus.train, 32, vocabulary=vocab)
Xt, yt = prompts_from_sequences(corpus.test, 32, vocabulary=vocab)
print(f"{len(y):,} training pairs, {len(yt):,} held-out pairs, {vocab.n_tokens_} token ids")

# %%
# Fit and compare on the same held-out pairs: all of them, then the covered ones (output inside
# its prompt), where the pure CCMC can be scored too.
est = MixtureCCMCEstimator(unknown_id=0, n_tokens=vocab.n_tokens_).fit(X, y)
comparison = compare_models(est, X, y, Xt, yt)
print(comparison)
comparison.plot()
plt.show()

# %%
# Which queries copy?  The copy weight ``lam_q`` per query token, for the most frequent queries.
counts = np.bincount(X[:, -1], minlength=vocab.n_tokens_)
top = np.argsort(-counts)[:25]
fig, ax = plt.subplots(figsize=(8, 4))
ax.bar(range(top.size), est.copy_weight_[top])
ax.set_xticks(range(top.size), [repr(vocab.tokens_[q])[1:-1] for q in top], rotation=90)
ax.set_ylabel("copy weight lam_q")
ax.set_title("Per query: probability that the next token is copied from the prompt")
fig.tight_layout()
plt.show()

# %%
# What is copied after ``(``?  The copy part's logits in the column of that query: the tokens
# it prefers to copy when they are in the prompt.
q = vocab.index_["("]
column = est.ccmc_.toarray()[:, q]
best = np.argsort(-column)[:10]
for k in best:
    print(f"{vocab.tokens_[k]!r:>14}  logit {column[k]:+.2f}")

# %%
# Recency.  With ``max_distance`` the copy part also learns a bias ``b[d]`` per distance ``d``
# from the end of the prompt (a :class:`~ccmc_estim.PositionalCCMC`): how much more a token
# seen ``d`` positions back is copied than the same token further away or nearer.
recent = MixtureCCMCEstimator(unknown_id=0, n_tokens=vocab.n_tokens_, max_distance=31).fit(X, y)
print(f"held-out mean log-likelihood: {est.score(Xt, yt):.4f} without the bias, "
      f"{recent.score(Xt, yt):.4f} with it ({recent.n_bias_iter_} bias steps)")
fig, ax = plt.subplots(figsize=(8, 3))
ax.plot(np.arange(recent.position_bias_.size), recent.position_bias_, marker="o")
ax.axhline(0, color="grey", lw=0.5)
ax.set_xlabel("distance d from the query (0: the query itself)")
ax.set_ylabel("bias b[d]")
ax.set_title("Learned copy bias by distance")
fig.tight_layout()
plt.show()

# %%
# A copy weight per prompt.  With ``copy_weight="sentinel"`` each prompt decides how much to
# copy: its copy part's attention against a learned sentinel logit of its query,
# ``lam = Z / (Z + exp(s_q))``.  A prompt holding tokens its query attends to strongly copies
# more, so the copy weights of one query spread out instead of sharing one value.
sentinel = MixtureCCMCEstimator(unknown_id=0, n_tokens=vocab.n_tokens_,
                                copy_weight="sentinel").fit(X, y)
print(f"held-out mean log-likelihood: {est.score(Xt, yt):.4f} with a copy weight per query, "
      f"{sentinel.score(Xt, yt):.4f} with one per prompt")
lam = sentinel.model_.prompt_copy_weights(Xt)
fig, ax = plt.subplots(figsize=(8, 3))
for name in ("(", "."):
    q = vocab.index_[name]
    ax.hist(lam[Xt[:, -1] == q], bins=30, range=(0, 1), alpha=0.6,
            label=f"after {name!r} (per-query weight {est.copy_weight_[q]:.2f})")
ax.set_xlabel("copy weight of the prompt")
ax.set_ylabel("held-out prompts")
ax.legend()
ax.set_title("Copy weights per prompt (sentinel)")
fig.tight_layout()
plt.show()
