"""Score models: the 2-layer `ScoreNetwork` behind an RSN and the two `SamplerOnly` circuits.

Every model maps a point ``(dim,)`` or a batch ``(..., dim)`` to a score of the same shape and is
sampled by Langevin dynamics dx = s(x) dt + √2 dB (see `rsnjax.sample`).
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._validation import check_array, check_int, check_key
from .extent import DataExtent

__all__ = ["ScoreNetwork", "SamplerOnly", "ACTIVATIONS", "get_activation"]

#: The nonlinearities φ a circuit may use.
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "softplus": jax.nn.softplus,
}


def get_activation(name: str) -> Callable[[Array], Array]:
    """The function φ called ``name`` (one of `ACTIVATIONS`)."""
    try:
        if not isinstance(name, str):
            raise TypeError
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"`activation` must be one of {sorted(ACTIVATIONS)}, got {name!r}"
        ) from None


def _uniform(key, shape, bound, dtype):
    return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)


class ScoreNetwork(eqx.Module):
    """The RSN's score network s(x) = −x + A φ(B x + b).

    **Arguments:**

    - `dim`: d, the number of output units.
    - `hidden`: N, the number of reservoir units.
    - `activation`: ``"relu"``, ``"tanh"`` or ``"softplus"``.
    - `key`: PRNG key for the initial weights (PyTorch ``nn.Linear`` initialisation, as in the
      authors' code: U(±1/√d) for B and b, U(±1/√N) for A).

    **Fields:** ``A`` ``(dim, hidden)``, ``B`` ``(hidden, dim)``, ``b`` ``(hidden,)``, and
    ``extent``: the `DataExtent` of the data `fit` trained it on (None before training).

    Calling it on ``x`` of shape ``(..., dim)`` returns the score, shape ``(..., dim)``.
    """

    A: Float[Array, "dim hidden"]
    B: Float[Array, "hidden dim"]
    b: Float[Array, " hidden"]
    activation: str = eqx.field(static=True)
    extent: DataExtent | None = eqx.field(static=True, default=None)

    def __init__(self, dim: int, hidden: int, *, activation: str = "relu", key: PRNGKeyArray):
        dim = check_int(dim, "dim")
        hidden = check_int(hidden, "hidden")
        get_activation(activation)
        key = check_key(key)
        k_a, k_b, k_bias = jax.random.split(key, 3)
        dtype = jnp.result_type(float)
        self.A = _uniform(k_a, (dim, hidden), 1.0 / math.sqrt(hidden), dtype)
        self.B = _uniform(k_b, (hidden, dim), 1.0 / math.sqrt(dim), dtype)
        self.b = _uniform(k_bias, (hidden,), 1.0 / math.sqrt(dim), dtype)
        self.activation = activation
        self.extent = None

    @property
    def dim(self) -> int:
        return self.A.shape[0]

    @property
    def hidden(self) -> int:
        return self.A.shape[1]

    def __call__(self, x: Float[Array, "*batch dim"]) -> Float[Array, "*batch dim"]:
        x = check_array(x, "x", dim=self.dim, finite=False)
        phi = get_activation(self.activation)
        return -x + phi(x @ self.B.T + self.b) @ self.A.T


class SamplerOnly(eqx.Module):
    """A sampler-only circuit of d units whose drift is trained as a score (docs/SCIENCE.md §2).

    - ``dynamics="synaptic_current"`` (SO-SC): s(x) = M [γ ⊙ (W φ(x) + b − x)]
    - ``dynamics="firing_rate"`` (SO-FR):       s(x) = M [γ ⊙ (φ(W x + b) − x)]

    with the mobility M = Σ Σᵀ (positive semi-definite by construction; Σ starts at I, γ at ones).

    **Arguments:**

    - `dim`: d, the number of units.
    - `dynamics`: ``"synaptic_current"`` or ``"firing_rate"``.
    - `activation`: ``"relu"``, ``"tanh"`` or ``"softplus"``.
    - `key`: PRNG key for W and b (U(±1/√d), as ``nn.Linear``).

    Calling it on ``x`` of shape ``(..., dim)`` returns the score, shape ``(..., dim)``.
    """

    W: Float[Array, "dim dim"]
    b: Float[Array, " dim"]
    gamma: Float[Array, " dim"]
    Sigma: Float[Array, "dim dim"]
    dynamics: Literal["synaptic_current", "firing_rate"] = eqx.field(static=True)
    activation: str = eqx.field(static=True)
    extent: DataExtent | None = eqx.field(static=True, default=None)

    def __init__(
        self,
        dim: int,
        *,
        dynamics: str = "synaptic_current",
        activation: str = "relu",
        key: PRNGKeyArray,
    ):
        dim = check_int(dim, "dim")
        if not isinstance(dynamics, str) or dynamics not in ("synaptic_current", "firing_rate"):
            raise ValueError(
                f"`dynamics` must be 'synaptic_current' or 'firing_rate', got {dynamics!r}"
            )
        get_activation(activation)
        key = check_key(key)
        k_w, k_b = jax.random.split(key)
        dtype = jnp.result_type(float)
        bound = 1.0 / math.sqrt(dim)
        self.W = _uniform(k_w, (dim, dim), bound, dtype)
        self.b = _uniform(k_b, (dim,), bound, dtype)
        self.gamma = jnp.ones((dim,), dtype)
        self.Sigma = jnp.eye(dim, dtype=dtype)
        self.dynamics = dynamics
        self.activation = activation
        self.extent = None

    @property
    def dim(self) -> int:
        return self.W.shape[0]

    @property
    def mobility(self) -> Float[Array, "dim dim"]:
        """M = Σ Σᵀ."""
        return self.Sigma @ self.Sigma.T

    def __call__(self, x: Float[Array, "*batch dim"]) -> Float[Array, "*batch dim"]:
        x = check_array(x, "x", dim=self.dim, finite=False)
        phi = get_activation(self.activation)
        if self.dynamics == "synaptic_current":
            inner = phi(x) @ self.W.T + self.b - x
        else:
            inner = phi(x @ self.W.T + self.b) - x
        return (self.gamma * inner) @ self.mobility.T
