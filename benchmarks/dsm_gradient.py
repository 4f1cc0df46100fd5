"""The DSM training step's gradient, written three ways, timed side by side.

`fit` computes a `ScoreNetwork`'s DSM gradient with `rsnjax.dsm_value_and_grad`, written out by
hand; this script measures why. For each (d, N, batch) it times a jit-compiled `lax.scan` of 250
SGD steps (no data drawing, no Adam: only the loss and its gradient) for

- **autodiff**: `jax.value_and_grad` of ½·mean‖s(x̃) + ε/σ‖² with s(x) = −x + A φ(Bx + b) written
  as matrix products, as a user would;
- **hand-written, matrix form**: the same gradient by hand (∂A = gᵀh, ∂B = g_hᵀx̃, ∂b = Σ g_h);
- **hand-written, as fit uses it**: `rsnjax.dsm_value_and_grad` (d separate matrix-vector
  products and broadcasts while d ≤ `rsnjax.dsm.SMALL_DIM`, the matrix form above that).

Every variant is checked against autodiff before it is timed. Prints a Markdown table and writes
``benchmarks/results/dsm_gradient.json``::

    python benchmarks/dsm_gradient.py            # ≈ 1 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import rsnjax
from rsnjax.dsm import dsm_loss_with_noise

STEPS = 250
SIGMA = 0.5
CONFIGS = [(1, 1000, 128), (2, 1000, 128), (4, 1000, 128), (8, 1000, 128), (16, 1000, 128),
           (2, 300, 128), (2, 3000, 128), (2, 1000, 32), (2, 1000, 512)]


def autodiff(net, x, noise, sigma):
    return eqx.filter_value_and_grad(lambda m: dsm_loss_with_noise(m, x, noise, sigma))(net)


def matrix_form(net, x, noise, sigma):
    noisy = x + sigma * noise
    pre = noisy @ net.B.T + net.b
    h = rsnjax.networks.get_activation(net.activation)(pre)
    residual = h @ net.A.T - noisy + noise / sigma
    g = residual / x.shape[0]
    g_hidden = (g @ net.A) * rsnjax.dsm._activation_derivative(net.activation, pre, h)
    grads = eqx.tree_at(lambda m: (m.A, m.B, m.b), net, (g.T @ h, g_hidden.T @ noisy, g_hidden.sum(0)))
    return 0.5 * jnp.mean(jnp.sum(residual**2, -1)), eqx.filter(grads, eqx.is_inexact_array)


VARIANTS = {"autodiff": autodiff, "hand-written, matrix form": matrix_form,
            "hand-written, as fit uses it": rsnjax.dsm_value_and_grad}


def seconds_per_step(value_and_grad, net, x, noise, repeats: int) -> float:
    params, static = eqx.partition(net, eqx.is_inexact_array)

    def step(p, t):
        loss, grads = value_and_grad(eqx.combine(p, static), x + 0 * t, noise, SIGMA)
        return jax.tree_util.tree_map(lambda a, b: a - 1e-4 * b, p, grads), loss

    run = jax.jit(lambda p: jax.lax.scan(step, p, jnp.zeros(STEPS, x.dtype)))
    jax.block_until_ready(run(params))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(run(params))
        best = min(best, time.perf_counter() - t0)
    return best / STEPS


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--activation", default="relu", choices=sorted(rsnjax.ACTIVATIONS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "dsm_gradient.json"))
    args = parser.parse_args(argv)
    rows = []
    print("| d | N | batch | " + " | ".join(f"{v} (µs/step)" for v in VARIANTS) + " | fit's form is |")
    print("|---|---|---|" + "---|" * (len(VARIANTS) + 1))
    for dim, hidden, batch in CONFIGS:
        net = rsnjax.ScoreNetwork(dim, hidden, activation=args.activation, key=jax.random.key(dim))
        kx, kn = jax.random.split(jax.random.key(hidden + batch))
        x = jax.random.normal(kx, (batch, dim))
        noise = jax.random.normal(kn, (batch, dim))
        _, ref = jax.jit(autodiff)(net, x, noise, SIGMA)
        times = {}
        for name, fn in VARIANTS.items():
            _, grads = jax.jit(fn)(net, x, noise, SIGMA)
            for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref)):
                np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6 * float(jnp.max(jnp.abs(b))))
            times[name] = seconds_per_step(fn, net, x, noise, args.repeats)
        speedup = times["autodiff"] / times["hand-written, as fit uses it"]
        rows.append({"dim": dim, "hidden": hidden, "batch": batch, "activation": args.activation,
                     "seconds_per_step": times, "speedup_vs_autodiff": speedup})
        print(f"| {dim} | {hidden} | {batch} | " + " | ".join(f"{1e6 * t:.1f}" for t in times.values())
              + f" | {speedup:.2f}× faster |", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"jax": jax.__version__, "equinox": eqx.__version__, "rsnjax": rsnjax.__version__,
            "machine": platform.processor() or platform.machine(), "cpus": __import__("os").cpu_count(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "steps": STEPS, "small_dim": rsnjax.dsm.SMALL_DIM}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
