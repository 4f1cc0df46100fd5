"""Every circuit as one SDE with the same four parts.

    d state = drift(state) dt + noise_map · dW,   W a d-dimensional Brownian motion,
    x = readout(state)

- `OutputLangevin`: the state is x itself; drift (I + S) s(x)/τ, noise √(2/τ) I. This is how a
  `ScoreNetwork`, a `SamplerOnly` circuit, a target's true score or any score function is sampled.
- `ReservoirLangevin`: the state is the reservoir r (N units); drift (I + A⁺SA)(−r + φ(W_rec r + I))/τ,
  noise √(2/τ)·A⁺, readout x = W_out r. Its output path equals `OutputLangevin`'s of the mapped score
  network when both are fed the same d-dimensional noise.

S is an optional skew-symmetric matrix (non-reversible "accelerated" sampling, PAPER.md §5); it
leaves the stationary law unchanged.

Each SDE exposes ``euler_maruyama_step(state, noise, step_size)`` — one fused Euler–Maruyama step
for a batch of chains ``(num_chains, state_dim)`` given standard-normal ``noise``
``(num_chains, dim)`` — and returns the readout of the *incoming* state as well, which the runner
uses to detect chains that stopped being finite without a second pass over the state.
"""

from __future__ import annotations

import math
from typing import Callable

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .networks import get_activation
from .reservoir import ReservoirSampler

__all__ = ["CircuitSDE", "OutputLangevin", "ReservoirLangevin", "low_rank_apply"]


def low_rank_apply(x: Float[Array, "batch k"], W: Float[Array, "n k"]) -> Float[Array, "batch n"]:
    """``x @ W.T`` for a small inner dimension k, written as k broadcast multiply-adds.

    With k ≤ 8 XLA fuses these into the surrounding elementwise work (one pass over the
    ``(batch, n)`` output) instead of emitting a separate, poorly shaped matrix product.
    """
    k = x.shape[-1]
    if k > 8:
        return x @ W.T
    out = x[..., 0:1] * W[:, 0]
    for j in range(1, k):
        out = out + x[..., j : j + 1] * W[:, j]
    return out


class CircuitSDE(eqx.Module):
    """Interface of the SDEs the samplers run (see module docstring)."""

    @property
    def dim(self) -> int:  # output / noise dimension d
        raise NotImplementedError

    @property
    def state_dim(self) -> int:
        raise NotImplementedError

    def drift(self, state: Array) -> Array:
        raise NotImplementedError

    def diffusion(self, noise: Array) -> Array:
        """Map d-dimensional noise ``(batch, dim)`` to a state increment ``(batch, state_dim)``."""
        raise NotImplementedError

    def readout(self, state: Array) -> Array:
        raise NotImplementedError

    def euler_maruyama_step(self, state: Array, noise: Array, step_size) -> tuple[Array, Array]:
        """``state + drift·h + diffusion(noise)·√h`` and the readout of the incoming state."""
        new = state + step_size * self.drift(state) + jnp.sqrt(step_size) * self.diffusion(noise)
        return new, self.readout(state)


class OutputLangevin(CircuitSDE):
    """Langevin dynamics dx = (I + S) s(x) dt/τ + √(2/τ) dB in the d-dimensional output space.

    **Arguments:**

    - `score_fn`: maps ``(batch, dim)`` to ``(batch, dim)`` (a model or a function).
    - `output_dim`: d.
    - `tau`: the time constant τ > 0.
    - `skew`: optional ``(dim, dim)`` skew-symmetric matrix S.
    """

    score_fn: Callable[[Array], Array]
    skew: Float[Array, "dim dim"] | None
    output_dim: int = eqx.field(static=True)
    tau: float = eqx.field(static=True)

    def __init__(self, score_fn, output_dim: int, *, tau: float = 1.0, skew=None):
        self.score_fn = score_fn
        self.output_dim = output_dim
        self.tau = tau
        self.skew = skew

    @property
    def dim(self) -> int:
        return self.output_dim

    @property
    def state_dim(self) -> int:
        return self.output_dim

    def drift(self, state):
        s = self.score_fn(state)
        if self.skew is not None:
            s = s + s @ self.skew.T
        return s / self.tau

    def diffusion(self, noise):
        return math.sqrt(2.0 / self.tau) * noise

    def readout(self, state):
        return state


class ReservoirLangevin(CircuitSDE):
    """The reservoir circuit's SDE on r ∈ ℝᴺ with readout x = W_out r (see `ReservoirSampler`).

    **Arguments:**

    - `reservoir`: a `ReservoirSampler` (its τ is used).
    - `skew`: optional ``(dim, dim)`` skew-symmetric S; the reservoir drift becomes
      (I + A⁺SA)(−r + φ(W_rec r + I))/τ, so the readout follows (I + S) s(x)/τ.
    """

    reservoir: ReservoirSampler
    skew: Float[Array, "dim dim"] | None

    def __init__(self, reservoir: ReservoirSampler, *, skew=None):
        self.reservoir = reservoir
        self.skew = skew

    @property
    def dim(self) -> int:
        return self.reservoir.dim

    @property
    def state_dim(self) -> int:
        return self.reservoir.hidden

    def readout(self, state):
        return self.reservoir.readout(state)

    def _leak_and_rates(self, r, x):
        res = self.reservoir
        phi = get_activation(res.activation)
        return phi(low_rank_apply(x, res.W_in) + res.I) - r

    def drift(self, state):
        x = self.readout(state)
        v = self._leak_and_rates(state, x)
        if self.skew is not None:
            pinv = self.reservoir.noise_map / math.sqrt(2.0)
            v = v + low_rank_apply(self.readout(v) @ self.skew.T, pinv)
        return v / self.reservoir.tau

    def diffusion(self, noise):
        return low_rank_apply(noise, self.reservoir.noise_map) / math.sqrt(self.reservoir.tau)

    def euler_maruyama_step(self, state, noise, step_size):
        if self.skew is not None:
            return super().euler_maruyama_step(state, noise, step_size)
        # One fused pass: r' = (1 − h/τ) r + (h/τ) φ(W_in x + I) + √(h/τ) · √2 A⁺ ξ.
        res = self.reservoir
        phi = get_activation(res.activation)
        x = self.readout(state)
        a = step_size / res.tau
        pre = low_rank_apply(x, res.W_in) + res.I
        new = (1.0 - a) * state + a * phi(pre) + low_rank_apply(jnp.sqrt(a) * noise, res.noise_map)
        return new, x
