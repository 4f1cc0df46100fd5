"""Scaling of `fit` (data-parallel) and `sample` (chains sharded) on 2 forced CPU devices vs 1.

Each configuration runs in a fresh process with ``XLA_FLAGS=--xla_force_host_platform_device_count=K``
(K = 1, 2): the same calls, timed after a warm-up call that compiles, best of ``--repeats``. Prints
one table and writes JSON::

    python benchmarks/scaling.py                  # ~2 min on 2 idle cores
    python benchmarks/scaling.py --quick          # shorter runs (a smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, sys, time
import jax, numpy as np, optax
import rsnjax
cfg = json.loads(sys.argv[1])
out = dict(devices=len(jax.local_devices()))
net = rsnjax.ScoreNetwork(2, cfg["neurons"], activation="tanh", key=jax.random.key(0))
res = rsnjax.ReservoirSampler.from_score_network(net)
best = float("inf")
for r in range(cfg["repeats"] + 1):
    o = rsnjax.sample(res, key=jax.random.key(r), num_chains=cfg["chains"], num_steps=cfg["steps"],
                      step_size=0.01, on_nonfinite="flag", warn=False)
    if r:
        best = min(best, o.wall_time)
out["sample_chain_steps_per_s"] = cfg["chains"] * cfg["steps"] / best
data = np.asarray(jax.random.normal(jax.random.key(1), (8192, 2)))
tx = optax.adam(1e-3)
for batch in cfg["batches"]:
    kw = dict(sigmas=[0.5], steps_per_level=cfg["fit_steps"], batch_size=batch, optimizer=tx,
              key=jax.random.key(2), chunk_size=cfg["fit_steps"], progress=False,
              data_parallel=len(jax.local_devices()) > 1)  # opt-in on CPU devices
    best = float("inf")
    for r in range(cfg["repeats"] + 1):   # the first call compiles; later ones reuse the program
        t0 = time.perf_counter()
        rsnjax.fit(net, data, **kw)
        if r:
            best = min(best, time.perf_counter() - t0)
    out[f"fit_steps_per_s_batch{batch}"] = cfg["fit_steps"] / best
dim, hidden, batch, steps = cfg["wide"]   # the MNIST quick preset's network size
wide = rsnjax.ScoreNetwork(dim, hidden, key=jax.random.key(3))
wide_data = np.asarray(jax.random.normal(jax.random.key(4), (4096, dim)))
kw = dict(sigmas=[0.5], steps_per_level=steps, batch_size=batch, optimizer=tx, key=jax.random.key(2),
          chunk_size=steps, progress=False, data_parallel=len(jax.local_devices()) > 1)
best = float("inf")
for r in range(cfg["repeats"] + 1):
    t0 = time.perf_counter()
    rsnjax.fit(wide, wide_data, **kw)
    if r:
        best = min(best, time.perf_counter() - t0)
out["fit_steps_per_s_wide"] = steps / best
print("RESULT " + json.dumps(out))
"""


def run(devices: int, cfg: dict) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(cfg)], env=env, capture_output=True,
                          text=True, timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(lines[-1][7:])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scaling.json"))
    args = parser.parse_args(argv)
    cfg = dict(neurons=1000, chains=8192, steps=500, fit_steps=1000, batches=[128, 1024, 4096],
               wide=[50, 5000, 128, 200], repeats=args.repeats)
    if args.quick:
        cfg.update(neurons=64, chains=512, steps=10, fit_steps=10, batches=[128], wide=[8, 64, 32, 4], repeats=1)
    import jax
    import numpy as np
    import optax

    import rsnjax

    load_before = os.getloadavg()[0]
    t0 = time.time()
    results = {k: run(k, cfg) for k in (1, 2)}
    one, two = results[1], results[2]
    rows = [(f"sample: reservoir N = {cfg['neurons']}, tanh, {cfg['chains']} chains × {cfg['steps']} steps",
             "chain-steps/s", "sample_chain_steps_per_s")]
    rows += [(f"fit: ScoreNetwork(2, {cfg['neurons']}), batch {b}, {cfg['fit_steps']} steps", "steps/s",
              f"fit_steps_per_s_batch{b}") for b in cfg["batches"]]
    dim, hidden, batch, steps = cfg["wide"]
    rows += [(f"fit: ScoreNetwork({dim}, {hidden}), batch {batch}, {steps} steps", "steps/s", "fit_steps_per_s_wide")]
    print("| workload | unit | 1 device | 2 devices | speed-up |\n|---|---|---|---|---|")
    table = []
    for name, unit, key in rows:
        table.append(dict(workload=name, unit=unit, one=one[key], two=two[key], speedup=two[key] / one[key]))
        print(f"| {name} | {unit} | {one[key]:.4g} | {two[key]:.4g} | {two[key] / one[key]:.2f}× |")
    result = dict(config=cfg, table=table, load_average=[load_before, os.getloadavg()[0]],
                  seconds=time.time() - t0, cpu_count=os.cpu_count(),
                  versions=dict(jax=jax.__version__, rsnjax=rsnjax.__version__, optax=optax.__version__,
                                numpy=np.__version__))
    print(f"load average {load_before:.1f} → {os.getloadavg()[0]:.1f}, {result['seconds']:.0f} s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
