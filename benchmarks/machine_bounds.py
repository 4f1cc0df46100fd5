"""The machine's elementwise φ throughput and float32 FLOP peak, outside the sampler's layout.

φ = tanh and relu, best over implementations and configurations:

- XLA: a jitted ``fori_loop`` of ``φ(x)·1.0001 + 1e-3`` over a float32 block (1000 × 1000 per
  device), with 1 and 2 XLA CPU devices (each configuration in a fresh process with
  ``XLA_FLAGS=--xla_force_host_platform_device_count=K``; the block is split over the devices by
  a sharding);
- C++ (when rsnjax's kernel is built, `rsnjax._kernels`): the same loop with the kernel's own
  vectorised tanh (the same rational approximation as XLA's), 1 thread and one thread per core,
  over 1000 × 1000 floats per thread and over 1000 floats per thread (in L1, as the kernel keeps
  a chain's state);

best of 5 after a warm-up. This is the bound a reservoir step of N neurons can at most reach in φ
evaluations per second (N per chain-step), whatever its layout. The float32 FLOP peak is the best
of a C++ loop of independent vector FMAs (2 FLOP per lane) on 1 and all cores and XLA's
2048 × 2048 matrix product. Prints tables and writes JSON::

    python benchmarks/machine_bounds.py            # ~40 s on 2 idle cores
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


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _cpp_loop_rate(loop, threads: int, n: int, iters: int, repeats: int) -> float:
    """Floats per second of ``loop(x, iters)`` over ``n`` aligned floats per thread (best of
    ``repeats``, after a warm-up of a tenth)."""
    import time

    from rsnjax import _kernels

    x = _kernels.aligned_rows(threads, n, 0.3)
    loop(x, max(1, iters // 10))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        loop(x, iters)
        best = min(best, time.perf_counter() - t0)
    return threads * n * iters / best


def cpp_phi_rate(activation: str, threads: int, n: int, iters: int, repeats: int) -> float:
    """φ evaluations per second of the kernel's plain loop (`rsnjax._kernels.phi_loop`)."""
    from rsnjax import _kernels

    return _cpp_loop_rate(lambda x, it: _kernels.phi_loop(x, it, threads, activation), threads, n, iters, repeats)


def cpp_rmw_rate(threads: int, n: int, iters: int, repeats: int) -> float:
    """Floats per second read and written back by the kernel's read-modify-write loop
    (`rsnjax._kernels.rmw_loop`) over ``n`` floats per thread."""
    from rsnjax import _kernels

    return _cpp_loop_rate(lambda x, it: _kernels.rmw_loop(x, it, threads), threads, n, iters, repeats)


def cpp_fma_peak(threads: int, iters: int, repeats: int) -> float:
    """float32 FLOP/s of the kernel's FMA loop on ``threads`` threads."""
    import time

    from rsnjax import _kernels

    _kernels.fma_loop(max(1, iters // 10), threads)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        flops = _kernels.fma_loop(iters, threads)
        best = max(best, flops / (time.perf_counter() - t0))
    return best


def xla_matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    import time

    import jax
    import jax.numpy as jnp

    a = jnp.full((size, size), 0.5, jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def cpp_bounds(quick: bool) -> dict:
    """The C++ rows: φ rates per (threads, block) and the FMA peak per thread count; {} when the
    kernel is not built."""
    sys.path.insert(0, str(ROOT))
    from rsnjax import _kernels

    if not _kernels.available():
        return {}
    rep = 1 if quick else 5
    out: dict = {"vector_width": _kernels.vector_width()}
    for threads in sorted({1, _cores()}):
        for n, iters in ((1_000_000, 5 if quick else 50), (1000, 5_000 if quick else 50_000)):
            for name in ("tanh", "relu"):
                out[f"{name} threads={threads} n={n}"] = cpp_phi_rate(name, threads, n, iters, rep)
        out[f"fma threads={threads}"] = cpp_fma_peak(threads, 100_000 if quick else 20_000_000, rep)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "machine_bounds.json"))
    args = parser.parse_args(argv)
    cfg = dict(n=1000, iters=50, repeats=5) if not args.quick else dict(n=64, iters=5, repeats=1)
    import jax

    load_before = os.getloadavg()[0]
    results = {k: run(k, cfg) for k in (1, 2)}
    cpp = cpp_bounds(args.quick)
    matmul = xla_matmul_peak(256 if args.quick else 2048, 1 if args.quick else 5)
    print("XLA loop:\n| φ | 1 device | 2 devices |\n|---|---|---|")
    for name in ("tanh", "relu"):
        print(f"| {name} | {results[1][name] / 1e9:.2f} G/s | {results[2][name] / 1e9:.2f} G/s |")
    if cpp:
        print(f"C++ loop (rsnjax._kernels, {cpp['vector_width']} floats per vector):")
        for k, v in cpp.items():
            if k != "vector_width":
                print(f"  {k}: {v / 1e9:.2f} {'GFLOP/s' if k.startswith('fma') else 'G/s'}")
    print(f"XLA 2048² matmul: {matmul / 1e9:.1f} GFLOP/s")
    best = {name: max([r[name] for r in results.values()]
                      + [v for k, v in cpp.items() if k.startswith(name + " ")]) for name in ("tanh", "relu")}
    best["flops"] = max([matmul] + [v for k, v in cpp.items() if k.startswith("fma")])
    record = dict(config=cfg, per_devices={str(k): v for k, v in results.items()}, cpp=cpp, xla_matmul=matmul,
                  best=best, load_average=[load_before, os.getloadavg()[0]], cpu_count=os.cpu_count(),
                  versions=dict(jax=jax.__version__))
    print(f"bound (best implementation and configuration): tanh {best['tanh'] / 1e9:.2f} G/s, relu "
          f"{best['relu'] / 1e9:.2f} G/s, float32 {best['flops'] / 1e9:.0f} GFLOP/s; "
          f"load average {load_before:.1f} → {os.getloadavg()[0]:.1f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    main()
