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
    python benchmarks/quality.py --seeds 0,1,2 --targets moons,circles   # each seed under its own key
    python benchmarks/quality.py --seeds-table 0,1,2 --variant default   # ratio per seed, pass over all seeds
    python benchmarks/quality.py --study-table          # the σ_min study's table (docs/QUALITY.md)
    python benchmarks/quality.py --refloor final-160k   # re-judge saved rows against the 64-draw floor
    python benchmarks/quality.py --table                # print the markdown tables of all saved variants
    python benchmarks/quality.py --variance             # variance of the DSM and stable targets at σ_min

Results are saved per variant (``--seed 0``) or per variant and seed (``variant@seedS``), each row
as soon as it is measured. ``--seeds 0,1,2`` runs every target on each seed in one call;
``--seeds-table`` prints, per target, the ratio on each seed and whether it passed on all of them.
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
    # the σ_min level's budget (`rsnjax.default_steps`' last level; the others keep 1000 steps);
    # these and the rest of the study below ran without the readout factor (the default then)
    "final-40k": {"readout_factor": 1.0, "final_steps": 40_000},
    "final-80k": {"readout_factor": 1.0, "final_steps": 80_000},
    "final-120k": {"readout_factor": 1.0, "final_steps": 120_000},
    "final-160k": {"readout_factor": 1.0, "final_steps": 160_000},
    # a larger batch at σ_min only (`fit`'s per-level batch_size; 128 at the other levels)
    "final-batch-512": {"readout_factor": 1.0, "final_batch": 512},
    # the loss weighted by p̂(x̃)^(−α) (`fit`'s density_weight)
    "density-0.5": {"readout_factor": 1.0, "density_weight": 0.5},
    "density-1": {"readout_factor": 1.0, "density_weight": 1.0},
    "final-40k-density-0.5": {"readout_factor": 1.0, "final_steps": 40_000, "density_weight": 0.5},
    "final-40k-density-1": {"readout_factor": 1.0, "final_steps": 40_000, "density_weight": 1.0},
    "final-80k-density-1": {"readout_factor": 1.0, "final_steps": 80_000, "density_weight": 1.0},
    # the readout's step × F at the last level (`fit`'s readout_factor), with 20 000 or more steps there
    "readout-10": {"readout_factor": 10.0, "final_steps": 20_000},
    "readout-30": {"readout_factor": 30.0, "final_steps": 20_000},
    "readout-60": {"readout_factor": 60.0, "final_steps": 20_000},
    "readout-10-final-80k": {"readout_factor": 10.0, "final_steps": 80_000},
    "readout-20-final-40k": {"readout_factor": 20.0, "final_steps": 40_000},
    "readout-20-final-80k": {"readout_factor": 20.0, "final_steps": 80_000},
    "readout-30-final-40k": {"readout_factor": 30.0, "final_steps": 40_000},
    "readout-10-final-160k": {"readout_factor": 10.0, "final_steps": 160_000},
    "no-readout": {"readout_factor": 1.0},
    # a longer parameter average (≈ the last 10 000 steps; the warm-up keeps it short at the other levels)
    "ema-0.9999": {"readout_factor": 1.0, "ema_decay": 0.9999},
    "final-40k-ema-0.9999": {"readout_factor": 1.0, "final_steps": 40_000, "ema_decay": 0.9999},
    "final-80k-ema-0.9999": {"readout_factor": 1.0, "final_steps": 80_000, "ema_decay": 0.9999},
}

RESULTS = Path(__file__).resolve().parent / "results" / "quality.json"
NUM_TRAIN, NUM_REF, NUM_CHAINS, HIDDEN, T_TOTAL = 20_000, 2000, 2000, 1000, 5.0
#: null MMD² draws behind the floor (mean + 2 sd). Until 2026-12-02 it was 8, which put circles'
#: seed-0 floor at 1.6e-4 where 64 draws give 6.0e-4: an 8-draw sd is too noisy a gate.
NULL_REPEATS = 64


