"""Turn the rows of a benchmark run into bounds, ratios, target checks, a Markdown report and a
scaling figure."""

from __future__ import annotations

import math
from pathlib import Path

#: The issue's targets (see docs/PERFORMANCE.md).
TARGET_DENSE_SPEEDUP = 50.0
TARGET_SCAN_SPEEDUP = 2.0
TARGET_BOUND_FRACTION = 0.80  # of the machine's tanh rate (issue 16; 0.70 of a layout-bound before)
TARGET_RELU_FLOP_FRACTION = 0.60  # the relu reservoir, of the float32 FLOP peak (issue 16)
TARGET_DIFFRAX_RATIO = 1.3
TARGET_TRAINING_SPEEDUP = 3.0

HEADLINE = "reservoir tanh, N=1000, d=2, 10,000 chains"


def _is_rsnjax_tuned(row, backend="scan") -> bool:
    impl = row.get("impl", "")
    return impl.startswith(f"rsnjax ({backend},") and row.get("jax_mode") == "tuned" and "RSNJAX_KERNEL=0" not in impl


def _ok(row) -> bool:
    return "rate" in row and "error" not in row and "skipped" not in row


def _find(rows, workload, pred):
    for r in rows:
        if r.get("workload") == workload and _ok(r) and pred(r):
            return r
    return None


def _is_rsnjax_fit_adam(r: dict) -> bool:
    return r["impl"].startswith("rsnjax") and r.get("optimizer", "adam") == "adam"


