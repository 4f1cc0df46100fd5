"""Score error and sample quality against reservoir size N, for SO-SC, SO-FR and RSNs.

For each target (the double peak, the Laplace "X", a ring of 8 Gaussians) and each model family,
train with the same budget (schedule, optimiser, steps), then report

- the score error E_p‖s_ref − s_θ‖² with s_ref the σ_min-blurred score where it is analytic
  (Gaussian mixtures), else the true score (Laplace X);
- MMD² and sliced W₂ between Langevin samples of the trained model and exact target samples,
  next to their noise floors (the same metric between two exact sample sets of the same size);

as N grows. SO models have no N and are reported once per target. Every configuration is
repeated over seeds (mean ± sd). RSN samples are drawn from the output-space Langevin dynamics
of the trained score network, which the reservoir's readout follows exactly (docs/SCIENCE.md §3; the
identity is tested in the core suite), so the cost does not depend on which of the two is run.

    python benchmarks/score_error_vs_neurons.py --quick          # a few minutes on 2 cores
    python benchmarks/score_error_vs_neurons.py                  # N up to 3000 (≈ 1 h on 2 cores)

Writes ``table.md``, ``results.json`` and ``score_error_vs_neurons.{png,pdf}`` into ``--out``
(default ``results/score-error-vs-neurons-{quick,full}/``, a fresh ``-2``, ``-3`` ... if that holds files).
"""

from __future__ import annotations

import argparse
import sys
import time
import zlib

import jax
import numpy as np

from rsnjax import ScoreNetwork, SamplerOnly, fit, geometric_sigmas, metrics, plotting, sample, targets
from rsnjax.experiments._common import (enable_compilation_cache, fmt, make_optimizer, markdown_table,
                                        prepare_out_dir, versions, write_json)

TARGETS = {
    "double-peak": targets.double_peak,
    "laplace-x": targets.laplace_x,
    "ring": targets.ring_of_gaussians,
}

#: A chain whose readout leaves the box |x|∞ < ESCAPE_RADIUS counts as escaped (left out of MMD/SW).
ESCAPE_RADIUS = 20.0

FULL = dict(
    hidden=[10, 30, 100, 300, 1000, 3000],
    seeds=3,
    activation="relu",
    # RSN activation per target: ReLU drifts are unbounded and, off the data, point outwards in
    # some directions; on the heavy-tailed Laplace X that lets chains escape (see docs/RESULTS.md),
    # so its RSNs use tanh. SO models use `activation` everywhere.
    rsn_activation={"double-peak": "relu", "laplace-x": "tanh", "ring": "relu"},
    sigma_max=1.0,
    sigma_min=100.0 ** -0.9,
    num_levels=10,
    steps_per_level=5000,
    batch_size=128,
    learning_rate=1e-3,
    schedule="cosine",
    weight_decay=0.0,
    num_chains=4000,
    num_steps=5000,
    step_size=2e-3,
    init="normal",
    noise_floor_repeats=5,
    score_error_samples=20_000,
)
QUICK = {**FULL, "hidden": [10, 30, 100, 300], "steps_per_level": 1500, "num_chains": 1000, "num_steps": 2000,
         "step_size": 5e-3, "noise_floor_repeats": 3, "score_error_samples": 5000}


def make_model(family: str, dim: int, hidden: int | None, activation: str, key):
    if family == "SO-SC":
        return SamplerOnly(dim, dynamics="synaptic_current", activation=activation, key=key)
    if family == "SO-FR":
        return SamplerOnly(dim, dynamics="firing_rate", activation=activation, key=key)
    return ScoreNetwork(dim, hidden, activation=activation, key=key)


