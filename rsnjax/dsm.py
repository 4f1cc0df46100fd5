"""Denoising score matching (DSM) and its annealed noise schedule (docs/SCIENCE.md §4)."""

from __future__ import annotations

import math
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from . import _dsm_kernel
from ._validation import check_array, check_int, check_key, check_positive
from .networks import ScoreNetwork, get_activation

__all__ = ["geometric_sigmas", "default_sigmas", "dsm_loss", "dsm_loss_with_noise", "dsm_value_and_grad",
           "stable_target"]


def geometric_sigmas(sigma_max: float, sigma_min: float, num_levels: int) -> np.ndarray:
    """The annealed schedule σ_k = σ_max (σ_min/σ_max)^(k/(K−1)), k = 0..K−1, largest first.

    The paper's double-peak schedule 100^(−k/10), k = 0..9, is
    ``geometric_sigmas(1.0, 100 ** -0.9, 10)``; its MNIST schedule 50^(−k/9) is
    ``geometric_sigmas(1.0, 0.02, 10)``.

    **Returns:** a NumPy array of shape ``(num_levels,)``.
    """
    sigma_max = check_positive(sigma_max, "sigma_max")
    sigma_min = check_positive(sigma_min, "sigma_min")
    num_levels = check_int(num_levels, "num_levels")
    if sigma_min > sigma_max:
        raise ValueError(f"`sigma_min` ({sigma_min}) must not exceed `sigma_max` ({sigma_max})")
    if num_levels == 1:
        return np.array([sigma_max])
    return np.geomspace(sigma_max, sigma_min, num_levels)


#: `default_sigmas`: points the scales are measured on, the neighbour whose distance is the finest
#: scale, the fewest levels and the largest ratio between consecutive levels.
SCALE_POINTS = 2000
FINEST_NEIGHBOUR = 10
MIN_LEVELS = 10
MAX_LEVEL_RATIO = 2.0


def default_sigmas(data, *, num_levels: int | None = None) -> np.ndarray:
    """A geometric noise schedule derived from the data (Song & Ermon 2020, "Improved techniques
    for training score-based generative models", technique 1 for σ_max).

    - σ_max = the largest distance between two data points, so that the first level's blurred
      data cover the whole set (and the far field around it) with one smooth mode.
    - σ_min = the data's finest scale: the median distance from a point to its 10th nearest
      neighbour among 2000 points. Blurring by less is below what 2000 points can resolve;
      blurring by more erases structure a sample that size can see.
    - levels: at least 10, more when consecutive levels would differ by more than 2×.

    The points used are the first 2000 rows of a fixed permutation of the data (the same data
    give the same schedule).

    **Arguments:** `data` ``(num, d)``, num ≥ 11 finite rows; `num_levels` to override the count.

    **Returns:** a NumPy array ``(num_levels,)``, largest first.
    """
    x = np.asarray(check_array(data, "data", ndim=2, min_rows=FINEST_NEIGHBOUR + 1), dtype=np.float64)
    if x.shape[0] > SCALE_POINTS:
        x = x[np.random.default_rng(0).permutation(x.shape[0])[:SCALE_POINTS]]
    sq = np.sum(x * x, axis=1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0))
    sigma_max = float(dist.max())
    np.fill_diagonal(dist, np.inf)
    kth = np.partition(dist, FINEST_NEIGHBOUR - 1, axis=1)[:, FINEST_NEIGHBOUR - 1]
    sigma_min = float(np.median(kth))
    if not sigma_max > 0:
        raise ValueError("`data` has no spread (all points equal): no noise schedule fits it")
    sigma_min = min(max(sigma_min, 1e-4 * sigma_max), sigma_max)
    if num_levels is None:
        num_levels = max(MIN_LEVELS, math.ceil(math.log(sigma_max / sigma_min) / math.log(MAX_LEVEL_RATIO)) + 1)
    return geometric_sigmas(sigma_max, sigma_min, num_levels)


def dsm_loss_with_noise(
    score_fn: Callable[[Array], Array],
    x: Float[Array, "batch dim"],
    noise: Float[Array, "batch dim"],
    sigma: float | Array,
) -> Float[Array, ""]:
    """The DSM loss for given standard-normal ``noise``:

        ½ · mean_batch ‖ s(x̃) − (x − x̃)/σ² ‖²,   x̃ = x + σ ε,

    i.e. ½ · mean ‖s(x̃) + ε/σ‖². Its minimiser over all functions s is the score of the data
    blurred by N(0, σ² I).
    """
    noisy = x + sigma * noise
    residual = score_fn(noisy) + noise / sigma
    return 0.5 * jnp.mean(jnp.sum(residual**2, axis=-1))


