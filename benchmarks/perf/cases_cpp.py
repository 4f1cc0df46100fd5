"""The machine's limits measured by rsnjax's C++ kernel library (`rsnjax._kernels`): a plain
elementwise φ loop and the float32 FMA peak, one thread per core. Skipped when the kernel is not
built. These are the bounds the report holds the d ≤ 8 samplers to, together with XLA's loops."""

from __future__ import annotations

import os

from common import Prepared, skipped


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _kernels():
    from rsnjax import _kernels

    return _kernels if _kernels.available() else None


def _not_built(workload):
    from rsnjax import _kernels

    return [skipped(group="limits", workload=workload, impl="C++",
                    reason=f"the C++ kernel is not built ({_kernels.unavailable_reason()})")]


def cpp_phi(*, activation="tanh", floats_per_thread=1000, iters=20_000, repeats):
    """``iters`` passes of x ← φ(x)·1.0001 + 1e-3 over ``floats_per_thread`` floats (in L1) on
    every core: φ evaluations per second."""
    k = _kernels()
    if k is None:
        return _not_built(f"φ = {activation}, plain C++ loop, {floats_per_thread} floats per thread")
    threads = _cores()
    x = k.aligned_rows(threads, floats_per_thread, 0.3)
    k.phi_loop(x, max(1, iters // 10), threads, activation)
    return Prepared(lambda: k.phi_loop(x, iters, threads, activation), work=threads * floats_per_thread * iters,
                    unit="elements", row=dict(
                        group="limits", workload=f"φ = {activation}, plain C++ loop, {floats_per_thread} floats per thread",
                        impl=f"C++ ({threads} threads, {k.vector_width()} floats per vector)", activation=activation,
                        devices=threads, what=f"{activation} evaluations", machine_bound=True))


def cpp_fma(*, iters=2_000_000, repeats):
    """The float32 FLOP peak: independent vector FMA chains on every core (2 FLOP per lane)."""
    k = _kernels()
    if k is None:
        return _not_built("float32 FLOP peak (independent FMAs)")
    threads = _cores()
    k.fma_loop(max(1, iters // 10), threads)
    flops = 2.0 * 12 * k.vector_width() * iters * threads
    return Prepared(lambda: k.fma_loop(iters, threads), work=flops, unit="FLOP", row=dict(
        group="limits", workload="float32 FLOP peak (independent FMAs)",
        impl=f"C++ ({threads} threads, {k.vector_width()} floats per vector)", machine_bound=True))
