"""Variability at stimulus onset: does a sampling circuit's neural variability drop when a
stimulus appears (variability quenching, Churchland et al. 2010)? Measured, not assumed.

The conditional target. x ∈ ℝ² has the prior N(0, I). A stimulus is a cue y = x + σ_c ε
(ε ~ N(0, I)); the circuit's input is c = (1, y) when the stimulus is on and c = (0, 0, 0)
when it is off. Trained on joint draws (half with the stimulus off), the circuit should sample
the prior N(0, I) without stimulus and the posterior N(y/(1 + σ_c²), σ_c²/(1 + σ_c²) I) with it:
the readout's variance drops from 1 to σ_c²/(1 + σ_c²) (0.2 for σ_c = 0.5) at onset, by
construction of the target. What the neurons do is the question.

The run. SO-SC, SO-FR (2 units each) and an RSN (N = ``hidden``, ReLU) are trained by
conditional DSM (`fit`'s defaults with a fixed σ schedule), then every chain is driven by the
baseline input (stimulus off) for the burn-in and ``pre_ms``, and by the stimulus
c = (1, ``stimulus``) from a known step on (``sample(..., inputs=..., switch_steps=...)``), the same
stimulus in every chain (a trial). The state of every SO unit and of ``record_neurons`` reservoir
units is recorded every ``record_every`` steps in all chains; the RSN is run twice with the same
key, with and without private noise (s = ``private_noise_rel`` × the neurons' median sd before
onset; readouts bit-identical, checked).

Units (assumptions, stated with the table): τ = ``tau_ms`` ms; a neuron's firing rate is
``rate_unit_hz`` · [state]₊ (as in the neural-variability preset); spike counts are Poisson counts of
that rate in ``window_ms`` windows, Fano factor 1 + Var Λ / E Λ (`rsnjax.activity.variability_timecourse`
with ``spiking=True``). No mean matching (Churchland et al.'s control for rate changes) is done:
the table gives the mean rates next to the Fano factors.

Written: ``table.md`` (pre-onset, first window after onset and late post-onset values of the
readout variance, the neurons' across-trial variance, mean rate and Fano factor, for every
circuit), ``metrics.json`` (the timecourses) and the figure ``quenching`` (the timecourses
around onset, sliding windows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import activity, fit, geometric_sigmas, plotting, sample
from ._common import FAMILIES, Stopwatch, finish_run, fmt, markdown_table
from .posterior import circuit as make_circuit, make_model

NAME = "quenching"
#: The extra row: the RSN with private noise.
PRIVATE = "RSN + private noise"
CIRCUITS = FAMILIES + (PRIVATE,)

_QUICK = dict(
    cue_std=0.5,
    stimulus=(0.8, -0.4),
    hidden=200,
    activation="relu",
    sigma_max=3.0,
    sigma_min=0.05,
    num_levels=8,
    steps_per_level=1500,
    num_chains=500,
    step_size=5e-3,
    burn_in=2000,
    pre_steps=2000,
    post_steps=3000,
    record_every=10,
    record_neurons=100,
    private_noise_rel=1.0,
    tau_ms=20.0,
    rate_unit_hz=50.0,
    window_ms=50.0,
    slide_ms=10.0,
    late_after_ms=100.0,
    figure_formats=("png", "pdf"),
    figure_dpi=110,
)

#: ``quick``: N = 200, 8 levels × 1500 steps, 500 chains (≈ 1–2 min on 2 cores); ``full``: N = 1000,
#: 4000 steps per level, 4000 chains; ``tiny``: for tests (seconds; its numbers mean nothing).
PRESETS: dict[str, dict[str, Any]] = {
    "quick": _QUICK,
    "full": {**_QUICK, "hidden": 1000, "steps_per_level": 4000, "num_chains": 4000, "record_neurons": 200},
    "tiny": {**_QUICK, "hidden": 24, "num_levels": 2, "steps_per_level": 30, "num_chains": 32, "burn_in": 50,
             "pre_steps": 100, "post_steps": 150, "record_neurons": 8, "window_ms": 5.0, "slide_ms": 2.0,
             "late_after_ms": 5.0, "figure_formats": ("png",), "figure_dpi": 50},
}


def make_data(config: dict):
    """``(key, n) -> (x (n, 2), c (n, 3))``: joint draws, the stimulus on in half of them."""
    s = float(config["cue_std"])

    def draw(key, n):
        kx, ky, kon = jax.random.split(key, 3)
        x = jax.random.normal(kx, (n, 2))
        y = x + s * jax.random.normal(ky, (n, 2))
        on = jax.random.bernoulli(kon, 0.5, (n, 1)).astype(x.dtype)
        return x, jnp.concatenate([on, on * y], axis=1)

    return draw


def exact_moments(config: dict) -> dict:
    """The readout's exact mean and variance per coordinate before and after onset."""
    v = config["cue_std"] ** 2
    y = np.asarray(config["stimulus"], np.float64)
    return {"pre_mean": [0.0, 0.0], "pre_variance": 1.0, "post_mean": (y / (1 + v)).tolist(),
            "post_variance": v / (1 + v)}


