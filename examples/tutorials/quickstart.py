# %% [markdown]
# # Quickstart: train, map, sample, measure
#
# This tutorial trains a reservoir-sampler network (RSN) on a built-in target, the 1-D double
# peak ½N(−1, 0.5²) + ½N(1, 0.5²), maps it exactly onto a recurrent circuit, runs thousands of
# circuit chains at once, and measures the samples against the target with noise floors.
#
# Run it as a plain script (no notebook tooling needed):
#
# ```bash
# python examples/tutorials/quickstart.py                              # full size: ≈ 4 min on 2 shared cores
# RSNJAX_TUTORIAL_SIZE=tiny python examples/tutorials/quickstart.py    # seconds: what the tests run
# ```
#
# Figures and a `summary.json` go to `results/tutorials/quickstart/` (or `$RSNJAX_TUTORIAL_OUT`).
# The file is a jupytext "percent" script: `jupytext --to ipynb` turns it into a notebook.

# %%
import json
import os
from pathlib import Path

import jax
import matplotlib

matplotlib.use("Agg")  # write files, open no window
import matplotlib.pyplot as plt
import numpy as np

import rsnjax
from rsnjax import metrics, targets

SIZE = os.environ.get("RSNJAX_TUTORIAL_SIZE", "full")
OUT = Path(os.environ.get("RSNJAX_TUTORIAL_OUT", "results/tutorials/quickstart"))
OUT.mkdir(parents=True, exist_ok=True)
SETTINGS = {
    # a few seconds: a small network, short training, few chains (the numbers are rough)
    # and a coarser noise schedule (σ_min = 0.1), which trains in a few hundred steps
    "tiny": dict(num_data=4000, neurons=128, sigma_min=0.1, num_levels=5, steps_per_level=200,
                 num_chains=1000, num_steps=4000, burn_in=1000, save_every=200),
    # the getting-started page's settings: N = 1000 units, fit's default schedule, 10 000 chains for
    # t ≈ 140 (R̂ 1.002, W₁ 2× its floor; 2000 steps instead leave R̂ at 1.18)
    "full": dict(num_data=20_000, neurons=1000, sigma_min=None, num_levels=None, steps_per_level=2000,
                 num_chains=10_000, num_steps=20_000, burn_in=5000, save_every=1000),
}
if SIZE not in SETTINGS:
    raise ValueError(f"RSNJAX_TUTORIAL_SIZE must be one of {sorted(SETTINGS)}, got {SIZE!r}")
cfg = SETTINGS[SIZE]

# %% [markdown]
# ## 1. Data from a target
#
# A target in `rsnjax.targets` has `sample`, `log_prob` and `score`. Training needs only samples:
# any `(num, d)` array works the same way (see the "your own data" tutorial).

# %%
target = targets.double_peak()
data = np.asarray(target.sample(jax.random.key(0), cfg["num_data"]))
print("data:", data.shape, "mean", data.mean().round(3), "std", data.std().round(3))

# %% [markdown]
# ## 2. Train the score network
#
# s(x) = −x + A φ(Bx + b) with N hidden units, trained by annealed denoising score matching.
# `fit` derives the noise schedule from the data (σ_max the largest pairwise distance down to
# σ_min, the data's finest scale: the model learns the data blurred by N(0, σ_min²)).

# %%
sigmas = rsnjax.default_sigmas(data)  # what fit uses when `sigmas` is not given
if cfg["sigma_min"] is not None:  # the tiny size: same σ_max, a coarser σ_min, fewer levels
    sigmas = rsnjax.geometric_sigmas(sigmas[0], cfg["sigma_min"], cfg["num_levels"])
net = rsnjax.ScoreNetwork(1, cfg["neurons"], key=jax.random.key(1))
net, history = rsnjax.fit(net, data, sigmas=sigmas, steps_per_level=cfg["steps_per_level"],
                          key=jax.random.key(2), progress=False)
print(f"{len(sigmas)} noise levels, sigma {sigmas[0]:.3g} -> {sigmas[-1]:.3g}")

# %% [markdown]
# ## 3. Map it onto a circuit and sample
#
# The mapping is exact: W_out = A, W_rec = BA (kept low-rank, never formed), I = b, noise √2 A⁺.
# `stable_step_size` measures the trained score's stiffness on the data and returns a step size
# whose discretisation bias is about 2.5 % of the local variance.

# %%
reservoir = rsnjax.ReservoirSampler.from_score_network(net)
step_size = rsnjax.stable_step_size(reservoir, data)
out = rsnjax.sample(reservoir, key=jax.random.key(3), num_chains=cfg["num_chains"],
                    num_steps=cfg["num_steps"], step_size=step_size, burn_in=cfg["burn_in"],
                    save_every=cfg["save_every"])
print("samples", out.samples.shape, "trajectory", out.trajectory.shape)
print(f"step size {step_size:.3g}, {out.num_escaped} escaped chains, R-hat {out.rhat:.3f}, "
      f"{out.wall_time:.2f} s (+ {out.compile_time:.2f} s compile)")

# %% [markdown]
# ## 4. Numbers with noise floors
#
# `metrics.evaluate` computes every metric that applies, and for the two-sample ones also the
# value between two exact target sample sets of the same size (`<name>_floor`): a sampler at
# its floor is indistinguishable from the target at this sample size.

# %%
report = metrics.evaluate(out.samples, target, key=jax.random.key(4), trajectory=out.trajectory,
                          max_samples=2000)
print(metrics.format_table(report))

# %% [markdown]
# ## 5. A figure
#
# The histogram of the circuit's samples against the target density.

# %%
grid = np.linspace(-3, 3, 400)[:, None]
fig, ax = plt.subplots(figsize=(5, 3))
ax.hist(np.asarray(out.samples[:, 0]), bins=60, range=(-3, 3), density=True, alpha=0.6, label="RSN samples")
ax.plot(grid[:, 0], np.exp(np.asarray(target.log_prob(grid))), "k", lw=1.5, label="target")
ax.set_xlabel("x")
ax.set_ylabel("density")
ax.legend(frameon=False)
fig.tight_layout()
fig.savefig(OUT / "quickstart_histogram.png", dpi=120)
plt.close(fig)

# %% [markdown]
# ## What was measured
#
# `summary.json` keeps the numbers above; the tests read it.

# %%
summary = {
    "size": SIZE,
    "final_level_loss": float(history.level_loss[-1]),
    "step_size": float(step_size),
    "num_escaped": out.num_escaped,
    "rhat": float(out.rhat),
    "sample_mean": float(np.mean(out.samples)),
    "sample_std": float(np.std(out.samples)),
    "fraction_positive": float(np.mean(np.asarray(out.samples) > 0)),
    "w1": report["w1"],
    "w1_floor": report["w1_floor"],
    "mmd2": report["mmd2"],
    "mmd2_floor": report["mmd2_floor"],
}
(OUT / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
