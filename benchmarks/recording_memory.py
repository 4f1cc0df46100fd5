"""Peak memory of a recording `sample` run against the documented bound.

Each case runs in a fresh process (so that its peak resident set size is its own) and reports
ru_maxrss. The extra memory of a recording is the peak RSS of a recording run minus that of the
same run without recording; the documented bound is `rsnjax._recording.recording_bytes`
(G·⌈R/G⌉·num_records·K·itemsize, K doubled with rates). For scale, the full state trajectory
(every chain, every neuron, every record) is reported too — it is never formed.

    python benchmarks/recording_memory.py            # ≈ 1 min on 2 cores → benchmarks/results/recording_memory.json
    python benchmarks/recording_memory.py --out /tmp/rec.json
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

HERE = Path(__file__).resolve().parent

CASE = r"""
import json, resource, sys, time
import jax, numpy as np, rsnjax
from rsnjax._recording import recording_bytes
cfg = json.loads(sys.argv[1])
net = rsnjax.ScoreNetwork(2, cfg["hidden"], key=jax.random.key(0))
res = rsnjax.ReservoirSampler.from_score_network(net)
kw = dict(key=jax.random.key(1), num_chains=cfg["chains"], num_steps=cfg["steps"], step_size=1e-3,
          block_size=cfg["block"], warn=False)
rec = {}
if cfg["record"]:
    rec = dict(record_every=cfg["every"], record_chains=np.arange(cfg["rec_chains"]),
               record_neurons=np.arange(cfg["rec_neurons"]), record_rates=cfg["rates"])
    if cfg["private"]:
        rec["private_noise"] = 0.5
t0 = time.perf_counter()
out = rsnjax.sample(res, **kw, **rec)
jax.block_until_ready(out.samples)
wall = time.perf_counter() - t0
shape = None if out.activity is None else list(out.activity.shape)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
blocks = -(-cfg["chains"] // cfg["block"])
bound = recording_bytes(cfg["steps"] // cfg["every"], cfg["rec_chains"], cfg["rec_neurons"], num_blocks=blocks,
                        rates=cfg["rates"]) if cfg["record"] else 0
print(json.dumps({"peak_rss_bytes": peak, "wall_s": wall, "activity_shape": shape, "bound_bytes": bound,
                  "full_trajectory_bytes": cfg["steps"] // cfg["every"] * cfg["chains"] * cfg["hidden"] * 4}))
"""

BASE = dict(hidden=500, chains=2048, steps=1000, block=256, every=5, rec_chains=256, rec_neurons=500,
            rates=False, private=False, record=False)
CASES = {
    "no recording": {},
    "record 256 chains x 500 neurons": {"record": True},
    "  + rates": {"record": True, "rates": True},
    "  + private noise": {"record": True, "private": True},
    "record 16 chains x 50 neurons": {"record": True, "rec_chains": 16, "rec_neurons": 50},
}


def run_case(cfg: dict) -> dict:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", CASE, json.dumps(cfg)], capture_output=True, text=True, env=env,
                          timeout=900)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(HERE / "results" / "recording_memory.json"))
    args = parser.parse_args(argv)
    rows = {}
    for name, change in CASES.items():
        cfg = {**BASE, **change}
        rows[name] = {"config": cfg, **run_case(cfg)}
    base = rows["no recording"]["peak_rss_bytes"]
    mib = 2.0**20
    print(f"{'case':34s} {'peak RSS MiB':>12s} {'extra MiB':>10s} {'bound MiB':>10s} {'extra/bound':>11s} "
          f"{'full traj. MiB':>14s} {'wall s':>7s}")
    for name, r in rows.items():
        r["extra_bytes"] = r["peak_rss_bytes"] - base
        r["extra_over_bound"] = r["extra_bytes"] / r["bound_bytes"] if r["bound_bytes"] else None
        ratio = f"{r['extra_over_bound']:.2f}" if r["extra_over_bound"] is not None else "—"
        print(f"{name:34s} {r['peak_rss_bytes'] / mib:12.0f} {r['extra_bytes'] / mib:10.0f} "
              f"{r['bound_bytes'] / mib:10.1f} {ratio:>11s} {r['full_trajectory_bytes'] / mib:14.0f} {r['wall_s']:7.1f}")
    record = {"cases": rows, "context": {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "python": platform.python_version(),
                                         "machine": platform.machine(), "cpus": os.cpu_count(),
                                         "loadavg": os.getloadavg()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
