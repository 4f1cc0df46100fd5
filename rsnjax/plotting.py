"""The figures of the paper's experiments, drawn with matplotlib's object-oriented API.

Every function returns a `matplotlib.figure.Figure` built without `pyplot`, so nothing here depends
on (or changes) the interactive backend; `save_figure` writes it as PNG and PDF through the Agg
canvas. Inputs are plain NumPy-compatible arrays and dicts keyed by model name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

__all__ = [
    "MODEL_COLORS",
    "save_figure",
    "plot_score_levels",
    "plot_histograms_1d",
    "plot_hist2d",
    "plot_kurtosis",
    "plot_w1_vs_time",
    "plot_loss_curves",
    "plot_image_grid",
    "plot_image_grids",
    "plot_metric_vs_neurons",
]

#: A fixed colour per model family, so every figure uses the same code.
MODEL_COLORS = {"SO-SC": "tab:orange", "SO-FR": "tab:green", "RSN": "tab:blue", "RSN (ReLU)": "tab:purple",
                "target": "0.4"}


def _color(name: str, index: int) -> str:
    """The family's colour; a label such as ``"RSN\\nt = 2"`` uses its first line."""
    return MODEL_COLORS.get(name, MODEL_COLORS.get(name.split("\n")[0], f"C{index % 10}"))


def save_figure(
    fig: Figure, path: str | os.PathLike, *, formats: Sequence[str] = ("png", "pdf"), dpi: int = 110
) -> list[Path]:
    """Write ``fig`` to ``path`` with each suffix in `formats` (any suffix on `path` is replaced).

    **Arguments:**

    - `fig`: the figure.
    - `path`: the file path without (or with a replaceable) suffix.
    - `formats`: the file types, default PNG and PDF.
    - `dpi`: resolution of raster formats.

    **Returns:** the paths written.
    """
    path = Path(path)
    written = []
    for fmt in formats:
        target = path.with_suffix("." + fmt)
        target.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(target, format=fmt, dpi=dpi, bbox_inches="tight")
        written.append(target)
    return written


def plot_score_levels(
    grid,
    curves: Mapping[str, np.ndarray],
    sigmas,
    true_score,
    *,
    blurred_score=None,
    ylim: tuple[float, float] = (-8.0, 8.0),
) -> Figure:
    """The learned 1-D score after each noise level against the true score, one panel per model.

    **Arguments:**

    - `grid`: ``(G,)`` points x.
    - `curves`: model name → ``(num_levels, G)`` learned score after each level.
    - `sigmas`: ``(num_levels,)`` the schedule (for the colour bar).
    - `true_score`: ``(G,)`` ∇log p on the grid.
    - `blurred_score`: ``(G,)`` score of p blurred at σ_min (what DSM can learn), optional.
    - `ylim`: the score axis range.

    **Returns:** the figure.
    """
    import matplotlib as mpl

    grid = np.asarray(grid)
    sigmas = np.asarray(sigmas)
    names = list(curves)
    fig = Figure(figsize=(3.6 * len(names) + 0.8, 3.4), layout="constrained")
    axes = fig.subplots(1, len(names), sharey=True, squeeze=False)[0]
    cmap = mpl.colormaps["viridis"]
    norm = mpl.colors.LogNorm(vmin=sigmas.min(), vmax=sigmas.max())
    for ax, name in zip(axes, names):
        c = np.asarray(curves[name])
        for k in range(c.shape[0]):
            ax.plot(grid, c[k], color=cmap(norm(sigmas[k])), lw=1.0)
        ax.plot(grid, np.asarray(true_score), color="black", lw=1.8, ls="--", label="true score")
        if blurred_score is not None:
            ax.plot(grid, np.asarray(blurred_score), color="red", lw=1.0, ls=":", label=f"blurred, σ={sigmas.min():.3g}")
        ax.axhline(0.0, color="0.7", lw=0.6)
        ax.set_ylim(*ylim)
        ax.set_title(name)
        ax.set_xlabel("x")
    axes[0].set_ylabel("score  d log p / dx")
    axes[0].legend(loc="upper right", fontsize=7)
    sm = mpl.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=list(axes), label="noise level σ of the level just trained", shrink=0.9)
    return fig