def analyse(rows: list[dict], meta: dict) -> dict:
    """Add bounds (``bound_*``, ``fraction_of_bound``), ratios against rsnjax (``rsnjax_speedup``)
    and the target checks; returns the JSON-ready result."""
    for r in rows:  # derived values are recomputed (a report rewritten from JSON included)
        for k in ("bound", "bound_kind", "fraction_of_bound", "achieved_gflops", "rsnjax_speedup",
                  "rsnjax_speedup_cpu"):
            r.pop(k, None)
    limits = {"phi": {}, "matmul_flops": None, "flop_peak": None, "stream_bytes": None}
    for r in rows:
        if r.get("group") != "limits" or not _ok(r):
            continue
        w = r["workload"]
        if w.startswith("φ = "):
            # the machine's φ bound: the best rate of any layout, device count or runtime (XLA's
            # loops in both JAX setups, the C++ loop on all cores); a rate timed round-robin with
            # the samplers (same load) is kept when it is the best
            known = limits["phi"].get(r["activation"])
            if known is None or r["rate"] > known["rate"]:
                limits["phi"][r["activation"]] = {"rate": r["rate"], "impl": r.get("impl", ""),
                                                  "interleaved": bool(r.get("interleaved"))}
        elif w.startswith("float32 matmul"):
            limits["matmul_flops"] = max(limits["matmul_flops"] or 0, r["rate"])
        elif w.startswith("float32 FLOP peak"):
            limits["flop_peak"] = max(limits["flop_peak"] or 0, r["rate"])
        elif w.startswith("streaming"):
            limits["stream_bytes"] = max(limits["stream_bytes"] or 0, r["rate"])
    # the float32 FLOP bound: the best of the FMA loop and any matrix product
    flops_bound = max(limits["flop_peak"] or 0, limits["matmul_flops"] or 0) or None

    for r in rows:
        if r.get("group") not in ("sampling", "scaling", "training") or not _ok(r):
            continue
        kind, hidden, dim = r.get("kind"), r.get("hidden"), r.get("dim")
        mode = "tuned" if r.get("jax_mode") == "tuned" else "default"
        if r.get("impl", "").startswith(("PyTorch", "NumPy")):
            mode = None  # other runtimes: no φ bound of their own measured
        if (kind in ("reservoir", "output") and hidden and dim is not None and dim <= 8 and mode
                and r.get("activation") == "tanh"):
            phi = limits["phi"].get("tanh")
            if phi:  # N tanh evaluations per chain-step
                r["bound"] = phi["rate"] / hidden
                r["bound_kind"] = f"the machine's tanh rate ({phi['impl']}" + \
                    (", timed with it)" if phi.get("interleaved") else ")")
                r["fraction_of_bound"] = r["rate"] / r["bound"]
        elif kind == "reservoir" and hidden and dim is not None and dim <= 8 and mode and flops_bound:
            flops = (4 * dim + 2) * hidden  # W_in x + I, the leak with a folded into φ's input, W_out u
            r["achieved_gflops"] = r["rate"] * flops / 1e9
            r["bound"] = flops_bound / flops
            r["bound_kind"] = f"float32 FLOP peak, {4 * dim + 2} FLOP per neuron"
            r["fraction_of_bound"] = r["rate"] / r["bound"]
        elif kind == "reservoir" and dim and dim > 8 and flops_bound:
            flops = 3 * 2 * hidden * dim  # readout, input and noise products per chain-step
            r["achieved_gflops"] = r["rate"] * flops / 1e9
            r["bound"] = flops_bound / flops
            r["bound_kind"] = "float32 FLOP peak"
            r["fraction_of_bound"] = r["rate"] / r["bound"]
        elif r.get("group") == "training" and r.get("flop_per_step") and flops_bound \
                and dim and dim > 8:
            # A step's time is at least its matrix products at the machine's matmul peak plus the
            # optimiser's pass over the parameters at the best streaming bandwidth (Adam reads
            # θ, g, m, v and writes θ, m, v: 7 float32 streams; SGD 3). The peak already needs
            # both cores, so the two are added, not overlapped.
            r["achieved_gflops"] = r["rate"] * r["flop_per_step"] / 1e9
            seconds = r["flop_per_step"] / flops_bound
            kind = "FLOP peak"
            if r.get("params") and limits["stream_bytes"]:
                streams = {"adam": 7, "sgd": 3}.get(r.get("optimizer", "adam"), 7)
                seconds += streams * 4 * r["params"] / limits["stream_bytes"]
                kind += f" + {streams} parameter streams"
            r["bound"] = 1.0 / seconds
            r["bound_kind"] = kind
            r["fraction_of_bound"] = r["rate"] / r["bound"]

    # ratios against rsnjax (tuned, scan) on the same workload
    for r in rows:
        if r.get("group") not in ("sampling", "training") or not _ok(r):
            continue
        if r["group"] == "training" and r["impl"].startswith("rsnjax"):
            continue  # rsnjax rows are the reference (the SGD row is not a comparison)
        ref = _find(rows, r["workload"], _is_rsnjax_tuned) if r["group"] == "sampling" else \
            _find(rows, r["workload"], _is_rsnjax_fit_adam)
        if ref is not None:
            r["rsnjax_speedup"] = ref["rate"] / r["rate"]
            if ref.get("cpu_rate") and r.get("cpu_rate"):
                r["rsnjax_speedup_cpu"] = ref["cpu_rate"] / r["cpu_rate"]

    targets = []

    def check(name, value, required, better, detail="", cpu_value=None):
        if value is None:
            targets.append({"target": name, "required": required, "measured": None, "met": None,
                            "better": better, "detail": detail})
            return
        met = value >= required if better == "higher" else value <= required
        targets.append({"target": name, "required": required, "measured": value, "met": bool(met),
                        "better": better, "detail": detail, "measured_cpu": cpu_value})

    ref = _find(rows, HEADLINE, _is_rsnjax_tuned)
    # prefer the rows timed round-robin with rsnjax in the same process
    dense = _find(rows, HEADLINE, lambda x: x["impl"].startswith("PyTorch, dense") and x.get("interleaved")) or \
        _find(rows, HEADLINE, lambda x: x["impl"].startswith("PyTorch, dense"))
    scan = _find(rows, HEADLINE, lambda x: x["impl"].startswith("plain lax.scan") and x.get("jax_mode") == "tuned") or \
        _find(rows, HEADLINE, lambda x: x["impl"].startswith("plain lax.scan"))
    scan_default = _find(rows, HEADLINE, lambda x: x["impl"].startswith("plain lax.scan") and x.get("jax_mode") == "default")
    rsn_default = _find(rows, HEADLINE, lambda x: x["impl"].startswith("rsnjax (scan") and x.get("jax_mode") == "default")
    dfx = _find(rows, HEADLINE, lambda x: _is_rsnjax_tuned(x, "diffrax"))

    def ratio(a, b, key="rate"):
        return a[key] / b[key] if a and b and a.get(key) and b.get(key) else None

    check(f"{HEADLINE}: rsnjax vs PyTorch dense-W_rec loop", ratio(ref, dense), TARGET_DENSE_SPEEDUP, "higher",
          cpu_value=ratio(ref, dense, "cpu_rate"))
    check(f"{HEADLINE}: rsnjax vs plain lax.scan (matmul form, no blocking)", ratio(ref, scan),
          TARGET_SCAN_SPEEDUP, "higher", cpu_value=ratio(ref, scan, "cpu_rate"))
    if scan_default is not None and scan_default is not scan:
        check(f"{HEADLINE}: rsnjax vs plain lax.scan, both in default JAX (1 device)", ratio(rsn_default, scan_default),
              TARGET_SCAN_SPEEDUP, "higher", cpu_value=ratio(rsn_default, scan_default, "cpu_rate"))
    check(f"{HEADLINE}: rsnjax fraction of the machine's tanh bound",
          ref.get("fraction_of_bound") if ref else None, TARGET_BOUND_FRACTION, "higher",
          detail=ref.get("bound_kind", "") if ref else "")
    relu = HEADLINE.replace("tanh", "relu")
    ref_relu = _find(rows, relu, _is_rsnjax_tuned)
    if ref_relu is not None:
        check(f"{relu}: rsnjax fraction of the float32 FLOP peak", ref_relu.get("fraction_of_bound"),
              TARGET_RELU_FLOP_FRACTION, "higher", detail=ref_relu.get("bound_kind", ""))
    check(f"{HEADLINE}: diffrax backend time / scan time", ratio(ref, dfx), TARGET_DIFFRAX_RATIO, "lower",
          cpu_value=ratio(ref, dfx, "cpu_rate"))
    xla_loop = _find(rows, HEADLINE, lambda x: x["impl"].startswith("rsnjax (scan,") and "RSNJAX_KERNEL=0" in x["impl"])
    if xla_loop is not None:  # diffrax cannot use the C++ kernel: against the scan backend's XLA loop
        check(f"{HEADLINE}: diffrax backend time / scan time on XLA's loop (RSNJAX_KERNEL=0)",
              ratio(xla_loop, dfx), TARGET_DIFFRAX_RATIO, "lower", cpu_value=ratio(xla_loop, dfx, "cpu_rate"))
    small = HEADLINE.replace("10,000", "1,000")
    ref1 = _find(rows, small, _is_rsnjax_tuned)
    dfx1 = _find(rows, small, lambda x: _is_rsnjax_tuned(x, "diffrax"))
    if ref1 or dfx1:
        check(f"{small}: diffrax backend time / scan time", ratio(ref1, dfx1), TARGET_DIFFRAX_RATIO, "lower",
              cpu_value=ratio(ref1, dfx1, "cpu_rate"))
    best_torch = {}
    for r in rows:  # the faster PyTorch set-up (default threads or one thread) per workload
        if r.get("group") == "training" and _ok(r) and r["impl"].startswith("PyTorch"):
            if r["workload"] not in best_torch or r["rate"] > best_torch[r["workload"]]["rate"]:
                best_torch[r["workload"]] = r
    for wl, r in best_torch.items():
        detail = ""
        if r.get("bound"):
            detail = (f"the machine's bound for this step ({r['bound_kind']}) is {r['bound']:.3g} steps/s, "
                      f"{r['bound'] / r['rate']:.2g}× this PyTorch loop")
        check(f"{wl}: rsnjax.fit vs the faster PyTorch loop ({r['impl'].split(', ')[-1]})",
              r.get("rsnjax_speedup"), TARGET_TRAINING_SPEEDUP, "higher", detail=detail,
              cpu_value=r.get("rsnjax_speedup_cpu"))
    return {"meta": meta, "limits": limits, "targets": targets, "rows": rows}


