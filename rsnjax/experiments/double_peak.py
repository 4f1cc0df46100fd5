"""The 1-D double peak ½N(−1, 0.5²) + ½N(1, 0.5²): SO-SC, SO-FR and an RSN (docs/SCIENCE.md §4–§5).

What is recorded:

- the learned score on a grid after every noise level, for each model, against the true score
  and the σ_min-blurred score (figure ``score_per_level``);
- samples of every model from the paper's sampler (U[−2, 2] start, dt = 1e-4, 10 000 steps:
  simulated time t = 1) and from a longer run (t = 10 by default) that checks the chains have
  mixed; histograms against the pdf (``histograms``, ``histograms_long``);
- the marginal W₁ to the target against simulated time (``w1_vs_time``);
- the DSM loss over training (``loss``);
- the numbers: score error (against the σ_min-blurred and the true score), MMD², sliced W₂ and
  W₁ with their noise floors, the weight of each mode and the density dip between the modes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.stats import norm as _norm

from .. import fit, geometric_sigmas, metrics, plotting, sample, targets
from ..networks import SamplerOnly, ScoreNetwork
from ..reservoir import ReservoirSampler
from ._common import (FAMILIES, Stopwatch, finish_run, fit_levels, fit_options, fmt, make_optimizer,
                      markdown_table, pm)

NAME = "double-peak"

_PAPER = dict(
    hidden=1000,
    activation="relu",
    sigma_max=1.0,
    sigma_min=100.0 ** -0.9,
    num_levels=10,
    # 10 000 fresh draws per epoch, batch 128 → 78 steps per epoch; 1000 epochs over 10 levels.
    steps_per_level=7800,
    batch_size=128,
    learning_rate=1e-4,
    amsgrad=True,
    lr_schedule="constant",
    weight_decay=1e-3,
    num_chains=5000,
    num_steps=10_000,
    step_size=1e-4,
    long_num_steps=10_000,
    long_step_size=1e-3,
    save_every=100,
    noise_floor_repeats=5,
    score_error_samples=20_000,
    grid_points=401,
    figure_formats=("png", "pdf"),
    figure_dpi=110,
)

#: The named settings. ``paper`` is docs/SCIENCE.md §4–§5; ``quick`` keeps the model, schedule and
#: optimiser but trains a third of the steps and samples 2000 chains (t = 1 with dt = 1e-3, and
#: t = 10 with dt = 2e-3) (48 s on 2 cores, docs/RESULTS.md §1); ``tiny`` is for tests (seconds).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": _PAPER,
    "quick": {**_PAPER, "steps_per_level": 2500, "num_chains": 2000, "num_steps": 1000, "step_size": 1e-3,
              "long_num_steps": 5000, "long_step_size": 2e-3, "save_every": 50, "noise_floor_repeats": 3,
              "score_error_samples": 10_000},
    "tiny": {**_PAPER, "hidden": 64, "num_levels": 1, "steps_per_level": 50, "learning_rate": 1e-3,
             "num_chains": 256, "num_steps": 100, "step_size": 1e-2, "long_num_steps": 100,
             "long_step_size": 1e-2, "save_every": 10, "noise_floor_repeats": 2,
             "score_error_samples": 1000, "grid_points": 101,
             "figure_formats": ("png",), "figure_dpi": 50},
}


def make_model(family: str, config: dict, key):
    """A fresh SO-SC, SO-FR or RSN score model for the 1-D target."""
    if family == "SO-SC":
        return SamplerOnly(1, dynamics="synaptic_current", activation=config["activation"], key=key)
    if family == "SO-FR":
        return SamplerOnly(1, dynamics="firing_rate", activation=config["activation"], key=key)
    if family == "RSN":
        return ScoreNetwork(1, config["hidden"], activation=config["activation"], key=key)
    raise ValueError(f"`family` must be one of {FAMILIES}, got {family!r}")


def sigmas_of(config: dict) -> np.ndarray:
    return geometric_sigmas(config["sigma_max"], config["sigma_min"], config["num_levels"])


def train(family: str, config: dict, *, key, progress: bool | None = None, grid=None):
    """Train one family on fresh draws from the double peak, the optimiser re-created at every
    level. With a `grid`, training runs level by level (one `fit` call per level) so the learned
    score after each level is kept; without, it is one `fit` call over the whole schedule.

    **Returns:** ``(model, history, curves)`` with ``curves`` ``(num_levels, G)`` the learned
    score on `grid` after each level (empty when `grid` is None).
    """
    target = targets.double_peak()
    k_init, k_fit = jax.random.split(key)
    model = make_model(family, config, k_init)
    if grid is None:
        opt = make_optimizer(config["learning_rate"], amsgrad=config["amsgrad"], schedule=config["lr_schedule"],
                             steps_per_level=config["steps_per_level"])
        model, history = fit(model, target, sigmas=sigmas_of(config), key=k_fit,
                             steps_per_level=config["steps_per_level"], batch_size=config["batch_size"],
                             optimizer=opt, weight_decay=config["weight_decay"], reset_optimizer=True,
                             progress=progress, **fit_options(config))
        return model, history, np.zeros((0, 0))
    grid_pts = jnp.asarray(grid)[:, None]
    model, history, curves = fit_levels(
        model, target, sigmas=sigmas_of(config), key=k_fit, steps_per_level=config["steps_per_level"],
        batch_size=config["batch_size"], learning_rate=config["learning_rate"], amsgrad=config["amsgrad"],
        lr_schedule=config["lr_schedule"], weight_decay=config["weight_decay"], progress=progress,
        **fit_options(config), after_level=lambda level, m: np.asarray(m(grid_pts))[:, 0])
    return model, history, np.asarray(curves)


def circuit(family: str, model):
    """What is simulated: the reservoir for an RSN, the model itself for the sampler-only circuits."""
    return ReservoirSampler.from_score_network(model) if family == "RSN" else model


def draw(family: str, model, *, key, num_chains: int, num_steps: int, step_size: float,
         save_every: int | None = None):
    """Run the paper's sampler (U[−2, 2] start of every unit, Euler–Maruyama) on one model."""
    return sample(circuit(family, model), key=key, num_chains=num_chains, num_steps=num_steps,
                  step_size=step_size, init="uniform", save_every=save_every, on_nonfinite="flag")


