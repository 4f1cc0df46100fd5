"""Sample quality with `fit`'s own defaults, on 13 low-dimensional targets, sampled as the reservoir.

For each target: 20 000 training points (given to `fit` as an array, even for the analytic
targets), ``fit(ScoreNetwork(d, 1000, key=...), data, key=...)`` and nothing else (a *variant*
changes one argument), the exact reservoir mapping, then 2000 reservoir chains started at
held-out data points and run for t = 5 (dt = min(1e-3, `rsnjax.stable_step_size`)). Reported per target:

- ``mmd2``: MMD² (RBF, bandwidth = the median distance of the data) of the final readouts against
  2000 fresh data points;
- ``floor``: the null floor, mean + 2 sd of the same MMD² between two fresh data sets
  (8 repeats); ``blur``: the blur bias, mean MMD² of data blurred by N(0, σ_min²) against fresh
  data; goal: ``mmd2 <= 3 * max(floor, blur)``;
- ``escaped``: chains outside the training data's extent (`SampleResult.escaped`).

    python benchmarks/quality.py                        # all targets, the defaults → benchmarks/results/quality.json
    python benchmarks/quality.py --variant cosine       # Adam cosine-decayed within each level (rsnjax.cosine_optimizer)
    python benchmarks/quality.py --variant no-ema --targets moons,circles
    python benchmarks/quality.py --variant stf-broad --targets moons --seed 1   # saved as "stf-broad@seed1"
    python benchmarks/quality.py --table                # print the markdown tables of all saved variants
    python benchmarks/quality.py --variance             # variance of the DSM and stable targets at σ_min

Results are saved per variant (``--seed 0``) or per variant and seed (``variant@seedS``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = {
    "default": {},
    "cosine": {"optimizer": "cosine"},
    "no-ema": {"ema_decay": None},
    "no-antithetic": {"antithetic": False},
    "no-confine": {"confine": None},
    "none": {"ema_decay": None, "antithetic": False, "confine": None},
    # the stable target field (`fit`'s stable_target, K reference rows) and a broader proposal
    "stf": {"stable_target": 2048},
    "stf-broad": {"stable_target": 2048, "broad_noise": (0.25, 3.0)},
    "stf-1024": {"stable_target": 1024},
    "stf-4096": {"stable_target": 4096},
}

RESULTS = Path(__file__).resolve().parent / "results" / "quality.json"
NUM_TRAIN, NUM_REF, NUM_CHAINS, HIDDEN, T_TOTAL = 20_000, 2000, 2000, 1000, 5.0


def run_one(name, draw, variant, seed=0):
    import jax

    import rsnjax
    from rsnjax import metrics

    rng = np.random.default_rng(seed)
    train = draw(rng, NUM_TRAIN)
    start = draw(rng, NUM_CHAINS)
    ref = draw(rng, NUM_REF)
    d = train.shape[1]
    kwargs = dict(VARIANTS[variant])
    if kwargs.get("optimizer") == "cosine":
        kwargs["optimizer"] = rsnjax.cosine_optimizer(2000)
    net = rsnjax.ScoreNetwork(d, HIDDEN, key=jax.random.key(seed))
    t0 = time.perf_counter()
    net, history = rsnjax.fit(net, np.asarray(train, np.float32), key=jax.random.key(seed + 1),
                              progress=False, **kwargs)
    train_time = time.perf_counter() - t0
    steps = int(np.sum(np.isfinite(history.loss)))
    sigma_min = float(history.sigmas[-1])
    reservoir = rsnjax.ReservoirSampler.from_score_network(net)
    step_size = min(1e-3, rsnjax.stable_step_size(reservoir, train))
    num_steps = int(round(T_TOTAL / step_size))
    save_every = num_steps // 10
    num_steps = save_every * 10
    r0 = np.asarray(start, np.float64) @ np.asarray(reservoir.noise_map, np.float64).T / np.sqrt(2.0)
    t0 = time.perf_counter()
    out = rsnjax.sample(reservoir, key=jax.random.key(seed + 2), num_chains=NUM_CHAINS,
                        num_steps=num_steps, step_size=step_size, initial_state=r0.astype(np.float32),
                        save_every=save_every, on_nonfinite="flag", warn=False)
    sample_time = time.perf_counter() - t0
    x = np.asarray(out.samples, np.float64)
    ok = np.isfinite(x).all(1)
    bandwidth = float(np.median(np.linalg.norm(ref[:1000, None] - ref[None, :1000], axis=-1)))
    mmd = lambda a, b: float(metrics.mmd(np.asarray(a, np.float32), np.asarray(b, np.float32),  # noqa: E731
                                         bandwidth=bandwidth))
    value = mmd(x[ok], ref)
    nulls = [mmd(draw(rng, NUM_CHAINS), draw(rng, NUM_REF)) for _ in range(8)]
    blurs = [mmd(draw(rng, NUM_CHAINS) + sigma_min * rng.normal(size=(NUM_CHAINS, d)), draw(rng, NUM_REF))
             for _ in range(4)]
    floor = float(np.mean(nulls) + 2 * np.std(nulls, ddof=1))
    blur = float(np.mean(blurs))
    goal = 3 * max(floor, blur)
    return {
        "target": name, "dim": d, "variant": variant, "mmd2": value, "floor": floor, "blur": blur,
        "goal": goal, "ratio": value / max(floor, blur), "pass": bool(value <= goal and out.num_escaped == 0),
        "escaped": int(out.num_escaped), "nonfinite": int(out.num_nonfinite),
        "rhat": out.rhat, "sigma_max": float(history.sigmas[0]), "sigma_min": sigma_min,
        "levels": len(history.sigmas), "steps": steps, "train_s": train_time,
        "steps_per_s": steps / train_time, "step_size": step_size, "sample_steps": num_steps,
        "sample_s": sample_time,
    }


def target_variance(name, draw, seed=0, num=4096, sizes=(1024, 2048, 4096)):
    """Per-coordinate variance, around the exact score of the σ_min-blurred training set, of DSM's
    target −ε/σ and of the stable target over K reference rows (the row itself and K − 1 random
    ones), at x̃ = x + σ_min ε for ``num`` training rows x: ``{"dsm": v, K: v, ...}``."""
    import jax
    import jax.numpy as jnp

    import rsnjax

    rng = np.random.default_rng(seed)
    train = jnp.asarray(draw(rng, NUM_TRAIN), jnp.float32)
    sigma = float(rsnjax.default_sigmas(np.asarray(train))[-1])
    x = train[:num]
    eps = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    noisy = x + sigma * eps
    exact = jnp.concatenate([rsnjax.stable_target(noisy[i:i + 256], train, sigma) for i in range(0, num, 256)])
    d = x.shape[1]
    out = {"sigma_min": sigma, "dsm": float(jnp.mean((-eps / sigma - exact) ** 2))}
    for k in sizes:
        t = jnp.stack([rsnjax.stable_target(noisy[i:i + 1], jnp.concatenate(
            [x[i:i + 1], train[rng.integers(0, NUM_TRAIN, k - 1)]]), sigma)[0] for i in range(0, num, 16)])
        out[k] = float(jnp.mean((t - exact[::16]) ** 2))
    return out


def table(rows) -> str:
    head = ("| target | d | MMD² | floor | blur bias | MMD² / max(floor, blur) | escaped | R̂ | σ_max → σ_min (levels) "
            "| train s | pass |\n|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['target']} | {r['dim']} | {r['mmd2']:.2e} | {r['floor']:.1e} | {r['blur']:.1e} | "
            f"{r['ratio']:.2f} | {r['escaped']} | {r['rhat']:.3f} | {r['sigma_max']:.3g} → {r['sigma_min']:.3g} "
            f"({r['levels']}) | {r['train_s']:.1f} | {'yes' if r['pass'] else '**no**'} |")
    passed = sum(r["pass"] for r in rows)
    lines.append(f"\n{passed} of {len(rows)} targets meet the goal.")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", default="default", choices=sorted(VARIANTS))
    p.add_argument("--targets", default=None, help="comma-separated subset (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--table", action="store_true", help="print the tables of the saved results and exit")
    p.add_argument("--variance", action="store_true",
                   help="print the variance of the DSM and stable targets at σ_min (no training) and exit")
    args = p.parse_args(argv)
    saved = json.loads(args.out.read_text()) if args.out.exists() else {}
    if args.table:
        for variant, rows in saved.get("variants", {}).items():
            print(f"\n### {variant}\n\n{table(list(rows.values()))}")
        return 0
    import jax

    import quality_data

    sets = quality_data.all_sets()
    names = args.targets.split(",") if args.targets else list(sets)
    if args.variance:
        print("| target | σ_min | DSM target | STF K = 1024 | K = 2048 | K = 4096 |\n|---|---|---|---|---|---|")
        for name in names:
            v = target_variance(name, sets[name][0], seed=args.seed)
            print(f"| {name} | {v['sigma_min']:.3g} | {v['dsm']:.3g} | {v[1024]:.3g} | {v[2048]:.3g} | {v[4096]:.3g} |",
                  flush=True)
        return 0
    rows = []
    for name in names:
        draw, _ = sets[name]
        row = run_one(name, draw, args.variant, seed=args.seed)
        rows.append(row)
        print(f"{name:18s} mmd2 {row['mmd2']:.2e} ratio {row['ratio']:6.2f} escaped {row['escaped']:4d} "
              f"rhat {row['rhat']:.3f} sigmas {row['sigma_max']:.3g}->{row['sigma_min']:.3g} ({row['levels']}) "
              f"train {row['train_s']:.1f}s ({row['steps_per_s']:.0f} steps/s) sample {row['sample_s']:.1f}s "
              f"{'PASS' if row['pass'] else 'FAIL'}", flush=True)
    import diffrax
    import equinox
    import optax

    entry = args.variant if args.seed == 0 else f"{args.variant}@seed{args.seed}"
    saved.setdefault("variants", {}).setdefault(entry, {})
    for row in rows:
        row["seed"] = args.seed
        saved["variants"][entry][row["target"]] = row
    saved["versions"] = {"jax": jax.__version__, "equinox": equinox.__version__,
                         "optax": optax.__version__, "diffrax": diffrax.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(saved, indent=1))
    print("\n" + table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
