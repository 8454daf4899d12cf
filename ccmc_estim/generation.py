"""Generation from one prompt and its winner-takes-all collapse."""

from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np

from . import _kernels
from ._markov import logsumexp, stationary_log, support_block
from ._stats import (
    PromptStats,
    check_memory,
    check_n_tokens,
    check_random_state,
    number,
    validate_params,
    validate_prompts,
)
from .model import CCMC, PositionalCCMC


def _check_model(model, positional=True):
    from .mixture import MixtureCCMC

    if isinstance(model, MixtureCCMC):
        if not positional:
            raise TypeError(
                "this analysis assumes the plain CCMC dynamics, whose support never grows; a "
                "MixtureCCMC also generates new tokens. Simulate it with generate instead, or "
                "analyse its copy part, model.ccmc."
            )
        return model
    if not isinstance(model, CCMC):
        raise TypeError(f"model must be a CCMC, got {type(model).__name__}.")
    if not positional and isinstance(model, PositionalCCMC):
        raise TypeError(
            "this analysis assumes the plain CCMC dynamics; a position "
            "bias changes them. Simulate the PositionalCCMC with generate instead."
        )
    return model


def _run(model, prompt, window, u, out):
    """Fill ``out`` with a trajectory from one validated prompt.

    Generation never leaves the prompt's distinct tokens, so it runs on the small dense block
    of logits among them, in local ids: memory and time per step independent of ``K``.
    """
    if not isinstance(model, CCMC):  # a MixtureCCMC: its support grows
        model._generate(prompt, window, u, out)
        return
    support, context = np.unique(prompt, return_inverse=True)
    block = model.support_block(support)
    if isinstance(model, PositionalCCMC):
        _kernels.generate_positional(block, model.position_bias, context, window, u, out)
    else:
        _kernels.generate_tokens(block, context, window, u, out)
    out[:] = support[out]


def _check_prompt(prompt, n_tokens=None, what="prompt"):
    """A single prompt as an array of token ids below ``n_tokens`` (any supported ids when
    None)."""
    if isinstance(prompt, (str, bytes)) or np.isscalar(prompt):
        raise TypeError(f"{what} must be a 1-D sequence of token ids, got {prompt!r}.")
    arr = np.asarray(prompt)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}.")
    try:
        flat, _, _ = validate_prompts([arr], n_tokens)
    except (TypeError, ValueError) as exc:  # name the argument rather than "prompt 0"
        raise type(exc)(str(exc).replace("prompt 0", what, 1)) from None
    return flat


# Any window at least as long as the whole context grows it, so larger windows are clamped to
# this: the compiled kernels take int64, and no context in memory comes near 2**62 tokens.
_WINDOW_MAX = 2**62

# Declarative constraints of the generation parameters (checked by ``validate_params``).
_STEPS = [number(Integral, 0, None, closed="left")]
_POSITIVE = [number(Integral, 1, None, closed="left")]
_WINDOW = [None, *_POSITIVE]


def _check_steps(n_steps, n_trajectories=1, n_context=0):
    """``n_steps`` as an int, once the arrays of a run (one uniform, one token per step, and
    the context of a positional model) are known to fit in memory."""
    if isinstance(n_steps, bool) or not isinstance(n_steps, Integral):
        raise TypeError(f"n_steps must be an integer, got {n_steps!r}.")
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}.")
    check_memory(n_trajectories * 16 * int(n_steps) + 8 * (n_context + int(n_steps)),
                 f"generating n_steps={n_steps} tokens")
    return int(n_steps)


def _check_window(window):
    """0 for a growing context, else the window clamped to ``_WINDOW_MAX``."""
    if window is None:
        return 0
    if isinstance(window, bool) or not isinstance(window, Integral) or window < 1:
        raise ValueError(f"window must be None or a positive integer, got {window!r}.")
    return int(min(window, _WINDOW_MAX))


