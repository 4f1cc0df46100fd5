"""The main job: train an RSN on a default target, map it onto the reservoir, sample thousands of
chains, and write metrics and a figure.

    rsnjax demo                         # double peak, N = 1000, 10 000 chains, ≈ 1 min on 2 idle cores
    rsnjax demo --target laplace-x      # the paper's heavy-tailed 2-D "X"
    python -m rsnjax.demo --help
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from . import checkpoint, targets
from .cli import _jsonable  # strict JSON: arrays as lists, NaN/inf as None
from .networks import ScoreNetwork
from .reservoir import ReservoirSampler
from .sampling import sample
from .training import fit

TARGETS = {
    "double-peak": targets.double_peak,
    "laplace-x": targets.laplace_x,
    "ring": targets.ring_of_gaussians,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rsnjax demo",
        description="Train an RSN score network by annealed DSM, map it exactly onto a reservoir "
        "circuit, simulate many reservoir chains and report how close the samples are to the target.",
    )
    p.add_argument("--target", choices=sorted(TARGETS), default="double-peak", help="target distribution (default: double-peak)")
    p.add_argument("--hidden", type=int, default=1000, help="reservoir size N (default: 1000)")
    p.add_argument("--activation", choices=["relu", "tanh", "softplus"], default="relu", help="φ (default: relu)")
    p.add_argument("--steps-per-level", type=int, default=None,
                   help="optimiser steps per level (default: fit's, 1000 per level and 160000 at the last); "
                        "the noise levels, optimiser and parameter averaging are fit's defaults")
    p.add_argument("--chains", type=int, default=10_000, help="parallel chains (default: 10000)")
    p.add_argument("--burn-in", type=int, default=1000, help="Euler–Maruyama steps before saving starts (default: 1000)")
    p.add_argument("--steps", type=int, default=20_000,
                   help="Euler–Maruyama steps after burn-in (default: 20000, t = 200: long enough for "
                        "R̂ ≤ 1.01 on the double peak, whose chains switch modes every ≈ 10 time units)")
    p.add_argument("--step-size", type=float, default=0.01, help="dt (default: 0.01)")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed (default: 0)")
    p.add_argument("--out", default="results/demo", help="output directory (default: results/demo)")
    p.add_argument("--overwrite", action="store_true", help="replace files in an existing output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _figure(path: Path, target, net, samples, history, sigma_min, target_samples):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    if target.dim == 1:
        grid = jnp.linspace(-3.5, 3.5, 400)[:, None]
        ax = axes[0]
        ax.hist(np.asarray(samples[:, 0]), bins=120, range=(-3.5, 3.5), density=True, alpha=0.6, label="RSN samples")
        ax.plot(grid[:, 0], np.exp(np.asarray(target.log_prob(grid))), "k", lw=1.5, label="target pdf")
        ax.set_xlabel("x")
        ax.set_ylabel("density")
        ax.set_title(f"{len(samples):,} reservoir chains")
        ax.legend(frameon=False, loc="upper left", fontsize=8)
        ax = axes[1]
        ax.plot(grid[:, 0], np.asarray(target.score(grid))[:, 0], "k", lw=1, label="true score")
        if hasattr(target, "blurred_score"):
            ax.plot(grid[:, 0], np.asarray(target.blurred_score(grid, sigma_min))[:, 0], "k--", lw=1,
                    label=f"true score, σ={sigma_min:.3g} blur")
        ax.plot(grid[:, 0], np.asarray(net(grid))[:, 0], "C3", lw=1.5, label="learned s_θ")
        ax.set_ylim(-12, 12)
        ax.set_xlabel("x")
        ax.set_ylabel("score ∇log p")
        ax.set_title("score")
        ax.legend(frameon=False, fontsize=8)
    else:
        lim = 4.0
        bins = 80
        for ax, data, title in [(axes[0], target_samples, "target samples"), (axes[1], samples, "RSN samples")]:
            d = np.asarray(data)
            ax.hist2d(d[:, 0], d[:, 1], bins=bins, range=[[-lim, lim], [-lim, lim]], cmap="viridis")
            ax.set_aspect("equal")
            ax.set_xlabel("x₁")
            ax.set_ylabel("x₂")
            ax.set_title(f"{title} ({len(d):,})")
    ax = axes[2]
    steps = np.arange(len(history.loss))
    weighted = history.loss * history.sigmas[history.level] ** 2
    ax.semilogy(steps, weighted, lw=0.3, alpha=0.6)
    per_level = len(history.loss) // len(history.sigmas)
    for k in range(1, len(history.sigmas)):
        ax.axvline(k * per_level, color="0.8", lw=0.5)
    ax.set_xlabel("optimiser step (grey lines: next noise level)")
    ax.set_ylabel("σ² · DSM loss")
    ax.set_title("training")
    fig.tight_layout()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, dpi=110, format="png")
    finally:
        plt.close(fig)
    checkpoint.atomic_write_bytes(path, buffer.getvalue())


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    names = ["model.ckpt", "samples.npz", "metrics.json", "metrics.md", "demo.png"]
    existing = [n for n in names if (out / n).exists()]
    if existing and not args.overwrite:
        print(f"error: {out} already holds {', '.join(existing)}; pass --overwrite or choose --out", file=sys.stderr)
        return 3
    out.mkdir(parents=True, exist_ok=True)
    target = TARGETS[args.target]()
    key = jax.random.key(args.seed)
    k_init, k_fit, k_sample, k_eval = jax.random.split(key, 4)

    net = ScoreNetwork(target.dim, args.hidden, activation=args.activation, key=k_init)
    print(f"[1/4] training ScoreNetwork(dim={target.dim}, hidden={args.hidden}, {args.activation}) on {args.target} "
          "with fit's defaults (noise levels from the data, constant Adam with the readout ×10 at σ_min, "
          "parameter average)")
    t0 = time.perf_counter()
    net, history = fit(net, target, steps_per_level=args.steps_per_level, key=k_fit,
                       progress=False if args.no_progress else None)
    train_time = time.perf_counter() - t0
    total_steps = len(history.loss)
    sigmas = np.asarray(history.sigmas)
    print(f"      {len(sigmas)} levels σ = {sigmas[0]:.3g} → {sigmas[-1]:.3g}; "
          f"{total_steps} steps in {train_time:.1f} s ({total_steps / train_time:.0f} steps/s incl. compilation)")
    checkpoint.save(out / "model.ckpt", net, metadata={"target": args.target, "sigmas": sigmas.tolist()})

    print("[2/4] mapping onto the reservoir: W_out = A, W_rec = B·A (rank "
          f"{target.dim}, kept factored), I = b, noise √2·A⁺")
    reservoir = ReservoirSampler.from_score_network(net)

    print(f"[3/4] simulating {args.chains:,} reservoir chains (N = {args.hidden}) for {args.burn_in} + {args.steps} steps, "
          f"dt = {args.step_size}, from r₀ ~ U[−2, 2]^N")
    save_every = max(1, args.steps // 20)
    while args.steps % save_every:
        save_every -= 1
    result = sample(reservoir, key=k_sample, num_chains=args.chains, num_steps=args.steps, step_size=args.step_size,
                    burn_in=args.burn_in, save_every=save_every, init="uniform")
    rate = args.chains * (args.burn_in + args.steps) / result.wall_time
    print(f"      {result.wall_time:.1f} s ({rate / 1e6:.2f} M chain-steps/s), compile {result.compile_time:.1f} s; "
          f"{result.num_escaped} chains outside the training data, R̂ {result.rhat:.3f}")
    buffer = io.BytesIO()
    np.savez(buffer, samples=np.asarray(result.samples), trajectory=np.asarray(result.trajectory))
    checkpoint.atomic_write_bytes(out / "samples.npz", buffer.getvalue())

    print("[4/4] metrics against the target")
    from . import metrics

    k_ref, k_metrics = jax.random.split(k_eval)
    reference = target.sample(k_ref, args.chains)
    values = metrics.evaluate(result.samples, target, key=k_metrics, reference_samples=reference,
                              trajectory=result.trajectory, wall_time=result.wall_time,
                              score_fn=net,
                              sigma=float(sigmas[-1]) if hasattr(target, "blurred_score") else None)
    values.update({
        "target": args.target, "hidden": args.hidden, "activation": args.activation,
        "num_chains": args.chains, "burn_in": args.burn_in, "num_steps": args.steps, "step_size": args.step_size,
        "train_seconds": train_time, "train_steps": total_steps,
        "sample_seconds": result.wall_time, "sample_compile_seconds": result.compile_time,
        "chain_steps_per_second": rate, "escaped_chains": result.num_escaped, "sample_rhat": result.rhat, "jax_version": jax.__version__, "device": str(jax.devices()[0]),
    })
    table = metrics.format_table(values)
    print(table)
    checkpoint.atomic_write_bytes(out / "metrics.json",
                                  (json.dumps(_jsonable(values), indent=2, allow_nan=False) + "\n").encode())
    checkpoint.atomic_write_bytes(out / "metrics.md", (table + "\n").encode())
    _figure(out / "demo.png", target, net, result.samples, history, float(sigmas[-1]), reference)
    print(f"wrote {out}/model.ckpt, samples.npz, metrics.json, metrics.md, demo.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
