"""NumPy cases: the low-rank reservoir loop in plain NumPy, and NumPy's view of the machine's
limits (BLAS matmul, streaming bandwidth)."""

from __future__ import annotations

import contextlib
import math

import numpy as np

from common import STEP_SIZE, Prepared, initial_reservoir_state, reservoir_weights, workload_name


def _one_blas_thread():
    """Limit BLAS to one thread (threadpoolctl if available; else the caller set
    OPENBLAS_NUM_THREADS/OMP_NUM_THREADS/MKL_NUM_THREADS=1 before numpy was imported)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext(), "env var"
    return threadpool_limits(limits=1, user_api="blas"), "threadpoolctl"


def reservoir(*, dim=2, hidden=1000, activation="tanh", chains, steps, repeats, one_thread=True):
    """``x = r W_outᵀ; r ← r + h(−r + φ(x W_inᵀ + I)) + √h ξ Nmᵀ`` in float32 NumPy, one Python
    iteration per step, one BLAS thread (the tiny rank-d products are 3× slower threaded)."""
    _, _, w = reservoir_weights(dim, hidden, activation)
    W_out, W_in, I, Nm = (w[k] for k in ("W_out", "W_in", "I", "noise_map"))
    phi = np.tanh if activation == "tanh" else (lambda v: np.maximum(v, 0))
    r0 = initial_reservoir_state(chains, hidden)
    rng = np.random.default_rng(0)
    h, sh = np.float32(STEP_SIZE), np.float32(math.sqrt(STEP_SIZE))

    def run():
        r = r0
        for _ in range(steps):
            xi = rng.standard_normal((chains, dim), dtype=np.float32)
            x = r @ W_out.T
            r = r + h * (-r + phi(x @ W_in.T + I)) + sh * (xi @ Nm.T)
        return r

    how = _one_blas_thread()[1] if one_thread else "default"

    def timed():
        with (_one_blas_thread()[0] if one_thread else contextlib.nullcontext()):
            run()

    timed()  # warm-up
    wl = workload_name("reservoir", dim=dim, hidden=hidden, activation=activation, chains=chains)
    return Prepared(timed, work=chains * steps, unit="chain-steps", row=dict(
        group="sampling", workload=wl, impl=f"NumPy, low-rank (1 BLAS thread via {how})", steps=steps,
        chains=chains, hidden=hidden, dim=dim, kind="reservoir", activation=activation))


def numpy_matmul(*, size=2048, repeats):
    a = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    a @ a
    return Prepared(lambda: a @ a, work=2 * size**3, unit="FLOP", row=dict(
        group="limits", workload=f"float32 matmul {size}×{size}", impl="NumPy BLAS (all threads)"))


def numpy_stream(*, megabytes=256, repeats, threads=1):
    """Streaming bandwidth: y = a·x over ``megabytes`` in and out, split over ``threads`` Python
    threads (NumPy releases the GIL in the multiply), bytes read plus written per second."""
    import threading

    n = megabytes * 2**20 // 4
    a = np.ones(n, np.float32)
    out = np.empty_like(a)
    np.multiply(a, 1.0001, out=out)
    bounds = [(i * n // threads, (i + 1) * n // threads) for i in range(threads)]

    def part(lo, hi):
        np.multiply(a[lo:hi], np.float32(1.0001), out=out[lo:hi])

    def run():
        if threads == 1:
            return part(0, n)
        workers = [threading.Thread(target=part, args=b) for b in bounds]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    return Prepared(run, work=2 * n * 4, unit="bytes", row=dict(
        group="limits", workload=f"streaming y = a·x, {megabytes} MB in, {megabytes} MB out",
        impl=f"NumPy ({threads} thread{'s' if threads > 1 else ''})"))