def floor_and_blur(draw, rng, d, sigma_min, mmd):
    """The null floor (mean + 2 sd of `NULL_REPEATS` MMD² between two fresh sets) and the blur bias
    (mean MMD² of 4 σ_min-blurred fresh sets), drawn from ``rng`` after the run's own sets."""
    nulls = [mmd(draw(rng, NUM_CHAINS), draw(rng, NUM_REF)) for _ in range(NULL_REPEATS)]
    blurs = [mmd(draw(rng, NUM_CHAINS) + sigma_min * rng.normal(size=(NUM_CHAINS, d)), draw(rng, NUM_REF))
             for _ in range(4)]
    return float(np.mean(nulls) + 2 * np.std(nulls, ddof=1)), float(np.mean(blurs))


def refloor(saved: dict, variants, sets) -> int:
    """Re-judge saved rows against the floor of `NULL_REPEATS` draws: each row's own MMD² is kept,
    its floor and blur bias are drawn again exactly as `run_one` draws them (the same seed, after
    the same training, start and reference sets) and its ratio and verdict recomputed. Rows
    already at `NULL_REPEATS` are left alone; the old values stay as ``floor_8`` etc. Returns
    the number of rows re-judged."""
    from rsnjax import metrics

    cache, count = {}, 0
    for variant in variants:
        for name, row in saved.get("variants", {}).get(variant, {}).items():
            if row.get("floor_draws", 8) == NULL_REPEATS:
                continue
            seed = int(variant.rsplit("@seed", 1)[1]) if "@seed" in variant else 0
            key = (name, seed, row["sigma_min"])
            if key not in cache:
                draw = sets[name][0]
                rng = np.random.default_rng(seed)
                draw(rng, NUM_TRAIN), draw(rng, NUM_CHAINS)
                ref = draw(rng, NUM_REF)
                bandwidth = float(np.median(np.linalg.norm(ref[:1000, None] - ref[None, :1000], axis=-1)))
                mmd = lambda a, b, h=bandwidth: float(metrics.mmd(np.asarray(a, np.float32),  # noqa: E731
                                                                  np.asarray(b, np.float32), bandwidth=h))
                cache[key] = floor_and_blur(draw, rng, ref.shape[1], row["sigma_min"], mmd)
            floor, blur = cache[key]
            old = {f"{k}_8": row[k] for k in ("floor", "blur", "goal", "ratio", "pass")}
            goal = 3 * max(floor, blur)
            row.update(old, floor=floor, blur=blur, goal=goal, ratio=row["mmd2"] / max(floor, blur),
                       floor_draws=NULL_REPEATS, **{"pass": bool(row["mmd2"] <= goal and row["escaped"] == 0)})
            count += 1
    return count


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
    final_steps, final_batch = kwargs.pop("final_steps", None), kwargs.pop("final_batch", None)
    levels = len(rsnjax.default_sigmas(np.asarray(train, np.float32)))
    if final_steps is not None:  # the default schedule's levels, with this many steps at the last
        kwargs["steps_per_level"] = rsnjax.default_steps(levels)[:-1] + [final_steps]
    if final_batch is not None:  # the default batch at every level but the last
        kwargs["batch_size"] = [rsnjax.training.DEFAULT_BATCH_SIZE] * (levels - 1) + [final_batch]
    net = rsnjax.ScoreNetwork(d, HIDDEN, key=jax.random.key(seed))
    t0 = time.perf_counter()
    net, history = rsnjax.fit(net, np.asarray(train, np.float32), key=jax.random.key(seed + 1),
                              progress=False, **kwargs)
    if final_steps is not None or final_batch is not None:
        assert len(history.sigmas) == levels, "default_sigmas of the data differs from fit's schedule"
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
    floor, blur = floor_and_blur(draw, rng, d, sigma_min, mmd)
    goal = 3 * max(floor, blur)
    return {
        "target": name, "dim": d, "variant": variant, "mmd2": value, "floor": floor, "blur": blur,
        "floor_draws": NULL_REPEATS,
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


def entry_name(variant: str, seed: int) -> str:
    """The JSON key of a variant's results on one seed (seed 0: the variant's name alone)."""
    return variant if seed == 0 else f"{variant}@seed{seed}"


def seeds_table(saved: dict, variant: str, seeds) -> str:
    """Per target: MMD² / max(floor, blur bias) on each seed (✗: goal missed or a chain escaped)
    and whether the goal was met on every seed measured."""
    variants = saved.get("variants", {})
    names = []
    for s in seeds:
        names += [n for n in variants.get(entry_name(variant, s), {}) if n not in names]
    head = ("| target | " + " | ".join(f"seed {s}" for s in seeds) + " | all seeds | train s |\n|---|"
            + "---|" * (len(seeds) + 2))
    lines, passed = [head], 0
    for name in names:
        rows = [variants.get(entry_name(variant, s), {}).get(name) for s in seeds]
        cells = ["–" if r is None else f"{r['ratio']:.2f}" + ("" if r["pass"] else " **✗**") for r in rows]
        done = [r for r in rows if r is not None]
        ok = all(r["pass"] for r in done)
        passed += ok and len(done) == len(seeds)
        verdict = ("pass" if ok else "**fail**") + ("" if len(done) == len(seeds) else f" ({len(done)} run)")
        times = [r["train_s"] for r in done]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {verdict} | "
                     f"{min(times):.1f}–{max(times):.1f} |")
    lines.append(f"\n{passed} of {len(names)} targets meet the goal on all {len(seeds)} seeds.")
    return "\n".join(lines)