def plot_histograms_1d(
    samples: Mapping[str, np.ndarray], grid, pdf, *, bins: int = 80, xlim: tuple[float, float] | None = None
) -> Figure:
    """A histogram of each model's 1-D samples over the target density, one panel per model.

    **Arguments:**

    - `samples`: model name → ``(num,)`` or ``(num, 1)`` samples.
    - `grid`: ``(G,)`` points; `pdf`: ``(G,)`` the target density there.
    - `bins`: histogram bins over the grid's range.
    - `xlim`: the x range (default the grid's).

    **Returns:** the figure.
    """
    grid = np.asarray(grid)
    names = list(samples)
    fig = Figure(figsize=(3.2 * len(names), 3.0), layout="constrained")
    axes = fig.subplots(1, len(names), sharey=True, squeeze=False)[0]
    lo, hi = xlim if xlim is not None else (grid.min(), grid.max())
    edges = np.linspace(lo, hi, bins + 1)
    for i, (ax, name) in enumerate(zip(axes, names)):
        x = np.asarray(samples[name]).reshape(-1)
        ax.hist(x, bins=edges, density=True, color=_color(name, i), alpha=0.6, label=f"{name} samples")
        ax.plot(grid, np.asarray(pdf), color="black", lw=1.5, label="target pdf")
        outside = np.mean((x < lo) | (x > hi))
        ax.set_title(name + (f"  ({outside:.0%} outside)" if outside > 0.005 else ""))
        ax.set_xlim(lo, hi)
        ax.set_xlabel("x")
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("density")
    return fig


def plot_hist2d(
    samples: Mapping[str, np.ndarray], *, extent: float = 4.0, bins: int = 80, titles: Mapping[str, str] | None = None
) -> Figure:
    """2-D histograms (log-scaled density), one panel per sample set (e.g. the target first).

    **Arguments:**

    - `samples`: name → ``(num, 2)`` samples.
    - `extent`: the square window [−extent, extent]².
    - `bins`: bins per axis.
    - `titles`: optional panel titles by name.

    **Returns:** the figure.
    """
    import matplotlib as mpl

    names = list(samples)
    fig = Figure(figsize=(2.9 * len(names) + 0.6, 3.0), layout="constrained")
    axes = fig.subplots(1, len(names), sharex=True, sharey=True, squeeze=False)[0]
    edges = np.linspace(-extent, extent, bins + 1)
    area = (edges[1] - edges[0]) ** 2
    hists = []
    for name in names:
        x = np.asarray(samples[name])
        h, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=[edges, edges])
        hists.append(h / (len(x) * area))
    vmax = max(h.max() for h in hists)
    norm = mpl.colors.LogNorm(vmin=vmax * 1e-3, vmax=vmax)
    image = None
    for ax, name, h in zip(axes, names, hists):
        image = ax.pcolormesh(edges, edges, np.where(h > 0, h, np.nan).T, norm=norm, cmap="magma", rasterized=True)
        ax.set_title((titles or {}).get(name, name), fontsize=9)
        ax.set_aspect("equal")
        ax.set_xlabel("x₁")
        ax.set_facecolor("black")
    axes[0].set_ylabel("x₂")
    fig.colorbar(image, ax=list(axes), label="density (log scale)", shrink=0.9)
    return fig


