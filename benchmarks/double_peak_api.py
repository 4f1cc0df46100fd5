"""The double-peak paper experiment end to end through the public API, timed from a fresh process.

What one user script does (the RSN of docs/RESULTS.md §1 with the paper's settings, as
`rsnjax reproduce double-peak --preset paper` trains it):

1. ``import rsnjax``;
2. ``fit(ScoreNetwork(1, 1000, relu), targets.double_peak(), sigmas=geometric_sigmas(1, 100**-0.9, 10),
   steps_per_level=7800, batch_size=128, optimizer=optax.amsgrad(1e-4), weight_decay=1e-3)`` with
   the paper's plain DSM (no parameter average, antithetic pairs or confinement): 78 000 steps;
3. ``sample(ReservoirSampler.from_score_network(net), num_chains=5000, num_steps=10_000,
   step_size=1e-4, init="uniform")``: the paper's sampler (t = 1);
4. the numbers: the mass within 0.5 of each mode and the MMD² to exact draws.

Each variant runs in its own process (compilation included, as a user waits for it): the default
(the C++ kernels where they are built) and ``RSNJAX_KERNEL=0`` (XLA only). Prints a table and writes
``benchmarks/results/double_peak_api.json`` with the library versions and the load average::

    python benchmarks/double_peak_api.py            # ≈ 1 min on 2 cores
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "double_peak_api.json"


def run_once() -> dict:
    """The experiment in this process; returns the timings and numbers."""
    t0 = time.perf_counter()
    import jax
    import numpy as np
    import optax

    import rsnjax
    from rsnjax import ReservoirSampler, ScoreNetwork, fit, geometric_sigmas, metrics, sample, targets

    t_import = time.perf_counter()
    target = targets.double_peak()
    net = ScoreNetwork(1, 1000, activation="relu", key=jax.random.key(1))
    net, _ = fit(net, target, sigmas=geometric_sigmas(1.0, 100.0 ** -0.9, 10), key=jax.random.key(0),
                 steps_per_level=7800, batch_size=128, optimizer=optax.amsgrad(1e-4), weight_decay=1e-3,
                 ema_decay=None, antithetic=False, confine=None, progress=False)
    jax.block_until_ready(net)
    t_fit = time.perf_counter()
    result = sample(ReservoirSampler.from_score_network(net), key=jax.random.key(2), num_chains=5000,
                    num_steps=10_000, step_size=1e-4, init="uniform", warn=False)
    x = np.asarray(result.samples)
    t_sample = time.perf_counter()
    mass = [float(np.mean(np.abs(x[:, 0] - m) < 0.5)) for m in (-1.0, 1.0)]
    exact = np.asarray(target.sample(jax.random.key(3), 5000))
    mmd2 = float(metrics.mmd(x, exact))
    t_end = time.perf_counter()
    from rsnjax import _dsm_kernel, _kernels
    return {"import_s": t_import - t0, "fit_s": t_fit - t_import, "sample_s": t_sample - t_fit,
            "metrics_s": t_end - t_sample, "total_s": t_end - t0, "mode_mass": mass, "mmd2": mmd2,
            "fit_steps_per_s": 78_000 / (t_fit - t_import),
            "sample_chain_steps_per_s": 5000 * 10_000 / (t_sample - t_fit),
            "dsm_kernel": bool(_dsm_kernel.enabled() and _dsm_kernel.available()),
            "reservoir_kernel": bool(_kernels.enabled() and _kernels.available()),
            "versions": {"rsnjax": rsnjax.__version__, "jax": jax.__version__, "optax": optax.__version__}}


def main() -> None:
    if "--child" in sys.argv:
        print(json.dumps(run_once()))
        return
    rows = {}
    for name, env in (("default (C++ kernels)", {}), ("RSNJAX_KERNEL=0 (XLA only)", {"RSNJAX_KERNEL": "0"})):
        load = os.getloadavg()[0]
        out = subprocess.run([sys.executable, __file__, "--child"], capture_output=True, text=True,
                             env={**os.environ, **env}, check=True)
        rows[name] = {**json.loads(out.stdout.strip().splitlines()[-1]), "load_before": load}
    print("| variant | total s | import | fit (78 000 steps) | sample (5000 × 10 000) | metrics | "
          "mass near −1 / +1 | MMD² | load |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['total_s']:.1f} | {r['import_s']:.1f} | {r['fit_s']:.1f} "
              f"({r['fit_steps_per_s']:.0f}/s) | {r['sample_s']:.1f} ({r['sample_chain_steps_per_s'] / 1e6:.1f} M/s) | "
              f"{r['metrics_s']:.1f} | {r['mode_mass'][0]:.3f} / {r['mode_mass'][1]:.3f} | {r['mmd2']:.1e} | "
              f"{r['load_before']:.1f} |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"rows": rows, "machine": platform.processor() or platform.machine(),
                                   "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M")}, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
