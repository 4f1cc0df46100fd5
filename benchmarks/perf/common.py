"""Timing helpers and the workload definitions shared by every benchmark case.

Every case function returns a list of records (dicts). A sampling record has ``work`` chain-steps
per timed run and ``best_s`` / ``median_s`` wall seconds over ``repeats`` timed runs (compilation
and one warm-up run excluded), ``cpu_s`` the process CPU seconds of the best run, and derived
``rate`` (chain-steps per wall second of the best run) and ``cpu_rate`` (per CPU second).
"""

from __future__ import annotations

import math
import resource
import statistics
import time
from typing import Callable

#: Step size of every sampling workload (the value does not change the cost of a step).
STEP_SIZE = 1e-3


def cpu_seconds() -> float:
    """User + system CPU seconds of this process, all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_mb() -> float:
    """Peak resident memory of this process (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(run: Callable[[], object], *, repeats: int) -> dict:
    """Time ``run()`` (which must block until its work is done) ``repeats`` times.

    **Returns:** ``best_s``, ``median_s`` (wall seconds), ``cpu_s`` (CPU seconds of the best run),
    ``repeats``.
    """
    walls, cpus = [], []
    for _ in range(max(1, repeats)):
        wall, cpu = time_once(run)
        walls.append(wall)
        cpus.append(cpu)
    return timing_from(walls, cpus)


class Prepared:
    """A case ready to be timed: ``run()`` does ``work`` units (and blocks until done); ``row``
    holds the record's other fields. The worker times it (possibly interleaved with other
    prepared cases of the same process, so that they see the same machine load)."""

    def __init__(self, run: Callable[[], object], *, work: float, unit: str, row: dict,
                 timer: Callable[[], tuple[float, float]] | None = None,
                 extra: Callable[[], dict] | None = None):
        self.run = run
        self.extra = extra  # if given: more fields for the record, known only after timing
        self.work = work
        self.unit = unit
        self.row = row
        self.timer = timer  # if given: returns (wall, cpu) seconds of ``work`` units itself

    def time(self) -> tuple[float, float]:
        return self.timer() if self.timer is not None else time_once(self.run)


def timing_from(walls: list[float], cpus: list[float]) -> dict:
    best = min(range(len(walls)), key=walls.__getitem__)
    return {"best_s": walls[best], "median_s": statistics.median(walls), "cpu_s": cpus[best],
            "repeats": len(walls)}


def time_once(run: Callable[[], object]) -> tuple[float, float]:
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0, cpu_seconds() - c0


def record(*, group: str, workload: str, impl: str, work: float, unit: str, timing: dict,
           compile_s: float | None = None, **extra) -> dict:
    """A result row: ``rate = work / best_s`` in ``unit`` per second (and per CPU second)."""
    row = {"group": group, "workload": workload, "impl": impl, "unit": unit, "work": work,
           "compile_s": compile_s, **timing, **extra}
    row["rate"] = work / timing["best_s"]
    row["median_rate"] = work / timing["median_s"]
    row["cpu_rate"] = work / timing["cpu_s"] if timing.get("cpu_s", 0) > 0 else None
    return row


def finish(prepared: "Prepared", timing: dict) -> dict:
    """The record of a timed `Prepared` case."""
    row = dict(prepared.row)
    if prepared.extra is not None:
        row.update(prepared.extra())
    return record(group=row.pop("group"), workload=row.pop("workload"), impl=row.pop("impl"),
                  work=prepared.work, unit=prepared.unit, timing=timing, **row)


def skipped(*, group: str, workload: str, impl: str, reason: str, **extra) -> dict:
    return {"group": group, "workload": workload, "impl": impl, "skipped": reason, **extra}


def dsm_step_cost(*, dim: int, hidden: int, batch: int) -> dict:
    """A DSM training step's size, for its bound: ``flop_per_step``, the five matrix products
    (two forward, three backward) of 2·batch·d·N FLOP each, and ``params``, 2dN + N."""
    return {"flop_per_step": 10 * batch * dim * hidden, "params": 2 * dim * hidden + hidden}


def workload_name(kind: str, **p) -> str:
    """Stable, human-readable workload labels used to line up rows across implementations."""
    if kind == "reservoir":
        return f"reservoir {p['activation']}, N={p['hidden']}, d={p['dim']}, {p['chains']:,} chains"
    if kind == "output":
        return f"output-space Langevin (score net {p['activation']}, N={p['hidden']}, d={p['dim']}), {p['chains']:,} chains"
    if kind == "so":
        return f"SO-{p['dynamics']} ({p['activation']}, d={p['dim']}), {p['chains']:,} chains"
    if kind == "target":
        return f"known target (ring of 8 Gaussians, d=2), {p['chains']:,} chains"
    if kind == "train":
        return f"DSM training, d={p['dim']}, N={p['hidden']}, batch {p['batch']}"
    raise ValueError(kind)


def reservoir_weights(dim: int, hidden: int, activation: str):
    """The reservoir every implementation runs: the exact mapping of a freshly initialised
    `ScoreNetwork` (key 0), as numpy float32 arrays ``W_out (d,N), W_in (N,d), I (N,),
    noise_map (N,d)`` plus the rsnjax objects."""
    import jax
    import numpy as np

    import rsnjax

    net = rsnjax.ScoreNetwork(dim, hidden, activation=activation, key=jax.random.key(0))
    res = rsnjax.ReservoirSampler.from_score_network(net)
    arrays = {k: np.array(getattr(res, k), np.float32) for k in ("W_out", "W_in", "I", "noise_map")}
    return net, res, arrays


def initial_reservoir_state(chains: int, hidden: int):
    """r₀ ~ U[−2, 2]^N (the paper's start), float32 numpy, the same for every implementation."""
    import numpy as np

    return np.random.default_rng(0).uniform(-2.0, 2.0, (chains, hidden)).astype(np.float32)


def sqrt_step() -> float:
    return math.sqrt(STEP_SIZE)