def interval_mass(target: targets.GaussianMixture, low: float, high: float) -> float:
    """P(low < x < high) under a 1-D Gaussian mixture."""
    mu = target.means[:, 0]
    sd = jnp.sqrt(target.covariances[:, 0, 0])
    return float(jnp.sum(target.weights * (_norm.cdf((high - mu) / sd) - _norm.cdf((low - mu) / sd))))


def dip_ratio(x, *, half_width: float = 0.2) -> float:
    """Sample density in |x| < w over the mean density in |x ∓ 1| < w: well below 1 when the
    samples are bimodal with modes at ±1 (the target's value is ≈ 0.28 for w = 0.2)."""
    x = np.asarray(x).reshape(-1)
    centre = np.mean(np.abs(x) < half_width)
    peaks = 0.5 * (np.mean(np.abs(x - 1) < half_width) + np.mean(np.abs(x + 1) < half_width))
    return float(centre / peaks) if peaks > 0 else float("inf")


def target_dip_ratio(half_width: float = 0.2) -> float:
    t = targets.double_peak()
    centre = interval_mass(t, -half_width, half_width)
    peaks = 0.5 * (interval_mass(t, 1 - half_width, 1 + half_width) + interval_mass(t, -1 - half_width, -1 + half_width))
    return centre / peaks


def _finite(x):
    x = np.asarray(x)
    keep = np.all(np.isfinite(x), axis=-1)
    return x[keep], float(1.0 - keep.mean())


