"""The rsnjax benchmark suite: one command, Markdown table + JSON (+ a scaling figure).

    python benchmarks/run.py            # full suite, about 20 minutes on 2 cores
    python benchmarks/run.py --quick    # a few minutes
    rsnjax bench --quick                # the same, through the command line

What it measures, all float32, in one run (see benchmarks/README.md):

- sampling throughput (chain-steps per second, compilation excluded and reported separately) of
  rsnjax's samplers — the reservoir (N = 1000, d = 2; 1k / 10k / 100k chains), the output-space
  Langevin sampler, the sampler-only circuits, the MNIST scale (d = 300, N = 20 000, 100 chains) —
  and of the other ways to do the same work: a dense-W_rec PyTorch loop (the original code's
  approach), NumPy, a `jax.vmap` of a per-chain step, a plain `lax.scan`, diffrax, BlackJAX;
- DSM training steps per second, rsnjax against the same loop in PyTorch;
- scaling of the time per chain-step with chains, N and d, and peak memory (one process per point);
- the machine's limits (matmul GFLOP/s, streaming bandwidth, φ evaluations per second) and each
  rsnjax workload's fraction of the bound that applies to it.

Every case runs in a child process (`perf/worker.py`) so that JAX can be configured per case (the
tuned setup `rsnjax.sampling.configure_cpu()` vs JAX as a user gets it) and memory is measured
per process. Optional libraries that are missing (torch, blackjax, threadpoolctl) turn their rows
into "skipped" rows.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE / "perf"))

from report import analyse, write_figure, write_markdown  # noqa: E402


# ----------------------------------------------------------------------------------------------
# the plan
# ----------------------------------------------------------------------------------------------


def plan(quick: bool, groups: set[str]) -> list[dict]:
    """The jobs (one child process each): ``{"name", "jax", "cases", "env"}``."""
    q = quick
    rep = 2 if q else 3
    jobs: list[dict] = []

    def job(name, jax_mode, cases, group, env=None):
        if group in groups:
            jobs.append({"name": name, "jax": jax_mode, "cases": cases, "env": env or {}, "group": group})

    res = dict(kind="reservoir", dim=2, hidden=1000, activation="tanh")
    # ---- the machine's limits, measured first and last-ish in the same run ------------------
    job("limits (tuned JAX)", "tuned", [
        ["cases_jax:phi_throughput", dict(activation="tanh", steps=100 if q else 300, repeats=rep)],
        ["cases_jax:phi_throughput", dict(activation="relu", steps=100 if q else 300, repeats=rep)],
    ], "limits")
    job("limits (default JAX)", "default", [
        ["cases_jax:phi_throughput", dict(activation="tanh", steps=100 if q else 300, repeats=rep)],
        ["cases_jax:phi_throughput", dict(activation="relu", steps=100 if q else 300, repeats=rep)],
        ["cases_jax:jax_matmul", dict(size=2048, repeats=rep + 2)],
        ["cases_jax:jax_stream", dict(megabytes=64 if q else 256, repeats=rep + 2)],
    ], "limits")
    job("limits (C++ kernel loops)", "default", [
        ["cases_cpp:cpp_phi", dict(activation="tanh", repeats=rep + 2)],
        ["cases_cpp:cpp_phi", dict(activation="tanh", floats_per_thread=1_000_000, iters=20, repeats=rep + 2)],
        ["cases_cpp:cpp_fma", dict(repeats=rep + 2)],
    ], "limits")
    job("limits (NumPy, PyTorch)", "default", [
        ["cases_numpy:numpy_matmul", dict(size=2048, repeats=rep + 2)],
        ["cases_numpy:numpy_stream", dict(megabytes=64 if q else 256, repeats=rep + 2)],
        ["cases_numpy:numpy_stream", dict(megabytes=64 if q else 256, repeats=rep + 2, threads=os.cpu_count() or 1)],
        ["cases_torch:torch_matmul", dict(size=2048, repeats=rep + 2)],
    ], "limits")

    # ---- sampling ----------------------------------------------------------------------------
    # Each workload's implementations are timed round-robin inside one process ("interleave"), so
    # that they all see the same load from whatever else runs on the machine. The baselines run
    # there unsharded, on one of the tuned process's devices, as they would in default JAX.
    def group(*cases):
        return {"repeats": rep, "interleave": [list(c) for c in cases]}

    def rs(**kw):
        return ["cases_jax:rsnjax_sample", dict(kw, repeats=rep)]

    def ps(**kw):
        return ["cases_jax:plain_scan", dict(kw, repeats=rep)]

    def bj(**kw):
        return ["cases_jax:blackjax_langevin", dict(kw, repeats=rep)]

    out = dict(kind="output", dim=2, hidden=1000, activation="tanh", chains=10_000)
    sc = dict(kind="so", dim=2, dynamics="synaptic_current", activation="relu", chains=10_000)
    fr = dict(sc, dynamics="firing_rate")
    tg = dict(kind="target", dim=2, chains=10_000)
    mnist = dict(kind="reservoir", dim=300, hidden=20_000, activation="relu", chains=100)
    # the φ bound is timed in the same round-robin as the headline rows, so that both see the same
    # load (the limits jobs above measure it again on its own)
    phi = ["cases_jax:phi_throughput", dict(activation="tanh", steps=100 if q else 300, repeats=rep)]
    phi_relu = ["cases_jax:phi_throughput", dict(activation="relu", steps=100 if q else 300, repeats=rep)]
    cpp_tanh = ["cases_cpp:cpp_phi", dict(activation="tanh", repeats=rep)]  # the machine's tanh rate, same load
    cpp_tanh_big = ["cases_cpp:cpp_phi", dict(activation="tanh", floats_per_thread=1_000_000, iters=20, repeats=rep)]
    cpp_fma = ["cases_cpp:cpp_fma", dict(repeats=rep)]  # the FLOP peak, same load
    tuned = [
        group(phi, cpp_tanh, cpp_tanh_big, rs(**res, chains=10_000, steps=100 if q else 1000),
              rs(**res, chains=10_000, steps=100 if q else 300, kernel=False),
              rs(**res, chains=10_000, steps=100 if q else 300, backend="diffrax"),
              ps(**res, chains=10_000, steps=50 if q else 200),
              ["cases_torch:reservoir", dict(dim=2, hidden=1000, activation="tanh", chains=10_000,
                                             steps=1 if q else 2, repeats=rep, dense=True)]),
        group(rs(**res, chains=1_000, steps=500 if q else 2000),
              rs(**res, chains=1_000, steps=500 if q else 2000, backend="diffrax"),
              ps(**res, chains=1_000, steps=200 if q else 1000)),
        group(phi_relu, cpp_fma, rs(**dict(res, activation="relu"), chains=10_000, steps=200 if q else 2000),
              ps(**dict(res, activation="relu"), chains=10_000, steps=50 if q else 300)),
        group(rs(**out, steps=100 if q else 300), ps(**out, steps=50 if q else 200), bj(**out, steps=20 if q else 100)),
        group(rs(**sc, steps=2000 if q else 10_000), ps(**sc, steps=500 if q else 2000), bj(**sc, steps=200 if q else 1000)),
        group(rs(**fr, steps=2000 if q else 10_000), ps(**fr, steps=500 if q else 2000), bj(**fr, steps=200 if q else 1000)),
        group(rs(**tg, steps=1000 if q else 3000), ps(**tg, steps=500 if q else 2000), bj(**tg, steps=200 if q else 1000),
              bj(**tg, steps=200 if q else 1000, algorithm="mala")),
        group(rs(**mnist, steps=5 if q else 40), ps(**mnist, steps=5 if q else 40)),
    ]
    if not q:
        tuned.append(group(rs(**res, chains=100_000, steps=100), ps(**res, chains=100_000, steps=30)))
    job("sampling (tuned JAX)", "tuned", tuned, "sampling")

    job("sampling (default JAX)", "default", [
        group(phi, ps(**res, chains=10_000, steps=50 if q else 200), rs(**res, chains=10_000, steps=100 if q else 200),
              ["cases_jax:vmap_per_chain", dict(dim=2, hidden=1000, activation="tanh", chains=10_000,
                                                steps=20 if q else 100, repeats=rep)],
              ["cases_jax:diffrax_user", dict(dim=2, hidden=1000, activation="tanh", chains=10_000,
                                              steps=20 if q else 100, repeats=rep)]),
    ], "sampling")

    torch_cases = [
        ["cases_torch:reservoir", dict(dim=2, hidden=1000, activation="tanh", chains=10_000,
                                       steps=5 if q else 20, repeats=rep, dense=False)],
        ["cases_torch:output_langevin", dict(dim=2, hidden=1000, activation="tanh", chains=10_000,
                                             steps=5 if q else 20, repeats=rep)],
        ["cases_torch:reservoir", dict(dim=300, hidden=20_000, activation="relu", chains=100, steps=3 if q else 10,
                                       repeats=rep, dense=False)],
    ]
    if not q:  # 1.6 GB of dense W_rec, 80 GFLOP a step
        torch_cases.append(["cases_torch:reservoir", dict(dim=300, hidden=20_000, activation="relu", chains=100,
                                                          steps=2, repeats=2, dense=True)])
    job("PyTorch sampling", "default", torch_cases, "sampling")
    numpy_env = {} if importlib.util.find_spec("threadpoolctl") else {
        "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    job("NumPy sampling", "default", [
        ["cases_numpy:reservoir", dict(dim=2, hidden=1000, activation="tanh", chains=10_000,
                                       steps=3 if q else 10, repeats=rep)],
        ["cases_numpy:reservoir", dict(dim=300, hidden=20_000, activation="relu", chains=100,
                                       steps=2 if q else 5, repeats=rep)],
    ], "sampling", env=numpy_env)

    # ---- training: rsnjax.fit and the PyTorch loop, one process each, back to back -------------
    # (not round-robin in one process: PyTorch's OpenMP threads and XLA's thread pool slow each
    # other down when they share a process on 2 cores)
    job("rsnjax training", "default", [
        {"repeats": 2, "interleave": [
            ["cases_jax:rsnjax_fit", dict(dim=2, hidden=1000, batch=128, chunk=500 if q else 1000,
                                          extra_chunks=2 if q else 3, repeats=1)]]},
        {"repeats": 1 if q else 2, "interleave": [
            ["cases_jax:rsnjax_fit", dict(dim=300, hidden=20_000, batch=64, chunk=5 if q else 20,
                                          extra_chunks=1 if q else 2, repeats=1, data="array")],
            # the same with SGD: the difference is the cost of Adam's update of 12 M parameters
            ["cases_jax:rsnjax_fit", dict(dim=300, hidden=20_000, batch=64, chunk=5 if q else 20,
                                          extra_chunks=1 if q else 2, repeats=1, data="array",
                                          optimizer="sgd")]]},
    ], "training")
    # PyTorch with its default threads (one per core) and with one thread: on a loaded 2-core
    # machine two OpenMP threads can stall each other; the target check uses the faster of the two
    job("PyTorch training", "default", [
        ["cases_torch:dsm_training", dict(dim=2, hidden=1000, batch=128, steps=300 if q else 1000, repeats=rep)],
        ["cases_torch:dsm_training", dict(dim=300, hidden=20_000, batch=64, steps=5 if q else 20, repeats=rep,
                                          data="array")],
    ], "training")
    job("PyTorch training, 1 thread", "default", [
        ["cases_torch:dsm_training", dict(dim=2, hidden=1000, batch=128, steps=300 if q else 1000, repeats=rep,
                                          threads=1)],
        ["cases_torch:dsm_training", dict(dim=300, hidden=20_000, batch=64, steps=5 if q else 20, repeats=rep,
                                          data="array", threads=1)],
    ], "training")

    # ---- scaling: one process per point (its peak memory is that configuration's) ---------------
    center = dict(chains=10_000, hidden=1000, dim=2)
    points = [center]
    chains_axis = [1_000, 10_000] if q else [100, 1_000, 10_000, 100_000]
    hidden_axis = [300, 3000] if q else [100, 300, 1000, 3000, 10_000]
    dim_axis = [1, 8] if q else [1, 2, 4, 8, 16, 64]
    points += [dict(center, chains=c) for c in chains_axis]
    points += [dict(center, hidden=n) for n in hidden_axis]
    points += [dict(center, dim=d) for d in dim_axis]
    unique = []
    for p in points:
        if p not in unique:
            unique.append(p)
    job("idle process", "tuned", [["cases_jax:idle_process", {}]], "scaling")
    for p in unique:
        job(f"scaling chains={p['chains']} N={p['hidden']} d={p['dim']}", "tuned",
            [["cases_jax:scaling_point", dict(p, elements=5e8 if q else 4e9, repeats=2)]], "scaling")
    return jobs


# ----------------------------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------------------------


def run_job(job: dict, timeout: float) -> tuple[list[dict], dict]:
    spec = {"jax": job["jax"], "cases": job["cases"]}
    env = dict(os.environ, **job["env"])
    env.setdefault("PYTHONUNBUFFERED", "1")
    t0 = time.perf_counter()
    rows, info = [], {"name": job["name"], "jax": job["jax"]}
    try:
        proc = subprocess.run([sys.executable, str(HERE / "perf" / "worker.py"), json.dumps(spec)],
                              cwd=str(REPO), env=env, capture_output=True, text=True, timeout=timeout)
        out, err, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err, code = f"timed out after {timeout:.0f} s", -1
    for line in out.splitlines():
        tag, _, payload = line.partition(" ")
        if tag == "RESULT":
            rows.append(json.loads(payload))
        elif tag == "ENV":
            info["env"] = json.loads(payload)
        elif tag == "MAXRSS":
            info.update(json.loads(payload))
    info["seconds"] = time.perf_counter() - t0
    info["returncode"] = code
    if code != 0:
        info["stderr_tail"] = err[-2000:]
        flat = [c for item in job["cases"] for c in (item["interleave"] if isinstance(item, dict) else [item])]
        for target, kwargs in flat[len(rows):]:
            rows.append({"group": job["group"], "workload": target, "impl": target, "kwargs": kwargs,
                         "error": f"worker exited with {code}: {err.strip().splitlines()[-1] if err.strip() else ''}"[:400]})
    for r in rows:
        r["job"] = job["name"]
    return rows, info


def machine_info() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "cpu_count": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        for line in text.splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        flags = next((l for l in text.splitlines() if l.startswith("flags")), "")
        info["avx512"] = " avx512f" in flags
        info["avx2"] = " avx2" in flags
    except OSError:
        info["cpu_model"] = platform.processor() or "unknown"
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            info["memory_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info


def library_versions() -> dict:
    from importlib import metadata

    versions = {}
    for name in ("rsnjax", "jax", "jaxlib", "equinox", "optax", "diffrax", "numpy", "blackjax", "torch",
                 "threadpoolctl", "matplotlib"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats (a few minutes)")
    parser.add_argument("--out", default=str(HERE / "results"), help="directory for results (default: %(default)s)")
    parser.add_argument("--name", default=None, help="file stem (default: 'quick' or 'full')")
    parser.add_argument("--only", default="limits,sampling,training,scaling",
                        help="comma-separated groups to run (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per child process (default: %(default)s)")
    parser.add_argument("--list", action="store_true", help="print the plan and exit")
    parser.add_argument("--from-json", default=None, metavar="PATH",
                        help="rewrite the Markdown report and figure of an earlier run's JSON and exit")
    args = parser.parse_args(argv)
    if args.from_json:
        path = Path(args.from_json)
        old = json.loads(path.read_text())
        result = analyse(old["rows"], old["meta"])
        path.write_text(json.dumps(result, indent=1, default=str))
        figure = write_figure(result, path.with_name(path.stem + "-scaling.png"))
        path.with_suffix(".md").write_text(write_markdown(result, figure_name=figure.name if figure else None))
        print(f"rewrote {path.with_suffix('.md')}", file=sys.stderr)
        return 0
    groups = {g.strip() for g in args.only.split(",") if g.strip()}
    unknown = groups - {"limits", "sampling", "training", "scaling"}
    if unknown:
        parser.error(f"--only: unknown group(s) {sorted(unknown)}")
    jobs = plan(args.quick, groups)
    if args.list:
        for j in jobs:
            print(f"{j['name']}  [{j['jax']}]")
            for item in j["cases"]:
                for target, kwargs in (item["interleave"] if isinstance(item, dict) else [item]):
                    print(f"    {'~ ' if isinstance(item, dict) else ''}{target} {kwargs}")
        return 0

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.name or ("quick" if args.quick else "full")
    started = _dt.datetime.now(_dt.timezone.utc)
    meta = {"mode": "quick" if args.quick else "full", "started": started.isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, "benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])]),
            "machine": machine_info(), "versions": library_versions(), "jobs": []}
    rows: list[dict] = []
    t_all = time.perf_counter()
    for k, job in enumerate(jobs, 1):
        print(f"[{k}/{len(jobs)}] {job['name']} ...", file=sys.stderr, flush=True)
        job_rows, info = run_job(job, args.timeout)
        rows += job_rows
        meta["jobs"].append(info)
        bad = [r for r in job_rows if "error" in r]
        print(f"    {info['seconds']:.0f} s, {len(job_rows)} rows" + (f", {len(bad)} errors" if bad else ""),
              file=sys.stderr, flush=True)
        for r in bad:
            print(f"    error: {r['impl']}: {r['error']}", file=sys.stderr, flush=True)
    meta["seconds"] = time.perf_counter() - t_all
    try:
        meta["machine"]["load_average_end"] = os.getloadavg()
    except OSError:
        pass
    result = analyse(rows, meta)
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(result, indent=1, default=str))
    figure = write_figure(result, out_dir / f"{stem}-scaling.png")
    md_path = out_dir / f"{stem}.md"
    md_path.write_text(write_markdown(result, figure_name=figure.name if figure else None))
    print(md_path.read_text())
    print(f"wrote {md_path}, {json_path}" + (f", {figure}" if figure else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