# ----------------------------------------------------------------------------------------------
# formatting
# ----------------------------------------------------------------------------------------------


def si(value, unit="") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def _x(value) -> str:
    if value is None:
        return "–"
    return f"{value:.3g}×" if value < 100 else f"{value:.0f}×"


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.0f} %"


def write_markdown(result: dict, *, figure_name: str | None = None) -> str:
    meta, rows, limits = result["meta"], result["rows"], result["limits"]
    m = meta["machine"]
    v = meta["versions"]
    lines = [f"# rsnjax benchmarks ({meta['mode']} run)", ""]
    lines += [
        f"- date: {meta['started']} (UTC), {meta.get('seconds', 0) / 60:.1f} min in all",
        f"- command: `{meta['command']}`",
        f"- machine: {m.get('cpu_model', '?')}, {m.get('cpu_count')} cores, "
        f"AVX-512: {'yes' if m.get('avx512') else 'no'}, {m.get('memory_gb', '?')} GB; "
        f"load average at start {', '.join(f'{x:.1f}' for x in m.get('load_average', []))}"
        + (f", at end {', '.join(f'{x:.1f}' for x in m['load_average_end'])}" if m.get("load_average_end") else ""),
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val) +
        (" (not installed: " + ", ".join(k for k, val in v.items() if not val) + ")" if any(not x for x in v.values()) else ""),
        "- float32 throughout; rates are the best of the timed repeats (wall clock, compilation and a "
        "warm-up run excluded); *per CPU-s* divides by the process's CPU seconds instead (less "
        "sensitive to other processes on a shared machine).",
        "- tuned JAX = `rsnjax.sampling.configure_cpu()` (one XLA CPU device per core, sharded chains; "
        "AVX-512 vector width where available); default JAX = one CPU device, no flags.",
        "- GPU: not measured (no GPU in this run). To measure on a CUDA machine: install `jax[cuda12]` "
        "and run `JAX_PLATFORMS=cuda python benchmarks/run.py --only sampling,training` (untested).",
        "",
    ]
    # targets
    lines += ["## Targets", "", "| target | required | measured (wall) | per CPU-s | met |", "|---|---|---|---|---|"]
    for t in result["targets"]:
        better = "≥" if t.get("better", "higher") == "higher" else "≤"
        req = f"{better} {_pct(t['required'])}" if "fraction" in t["target"] else f"{better} {t['required']:g}×"
        if t["measured"] is None:
            meas = "not measured"
        elif "fraction" in t["target"]:
            meas = _pct(t["measured"]) + (f" ({t['detail']})" if t.get("detail") else "")
        else:
            meas = _x(t["measured"]) + (f" ({t['detail']})" if t.get("detail") else "")
        cpu = _x(t.get("measured_cpu")) if t.get("measured_cpu") else "–"
        met = {True: "yes", False: "**no**", None: "–"}[t["met"]]
        lines.append(f"| {t['target']} | {req} | {meas} | {cpu} | {met} |")
    lines.append("")

    # limits
    lines += ["## The machine's limits (same run)", "", "| limit | implementation | rate |", "|---|---|---|"]
    for r in rows:
        if r.get("group") == "limits":
            if _ok(r):
                unit = {"FLOP": "FLOP/s", "bytes": "B/s", "elements": "elements/s"}.get(r["unit"], r["unit"] + "/s")
                timed = " (timed round-robin with the samplers)" if r.get("interleaved") else ""
                lines.append(f"| {r['workload']} | {r['impl']}{timed} | {si(r['rate'], unit)} |")
            else:
                lines.append(f"| {r['workload']} | {r['impl']} | {r.get('skipped') or r.get('error')} |")
    lines.append("")

    # sampling
    lines += ["## Sampling throughput (chain-steps per second)", "",
              "Slow baselines run fewer steps (the `steps` column); every rate is per chain-step.", ""]
    workloads = []
    for r in rows:
        if r.get("group") == "sampling" and r.get("workload") not in workloads:
            workloads.append(r["workload"])
    for wl in workloads:
        lines += [f"### {wl}", "",
                  "| implementation | JAX setup | steps | chain-steps/s | median | per CPU-s | compile s | rsnjax is | of bound |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if r.get("group") != "sampling" or r.get("workload") != wl:
                continue
            if not _ok(r):
                lines.append(f"| {r['impl']} | | | {r.get('skipped') or 'error: ' + str(r.get('error'))} | | | | | |")
                continue
            bound = ""
            if r.get("fraction_of_bound") is not None:
                bound = f"{_pct(r['fraction_of_bound'])} of {si(r['bound'])}"
            compile_s = f"{r['compile_s']:.2f}" if r.get("compile_s") is not None else "–"
            speed = "" if _is_rsnjax_tuned(r) else _x(r.get("rsnjax_speedup"))
            setup = r.get("jax_mode", "") if not r["impl"].startswith(("PyTorch", "NumPy")) else "–"
            lines.append(f"| {r['impl']} | {setup} | {r.get('steps', '')} | {si(r['rate'])} | {si(r['median_rate'])} | "
                         f"{si(r.get('cpu_rate'))} | {compile_s} | {speed} | {bound} |")
        lines.append("")
    # training
    lines += ["## Training throughput (DSM optimiser steps per second)", "",
              "*first call s*: the first `fit` call's wall time, tracing and compilation included. "
              "*of bound*: against the step's five matrix products (10·batch·d·N FLOP) at the "
              "machine's float32 matmul peak plus the optimiser's passes over the parameters at its "
              "best streaming bandwidth (7 for Adam, 3 for SGD), for d > 8. The d = 2 step is bound by "
              "neither: it is a few passes over a batch × N array.", "",
              "| workload | implementation | steps/s | per CPU-s | first call s | of bound | rsnjax is |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("group") != "training":
            continue
        if not _ok(r):
            lines.append(f"| {r.get('workload')} | {r['impl']} | {r.get('skipped') or 'error: ' + str(r.get('error'))} | | | | |")
            continue
        speed = "" if r["impl"].startswith("rsnjax") else _x(r.get("rsnjax_speedup"))
        first = f"{r['first_call_s']:.2f}" if r.get("first_call_s") is not None else "–"
        peak = (f"{_pct(r['fraction_of_bound'])} of {r['bound']:.3g} ({r['achieved_gflops']:.3g} GFLOP/s)"
                if r.get("fraction_of_bound") is not None else "–")
        lines.append(f"| {r['workload']} | {r['impl']} | {r['rate']:.4g} | {si(r.get('cpu_rate'))} | {first} | "
                     f"{peak} | {speed} |")
    lines.append("")
    # scaling
    scale = [r for r in rows if r.get("group") == "scaling" and _ok(r)]
    idle = next((r for r in rows if r.get("impl") == "baseline"), None)
    if scale:
        lines += ["## Scaling (rsnjax reservoir, tanh, tuned JAX; one process per row)", ""]
        if idle:
            lines.append(f"An idle process (JAX and rsnjax imported) peaks at {idle['process_peak_rss_mb']:.0f} MB.")
            lines.append("")
        lines += ["| chains | N | d | steps | ns per chain-step | chain-steps/s | compile s | state MB | peak RSS MB |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(scale, key=lambda r: (r["chains"], r["hidden"], r["dim"])):
            lines.append(f"| {r['chains']:,} | {r['hidden']:,} | {r['dim']} | {r['steps']} | "
                         f"{1e9 * r['seconds_per_chain_step']:.3g} | {si(r['rate'])} | {r['compile_s']:.2f} | "
                         f"{r['state_mb']:.1f} | {r['process_peak_rss_mb']:.0f} |")
        lines.append("")
        if figure_name:
            lines += [f"![scaling]({figure_name})", ""]
    errors = [r for r in rows if "error" in r]
    if errors:
        lines += ["## Errors", ""] + [f"- {r.get('job')}: {r['impl']}: {r['error']}" for r in errors] + [""]
    return "\n".join(lines)


def write_figure(result: dict, path: Path):
    rows = [r for r in result["rows"] if r.get("group") == "scaling" and _ok(r)]
    if not rows:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    center = {"chains": 10_000, "hidden": 1000, "dim": 2}
    for ax, axis, label in zip(axes[:3], ("chains", "hidden", "dim"), ("chains", "reservoir size N", "output dim d")):
        pts = sorted((r[axis], r["seconds_per_chain_step"]) for r in rows
                     if all(r[k] == v for k, v in center.items() if k != axis))
        if pts:
            xs, ys = zip(*pts)
            ax.loglog(xs, [1e9 * y for y in ys], "o-")
        ax.set_xlabel(label)
        ax.set_ylabel("ns per chain-step")
        ax.set_title(f"vs {label}\n(others: {', '.join(f'{k}={v}' for k, v in center.items() if k != axis)})",
                     fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    ax = axes[3]
    ax.loglog([r["state_mb"] for r in rows], [r["process_peak_rss_mb"] for r in rows], "o")
    idle = next((r for r in result["rows"] if r.get("impl") == "baseline"), None)
    if idle:
        ax.axhline(idle["process_peak_rss_mb"], ls="--", color="grey", label="idle process")
        ax.legend(fontsize=8)
    ax.set_xlabel("reservoir state (MB)")
    ax.set_ylabel("peak RSS of the process (MB)")
    ax.set_title("memory", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
