"""The machine's elementwise φ throughput, measured outside the sampler's layout.

A jitted ``fori_loop`` of ``φ(x)·1.0001 + 1e-3`` over a float32 block (1000 × 1000 per device by
default), for φ = tanh and relu, with 1 and 2 XLA CPU devices (each configuration in a fresh
process with ``XLA_FLAGS=--xla_force_host_platform_device_count=K``; the block is split over the
devices by a sharding), best of 5 after a compiling call. This is the bound a reservoir step of N
neurons can at most reach in φ evaluations per second (N per chain-step), whatever its layout.
Prints a table and writes JSON::

    python benchmarks/machine_bounds.py            # ~30 s on 2 idle cores
    python benchmarks/machine_bounds.py --quick    # a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, sys, time
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
cfg = json.loads(sys.argv[1])
devices = jax.local_devices()
n, iters = cfg["n"], cfg["iters"]
out = {"devices": len(devices)}
for name in ("tanh", "relu"):
    phi = jnp.tanh if name == "tanh" else (lambda z: jnp.maximum(z, 0.0))
    loop = jax.jit(lambda x: jax.lax.fori_loop(0, iters, lambda i, x: phi(x) * 1.0001 + 1e-3, x))
    x = jnp.full((n * len(devices), n), 0.3, jnp.float32)
    if len(devices) > 1:
        x = jax.device_put(x, NamedSharding(Mesh(np.array(devices), ("d",)), P("d")))
    loop(x).block_until_ready()
    best = float("inf")
    for _ in range(cfg["repeats"]):
        t0 = time.perf_counter()
        loop(x).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    out[name] = x.size * iters / best
print("RESULT " + json.dumps(out))
"""


def run(devices: int, cfg: dict) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(cfg)], env=env, capture_output=True,
                          text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "machine_bounds.json"))
    args = parser.parse_args(argv)
    cfg = dict(n=1000, iters=50, repeats=5) if not args.quick else dict(n=64, iters=5, repeats=1)
    import jax

    load_before = os.getloadavg()[0]
    results = {k: run(k, cfg) for k in (1, 2)}
    print("| φ | 1 device | 2 devices |\n|---|---|---|")
    for name in ("tanh", "relu"):
        print(f"| {name} | {results[1][name] / 1e9:.2f} G/s | {results[2][name] / 1e9:.2f} G/s |")
    best = {name: max(r[name] for r in results.values()) for name in ("tanh", "relu")}
    record = dict(config=cfg, per_devices={str(k): v for k, v in results.items()}, best=best,
                  load_average=[load_before, os.getloadavg()[0]], cpu_count=os.cpu_count(),
                  versions=dict(jax=jax.__version__))
    print(f"bound (best configuration): tanh {best['tanh'] / 1e9:.2f} G/s, relu {best['relu'] / 1e9:.2f} G/s; "
          f"load average {load_before:.1f} → {os.getloadavg()[0]:.1f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    main()
