"""Neural variability of a sampling circuit: record SO-SC, SO-FR and an RSN (with and without
private noise) while they sample a 2-D target, and measure their neurons as a physiologist would.

The target is a ring of 4 Gaussians (2-D, so each sampler-only circuit has 2 neurons and one
pair). Every circuit is trained by annealed DSM (`fit`'s defaults), then simulated at a fixed
input (its constant I) from over-dispersed starts, burnt in, and recorded with
``sample(..., record_every=...)``: the state of every unit of the sampler-only circuits and of
``record_neurons`` reservoir units of the RSN, in ``record_chains`` chains (the trials). The RSN is
recorded twice with the same key: plain, and with ``private_noise`` (null-space noise of standard
deviation ``private_noise_rel`` × the neurons' median standard deviation), whose readouts are
bit-identical (checked and recorded).

Units. Time: τ = ``tau_ms`` milliseconds (the model's time constant, 1 in model units). Rate: a
neuron's state (r for the RSN, which is a firing-rate model; x for SO-FR; φ(x) for SO-SC, the same
as x₊ for ReLU) is read as a firing rate ν = ``rate_unit_hz`` · [state]₊ Hz, and spike counts as
Poisson counts in windows of ``window_ms`` ms: Fano factor 1 + Var(Λ)/E(Λ), Λ = ∫ν dt
(`rsnjax.activity.fano_factor` with ``spiking=True``). These conversions are assumptions: the
Fano factor of a rate scales with its unit, and the table states them.

What is recorded (``table.md``, ``metrics.json``, figures):

- per circuit: the readout's W₁ per marginal to the target, the state's variance, the spike-count
  Fano factor (median and quartiles over neurons and windows), noise correlations of the state
  and of spike counts (mean and mean |·| over pairs), the autocorrelation time, the participation
  ratio of the recorded state, and the R̂ of the readout;
- ``traces``: state traces and a Poisson raster of a few neurons in one chain, per circuit;
- ``fano``: the Fano factor distributions; ``noise_correlations``: the pairwise correlation
  distributions (state), the RSN with and without private noise;
- ``autocorrelation``: the autocorrelation functions (median over neurons).

Not measured here: the change of variability at stimulus onset (variability quenching), which
needs a circuit with a time-varying input: see the ``quenching`` experiment
(`rsnjax.experiments.quenching`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import activity, fit, geometric_sigmas, metrics, plotting, sample, targets
from ..networks import SamplerOnly, ScoreNetwork
from ..reservoir import ReservoirSampler
from ._common import FAMILIES, Stopwatch, finish_run, fit_options, fmt, make_optimizer, markdown_table

NAME = "neural-variability"
#: The extra row: the RSN with private noise.
PRIVATE = "RSN + private noise"
CIRCUITS = FAMILIES + (PRIVATE,)

_PAPER = dict(
    hidden=1000,
    activation="relu",
    remedies=True,
    ring_modes=4,
    ring_radius=1.5,
    ring_std=0.5,
    sigma_max=1.0,
    sigma_min=100.0 ** -0.9,
    num_levels=10,
    steps_per_level=5000,
    batch_size=256,
    learning_rate=1e-3,
    amsgrad=False,
    lr_schedule="cosine",
    weight_decay=0.0,
    num_chains=5000,
    step_size=5e-3,
    burn_in=4000,
    num_steps=4000,
    record_every=10,
    record_chains=1000,
    record_neurons=200,
    private_noise_rel=1.0,
    tau_ms=20.0,
    rate_unit_hz=50.0,
    window_ms=50.0,
    max_lag=100,
    trace_neurons=5,
    raster_neurons=20,
    figure_formats=("png", "pdf"),
    figure_dpi=110,
)

#: ``paper``: N = 1000, 5000 chains (no paper counterpart: the paper records no activity);
#: ``quick``: N = 200, 6 levels of 1500 steps, 2000 chains, 500 recorded (≈ 1–2 min on 2 cores);
#: ``tiny``: for tests (seconds).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": _PAPER,
    "quick": {**_PAPER, "hidden": 200, "num_levels": 6, "steps_per_level": 1500, "num_chains": 2000,
              "burn_in": 2000, "num_steps": 2000, "record_chains": 500, "record_neurons": 100},
    "tiny": {**_PAPER, "hidden": 32, "num_levels": 2, "steps_per_level": 50, "num_chains": 64, "burn_in": 100,
             "num_steps": 200, "record_chains": 32, "record_neurons": 16, "max_lag": 10, "window_ms": 20.0,
             "figure_formats": ("png",), "figure_dpi": 50},
}


def make_target(config: dict):
    return targets.ring_of_gaussians(config["ring_modes"], config["ring_radius"], config["ring_std"])


def make_model(family: str, config: dict, key):
    if family == "SO-SC":
        return SamplerOnly(2, dynamics="synaptic_current", activation=config["activation"], key=key)
    if family == "SO-FR":
        return SamplerOnly(2, dynamics="firing_rate", activation=config["activation"], key=key)
    if family == "RSN":
        return ScoreNetwork(2, config["hidden"], activation=config["activation"], key=key)
    raise ValueError(f"`family` must be one of {FAMILIES}, got {family!r}")


def train(family: str, config: dict, target, *, key, progress=None):
    k_init, k_fit = jax.random.split(key)
    sigmas = geometric_sigmas(config["sigma_max"], config["sigma_min"], config["num_levels"])
    model, history = fit(
        make_model(family, config, k_init), target, sigmas=sigmas, key=k_fit,
        steps_per_level=config["steps_per_level"], batch_size=config["batch_size"],
        optimizer=make_optimizer(config["learning_rate"], amsgrad=config["amsgrad"], schedule=config["lr_schedule"],
                                 steps_per_level=config["steps_per_level"]),
        weight_decay=config["weight_decay"], reset_optimizer=True, progress=progress, **fit_options(config))
    return model, history


def _spike_counts_rate(state, config):
    """Firing rate in Hz from the state: rate_unit_hz · [state]₊."""
    return config["rate_unit_hz"] * jnp.maximum(jnp.asarray(state), 0.0)


def measure(state, config: dict) -> dict:
    """The variability measures of recorded states ``(chains, records, neurons)``."""
    dt_ms = config["record_every"] * config["step_size"] * config["tau_ms"]
    window = max(1, int(round(config["window_ms"] / dt_ms)))
    rate = _spike_counts_rate(state, config)
    ff = np.asarray(activity.fano_factor(rate, window, dt=dt_ms / 1000.0, spiking=True)).ravel()
    ff = ff[np.isfinite(ff)]
    mean, var = (np.asarray(v) for v in activity.mean_and_variance(state))
    varies = var > 1e-12 * max(float(var.max()), 1e-30)
    s = np.asarray(state)[:, :, varies]
    out: dict[str, Any] = {"mean_state": float(np.median(mean)), "state_variance_median": float(np.median(var)),
                           "mean_rate_hz": float(np.mean(rate)), "fano_median": _q(ff, 0.5),
                           "fano_q25": _q(ff, 0.25), "fano_q75": _q(ff, 0.75), "fano_values": ff,
                           "window_records": window, "record_interval_ms": dt_ms}
    if s.shape[2] >= 2:
        pairs = np.asarray(activity.pairwise(activity.noise_correlations(s)))
        counts = np.asarray(rate)[:, :, varies]
        cpairs = np.asarray(activity.pairwise(activity.noise_correlations(counts, window=window)))
        cpairs = cpairs[np.isfinite(cpairs)]
        out.update(noise_corr_mean=float(pairs.mean()), noise_corr_abs_mean=float(np.abs(pairs).mean()),
                   noise_corr_values=pairs, count_corr_mean=_mean(cpairs), count_corr_abs_mean=_mean(np.abs(cpairs)))
    max_lag = min(config["max_lag"], s.shape[1] - 1)
    acf = np.asarray(activity.autocorrelation(s, max_lag))
    tau = np.asarray(activity.autocorrelation_time(s, max_lag=max_lag, dt=dt_ms))
    out.update(autocorrelation_median=np.median(acf, axis=1), autocorrelation_time_ms_median=float(np.median(tau)),
               participation_ratio=float(activity.participation_ratio(s)), num_neurons=int(s.shape[2]))
    return out


def _q(x, q):
    return float(np.quantile(x, q)) if len(x) else None


def _mean(x):
    return float(np.mean(x)) if len(x) else None


def run(config: dict, out_dir: Path, *, key, progress: bool | None = None, **_: Any) -> dict:
    """Train the circuits, record them, measure and plot. **Returns:** the results dict."""
    watch = Stopwatch()
    formats = tuple(config["figure_formats"])
    target = make_target(config)
    k_train, k_sample, k_ref, k_pick = jax.random.split(key, 4)
    reference = np.asarray(target.sample(k_ref, config["num_chains"]))
    n_rec = min(config["record_chains"], config["num_chains"])
    chains = np.arange(n_rec)
    results: dict[str, Any] = {"models": {}, "names": CIRCUITS}
    recorded: dict[str, np.ndarray] = {}
    for i, family in enumerate(FAMILIES):
        with watch(f"train {family}"):
            model, _ = train(family, config, target, key=jax.random.fold_in(k_train, i), progress=progress)
        circuit = ReservoirSampler.from_score_network(model) if family == "RSN" else model
        neurons = None
        if family == "RSN":
            neurons = np.sort(np.asarray(jax.random.choice(k_pick, circuit.hidden,
                                                           (min(config["record_neurons"], circuit.hidden),),
                                                           replace=False)))
        kw = dict(key=jax.random.fold_in(k_sample, i), num_chains=config["num_chains"], num_steps=config["num_steps"],
                  step_size=config["step_size"], burn_in=config["burn_in"], init="uniform",
                  save_every=config["record_every"], record_every=config["record_every"], record_chains=chains,
                  record_neurons=neurons, on_nonfinite="flag", warn=False)
        runs = [(family, None)]
        with watch(f"sample {family}"):
            out = sample(circuit, **kw)
            state = np.asarray(out.activity)
            if family == "RSN":
                scale = config["private_noise_rel"] * float(np.median(np.sqrt(np.var(state, axis=(0, 1)))))
                noisy = sample(circuit, private_noise=scale, **kw)
                identical = bool(np.array_equal(np.asarray(noisy.trajectory), np.asarray(out.trajectory)))
                runs.append((PRIVATE, (noisy, scale, identical)))
        for name, extra in runs:
            res = out if extra is None else extra[0]
            act = state if extra is None else np.asarray(res.activity)
            with watch(f"measure {name}"):
                m = measure(act, config)
            x = np.asarray(res.samples)
            keep = np.all(np.isfinite(x), axis=1)
            m.update(readout_w1=np.asarray(metrics.wasserstein_1d(x[keep], reference)), rhat=res.rhat,
                     fraction_nonfinite=float(1 - keep.mean()), sampling_wall_time=res.wall_time,
                     hidden=int(getattr(circuit, "hidden", 2)))
            if extra is not None:
                m.update(private_noise=extra[1], readout_bit_identical=extra[2])
            results["models"][name] = m
            recorded[name] = act
    results["w1_floor"] = np.asarray(metrics.noise_floor(metrics.wasserstein_1d, target, key=jax.random.fold_in(k_ref, 1),
                                                         num=config["num_chains"], repeats=3).mean)

    with watch("figures"):
        figures = {"traces": plotting.save_figure(_plot_traces(recorded, config, key=jax.random.fold_in(key, 9)),
                                                  out_dir / "traces", formats=formats, dpi=config["figure_dpi"]),
                   "fano": plotting.save_figure(_plot_fano(results), out_dir / "fano", formats=formats,
                                                dpi=config["figure_dpi"]),
                   "noise_correlations": plotting.save_figure(_plot_corr(results), out_dir / "noise_correlations",
                                                              formats=formats, dpi=config["figure_dpi"]),
                   "autocorrelation": plotting.save_figure(_plot_acf(results), out_dir / "autocorrelation",
                                                           formats=formats, dpi=config["figure_dpi"])}
    return finish_run(out_dir, results, figures, watch, lambda r: comparison_table(r, config))


def comparison_table(results: dict, config: dict) -> str:
    """The Markdown table of a neural-variability results dict."""
    any_m = next(iter(results["models"].values()))
    lines = [f"Ring of {config['ring_modes']} Gaussians (radius {config['ring_radius']:g}, sd {config['ring_std']:g}); "
             f"{config['num_chains']} chains from U[−2, 2], burn-in t = {config['burn_in'] * config['step_size']:g} τ, "
             f"recorded for t = {config['num_steps'] * config['step_size']:g} τ every "
             f"{any_m['record_interval_ms']:g} ms in {min(config['record_chains'], config['num_chains'])} chains "
             f"(τ = {config['tau_ms']:g} ms; rate = {config['rate_unit_hz']:g} Hz × [state]₊; Poisson spike counts "
             f"in {config['window_ms']:g} ms windows). RSN: N = {config['hidden']}, {config['record_neurons']} "
             "neurons recorded; SO circuits: both units.\n"]
    header = ["circuit", "readout W₁ (x₁, x₂)", "R̂", "state var (median)", "rate (Hz)", "Fano: median [IQR]",
              "noise corr of state: mean / mean abs", "spike-count corr: mean / mean abs",
              "autocorr. time (ms)", "participation ratio (of K)"]
    rows = []
    for name in results["names"]:
        m = results["models"][name]
        corr = f"{fmt(m.get('noise_corr_mean'), 2)} / {fmt(m.get('noise_corr_abs_mean'), 2)}"
        ccorr = f"{fmt(m.get('count_corr_mean'), 2)} / {fmt(m.get('count_corr_abs_mean'), 2)}"
        rows.append([name, fmt(m["readout_w1"], 2), fmt(m["rhat"]), fmt(m["state_variance_median"]),
                     fmt(m["mean_rate_hz"]), f"{fmt(m['fano_median'])} [{fmt(m['fano_q25'])}, {fmt(m['fano_q75'])}]",
                     corr, ccorr, fmt(m["autocorrelation_time_ms_median"]),
                     f"{fmt(m['participation_ratio'])} (of {m['num_neurons']})"])
    lines.append(markdown_table(header, rows))
    p = results["models"].get(PRIVATE)
    if p is not None:
        lines.append(f"\nPrivate noise s = {fmt(p['private_noise'])} (× the neurons' median sd "
                     f"{config['private_noise_rel']:g}); readout trajectory bit-identical with and without it: "
                     f"{p['readout_bit_identical']}. W₁ noise floor per marginal: {fmt(results['w1_floor'], 2)}.\n")
    return "\n".join(lines)


# --- figures ----------------------------------------------------------------------------------

def _plot_traces(recorded, config, *, key):
    import matplotlib.pyplot as plt

    names = list(recorded)
    fig, axes = plt.subplots(2, len(names), figsize=(3.6 * len(names), 5.2), squeeze=False)
    dt_ms = config["record_every"] * config["step_size"] * config["tau_ms"]
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
    for j, name in enumerate(names):
        state = recorded[name][0]  # chain 0: (records, neurons)
        t = dt_ms * np.arange(1, state.shape[0] + 1)
        ax = axes[0, j]
        for k in range(min(config["trace_neurons"], state.shape[1])):
            ax.plot(t, state[:, k], lw=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("time (ms)")
        if j == 0:
            ax.set_ylabel("state of a few neurons")
        ax = axes[1, j]
        rate = np.asarray(_spike_counts_rate(state[:, : config["raster_neurons"]], config))
        spikes = rng.poisson(rate * dt_ms / 1000.0)
        for k in range(spikes.shape[1]):
            times = np.repeat(t, spikes[:, k])
            ax.vlines(times, k + 0.6, k + 1.4, lw=0.6, color="k")
        ax.set_xlabel("time (ms)")
        ax.set_xlim(0, t[-1])
        ax.set_ylim(0.4, max(spikes.shape[1], 1) + 0.6)
        if j == 0:
            ax.set_ylabel("neuron (Poisson spikes)")
    fig.tight_layout()
    return fig


def _plot_fano(results):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    values = [np.asarray(results["models"][n]["fano_values"]) for n in results["names"]]
    ax.boxplot(values, showfliers=False)
    ax.set_xticks(range(1, len(values) + 1), [n.replace(" + ", "\n+ ") for n in results["names"]], fontsize=8)
    ax.axhline(1.0, color="0.5", ls=":", lw=1)
    ax.set_ylabel("spike-count Fano factor")
    ax.set_title("over neurons and windows (Poisson spikes from the rate)", fontsize=8)
    fig.tight_layout()
    return fig


def _plot_corr(results):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    bins = np.linspace(-1, 1, 41)
    for i, name in enumerate(results["names"]):
        v = np.asarray(results["models"][name].get("noise_corr_values", []))
        if v.size > 2:
            ax.hist(v, bins=bins, histtype="step", lw=1.4, density=True, label=name,
                    color=plotting.MODEL_COLORS.get(name, f"C{i}"))
        elif v.size:
            for u in v:
                ax.axvline(u, ls="--", lw=1.2, label=f"{name} (1 pair)", color=plotting.MODEL_COLORS.get(name, f"C{i}"))
    ax.set_xlabel("noise correlation of the state (across chains, fixed time)")
    ax.set_ylabel("density over pairs")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _plot_acf(results):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, name in enumerate(results["names"]):
        m = results["models"][name]
        acf = np.asarray(m["autocorrelation_median"])
        ax.plot(m["record_interval_ms"] * np.arange(len(acf)), acf, label=name,
                color=plotting.MODEL_COLORS.get(name, f"C{i}"))
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xlabel("lag (ms)")
    ax.set_ylabel("autocorrelation (median over neurons)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