@validate_params({"n_steps": _STEPS, "window": _WINDOW}, prefer_skip_nested_validation=True)
def generate(model, prompt, n_steps, *, window=None, random_state=None):
    """Generate ``n_steps`` tokens autoregressively from one prompt.

    Each step draws the next token from the CCMC of the current context, appends it and makes it
    the next query.  Compiled, with the token counts updated incrementally: a step costs
    ``O(number of distinct prompt tokens)`` (plus ``O(len(position_bias))`` for a
    :class:`PositionalCCMC`, which weighs each context position by its bias).  A
    :class:`MixtureCCMC` copies from the context or generates from its base chain at each step,
    so its support grows; a step costs ``O(distinct context tokens x log K)``.

    Parameters
    ----------
    model : CCMC, PositionalCCMC or MixtureCCMC
    prompt : 1-D sequence of int
    n_steps : int
    window : int or None
        None: the context grows (the prompt plus everything generated).  An integer ``L``: the
        context is the last ``L`` tokens (a sliding window; shorter prompts grow up to ``L``).
        Any ``L`` of at least ``len(prompt) + n_steps`` is the growing context, however large.
    random_state : int, Generator, RandomState or None

    Returns
    -------
    ndarray of int64, shape (n_steps,)

    Examples
    --------
    >>> import numpy as np
    >>> from ccmc_estim import CCMC, generate
    >>> model = CCMC(np.array([[3.0, 0.0], [0.0, 0.0]]))   # token 0 dominates itself
    >>> tokens = generate(model, [0, 1, 0], 1000, random_state=0)
    >>> float(np.mean(tokens[-100:] == 0)) > 0.9
    True
    """
    model = _check_model(model)
    prompt = _check_prompt(prompt, model.n_tokens)
    n_steps = _check_steps(n_steps, n_context=prompt.size)
    window = _check_window(window)
    u = check_random_state(random_state).random((n_steps, *_draws_per_step(model)))
    out = np.empty(n_steps, np.int64)
    _run(model, prompt, window, u, out)
    return out


def _draws_per_step(model):
    """Uniforms per generated token: one for a CCMC, three for a mixture (copy or generate,
    from counts or unigram, which token)."""
    return () if isinstance(model, CCMC) else (3,)


@validate_params({"n_steps": _STEPS, "window": _WINDOW}, prefer_skip_nested_validation=True)
def generate_batch(model, prompts, n_steps, *, window=None, random_state=None):
    """Generate many independent trajectories, one per prompt.

    Parameters
    ----------
    model : CCMC
    prompts : array-like of shape (n, L) or sequence of 1-D sequences
        One prompt per trajectory (repeat a prompt to draw several trajectories from it).
    n_steps, window, random_state
        As in :func:`generate`.

    Returns
    -------
    ndarray of int64, shape (n, n_steps)
    """
    model = _check_model(model)
    flat, indptr, _ = validate_prompts(prompts, model.n_tokens)
    n_steps = _check_steps(n_steps, indptr.size - 1, int(np.diff(indptr).max()))
    window = _check_window(window)
    u = check_random_state(random_state).random((indptr.size - 1, n_steps,
                                                 *_draws_per_step(model)))
    out = np.empty((indptr.size - 1, n_steps), np.int64)
    for i in range(indptr.size - 1):
        _run(model, flat[indptr[i] : indptr[i + 1]], window, u[i], out[i])
    return out


# --------------------------------------------------------------------------- winners
def _mean_field_drift(sub, x):
    """``pi(x) - x`` for shares ``x`` over the support and its dense logits block ``sub``.

    ``pi(x)`` is the stationary distribution of the query chain at shares ``x``: row ``q`` is
    proportional to ``x_k exp(sub[k, q])``.  The chain is built in log space
    (``log x + sub``), so logits of any size (``1e4``) give exact transition probabilities.

    On a face of the simplex (some ``x_k = 0``) the chain is reducible, but only in a benign
    way: a token with zero share is never entered (its column is 0) and is left in one step,
    so it is transient, while the tokens with positive share form one closed class with all
    transitions positive.  The stationary distribution is therefore still unique, zero off
    ``supp(x)``; it is computed on ``supp(x)`` only, which keeps the faces invariant exactly,
    as the flow requires.
    """
    on = np.flatnonzero(x > 0)
    pi = np.zeros_like(x)
    if on.size == 1:
        pi[on] = 1.0
    else:
        z = np.log(x[on])[:, None] + sub[np.ix_(on, on)]  # z[k, q]
        pi[on] = stationary_log((z - logsumexp(z, axis=0)).T)
    return pi - x


