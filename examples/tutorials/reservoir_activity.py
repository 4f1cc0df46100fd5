# %% [markdown]
# # Analysing reservoir activity
#
# A sampling circuit's neurons carry its samples: the readout of a reservoir-sampler network
# (RSN) is x = W_out r, a linear function of its N reservoir units r. This tutorial records the
# reservoir while it samples and measures the recording the way a physiologist measures neural
# data: trial-to-trial variability (Fano factors), noise correlations, autocorrelation times and
# the dimensionality of the population activity.
#
# ```bash
# python examples/tutorials/reservoir_activity.py                              # full size: ≈ 2 min on 2 shared cores
# RSNJAX_TUTORIAL_SIZE=tiny python examples/tutorials/reservoir_activity.py    # seconds: what the tests run
# ```
#
# Outputs go to `results/tutorials/reservoir_activity/` (or `$RSNJAX_TUTORIAL_OUT`). Time is in
# units of the circuit's time constant τ = 1.

# %%
import json
import os
from pathlib import Path

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import rsnjax
from rsnjax import activity, targets

SIZE = os.environ.get("RSNJAX_TUTORIAL_SIZE", "full")
OUT = Path(os.environ.get("RSNJAX_TUTORIAL_OUT", "results/tutorials/reservoir_activity"))
OUT.mkdir(parents=True, exist_ok=True)
SETTINGS = {
    # seconds: 100 units, a coarse noise schedule, 500 chains
    "tiny": dict(neurons=100, sigma_min=0.2, num_levels=5, steps_per_level=300, num_chains=500,
                 record_chains=200, record_neurons=100),
    # 1000 units, fit's default schedule, 5000 chains of which 500 are recorded (100 neurons)
    "full": dict(neurons=1000, sigma_min=None, num_levels=None, steps_per_level=None, num_chains=5000,
                 record_chains=500, record_neurons=100),
}
if SIZE not in SETTINGS:
    raise ValueError(f"RSNJAX_TUTORIAL_SIZE must be one of {sorted(SETTINGS)}, got {SIZE!r}")
cfg = SETTINGS[SIZE]

# %% [markdown]
# ## 1. A trained circuit
#
# An RSN with ReLU units trained on a ring of four Gaussians in 2-D, mapped onto its reservoir.

# %%
target = targets.ring_of_gaussians(num_modes=4, radius=1.5, std=0.5)
data = np.asarray(target.sample(jax.random.key(0), 10_000))
sigmas = None
if cfg["sigma_min"] is not None:
    sigmas = rsnjax.geometric_sigmas(rsnjax.default_sigmas(data)[0], cfg["sigma_min"], cfg["num_levels"])
net = rsnjax.ScoreNetwork(2, cfg["neurons"], activation="relu", key=jax.random.key(1))
net, _ = rsnjax.fit(net, data, sigmas=sigmas, steps_per_level=cfg["steps_per_level"], key=jax.random.key(2),
                    progress=False)
reservoir = rsnjax.ReservoirSampler.from_score_network(net)

# %% [markdown]
# ## 2. Record while sampling
#
# `record_every=k` stores the recorded neurons' state every k steps after burn-in, for the chains
# in `record_chains` (the "trials") and the neurons in `record_neurons`; `record_rates=True` also
# stores their rates φ(W_rec r + I). Only that slice leaves the simulation: the full
# chains × N × time state is never formed. The samples are the same with and without recording.
#
# Records are `dt = k · step_size` apart. We burn in for 10 τ and record for 10 τ.

# %%
step_size = 0.01
record_every = 10
dt = record_every * step_size
num_steps = 1000  # 10 τ
rng = np.random.default_rng(0)
neurons = np.sort(rng.choice(cfg["neurons"], cfg["record_neurons"], replace=False))
out = rsnjax.sample(reservoir, key=jax.random.key(3), num_chains=cfg["num_chains"], num_steps=num_steps,
                    step_size=step_size, burn_in=1000, save_every=record_every, warn=False,
                    record_every=record_every, record_chains=np.arange(cfg["record_chains"]),
                    record_neurons=neurons, record_rates=True)
r, rates = out.activity, out.rates
print("activity", r.shape, "(chains, records, neurons); rates", rates.shape)

# %% [markdown]
# The readout is a linear function of the recorded state: with the recorded neurons' columns of
# W_out, W_out r reproduces the saved samples (exactly when all neurons are recorded).

