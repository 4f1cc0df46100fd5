"""The optional C++ kernels of a `ScoreNetwork`'s DSM gradient (``rsnjax/_kernels/dsm.cc``, through
`jax.ffi`).

`rsnjax.dsm_value_and_grad` (and so `rsnjax.fit`) and the far-field penalty of `fit` compute a
`ScoreNetwork`'s forward and backward passes with these kernels when they are built and apply,
and with XLA otherwise (the reference; the two agree to float32 rounding):

- built: the package's install compiles them (setup.py; an optional extension, skipped without a
  C++ compiler). `available` says whether they loaded, `unavailable_reason` why not.
- applicable (`applies_to`): a `ScoreNetwork` with φ = relu or tanh, 1 ≤ d ≤ `MAX_DIM`, float32
  parameters and inputs, on the CPU backend.
- enabled: the environment variable ``RSNJAX_KERNEL`` is not ``0`` (read when a step is traced;
  ``RSNJAX_KERNEL=0`` turns every C++ kernel of rsnjax off).

The two kernels, each one pass over the ``(rows, N)`` activations, which never exist in memory:

- `forward`: ``out = φ(x Bᵀ + b) Aᵀ`` ``(rows, d)`` (the score is ``out − x``);
- `backward`: for an output cotangent ``g`` ``(rows, d)``, the gradient of Σ g · out with respect to
  (A, B, b): ``gA = gᵀ h``, ``gB = g_hᵀ x``, ``gb = Σ_rows g_h`` with h = φ(u), u = x Bᵀ + b and
  g_h = (g A) ⊙ φ'(u); it recomputes u and h instead of storing them.

The cotangent between them (d numbers per row) is computed by XLA.
"""

from __future__ import annotations

import ctypes

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._kernels._library import KernelLibrary

__all__ = ["available", "unavailable_reason", "enabled", "applies_to", "forward", "backward", "MAX_DIM",
           "ACTIVATIONS"]

#: the largest d the kernels handle (a larger network stays on XLA)
MAX_DIM = 4
#: φ the kernels implement, with their codes in dsm.cc
ACTIVATIONS = {"tanh": 0, "relu": 1}
_FORWARD = "rsnjax_dsm_forward"
_BACKWARD = "rsnjax_dsm_backward"
def _configure(lib: ctypes.CDLL) -> None:
    lib.rsnjax_dsm_vector_width.restype = ctypes.c_int64


_LIBRARY = KernelLibrary("_dsm", "C++ DSM kernel",
                         {_FORWARD: "RsnjaxDsmForward", _BACKWARD: "RsnjaxDsmBackward"}, _configure)


#: whether the library is built and loaded; why not; and whether it is used (``RSNJAX_KERNEL``)
available = _LIBRARY.available
unavailable_reason = _LIBRARY.unavailable_reason
enabled = _LIBRARY.enabled


def _lib() -> ctypes.CDLL:
    return _LIBRARY.require()


def vector_width() -> int:
    """Floats per vector the kernels were compiled for (16 with AVX-512, 8 with AVX, else 4)."""
    return int(_lib().rsnjax_dsm_vector_width())


def applies_to(net, x) -> bool:
    """Whether the kernels compute ``net``'s passes at inputs ``x`` (see the module docstring):
    enabled, ``type(net) is ScoreNetwork``, relu or tanh, 1 ≤ d ≤ `MAX_DIM`, float32, CPU."""
    from .networks import ScoreNetwork

    return (type(net) is ScoreNetwork and net.activation in ACTIVATIONS and 1 <= net.dim <= MAX_DIM
            and net.hidden >= 1 and all(a.dtype == jnp.float32 for a in (net.A, net.B, net.b, x))
            and jax.default_backend() == "cpu" and enabled())


def _xla_forward(net, x):
    from .dsm import _score_network_forward

    return _score_network_forward(net, x)[2]


def _xla_backward(net, x, g):
    from .dsm import _score_network_backward, _score_network_forward

    pre, h, _ = _score_network_forward(net, x)
    grads = _score_network_backward(net, x, pre, h, g)
    return grads.A, grads.B, grads.b


def forward(net, x: Float[Array, "rows dim"]) -> Float[Array, "rows dim"]:
    """``φ(x Bᵀ + b) Aᵀ`` of a `ScoreNetwork` (its score is this minus ``x``), by the kernel.

    **Arguments:** `net` a `ScoreNetwork` and `x` ``(rows, dim)`` for which `applies_to` holds.

    **Returns:** ``(rows, dim)`` float32.
    """
    _lib()  # loads and registers the kernels (RuntimeError when they are not built)
    call = jax.ffi.ffi_call(_FORWARD, jax.ShapeDtypeStruct(x.shape, jnp.float32), vmap_method="sequential")
    act = ACTIVATIONS[net.activation]
    return jax.lax.platform_dependent(
        net, x, cpu=lambda m, v: call(v, m.A, m.B, m.b, activation=act), default=_xla_forward)


def backward(net, x: Float[Array, "rows dim"], g: Float[Array, "rows dim"]):
    """The gradient of Σ_i g_i · (φ(B x_i + b) Aᵀ) with respect to a `ScoreNetwork`'s (A, B, b), by
    the kernel (the forward pass is recomputed inside).

    **Arguments:** `net` a `ScoreNetwork`, `x` and the output cotangent `g` ``(rows, dim)``, for
    which `applies_to` holds.

    **Returns:** a pytree shaped like ``equinox.filter(net, equinox.is_inexact_array)``.
    """
    _lib()
    dim, hidden = net.A.shape
    f32 = jnp.float32
    call = jax.ffi.ffi_call(
        _BACKWARD,
        (jax.ShapeDtypeStruct((dim, hidden), f32), jax.ShapeDtypeStruct((hidden, dim), f32),
         jax.ShapeDtypeStruct((hidden,), f32)),
        vmap_method="sequential")
    act = ACTIVATIONS[net.activation]
    grad_A, grad_B, grad_b = jax.lax.platform_dependent(
        net, x, g.astype(f32), cpu=lambda m, v, c: tuple(call(v, c, m.A, m.B, m.b, activation=act)),
        default=_xla_backward)
    grads = eqx.tree_at(lambda m: (m.A, m.B, m.b), net, (grad_A, grad_B, grad_b))
    return eqx.filter(grads, eqx.is_inexact_array)
