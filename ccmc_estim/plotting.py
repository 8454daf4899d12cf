"""Plots of the result objects, in the style of scikit-learn's ``Display`` objects.

Every display holds the data of one picture and draws it with ``.plot(ax=None, **kwargs)``,
which returns the display with the figure and the artists as attributes (``figure_``, ``ax_``,
``line_``, ...).  A display is made from a result with ``from_result`` (from a fitted
estimator or a model with ``from_estimator`` / ``from_model``), which also draws it; the result
objects offer the same through their own ``plot`` method::

    profile.plot()                    # CollapseProfileDisplay
    winner_analysis(model, p).plot()  # WinnerDisplay
    est.identifiability_.plot()       # IdentifiabilityDisplay

matplotlib is optional (``pip install ccmc-estim[plot]``): it is imported when a display
draws, never when ``ccmc_estim`` is imported, and its absence raises an ``ImportError`` that
says what to install.
"""

from numbers import Integral

import numpy as np
from scipy import sparse as sp

__all__ = [
    "CollapseProfileDisplay",
    "IdentifiabilityDisplay",
    "ModelComparisonDisplay",
    "PositionBiasDisplay",
    "SampleComplexityDisplay",
    "WinnerDisplay",
]


# --------------------------------------------------------------------------- helpers
def _pyplot():
    """``matplotlib.pyplot``, or an ImportError that says how to install it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            "plotting needs matplotlib, which is not installed: "
            "pip install ccmc-estim[plot] (or pip install matplotlib)."
        ) from exc
    return plt


def _check_ax(ax, figsize=(6.4, 4.4)):
    """The Axes to draw on (a new figure when ``ax`` is None) and its figure."""
    plt = _pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
        return ax, fig
    from matplotlib.axes import Axes

    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}.")
    return ax, ax.figure


def _check_panels(ax, n, figsize):
    """``n`` Axes side by side: new ones (``ax`` None), the given ones (a sequence of ``n``
    Axes), or the area of one given Axes split into ``n`` (as scikit-learn's
    ``PartialDependenceDisplay`` does)."""
    plt = _pyplot()
    from matplotlib.axes import Axes

    if ax is None:
        fig, axes = plt.subplots(1, n, figsize=figsize, squeeze=False, layout="constrained")
        return list(axes[0]), fig
    if isinstance(ax, Axes):
        if n == 1:
            return [ax], ax.figure
        fig = ax.figure
        spec = ax.get_subplotspec()
        if spec is not None:
            grid = spec.subgridspec(1, n, wspace=0.45)
            ax.remove()
            return [fig.add_subplot(grid[0, i]) for i in range(n)], fig
        x0, y0, w, h = ax.get_position().bounds
        ax.remove()
        gap = 0.12 * w
        width = (w - gap * (n - 1)) / n
        return [fig.add_axes((x0 + i * (width + gap), y0, width, h)) for i in range(n)], fig
    axes = list(np.ravel(np.asarray(ax, dtype=object)))
    if len(axes) != n or not all(isinstance(a, Axes) for a in axes):
        raise TypeError(f"ax must be None, one matplotlib Axes or a sequence of {n} Axes.")
    return axes, axes[0].figure


def _label(token, names):
    return str(token) if names is None else str(names[int(token)])


# --------------------------------------------------------------------------- collapse
class CollapseProfileDisplay:
    """Collapse curves of a generated trajectory against the number of generated tokens.

    The leading token's share of the context and the rate of repeated n-grams (both between 0
    and 1, left axis) and the entropy of the context (nats, right axis), on a logarithmic axis
    of steps.  Made by :meth:`from_result` or :meth:`CollapseProfile.plot
    <ccmc_estim.CollapseProfile.plot>`.

    Parameters
    ----------
    steps : array-like of int
        Generated tokens at each grid point.
    leading_share, repetition_rate, entropy : array-like
        The metrics of :class:`~ccmc_estim.CollapseProfile` at ``steps``.
    leading_token : array-like of int or None
        The leading token at each point (its final value is named in the legend).
    window, ngram : int or None
        Window and n of the repetition rate (named in the legend).

    Attributes
    ----------
    lines_ : dict
        Metric name (``"leading_share"``, ``"repetition_rate"``, ``"entropy"``) -> Line2D.
    ax_ : matplotlib Axes
        The axes of the shares.
    entropy_ax_ : matplotlib Axes or None
        The twin axes of the entropy (None when it is not drawn).
    figure_ : matplotlib Figure

    Examples
    --------
    >>> from ccmc_estim import CCMC, collapse_profile, generate
    >>> import numpy as np
    >>> model = CCMC(np.array([[2.0, 0.0], [0.0, 0.0]]))
    >>> traj = generate(model, [0, 1, 1], 2000, random_state=0)
    >>> disp = collapse_profile(traj, [0, 1, 1]).plot()
    >>> sorted(disp.lines_)
    ['entropy', 'leading_share', 'repetition_rate']
    >>> disp.ax_.get_xscale()
    'log'
    >>> import matplotlib.pyplot as plt; plt.close(disp.figure_)
    """

    def __init__(self, steps, leading_share, repetition_rate, entropy, *, leading_token=None,
                 window=None, ngram=None):
        self.steps = np.asarray(steps)
        self.leading_share = np.asarray(leading_share)
        self.repetition_rate = np.asarray(repetition_rate)
        self.entropy = np.asarray(entropy)
        self.leading_token = None if leading_token is None else np.asarray(leading_token)
        self.window = window
        self.ngram = ngram

    @classmethod
    def from_result(cls, profile, *, ax=None, entropy=True, **kwargs):
        """Draw a :class:`~ccmc_estim.CollapseProfile`.

        Parameters
        ----------
        profile : CollapseProfile
        ax, entropy, **kwargs
            As in :meth:`plot`.

        Returns
        -------
        CollapseProfileDisplay
        """
        disp = cls(profile.steps, profile.leading_share, profile.repetition_rate,
                   profile.entropy, leading_token=profile.leading_token,
                   window=profile.window, ngram=profile.ngram)
        return disp.plot(ax=ax, entropy=entropy, **kwargs)

    def plot(self, ax=None, *, entropy=True, **kwargs):
        """Draw the curves.

        Parameters
        ----------
        ax : matplotlib Axes or None
            Where to draw; a new figure when None.
        entropy : bool
            Also draw the entropy, on a twin axis.
        **kwargs
            Passed to every ``Axes.plot`` call (e.g. ``lw``, ``alpha``).

        Returns
        -------
        CollapseProfileDisplay
            ``self``, with the artists as attributes.
        """
        ax, fig = _check_ax(ax)
        lead = "leading share"
        if self.leading_token is not None and self.leading_token.size:
            lead += f" (token {int(self.leading_token[-1])} at the end)"
        rep = "repetition rate"
        if self.ngram is not None and self.window is not None:
            rep = f"{self.ngram}-gram repetition (last {self.window} tokens)"
        self.lines_ = {
            "leading_share": ax.plot(self.steps, self.leading_share, color="C0", label=lead,
                                     **kwargs)[0],
            "repetition_rate": ax.plot(self.steps, self.repetition_rate, color="C1", label=rep,
                                       **kwargs)[0],
        }
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("generated tokens")
        ax.set_ylabel("share / rate")
        handles = list(self.lines_.values())
        self.entropy_ax_ = None
        if entropy:
            twin = ax.twinx()
            line = twin.plot(self.steps, self.entropy, color="C2", ls="--",
                             label="entropy of the context (nats, right)", **kwargs)[0]
            twin.set_ylim(0, max(float(np.max(self.entropy, initial=0.0)) * 1.05, 1e-3))
            twin.set_ylabel("entropy (nats)")
            self.lines_["entropy"] = line
            self.entropy_ax_ = twin
            handles.append(line)
        ax.legend(handles=handles, loc="best", fontsize="small")
        self.ax_ = ax
        self.figure_ = fig
        return self


# --------------------------------------------------------------------------- winners
class WinnerDisplay:
    """Bars of a prompt's token shares and of the limit generation settles on.

    For every token of the prompt's support: its share of the prompt and its share in the
    predicted limit of :func:`~ccmc_estim.winner_analysis`; black markers give the shares of
    every stable limit found, and self-dominant tokens (stable single winners) carry a ``*``.
    Made by :meth:`from_result` or :meth:`WinnerAnalysis.plot
    <ccmc_estim.WinnerAnalysis.plot>`.

    Parameters
    ----------
    support : array-like of int
        The prompt's distinct tokens.
    initial_shares, predicted_limit : array-like
        Shares over ``support``.
    stable_limits : sequence of array-like
        Shares over ``support`` of every stable limit.
    single_winners : array-like of int
        Self-dominant tokens.
    token_names : sequence of str or None
        Names of the token ids, for the axis (e.g. ``Vocabulary().fit(...).tokens_``); ids
        when None.

    Attributes
    ----------
    initial_bars_, limit_bars_ : matplotlib BarContainer
    stable_markers_ : list of Line2D
        One per stable limit.
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure

    Examples
    --------
    >>> import numpy as np
    >>> from ccmc_estim import CCMC, winner_analysis
    >>> W = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    >>> disp = winner_analysis(CCMC(W), [0, 1, 2, 0]).plot()
    >>> len(disp.limit_bars_), [t.get_text() for t in disp.ax_.get_xticklabels()]
    (3, ['0*', '1', '2'])
    >>> import matplotlib.pyplot as plt; plt.close(disp.figure_)
    """

    def __init__(self, support, initial_shares, predicted_limit, *, stable_limits=(),
                 single_winners=(), token_names=None):
        self.support = np.asarray(support)
        self.initial_shares = np.asarray(initial_shares, float)
        self.predicted_limit = np.asarray(predicted_limit, float)
        self.stable_limits = [np.asarray(x, float) for x in stable_limits]
        self.single_winners = np.asarray(single_winners)
        self.token_names = token_names

    @classmethod
    def from_result(cls, analysis, *, ax=None, token_names=None, **kwargs):
        """Draw a :class:`~ccmc_estim.WinnerAnalysis`.

        Parameters
        ----------
        analysis : WinnerAnalysis
        ax, **kwargs
            As in :meth:`plot`.
        token_names : sequence of str or None
            Names of the token ids.

        Returns
        -------
        WinnerDisplay
        """
        disp = cls(analysis.support, analysis.initial_shares, analysis.predicted_limit,
                   stable_limits=analysis.stable_limits, single_winners=analysis.single_winners,
                   token_names=token_names)
        return disp.plot(ax=ax, **kwargs)

    def plot(self, ax=None, **kwargs):
        """Draw the bars.

        Parameters
        ----------
        ax : matplotlib Axes or None
            Where to draw; a new figure when None.
        **kwargs
            Passed to both ``Axes.bar`` calls (e.g. ``alpha``, ``edgecolor``).

        Returns
        -------
        WinnerDisplay
            ``self``, with the artists as attributes.
        """
        n = self.support.size
        ax, fig = _check_ax(ax, figsize=(max(5.0, 1.0 + 0.55 * n), 4.2))
        x = np.arange(n)
        width = 0.4
        self.initial_bars_ = ax.bar(x - width / 2, self.initial_shares, width, color="0.7",
                                    label="share of the prompt", **kwargs)
        self.limit_bars_ = ax.bar(x + width / 2, self.predicted_limit, width, color="C0",
                                  label="predicted limit (from the prompt)", **kwargs)
        self.stable_markers_ = []
        markers = "osD^v<>ph"
        for i, limit in enumerate(self.stable_limits):
            shown = limit > 1e-6
            line = ax.plot(x[shown] + width / 2, limit[shown], ls="none",
                           marker=markers[i % len(markers)], mfc="none", mec="k", ms=7,
                           label=f"stable limit {i + 1}")[0]
            self.stable_markers_.append(line)
        winners = set(self.single_winners.tolist())
        ax.set_xticks(x, [_label(t, self.token_names) + ("*" if int(t) in winners else "")
                          for t in self.support])
        ax.set_ylim(0, 1.1)
        ax.set_xlabel("prompt token" + (" (* self-dominant)" if winners else ""))
        ax.set_ylabel("share")
        ax.legend(loc="best", fontsize="small")
        self.ax_ = ax
        self.figure_ = fig
        return self


# --------------------------------------------------------------------------- identifiability
class IdentifiabilityDisplay:
    """Coverage of an identifiability report: per column, and over the logit matrix.

    Two panels.  *Coverage*: identified logits against prompts for every queried column (red
    where the finite MLE does not exist).  *Pattern*: the identified entries of the ``K x K``
    logit matrix (rows tokens ``k``, columns queries ``q``); up to ``max_pixels`` tokens an
    image of the co-occurrence counts, beyond that the share of identified entries per block
    of the matrix, computed from the identified entries alone (never a dense ``K x K`` array,
    so it suits sparse reports of any ``K``).  Made by :meth:`from_result` or
    :meth:`IdentifiabilityReport.plot <ccmc_estim.IdentifiabilityReport.plot>`.

    Parameters
    ----------
    n_prompts, n_identified : array-like of int, shape (K,)
        Prompts and identified logits per column.
    cooccurrence : ndarray or scipy sparse array, shape (K, K)
        ``cooccurrence[k, q]``: prompts with query ``q`` that hold ``k``.
    mle_exists : array-like of bool or None
        Per column.

    Attributes
    ----------
    axes_ : list of matplotlib Axes
        The panels drawn.
    ax_ : matplotlib Axes
        The first panel.
    coverage_ax_, pattern_ax_ : matplotlib Axes or None
    scatter_ : list of PathCollection
        The coverage points (one collection per MLE status).
    image_ : matplotlib AxesImage or None
    colorbar_ : matplotlib Colorbar or None
    figure_ : matplotlib Figure

    Examples
    --------
    >>> from ccmc_estim import identifiability_report
    >>> rep = identifiability_report([[1, 2, 0], [2, 0], [1, 0], [0, 1]], [1, 0, 0, 1])
    >>> disp = rep.plot()
    >>> len(disp.axes_), disp.image_.get_array().shape
    (2, (3, 3))
    >>> import matplotlib.pyplot as plt; plt.close(disp.figure_)
    """

    def __init__(self, n_prompts, n_identified, cooccurrence, *, mle_exists=None):
        self.n_prompts = np.asarray(n_prompts)
        self.n_identified = np.asarray(n_identified)
        self.cooccurrence = cooccurrence
        self.mle_exists = None if mle_exists is None else np.asarray(mle_exists, bool)

    @property
    def n_tokens(self):
        """Vocabulary size ``K``."""
        return int(self.n_prompts.size)

    @classmethod
    def from_result(cls, report, *, ax=None, kind="both", max_pixels=200, **kwargs):
        """Draw an :class:`~ccmc_estim.IdentifiabilityReport`.

        Parameters
        ----------
        report : IdentifiabilityReport
        ax, kind, max_pixels, **kwargs
            As in :meth:`plot`.

        Returns
        -------
        IdentifiabilityDisplay
        """
        disp = cls(report.n_prompts, report.n_identified, report.cooccurrence,
                   mle_exists=report.mle_exists)
        return disp.plot(ax=ax, kind=kind, max_pixels=max_pixels, **kwargs)

    def plot(self, ax=None, *, kind="both", max_pixels=200, **kwargs):
        """Draw the panels.

        Parameters
        ----------
        ax : matplotlib Axes, sequence of Axes or None
            None: a new figure.  One Axes: drawn in its area (split in two for both panels).
            A sequence: one Axes per panel.
        kind : {"both", "coverage", "pattern"}
            The panels to draw.
        max_pixels : int
            Largest ``K`` drawn entry by entry; larger matrices are drawn in blocks, at most
            ``max_pixels`` per side.
        **kwargs
            Passed to ``Axes.scatter`` of the coverage panel (e.g. ``s``, ``alpha``).

        Returns
        -------
        IdentifiabilityDisplay
            ``self``, with the artists as attributes.
        """
        if kind not in ("both", "coverage", "pattern"):
            raise ValueError(f"kind must be 'both', 'coverage' or 'pattern', got {kind!r}.")
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, Integral) or max_pixels < 1:
            raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}.")
        n = 2 if kind == "both" else 1
        axes, fig = _check_panels(ax, n, figsize=(11, 4.4) if n == 2 else (6, 4.4))
        self.coverage_ax_ = self.pattern_ax_ = None
        self.scatter_, self.image_, self.colorbar_ = [], None, None
        if kind in ("both", "coverage"):
            self.coverage_ax_ = axes[0]
            self._plot_coverage(axes[0], **kwargs)
        if kind in ("both", "pattern"):
            self.pattern_ax_ = axes[-1]
            self._plot_pattern(axes[-1], int(max_pixels))
        self.axes_ = axes
        self.ax_ = axes[0]
        self.figure_ = fig
        return self

    def _plot_coverage(self, ax, **kwargs):
        K = self.n_tokens
        queried = self.n_prompts > 0
        groups = [("columns", queried, "C0")]
        if self.mle_exists is not None:
            groups = [("finite MLE", queried & self.mle_exists, "C0"),
                      ("no finite MLE (needs alpha > 0)", queried & ~self.mle_exists, "C3")]
        kwargs.setdefault("s", 12 if K <= 1000 else 4)
        kwargs.setdefault("alpha", 0.7)
        for label, mask, color in groups:
            if mask.any():
                self.scatter_.append(ax.scatter(self.n_prompts[mask], self.n_identified[mask],
                                                color=color, label=label, **kwargs))
        if queried.any():
            for values, set_scale in ((self.n_prompts, ax.set_xscale),
                                      (self.n_identified, ax.set_yscale)):
                if values[queried].max() > 20 * max(values[queried].min(), 1):
                    set_scale("log")  # spans decades
            if self.n_identified.max() >= K / 2:
                ax.axhline(K, color="0.5", lw=0.8, ls=":", label=f"all K = {K}")
        ax.set_xlabel("prompts with this query")
        ax.set_ylabel("identified logits of the column")
        unqueried = int(K - queried.sum())
        ax.set_title(f"coverage per column (K = {K}"
                     + (f"; {unqueried} never queried)" if unqueried else ")"), fontsize="medium")
        if self.scatter_:
            ax.legend(loc="best", fontsize="small")

    def _plot_pattern(self, ax, max_pixels):
        from matplotlib.colors import LogNorm

        K = self.n_tokens
        C = self.cooccurrence
        if sp.issparse(C):
            coo = C.tocoo()
            rows, cols, vals = coo.row, coo.col, coo.data
            keep = vals != 0
            rows, cols, vals = rows[keep], cols[keep], vals[keep]
        else:
            C = np.asarray(C)
            rows, cols = np.nonzero(C)
            vals = C[rows, cols]
        if K <= max_pixels:
            image = np.zeros((K, K))
            image[rows, cols] = vals
            image = np.ma.masked_equal(image, 0)
            label = "prompts holding k with query q"
            norm = LogNorm(vmin=1, vmax=max(float(image.max()), 1.0)) if vals.size else None
            title = "identified logits (blank: not identified)"
        else:
            bins = max_pixels
            image, _, _ = np.histogram2d(rows, cols, bins=bins, range=[[0, K], [0, K]])
            edges = np.linspace(0, K, bins + 1)
            size = np.diff(np.floor(edges))
            image = image / np.outer(size, size)
            image = np.ma.masked_equal(image, 0)
            label = "share of identified logits in the block"
            norm = LogNorm(vmin=max(float(image.min()), 1e-6), vmax=1.0) if rows.size else None
            title = f"identified logits, blocks of about {K / bins:.0f} x {K / bins:.0f}"
        self.image_ = ax.imshow(image, cmap="viridis", norm=norm, extent=(0, K, K, 0),
                                interpolation="nearest", aspect="auto")
        self.colorbar_ = ax.figure.colorbar(self.image_, ax=ax, label=label)
        ax.set_xlabel("query column q")
        ax.set_ylabel("token k")
        ax.set_title(title, fontsize="medium")


# --------------------------------------------------------------------------- sample complexity
_ERRORS = {"mse": "mean squared error of the centred logits",
           "kl": "KL divergence of the predictions"}


class SampleComplexityDisplay:
    """Estimation error against the number of prompts, one line per vocabulary size.

    Log-log axes, the mean error over repetitions per ``(K, n)`` (points: the repetitions),
    the fitted slope of each ``K`` in the legend, and a dashed reference of slope -1 (the
    ``K^2 / n`` rate).  With ``rescale=True`` the errors are multiplied by ``n / K^2``: the
    rate then shows as flat lines.  Made by :meth:`from_result` from the table of
    :func:`~ccmc_estim.consistency.sample_complexity`.

    Parameters
    ----------
    n_tokens, n_prompts : array-like of int
        ``K`` and ``n`` of every fit.
    error : array-like
        The error of every fit.
    error_name : str
        Axis label of the error.

    Attributes
    ----------
    lines_ : dict
        ``K`` -> Line2D of the means.
    points_ : dict
        ``K`` -> PathCollection of the repetitions.
    slopes_ : dict
        ``K`` -> fitted log-log slope of the means (expected -1).
    reference_line_ : Line2D or None
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure

    Examples
    --------
    >>> from ccmc_estim.consistency import sample_complexity
    >>> from ccmc_estim.plotting import SampleComplexityDisplay
    >>> table = sample_complexity([3], [300, 3000], n_repeats=2, n_test=100)
    >>> disp = SampleComplexityDisplay.from_result(table, error="mse")
    >>> sorted(disp.lines_), disp.ax_.get_xscale(), disp.ax_.get_yscale()
    ([3], 'log', 'log')
    >>> import matplotlib.pyplot as plt; plt.close(disp.figure_)
    """

    def __init__(self, n_tokens, n_prompts, error, *, error_name="error"):
        self.n_tokens = np.asarray(n_tokens)
        self.n_prompts = np.asarray(n_prompts, float)
        self.error = np.asarray(error, float)
        if not self.n_tokens.shape == self.n_prompts.shape == self.error.shape:
            raise ValueError("n_tokens, n_prompts and error must have the same length.")
        self.error_name = error_name

    @classmethod
    def from_result(cls, table, *, error="mse", ax=None, rescale=False, reference=True,
                    **kwargs):
        """Draw the table of :func:`~ccmc_estim.consistency.sample_complexity`.

        Parameters
        ----------
        table : dict of array-like (or a DataFrame)
            With columns ``n_tokens``, ``n_prompts`` and ``error``.
        error : str
            The column of the error, ``"mse"`` or ``"kl"`` (or any other column).
        ax, rescale, reference, **kwargs
            As in :meth:`plot`.

        Returns
        -------
        SampleComplexityDisplay
        """
        try:
            values = table[error]
        except KeyError:
            raise ValueError(f"the table has no column {error!r}.") from None
        disp = cls(table["n_tokens"], table["n_prompts"], values,
                   error_name=_ERRORS.get(error, error))
        return disp.plot(ax=ax, rescale=rescale, reference=reference, **kwargs)

    def plot(self, ax=None, *, rescale=False, reference=True, **kwargs):
        """Draw the lines.

        Parameters
        ----------
        ax : matplotlib Axes or None
            Where to draw; a new figure when None.
        rescale : bool
            Plot ``error * n / K^2`` (flat at the ``K^2 / n`` rate).
        reference : bool
            Draw the reference of slope -1 (flat when ``rescale``).
        **kwargs
            Passed to the ``Axes.plot`` call of every ``K`` (e.g. ``marker``, ``lw``).

        Returns
        -------
        SampleComplexityDisplay
            ``self``, with the artists as attributes.
        """
        from .consistency import loglog_slope

        ax, fig = _check_ax(ax)
        kwargs.setdefault("marker", "o")
        self.lines_, self.points_, self.slopes_ = {}, {}, {}
        all_n, all_y = [], []
        for i, K in enumerate(np.unique(self.n_tokens).tolist()):
            sel = self.n_tokens == K
            n, err = self.n_prompts[sel], self.error[sel]
            scale = n / K**2 if rescale else 1.0
            sizes = np.unique(n)
            means = np.array([err[n == s].mean() for s in sizes])
            if rescale:
                means = means * sizes / K**2
            color = f"C{i % 10}"
            self.points_[K] = ax.scatter(n, err * scale, s=10, color=color, alpha=0.4, lw=0)
            label = f"K = {K}"
            try:
                self.slopes_[K] = loglog_slope(n, err)
                label += f" (slope {self.slopes_[K]:.2f})"
            except ValueError:  # one size, or errors that are not all positive
                pass
            self.lines_[K] = ax.plot(sizes, means, color=color, label=label, **kwargs)[0]
            all_n.append(sizes)
            all_y.append(means)
        ax.set_xscale("log")
        ax.set_yscale("log")
        self.reference_line_ = None
        if reference and all_n:
            n = np.concatenate(all_n)
            y = np.concatenate(all_y)
            ok = y > 0
            if ok.any():
                grid = np.geomspace(n.min(), n.max(), 2)
                if rescale:
                    level = np.exp(np.mean(np.log(y[ok])))
                    ref, label = np.full(2, level), "K^2 / n rate (flat)"
                else:
                    c = np.exp(np.mean(np.log(y[ok] * n[ok])))
                    ref, label = c / grid, "slope -1 (K^2 / n rate)"
                self.reference_line_ = ax.plot(grid, ref, color="0.4", ls="--", lw=1,
                                               label=label)[0]
        ax.set_xlabel("number of prompts n")
        ax.set_ylabel(self.error_name + (" x n / K^2" if rescale else ""))
        ax.legend(loc="best", fontsize="small")
        self.ax_ = ax
        self.figure_ = fig
        return self


# --------------------------------------------------------------------------- position bias
class PositionBiasDisplay:
    """A relative position bias ``b[d]`` against the distance ``d`` from the last token.

    The last entry applies to every larger distance (its tick reads ``>= D`` when the bias is
    short enough to label each distance).  Made by :meth:`from_estimator` (a fitted
    :class:`~ccmc_estim.PositionalCCMCEstimator`) or :meth:`from_model` (a
    :class:`~ccmc_estim.PositionalCCMC`); pass the same ``ax`` to overlay several biases.

    Parameters
    ----------
    position_bias : array-like of shape (D + 1,)
    name : str or None
        Legend label.

    Attributes
    ----------
    line_ : matplotlib Line2D
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure

    Examples
    --------
    >>> import numpy as np
    >>> from ccmc_estim import PositionalCCMC
    >>> from ccmc_estim.plotting import PositionBiasDisplay
    >>> model = PositionalCCMC(np.zeros((3, 3)), -0.5 * np.arange(5))
    >>> disp = PositionBiasDisplay.from_model(model, name="truth", ls="--")
    >>> disp.line_.get_ydata().tolist()
    [0.0, -0.5, -1.0, -1.5, -2.0]
    >>> import matplotlib.pyplot as plt; plt.close(disp.figure_)
    """

    def __init__(self, position_bias, *, name=None):
        b = np.asarray(position_bias, float)
        if b.ndim != 1 or b.size == 0:
            raise ValueError(f"position_bias must be a non-empty 1-D array, got shape {b.shape}.")
        self.position_bias = b
        self.name = name

    @classmethod
    def from_estimator(cls, estimator, *, ax=None, name=None, **kwargs):
        """Draw the ``position_bias_`` of a fitted :class:`~ccmc_estim.PositionalCCMCEstimator`.

        Parameters
        ----------
        estimator : fitted PositionalCCMCEstimator
        ax, name, **kwargs
            As in :meth:`plot`.

        Returns
        -------
        PositionBiasDisplay
        """
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(estimator, "position_bias_")
        return cls(estimator.position_bias_, name=name).plot(ax=ax, **kwargs)

    @classmethod
    def from_model(cls, model, *, ax=None, name=None, **kwargs):
        """Draw the ``position_bias`` of a :class:`~ccmc_estim.PositionalCCMC`.

        Parameters
        ----------
        model : PositionalCCMC
        ax, name, **kwargs
            As in :meth:`plot`.

        Returns
        -------
        PositionBiasDisplay
        """
        if not hasattr(model, "position_bias"):
            raise TypeError(f"model must be a PositionalCCMC, got {type(model).__name__}.")
        return cls(model.position_bias, name=name).plot(ax=ax, **kwargs)

    def plot(self, ax=None, *, name=None, **kwargs):
        """Draw the bias.

        Parameters
        ----------
        ax : matplotlib Axes or None
            Where to draw; a new figure when None (pass an existing one to overlay biases).
        name : str or None
            Legend label (the display's ``name`` when None).
        **kwargs
            Passed to ``Axes.plot`` (e.g. ``color``, ``ls``, ``marker``).

        Returns
        -------
        PositionBiasDisplay
            ``self``, with the artists as attributes.
        """
        ax, fig = _check_ax(ax)
        name = self.name if name is None else name
        kwargs.setdefault("marker", "o")
        d = np.arange(self.position_bias.size)
        self.line_ = ax.plot(d, self.position_bias, label=name, **kwargs)[0]
        D = d[-1]
        if 0 < D <= 20:
            ax.set_xticks(d, [str(i) for i in d[:-1]] + [f"≥{D}"])
        ax.set_xlabel("distance from the last token d")
        ax.set_ylabel("position bias b[d]")
        if name is not None:
            ax.legend(loc="best", fontsize="small")
        self.ax_ = ax
        self.figure_ = fig
        return self


# --------------------------------------------------------------------------- comparison
class ModelComparisonDisplay:
    """Horizontal bars of the held-out mean log-likelihood of each model.

    Higher is better.  ``mean_log_likelihood`` is a dict model -> value, or a dict of such
    dicts (e.g. one per block of test pairs), drawn as grouped bars with one colour per block.
    Infinite, NaN or missing values have no bar and are written out (a model absent from a
    block shows as "not scored", e.g. a pure CCMC on pairs whose output is outside the
    prompt).  Made by :meth:`from_result` or :meth:`ModelComparison.plot
    <ccmc_estim.ModelComparison.plot>`.

    Parameters
    ----------
    mean_log_likelihood : dict
        Model name -> value, or block name -> (model name -> value).
    n_test, n_covered : int or None
        Held-out pairs, and those whose output occurs in its prompt, named in the title.

    Attributes
    ----------
    bars_ : dict
        Block name (None for a flat dict) -> BarContainer.
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure

    Examples
    --------
    >>> from ccmc_estim.plotting import ModelComparisonDisplay
    >>> disp = ModelComparisonDisplay({"ccmc": -1.2, "base chain": -1.9, "unigram": -2.1}).plot()
    >>> [t.get_text() for t in disp.ax_.get_yticklabels()]
    ['ccmc', 'base chain', 'unigram']
    >>> import matplotlib.pyplot as plt; plt.close(disp.figure_)
    >>> blocks = {"all pairs": {"base chain": -2.0, "unigram": -2.4},
    ...           "covered pairs": {"ccmc": -1.1, "base chain": -1.8, "unigram": -2.3}}
    >>> disp = ModelComparisonDisplay(blocks).plot()
    >>> list(disp.bars_), "not scored" in [t.get_text() for t in disp.ax_.texts]
    (['all pairs', 'covered pairs'], True)
    >>> plt.close(disp.figure_)
    >>> import matplotlib.pyplot as plt; plt.close(disp.figure_)
    """

    def __init__(self, mean_log_likelihood, *, n_test=None, n_covered=None):
        if not isinstance(mean_log_likelihood, dict):
            raise TypeError("mean_log_likelihood must be a dict, got "
                            f"{type(mean_log_likelihood).__name__}.")
        self.mean_log_likelihood = mean_log_likelihood
        self.n_test = n_test
        self.n_covered = n_covered

    @classmethod
    def from_result(cls, comparison, *, ax=None, **kwargs):
        """Draw a :class:`~ccmc_estim.ModelComparison`.

        Parameters
        ----------
        comparison : ModelComparison
        ax, **kwargs
            As in :meth:`plot`.

        Returns
        -------
        ModelComparisonDisplay
        """
        disp = cls(comparison.mean_log_likelihood, n_test=getattr(comparison, "n_test", None),
                   n_covered=getattr(comparison, "n_covered", None))
        return disp.plot(ax=ax, **kwargs)

    def _blocks(self):
        """(block name, model -> value) pairs and the models in order of appearance."""
        data = self.mean_log_likelihood
        if data and all(isinstance(v, dict) for v in data.values()):
            blocks = list(data.items())
        else:
            blocks = [(None, data)]
        models = []
        for _, values in blocks:
            models += [m for m in values if m not in models]
        return blocks, models

    def plot(self, ax=None, **kwargs):
        """Draw the bars.

        Parameters
        ----------
        ax : matplotlib Axes or None
            Where to draw; a new figure when None.
        **kwargs
            Passed to every ``Axes.barh`` call (e.g. ``alpha``, ``edgecolor``).

        Returns
        -------
        ModelComparisonDisplay
            ``self``, with the artists as attributes.
        """
        blocks, models = self._blocks()
        height = 0.8 / len(blocks)
        ax, fig = _check_ax(ax, figsize=(6.4, 1.2 + 0.45 * len(models) * len(blocks)))
        y = np.arange(len(models))
        self.bars_ = {}
        for i, (block, values) in enumerate(blocks):
            v = np.array([float(values.get(m, np.nan)) for m in models])
            missing = [m not in values for m in models]
            finite = np.isfinite(v)
            pos = y - 0.4 + height * (i + 0.5)
            bars = ax.barh(pos, np.where(finite, v, 0.0), height,
                           color=f"C{i % 10}", label=block, **kwargs)
            ax.bar_label(bars, labels=[f"{x:.4g}" if f else "" for x, f in
                                       zip(v, finite, strict=True)], padding=3,
                         fontsize="small")
            for p, x, f, gone in zip(pos, v, finite, missing, strict=True):
                if not f:
                    text = "not scored" if gone else f"{x}"
                    ax.annotate(text, (0, p), xytext=(-3, 0),
                                textcoords="offset points", ha="right", va="center",
                                fontsize="small", color="0.3")
            self.bars_[block] = bars
        ax.set_yticks(y, [str(m) for m in models])
        ax.invert_yaxis()
        ax.axvline(0, color="k", lw=0.8)
        ax.margins(x=0.2)
        ax.set_xlabel("mean held-out log-likelihood per output (higher is better)")
        if self.n_test is not None:
            title = f"held-out comparison on {self.n_test} pairs"
            if self.n_covered is not None:
                title += f" ({self.n_covered} covered)"
            ax.set_title(title, fontsize="medium")
        if blocks[0][0] is not None:
            ax.legend(loc="best", fontsize="small")
        self.ax_ = ax
        self.figure_ = fig
        return self
