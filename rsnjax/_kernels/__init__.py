"""The optional C++ kernel of the reservoir's sampling loop (``reservoir.cc``, through `jax.ffi`).

`rsnjax.sample` (scan backend) runs a reservoir's steps through this kernel when it is built and
applicable, and through XLA's loop otherwise (the reference; the two agree to float32 rounding):

- built: the package's install compiles it (setup.py; an optional extension, skipped without a
  C++ compiler). `available` says whether it loaded.
- applicable (`applies_to`): a `ReservoirLangevin` without skew in its loop form
  (``_ReservoirStep``), φ = tanh or relu, 1 ≤ d ≤ `MAX_DIM`, float32, on the CPU backend.
- enabled: the environment variable ``RSNJAX_KERNEL`` is not ``0`` (read when a sampler is
  compiled; ``RSNJAX_KERNEL=0`` forces XLA's loop). ``RSNJAX_KERNEL_THREADS`` sets the threads
  each call uses (default: the usable cores divided by the local JAX devices, at least 1).

One kernel call advances a block of chains over all the steps of a `scan_steps` run. For each
group of chains it keeps their states u (padded to whole vectors, aligned) hot in cache and does
one pass over them per step: the update and the next readout together. It draws each step's
noise itself, as `rsnjax.sampling.step_noise` does: the same Threefry-2x32 bits and uniform, then
√2·erf⁻¹ with XLA's float32 polynomial and the kernel's own log, so a normal is bit-identical to
XLA's in ≈ 99 % of draws and within 3 ulps in all (tests/test_kernel.py). With the noise drawn
in XLA instead, the drawing and the hand-over cost a quarter to a third of the run.
"""

from __future__ import annotations

import ctypes
import os

import jax
import jax.numpy as jnp
import numpy as np

from ._library import KernelLibrary

__all__ = ["available", "enabled", "applies_to", "num_threads", "reservoir_runner", "setting", "MAX_DIM",
           "ACTIVATIONS", "normals"]

#: the largest output dimension d the kernel handles (larger d stays on XLA's loop)
MAX_DIM = 8
#: φ the kernel implements, with their codes in reservoir.cc
ACTIVATIONS = {"tanh": 0, "relu": 1}
_TARGET = "rsnjax_reservoir_steps"
def _configure(lib: ctypes.CDLL) -> None:
    lib.rsnjax_tanh.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    lib.rsnjax_phi_loop.argtypes = [ctypes.c_void_p] + [ctypes.c_int64] * 4
    lib.rsnjax_rmw_loop.argtypes = [ctypes.c_void_p] + [ctypes.c_int64] * 3
    lib.rsnjax_fma_loop.argtypes = [ctypes.c_int64, ctypes.c_int64]
    lib.rsnjax_fma_loop.restype = ctypes.c_double
    lib.rsnjax_vector_width.restype = ctypes.c_int64
    lib.rsnjax_normals.argtypes = [ctypes.c_uint32] * 4 + [ctypes.c_int64, ctypes.c_void_p]


_LIBRARY = KernelLibrary("_reservoir", "C++ kernel", {_TARGET: "RsnjaxReservoirSteps"}, _configure)


#: whether the library is built and loaded; why not; and whether it is used (``RSNJAX_KERNEL``)
available = _LIBRARY.available
unavailable_reason = _LIBRARY.unavailable_reason
enabled = _LIBRARY.enabled


def num_threads() -> int:
    """Threads per kernel call: ``RSNJAX_KERNEL_THREADS``, else usable cores // local devices."""
    value = os.environ.get("RSNJAX_KERNEL_THREADS")
    if value:
        try:
            n = int(value)
        except ValueError:
            raise ValueError(f"RSNJAX_KERNEL_THREADS must be a positive integer, got {value!r}") from None
        if n < 1:
            raise ValueError(f"RSNJAX_KERNEL_THREADS must be a positive integer, got {value!r}")
        return n
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, jax.local_device_count()))


def setting() -> tuple:
    """What a compiled sampler depends on here (a part of its compile-cache key)."""
    return (enabled(), num_threads()) if enabled() else (False,)


def applies_to(sde, dtype) -> bool:
    """Whether the kernel can run ``sde``'s loop (see the module docstring)."""
    from ..sde import _ReservoirStep

    return (type(sde) is _ReservoirStep and sde.activation in ACTIVATIONS and 1 <= sde.dim <= MAX_DIM
            and jnp.dtype(dtype) == jnp.float32 and jax.default_backend() == "cpu")