def one_run(target_name: str, family: str, hidden: int | None, seed: int, cfg: dict) -> dict:
    """Train one model, sample it, return its numbers."""
    target = TARGETS[target_name]()
    # a stable per-configuration key (Python's hash() of a str changes between processes)
    key = jax.random.fold_in(jax.random.key(seed), zlib.crc32(f"{target_name}/{family}/{hidden}".encode()) % (2**31))
    k_init, k_fit, k_sample, k_eval, k_ref = jax.random.split(key, 5)
    sigmas = geometric_sigmas(cfg["sigma_max"], cfg["sigma_min"], cfg["num_levels"])
    activation = cfg["rsn_activation"][target_name] if family == "RSN" else cfg["activation"]
    model = make_model(family, target.dim, hidden, activation, k_init)
    t0 = time.perf_counter()
    opt = make_optimizer(cfg["learning_rate"], schedule=cfg["schedule"], steps_per_level=cfg["steps_per_level"])
    model, history = fit(model, target, sigmas=sigmas, steps_per_level=cfg["steps_per_level"],
                         batch_size=cfg["batch_size"], optimizer=opt, weight_decay=cfg["weight_decay"],
                         key=k_fit, progress=False, ema_decay=None, antithetic=False, confine=None)
    train_time = time.perf_counter() - t0
    blurred = hasattr(target, "blurred_score")
    err = metrics.score_error(model, target, key=k_eval, num_samples=cfg["score_error_samples"],
                              sigma=float(sigmas[-1]) if blurred else None)
    res = sample(model, key=k_sample, num_chains=cfg["num_chains"], num_steps=cfg["num_steps"],
                 step_size=cfg["step_size"], init=cfg["init"], on_nonfinite="flag")
    x = np.asarray(res.samples)
    keep = np.all(np.isfinite(x), axis=1) & (np.max(np.abs(np.nan_to_num(x, nan=np.inf)), axis=1) < ESCAPE_RADIUS)
    ref = target.sample(k_ref, cfg["num_chains"])
    out = {"target": target_name, "model": family, "hidden": hidden, "seed": seed,
           "score_error": float(err.value), "score_error_reference": "blurred" if blurred else "true",
           "fraction_escaped": float(1 - keep.mean()), "train_seconds": train_time, "activation": activation,
           "final_loss": float(history.level_loss[-1])}
    if keep.sum() >= 2:
        out["mmd2"] = float(metrics.mmd(x[keep], ref))
        out["sliced_w2"] = float(metrics.sliced_wasserstein(x[keep], ref, key=k_eval))
    else:
        out["mmd2"] = out["sliced_w2"] = float("nan")
    return out


def floors(target_name: str, cfg: dict) -> dict:
    target = TARGETS[target_name]()
    key = jax.random.key(12345)
    n = cfg["num_chains"]
    mmd = metrics.noise_floor(metrics.mmd, target, key=key, num=n, repeats=cfg["noise_floor_repeats"])
    sw = metrics.noise_floor(metrics.sliced_wasserstein, target, key=jax.random.fold_in(key, 1), num=n,
                             repeats=cfg["noise_floor_repeats"])
    return {"mmd2": float(mmd.mean), "mmd2_sd": float(mmd.std), "sliced_w2": float(sw.mean),
            "sliced_w2_sd": float(sw.std)}


def summarise(runs: list[dict]) -> list[dict]:
    """Mean and sd over seeds of each (target, model, N)."""
    groups: dict = {}
    for r in runs:
        groups.setdefault((r["target"], r["model"], r["hidden"]), []).append(r)
    rows = []
    for (target, model, hidden), rs in groups.items():
        row = {"target": target, "model": model, "hidden": hidden, "seeds": len(rs),
               "score_error_reference": rs[0]["score_error_reference"]}
        for metric in ("score_error", "mmd2", "sliced_w2", "fraction_escaped", "train_seconds"):
            v = np.array([r[metric] for r in rs], dtype=float)
            row[f"{metric}_mean"] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
            row[f"{metric}_sd"] = float(np.nanstd(v, ddof=1)) if np.isfinite(v).sum() > 1 else float("nan")
        rows.append(row)
    return rows