def _w1_curve(trajectory, reference) -> np.ndarray:
    traj = np.asarray(trajectory)
    out = []
    for s in range(traj.shape[0]):
        x, _ = _finite(traj[s])
        out.append(float(metrics.wasserstein_1d(x, reference)[0]) if len(x) > 1 else np.nan)
    return np.asarray(out)


def run(config: dict, out_dir: Path, *, key, progress: bool | None = None, **_: Any) -> dict:
    """Train the three models, sample them, compute the numbers, write table, JSON and figures.

    **Returns:** the results dict (also written to ``metrics.json``).
    """
    watch = Stopwatch()
    formats = tuple(config["figure_formats"])
    target = targets.double_peak()
    sigmas = sigmas_of(config)
    sigma_min = float(sigmas[-1])
    grid = np.linspace(-3.0, 3.0, config["grid_points"])
    grid_pts = jnp.asarray(grid)[:, None]
    true_score = np.asarray(target.score(grid_pts))[:, 0]
    blurred = np.asarray(target.blurred_score(grid_pts, sigma_min))[:, 0]
    pdf = np.exp(np.asarray(target.log_prob(grid_pts)))
    k_train, k_sample, k_eval, k_ref = jax.random.split(key, 4)

    runs = {"paper": (config["num_steps"], config["step_size"]),
            "long": (config["long_num_steps"], config["long_step_size"])}
    num_chains = config["num_chains"]
    reference = np.asarray(target.sample(k_ref, num_chains))
    w1_floor = metrics.noise_floor(metrics.wasserstein_1d, target, key=jax.random.fold_in(k_ref, 1),
                                   num=num_chains, repeats=config["noise_floor_repeats"])
    results: dict[str, Any] = {"models": {}, "sigmas": sigmas, "sigma_min": sigma_min,
                               "target_dip_ratio": target_dip_ratio(),
                               "w1_floor": float(w1_floor.mean[0]), "w1_floor_std": float(w1_floor.std[0])}
    curves, histories, samples, w1_curves = {}, {}, {r: {} for r in runs}, {}
    for i, family in enumerate(FAMILIES):
        with watch(f"train {family}"):
            model, history, curves[family] = train(family, config, key=jax.random.fold_in(k_train, i),
                                                   progress=progress, grid=grid)
        histories[family] = (history.loss, history.level)
        entry: dict[str, Any] = {"final_loss_per_level": history.level_loss}
        per_level = []
        for level, s in enumerate(sigmas):
            c = curves[family][level]
            # grid-based errors after each level, weighted by the target density on the grid
            w = pdf / pdf.sum()
            per_level.append({"sigma": float(s), "grid_error_true": float(np.sum(w * (c - true_score) ** 2)),
                              "grid_error_blurred_min": float(np.sum(w * (c - blurred) ** 2))})
        entry["per_level"] = per_level
        res = None
        for run_name, (num_steps, step_size) in runs.items():
            if res is None or runs["long"] != runs["paper"]:  # an identical long run reuses the paper's
                with watch(f"sample {family} {run_name}"):
                    res = draw(family, model, key=jax.random.fold_in(k_sample, 10 * i + (run_name == "long")),
                               num_chains=num_chains, num_steps=num_steps, step_size=step_size,
                               save_every=config["save_every"])
            x, diverged = _finite(res.samples)
            samples[run_name][family] = x
            with watch(f"evaluate {family} {run_name}"):
                m = metrics.evaluate(x, target, key=jax.random.fold_in(k_eval, i),  # same key: same score error
                                     reference_samples=reference, score_fn=model, sigma=sigma_min,
                                     noise_floor_repeats=config["noise_floor_repeats"],
                                     score_error_samples=config["score_error_samples"])
                true_err = metrics.score_error(model, target, key=jax.random.fold_in(k_eval, 99),
                                               num_samples=config["score_error_samples"])
            m.update(score_error_true=float(true_err.value), score_error_true_stderr=float(true_err.stderr),
                     dip_ratio=dip_ratio(x), fraction_diverged=diverged,
                     simulated_time=num_steps * step_size, num_steps=num_steps, step_size=step_size,
                     sampling_wall_time=res.wall_time, sampling_compile_time=res.compile_time,
                     chain_steps_per_second=num_chains * num_steps / max(res.wall_time, 1e-9))
            w1_curves[(family, run_name)] = _w1_curve(res.trajectory, reference)
            m["w1_vs_time"] = w1_curves[(family, run_name)]
            entry[run_name] = m
        results["models"][family] = entry

    # --- figures ---------------------------------------------------------------------------
    figures = {}
    fig = plotting.plot_score_levels(grid, curves, sigmas, true_score, blurred_score=blurred)
    figures["score_per_level"] = plotting.save_figure(fig, out_dir / "score_per_level", formats=formats, dpi=config["figure_dpi"])
    for run_name, (num_steps, step_size) in runs.items():
        fig = plotting.plot_histograms_1d(samples[run_name], grid, pdf)
        fig.suptitle(f"samples after t = {num_steps * step_size:g} (dt = {step_size:g}, {num_steps} steps, "
                     f"{num_chains} chains from U[−2, 2])", fontsize=9)
        stem = "histograms" if run_name == "paper" else "histograms_long"
        figures[stem] = plotting.save_figure(fig, out_dir / stem, formats=formats, dpi=config["figure_dpi"])
    num_saved = config["long_num_steps"] // config["save_every"]
    times = (np.arange(1, num_saved + 1) * config["save_every"]) * config["long_step_size"]
    fig = plotting.plot_w1_vs_time(times, {f: w1_curves[(f, "long")] for f in FAMILIES},
                                   floor=results["w1_floor"], ylabel="W₁(samples, target)")
    figures["w1_vs_time"] = plotting.save_figure(fig, out_dir / "w1_vs_time", formats=formats, dpi=config["figure_dpi"])
    fig = plotting.plot_loss_curves(histories, sigmas=sigmas)
    figures["loss"] = plotting.save_figure(fig, out_dir / "loss", formats=formats, dpi=config["figure_dpi"])
    return finish_run(out_dir, results, figures, watch, lambda r: comparison_table(r))