def _windows(config: dict) -> tuple[float, int, int]:
    dt_ms = config["record_every"] * config["step_size"] * config["tau_ms"]
    window = max(1, int(round(config["window_ms"] / dt_ms)))
    slide = max(1, int(round(config["slide_ms"] / dt_ms)))
    return dt_ms, window, slide


def timecourse(state, config: dict, *, step: int | None = None) -> dict:
    """Per window: readout-free measures of recorded states ``(chains, records, neurons)``:
    across-trial variance of the state, mean rate (Hz) and spike-count Fano factor; window
    times in ms relative to onset (of the window's start)."""
    dt_ms, window, _ = _windows(config)
    rate = config["rate_unit_hz"] * jnp.maximum(jnp.asarray(state), 0.0)
    tc_state = activity.variability_timecourse(state, window, step=step)
    tc_rate = activity.variability_timecourse(rate, window, step=step, dt=dt_ms / 1000.0, spiking=True)
    onset_record = config["pre_steps"] // config["record_every"]
    # record i is the state after step burn_in + (i + 1)·record_every: its time from onset is (i + 1 − onset_record)·dt
    start_ms = (np.asarray(tc_state.start) + 1 - onset_record) * dt_ms
    return {"start_ms": start_ms, "variance": np.asarray(tc_state.variance), "rate_hz": np.asarray(tc_rate.mean),
            "fano": np.asarray(tc_rate.fano)}


def summarize(tc: dict, config: dict) -> dict:
    """Pre-onset (windows that end before onset), onset (the first window that starts at onset)
    and late (windows that start ``late_after_ms`` or more after onset) means of each measure."""
    _, window, _ = _windows(config)
    dt_ms = config["record_every"] * config["step_size"] * config["tau_ms"]
    start, end = tc["start_ms"], tc["start_ms"] + (window - 1) * dt_ms
    phases = {"pre": end <= 0, "onset": np.isclose(start, start[start >= 0].min()) if np.any(start >= 0) else start > 0,
              "late": start >= config["late_after_ms"]}
    out = {}
    for phase, mask in phases.items():
        for k in ("variance", "rate_hz", "fano", "readout_variance"):
            if k not in tc:
                continue
            v = tc[k][mask]
            out[f"{k}_{phase}"] = float(np.nanmean(v)) if v.size and np.any(np.isfinite(v)) else None
    for k in ("variance", "fano"):
        pre, late = out[f"{k}_pre"], out[f"{k}_late"]
        out[f"{k}_late_over_pre"] = late / pre if pre and late is not None else None
    return out