def _integrate(sub, x, tol=1e-12, max_steps=5_000, h=0.5):
    """Euler steps of the mean-field flow ``dx/ds = pi(x) - x`` until the drift vanishes.

    A step ``x + h (pi - x)`` with ``h <= 1`` is a convex combination of two points of the
    simplex, so it never leaves it (no clipping) and shares that decay towards a face shrink
    geometrically without changing sign.
    """
    for _ in range(max_steps):
        d = _mean_field_drift(sub, x)
        if np.abs(d).max() < tol:
            break
        x = x + h * d
        x /= x.sum()
    return x


#: Shares below this after integration are taken to be converging to 0 (the limit lies on a
#: face); the integration tolerance 1e-12 leaves decaying shares far below it.
_SNAP = 1e-8
#: Two polished limits closer than this (max norm) are the same fixed point; Newton leaves
#: them within about 1e-13 of each other.  Unpolished limits are merged at _MERGE_ROUGH.
_MERGE = 1e-6
_MERGE_ROUGH = 1e-3


def _tangent(m):
    """Orthonormal basis ``(m, m - 1)`` of the directions ``v`` with ``sum(v) = 0``."""
    return np.linalg.qr(np.eye(m)[:, :-1] - 1.0 / m)[0]


def _face_jacobian(sub, x, on):
    """Central-difference Jacobian of the drift within the face ``supp(x) = on``, in the
    tangent basis: ``(m - 1, m - 1)`` for ``m = len(on)``."""
    m = on.size
    B = _tangent(m)
    xs = x[on]
    # Steps small against the smallest share, so that the probe stays inside the face.
    eps = min(1e-6, 0.25 * xs.min())
    sub_s = sub[np.ix_(on, on)]
    J = np.empty((m, m - 1))
    for i in range(m - 1):
        J[:, i] = (_mean_field_drift(sub_s, xs + eps * B[:, i])
                   - _mean_field_drift(sub_s, xs - eps * B[:, i])) / (2 * eps)
    return B.T @ J, B


def _polish(sub, x, max_iter=30):
    """Snap the shares below ``_SNAP`` to 0 and refine the fixed point on that face by Newton.

    Returns the refined shares and whether Newton converged (drift below ``1e-14``).  Newton
    converges to the fixed point the integration was approaching, stable or not, so that
    limits reached from different starts coincide to rounding and deduplicate reliably.
    """
    x = np.where(x < _SNAP, 0.0, x)
    x /= x.sum()
    on = np.flatnonzero(x > 0)
    if on.size == 1:
        return x, True  # a vertex is an exact fixed point
    sub_s = sub[np.ix_(on, on)]
    xs = x[on]
    F = _mean_field_drift(sub_s, xs)
    for _ in range(max_iter):
        res = np.abs(F).max()
        if res < 1e-14:
            break
        J, B = _face_jacobian(sub, x, on)
        try:
            t = np.linalg.solve(J, -(B.T @ F))
        except np.linalg.LinAlgError:
            break
        step = B @ t
        for _ in range(20):  # damping keeps the iterate inside the face and decreasing
            trial = xs + step
            if trial.min() > 0:
                trial /= trial.sum()
                Ft = _mean_field_drift(sub_s, trial)
                if np.abs(Ft).max() < res:
                    break
            step = step / 2
        else:
            break
        xs, F = trial, Ft
        x = np.zeros_like(x)
        x[on] = xs
    return x, bool(np.abs(F).max() < 1e-14)


