"""The reservoir sampler on XLA's loop and on rsnjax's C++ kernel, against the machine's bounds.

One process, one run: for N = 1000 and 5000, d = 2, 10 000 chains, φ = tanh and relu, it times
`rsnjax.sample` (scan backend) with ``RSNJAX_KERNEL=0`` (XLA's loop) and ``=1`` (the kernel),
and the bounds they are held to, in turns (3 rounds of: each bound, XLA's loop, the kernel; each
timed call about 1 s long; best of the rounds), after a compiling call:

- tanh: the machine's tanh throughput, the best of a plain elementwise loop in XLA (a jitted
  ``fori_loop`` over 1000 × 1000 floats per device, sharded over the devices) and in C++ (the
  kernel's tanh, one thread per core, 1000 × 1000 and 1000 floats per thread). A reservoir
  chain-step evaluates N tanh, so the bound is tanh/s ÷ N chain-steps/s.
- relu: the float32 FLOP peak, the best of a C++ loop of independent vector FMAs on all cores and
  XLA's 2048² matrix product; and, printed next to it, the L2 state pass: a step reads and writes
  the chain's N-float state, which at N = 5000 (20 KB a chain, beside 100 KB of weights) cannot
  stay in L1, so a step costs at least one read-modify-write pass of N floats at the rate of a
  C++ loop over 256 KB per core (the better of the relu loop and a plain read-modify-write loop,
  on 64-byte-aligned rows: until 2026-12-02 the rows were NumPy's 16-byte-aligned ones, which
  cost the loop about 13 %). FLOPs per neuron and step: 4d + 2 = 10 at d = 2 (a multiply and an
  add counted as 2 even when fused; the max of relu not counted): W_in x + I (2d), the leak
  (1 − a)u + relu(a z) (2; a·relu(z) = relu(a·z) for a > 0, so a is folded into W_in and I and
  the step has no separate multiply), the next readout W_out u (2d). (Until 2026-12-02 this
  counted 4d + 3 = 11, the leak's multiply included: the ratios then were 10 % higher for the
  same speed.) The relu plain-loop rate is reported too.

Runs are 2000 steps at N = 1000 and 400 at N = 5000 (each timed call ≈ 0.2–3 s), 10 000 chains,
so `sample`'s fixed costs per run (the chains' start, the final readout) are a few per cent.

Prints a Markdown table (with the load average next to each row) and writes JSON::

    python benchmarks/kernel.py                 # ~2.5 min on 2 idle cores
    python benchmarks/kernel.py --devices 2     # 2 XLA CPU devices (kernel: 1 thread each)
    python benchmarks/kernel.py --quick         # a smoke test

Measure on a quiet machine (``uptime``): the ratios are taken within one process, so they share
the machine's load, but absolute rates drop under load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

FLOPS_PER_NEURON = lambda d: 4 * d + 2  # noqa: E731
#: a read-modify-write pass over a block in L2 (256 KB per core): what a step costs at least when
#: the chain's state does not stay in L1 (N = 5000: 20 KB a chain, next to 100 KB of weights); the
#: best of two loops, the relu loop and a plain x ← 0.9999·x + 1e-4 (both on 64-byte-aligned rows)
L2_PASS = "relu C++ loop, 65536 floats per thread (L2)"
L2_RMW = "C++ read-modify-write loop, 65536 floats per thread (L2)"
#: the float32 FLOP-rate measurements (the bound is the best of them)
FLOP_RATES = ("C++ FMA loop", "XLA matmul 2048²")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def xla_phi_rate(activation: str, iters: int, repeats: int) -> float:
    """φ/s of a jitted fori_loop over 1000 × 1000 floats per local device (sharded)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    devices = jax.local_devices()
    phi = jnp.tanh if activation == "tanh" else (lambda z: jnp.maximum(z, 0.0))
    loop = jax.jit(lambda x: jax.lax.fori_loop(0, iters, lambda i, x: phi(x) * 1.0001 + 1e-3, x))
    x = jnp.full((1000 * len(devices), 1000), 0.3, jnp.float32)
    if len(devices) > 1:
        x = jax.device_put(x, NamedSharding(Mesh(np.array(devices), ("d",)), P("d")))
    loop(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        loop(x).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return x.size * iters / best


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--devices", type=int, default=1, help="XLA CPU devices (default 1)")
    parser.add_argument("--out", default=str(HERE / "results" / "kernel.json"))
    args = parser.parse_args(argv)

    import jax

    from rsnjax.sampling import configure_cpu

    configure_cpu(args.devices)
    import jaxlib
    import numpy as np

    import rsnjax
    from machine_bounds import _cores, cpp_fma_peak, cpp_phi_rate, cpp_rmw_rate, xla_matmul_peak
    from rsnjax import _kernels

    if not _kernels.available():
        raise SystemExit(f"the kernel is not available: {_kernels.unavailable_reason()}")
    q = args.quick
    rep = 1 if q else 3
    chains = 1000 if q else 10_000
    cores = _cores()
    dim = 2

    target = 0.1 if q else 1.0  # seconds per timed call: as long as a sampler run, not a quiet burst

    def calibrated(rate_fn, first_iters):
        """rate_fn(iters) -> rate; the iteration count that takes about `target` seconds."""
        t0 = time.perf_counter()
        rate_fn(first_iters)
        dt = max(time.perf_counter() - t0, 1e-4)
        return max(1, int(first_iters * target / dt))

    def bound_fns(activation: str) -> dict:
        """name -> a function that times one call and returns a rate (φ/s or FLOP/s)."""
        if activation == "tanh":
            fns = {"C++ loop, 1000 floats per thread": lambda it: cpp_phi_rate("tanh", cores, 1000, it, 1),
                   "C++ loop, 10^6 floats per thread": lambda it: cpp_phi_rate("tanh", cores, 1_000_000, it, 1),
                   "XLA loop": lambda it: xla_phi_rate("tanh", it, 1)}
            first = {"C++ loop, 1000 floats per thread": 20_000, "C++ loop, 10^6 floats per thread": 20,
                     "XLA loop": 20}
        else:
            fns = {"C++ FMA loop": lambda it: cpp_fma_peak(cores, it, 1),
                   "relu C++ loop, 1000 floats per thread": lambda it: cpp_phi_rate("relu", cores, 1000, it, 1),
                   L2_PASS: lambda it: cpp_phi_rate("relu", cores, 65_536, it, 1),
                   L2_RMW: lambda it: cpp_rmw_rate(cores, 65_536, it, 1)}
            first = {"C++ FMA loop": 1_000_000, "relu C++ loop, 1000 floats per thread": 50_000, L2_PASS: 1000,
                     L2_RMW: 1000}
        iters = {k: calibrated(f, first[k]) for k, f in fns.items()}
        return {k: (lambda f=f, it=iters[k]: f(it)) for k, f in fns.items()}

    matmul = xla_matmul_peak(256 if q else 2048, rep + 2)
    rows = []
    for hidden in (1000, 5000):
        steps = 10 if q else 2_000_000 // hidden  # long enough that per-run fixed costs are a few per cent
        for activation in ("tanh", "relu"):
            net = rsnjax.ScoreNetwork(dim, hidden, activation=activation, key=jax.random.key(0))
            model = rsnjax.ReservoirSampler.from_score_network(net)
            load = os.getloadavg()[0]
            fns = bound_fns(activation)
            b = {k: 0.0 for k in fns}
            row = dict(hidden=hidden, dim=dim, activation=activation, chains=chains, steps=steps, load_before=load)
            kw = dict(key=jax.random.key(1), num_chains=chains, num_steps=steps, step_size=0.01,
                      warn=False, on_nonfinite="flag", progress=False)
            best = {"xla": float("inf"), "kernel": float("inf")}
            for path, flag in (("xla", "0"), ("kernel", "1")):  # compile
                os.environ["RSNJAX_KERNEL"] = flag
                row[path] = dict(compile_s=rsnjax.sample(model, **kw).compile_time)
            for _ in range(rep):  # rounds: each bound, XLA's loop, the kernel, in turns
                for k, f in fns.items():
                    b[k] = max(b[k], f())
                for path, flag in (("xla", "0"), ("kernel", "1")):
                    os.environ["RSNJAX_KERNEL"] = flag
                    best[path] = min(best[path], rsnjax.sample(model, **kw).wall_time)
            for path in best:
                row[path]["chain_steps_per_s"] = chains * steps / best[path]
            if activation == "relu":
                b["XLA matmul 2048²"] = matmul
            row["bounds"] = b
            row["load_after"] = os.getloadavg()[0]
            if activation == "tanh":
                bound = max(b.values())
                for path in ("xla", "kernel"):
                    row[path]["fraction_of_tanh_bound"] = row[path]["chain_steps_per_s"] * hidden / bound
                row["bound_chain_steps_per_s"] = bound / hidden
            else:
                bound = max(b[k] for k in FLOP_RATES)
                l2 = max(b[L2_PASS], b[L2_RMW])
                per = FLOPS_PER_NEURON(dim) * hidden
                for path in ("xla", "kernel"):
                    row[path]["gflops"] = row[path]["chain_steps_per_s"] * per / 1e9
                    row[path]["fraction_of_flop_bound"] = row[path]["chain_steps_per_s"] * per / bound
                    row[path]["fraction_of_l2_state_pass"] = row[path]["chain_steps_per_s"] * hidden / l2
                row["bound_chain_steps_per_s"] = bound / per
                row["l2_state_pass_chain_steps_per_s"] = l2 / hidden
            rows.append(row)
            print(json.dumps(row), flush=True)
    os.environ.pop("RSNJAX_KERNEL", None)

    print(f"\n{_cpu_model()}, {cores} cores, {args.devices} XLA device(s), kernel threads "
          f"{_kernels.num_threads()}, vector width {_kernels.vector_width()}; jax {jax.__version__}, "
          f"jaxlib {jaxlib.__version__}, numpy {np.__version__}\n")
    print("| N | φ | bound (chain-steps/s) | XLA loop | kernel | kernel / XLA | load |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        key = "fraction_of_tanh_bound" if r["activation"] == "tanh" else "fraction_of_flop_bound"
        what = "tanh bound" if r["activation"] == "tanh" else f"FLOP bound, {FLOPS_PER_NEURON(dim)} FLOP/neuron"
        x, k = r["xla"], r["kernel"]
        print(f"| {r['hidden']} | {r['activation']} | {r['bound_chain_steps_per_s'] / 1e6:.2f} M ({what}) | "
              f"{x['chain_steps_per_s'] / 1e6:.2f} M ({100 * x[key]:.0f} %) | "
              f"{k['chain_steps_per_s'] / 1e6:.2f} M ({100 * k[key]:.0f} %) | "
              f"{k['chain_steps_per_s'] / x['chain_steps_per_s']:.2f}× | "
              f"{r['load_before']:.1f} → {r['load_after']:.1f} |")
    relu_rows = [r for r in rows if r["activation"] == "relu"]
    if relu_rows:
        print("\nrelu against the L2 state pass (a read-modify-write pass over N floats per chain-step at "
              "the rate of the better of two C++ loops over 256 KB per core):\n")
        print("| N | L2 state-pass bound | kernel | of it |")
        print("|---|---|---|---|")
        for r in relu_rows:
            print(f"| {r['hidden']} | {r['l2_state_pass_chain_steps_per_s'] / 1e6:.2f} M | "
                  f"{r['kernel']['chain_steps_per_s'] / 1e6:.2f} M | {100 * r['kernel']['fraction_of_l2_state_pass']:.0f} % |")
        print()
    record = dict(rows=rows, devices=args.devices, kernel_threads=_kernels.num_threads(), cores=cores,
                  vector_width=_kernels.vector_width(), cpu=_cpu_model(), quick=q,
                  flops_per_neuron_step=FLOPS_PER_NEURON(dim),
                  versions=dict(jax=jax.__version__, jaxlib=jaxlib.__version__, numpy=np.__version__,
                                rsnjax=rsnjax.__version__, python=platform.python_version()),
                  date=time.strftime("%Y-%m-%d"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    main()