# %%
if cfg["record_neurons"] == cfg["neurons"]:
    readout = np.asarray(r) @ np.asarray(reservoir.W_out[:, neurons]).T  # (chains, records, d)
    saved = np.swapaxes(np.asarray(out.trajectory[:, : cfg["record_chains"]]), 0, 1)
    readout_error = float(np.max(np.abs(readout - saved)))
    print(f"max |W_out r - x| over the recording: {readout_error:.2e}")
else:
    readout_error = None

# %% [markdown]
# ## 3. The measures
#
# All functions of `rsnjax.activity` take `(chains, records, neurons)`.
#
# - `mean_and_variance`: each neuron's mean and variance over trials and time.
# - `fano_factor`: Var/E across trials of the rate integrated over a window (with
#   `spiking=True`, the Fano factor of Poisson spike counts driven by that rate).
# - `noise_correlations`: each pair's correlation across trials at fixed time, averaged over time.
# - `autocorrelation_time`: the integrated autocorrelation time of each neuron.
# - `participation_ratio`: (Σλ)²/Σλ² of the population covariance, its effective dimensionality.

# %%
mean, var = activity.mean_and_variance(r)
fano = activity.fano_factor(rates, window=10, dt=dt, spiking=True)  # windows of 1 τ
corr = activity.pairwise(activity.noise_correlations(r))
tau_int = activity.autocorrelation_time(r, max_lag=50, dt=dt)
pr = float(activity.participation_ratio(r))
print(f"state variance (median over neurons): {float(np.median(var)):.3g}")
print(f"spike-count Fano factor (median): {float(np.nanmedian(fano)):.3g}")
print(f"noise correlation: mean {float(np.nanmean(corr)):.3f}, mean |rho| {float(np.nanmean(np.abs(corr))):.3f}")
print(f"autocorrelation time (median): {float(np.median(tau_int)):.3g} tau")
print(f"participation ratio: {pr:.2f} of {r.shape[2]} recorded neurons (the readout has d = 2)")

# %% [markdown]
# The participation ratio comes out near d = 2: without extra noise the reservoir's
# fluctuations live in the d directions the noise √2 A⁺ drives, so every neuron is a function of
# the 2-D readout. `sample(..., private_noise=s)` adds independent noise in the null space of
# W_out: it leaves the samples bit-identical and raises the dimensionality of the activity.

# %%
out_private = rsnjax.sample(reservoir, key=jax.random.key(3), num_chains=cfg["num_chains"],
                            num_steps=num_steps, step_size=step_size, burn_in=1000, save_every=record_every,
                            warn=False, record_every=record_every,
                            record_chains=np.arange(cfg["record_chains"]), record_neurons=neurons,
                            private_noise=float(np.sqrt(np.median(var))))
pr_private = float(activity.participation_ratio(out_private.activity))
same_samples = bool(np.array_equal(np.asarray(out.samples), np.asarray(out_private.samples)))
print(f"with private noise: participation ratio {pr_private:.2f}; samples identical: {same_samples}")

# %% [markdown]
# ## 4. Traces and a spike raster
#
# State traces of a few neurons in one chain, and Poisson spikes drawn from their rates
# (one rate unit = 50 spikes per τ, an arbitrary choice: Fano factors of spike counts depend on it).

# %%
show = 8
chain = 0
t = dt * (1 + np.arange(r.shape[1]))
spike_scale = 50.0
fig, axes = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
for i in range(show):
    axes[0].plot(t, np.asarray(r[chain, :, i]) + 2.0 * i, lw=0.8)
axes[0].set_ylabel("state r (offset per neuron)")
counts = np.random.default_rng(1).poisson(spike_scale * dt * np.clip(np.asarray(rates[chain, :, :show]), 0, None))
for i in range(show):
    times = np.repeat(t, counts[:, i]) - dt * np.random.default_rng(2 + i).random(counts[:, i].sum())
    axes[1].vlines(times, i + 0.1, i + 0.9, lw=0.6, color="k")
axes[1].set_ylabel("neuron")
axes[1].set_xlabel("time (τ)")
fig.tight_layout()
fig.savefig(OUT / "activity_raster.png", dpi=120)
plt.close(fig)

# %%
summary = {
    "size": SIZE,
    "activity_shape": list(r.shape),
    "readout_error": readout_error,
    "median_variance": float(np.median(var)),
    "median_fano_spiking": float(np.nanmedian(fano)),
    "mean_abs_noise_correlation": float(np.nanmean(np.abs(corr))),
    "median_autocorrelation_time": float(np.median(tau_int)),
    "participation_ratio": pr,
    "participation_ratio_private_noise": pr_private,
    "samples_identical_with_private_noise": same_samples,
    "num_spikes_in_raster": int(counts.sum()),
}
(OUT / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