def _is_stable(sub, x):
    """Linear stability of a fixed point ``x`` of the flow on the simplex (faces included).

    With ``S = supp(x)``, the faces are invariant, so the Jacobian is block triangular: the
    directions within the face ``S`` (central differences) and, for every token ``j`` outside
    ``S``, the transverse rate ``sum_{q in S} x_q exp(sub[j, q]) / Z_q - 1`` with
    ``Z_q = sum_{k in S} x_k exp(sub[k, q])`` (the first-order share of ``j`` in ``pi`` divided
    by ``x_j``), computed exactly in log space.  At a vertex ``e_k`` the transverse rates are
    ``exp(sub[j, k] - sub[k, k]) - 1``: stable iff ``k`` is self-dominant.  Finite differences
    are never taken across a face, where the flow of huge logits bends on the scale
    ``exp(-logit)`` and no difference step would be small enough.
    """
    on = np.flatnonzero(x > 0)
    off = np.flatnonzero(x == 0)
    if off.size:
        z = np.log(x[on])[:, None] + sub[np.ix_(on, on)]
        logz = logsumexp(z, axis=0)
        rate = logsumexp(np.log(x[on])[None, :] + sub[np.ix_(off, on)] - logz[None, :],
                         axis=1)
        if (rate >= 0).any():  # log(1 + transverse eigenvalue)
            return False
    if on.size == 1:
        return True
    J, _ = _face_jacobian(sub, x, on)
    # Differences of size eps carry errors of about 1e-8 relative: a margin below 0.
    return bool(np.linalg.eigvals(J).real.max() < -1e-7)


@dataclass(eq=False)
class WinnerAnalysis:
    """Predicted long-run behaviour of generation from one prompt (:func:`winner_analysis`).

    Attributes
    ----------
    support : ndarray of int
        Distinct tokens of the prompt: the only ones generation can ever produce.
    initial_shares : ndarray
        Token shares of the prompt, over ``support``.
    single_winners : ndarray of int
        Self-dominant tokens ``k`` (``logits[k, k] > logits[j, k]`` for every other support
        token ``j``): the vertices of the simplex that are stable.
    predicted_limit : ndarray
        Shares over ``support`` where the mean-field dynamics started from the prompt's
        shares settle (refined by Newton's method; shares that decay to 0 are exactly 0).
        It may be an unstable fixed point when the prompt's shares lie exactly on its stable
        manifold, e.g. equal shares of symmetric tokens.
    predicted_winners : ndarray of int
        Tokens holding more than ``threshold`` of ``predicted_limit``.
    stable_limits : list of ndarray
        Distinct linearly stable fixed points of the mean-field flow that were found: the
        self-dominant vertices (stable by the rule above), then the stable limits reached
        from the prompt's shares and from random starts.  Each limit is refined on its face
        of the simplex by Newton's method, so limits reached from different starts coincide
        to rounding; limits within ``1e-6`` (max norm) are merged.
    """

    support: np.ndarray
    initial_shares: np.ndarray
    single_winners: np.ndarray
    predicted_limit: np.ndarray
    predicted_winners: np.ndarray
    stable_limits: list
    threshold: float

    def summary(self):
        def fmt(x):
            keep = x > self.threshold
            return ", ".join(f"{t}: {s:.2f}" for t, s in zip(self.support[keep], x[keep],
                                                            strict=True))

        lines = [
            f"Winner analysis over {self.support.size} prompt tokens "
            f"{self.support.tolist()}",
            f"  self-dominant (stable single winners): {self.single_winners.tolist() or 'none'}",
            f"  from the prompt's shares the context settles on: {{{fmt(self.predicted_limit)}}}",
            f"  stable limits found: {len(self.stable_limits)}",
        ]
        lines += [f"    {{{fmt(x)}}}" for x in self.stable_limits]
        return "\n".join(lines)

    def __str__(self):
        return self.summary()

    def plot(self, ax=None, **kwargs):
        """Draw the prompt's shares, the predicted limit and the stable limits.

        Needs matplotlib (``pip install ccmc-estim[plot]``).

        Parameters
        ----------
        ax : matplotlib Axes or None
            Where to draw; a new figure when None.
        **kwargs
            Passed to :meth:`~ccmc_estim.WinnerDisplay.plot`.

        Returns
        -------
        WinnerDisplay
            With the figure (``figure_``), the axes (``ax_``) and the artists.

        Examples
        --------
        >>> import numpy as np
        >>> from ccmc_estim import CCMC, winner_analysis
        >>> W = np.array([[2.0, 0.0], [0.0, 0.0]])
        >>> disp = winner_analysis(CCMC(W), [0, 1, 1]).plot()
        >>> bool(disp.limit_bars_[0].get_height() > 0.99)
        True
        >>> import matplotlib.pyplot as plt; plt.close(disp.figure_)
        """
        from .plotting import WinnerDisplay

        return WinnerDisplay.from_result(self, ax=ax, **kwargs)


