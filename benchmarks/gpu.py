"""The GPU rows of docs/PERFORMANCE.md in one prepared script (≤ 8 min on one GPU).

Measures, on JAX's default backend:

- `sample` of the reservoir N = 1000, d = 2 (tanh and relu) at 10⁴, 10⁵ and 10⁶ chains:
  chain-steps per second (chains × steps / wall seconds, compilation excluded, best of `--repeats`);
- the MNIST-scale training step, `ScoreNetwork(300, 20 000)`, batch 128: one DSM loss-and-gradient
  (`rsnjax.dsm_value_and_grad`) plus an Adam update, as `fit` runs it, in a compiled `lax.scan`
  (ms per step).

It prints a table and writes JSON (numbers, device, versions, date). ``--smoke`` runs tiny sizes
in seconds on any backend (tests run it on CPU)::

    python benchmarks/gpu.py                      # the real rows; needs a GPU for the 8-min budget
    python benchmarks/gpu.py --smoke --out /tmp/gpu-smoke.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import optax

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import rsnjax  # noqa: E402

FULL = dict(neurons=1000, chains=(10_000, 100_000, 1_000_000), steps=200, train_hidden=20_000,
            train_dim=300, train_steps=50)
SMOKE = dict(neurons=64, chains=(100, 1000), steps=20, train_hidden=256, train_dim=16, train_steps=5)


def sampling_row(activation: str, neurons: int, chains: int, steps: int, repeats: int) -> dict:
    net = rsnjax.ScoreNetwork(2, neurons, activation=activation, key=jax.random.key(0))
    res = rsnjax.ReservoirSampler.from_score_network(net)
    # on a GPU all of a device's chains form one block (the CPU default, ~4 MB blocks run one
    # after another, suits a cache, not a GPU's parallelism)
    block = -(-chains // len(jax.local_devices())) if jax.devices()[0].platform == "gpu" else None
    best, compile_time = float("inf"), 0.0
    for r in range(repeats + 1):  # the first call compiles (and is a warm-up)
        out = rsnjax.sample(res, key=jax.random.key(r), num_chains=chains, num_steps=steps, step_size=0.01,
                            on_nonfinite="flag", warn=False, block_size=block)
        if r == 0:
            compile_time = out.compile_time
        else:
            best = min(best, out.wall_time)
    return dict(kind="sample", activation=activation, neurons=neurons, dim=2, chains=chains, steps=steps,
                block_size=block,
                wall_s=best, compile_s=compile_time, chain_steps_per_s=chains * steps / best)


def training_row(hidden: int, dim: int, steps: int, repeats: int, batch: int = 128) -> dict:
    net = rsnjax.ScoreNetwork(dim, hidden, key=jax.random.key(0))
    params, static = eqx.partition(net, eqx.is_inexact_array)
    tx = optax.adam(1e-3)
    data = jax.random.normal(jax.random.key(1), (steps, batch, dim))
    noise = jax.random.normal(jax.random.key(2), (steps, batch, dim))

    @jax.jit
    def run(p, opt_state, data, noise):
        def step(carry, xs):
            p, s = carry
            loss, grads = rsnjax.dsm_value_and_grad(eqx.combine(p, static), xs[0], xs[1], 0.1)
            updates, s = tx.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), loss
        return jax.lax.scan(step, (p, opt_state), (data, noise))

    opt_state = tx.init(params)
    t0 = time.perf_counter()
    jax.block_until_ready(run(params, opt_state, data, noise))
    compile_time = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(run(params, opt_state, data, noise))
        best = min(best, time.perf_counter() - t0)
    return dict(kind="train_step", hidden=hidden, dim=dim, batch=batch, steps=steps, wall_s=best,
                first_call_s=compile_time, ms_per_step=1e3 * best / steps)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (seconds, any backend)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per row (best kept)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu.json"))
    args = parser.parse_args(argv)
    size = SMOKE if args.smoke else FULL
    device = jax.devices()[0]
    if not args.smoke and device.platform != "gpu":
        print(f"warning: running the full rows on {device.platform}, not a GPU: this will take long",
              file=sys.stderr)
    rows = []
    for activation in ("tanh", "relu"):
        for chains in size["chains"]:
            rows.append(sampling_row(activation, size["neurons"], chains, size["steps"], args.repeats))
            r = rows[-1]
            print(f"sample  {activation:4s} N={r['neurons']:<6d} chains={chains:<8d} "
                  f"{r['chain_steps_per_s']:.3e} chain-steps/s  (compile {r['compile_s']:.1f} s)", flush=True)
    rows.append(training_row(size["train_hidden"], size["train_dim"], size["train_steps"], args.repeats))
    r = rows[-1]
    print(f"train   N={r['hidden']} d={r['dim']} batch={r['batch']}  {r['ms_per_step']:.3f} ms/step", flush=True)
    result = dict(rows=rows, smoke=args.smoke, device=str(device), platform=device.platform,
                  device_kind=getattr(device, "device_kind", ""), num_devices=len(jax.devices()),
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  versions=dict(jax=jax.__version__, rsnjax=rsnjax.__version__, optax=optax.__version__,
                                numpy=np.__version__, python=platform.python_version()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
