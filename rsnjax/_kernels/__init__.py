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

The kernel advances a block of chains over chunks of up to `CHUNK` steps. The noise of those
steps is drawn in XLA by `rsnjax.sampling.step_noise` (the same random numbers as XLA's loop),
folded into the noise part of the readout xc_t = (W_out G) c_t, and handed to the kernel, which
then does one pass over each chain's state per step (update and next readout together).
"""

from __future__ import annotations

import ctypes
import os

import jax
import jax.numpy as jnp
import numpy as np

from ._library import KernelLibrary, switched_on

__all__ = ["available", "enabled", "applies_to", "num_threads", "reservoir_runner", "setting", "MAX_DIM",
           "CHUNK", "ACTIVATIONS"]

#: the largest output dimension d the kernel handles (larger d stays on XLA's loop)
MAX_DIM = 8
#: steps per kernel call (the noise of a chunk is drawn up front: chains × CHUNK × d floats)
CHUNK = 128
#: φ the kernel implements, with their codes in reservoir.cc
ACTIVATIONS = {"tanh": 0, "relu": 1}
_TARGET = "rsnjax_reservoir_steps"
def _configure(lib: ctypes.CDLL) -> None:
    lib.rsnjax_tanh.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    lib.rsnjax_phi_loop.argtypes = [ctypes.c_void_p] + [ctypes.c_int64] * 4
    lib.rsnjax_fma_loop.argtypes = [ctypes.c_int64, ctypes.c_int64]
    lib.rsnjax_fma_loop.restype = ctypes.c_double
    lib.rsnjax_vector_width.restype = ctypes.c_int64


_LIBRARY = KernelLibrary("_reservoir", "C++ kernel", {_TARGET: "RsnjaxReservoirSteps"}, _configure)


def available() -> bool:
    """Whether the C++ kernel is built and loaded."""
    return _LIBRARY.load() is not None


def unavailable_reason() -> str | None:
    """Why `available` is False (None when it is True)."""
    _LIBRARY.load()
    return _LIBRARY.error


def enabled() -> bool:
    """`available` and not switched off by ``RSNJAX_KERNEL=0``."""
    return switched_on() and available()


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
    ``extra = [p]`` is advanced as ``p = also(p, t)`` for each step t of a chunk (a recording's
    private noise, which does not depend on the state), else extra is passed through."""
    if not (enabled() and applies_to(sde, dtype)):
        return None
    from ..sampling import step_noise

    dim = sde.dim
    a = (h / sde.tau).astype(jnp.float32)
    root_h = jnp.sqrt(h)
    threads = np.int64(num_threads())
    act = np.int64(ACTIVATIONS[sde.activation])

    def chunk(carry, start, length: int):
        (u, c), bad, *extra = carry
        ts = start + jnp.arange(length, dtype=jnp.uint32)
        xi = step_noise(keys, ts[:, None, None], dim, dtype)  # (length, block, d), as XLA's loop draws it

        def noise_step(c, xi_t):  # XLA's loop: new_c = (1 − a) c + √h ξ; x = W_out u + (W_out G) c
            return (1.0 - a) * c + root_h * xi_t, c @ sde.out_noise.T

        c, xc = jax.lax.scan(noise_step, c, xi)
        call = jax.ffi.ffi_call(
            _TARGET, (jax.ShapeDtypeStruct(u.shape, jnp.float32), jax.ShapeDtypeStruct(u.shape[:1], jnp.int32)),
            input_output_aliases={0: 0}, vmap_method="sequential")
        u, first = call(u, jnp.moveaxis(xc, 0, 1), sde.W_out, sde.in_rows, sde.I, a,
                        activation=act, num_threads=threads)
        bad = jnp.where((bad < 0) & (first >= 0), start.astype(jnp.int32) + first, bad)
        if also is not None:
            extra = [jax.lax.scan(lambda p, t: (also(p, t), None), extra[0], ts)[0]]
        return ((u, c), bad, *extra)

    def run(carry, start, length):
        start = jnp.asarray(start, jnp.uint32)
        full, rest = divmod(int(length), CHUNK)
        if full == 1:
            carry = chunk(carry, start, CHUNK)
        elif full > 1:
            carry = jax.lax.fori_loop(
                0, full, lambda i, cy: chunk(cy, start + jnp.uint32(CHUNK) * i.astype(jnp.uint32), CHUNK), carry)
        if rest:
            carry = chunk(carry, start + jnp.uint32(full * CHUNK), rest)
        return carry

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


def phi_loop(x: np.ndarray, iters: int, threads: int, activation: str) -> None:
    """``iters`` passes of x ← φ(x)·1.0001 + 1e-3 in place over ``x`` ``(threads, n)`` float32,
    one row per thread."""
    assert x.dtype == np.float32 and x.flags.c_contiguous and x.shape[0] == threads
    _lib().rsnjax_phi_loop(x.ctypes.data, x.shape[1], iters, threads, ACTIVATIONS[activation])


def fma_loop(iters: int, threads: int) -> float:
    """Run the float32 FMA-peak loop; returns the floating-point operations it did."""
    return float(_lib().rsnjax_fma_loop(iters, threads))


def vector_width() -> int:
    """Floats per vector the kernel was compiled for (16 with AVX-512, 8 with AVX, else 4)."""
    return int(_lib().rsnjax_vector_width())