@validate_params({"n_starts": [number(Integral, 0, 10**6)],
                  "threshold": [number(Real, 0, 1, closed="neither")],
                  "random_state": ["random_state"]}, prefer_skip_nested_validation=True)
def winner_analysis(model, prompt, *, n_starts=10, threshold=1e-3, random_state=0):
    """Which tokens take over when generating from ``prompt`` with a growing context.

    A token ``k`` of the prompt is a stable single winner iff it is self-dominant,
    ``logits[k, k] > logits[j, k]`` for every other prompt token ``j``.  Beyond single winners
    the function integrates the mean-field dynamics of the context shares ``x``,
    ``dx/ds = pi(x) - x`` (``s`` is log-time; ``pi(x)`` is the stationary distribution of the
    query chain at shares ``x``), from the prompt's shares and from ``n_starts`` random ones,
    and keeps the linearly stable limits.

    Parameters
    ----------
    model : CCMC
    prompt : 1-D sequence of int
    n_starts : int
        Random starting shares, to find other stable limits.
    threshold : float
        Share above which a token counts as part of a limit.
    random_state : int, Generator, RandomState or None

    Returns
    -------
    WinnerAnalysis

    Examples
    --------
    >>> import numpy as np
    >>> from ccmc_estim import CCMC, winner_analysis
    >>> W = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    >>> winner_analysis(CCMC(W), [0, 1, 2, 0]).single_winners.tolist()
    [0]
    """
    model = _check_model(model, positional=False)
    prompt = _check_prompt(prompt, model.n_tokens)
    support, counts = np.unique(prompt, return_counts=True)
    m = support.size
    # Only the support block matters (generation never leaves the prompt's tokens); for a
    # sparse model this densifies that small block only, missing logits being 0.
    sub = support_block(model.logits, support)
    # Column k: k must beat every rival j of the prompt, logits[k, k] > logits[j, k].
    rivals = np.where(np.eye(m, dtype=bool), -np.inf, sub)
    is_single = np.diag(sub) > rivals.max(axis=0)
    single = support[is_single]
    x0 = counts / counts.sum()
    rng = check_random_state(random_state)
    found, polished = [], []

    def add(x, ok):
        for i, y in enumerate(found):
            if np.abs(x - y).max() < (_MERGE if ok and polished[i] else _MERGE_ROUGH):
                return
        found.append(x)
        polished.append(ok)

    for k in np.flatnonzero(is_single):
        add(np.eye(m)[k], True)
    limit = None
    for start in [x0, *rng.dirichlet(np.ones(m), size=n_starts)]:
        x, ok = _polish(sub, _integrate(sub, start))
        if limit is None:
            limit = x
        if _is_stable(sub, x):
            add(x, ok)
    return WinnerAnalysis(
        support=support.astype(np.int64),
        initial_shares=x0,
        single_winners=single.astype(np.int64),
        predicted_limit=limit,
        predicted_winners=support[limit > threshold].astype(np.int64),
        stable_limits=found,
        threshold=threshold,
    )


