"""Conditional circuits: score models s(x, c) driven by an input c, and their posterior sampling.

An input current added to the reservoir's input turns the RSN into a sampler of p(x | c):

    s(x, c) = −x + A φ(B x + C c + b),

and the same exact mapping as for the unconditional network (W_out = A, W_rec = B A as factors,
noise √2·A⁺) with the constant input I replaced by the stimulus-dependent current
W_cond c + I (W_cond = C, I = b) makes the readout run Langevin dynamics of the trained
conditional score: for a model trained on pairs (x, c) by conditional denoising score matching,
the readout samples the posterior p(x | c) for whatever c drives the circuit.

This module holds

- the models: `ConditionalScoreNetwork` and the sampler-only circuits `ConditionalSamplerOnly`
  (SO-SC / SO-FR with the input current C c added to theirs);
- conditional DSM: `conditional_dsm_loss_with_noise` and `conditional_dsm_value_and_grad`
  (used by `rsnjax.fit` when it is given pairs ``(x, c)``; the noise blurs x only);
- `ReservoirSampler.from_score_network` maps a `ConditionalScoreNetwork` with its input weights,
  and `rsnjax.sample` runs any of them given ``inputs`` (see `rsnjax._driven`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._validation import check_array, check_int, check_key, check_positive
from .dsm import SMALL_DIM, _activation_derivative
from .extent import DataExtent
from .networks import SamplerOnly, ScoreNetwork, _uniform, get_activation

__all__ = [
    "ConditionalScoreNetwork",
    "ConditionalSamplerOnly",
    "conditional_dsm_loss_with_noise",
    "conditional_dsm_value_and_grad",
    "is_conditional",
]


def is_conditional(model: Any) -> bool:
    """True for a model that needs an input c: a conditional network or circuit, a
    `ReservoirSampler` with input weights, or a conditional target (with an integer ``cond_dim``)."""
    return isinstance(getattr(model, "cond_dim", None), int)


def _apply(x: Array, W: Array) -> Array:
    """``x @ W.T`` over a batch ``(batch, k)``; for k ≤ `rsnjax.dsm.SMALL_DIM` as k broadcast
    multiply-adds (XLA's CPU dot kernels are slow at that width)."""
    k = x.shape[-1]
    if k > SMALL_DIM or x.ndim != 2:
        return x @ W.T
    return sum(x[:, j, None] * W[:, j] for j in range(k))


class ConditionalScoreNetwork(eqx.Module):
    """The conditional RSN's score network s(x, c) = −x + A φ(B x + C c + b).

    **Arguments:**

    - `dim`: d, the number of output units.
    - `cond_dim`: the size of the input c (the stimulus or observation).
    - `hidden`: N, the number of reservoir units.
    - `activation`: ``"relu"``, ``"tanh"`` or ``"softplus"``.
    - `key`: PRNG key for the initial weights: the input layer acts on the concatenation (x, c)
      as one PyTorch ``nn.Linear`` (U(±1/√(d + cond_dim)) for B, C and b), U(±1/√N) for A.

    **Fields:** ``A`` ``(dim, hidden)``, ``B`` ``(hidden, dim)``, ``C`` ``(hidden, cond_dim)``,
    ``b`` ``(hidden,)``, and ``extent``: the `DataExtent` of the x part of the pairs `fit`
    trained it on (None before training).

    Calling it on ``x`` ``(..., dim)`` and ``c`` ``(..., cond_dim)`` (broadcastable batch shapes)
    returns the score of p(x | c) (blurred by the smallest training noise), shape ``(..., dim)``.
    """

    A: Float[Array, "dim hidden"]
    B: Float[Array, "hidden dim"]
    C: Float[Array, "hidden cond_dim"]
    b: Float[Array, " hidden"]
    activation: str = eqx.field(static=True)
    extent: DataExtent | None = eqx.field(static=True, default=None)

    def __init__(self, dim: int, cond_dim: int, hidden: int, *, activation: str = "relu",
                 key: PRNGKeyArray):
        dim = check_int(dim, "dim")
        cond_dim = check_int(cond_dim, "cond_dim")
        hidden = check_int(hidden, "hidden")
        get_activation(activation)
        key = check_key(key)
        k_a, k_b, k_c, k_bias = jax.random.split(key, 4)
        dtype = jnp.result_type(float)
        bound_in = 1.0 / math.sqrt(dim + cond_dim)
        self.A = _uniform(k_a, (dim, hidden), 1.0 / math.sqrt(hidden), dtype)
        self.B = _uniform(k_b, (hidden, dim), bound_in, dtype)
        self.C = _uniform(k_c, (hidden, cond_dim), bound_in, dtype)
        self.b = _uniform(k_bias, (hidden,), bound_in, dtype)
        self.activation = activation
        self.extent = None

    @property
    def dim(self) -> int:
        return self.A.shape[0]

    @property
    def cond_dim(self) -> int:
        return self.C.shape[1]

    @property
    def hidden(self) -> int:
        return self.A.shape[1]

    def __call__(self, x: Float[Array, "*batch dim"], c: Float[Array, "*batch cond_dim"]) -> Float[Array, "*batch dim"]:
        x = check_array(x, "x", dim=self.dim, finite=False)
        c = check_array(c, "c", dim=self.cond_dim, finite=False)
        phi = get_activation(self.activation)
        return -x + phi(x @ self.B.T + c @ self.C.T + self.b) @ self.A.T

    def conditioned(self, c: Float[Array, " cond_dim"]) -> ScoreNetwork:
        """The unconditional `ScoreNetwork` s(·, c) for one fixed input ``c`` ``(cond_dim,)``:
        the same A and B, the bias b + C c."""
        c = check_array(c, "c", ndim=1, dim=self.cond_dim)
        net = ScoreNetwork(self.dim, self.hidden, activation=self.activation, key=jax.random.key(0))
        return eqx.tree_at(lambda m: (m.A, m.B, m.b), net, (self.A, self.B, self.b + self.C @ c))


class ConditionalSamplerOnly(eqx.Module):
    """A sampler-only circuit of d units driven by an input current C c:

    - ``dynamics="synaptic_current"`` (SO-SC): s(x, c) = M [γ ⊙ (W φ(x) + b + C c − x)]
    - ``dynamics="firing_rate"`` (SO-FR):       s(x, c) = M [γ ⊙ (φ(W x + b + C c) − x)]

    with the mobility M = Σ Σᵀ, as `rsnjax.SamplerOnly` (Σ starts at I, γ at ones).

    **Arguments:**

    - `dim`: d, the number of units.
    - `cond_dim`: the size of the input c.
    - `dynamics`: ``"synaptic_current"`` or ``"firing_rate"``.
    - `activation`: ``"relu"``, ``"tanh"`` or ``"softplus"``.
    - `key`: PRNG key for W, C and b (U(±1/√(d + cond_dim)), one ``nn.Linear`` on (x, c)).

    Calling it on ``x`` ``(..., dim)`` and ``c`` ``(..., cond_dim)`` returns the score ``(..., dim)``.
    """

    W: Float[Array, "dim dim"]
    C: Float[Array, "dim cond_dim"]
    b: Float[Array, " dim"]
    gamma: Float[Array, " dim"]
    Sigma: Float[Array, "dim dim"]
    dynamics: Literal["synaptic_current", "firing_rate"] = eqx.field(static=True)
    activation: str = eqx.field(static=True)
    extent: DataExtent | None = eqx.field(static=True, default=None)

    def __init__(self, dim: int, cond_dim: int, *, dynamics: str = "synaptic_current",
                 activation: str = "relu", key: PRNGKeyArray):
        dim = check_int(dim, "dim")
        cond_dim = check_int(cond_dim, "cond_dim")
        if not isinstance(dynamics, str) or dynamics not in ("synaptic_current", "firing_rate"):
            raise ValueError(
                f"`dynamics` must be 'synaptic_current' or 'firing_rate', got {dynamics!r}")
        get_activation(activation)
        key = check_key(key)
        k_w, k_c, k_b = jax.random.split(key, 3)
        dtype = jnp.result_type(float)
        bound = 1.0 / math.sqrt(dim + cond_dim)
        self.W = _uniform(k_w, (dim, dim), bound, dtype)
        self.C = _uniform(k_c, (dim, cond_dim), bound, dtype)
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
    def cond_dim(self) -> int:
        return self.C.shape[1]

    @property
    def mobility(self) -> Float[Array, "dim dim"]:
        """M = Σ Σᵀ."""
        return self.Sigma @ self.Sigma.T

    def __call__(self, x: Float[Array, "*batch dim"], c: Float[Array, "*batch cond_dim"]) -> Float[Array, "*batch dim"]:
        x = check_array(x, "x", dim=self.dim, finite=False)
        c = check_array(c, "c", dim=self.cond_dim, finite=False)
        phi = get_activation(self.activation)
        current = self.b + c @ self.C.T
        if self.dynamics == "synaptic_current":
            inner = phi(x) @ self.W.T + current - x
        else:
            inner = phi(x @ self.W.T + current) - x
        return (self.gamma * inner) @ self.mobility.T

    def conditioned(self, c: Float[Array, " cond_dim"]) -> SamplerOnly:
        """The unconditional `SamplerOnly` circuit s(·, c) for one fixed input ``c``: bias b + C c."""
        c = check_array(c, "c", ndim=1, dim=self.cond_dim)
        so = SamplerOnly(self.dim, dynamics=self.dynamics, activation=self.activation, key=jax.random.key(0))
        return eqx.tree_at(lambda m: (m.W, m.b, m.gamma, m.Sigma), so,
                           (self.W, self.b + self.C @ c, self.gamma, self.Sigma))


# --- conditional denoising score matching ------------------------------------------------------


def conditional_dsm_loss_with_noise(
    score_fn: Callable[[Array, Array], Array],
    x: Float[Array, "batch dim"],
    c: Float[Array, "batch cond_dim"],
    noise: Float[Array, "batch dim"],
    sigma: float | Array,
) -> Float[Array, ""]:
    """The conditional DSM loss ½ · mean ‖s(x + σε, c) + ε/σ‖² (the noise blurs x, not c).

    Its minimiser over all functions s is the score of p(x | c) blurred by N(0, σ² I) in x:
    for every c, the unconditional DSM objective of the conditional law.
    """
    residual = score_fn(x + sigma * noise, c) + noise / sigma
    return 0.5 * jnp.mean(jnp.sum(residual**2, axis=-1))


def _forward(net: ConditionalScoreNetwork, x, c):
    """``(pre, h, out)``: u = B x + C c + b, h = φ(u), out = A h (the score is out − x)."""
    pre = _apply(x, net.B) + _apply(c, net.C) + net.b
    h = get_activation(net.activation)(pre)
    dim = net.A.shape[0]
    out = jnp.stack([h @ net.A[k] for k in range(dim)], -1) if dim <= SMALL_DIM else h @ net.A.T
    return pre, h, out


def _backward(net: ConditionalScoreNetwork, x, c, pre, h, g):
    """The gradient of Σ_i g_i · s(x_i, c_i) with respect to (A, B, C, b) for the forward pass
    ``(pre, h)`` and an output cotangent ``g`` ``(batch, dim)``."""
    dim = net.A.shape[0]
    back = sum(g[:, k, None] * net.A[k] for k in range(dim)) if dim <= SMALL_DIM else g @ net.A
    g_hidden = back * _activation_derivative(net.activation, pre, h)
    grads = eqx.tree_at(
        lambda m: (m.A, m.B, m.C, m.b), net,
        ((g.T @ h).astype(net.A.dtype), (g_hidden.T @ x).astype(net.B.dtype),
         (g_hidden.T @ c).astype(net.C.dtype), jnp.sum(g_hidden, axis=0).astype(net.b.dtype)))
    return eqx.filter(grads, eqx.is_inexact_array)


def conditional_dsm_value_and_grad(
    model: Any,
    x: Float[Array, "batch dim"],
    c: Float[Array, "batch cond_dim"],
    noise: Float[Array, "batch dim"],
    sigma: float | Array,
) -> tuple[Float[Array, ""], Any]:
    """The conditional DSM loss (`conditional_dsm_loss_with_noise`) and its gradient with
    respect to the model's floating-point arrays, as `fit` uses them for pairs ``(x, c)``.

    Written out by hand for a `ConditionalScoreNetwork` (as `rsnjax.dsm_value_and_grad` is for
    a `ScoreNetwork`); by `equinox.filter_value_and_grad` for any other model ``(x, c) -> score``.

    **Arguments:** `model`, `x` and `noise` ``(batch, dim)``, `c` ``(batch, cond_dim)``, `sigma` > 0.

    **Returns:** ``(loss, grads)``: a scalar and a pytree shaped like
    ``equinox.filter(model, equinox.is_inexact_array)``.
    """
    if not callable(model) or not jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array)):
        raise TypeError("`model` must be an equinox module with trainable floating-point arrays "
                        f"(e.g. a ConditionalScoreNetwork), got {type(model).__name__}")
    x = check_array(x, "x", ndim=2, min_rows=1)
    c = check_array(c, "c", ndim=2)
    noise = check_array(noise, "noise", ndim=2)
    if noise.shape != x.shape:
        raise ValueError(f"`noise` must have the shape of `x` {tuple(x.shape)}, got {tuple(noise.shape)}")
    if c.shape[0] != x.shape[0]:
        raise ValueError(f"`c` must have as many rows as `x` ({x.shape[0]}), got shape {tuple(c.shape)}")
    sigma = check_positive(sigma, "sigma")
    if type(model) is ConditionalScoreNetwork:
        check_array(x, "x", dim=model.dim, finite=False)
        check_array(c, "c", dim=model.cond_dim, finite=False)
        noisy = x + sigma * noise
        pre, h, out = _forward(model, noisy, c)
        residual = out - noisy + noise / sigma
        loss = 0.5 * jnp.mean(jnp.sum(residual**2, axis=-1))
        return loss, _backward(model, noisy, c, pre, h, residual / x.shape[0])

    @eqx.filter_value_and_grad
    def loss_fn(m):
        return conditional_dsm_loss_with_noise(m, x, c, noise, sigma)

    return loss_fn(model)