def plot_kurtosis(kurtosis: Mapping[str, Sequence[float]], *, reference: float | None = 3.0,
                  errors: Mapping[str, Sequence[float]] | None = None) -> Figure:
    """Excess kurtosis of each marginal for each sample set, as grouped bars.

    **Arguments:**

    - `kurtosis`: name → per-marginal excess kurtosis.
    - `reference`: the true value (a dashed line), e.g. 3 for Laplace marginals.
    - `errors`: name → per-marginal standard errors (error bars), optional.

    **Returns:** the figure.
    """
    names = list(kurtosis)
    dims = len(np.atleast_1d(kurtosis[names[0]]))
    fig = Figure(figsize=(1.2 + 1.1 * len(names), 3.0), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / dims
    hatches = ["", "//", "..", "xx"]
    for j in range(dims):
        vals = [float(np.atleast_1d(kurtosis[n])[j]) for n in names]
        errs = [float(np.atleast_1d(errors[n])[j]) for n in names] if errors else None
        ax.bar(np.arange(len(names)) + (j - (dims - 1) / 2) * width, vals, width, yerr=errs,
               color=[_color(n, i) for i, n in enumerate(names)], hatch=hatches[j % 4],
               edgecolor="black", lw=0.5, label=f"marginal x{j + 1}", capsize=2)
    if reference is not None:
        ax.axhline(reference, color="black", ls="--", lw=1, label=f"true ({reference:g})")
    ax.axhline(0.0, color="0.5", lw=0.6)
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylabel("excess kurtosis")
    ax.legend(fontsize=7)
    return fig


def plot_w1_vs_time(times, curves: Mapping[str, np.ndarray], *, floor: float | None = None,
                    ylabel: str = "W₁ of marginal to target") -> Figure:
    """A distance against simulated time, one line per (run, marginal), log y axis.

    **Arguments:**

    - `times`: ``(T,)`` simulated time of each saved step.
    - `curves`: label → ``(T,)`` or ``(T, d)`` values (each column a marginal).
    - `floor`: the noise floor (a grey dashed line), optional.
    - `ylabel`: the y-axis label.

    **Returns:** the figure.
    """
    times = np.asarray(times)
    fig = Figure(figsize=(5.2, 3.4), layout="constrained")
    ax = fig.subplots()
    styles = ["-", "--", ":", "-."]
    for i, (label, c) in enumerate(curves.items()):
        c = np.asarray(c)
        c = c[:, None] if c.ndim == 1 else c
        for j in range(c.shape[1]):
            suffix = f", x{j + 1}" if c.shape[1] > 1 else ""
            ax.plot(times, c[:, j], color=MODEL_COLORS.get(label, f"C{i}"), ls=styles[j % 4], lw=1.3,
                    label=label + suffix)
    if floor is not None:
        ax.axhline(floor, color="0.5", ls="--", lw=1, label="noise floor")
    ax.set_yscale("log")
    ax.set_xlabel("simulated time t (units of τ)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    return fig


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(y) < window:
        return y
    kernel = np.ones(window) / window
    return np.convolve(y, kernel, mode="valid")


def plot_loss_curves(histories: Mapping[str, tuple[np.ndarray, np.ndarray]], *, steps_per_level: int | None = None,
                     sigmas=None, smooth: int | None = None) -> Figure:
    """The DSM loss over training for each model (moving average, log y), levels marked.

    **Arguments:**

    - `histories`: name → ``(loss (steps,), level (steps,))``.
    - `steps_per_level`: unused (kept for old callers): the level boundaries and the default
      smoothing are read off the histories' level arrays, which may have levels of any length.
    - `sigmas`: the schedule (level boundaries are labelled with σ), optional.
    - `smooth`: moving-average window (default about 1/20 of the shortest level).

    **Returns:** the figure with two panels: raw loss, and σ²-weighted loss (comparable across levels).
    """
    fig = Figure(figsize=(9.0, 3.3), layout="constrained")
    axes = fig.subplots(1, 2)
    longest = max(histories.values(), key=lambda h: len(np.asarray(h[0])))
    longest_level = np.asarray(longest[1])
    boundaries = np.flatnonzero(np.diff(longest_level)) + 1
    lengths = np.diff(np.concatenate([[0], boundaries, [len(longest_level)]]))
    window = smooth if smooth is not None else max(1, int(lengths.min()) // 20)
    for i, (name, (loss, level)) in enumerate(histories.items()):
        loss = np.asarray(loss, dtype=float)
        level = np.asarray(level)
        steps = np.arange(1, len(loss) + 1)
        for ax, weighted in zip(axes, (False, True)):
            y = loss * np.asarray(sigmas)[level] ** 2 if (weighted and sigmas is not None) else loss
            ys = _smooth(y, window)
            ax.plot(steps[window - 1:] if len(ys) < len(y) else steps, ys, color=_color(name, i), lw=1.1, label=name)
    for ax in axes:
        for b in boundaries:
            ax.axvline(b, color="0.85", lw=0.6, zorder=0)
        ax.set_yscale("log")
        ax.set_xlabel("optimiser step (grey lines: new noise level)")
        ax.grid(alpha=0.3, which="major", axis="y")
    axes[0].set_ylabel("DSM loss")
    axes[1].set_ylabel("σ² × DSM loss")
    axes[0].legend(fontsize=8)
    if sigmas is None:
        axes[1].set_visible(False)
    return fig


def _tile(images: np.ndarray, image_shape: tuple[int, int], rows: int, cols: int) -> np.ndarray:
    images = np.asarray(images)
    h, w = image_shape
    n = rows * cols
    if images.shape[0] < n:
        raise ValueError(f"`images` has {images.shape[0]} rows, the grid needs {n}")
    tiles = images[:n].reshape(rows, cols, h, w)
    pad = 1
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad), np.nan)
    for i in range(rows):
        for j in range(cols):
            tile = tiles[i, j]
            lo, hi = np.percentile(tile, 1), np.percentile(tile, 99.5)
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            canvas[top:top + h, left:left + w] = np.clip((tile - lo) / (hi - lo + 1e-12), 0, 1)
    return canvas


def plot_image_grid(images, image_shape: tuple[int, int], *, rows: int = 10, cols: int = 10,
                    title: str | None = None) -> Figure:
    """A rows × cols grid of greyscale images (each scaled to its own 1–99.5 % intensity range).

    **Arguments:**

    - `images`: ``(num, height·width)`` pixel rows (num ≥ rows·cols; extra ones are not shown).
    - `image_shape`: ``(height, width)``.
    - `rows`, `cols`: the grid.
    - `title`: an optional title.

    **Returns:** the figure.
    """
    canvas = _tile(images, image_shape, rows, cols)
    fig = Figure(figsize=(4.2, 4.4 if title else 4.2), layout="constrained")
    ax = fig.subplots()
    ax.imshow(canvas, cmap="gray", interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def plot_image_grids(images: Mapping[str, np.ndarray], image_shape: tuple[int, int], *, rows: int = 10,
                     cols: int = 10) -> Figure:
    """One rows × cols image grid per entry (e.g. data and each model), side by side.

    **Arguments:**

    - `images`: name → ``(num, height·width)`` pixel rows.
    - `image_shape`: ``(height, width)``.
    - `rows`, `cols`: each grid.

    **Returns:** the figure.
    """
    names = list(images)
    fig = Figure(figsize=(3.0 * len(names), 3.25), layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names):
        ax.imshow(_tile(images[name], image_shape, rows, cols), cmap="gray", interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(name, fontsize=9)
    return fig


def plot_metric_vs_neurons(
    rows: Sequence[Mapping], metrics: Sequence[tuple], *, targets: Sequence[str],
    floors: Mapping[tuple[str, str], tuple[float, float]] | None = None,
) -> Figure:
    """Metrics against reservoir size N for each target (RSN line with ±sd band; SO models as
    horizontal lines since they have no N).

    **Arguments:**

    - `rows`: dicts with keys ``target``, ``model``, ``hidden`` (None for SO models) and, for each
      metric, ``<metric>_mean`` and ``<metric>_sd``.
    - `metrics`: ``(key, axis label)`` or ``(key, axis label, log_scale)`` tuples, one row of panels
      each (log scale by default; use a linear axis for metrics that can be ≤ 0, such as MMD²).
    - `targets`: target names, one column of panels each.
    - `floors`: ``(target, metric)`` → ``(mean, sd)`` of the noise floor (grey dashed line and
      band), optional.

    **Returns:** the figure.
    """
    fig = Figure(figsize=(3.4 * len(targets), 2.7 * len(metrics)), layout="constrained")
    axes = fig.subplots(len(metrics), len(targets), squeeze=False)
    for r, spec in enumerate(metrics):
        metric, label = spec[0], spec[1]
        log_scale = spec[2] if len(spec) > 2 else True
        for c, target in enumerate(targets):
            ax = axes[r, c]
            sub = [row for row in rows if row["target"] == target]
            rsn = sorted((row for row in sub if row["model"] == "RSN"), key=lambda row: row["hidden"])
            if rsn:
                n = np.array([row["hidden"] for row in rsn], dtype=float)
                m = np.array([row[f"{metric}_mean"] for row in rsn], dtype=float)
                s = np.nan_to_num(np.array([row[f"{metric}_sd"] for row in rsn], dtype=float))
                ax.plot(n, m, "o-", color=MODEL_COLORS["RSN"], label="RSN (mean ± sd over seeds)")
                low = np.maximum(m - s, m * 1e-2) if log_scale else m - s
                ax.fill_between(n, low, m + s, color=MODEL_COLORS["RSN"], alpha=0.2)
            for row in sub:
                if row["model"] != "RSN":
                    ax.axhline(row[f"{metric}_mean"], color=_color(row["model"], 0), lw=1.3, label=row["model"])
            if floors and (target, metric) in floors:
                mean_, sd_ = floors[(target, metric)]
                ax.axhline(mean_, color="0.5", ls="--", lw=1, label="noise floor (± sd)")
                ax.axhspan(mean_ - sd_, mean_ + sd_, color="0.5", alpha=0.15, lw=0)
            ax.set_xscale("log")
            if log_scale:
                ax.set_yscale("log")
            ax.grid(alpha=0.3, which="both")
            if r == 0:
                ax.set_title(target)
            if r == len(metrics) - 1:
                ax.set_xlabel("reservoir size N")
            if c == 0:
                ax.set_ylabel(label)
    axes[0, 0].legend(fontsize=7)
    return fig