def dsm_loss(
    score_fn: Callable[[Array], Array],
    x: Float[Array, "batch dim"],
    sigma: float | Array,
    *,
    key: PRNGKeyArray,
) -> Float[Array, ""]:
    """The DSM loss at noise level ``sigma`` (see `dsm_loss_with_noise`), drawing ε with ``key``.

    **Arguments:**

    - `score_fn`: a model or function mapping ``(batch, dim)`` to ``(batch, dim)``.
    - `x`: a batch of clean data, ``(batch, dim)``.
    - `sigma`: the noise level σ > 0.
    - `key`: PRNG key for ε.

    **Returns:** a scalar.
    """
    if not callable(score_fn):
        raise TypeError(f"`score_fn` must be a callable (a model or function), got {type(score_fn).__name__}")
    x = check_array(x, "x", ndim=2)
    sigma = check_positive(sigma, "sigma")
    key = check_key(key)
    noise = jax.random.normal(key, x.shape, x.dtype)
    return dsm_loss_with_noise(score_fn, x, noise, sigma)


#: Up to this many dimensions `dsm_value_and_grad` writes a `ScoreNetwork`'s products with its
#: d-sized side as d separate matrix-vector products and broadcasts: XLA's CPU dot kernels are
#: slow for a (batch × N) · (N × d) product with d this small (measured at batch 128, N = 1000:
#: 90 µs per step this way against 300 µs as matrix products for d = 2; 233 against 297 for
#: d = 4; from d = 8 the two forms tie; `benchmarks/dsm_gradient.py`).
SMALL_DIM = 4


def _activation_derivative(name: str, pre: Array, h: Array) -> Array:
    if name == "relu":
        return (pre > 0).astype(pre.dtype)
    if name == "tanh":
        return 1 - h * h
    if name == "softplus":
        return jax.nn.sigmoid(pre)
    raise ValueError(f"no derivative for activation {name!r}")  # pragma: no cover


def _score_network_forward(net, inputs):
    """``(pre, h, out)`` of a `ScoreNetwork` at ``inputs`` ``(batch, d)``: u = B x + b, h = φ(u),
    out = A h (the score is out − x). d ≤ `SMALL_DIM` uses matrix-vector products."""
    A, B, b = net.A, net.B, net.b
    dim = A.shape[0]
    small = dim <= SMALL_DIM
    pre = b + sum(inputs[:, k, None] * B[:, k] for k in range(dim)) if small else inputs @ B.T + b
    h = get_activation(net.activation)(pre)
    out = jnp.stack([h @ A[k] for k in range(dim)], -1) if small else h @ A.T
    return pre, h, out


def _score_network_backward(net, inputs, pre, h, g):
    """The gradient of Σ_i g_i · s(x_i) with respect to (A, B, b), for the forward pass
    ``(pre, h)`` at ``inputs`` and an output cotangent ``g`` ``(batch, d)``, as a pytree shaped
    like ``eqx.filter(net, eqx.is_inexact_array)``: ∂A = gᵀ h, ∂b = Σ_i g_h,i and
    ∂B = g_hᵀ x where g_h = (g A) ⊙ φ'(u)."""
    A, B, b = net.A, net.B, net.b
    dim = A.shape[0]
    small = dim <= SMALL_DIM
    back = sum(g[:, k, None] * A[k] for k in range(dim)) if small else g @ A
    g_hidden = back * _activation_derivative(net.activation, pre, h)
    if small:
        grad_A = jnp.stack([g[:, k] @ h for k in range(dim)])
        grad_B = jnp.stack([inputs[:, k] @ g_hidden for k in range(dim)], -1)
    else:
        grad_A = g.T @ h
        grad_B = g_hidden.T @ inputs
    grad_b = jnp.sum(g_hidden, axis=0)
    # gradients in the parameters' dtypes, as autodiff gives them
    grads = eqx.tree_at(lambda m: (m.A, m.B, m.b), net,
                        (grad_A.astype(A.dtype), grad_B.astype(B.dtype), grad_b.astype(b.dtype)))
    return eqx.filter(grads, eqx.is_inexact_array)


def _score_network_value_and_grad(net, x, noise, sigma):
    """The DSM loss of a `ScoreNetwork` and its gradient, written out by hand.

    With x̃ = x + σε, u = B x̃ + b, h = φ(u) and residual r = A h − x̃ + ε/σ (the model's score
    plus ε/σ), the loss is ½·mean_i ‖r_i‖²; its gradient is `_score_network_backward` with the
    cotangent g = r / batch. With the C++ kernels (`rsnjax._dsm_kernel`, a float32 relu or tanh
    network with d ≤ 4 on CPU) the two passes are each one fused loop over the activations.
    """
    noisy = x + sigma * noise
    if _dsm_kernel.applies_to(net, noisy):  # the C++ kernels: the same passes, fused
        out = _dsm_kernel.forward(net, noisy)
        residual = out - noisy + noise / sigma
        loss = 0.5 * jnp.mean(jnp.sum(residual**2, axis=-1))
        return loss, _dsm_kernel.backward(net, noisy, residual / x.shape[0])
    pre, h, out = _score_network_forward(net, noisy)
    residual = out - noisy + noise / sigma
    loss = 0.5 * jnp.mean(jnp.sum(residual**2, axis=-1))
    return loss, _score_network_backward(net, noisy, pre, h, residual / x.shape[0])


