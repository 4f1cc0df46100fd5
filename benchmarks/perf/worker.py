"""Run a list of benchmark cases in a fresh process and print one ``RESULT <json>`` line each.

Usage (from `benchmarks/run.py`): ``python worker.py '<json spec>'`` with the spec
``{"jax": "tuned" | "default", "cases": [["module:function", {kwargs}] | {"interleave": [...],
"repeats": k}, ...]}``. A case function returns a `common.Prepared` (timed here) or finished rows.

``"tuned"`` calls `rsnjax.sampling.configure_cpu()` before JAX starts (one XLA CPU device per core,
AVX-512 vector width where the CPU has it), as the docs tell users to; ``"default"`` leaves JAX
as a user gets it (one CPU device, no flags). Each process reports its peak resident memory.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    mode = spec.get("jax", "default")
    import jax

    if mode == "tuned":
        from rsnjax.sampling import configure_cpu

        applied = configure_cpu(spec.get("num_devices"))
    else:
        applied = {"num_devices": 1, "xla_flags": os.environ.get("XLA_FLAGS", "")}
    print("ENV " + json.dumps({"jax_mode": mode, **applied, "devices": len(jax.local_devices())}), flush=True)

    from common import Prepared, finish, peak_rss_mb, timing_from

    def emit(rows, target, t0):
        for row in rows:
            row.setdefault("case", target)
            row["case_seconds"] = time.perf_counter() - t0
            row["jax_mode"] = mode
            row["process_peak_rss_mb"] = peak_rss_mb()
            print("RESULT " + json.dumps(row, default=str), flush=True)

    def error_row(target, kwargs, err):
        traceback.print_exc(file=sys.stderr)
        return {"group": kwargs.get("group", "?"), "workload": target, "impl": target,
                "error": f"{type(err).__name__}: {err}"[:500], "kwargs": kwargs}

    def prepare(target, kwargs):
        module_name, function_name = target.split(":")
        return getattr(importlib.import_module(module_name), function_name)(**kwargs)

    for item in spec["cases"]:
        t0 = time.perf_counter()
        load = os.getloadavg()[0]
        # an item is [target, kwargs], or {"interleave": [[target, kwargs], ...], "repeats": k}: the
        # prepared cases of a group are timed round-robin, so that they see the same machine load
        group = item["interleave"] if isinstance(item, dict) else [item]
        repeats = item.get("repeats", 3) if isinstance(item, dict) else item[1].get("repeats", 3)
        prepared, done = [], []
        for target, kwargs in group:
            try:
                result = prepare(target, kwargs)
            except Exception as err:  # a failing case must not take the others down
                done.append((target, [error_row(target, kwargs, err)]))
                continue
            if isinstance(result, Prepared):
                prepared.append((target, kwargs, result, [], []))
            else:
                done.append((target, result))
        for _ in range(max(1, repeats)):
            for target, kwargs, p, walls, cpus in prepared:
                try:
                    wall, cpu = p.time()
                except Exception as err:
                    done.append((target, [error_row(target, kwargs, err)]))
                    p.run = None
                    continue
                walls.append(wall)
                cpus.append(cpu)
            prepared = [x for x in prepared if x[2].run is not None]
        for target, kwargs, p, walls, cpus in prepared:
            row = finish(p, timing_from(walls, cpus))
            row["load_average"] = load
            if len(group) > 1:
                row["interleaved"] = True
            done.append((target, [row]))
        for target, rows in done:
            emit(rows, target, t0)
    print("MAXRSS " + json.dumps({"peak_rss_mb": peak_rss_mb()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
