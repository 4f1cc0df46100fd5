"""Where the moons target fails (docs/QUALITY.md, "What limits the thin curved sets").

Trains `fit(ScoreNetwork(2, 1000), moons, key=...)` with the defaults (as `quality.py` does),
then prints

- the mass per quarter of the upper arc implied by the learned σ_min score (the score integrated
  along the arc's centre line, times the integral across it), next to the same for the exact
  score of the σ_min-blurred training set (a Gaussian kernel density of the 20 000 points);
- the chains started at fresh data and run to t = 5 (output Langevin, dt from
  `rsnjax.stable_step_size`): the fraction in each quarter of each arc (the first quarter is the
  moon's inner end) and the fraction more than 2 noise widths off the arcs, against fresh data.

Usage: ``python benchmarks/moons_diagnostic.py [--seed 0]`` (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    import jax
    import jax.numpy as jnp

    import rsnjax
    from quality_data import moons

    rng = np.random.default_rng(args.seed)
    train = moons(rng, 20_000).astype(np.float32)
    start, ref = moons(rng, 2000), moons(rng, 20_000)
    net, history = rsnjax.fit(rsnjax.ScoreNetwork(2, 1000, key=jax.random.key(args.seed)), train,
                              key=jax.random.key(args.seed + 1), progress=False)
    sigma = float(history.sigmas[-1])

    # the upper arc: centre (0, 0), radius 1 before the data's shift and ×2 scaling
    ts = np.linspace(0.02, np.pi - 0.02, 200)
    centre = (np.stack([np.cos(ts), np.sin(ts)], -1) - [0.5, 0.25]) * 2.0
    tangent = np.stack([-np.sin(ts), np.cos(ts)], -1) * 2.0
    normal = np.stack([np.cos(ts), np.sin(ts)], -1)
    offsets = np.linspace(-0.3, 0.3, 61)
    points = (centre[:, None] + offsets[None, :, None] * normal[:, None]).reshape(-1, 2).astype(np.float32)
    data = jnp.asarray(train)

    @jax.jit
    def kde_score(p):  # the score of the training set blurred by N(0, σ² I)
        diff = p[:, None, :] - data[None]
        weights = jax.nn.softmax(-0.5 * jnp.sum(diff * diff, -1) / sigma**2, axis=1)
        return -jnp.einsum("pn,pnd->pd", weights, diff) / sigma**2

    scores = {"learned": np.asarray(net(jnp.asarray(points))),
              "exact (blurred data)": np.concatenate([np.asarray(kde_score(jnp.asarray(points[i:i + 610])))
                                                      for i in range(0, len(points), 610)])}
    print(f"σ_min = {sigma:.4g}; mass per quarter of the upper arc (relative to its mean), width factor:")
    for name, s in scores.items():
        s = s.reshape(len(ts), len(offsets), 2)
        across = np.cumsum(np.sum(s * normal[:, None], -1), axis=1) * (offsets[1] - offsets[0])
        across -= across[:, 30:31]
        along = np.sum(s[:, 30] * tangent, -1)
        log_ridge = np.concatenate([[0.0], np.cumsum(0.5 * (along[1:] + along[:-1]) * np.diff(ts))])
        width = np.sum(np.exp(across), axis=1) * (offsets[1] - offsets[0])
        mass = np.exp(log_ridge) * width
        mass /= mass.mean()
        print(f"  {name:22s} {np.round([mass[i * 50:(i + 1) * 50].mean() for i in range(4)], 3)}  "
              f"width {np.round([width[i * 50:(i + 1) * 50].mean() for i in range(4)], 3)}")

    step_size = min(1e-3, rsnjax.stable_step_size(net, train))
    num_steps = int(5 / step_size) // 5 * 5
    out = rsnjax.sample(net, key=jax.random.key(args.seed + 2), num_chains=len(start), num_steps=num_steps,
                        step_size=step_size, initial_state=start.astype(np.float32), save_every=num_steps // 5,
                        warn=False)

    def describe(x):
        u = x / 2.0 + [0.5, 0.25]
        d_up = np.abs(np.linalg.norm(u, axis=1) - 1) + 10 * (u[:, 1] < -0.1)
        d_lo = np.abs(np.linalg.norm(u - [1, 0.5], axis=1) - 1) + 10 * (u[:, 1] > 0.6)
        up = d_up < d_lo
        upper = np.histogram(np.arctan2(u[up, 1], u[up, 0]), bins=4, range=(0, np.pi))[0] / len(x)
        lower = np.histogram(np.arctan2(0.5 - u[~up, 1], 1 - u[~up, 0]), bins=4, range=(0, np.pi))[0] / len(x)
        off = np.mean(np.minimum(d_up, d_lo) > 0.125)  # > 2 noise widths (0.06) off the arcs
        return f"upper {up.mean():.3f}  off the arcs {off:.3f}  upper quarters {upper.round(3)}  lower quarters {lower.round(3)}"

    print(f"chains from fresh data, dt = {step_size:.3g} (first quarter = the inner end):")
    print(f"  data   {describe(ref)}")
    for i in range(5):
        print(f"  t = {i + 1}  {describe(np.asarray(out.trajectory[i]))}")


if __name__ == "__main__":
    main()
