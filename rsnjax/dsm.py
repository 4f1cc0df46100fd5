"""Denoising score matching (DSM) and its annealed noise schedule (PAPER.md §4)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ._validation import check_array, check_int, check_key, check_positive

__all__ = ["geometric_sigmas", "dsm_loss", "dsm_loss_with_noise"]


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
