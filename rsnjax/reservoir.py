"""The reservoir-sampler network (RSN) and the exact weight mapping from a `ScoreNetwork`.

Given s(x) = −x + A φ(Bx + b), the circuit

    τ dr = [−r + φ(W_rec r + I)] dt + τ·√(2/τ) · A⁺ dB,    x = W_out r,

with W_out = A, W_rec = B A (rank ≤ d), I = b and A⁺ = Aᵀ(AAᵀ)⁻¹, has output dynamics
dx = s(x) dt/τ + √(2/τ) dB exactly (multiply by A and use A A⁺ = I): the output runs Langevin
dynamics of the trained score, whose stationary law does not depend on τ (docs/SCIENCE.md §3).
W_rec is kept as its two factors; `dense_recurrent_weights` forms it only for inspection.

A `ConditionalScoreNetwork` s(x, c) = −x + A φ(Bx + Cc + b) maps the same way, with input weights
W_cond = C: the constant input becomes the stimulus-driven current I + W_cond c, and the readout
runs Langevin dynamics of p(x | c) (`rsnjax.sample` with ``inputs=c``).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._validation import check_array, check_int, check_positive
from .extent import DataExtent, with_extent
from .networks import ScoreNetwork, get_activation
from .conditional import ConditionalScoreNetwork

__all__ = ["ReservoirSampler", "RankDeficientReadoutError"]


class RankDeficientReadoutError(ValueError):
    """The readout W_out = A does not have full row rank, so A⁺ = Aᵀ(AAᵀ)⁻¹ does not exist."""


def _pseudo_inverse_full_row_rank(A: np.ndarray, name: str = "A") -> np.ndarray:
    """A⁺ by a float64 SVD (A = U S Vᵀ, A⁺ = V S⁻¹ Uᵀ); raises if A is not of full row rank."""
    a = np.asarray(A, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"`{name}` contains NaN or infinite values")
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    tol = s.max(initial=0.0) * max(a.shape) * np.finfo(np.asarray(A).dtype).eps
    if s.size < a.shape[0] or s.min() <= tol:
        raise RankDeficientReadoutError(
            f"`{name}` (the readout W_out, shape {a.shape}) is not of full row rank: its smallest "
            f"singular value is {s.min() if s.size else 0.0:.3g} (largest {s.max(initial=0.0):.3g}, "
            f"tolerance {tol:.3g}), so the reservoir noise √2·A⁺ is undefined. Train longer, use "
            "more reservoir units, or check the network for dead (all-zero) readout rows."
        )
    return (vt.T / s) @ u.T


class ReservoirSampler(eqx.Module):
    """A reservoir-sampler network: N rate units r, a rank-d recurrence, a linear readout.

    Build it with `ReservoirSampler.from_score_network`. Fields:

    - ``W_out``: ``(dim, hidden)``, the readout (= A).
    - ``W_in``: ``(hidden, dim)``, the left factor of W_rec = W_in W_out (= B).
    - ``I``: ``(hidden,)``, the constant input (= b).
    - ``noise_map``: ``(hidden, dim)``, √2·A⁺: maps d-dimensional white noise to the reservoir.
    - ``tau``: the time constant τ; ``activation``: φ.
    - ``extent``: the `DataExtent` of the score network's training data (carried over by
      `from_score_network`; `sample` counts chains that leave it).
    - ``W_cond``: ``(hidden, cond_dim)``, the input weights of a conditional reservoir (= C of a
      `ConditionalScoreNetwork`): the input current is I + W_cond c; None for a reservoir
      without inputs.
    """

    W_out: Float[Array, "dim hidden"]
    W_in: Float[Array, "hidden dim"]
    I: Float[Array, " hidden"]
    noise_map: Float[Array, "hidden dim"]
    tau: float = eqx.field(static=True)
    activation: str = eqx.field(static=True)
    extent: DataExtent | None = eqx.field(static=True, default=None)
    W_cond: Float[Array, "hidden cond_dim"] | None = None

    def __init__(self, W_out, W_in, I, *, activation: str = "relu", tau: float = 1.0, noise_map=None,
                 extent: DataExtent | None = None, W_cond=None):
        W_out = check_array(W_out, "W_out", ndim=2)
        d, n = W_out.shape
        if d < 1:
            raise ValueError(f"`W_out` must have at least one row (output), got shape {tuple(W_out.shape)}")
        if n < d:
            raise RankDeficientReadoutError(
                f"`W_out` has shape {tuple(W_out.shape)}: a readout needs at least as many "
                f"reservoir units as outputs (hidden ≥ dim)")
        self.W_out = W_out
        self.W_in = check_array(W_in, "W_in", ndim=2)
        if self.W_in.shape != (n, d):
            raise ValueError(f"`W_in` must have shape ({n}, {d}), got {tuple(self.W_in.shape)}")
        self.I = check_array(I, "I", ndim=1)
        if self.I.shape != (n,):
            raise ValueError(f"`I` must have shape ({n},), got {tuple(self.I.shape)}")
        get_activation(activation)
        self.activation = activation
        self.tau = check_positive(tau, "tau")
        if noise_map is None:
            noise_map = math.sqrt(2.0) * _pseudo_inverse_full_row_rank(np.asarray(W_out), "W_out")
        self.noise_map = check_array(noise_map, "noise_map", ndim=2).astype(W_out.dtype)
        if self.noise_map.shape != (n, d):
            raise ValueError(f"`noise_map` must have shape (hidden, dim) = ({n}, {d}), "
                             f"got {tuple(self.noise_map.shape)}")
        if extent is not None and (not isinstance(extent, DataExtent) or extent.dim != d):
            raise ValueError(f"`extent` must be a DataExtent of dimension {d} or None, got {extent!r}")
        self.extent = extent
        if W_cond is not None:
            W_cond = check_array(W_cond, "W_cond", ndim=2)
            if W_cond.shape[0] != n:
                raise ValueError(f"`W_cond` must have shape ({n}, cond_dim), got {tuple(W_cond.shape)}")
        self.W_cond = W_cond

    @classmethod
    def from_score_network(cls, net: ScoreNetwork | ConditionalScoreNetwork, *,
                           tau: float = 1.0) -> "ReservoirSampler":
        """The exact mapping W_out = A, W_rec = B A (as factors), I = b, noise √2·A⁺, and for a
        `ConditionalScoreNetwork` the input weights W_cond = C.

        **Raises:** `RankDeficientReadoutError` if A is not of full row rank.
        """
        if isinstance(net, ConditionalScoreNetwork):
            return cls(net.A, net.B, net.b, activation=net.activation, tau=tau, extent=net.extent,
                       W_cond=net.C)
        if not isinstance(net, ScoreNetwork):
            raise TypeError(f"`net` must be a ScoreNetwork or ConditionalScoreNetwork, got {type(net).__name__}")
        return cls(net.A, net.B, net.b, activation=net.activation, tau=tau, extent=net.extent)

    @classmethod
    def placeholder(cls, dim: int, hidden: int, *, activation: str = "relu", tau: float = 1.0,
                    cond_dim: int | None = None):
        """A reservoir of the given shape with placeholder weights (a template for loading)."""
        dim, hidden = check_int(dim, "dim"), check_int(hidden, "hidden")
        w_out = jnp.eye(dim, hidden, dtype=jnp.result_type(float))
        w_cond = None if cond_dim is None else jnp.zeros((hidden, check_int(cond_dim, "cond_dim")), w_out.dtype)
        return cls(w_out, w_out.T, jnp.zeros(hidden, w_out.dtype), activation=activation, tau=tau,
                   noise_map=w_out.T, W_cond=w_cond)

    @property
    def dim(self) -> int:
        return self.W_out.shape[0]

    @property
    def hidden(self) -> int:
        return self.W_out.shape[1]

    @property
    def cond_dim(self) -> int | None:
        """The size of the input c (None for a reservoir without input weights)."""
        return None if self.W_cond is None else self.W_cond.shape[1]

    def _input(self, inputs):
        if self.W_cond is None:
            if inputs is not None:
                raise ValueError("`inputs` was given but this reservoir has no input weights (W_cond)")
            return self.I
        if inputs is None:
            raise ValueError(f"this reservoir has input weights: pass `inputs` of shape (..., {self.cond_dim})")
        return self.I + check_array(inputs, "inputs", dim=self.cond_dim, finite=False) @ self.W_cond.T

    def dense_recurrent_weights(self) -> Float[Array, "hidden hidden"]:
        """W_rec = W_in W_out as a dense ``(hidden, hidden)`` matrix (for inspection only)."""
        return self.W_in @ self.W_out

    def readout(self, r: Float[Array, "*batch hidden"]) -> Float[Array, "*batch dim"]:
        """x = W_out r."""
        return check_array(r, "r", dim=self.hidden, finite=False) @ self.W_out.T

    def rates(self, r: Float[Array, "*batch hidden"], inputs=None) -> Float[Array, "*batch hidden"]:
        """φ(W_rec r + I), computed through the rank-d factors in O(N d); with input weights
        φ(W_rec r + I + W_cond c) for ``inputs`` c ``(..., cond_dim)``."""
        phi = get_activation(self.activation)
        return phi(self.readout(r) @ self.W_in.T + self._input(inputs))

    def drift(self, r: Float[Array, "*batch hidden"], inputs=None) -> Float[Array, "*batch hidden"]:
        """(−r + φ(W_rec r + I [+ W_cond c])) / τ."""
        r = check_array(r, "r", dim=self.hidden, finite=False)
        return (self.rates(r, inputs) - r) / self.tau

    def output_score(self, x: Float[Array, "*batch dim"], inputs=None) -> Float[Array, "*batch dim"]:
        """The score the output follows: −x + W_out φ(W_in x + I [+ W_cond c])."""
        phi = get_activation(self.activation)
        x = check_array(x, "x", dim=self.dim, finite=False)
        return -x + phi(x @ self.W_in.T + self._input(inputs)) @ self.W_out.T

    def to_score_network(self) -> ScoreNetwork | ConditionalScoreNetwork:
        """The `ScoreNetwork` (a `ConditionalScoreNetwork` when the reservoir has input weights)
        whose Langevin dynamics this reservoir's output runs."""
        import jax

        if self.W_cond is not None:
            net = ConditionalScoreNetwork(self.dim, self.cond_dim, self.hidden, activation=self.activation,
                                          key=jax.random.key(0))
            net = eqx.tree_at(lambda m: (m.A, m.B, m.C, m.b), net, (self.W_out, self.W_in, self.W_cond, self.I))
            return with_extent(net, self.extent)
        net = ScoreNetwork(self.dim, self.hidden, activation=self.activation, key=jax.random.key(0))
        net = eqx.tree_at(lambda m: (m.A, m.B, m.b), net, (self.W_out, self.W_in, self.I))
        return with_extent(net, self.extent)