def dsm_value_and_grad(
    model: Any,
    x: Float[Array, "batch dim"],
    noise: Float[Array, "batch dim"],
    sigma: float | Array,
) -> tuple[Float[Array, ""], Any]:
    """The DSM loss (`dsm_loss_with_noise`) and its gradient with respect to the model's
    floating-point arrays, as `fit` uses them.

    For a `ScoreNetwork` the gradient is written out by hand (two passes over the
    ``(batch, hidden)`` activations, and d separate matrix-vector products when d ≤ `SMALL_DIM`),
    which is 3× faster than reverse-mode autodiff on CPU at d = 2, N = 1000, batch 128; for a
    float32 relu or tanh network with d ≤ 4 on CPU, the two passes run as fused C++ kernels
    (`rsnjax._dsm_kernel`, when built; ``RSNJAX_KERNEL=0`` keeps XLA's passes). Any
    other model (a `SamplerOnly`, a subclass, your own module) goes through
    `equinox.filter_value_and_grad`. Both give the same numbers up to float rounding.

    **Arguments:** `model` (an equinox module), `x` and `noise` ``(batch, dim)``, `sigma` > 0.
    Works inside `jax.jit` (the value checks are then skipped, the shape checks are not).

    **Returns:** ``(loss, grads)``: a scalar and a pytree shaped like
    ``equinox.filter(model, equinox.is_inexact_array)``.
    """
    if not callable(model) or not jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array)):
        raise TypeError("`model` must be an equinox module with trainable floating-point arrays "
                        f"(e.g. a ScoreNetwork or SamplerOnly), got {type(model).__name__}")
    x = check_array(x, "x", ndim=2, min_rows=1)
    noise = check_array(noise, "noise", ndim=2)
    if noise.shape != x.shape:
        raise ValueError(f"`noise` must have the shape of `x` {tuple(x.shape)}, got {tuple(noise.shape)}")
    sigma = check_positive(sigma, "sigma")
    if type(model) is ScoreNetwork:
        if x.shape[-1] != model.dim:
            raise ValueError(f"`x` must have last axis of size {model.dim} (the model's dimension), "
                             f"got shape {tuple(x.shape)}")
        return _score_network_value_and_grad(model, x, noise, sigma)

    @eqx.filter_value_and_grad
    def loss_fn(m):
        return dsm_loss_with_noise(m, x, noise, sigma)

    return loss_fn(model)


def stable_target(
    noisy: Float[Array, "batch dim"],
    reference: Float[Array, "ref dim"],
    sigma: float | Array,
) -> Float[Array, "batch dim"]:
    """The stable target field (Xu et al. 2023, "Stable target field for reduced variance score
    estimation in diffusion models") at the noisy points ``noisy`` for a reference batch of data
    rows ``reference``:

        t(x̃) = Σ_j w_j(x̃) (x_j − x̃) / σ²,   w(x̃) = softmax_j(−‖x̃ − x_j‖² / (2σ²)),

    the exact score of the reference rows blurred by N(0, σ² I). With the row x that x̃ = x + σε
    was drawn from among the reference rows, it replaces the DSM target −ε/σ (variance 1/σ² per
    coordinate) by the posterior mean over the K reference rows: the same minimiser up to the
    O(1/K) bias of a finite reference batch, and a much lower variance where several rows are
    within a few σ of x̃. Used by `fit`'s ``stable_target``.

    **Arguments:** `noisy` ``(batch, dim)``, `reference` ``(K, dim)``, `sigma` > 0.

    **Returns:** ``(batch, dim)``.
    """
    noisy = check_array(noisy, "noisy", ndim=2)
    reference = check_array(reference, "reference", ndim=2, dim=noisy.shape[-1], min_rows=1)
    sigma = check_positive(sigma, "sigma")
    return _stable_target(noisy, reference.astype(noisy.dtype), sigma)


def _stable_target(noisy, reference, sigma, logit_mask=None):
    """`stable_target` without checks. Squared distances are formed as differences (no
    ‖a‖² + ‖b‖² − 2ab cancellation at small σ): d broadcasts of ``(batch, K)`` for d ≤
    `SMALL_DIM`, one ``(batch, K, d)`` array above. ``logit_mask`` ``(batch, K)`` is added to
    the softmax's logits (−inf leaves a reference row out for that point)."""
    dim = noisy.shape[-1]
    if dim <= SMALL_DIM:
        sq = sum((noisy[:, k, None] - reference[None, :, k]) ** 2 for k in range(dim))
    else:
        sq = jnp.sum((noisy[:, None, :] - reference[None, :, :]) ** 2, axis=-1)
    logits = -sq / (2 * sigma**2)
    if logit_mask is not None:  # (batch, K): 0, or −inf for a reference left out
        logits = logits + logit_mask
    weights = jax.nn.softmax(logits, axis=-1)
    if dim <= SMALL_DIM:
        mean = jnp.stack([weights @ reference[:, k] for k in range(dim)], -1)
    else:
        mean = weights @ reference
    return (mean - noisy) / sigma**2