def comparison_table(results: dict) -> str:
    """The Markdown tables of a double-peak results dict."""
    out = []
    for run_name in ("paper", "long"):
        first = results["models"][FAMILIES[0]][run_name]
        out.append(f"**Sampling run `{run_name}`**: t = {first['simulated_time']:g} "
                   f"(dt = {first['step_size']:g} × {first['num_steps']} steps), {first['num_samples']} chains.\n")
        header = ["model", "score error vs σ_min-blurred", "score error vs true", "MMD²", "sliced W₂", "W₁",
                  "mode weights", "dip ratio"]
        rows = []
        for family in FAMILIES:
            m = results["models"][family][run_name]
            rows.append([family, pm(m["score_error"], m["score_error_stderr"]),
                         pm(m["score_error_true"], m["score_error_true_stderr"]), fmt(m["mmd2"]),
                         fmt(m["sliced_w2"]), fmt(m["w1"][0]), fmt(m["mode_weights"], 2), fmt(m["dip_ratio"])])
        m = results["models"]["RSN"][run_name]
        rows.append(["exact samples (noise floor)", "0", "—", pm(m["mmd2_floor"], m["mmd2_floor_std"]),
                     pm(m["sliced_w2_floor"], m["sliced_w2_floor_std"]),
                     pm(m["w1_floor"][0], m["w1_floor_std"][0]), fmt(m["mode_weights_reference"], 2),
                     fmt(results["target_dip_ratio"]) + " (exact)"])
        out.append(markdown_table(header, rows))
    return "\n".join(out)