def table(rows: list[dict], floor: dict) -> str:
    header = ["target", "model", "N", "score error (ref.)", "MMD²", "sliced W₂", "escaped", "train s"]
    body = []
    for t in TARGETS:
        sub = [r for r in rows if r["target"] == t]
        sub.sort(key=lambda r: (r["model"] == "RSN", r["hidden"] or 0, r["model"]))
        for r in sub:
            body.append([t, r["model"], str(r["hidden"] or "—"),
                         f"{fmt(r['score_error_mean'])} ± {fmt(r['score_error_sd'], 2)} ({r['score_error_reference']})",
                         f"{fmt(r['mmd2_mean'])} ± {fmt(r['mmd2_sd'], 2)}",
                         f"{fmt(r['sliced_w2_mean'])} ± {fmt(r['sliced_w2_sd'], 2)}",
                         fmt(r["fraction_escaped_mean"], 2), fmt(r["train_seconds_mean"], 2)])
        f = floor[t]
        body.append([t, "**noise floor**", "—", "0", f"{fmt(f['mmd2'])} ± {fmt(f['mmd2_sd'], 2)}",
                     f"{fmt(f['sliced_w2'])} ± {fmt(f['sliced_w2_sd'], 2)}", "—", "—"])
    return markdown_table(header, body)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N ≤ 300, 1500 steps per level, 1000 chains")
    parser.add_argument("--out", default=None, help="results directory")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per configuration (default 3)")
    parser.add_argument("--hidden", type=int, nargs="+", default=None, help="reservoir sizes N")
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    args = parser.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.seeds is not None:
        cfg["seeds"] = args.seeds
    if args.hidden is not None:
        cfg["hidden"] = args.hidden
    enable_compilation_cache()
    out = prepare_out_dir("score-error-vs-neurons", "quick" if args.quick else "full", args.out, args.overwrite)
    t_start = time.perf_counter()
    runs, floor = [], {}
    for t in args.targets:
        floor[t] = floors(t, cfg)
        configs = [("SO-SC", None), ("SO-FR", None)] + [("RSN", n) for n in cfg["hidden"]]
        for family, hidden in configs:
            for seed in range(cfg["seeds"]):
                r = one_run(t, family, hidden, seed, cfg)
                runs.append(r)
                print(f"{t:12s} {family:6s} N={str(hidden):5s} seed={seed} score_error={r['score_error']:.4g} "
                      f"mmd2={r['mmd2']:.3g} sw2={r['sliced_w2']:.3g} escaped={r['fraction_escaped']:.2g} "
                      f"({r['train_seconds']:.1f} s)", file=sys.stderr, flush=True)
    rows = summarise(runs)
    md = table(rows, floor)
    wall = time.perf_counter() - t_start
    header = (f"Budget per model: {cfg['num_levels']} levels × {cfg['steps_per_level']} steps, batch "
              f"{cfg['batch_size']}, Adam lr {cfg['learning_rate']:g} ({cfg['schedule']} per level); SO models "
              f"{cfg['activation']}, RSN activation by target {cfg['rsn_activation']}; sampling {cfg['num_chains']} chains, dt {cfg['step_size']:g} × "
              f"{cfg['num_steps']} steps from N(0, I); chains leaving |x|∞ < {ESCAPE_RADIUS:g} count as escaped; "
              f"{cfg['seeds']} seeds, mean ± sd. Wall time {wall:.0f} s.\n\n")
    (out / "table.md").write_text(header + md)
    write_json(out / "results.json", {"config": cfg, "versions": versions(), "floors": floor, "summary": rows,
                                      "runs": runs, "wall_time": wall})
    present = [t for t in TARGETS if t in args.targets]
    fig = plotting.plot_metric_vs_neurons(
        rows, [("score_error", "score error E‖s_ref − s_θ‖²", True), ("mmd2", "MMD² to target", False),
               ("sliced_w2", "sliced W₂ to target", True)],
        targets=present,
        floors={(t, m): (floor[t][m], floor[t][f"{m}_sd"]) for t in present for m in ("mmd2", "sliced_w2")})
    plotting.save_figure(fig, out / "score_error_vs_neurons")
    print(header + md)
    print(f"wrote {out}/", file=sys.stderr)
    return {"out_dir": str(out), "summary": rows, "floors": floor}


if __name__ == "__main__":
    main()