# --------------------------------------------------------------------------- collapse
@dataclass(eq=False)
class CollapseProfile:
    """Collapse metrics of a trajectory on a grid of steps (:func:`collapse_profile`).

    Attributes
    ----------
    steps : ndarray of int
        Number of generated tokens at each grid point.
    leading_share : ndarray
        Share of the most frequent token in the context (prompt plus generated tokens).
    leading_token : ndarray of int
    entropy : ndarray
        Entropy (nats) of the context's token histogram.
    distinct_in_window : ndarray of int
        Distinct tokens among the last ``window`` generated tokens.
    repetition_rate : ndarray
        Share of repeated ``ngram``-grams among the last ``window`` generated tokens:
        ``1 - distinct n-grams / n-grams``.
    """

    steps: np.ndarray
    leading_share: np.ndarray
    leading_token: np.ndarray
    entropy: np.ndarray
    distinct_in_window: np.ndarray
    repetition_rate: np.ndarray
    window: int
    ngram: int

    @validate_params({"rows": _POSITIVE}, prefer_skip_nested_validation=True)
    def summary(self, rows=8):
        idx = np.unique(np.linspace(0, self.steps.size - 1, min(rows, self.steps.size)).astype(int))
        lines = [f"{'step':>9} {'leader':>6} {'share':>6} {'entropy':>7} "
                 f"{'distinct':>8} {f'rep-{self.ngram}':>6}"]
        for i in idx:
            lines.append(
                f"{self.steps[i]:>9} {self.leading_token[i]:>6} {self.leading_share[i]:>6.3f} "
                f"{self.entropy[i]:>7.3f} {self.distinct_in_window[i]:>8} "
                f"{self.repetition_rate[i]:>6.3f}"
            )
        return "\n".join(lines)

    def __str__(self):
        return self.summary()

    def plot(self, ax=None, **kwargs):
        """Draw the collapse curves against the generated tokens.

        Needs matplotlib (``pip install ccmc-estim[plot]``).

        Parameters
        ----------
        ax : matplotlib Axes or None
            Where to draw; a new figure when None.
        **kwargs
            Passed to :meth:`~ccmc_estim.CollapseProfileDisplay.plot`.

        Returns
        -------
        CollapseProfileDisplay
            With the figure (``figure_``), the axes (``ax_``) and the artists.

        Examples
        --------
        >>> from ccmc_estim import collapse_profile
        >>> disp = collapse_profile([1, 2, 1, 1, 1, 1], prompt=[2, 1], window=4, ngram=2).plot()
        >>> float(disp.lines_["leading_share"].get_ydata()[-1])
        0.75
        >>> import matplotlib.pyplot as plt; plt.close(disp.figure_)
        """
        from .plotting import CollapseProfileDisplay

        return CollapseProfileDisplay.from_result(self, ax=ax, **kwargs)


@validate_params(
    {"n_tokens": [None, *_POSITIVE], "window": _POSITIVE, "ngram": _POSITIVE,
     "n_points": _POSITIVE},
    prefer_skip_nested_validation=True,
)
def collapse_profile(trajectory, prompt=None, *, n_tokens=None, window=100, ngram=4,
                     n_points=50):
    """Measure how a generated trajectory collapses onto a few repeated tokens.

    Parameters
    ----------
    trajectory : 1-D sequence of int
        Generated tokens.
    prompt : 1-D sequence of int or None
        The prompt, counted in the context histogram.
    n_tokens : int or None
        Vocabulary size (inferred when None).
    window : int
        Length of the recent window for distinct tokens and repetition.
    ngram : int
        n of the repetition rate.
    n_points : int
        Size of the log-spaced grid of steps (all steps when it exceeds the length).

    Returns
    -------
    CollapseProfile

    Examples
    --------
    >>> from ccmc_estim import collapse_profile
    >>> prof = collapse_profile([1, 2, 1, 1, 1, 1, 1, 1], prompt=[2, 1], window=4, ngram=2)
    >>> float(prof.leading_share[-1]), int(prof.distinct_in_window[-1])
    (0.8, 1)
    """
    limit = None if n_tokens is None else check_n_tokens(n_tokens)
    traj = _check_prompt(trajectory, limit, "trajectory")
    base = np.zeros(0, np.int32) if prompt is None else _check_prompt(prompt, limit)
    K = int(max(traj.max(), base.max() if base.size else 0)) + 1 if n_tokens is None else limit
    N = traj.size
    span = min(int(window), N)  # a window beyond the trajectory is all of it (no int overflow)
    if n_points >= N:
        steps = np.arange(1, N + 1)
    else:
        steps = np.unique(np.geomspace(1, N, num=n_points).round().astype(np.int64))
    counts = np.bincount(base, minlength=K).astype(np.float64)
    lead_share = np.empty(steps.size)
    lead_tok = np.empty(steps.size, np.int64)
    entropy = np.empty(steps.size)
    distinct = np.empty(steps.size, np.int64)
    rep = np.empty(steps.size)
    prev = 0
    for i, t in enumerate(steps):
        counts += np.bincount(traj[prev:t], minlength=K)
        prev = t
        p = counts / counts.sum()
        lead_tok[i] = np.argmax(p)
        lead_share[i] = p[lead_tok[i]]
        nz = p[p > 0]
        entropy[i] = 0.0 - float((nz * np.log(nz)).sum())  # 0.0 - : never print -0.000
        recent = traj[max(0, t - span) : t]
        distinct[i] = np.unique(recent).size
        if recent.size >= ngram:
            grams = np.lib.stride_tricks.sliding_window_view(recent, ngram)
            rep[i] = 1.0 - np.unique(grams, axis=0).shape[0] / grams.shape[0]
        else:
            rep[i] = 0.0
    return CollapseProfile(steps, lead_share, lead_tok, entropy, distinct, rep, window, ngram)