def run(config: dict, out_dir: Path, *, key, progress: bool | None = None, **_: Any) -> dict:
    """Train the circuits, drive them through a stimulus onset, record, measure and plot."""
    watch = Stopwatch()
    formats = tuple(config["figure_formats"])
    data = make_data(config)
    exact = exact_moments(config)
    k_train, k_sample, k_pick = jax.random.split(key, 3)
    sigmas = geometric_sigmas(config["sigma_max"], config["sigma_min"], config["num_levels"])
    n, every = config["num_chains"], config["record_every"]
    num_steps = config["pre_steps"] + config["post_steps"]
    if config["pre_steps"] % every or config["post_steps"] % every:
        raise ValueError("`pre_steps` and `post_steps` must be multiples of `record_every`")
    inputs = jnp.asarray([[0.0, 0.0, 0.0], [1.0, *config["stimulus"]]])
    switch = [config["burn_in"] + config["pre_steps"]]
    _, window, slide = _windows(config)
    results: dict[str, Any] = {"models": {}, "names": CIRCUITS, "exact": exact}
    for i, family in enumerate(FAMILIES):
        k_init, k_fit = jax.random.split(jax.random.fold_in(k_train, i))
        with watch(f"train {family}"):
            model, _ = fit(make_model(family, 2, 3, config, k_init), data, sigmas=sigmas,
                           steps_per_level=config["steps_per_level"], key=k_fit, progress=progress)
        circ = make_circuit(family, model)
        neurons = None
        if family == "RSN":
            neurons = np.sort(np.asarray(jax.random.choice(
                k_pick, circ.hidden, (min(config["record_neurons"], circ.hidden),), replace=False)))
        kw = dict(key=jax.random.fold_in(k_sample, i), num_chains=n, num_steps=num_steps,
                  step_size=config["step_size"], burn_in=config["burn_in"], init="normal", inputs=inputs,
                  switch_steps=switch, save_every=every, record_every=every, record_neurons=neurons,
                  on_nonfinite="flag", warn=False)
        runs = []
        with watch(f"sample {family}"):
            out = sample(circ, **kw)
            runs.append((family, out, {}))
            if family == "RSN":
                pre = np.asarray(out.activity[:, : config["pre_steps"] // every])
                scale = config["private_noise_rel"] * float(np.median(np.sqrt(np.var(pre, axis=(0, 1)))))
                noisy = sample(circ, private_noise=scale, **kw)
                identical = bool(np.array_equal(np.asarray(noisy.trajectory), np.asarray(out.trajectory)))
                runs.append((PRIVATE, noisy, {"private_noise": scale, "readout_bit_identical": identical}))
        for name, res, extra in runs:
            with watch(f"measure {name}"):
                state = np.asarray(res.activity)
                readout = np.asarray(res.trajectory).transpose(1, 0, 2)  # (chains, records, 2)
                keep = np.all(np.isfinite(readout), axis=(1, 2))
                tc = timecourse(state[keep], config)
                tc_read = activity.variability_timecourse(readout[keep], window)
                tc["readout_variance"] = np.asarray(tc_read.variance)
                m = summarize(tc, config)
                m.update(fraction_nonfinite=float(1 - keep.mean()), timecourse=tc,
                         sliding=timecourse(state[keep], config, step=slide), **extra)
                m["sliding"]["readout_variance"] = np.asarray(
                    activity.variability_timecourse(readout[keep], window, step=slide).variance)
            results["models"][name] = m

    with watch("figures"):
        figures = {"quenching": plotting.save_figure(_plot(results, config), out_dir / "quenching",
                                                     formats=formats, dpi=config["figure_dpi"])}
    return finish_run(out_dir, results, figures, watch, lambda r: comparison_table(r, config))


def comparison_table(results: dict, config: dict) -> str:
    """The Markdown table of a quenching results dict."""
    ex = results["exact"]
    dt_ms, window, _ = _windows(config)
    lines = [f"Prior N(0, I) in 2-D; stimulus: the cue y = {tuple(config['stimulus'])} (σ_c = {config['cue_std']:g}), "
             f"input (1, y), off before onset: (0, 0, 0). {config['num_chains']} chains (trials), burn-in "
             f"{config['burn_in'] * config['step_size']:g} τ without stimulus, recorded "
             f"{config['pre_steps'] * config['step_size'] * config['tau_ms']:g} ms before and "
             f"{config['post_steps'] * config['step_size'] * config['tau_ms']:g} ms after onset every {dt_ms:g} ms "
             f"(τ = {config['tau_ms']:g} ms; rate = {config['rate_unit_hz']:g} Hz × [state]₊; Poisson spike counts in "
             f"{window * dt_ms:g} ms windows). RSN: N = {config['hidden']}, {config['record_neurons']} neurons "
             f"recorded; SO circuits: both units. Columns: pre-onset windows → the first window after onset → "
             f"windows starting ≥ {config['late_after_ms']:g} ms after onset. Exact readout variance: "
             f"{fmt(ex['pre_variance'])} → {fmt(ex['post_variance'])}.\n"]
    header = ["circuit", "readout var (pre → late)", "neurons' across-trial var (pre → onset → late)",
              "late / pre", "rate Hz (pre → onset → late)", "spike-count Fano (pre → onset → late)", "late / pre"]
    rows = []
    for name in results["names"]:
        m = results["models"][name]
        rows.append([name, f"{fmt(m['readout_variance_pre'])} → {fmt(m['readout_variance_late'])}",
                     f"{fmt(m['variance_pre'])} → {fmt(m['variance_onset'])} → {fmt(m['variance_late'])}",
                     fmt(m["variance_late_over_pre"]),
                     f"{fmt(m['rate_hz_pre'])} → {fmt(m['rate_hz_onset'])} → {fmt(m['rate_hz_late'])}",
                     f"{fmt(m['fano_pre'])} → {fmt(m['fano_onset'])} → {fmt(m['fano_late'])}",
                     fmt(m["fano_late_over_pre"])])
    lines.append(markdown_table(header, rows))
    p = results["models"].get(PRIVATE)
    if p is not None:
        lines.append(f"\nPrivate noise s = {fmt(p['private_noise'])}; readout trajectory bit-identical with and "
                     f"without it: {p['readout_bit_identical']}.\n")
    return "\n".join(lines)


def _plot(results, config):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(6.0, 8.4), sharex=True)
    _, window, _ = _windows(config)
    dt_ms = config["record_every"] * config["step_size"] * config["tau_ms"]
    panels = [("readout_variance", "readout variance\n(mean over x₁, x₂)"),
              ("variance", "neurons' across-trial\nvariance / pre-onset"),
              ("rate_hz", "mean rate (Hz)"), ("fano", "spike-count Fano")]
    for i, name in enumerate(results["names"]):
        m = results["models"][name]
        s = m["sliding"]
        t = np.asarray(s["start_ms"]) + window * dt_ms / 2  # window centres
        color = plotting.MODEL_COLORS.get(name, f"C{i}")
        ls = "--" if name == PRIVATE else "-"
        for ax, (k, _) in zip(axes, panels):
            v = np.asarray(s[k], np.float64)
            if k == "variance":
                v = v / m["variance_pre"]
            ax.plot(t, v, color=color, ls=ls, lw=1.3, label=name)
    ex = results["exact"]
    axes[0].axhline(ex["pre_variance"], color="0.5", lw=0.8, ls=":")
    axes[0].axhline(ex["post_variance"], color="0.5", lw=0.8, ls=":")
    for ax, (_, label) in zip(axes, panels):
        ax.axvline(0, color="k", lw=0.8)
        ax.set_ylabel(label, fontsize=8)
    axes[0].legend(fontsize=7, ncol=2)
    axes[-1].set_xlabel(f"time from stimulus onset (ms; centre of a {window * dt_ms:g} ms window)")
    fig.tight_layout()
    return fig
