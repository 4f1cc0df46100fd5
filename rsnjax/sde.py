"""Every circuit as one SDE with the same four parts.

    d state = drift(state) dt + noise_map · dW,   W a d-dimensional Brownian motion,
    x = readout(state)

- `OutputLangevin`: the state is x itself; drift (I + S) s(x)/τ, noise √(2/τ) I. This is how a
  `ScoreNetwork`, a `SamplerOnly` circuit, a target's true score or any score function is sampled.
- `ReservoirLangevin`: the state is the reservoir r (N units); drift (I + A⁺SA)(−r + φ(W_rec r + I))/τ,
  noise √(2/τ)·A⁺, readout x = W_out r. Its output path equals `OutputLangevin`'s of the mapped score
  network when both are fed the same d-dimensional noise.

S is an optional skew-symmetric matrix (non-reversible "accelerated" sampling, docs/SCIENCE.md §5); it
leaves the stationary law unchanged.

Each SDE exposes ``euler_maruyama_step(state, noise, step_size)`` — one fused Euler–Maruyama step
for a batch of chains ``(num_chains, state_dim)`` given standard-normal ``noise``
``(num_chains, dim)`` — and returns the readout of the *incoming* state as well, which the runner
uses to detect chains that stopped being finite without a second pass over the state.
``stepper()`` returns the object whose ``euler_maruyama_step`` the sampler's loop calls; `sample`
calls it once, before compiling, so an SDE can lay out its weights for the step there (the
reservoir stores its rank-d factors as contiguous rows, see `low_rank_apply_rows`).
"""

from __future__ import annotations

import math
from typing import Callable

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .networks import ScoreNetwork, get_activation
from .reservoir import ReservoirSampler

__all__ = ["CircuitSDE", "OutputLangevin", "ReservoirLangevin", "low_rank_apply", "low_rank_apply_rows",
           "euler_maruyama"]


def euler_maruyama(state, drift, diffusion, step_size):
    """One Euler–Maruyama step ``state + h·drift + √h·diffusion`` (``diffusion`` the noise map
    applied to standard-normal noise). The one generic form of the step: every SDE without a
    fused step of its own (`CircuitSDE.euler_maruyama_step`, a driven circuit's output Langevin)
    uses it; the fused forms (`_ScoreNetworkStep`, `_ReservoirStep.loop_step`) are the same
    update with the leak folded in, a = h/τ."""
    return state + step_size * drift + jnp.sqrt(step_size) * diffusion


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


def low_rank_apply_rows(x: Float[Array, "batch k"], rows: Float[Array, "k n"]) -> Float[Array, "batch n"]:
    """``x @ rows`` for a small inner dimension k, as k broadcast multiply-adds over contiguous rows.

    The same as ``low_rank_apply(x, rows.T)``; with the factor stored as ``(k, n)`` rows the fused
    loop reads each row with unit stride (a ``(n, k)`` column would be de-interleaved by shuffles).
    """
    k = x.shape[-1]
    if k > 8:
        return x @ rows
    out = x[..., 0:1] * rows[0]
    for j in range(1, k):
        out = out + x[..., j : j + 1] * rows[j]
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
        return euler_maruyama(state, self.drift(state), self.diffusion(noise), step_size), self.readout(state)

    def stepper(self) -> "CircuitSDE":
        """The object whose ``euler_maruyama_step`` and ``readout`` a sampler's loop calls
        (called once, outside the loop). Default: the SDE itself."""
        return self

    @property
    def floats_per_chain(self) -> int:
        """About how many numbers one chain's step touches (its state and intermediates); the
        sampler sizes its blocks of chains with it. Default: ``state_dim``."""
        return self.state_dim

    # The sampler's loop may carry the state in another form (a pytree); by default the state itself.
    def loop_state(self, state):
        """The loop's form of ``state`` ``(batch, state_dim)``."""
        return state

    def loop_step(self, loop_state, noise, step_size):
        """`euler_maruyama_step` on the loop's form: ``(new loop state, readout of the incoming)``."""
        return self.euler_maruyama_step(loop_state, noise, step_size)

    def loop_readout(self, loop_state):
        return self.readout(loop_state)

    def state_from_loop(self, loop_state):
        """The state ``(batch, state_dim)`` back from the loop's form."""
        return loop_state


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

    @property
    def floats_per_chain(self) -> int:
        return self.output_dim + int(getattr(self.score_fn, "hidden", 0) or 0)

    def stepper(self) -> CircuitSDE:
        if self.skew is None and isinstance(self.score_fn, ScoreNetwork):
            net = self.score_fn
            return _ScoreNetworkStep(net.A, net.B.T, net.b, tau=self.tau, activation=net.activation)
        return self