# --------------------------------------------------------------------------- one trajectory
@validate_params({"window": _WINDOW}, prefer_skip_nested_validation=True)
def trajectory_pairs(prompt, trajectory, *, window=None):
    """Training pairs from one trajectory: each context and the token that followed it.

    Parameters
    ----------
    prompt : 1-D sequence of int
    trajectory : 1-D sequence of int
        Tokens generated from ``prompt``.
    window : int or None
        None: every prefix (prompt plus the tokens so far) is a context, as in growing-context
        generation.  An integer: the last ``window`` tokens, as in sliding-window generation.

    Returns
    -------
    prompts : list of ndarray
        Read-only views of one array (no copy per context).
    outputs : ndarray of int64

    Examples
    --------
    >>> from ccmc_estim import trajectory_pairs
    >>> X, y = trajectory_pairs([0, 1], [1, 0])
    >>> [x.tolist() for x in X], y.tolist()
    ([[0, 1], [0, 1, 1]], [1, 0])
    """
    base = _check_prompt(prompt)
    traj = _check_prompt(trajectory, what="trajectory")
    window = _check_window(window)
    seq = np.concatenate([base, traj]).astype(np.int64)  # int64 ids, as documented
    seq.setflags(write=False)
    start = base.size
    ends = np.arange(start, seq.size)
    if window:
        prompts = [seq[max(0, t - window) : t] for t in ends]
    else:
        prompts = [seq[:t] for t in ends]
    return prompts, seq[start:].copy()


def _trajectory_stats(prompt, trajectory, n_tokens, window=0):
    """:class:`PromptStats` of :func:`trajectory_pairs` in ``O(length x support)``."""
    seq = np.concatenate([prompt, trajectory]).astype(np.int64)
    support = np.unique(seq)
    indptr, tokens, counts, query = _kernels.prefix_counts(seq, prompt.size, support, window)
    return PromptStats(n_tokens, indptr, tokens, counts, query)


@dataclass(eq=False)
class TrajectoryLearning:
    """Errors of logits fitted on growing prefixes of one trajectory.

    Returned by :func:`learn_from_trajectory`.

    Attributes
    ----------
    lengths : ndarray of int
        Trajectory lengths used for fitting.
    winners : ndarray of int
        Tokens taking more than ``share`` of the trajectory's tail: the winner block.
    winner_error : ndarray
        RMS error, per length, of the within-column differences ``W[k, q] - W[q, q]`` over the
        identified entries of the winner block (``k != q`` both winners).  The logits are
        identified only up to a constant per column, so these differences are the only
        learnable quantities; a single winner has none (its 1 x 1 block holds only the
        reference ``W[q, q] - W[q, q] = 0``), and ``winner_error`` is then NaN at every length.
        The collapse onto a single winner teaches nothing about relative logits: use
        ``rest_error``.
    rest_error : ndarray
        The same over the other identified entries of the support (``k`` or ``q`` not a
        winner); NaN when none is identified.
    winner_visits, rest_visits : ndarray of int
        Per length, the fewest times a winner-block entry, and the most times any other entry,
        was available to be chosen.

    Notes
    -----
    Every quantity involves the tokens of the prompt and trajectory only (no other token can
    occur in a context, so no other entry is identified); the logits, identified masks and
    co-occurrence counts are read through that small block, dense or sparse alike.
    """

    lengths: np.ndarray
    winners: np.ndarray
    winner_error: np.ndarray
    rest_error: np.ndarray
    winner_visits: np.ndarray
    rest_visits: np.ndarray

    def summary(self):
        lines = [f"Winner block {self.winners.tolist()}",
                 f"{'length':>9} {'winner err':>10} {'rest err':>9} {'min win n':>9} "
                 f"{'max rest n':>10}"]
        for row in zip(self.lengths, self.winner_error, self.rest_error, self.winner_visits,
                       self.rest_visits, strict=True):
            lines.append(f"{row[0]:>9} {row[1]:>10.4f} {row[2]:>9.4f} {row[3]:>9} {row[4]:>10}")
        return "\n".join(lines)

    def __str__(self):
        return self.summary()


