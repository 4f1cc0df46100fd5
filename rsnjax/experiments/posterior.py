"""Posterior sampling by conditional circuits: p(x | y) with the observation y as input current.

Three parts, each written to ``table.md``, ``metrics.json`` and figures:

1. **Bimodal prior, one noisy linear measurement** (`rsnjax.posterior.bimodal_observation`):
   a conditional RSN and the conditional SO-SC / SO-FR circuits are trained by conditional DSM
   on joint draws (x, y) (`fit`'s defaults), then driven by each of 5 observations (one input
   per chain, all observations in one run). The chains start at prior draws (the circuit's
   state before the stimulus) and run for ``t_total``. For each observation: MMD² of the final
   readouts to exact posterior draws against the null floor (mean + 2 sd of MMD² between two
   exact sets of the same sizes, ``null_repeats`` = 20 pairs) and the blur bias (exact draws blurred by N(0, σ_min²)); the goal is
   MMD² ≤ 3·max(floor, blur) with zero escaped chains (as `benchmarks/quality.py`); the
   right-mode weight against the exact one; the posterior score error (mean squared error to
   the σ_min-blurred posterior score over exact posterior draws). Figure ``posterior_samples``.
2. **Cue combination** (`rsnjax.posterior.cue_combination`): a stimulus s ~ N(0, 1) seen through
   two cues; cue 1 has reliability 1/σ₁² = 4, cue 2 one of three reliabilities. One conditional
   RSN per reliability; its sample variance (pooled over a few cue pairs, each chain group
   centred on its own mean) against the Bayesian posterior variance 1/(1 + r₁ + r₂).
3. **Re-equilibration after a stimulus switch**: chains driven by y_a, then by y_b from step
   ``switch_at`` on (`sample`'s ``switch_steps``); the time until the distance of the chains'
   mean to the new posterior mean falls below 10 % of its value at the switch, for each circuit
   and for Langevin dynamics of the exact posterior score. Figure ``switch``.

Presets: ``quick`` (a few minutes on 2 CPU cores), ``full`` (larger networks and more chains),
``tiny`` (seconds, for tests; its numbers mean nothing).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import fit, metrics, plotting, sample
from .. import posterior as post
from ..conditional import ConditionalSamplerOnly, ConditionalScoreNetwork
from ..reservoir import ReservoirSampler
from ._common import FAMILIES, Stopwatch, finish_run, fmt, markdown_table

NAME = "posterior"

_QUICK = dict(
    separation=1.5, spread=0.5, h=(1.0, 0.5), noise_std=0.7,
    observations=(-2.0, -0.5, 0.0, 0.5, 2.0),
    hidden=1000, activation="relu", steps_per_level=12000, cue_steps_per_level=2000,
    chains_per_observation=2000, reference_size=2000, t_total=10.0, step_size=2.5e-3,
    null_repeats=20, blur_repeats=4, score_error_samples=2000,
    cue_reliability=4.0, cue_reliabilities=(1.0, 4.0, 16.0), cue_hidden=200, cue_pairs=5,
    cue_chains=2000, cue_t_total=3.0, cue_step_fraction=0.02,
    switch_from=-2.0, switch_to=2.0, switch_chains=2000, switch_step_size=5e-3, switch_t_before=5.0,
    switch_t_after=10.0,
    switch_save_every=20, relaxed_fraction=0.1,
    figure_formats=("png", "pdf"), figure_dpi=110,
)

#: The named settings (see the module docstring).
PRESETS: dict[str, dict[str, Any]] = {
    "quick": _QUICK,
    "full": {**_QUICK, "cue_hidden": 500, "steps_per_level": 24000, "cue_steps_per_level": 4000,
             "chains_per_observation": 5000, "reference_size": 5000, "t_total": 20.0,
             "cue_chains": 5000, "switch_chains": 5000},
    "tiny": {**_QUICK, "observations": (-1.0, 0.0, 1.0), "hidden": 32, "steps_per_level": 20, "cue_steps_per_level": 20,
             "chains_per_observation": 64, "reference_size": 64, "t_total": 0.2, "step_size": 1e-2,
             "null_repeats": 2, "blur_repeats": 2, "score_error_samples": 64, "cue_hidden": 16,
             "cue_reliabilities": (4.0,), "cue_pairs": 2, "cue_chains": 64, "cue_t_total": 0.2, "cue_step_fraction": 0.2,
             "switch_chains": 64, "switch_step_size": 1e-2, "switch_t_before": 0.2, "switch_t_after": 0.2, "switch_save_every": 5,
             "figure_formats": ("png",), "figure_dpi": 50},
}


def make_model(family: str, dim: int, cond_dim: int, config: dict, key, hidden: int | None = None):
    """A fresh conditional SO-SC, SO-FR or RSN score model."""
    if family == "SO-SC":
        return ConditionalSamplerOnly(dim, cond_dim, dynamics="synaptic_current", activation=config["activation"], key=key)
    if family == "SO-FR":
        return ConditionalSamplerOnly(dim, cond_dim, dynamics="firing_rate", activation=config["activation"], key=key)
    if family == "RSN":
        return ConditionalScoreNetwork(dim, cond_dim, hidden or config["hidden"], activation=config["activation"], key=key)
    raise ValueError(f"`family` must be one of {FAMILIES}, got {family!r}")


def circuit(family: str, model):
    """The reservoir for an RSN (with its input weights), the model itself otherwise."""
    return ReservoirSampler.from_score_network(model) if family == "RSN" else model


def start_state(family: str, circ, x0) -> jax.Array:
    """The circuit state whose readout is ``x0`` (r = A⁺ x for a reservoir)."""
    if family != "RSN":
        return jnp.asarray(x0)
    return jnp.asarray(x0) @ (circ.noise_map / math.sqrt(2.0)).T


def bimodal_target(config: dict) -> post.LinearGaussianObservation:
    return post.bimodal_observation(separation=config["separation"], spread=config["spread"],
                                    h=config["h"], noise_std=config["noise_std"])


def _mmd(a, b, bandwidth) -> float:
    return float(metrics.mmd(np.asarray(a, np.float32), np.asarray(b, np.float32), bandwidth=bandwidth))


def _fit(family, target, config, key, hidden=None, steps=None, progress=None):
    """`fit` with its defaults on joint draws of ``target`` (``steps`` per level)."""
    k_init, k_fit = jax.random.split(key)
    model = make_model(family, target.dim, target.cond_dim, config, k_init, hidden)
    return fit(model, target, steps_per_level=steps or config["steps_per_level"], key=k_fit, progress=progress)


def _relaxation_time(times, means, new_mean, fraction) -> float | None:
    """The first time at which ‖mean(t) − new_mean‖ ≤ fraction · ‖mean(0) − new_mean‖ and
    stays there; None when it does not."""
    gap = np.linalg.norm(np.asarray(means) - np.asarray(new_mean), axis=-1)
    ok = gap <= fraction * gap[0]
    if not ok[-1]:
        return None
    last_bad = np.flatnonzero(~ok)
    return float(times[last_bad[-1] + 1] if last_bad.size else times[0])


def run(config: dict, out_dir: Path, *, key, progress: bool | None = None, **_: Any) -> dict:
    """Train, sample and measure the three parts; write table, JSON and figures."""
    watch = Stopwatch()
    formats = tuple(config["figure_formats"])
    target = bimodal_target(config)
    ys = np.asarray(config["observations"], np.float64)[:, None]
    k_train, k_sample, k_ref, k_cue, k_switch = jax.random.split(key, 5)
    per = config["chains_per_observation"]
    nobs = len(ys)
    results: dict[str, Any] = {"models": {}, "observations": ys[:, 0].tolist(),
                               "exact_right_weight": [float(target.posterior_weights(jnp.asarray(y))[1]) for y in ys]}

    # --- part 1: the bimodal prior through one noisy measurement -------------------------------
    references, floors, blurs, bandwidths = [], [], [], []
    models, samples = {}, {}
    for i, family in enumerate(FAMILIES):
        with watch(f"train {family}"):
            models[family], history = _fit(family, target, config, jax.random.fold_in(k_train, i), progress=progress)
        results["models"][family] = {"sigma_min": float(history.sigmas[-1]), "levels": len(history.sigmas),
                                     "final_loss": float(history.level_loss[-1])}
    sigma_min = results["models"]["RSN"]["sigma_min"]
    with watch("references"):
        rng = np.random.default_rng(0)
        for j, y in enumerate(ys):
            kj = jax.random.fold_in(k_ref, j)
            draw = lambda k, n: np.asarray(target.sample_posterior(k, jnp.asarray(y), n))  # noqa: E731
            ref = draw(kj, config["reference_size"])
            sub = ref[:1000]
            bw = float(np.median(np.linalg.norm(sub[:, None] - sub[None], axis=-1)))
            nulls = [_mmd(draw(jax.random.fold_in(kj, 1 + r), per), draw(jax.random.fold_in(kj, 100 + r), config["reference_size"]), bw)
                     for r in range(config["null_repeats"])]
            blur = [_mmd(draw(jax.random.fold_in(kj, 200 + r), per) + sigma_min * rng.normal(size=(per, 2)),
                         draw(jax.random.fold_in(kj, 300 + r), config["reference_size"]), bw)
                    for r in range(config["blur_repeats"])]
            references.append(ref)
            bandwidths.append(bw)
            floors.append(float(np.mean(nulls) + 2 * np.std(nulls, ddof=1)))
            blurs.append(float(np.mean(blur)))
    results.update(floor=floors, blur_bias=blurs, bandwidth=bandwidths)
    x_prior, _ = target.sample(jax.random.fold_in(k_sample, 99), per * nobs)
    inputs = jnp.repeat(jnp.asarray(ys, jnp.float32), per, axis=0)
    num_steps = int(round(config["t_total"] / config["step_size"]))
    for i, family in enumerate(FAMILIES):
        circ = circuit(family, models[family])
        with watch(f"sample {family}"):
            out = sample(circ, key=jax.random.fold_in(k_sample, i), num_chains=per * nobs, num_steps=num_steps,
                         step_size=config["step_size"], inputs=inputs, initial_state=start_state(family, circ, x_prior),
                         on_nonfinite="flag", warn=False)
        x = np.asarray(out.samples, np.float64).reshape(nobs, per, 2)
        escaped = np.asarray(out.escaped).reshape(nobs, per)
        samples[family] = x
        entry = results["models"][family]
        entry.update(sampling_wall_time=out.wall_time, num_steps=num_steps, per_observation=[])
        with watch(f"evaluate {family}"):
            for j, y in enumerate(ys):
                ok = np.isfinite(x[j]).all(1)
                value = _mmd(x[j][ok], references[j], bandwidths[j]) if ok.sum() > 1 else float("nan")
                goal = 3 * max(floors[j], blurs[j])
                pts = jnp.asarray(references[j][: config["score_error_samples"]], jnp.float32)
                yy = jnp.broadcast_to(jnp.asarray(y, jnp.float32), (pts.shape[0], 1))
                err = np.sum((np.asarray(models[family](pts, yy)) - np.asarray(target.blurred_score(pts, yy, sigma_min))) ** 2, -1)
                entry["per_observation"].append({
                    "y": float(y[0]), "mmd2": value, "goal": goal, "ratio": value / max(floors[j], blurs[j]),
                    "escaped": int(escaped[j].sum()), "nonfinite": int((~ok).sum()),
                    "pass": bool(value <= goal and escaped[j].sum() == 0),
                    "right_weight": float(np.mean(x[j][ok][:, 0] > 0)),
                    "score_error": float(err.mean()), "score_error_stderr": float(err.std(ddof=1) / math.sqrt(len(err))),
                })
        entry["passed"] = int(sum(o["pass"] for o in entry["per_observation"]))

    # --- part 2: cue combination ---------------------------------------------------------------
    cue_rows = []
    r1 = config["cue_reliability"]
    for i, r2 in enumerate(config["cue_reliabilities"]):
        cue = post.cue_combination([1.0 / r1, 1.0 / r2])
        with watch("train cue RSN"):
            net, _ = _fit("RSN", cue, config, jax.random.fold_in(k_cue, i), hidden=config["cue_hidden"],
                          steps=config["cue_steps_per_level"], progress=progress)
        v = float(cue.posterior_covariances()[0, 0, 0])
        _, pairs = cue.sample(jax.random.fold_in(k_cue, 100 + i), config["cue_pairs"])
        n = config["cue_chains"]
        h = config["cue_step_fraction"] * v
        steps = int(round(config["cue_t_total"] / h))
        res = ReservoirSampler.from_score_network(net)
        with watch("sample cue RSN"):
            out = sample(res, key=jax.random.fold_in(k_cue, 200 + i), num_chains=n * len(pairs), num_steps=steps,
                         step_size=h, inputs=jnp.repeat(pairs, n, axis=0), init="zeros", on_nonfinite="flag", warn=False)
        x = np.asarray(out.samples, np.float64).reshape(len(pairs), n)
        means = np.asarray(cue.posterior_means(pairs))[:, 0, 0]
        var = float(np.mean(np.var(x, axis=1, ddof=1)))
        cue_rows.append({"reliability_1": r1, "reliability_2": float(r2), "bayes_variance": v, "sample_variance": var,
                         "relative_error": var / v - 1, "stderr_relative": math.sqrt(2.0 / (len(pairs) * (n - 1))),
                         "mean_abs_error": float(np.mean(np.abs(x.mean(1) - means))), "step_size": h,
                         "escaped": int(out.num_escaped or 0), "pass": bool(abs(var / v - 1) <= 0.05)})
    results["cue_combination"] = cue_rows

    # --- part 3: re-equilibration after a stimulus switch ----------------------------------------
    ya, yb = config["switch_from"], config["switch_to"]
    n = config["switch_chains"]
    h = config["switch_step_size"]
    before = int(round(config["switch_t_before"] / h))
    after = int(round(config["switch_t_after"] / h))
    total = before + after
    every = config["switch_save_every"]
    total = -(-total // every) * every
    seg = jnp.asarray([[ya], [yb]], jnp.float32)
    new_mean = np.asarray(target.posterior(jnp.asarray([yb])).mean())
    x0, _ = target.sample(jax.random.fold_in(k_switch, 99), n)
    switch_curves, switch_rows = {}, {}
    times = np.arange(1, total // every + 1) * every * h
    for i, family in enumerate(("exact",) + FAMILIES):
        model = target if family == "exact" else circuit(family, models[family])
        start = x0 if family == "exact" else start_state(family, model, x0)
        with watch(f"switch {family}"):
            out = sample(model, key=jax.random.fold_in(k_switch, i), num_chains=n, num_steps=total, step_size=h,
                         inputs=seg, switch_steps=[before], initial_state=start, save_every=every,
                         on_nonfinite="flag", warn=False)
        traj = np.asarray(out.trajectory, np.float64)
        means = np.nanmean(traj, axis=1)
        after_idx = times > before * h - 1e-9
        t_rel = _relaxation_time(times[after_idx] - before * h, means[after_idx], new_mean, config["relaxed_fraction"])
        switch_curves[family] = np.linalg.norm(means - new_mean, axis=-1)
        switch_rows[family] = {"relaxation_time": t_rel, "final_mean": means[-1], "right_weight_final": float(np.mean(traj[-1][:, 0] > 0))}
    results["switch"] = {"from": ya, "to": yb, "switch_time": before * h, "new_posterior_mean": new_mean,
                         "times": times, "families": switch_rows,
                         "gap_curves": {k: v for k, v in switch_curves.items()}}

    # --- figures -----------------------------------------------------------------------------------
    figures = {}
    figures["posterior_samples"] = plotting.save_figure(
        _samples_figure(samples, references, ys, results), out_dir / "posterior_samples", formats=formats, dpi=config["figure_dpi"])
    figures["switch"] = plotting.save_figure(
        _switch_figure(times, switch_curves, before * h, ya, yb), out_dir / "switch", formats=formats, dpi=config["figure_dpi"])
    return finish_run(out_dir, results, figures, watch, comparison_table)


def _samples_figure(samples, references, ys, results):
    from matplotlib.figure import Figure

    rows = ("exact",) + FAMILIES
    fig = Figure(figsize=(2.2 * len(ys), 2.2 * len(rows)))
    axes = fig.subplots(len(rows), len(ys), sharex=True, sharey=True, squeeze=False)
    for j, y in enumerate(ys):
        for i, name in enumerate(rows):
            ax = axes[i, j]
            pts = references[j] if name == "exact" else samples[name][j]
            pts = pts[np.isfinite(pts).all(1)][:1000]
            ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.4, color=plotting.MODEL_COLORS.get(name, "0.3"))
            ax.set_xlim(-3, 3)
            ax.set_ylim(-2.5, 2.5)
            if i == 0:
                ax.set_title(f"y = {float(y[0]):g}", fontsize=9)
            if j == 0:
                ax.set_ylabel(name, fontsize=9)
            if name != "exact":
                o = results["models"][name]["per_observation"][j]
                ax.text(0.02, 0.02, f"MMD²/max = {o['ratio']:.2g}", transform=ax.transAxes, fontsize=6)
    fig.suptitle("posterior samples p(x | y): exact and each circuit driven by y", fontsize=10)
    return fig


def _switch_figure(times, curves, t_switch, ya, yb):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.2))
    ax = fig.subplots()
    for name, gap in curves.items():
        ax.plot(times, gap, label=name, color=plotting.MODEL_COLORS.get(name, "0.3") if name != "exact" else "k",
                lw=1.2, ls="--" if name == "exact" else "-")
    ax.axvline(t_switch, color="0.5", lw=0.8)
    ax.set_xlabel("time (τ = 1)")
    ax.set_ylabel("‖mean(x_t) − posterior mean(y_b)‖")
    ax.set_title(f"stimulus switch y = {ya:g} → {yb:g} at t = {t_switch:g}", fontsize=9)
    ax.legend(fontsize=8)
    return fig


def comparison_table(results: dict) -> str:
    """The Markdown tables of a posterior results dict."""
    out = ["**Bimodal prior, one noisy linear measurement**: MMD² of the final readouts to exact "
           "posterior draws; goal MMD² ≤ 3·max(floor, blur bias) and no escaped chain.\n"]
    header = ["y", "exact right-mode weight", "floor", "blur bias"]
    for family in FAMILIES:
        header += [f"{family} MMD² (ratio)", f"{family} right weight", f"{family} escaped"]
    rows = []
    for j, y in enumerate(results["observations"]):
        row = [f"{y:g}", fmt(results["exact_right_weight"][j]), fmt(results["floor"][j], 2), fmt(results["blur_bias"][j], 2)]
        for family in FAMILIES:
            o = results["models"][family]["per_observation"][j]
            row += [f"{fmt(o['mmd2'], 2)} ({fmt(o['ratio'], 2)}){'' if o['pass'] else ' ✗'}", fmt(o["right_weight"]),
                    str(o["escaped"])]
        rows.append(row)
    out.append(markdown_table(header, rows))
    out.append("Observations meeting the goal: " + ", ".join(
        f"{f} {results['models'][f]['passed']}/{len(results['observations'])}" for f in FAMILIES) + ".\n")
    header = ["y"] + [f"{f} score error" for f in FAMILIES]
    rows = [[f"{y:g}"] + [f"{fmt(results['models'][f]['per_observation'][j]['score_error'])} ± "
                          f"{fmt(results['models'][f]['per_observation'][j]['score_error_stderr'], 2)}" for f in FAMILIES]
            for j, y in enumerate(results["observations"])]
    out.append("**Posterior score error** (mean ‖s(x, y) − ∇ log p_σmin(x | y)‖² over exact posterior draws):\n")
    out.append(markdown_table(header, rows))
    out.append("**Cue combination** (RSN; stimulus prior N(0, 1), cue reliabilities r₁ and r₂): pooled sample "
               "variance against the Bayesian posterior variance 1/(1 + r₁ + r₂).\n")
    rows = [[fmt(c["reliability_1"]), fmt(c["reliability_2"]), fmt(c["bayes_variance"], 4), fmt(c["sample_variance"], 4),
             f"{100 * c['relative_error']:+.1f} % (± {100 * c['stderr_relative']:.1f} %)", fmt(c["mean_abs_error"], 2),
             str(c["escaped"]), "yes" if c["pass"] else "**no**"] for c in results["cue_combination"]]
    out.append(markdown_table(["r₁", "r₂", "Bayes variance", "sample variance", "difference", "mean |error| of the mean",
                               "escaped", "within 5 %"], rows))
    s = results["switch"]
    out.append(f"**Re-equilibration** after the stimulus switches y = {s['from']:g} → {s['to']:g} at t = "
               f"{s['switch_time']:g}: time until the chains' mean is within 10 % of its distance at the switch "
               "from the new posterior mean.\n")
    rows = [[name, fmt(r["relaxation_time"]), fmt(r["final_mean"], 3), fmt(r["right_weight_final"])]
            for name, r in s["families"].items()]
    out.append(markdown_table(["dynamics", "re-equilibration time", "final mean", "final right-mode weight"], rows))
    return "\n".join(out)
