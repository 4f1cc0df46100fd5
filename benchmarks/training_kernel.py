"""The DSM training step with the C++ kernels (`rsnjax._dsm_kernel`) against XLA, and its bound.

Three measurements, each with the machine's 1-minute load average next to it (2 cores: numbers
taken at a load above ≈ 1.5 are slowed by other processes):

- **(a) loss + gradient alone**: `rsnjax.dsm_value_and_grad` of a relu `ScoreNetwork` in a
  jit-compiled `lax.scan` of SGD steps on fixed data (compile excluded, best of 3), with the
  kernels and with ``RSNJAX_KERNEL=0`` (XLA's hand-written passes), d = 1, 2, N = 1000, 5000,
  batch 128, 512.
- **(b) the double-peak paper fit**: ``fit(ScoreNetwork(1, 1000, relu), targets.double_peak(),
  10 levels × 7800 steps, batch 128, optax.amsgrad(1e-4))`` with fit's default remedies, each
  variant in a fresh process: the first call (what a user waits for: compile included) and a
  second, warm one (steps/s of the compiled program).
- **(c) the bound**: FLOPs per step counted from the passes (per row of the batch and of the
  128 far-field points (64 pairs) and per neuron: forward 4d + 1, backward 8d + 3, counting φ and the mask as
  one each) over the machine's float32 peak (the best of a jit-compiled 2048² matmul and the C++
  FMA loop, all cores);
  the kernels run on one thread.

Prints Markdown tables and writes ``benchmarks/results/training_kernel.json``::

    python benchmarks/training_kernel.py           # ≈ 2 min on 2 cores
    python benchmarks/training_kernel.py --quick   # (a) and (c) only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import rsnjax
from rsnjax import _dsm_kernel

SIGMA = 0.5
FAR_POINTS = 128  # rsnjax.training.CONFINE_POINTS pairs: a shell point and one twice as far out
GRAD_CONFIGS = [(1, 1000, 128), (1, 1000, 512), (1, 5000, 128), (1, 5000, 512),
                (2, 1000, 128), (2, 1000, 512), (2, 5000, 128), (2, 5000, 512)]


def load() -> float:
    return os.getloadavg()[0]


def flops_per_row_neuron(dim: int) -> int:
    """Forward: u = Bx + b (2d), φ (1), out += A h (2d); backward: u again (2d), φ (1),
    g·A (2d), the mask or φ' (1), gA (2d), gB (2d), gb (1)."""
    return (4 * dim + 1) + (8 * dim + 3)