#: docs/QUALITY.md's study of the σ_min level (issue 11): (JSON variant, label) per row
STUDY = [("default (20 000 steps at σ_min, before 2026-12-02)", "defaults (20 000 steps at σ_min)"),
         ("final-40k", "40 000 steps at σ_min"), ("final-80k", "80 000"), ("final-120k", "120 000"),
         ("final-160k", "160 000"), ("final-batch-512", "batch 512 at σ_min (20 000 steps)"),
         ("ema-0.9999", "`ema_decay=0.9999`"), ("final-80k-ema-0.9999", "80 000 steps, `ema_decay=0.9999`"),
         ("density-0.5", "`density_weight=0.5`"), ("density-1", "`density_weight=1`"),
         ("readout-20-final-40k", "readout ×20, 40 000 steps"), ("readout-30-final-40k", "readout ×30, 40 000 steps"),
         ("readout-10-final-80k", "readout ×10, 80 000 steps"), ("readout-20-final-80k", "readout ×20, 80 000 steps"),
         ("readout-10-final-160k", "readout ×10, 160 000 steps (the default)")]


def study_table(saved: dict, targets=("moons", "circles", "swiss_roll", "student_t"), seeds=(0, 1, 2)) -> str:
    """The study's table: per variant, the ratio on each seed of each target (✗: goal missed; –: not
    run), the runs passed and the median train time. Variants without the first target are left out."""
    variants = saved.get("variants", {})
    head = ("| variant | " + " | ".join(f"{t} (seeds {' / '.join(map(str, seeds))})" for t in targets)
            + " | runs passed | train s (one core) |\n|---|" + "---|" * (len(targets) + 2))
    lines = [head]
    for variant, label in STUDY:
        rows = [[variants.get(entry_name(variant, s), {}).get(t) for s in seeds] for t in targets]
        if any(r is None for r in rows[0]):  # not measured on the first target's seeds: left out
            continue
        cells = [" / ".join("–" if r is None else f"{r['ratio']:.2f}" + ("" if r["pass"] else "✗") for r in rs)
                 for rs in rows]
        flat = [r for rs in rows for r in rs if r is not None]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {sum(r['pass'] for r in flat)} of {len(flat)} | "
                     f"{np.median([r['train_s'] for r in flat]):.1f} |")
    return "\n".join(lines)


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("expected at least one seed")
    return seeds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", default="default",
                   help=f"one of {', '.join(sorted(VARIANTS))} (any saved name for the tables)")
    p.add_argument("--targets", default=None, help="comma-separated subset (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=_seed_list, default=None,
                   help="comma-separated seeds, each saved under its own key (overrides --seed)")
    p.add_argument("--seeds-table", type=_seed_list, default=None, metavar="SEEDS",
                   help="print the per-seed table of --variant over these seeds from the saved results and exit")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--table", action="store_true", help="print the tables of the saved results and exit")
    p.add_argument("--refloor", default=None, metavar="VARIANTS",
                   help="re-judge these saved variants (comma-separated, each with its @seedS keys) "
                        "against the current null floor and exit")
    p.add_argument("--study-table", action="store_true",
                   help="print docs/QUALITY.md's table of the σ_min study (failing targets × seeds 0-2) and exit")
    p.add_argument("--variance", action="store_true",
                   help="print the variance of the DSM and stable targets at σ_min (no training) and exit")
    args = p.parse_args(argv)
    import quality_data

    saved = json.loads(args.out.read_text()) if args.out.exists() else {}
    if args.table:
        for variant, rows in saved.get("variants", {}).items():
            print(f"\n### {variant}\n\n{table(list(rows.values()))}")
        return 0
    if args.refloor:
        wanted = args.refloor.split(",")
        keys = [k for k in saved.get("variants", {}) if k.split("@seed")[0] in wanted]
        print(f"re-judged {refloor(saved, keys, quality_data.all_sets())} rows of {len(keys)} entries")
        args.out.write_text(json.dumps(saved, indent=1))
        return 0
    if args.seeds_table:
        print(seeds_table(saved, args.variant, args.seeds_table))
        return 0
    if args.study_table:
        print(study_table(saved))
        return 0
    if args.variant not in VARIANTS:
        p.error(f"--variant must be one of {', '.join(sorted(VARIANTS))}, got {args.variant!r}")
    import jax

    sets = quality_data.all_sets()
    names = args.targets.split(",") if args.targets else list(sets)
    if args.variance:
        print("| target | σ_min | DSM target | STF K = 1024 | K = 2048 | K = 4096 |\n|---|---|---|---|---|---|")
        for name in names:
            v = target_variance(name, sets[name][0], seed=args.seed)
            print(f"| {name} | {v['sigma_min']:.3g} | {v['dsm']:.3g} | {v[1024]:.3g} | {v[2048]:.3g} | {v[4096]:.3g} |",
                  flush=True)
        return 0
    import diffrax
    import equinox
    import optax

    seeds = args.seeds if args.seeds else [args.seed]
    rows = {s: [] for s in seeds}
    for name, seed in [(n, s) for n in names for s in seeds]:  # a target's seeds one after another
        draw, _ = sets[name]
        row = run_one(name, draw, args.variant, seed=seed)
        row["seed"] = seed
        rows[seed].append(row)
        # saved row by row (re-read first, so that another run's rows are kept)
        saved = json.loads(args.out.read_text()) if args.out.exists() else {}
        saved.setdefault("variants", {}).setdefault(entry_name(args.variant, seed), {})[name] = row
        saved["versions"] = {"jax": jax.__version__, "equinox": equinox.__version__,
                             "optax": optax.__version__, "diffrax": diffrax.__version__}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(saved, indent=1))
        print(f"{name:18s} seed {seed} mmd2 {row['mmd2']:.2e} ratio {row['ratio']:6.2f} escaped {row['escaped']:4d} "
              f"rhat {row['rhat']:.3f} sigmas {row['sigma_max']:.3g}->{row['sigma_min']:.3g} ({row['levels']}) "
              f"train {row['train_s']:.1f}s ({row['steps_per_s']:.0f} steps/s) sample {row['sample_s']:.1f}s "
              f"{'PASS' if row['pass'] else 'FAIL'}", flush=True)
    for seed in seeds:
        print(f"\nseed {seed}:\n" + table(rows[seed]))
    if len(seeds) > 1:
        print("\n" + seeds_table(json.loads(args.out.read_text()), args.variant, seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