@validate_params({"lengths": ["array-like"], "share": [number(Real, 0, 1, closed="neither")],
                  "random_state": ["random_state"]}, prefer_skip_nested_validation=True)
def learn_from_trajectory(model, prompt, lengths, *, estimator=None, share=0.05,
                          random_state=None):
    """Fit a CCMC on growing prefixes of one generated trajectory and track what it learns.

    Only the block of logits among the winner tokens receives unboundedly many samples; the
    rest is seen finitely often, so its error does not shrink with the length.

    Parameters
    ----------
    model : CCMC
        The true model that generates the trajectory.
    prompt : 1-D sequence of int
    lengths : sequence of int
        Increasing trajectory lengths at which to fit.
    estimator : CCMCEstimator or None
        Fitted on each prefix (cloned); default ``CCMCEstimator(alpha=1e-3)``.
    share : float
        Tail share above which a token belongs to the winner block.
    random_state : int, Generator, RandomState or None

    Returns
    -------
    TrajectoryLearning
    """
    from sklearn.base import clone

    from .estimator import CCMCEstimator

    model = _check_model(model, positional=False)
    prompt = _check_prompt(prompt, model.n_tokens)
    raw = np.asarray(lengths)
    if raw.dtype.kind not in "iuf" or raw.dtype == bool or not np.all(np.isfinite(raw)) or (
            raw.dtype.kind == "f" and np.any(raw != np.round(raw))):
        raise ValueError(f"lengths must be whole numbers of steps, got {lengths!r}.")
    lengths = raw.astype(np.int64)
    if lengths.ndim != 1 or lengths.size == 0 or lengths.min() < 1 or np.any(np.diff(lengths) <= 0):
        raise ValueError("lengths must be a non-empty increasing sequence of positive integers.")
    est0 = CCMCEstimator(alpha=1e-3) if estimator is None else estimator
    traj = generate(model, prompt, int(lengths[-1]), random_state=random_state)
    tail = traj[len(traj) // 2 :]
    K = model.n_tokens
    # Tokens that ever occur: outside them nothing is identified or available, so every
    # K x K quantity is read on this block only (memory independent of K, sparse or dense).
    support = np.unique(np.concatenate([prompt, traj]))
    shares = np.bincount(np.searchsorted(support, tail), minlength=support.size) / tail.size
    win = shares > share  # over the support
    winners = support[win]
    truth = support_block(model.logits, support)
    in_block = win[:, None] & win[None, :]
    off_diag = ~np.eye(support.size, dtype=bool)
    w_err, r_err, w_n, r_n = [], [], [], []
    for n in lengths:
        stats = _trajectory_stats(prompt, traj[:n], K)
        est = clone(est0)._fit_stats(stats, traj[:n])
        fitted = support_block(est.logits_, support)
        diff_est = fitted - np.diag(fitted)[None, :]
        diff_true = truth - np.diag(truth)[None, :]
        err = (diff_est - diff_true) ** 2
        ident = support_block(est.identified_, support).astype(bool) & off_diag
        # Prompts of column q that hold token k.
        avail = support_block(est.identifiability_.cooccurrence, support)
        block = ident & in_block
        rest = ident & ~in_block
        w_err.append(np.sqrt(err[block].mean()) if block.any() else np.nan)
        r_err.append(np.sqrt(err[rest].mean()) if rest.any() else np.nan)
        w_n.append(int(avail[in_block].min()) if winners.size else 0)
        r_n.append(int(avail[rest].max()) if rest.any() else 0)
    return TrajectoryLearning(lengths, winners, np.array(w_err), np.array(r_err),
                              np.array(w_n), np.array(r_n))