def grad_seconds_per_step(net, x, noise, kernel: bool, steps: int) -> float:
    os.environ["RSNJAX_KERNEL"] = "1" if kernel else "0"
    try:
        params, static = eqx.partition(net, eqx.is_inexact_array)
        model = eqx.combine(params, static)
        assert _dsm_kernel.applies_to(model, x) == kernel

        def step(p, t):
            loss, grads = rsnjax.dsm_value_and_grad(eqx.combine(p, static), x + 0 * t, noise + 0 * t, SIGMA)
            return jax.tree_util.tree_map(lambda a, b: a - 1e-6 * b, p, grads), loss

        run = jax.jit(lambda p: jax.lax.scan(step, p, jnp.zeros(steps, x.dtype)))
        jax.block_until_ready(run(params))  # compiles (the variable is read while tracing)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            jax.block_until_ready(run(params))
            best = min(best, time.perf_counter() - t0)
        return best / steps
    finally:
        os.environ.pop("RSNJAX_KERNEL", None)


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
    """float32 FLOP/s of a jit-compiled n×n matmul (best of 5)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: jax.lax.fori_loop(0, reps, lambda i, c: (c @ a) * 1e-3, a))
    jax.block_until_ready(f(a))
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a))
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 * reps / best


def fit_once() -> dict:
    """The double-peak fit twice in this process: first call and warm call, seconds."""
    import optax

    from rsnjax import ScoreNetwork, fit, geometric_sigmas, targets

    out = {"kernel": _dsm_kernel.enabled(), "load_before": load()}
    for name in ("first", "warm"):
        net = ScoreNetwork(1, 1000, activation="relu", key=jax.random.key(1))
        t0 = time.perf_counter()
        net, _ = fit(net, targets.double_peak(), sigmas=geometric_sigmas(1.0, 100**-0.9, 10), key=jax.random.key(0),
                     steps_per_level=7800, batch_size=128, optimizer=optax.amsgrad(1e-4), progress=False)
        jax.block_until_ready(net.A)
        out[name + "_seconds"] = time.perf_counter() - t0
    out["steps"] = 78_000
    out["load_after"] = load()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip (b), the two full fits")
    parser.add_argument("--steps", type=int, default=500, help="steps per timed scan in (a)")
    parser.add_argument("--fit-once", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "training_kernel.json"))
    args = parser.parse_args(argv)
    if args.fit_once:
        print(json.dumps(fit_once()))
        return 0
    if not _dsm_kernel.available():
        print(f"the C++ DSM kernel is not available: {_dsm_kernel.unavailable_reason()}")
        return 1

    peak = matmul_peak()
    print(f"float32 matmul peak (2048², all cores): {peak / 1e9:.0f} GFLOP/s (load {load():.2f})\n")

    print("(a) DSM loss + gradient alone (relu), µs per step")
    print("| d | N | batch | XLA | kernel | speed-up | kernel GFLOP/s | load |")
    print("|---|---|---|---|---|---|---|---|")
    grad_rows = []
    for dim, hidden, batch in GRAD_CONFIGS:
        net = rsnjax.ScoreNetwork(dim, hidden, activation="relu", key=jax.random.key(dim))
        kx, kn = jax.random.split(jax.random.key(hidden + batch))
        x = jax.random.normal(kx, (batch, dim))
        noise = jax.random.normal(kn, (batch, dim))
        steps = max(50, args.steps * 128 * 1000 // (batch * hidden))
        xla = grad_seconds_per_step(net, x, noise, False, steps)
        ker = grad_seconds_per_step(net, x, noise, True, steps)
        flops = flops_per_row_neuron(dim) * batch * hidden
        row = {"dim": dim, "hidden": hidden, "batch": batch, "xla_us": 1e6 * xla, "kernel_us": 1e6 * ker,
               "speedup": xla / ker, "kernel_gflops": flops / ker / 1e9, "load": load()}
        grad_rows.append(row)
        print(f"| {dim} | {hidden} | {batch} | {row['xla_us']:.1f} | {row['kernel_us']:.1f} | {row['speedup']:.1f}× "
              f"| {row['kernel_gflops']:.1f} | {row['load']:.2f} |", flush=True)

    fit_rows = []
    if not args.quick:
        print("\n(b) double-peak fit (ScoreNetwork(1, 1000, relu), 10 × 7800 steps, batch 128), fresh process each")
        print("| variant | first call (s) | warm (s) | warm steps/s | µs/step | load |")
        print("|---|---|---|---|---|---|")
        for kernel in (False, True):
            env = dict(os.environ, RSNJAX_KERNEL="1" if kernel else "0")
            proc = subprocess.run([sys.executable, __file__, "--fit-once"], env=env, capture_output=True, text=True,
                                  check=True)
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["warm_steps_per_second"] = row["steps"] / row["warm_seconds"]
            fit_rows.append(row)
            print(f"| {'kernel' if kernel else 'XLA'} | {row['first_seconds']:.2f} | {row['warm_seconds']:.2f} | "
                  f"{row['warm_steps_per_second']:.0f} | {1e6 / row['warm_steps_per_second']:.1f} | "
                  f"{row['load_before']:.2f}–{row['load_after']:.2f} |", flush=True)

    # (c) the bound of the double-peak step: (batch + far points) rows, d = 1, N = 1000, at the
    # machine's float32 peak: the best of the matmul and the C++ FMA loop on all cores
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from machine_bounds import _cores, cpp_fma_peak

        peak = max(peak, cpp_fma_peak(_cores(), 2_000_000, 3))
    except Exception:  # noqa: BLE001 - the C++ library not built: the matmul peak alone
        pass
    step_flops = flops_per_row_neuron(1) * (128 + FAR_POINTS) * 1000
    bound = {"flops_per_step": step_flops, "peak_flops": peak, "bound_us": 1e6 * step_flops / peak}
    print(f"\n(c) double-peak step: {step_flops / 1e6:.2f} MFLOP ((128 + {FAR_POINTS}) rows × 1000 neurons × "
          f"{flops_per_row_neuron(1)}); at the {peak / 1e9:.0f} GFLOP/s float32 peak ≥ {bound['bound_us']:.1f} µs/step")
    if fit_rows:
        warm = fit_rows[-1]["warm_steps_per_second"]
        bound["kernel_fit_us"] = 1e6 / warm
        bound["fraction_of_peak"] = step_flops * warm / peak
        print(f"    the kernel fit's warm step: {1e6 / warm:.1f} µs, {100 * bound['fraction_of_peak']:.0f} % of the peak")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"jax": jax.__version__, "rsnjax": rsnjax.__version__, "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "vector_width": _dsm_kernel.vector_width()}
    out.write_text(json.dumps({"meta": meta, "grad": grad_rows, "fit": fit_rows, "bound": bound}, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