def reservoir_runner(sde, keys, h, dtype, also=None):
    """The kernel's version of `rsnjax.sampling.scan_steps`'s ``run(carry, start, length)`` for a
    block of chains with noise key words ``keys`` ``(block, 2)``, or None when the kernel is not
    enabled or does not apply. ``carry = ((u, c), nonfinite_step, *extra)``; with ``also``,
    ``extra = [p]`` is advanced as ``p = also(p, t)`` for each step t (a recording's private
    noise, which does not depend on the state), else extra is passed through. One kernel call
    runs all ``length`` steps, drawing each step's noise itself (see the module docstring)."""
    if not (enabled() and applies_to(sde, dtype)):
        return None
    a = jnp.asarray(h / sde.tau, jnp.float32)
    root_h = jnp.sqrt(jnp.asarray(h, jnp.float32))
    threads = np.int64(num_threads())
    act = np.int64(ACTIVATIONS[sde.activation])

    def run(carry, start, length):
        (u, c), bad, *extra = carry
        if not length:
            return carry
        start = jnp.asarray(start, jnp.uint32)
        call = jax.ffi.ffi_call(
            _TARGET, (jax.ShapeDtypeStruct(u.shape, jnp.float32), jax.ShapeDtypeStruct(c.shape, jnp.float32),
                      jax.ShapeDtypeStruct(u.shape[:1], jnp.int32)),
            input_output_aliases={0: 0, 1: 1}, vmap_method="sequential")
        u, c, first = call(u, c, keys, start, sde.W_out, sde.in_rows, sde.I, a, root_h, sde.out_noise,
                           steps=np.int64(length), activation=act, num_threads=threads)
        bad = jnp.where((bad < 0) & (first >= 0), start.astype(jnp.int32) + first, bad)
        if also is not None:
            ts = start + jnp.arange(length, dtype=jnp.uint32)
            extra = [jax.lax.scan(lambda p, t: (also(p, t), None), extra[0], ts)[0]]
        return ((u, c), bad, *extra)

    return run


# --- the plain C entry points (tests and benchmarks/machine_bounds.py) --------------------------

def _lib() -> ctypes.CDLL:
    return _LIBRARY.require()


def tanh(x) -> np.ndarray:
    """The kernel's tanh approximation of float32 ``x`` (NumPy in, NumPy out)."""
    x = np.ascontiguousarray(x, np.float32)
    out = np.empty_like(x)
    _lib().rsnjax_tanh(x.ctypes.data, out.ctypes.data, x.size)
    return out


def aligned_rows(rows: int, n: int, value: float) -> np.ndarray:
    """A C-contiguous float32 ``(rows, n)`` array filled with ``value`` whose data starts on a
    64-byte line, for the loops below. (NumPy's own buffers are only 16-byte aligned; a vector
    that straddles two cache lines costs two line accesses, about 13 % of an L2 loop's rate.)"""
    raw = np.empty(rows * n + 16, np.float32)
    offset = (-raw.ctypes.data % 64) // 4
    x = raw[offset:offset + rows * n].reshape(rows, n)
    x[...] = value
    return x


def phi_loop(x: np.ndarray, iters: int, threads: int, activation: str) -> None:
    """``iters`` passes of x ← φ(x)·1.0001 + 1e-3 in place over ``x`` ``(threads, n)`` float32,
    one row per thread."""
    assert x.dtype == np.float32 and x.flags.c_contiguous and x.shape[0] == threads
    _lib().rsnjax_phi_loop(x.ctypes.data, x.shape[1], iters, threads, ACTIVATIONS[activation])


def rmw_loop(x: np.ndarray, iters: int, threads: int) -> None:
    """``iters`` read-modify-write passes x ← 0.9999·x + 1e-4 in place over ``x`` ``(threads, n)``
    float32, one row per thread: the memory traffic of a state pass, with no other limit."""
    assert x.dtype == np.float32 and x.flags.c_contiguous and x.shape[0] == threads
    _lib().rsnjax_rmw_loop(x.ctypes.data, x.shape[1], iters, threads)


def fma_loop(iters: int, threads: int) -> float:
    """Run the float32 FMA-peak loop; returns the floating-point operations it did."""
    return float(_lib().rsnjax_fma_loop(iters, threads))


def normals(key_words, first: int, component: int, count: int) -> np.ndarray:
    """The kernel's standard normals of steps ``first, ..., first + count − 1``, component
    ``component``, for one chain with key words ``key_words`` (2 uint32): what it adds as noise,
    to compare with `rsnjax.sampling.step_noise` (NumPy float32 ``(count,)``)."""
    k0, k1 = (int(w) for w in np.asarray(key_words, np.uint32).reshape(2))
    out = np.empty(int(count), np.float32)
    _lib().rsnjax_normals(k0, k1, int(first), int(component), out.size, out.ctypes.data)
    return out


def vector_width() -> int:
    """Floats per vector the kernel was compiled for (16 with AVX-512, 8 with AVX, else 4)."""
    return int(_lib().rsnjax_vector_width())