def conditional_penalty_grad(model, near, far, c, axis):
    """The gradient of `fit`'s confinement penalty (`rsnjax.training.confinement_penalty`) for a
    conditional model, each pair of far-field points (``near`` on the shell, ``far`` twice as far
    out along ``axis`` = L u) paired with an input c of the batch. By hand for a
    `ConditionalScoreNetwork`, by autodiff otherwise."""
    from .training import confinement_penalty

    n = near.shape[0]
    points, cc = jnp.concatenate([near, far]), jnp.concatenate([c, c])
    if type(model) is ConditionalScoreNetwork:
        pre, h, out = _forward(model, points, cc)
        score = out - points
        _, g_near, g_far = confinement_penalty(score[:n], score[n:], near, far, axis)
        return _backward(model, points, cc, pre, h, jnp.concatenate([g_near, g_far]))

    params, static = eqx.partition(model, eqx.is_inexact_array)

    def penalty(p):
        score = eqx.combine(p, static)(points, cc)
        return confinement_penalty(score[:n], score[n:], near, far, axis)[0]

    return jax.grad(penalty)(params)


def check_pairs(data: Any, dim: int | None, cond_dim: int, min_rows: int) -> tuple[Array, Array]:
    """``(x, c)`` from `fit`'s ``data`` for a conditional model: a pair of arrays
    ``(num, dim)`` and ``(num, cond_dim)`` with the same number of rows."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(
            "`data` for a conditional model must be a pair (x, c) of arrays (num, dim) and "
            "(num, cond_dim), a callable (key, batch_size) -> (x, c), or a target whose "
            f"sample(key, num) returns such pairs; got {type(data).__name__}")
    x = check_array(data[0], "data[0] (x)", ndim=2, dim=dim, min_rows=min_rows)
    c = check_array(data[1], "data[1] (c)", ndim=2)
    if c.shape[1] != cond_dim:
        raise ValueError(f"`data[1]` (c) must have last axis of size {cond_dim} (the model's "
                         f"cond_dim), got shape {tuple(c.shape)}")
    if c.shape[0] != x.shape[0]:
        raise ValueError(f"`data` (x, c) must have the same number of rows, got {x.shape[0]} and {c.shape[0]}")
    return x, c