class _ScoreNetworkStep(CircuitSDE):
    """Langevin on a `ScoreNetwork`'s score s(x) = −x + A φ(Bx + b) with the small-d input
    product B x written as d broadcast multiply-adds over B's rows (fused with φ):

        x' = x + a · s(x) + √(2a) ξ,   a = h/τ.
    """

    A: Float[Array, "dim hidden"]
    in_rows: Float[Array, "dim hidden"]
    b: Float[Array, " hidden"]
    tau: float = eqx.field(static=True)
    activation: str = eqx.field(static=True)

    @property
    def dim(self) -> int:
        return self.A.shape[0]

    @property
    def state_dim(self) -> int:
        return self.A.shape[0]

    @property
    def floats_per_chain(self) -> int:
        return self.A.shape[0] + self.A.shape[1]

    def readout(self, state):
        return state

    def drift(self, state):
        phi = get_activation(self.activation)
        return (phi(low_rank_apply_rows(state, self.in_rows) + self.b) @ self.A.T - state) / self.tau

    def diffusion(self, noise):
        return math.sqrt(2.0 / self.tau) * noise

    def euler_maruyama_step(self, state, noise, step_size):
        a = step_size / self.tau
        phi = get_activation(self.activation)
        rates = phi(low_rank_apply_rows(state, self.in_rows) + self.b)
        new = (1.0 - a) * state + a * (rates @ self.A.T) + jnp.sqrt(2.0 * a) * noise
        return new, state


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
        return self.stepper().euler_maruyama_step(state, noise, step_size)

    def stepper(self) -> CircuitSDE:
        if self.skew is not None:
            return self
        res = self.reservoir
        noise_rows = res.noise_map.T / math.sqrt(res.tau)
        return _ReservoirStep(res.W_out, res.W_in.T, res.I, noise_rows, res.W_out @ noise_rows.T,
                              tau=res.tau, activation=res.activation)


class _ReservoirStep(CircuitSDE):
    """The reservoir's Euler–Maruyama step as one fused pass over the state, with the rank-d
    factors stored as contiguous ``(d, N)`` rows:

        x = W_out r,   r' = (1 − a) r + √h · G ξ + a · φ(W_in x + I),   a = h/τ,  G = √2 A⁺/√τ.

    In the sampler's loop the state is carried as r = u + G c with G = √2 A⁺/√τ (``noise_rows``),
    u ∈ ℝᴺ and c ∈ ℝᵈ:

        u' = (1 − a) u + a · φ(W_in x + I),   c' = (1 − a) c + √h · ξ,   x = W_out u + (W_out G) c,

    the same recursion split into its deterministic-input part and its noise part (which stays in
    the d-dimensional range of the noise map), so the N-dimensional pass does no noise arithmetic.
    r is formed from (u, c) at the end. Exact algebra; only the rounding differs.
    """

    W_out: Float[Array, "dim hidden"]
    in_rows: Float[Array, "dim hidden"]
    I: Float[Array, " hidden"]
    noise_rows: Float[Array, "dim hidden"]
    out_noise: Float[Array, "dim dim"]  # W_out · noise_map (≈ √2 I)
    tau: float = eqx.field(static=True)
    activation: str = eqx.field(static=True)

    def loop_state(self, state):
        return state, jnp.zeros(state.shape[:-1] + (self.dim,), state.dtype)

    def loop_readout(self, loop_state):
        u, c = loop_state
        return u @ self.W_out.T + c @ self.out_noise.T

    def state_from_loop(self, loop_state):
        u, c = loop_state
        return u + low_rank_apply_rows(c, self.noise_rows)

    def loop_step(self, loop_state, noise, step_size):
        phi = get_activation(self.activation)
        u, c = loop_state
        x = self.loop_readout(loop_state)
        a = step_size / self.tau
        new_u = (1.0 - a) * u + a * phi(low_rank_apply_rows(x, self.in_rows) + self.I)
        new_c = (1.0 - a) * c + jnp.sqrt(step_size) * noise
        return (new_u, new_c), x

    @property
    def dim(self) -> int:
        return self.W_out.shape[0]

    @property
    def state_dim(self) -> int:
        return self.W_out.shape[1]

    def readout(self, state):
        return state @ self.W_out.T

    def drift(self, state):
        phi = get_activation(self.activation)
        return (phi(low_rank_apply_rows(self.readout(state), self.in_rows) + self.I) - state) / self.tau

    def diffusion(self, noise):
        return low_rank_apply_rows(noise, self.noise_rows)

    def euler_maruyama_step(self, state, noise, step_size):
        # the loop's split form from r = (r, 0) and back: one definition of the reservoir's step
        new, x = self.loop_step(self.loop_state(state), noise, step_size)
        return self.state_from_loop(new), x
