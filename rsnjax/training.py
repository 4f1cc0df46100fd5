"""`fit`: annealed denoising score matching with optax, with checkpoints and exact resume.

The loop runs the noise levels largest first. Within a level, steps are executed in chunks: one
jit-compiled `lax.scan` over a chunk of optimiser steps, then control returns to Python to update
the progress bar, check the loss is finite and write checkpoints. Every random draw of step t of
level k is made with a key folded from (``key``, k, t), so the result does not depend on the chunk
size and a resumed run gives the same parameters as an uninterrupted one.

A step's loss and gradient come from `rsnjax.dsm_value_and_grad` (hand-written for a
`ScoreNetwork`). The compiled chunk is cached on the model's structure and the optimiser object,
so calling `fit` again with the same optimiser (e.g. once per noise level) does not compile again.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from . import checkpoint as ckpt
from . import _dsm_kernel
from . import distributed as dist
from ._validation import check_array, check_int, check_key, check_positive
from .conditional import (ConditionalScoreNetwork, check_pairs, conditional_dsm_value_and_grad,
                          conditional_penalty_grad, is_conditional)
from .conditional import _backward as _conditional_backward
from .conditional import _forward as _conditional_forward
from .dsm import (SMALL_DIM, _score_network_backward, _score_network_forward, _stable_target, default_sigmas,
                  dsm_value_and_grad)
from .extent import DataExtent, data_extent, with_extent
from .networks import ScoreNetwork

__all__ = ["fit", "History", "TrainingDivergedError", "CHECKPOINT_NAME", "default_optimizer", "cosine_optimizer",
           "default_steps"]

_BATCH_AXIS = dist.BATCH_AXIS

#: The file `fit` writes inside ``checkpoint_dir``.
CHECKPOINT_NAME = "fit_state.ckpt"


class History(NamedTuple):
    """What `fit` records.

    - ``loss``: ``(total_steps,)`` the DSM loss of every step (NaN for steps not run).
    - ``level``: ``(total_steps,)`` the noise-level index of every step.
    - ``sigmas``: ``(num_levels,)`` the schedule.
    - ``level_loss``: ``(num_levels,)`` the mean loss over the last quarter of each level.
    """

    loss: np.ndarray
    level: np.ndarray
    sigmas: np.ndarray

    @property
    def steps_per_level(self) -> np.ndarray:
        """``(num_levels,)`` the optimiser steps of each level."""
        return np.bincount(np.asarray(self.level, dtype=np.int64), minlength=len(self.sigmas))

    @property
    def level_loss(self) -> np.ndarray:
        out = np.full(len(self.sigmas), np.nan)
        for k in range(len(self.sigmas)):
            per = self.loss[self.level == k]
            tail = per[-max(1, per.size // 4) :]
            if np.isfinite(tail).any():
                out[k] = np.nanmean(tail)
        return out


class TrainingDivergedError(FloatingPointError):
    """The DSM loss became NaN or infinite. ``.model`` holds the last good model (the optimiser's
    iterate at the start of the failing chunk, as the checkpoint holds it; not the parameter
    average), ``.history`` what was recorded, ``.level`` and ``.step`` where it failed."""

    def __init__(self, message, *, model, history, level, step):
        super().__init__(message)
        self.model = model
        self.history = history
        self.level = level
        self.step = step


#: Folded into `fit`'s key for the draws that measure a target's extent (no other draw uses it).
_EXTENT_SALT = 0x5E7E


def _extent_points(data_array, draw, key, conditional: bool = False) -> np.ndarray:
    """The points `fit` measures the data's extent and default schedule on: the array (up to
    100 000 rows), or `EXTENT_DRAWS` fresh draws ``draw(key, num)`` of a target or data callable
    (the x part of the pairs ``(x, c)`` a conditional model trains on)."""
    if data_array is not None:
        return np.asarray(data_array[:100_000], dtype=np.float64)
    points = draw(key, EXTENT_DRAWS)
    if conditional:
        if not isinstance(points, (tuple, list)) or len(points) != 2:
            raise ValueError("`data` must draw pairs (x, c) for a conditional model, got "
                             f"{type(points).__name__}")
        points = points[0]
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or not np.all(np.isfinite(points)):
        raise ValueError(f"`data` drew points of shape {points.shape} with non-finite values; "
                         "it must return finite (num, d) arrays")
    return points


def _far_field_arrays(extent: DataExtent, dtype):
    """(mean μ, L, radius, W) for the confinement penalty and the tail weight, with C = L Lᵀ the
    data's covariance and W = L⁻¹ its whitening: far points are μ + L w, ``s @ L`` is the drift
    seen in the whitened frame, and W (x − μ) a point's whitened coordinates."""
    whitening = np.asarray(extent.whitening).reshape(extent.dim, extent.dim)
    return (jnp.asarray(extent.mean, dtype), jnp.asarray(np.linalg.inv(whitening), dtype),
            jnp.asarray(extent.radius, dtype), jnp.asarray(whitening, dtype))


def _log_tail_weight(points, mean, whitening, power: float):
    """log w(x) = (power/2)·log(1 + ‖W (x − μ)‖²): the tail weight of `fit`'s ``tail_weight``."""
    z = _times_transpose(points - mean, whitening)
    return 0.5 * power * jnp.log1p(jnp.sum(z * z, axis=-1))


def density_weights(noisy, reference, sigma, bandwidth: float, power: float, cap: float | None = None):
    """`fit`'s ``density_weight``: per-row loss weights ∝ p̂(x̃)^(−power), normalised to mean 1
    over the rows (then clipped at ``cap`` when given).

    p̂ is a Gaussian kernel density estimate over the ``reference`` rows with bandwidth
    ``sqrt(σ² + bandwidth²)`` (the σ-blurred data density, smoothed by ``bandwidth``). A weight
    that depends on x̃ alone leaves DSM's pointwise minimiser, the σ-blurred score, unchanged; it
    moves the network's capacity towards low-density regions (the valleys between close ridges).

    **Arguments:** `noisy` ``(batch, d)`` the noisy inputs x̃; `reference` ``(K, d)`` data rows;
    `sigma` the noise level; `bandwidth` h ≥ 0; `power` α ≥ 0; `cap` the largest weight or None.

    **Returns:** ``(batch,)`` weights with mean 1 (before the cap)."""
    var = sigma**2 + bandwidth**2
    d2 = (jnp.sum(noisy**2, -1)[:, None] - 2 * noisy @ reference.T + jnp.sum(reference**2, -1)[None, :])
    log_p = jax.nn.logsumexp(-jnp.maximum(d2, 0.0) / (2 * var), axis=-1)  # up to a constant
    log_w = -power * log_p
    log_w = log_w - jax.nn.logsumexp(log_w) + jnp.log(jnp.asarray(noisy.shape[0], log_w.dtype))
    w = jnp.exp(log_w)
    return w if cap is None else jnp.minimum(w, cap)


def _is_target(data) -> bool:
    return hasattr(data, "sample") and hasattr(data, "dim") and not isinstance(data, (np.ndarray, jax.Array))


def _divisor_at_most(n: int, limit: int) -> int:
    for c in range(min(n, limit), 0, -1):
        if n % c == 0:
            return c
    return 1


def _key_fingerprint(key) -> str:
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    return hashlib.sha256(np.asarray(data).tobytes()).hexdigest()[:16]


def _model_dim(model) -> int | None:
    return getattr(model, "dim", None)


def _array_fingerprint(tree) -> str:
    """A short hash of the structure (static fields included), shapes, dtypes and values of the
    array leaves of ``tree``."""
    structure = re.sub(r" at 0x[0-9a-fA-F]+", "", str(jax.tree_util.tree_structure(tree)))  # no addresses
    digest = hashlib.sha256(structure.encode())
    for leaf in jax.tree_util.tree_leaves(tree):
        if isinstance(leaf, (np.ndarray, jax.Array, np.generic, int, float)):
            a = np.asarray(leaf)
            digest.update(f"{a.shape}{a.dtype}".encode())
            digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()[:16]


def _describe_spec(spec: dict) -> str:
    return spec.get("class", "?") + "(" + ", ".join(
        f"{k}={v!r}" for k, v in sorted(spec.items()) if k != "class") + ")"


def _cached(function):
    """`functools.lru_cache`, falling back to an uncached call for unhashable arguments."""
    cached = functools.lru_cache(maxsize=8)(function)

    @functools.wraps(function)
    def call(*args):
        try:
            hash(args)
        except TypeError:
            return function(*args)
        return cached(*args)

    call.cache_info, call.cache_clear = cached.cache_info, cached.cache_clear
    return call


@_cached
def _with_weight_decay(optimizer, weight_decay: float):
    if weight_decay > 0:
        return optax.chain(optax.add_decayed_weights(weight_decay), optimizer)
    return optimizer


def _times_transpose(x, matrix):
    """``x @ matrix.T`` for a small square ``matrix`` (d ≤ `SMALL_DIM`: broadcasts, since XLA's
    CPU dot kernels are slow at this width; see `rsnjax.dsm.SMALL_DIM`)."""
    d = matrix.shape[1]
    if d > SMALL_DIM:
        return x @ matrix.T
    return sum(x[:, k, None] * matrix[:, k] for k in range(d))


def weighted_dsm_value_and_grad(model, x, noise, sigma, weights, c=None):
    """The DSM loss with a weight per row, ½ · mean_i w_i ‖s(x̃_i) + ε_i/σ‖², and its gradient
    with respect to the model's floating-point arrays (``c``: the inputs of a conditional model).
    By hand for a `ScoreNetwork` and a `ConditionalScoreNetwork` (the unweighted gradient's
    passes with the cotangent w_i r_i / batch), by autodiff otherwise. `fit`'s ``tail_weight``."""
    noisy = x + sigma * noise
    if c is None and type(model) is ScoreNetwork and _dsm_kernel.applies_to(model, noisy):
        residual = _dsm_kernel.forward(model, noisy) - noisy + noise / sigma
        loss = 0.5 * jnp.mean(weights * jnp.sum(residual**2, axis=-1))
        return loss, _dsm_kernel.backward(model, noisy, weights[:, None] * residual / x.shape[0])
    if c is None and type(model) is ScoreNetwork:
        pre, h, out = _score_network_forward(model, noisy)
        residual = out - noisy + noise / sigma
        loss = 0.5 * jnp.mean(weights * jnp.sum(residual**2, axis=-1))
        return loss, _score_network_backward(model, noisy, pre, h, weights[:, None] * residual / x.shape[0])
    if c is not None and type(model) is ConditionalScoreNetwork:
        pre, h, out = _conditional_forward(model, noisy, c)
        residual = out - noisy + noise / sigma
        loss = 0.5 * jnp.mean(weights * jnp.sum(residual**2, axis=-1))
        return loss, _conditional_backward(model, noisy, c, pre, h, weights[:, None] * residual / x.shape[0])

    def loss_fn(params):
        m = eqx.combine(params, static)
        residual = (m(noisy) if c is None else m(noisy, c)) + noise / sigma
        return 0.5 * jnp.mean(weights * jnp.sum(residual**2, axis=-1))

    params, static = eqx.partition(model, eqx.is_inexact_array)
    return jax.value_and_grad(loss_fn)(params)


def confinement_penalty(s_near, s_far, near, far, axis):
    """`fit`'s confinement penalty from a model's scores at far-field points, and its cotangents.

    ``near`` ``(n, d)`` are points z = μ + R·L u on the shell R ∈ [1, 3]× the data's largest
    whitened radius, ``far`` the points z′ = μ + 2R·L u twice as far out along the same
    directions, ``axis`` = L u (the outward direction in data coordinates), ``s_near``/``s_far``
    the scores there. The penalty is the mean over the points of

        relu(κ + ε)²,   κ = ⟨s(z′) − s(z), L u⟩ / ⟨z′ − z, L u⟩,

    ε = `CONFINE_SLOPE`: the radial slope κ of the drift beyond the data (−1 for the −x leak
    alone, 0 for a score that tends to a constant, as a Laplace tail's does, > 0 for a drift that
    turns outward) must be at most −ε, so that far enough out the drift points inward, more and
    more, along every direction. For a ReLU network beyond its last kinks κ is exactly its
    asymptotic slope. It asks nothing of the drift's value: an earlier penalty asked for
    ⟨s(z), L u⟩ ≤ −½ on the shell, and a ReLU network met that (and also a margin of 0 there or
    at z′) by bending its score down just beyond the data, where denoising score matching has
    few draws, which made heavy tails light (docs/RESULTS.md §2).

    **Returns:** ``(penalty, cotangent at near (n, d), cotangent at far (n, d))``.
    """
    n = near.shape[0]
    denom = jnp.sum((far - near) * axis, axis=-1)
    kappa = jnp.sum((s_far - s_near) * axis, axis=-1) / denom
    slope = jax.nn.relu(kappa + CONFINE_SLOPE)
    g_far = ((2.0 / n) * slope / denom)[:, None] * axis
    return jnp.mean(slope**2), -g_far, g_far


def _far_field_penalty_grad(model, near, far, axis):
    """The gradient of the confinement penalty (`confinement_penalty`) with respect to the
    model's floating-point arrays. Written out by hand for a `ScoreNetwork` (the DSM gradient's
    backward pass with the penalty's output cotangent, near and far points in one pass), by
    autodiff otherwise."""
    n = near.shape[0]
    points = jnp.concatenate([near, far])
    if type(model) is ScoreNetwork:
        kernel = _dsm_kernel.applies_to(model, points)
        if kernel:  # the C++ kernels (rsnjax._dsm_kernel)
            out = _dsm_kernel.forward(model, points)
        else:
            pre, h, out = _score_network_forward(model, points)
        score = out - points
        _, g_near, g_far = confinement_penalty(score[:n], score[n:], near, far, axis)
        cotangent = jnp.concatenate([g_near, g_far])
        if kernel:
            return _dsm_kernel.backward(model, points, cotangent)
        return _score_network_backward(model, points, pre, h, cotangent)

    def penalty(params):
        score = eqx.combine(params, static)(points)
        return confinement_penalty(score[:n], score[n:], near, far, axis)[0]

    params, static = eqx.partition(model, eqx.is_inexact_array)
    return jax.grad(penalty)(params)


#: A chunk's random numbers (batches, noise, far-field directions) are drawn before its scan, for
#: all its steps at once, when they take at most this many bytes: JAX lowers its threefry hash on
#: CPU as a rolled loop, so that each draw inside the scan costs a few microseconds of loop
#: overhead whatever its size (a DSM step draws ≈ 10 times; measured ≈ 50 µs per step at d = 1,
#: batch 128, against ≈ 2 µs drawn per chunk; `benchmarks/training_kernel.py`).
HOIST_BYTES = 16 * 2**20


def _hoisted_draws(draws, allowed: bool, level_key, data_in, source, steps, batch_idx):
    """``draws`` of all the chunk's steps at once (`jax.vmap` over the steps: the same numbers
    as drawn step by step), or None when they are drawn inside the scan (not ``allowed``, more
    than `HOIST_BYTES`, or data whose sampling does not batch)."""
    if not allowed:
        return None
    batched = jax.vmap(draws, in_axes=(None, None, None, 0, 0))
    try:
        shapes = jax.eval_shape(batched, level_key, data_in, source, steps, batch_idx)
    except _CONCRETE_VALUE_ERRORS:
        raise  # fit's fallback for targets that need concrete values
    except Exception:  # noqa: BLE001 - e.g. a target's sample without a batching rule: draw per step
        return None
    size = sum(math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(shapes))
    if size > HOIST_BYTES:
        return None
    return batched(level_key, data_in, source, steps, batch_idx)


def _stable_target_inputs(x, noise, sigma, reference, logit_mask=None):
    """``(x', ε')`` that make a DSM step train on the stable target t(x̃) (`rsnjax.stable_target`
    over ``reference``) at x̃ = x + σε. Every DSM path (the C++ kernels, XLA's passes, the tail
    weights, the far-field penalty's fused pass) computes x̃ = x + σε and the residual
    s(x̃) + ε/σ, so t is passed as ε' = −σ t at x' = x̃ − σε': then x' + σε' = x̃ and
    s(x̃) + ε'/σ = s(x̃) − t. ``logit_mask`` ``(batch, K)`` (0 or −inf) leaves references out."""
    noisy = x + sigma * noise
    shifted_noise = -sigma * _stable_target(noisy, reference, sigma, logit_mask)
    return noisy - sigma * shifted_noise, shifted_noise


def _dsm_and_penalty_grads(model, x, noise, sigma, near, far, axis, weight, row_weights=None):
    """``dsm_value_and_grad(model, x, noise, sigma)`` with ``weight`` × the confinement
    penalty's gradient (`_far_field_penalty_grad`) added, for a `ScoreNetwork` on the C++ kernels
    (`rsnjax._dsm_kernel.applies_to`): ONE forward and ONE backward kernel call over the batch's
    rows and the far points together (the gradient is linear in the output cotangent)."""
    n, m = x.shape[0], near.shape[0]
    noisy = x + sigma * noise
    rows = jnp.concatenate([noisy, near, far])
    out = _dsm_kernel.forward(model, rows)
    residual = out[:n] - noisy + noise / sigma
    if row_weights is None:
        loss = 0.5 * jnp.mean(jnp.sum(residual**2, axis=-1))
    else:  # `fit`'s tail weight: ½ mean_i w_i ‖r_i‖², cotangent w_i r_i / n
        loss = 0.5 * jnp.mean(row_weights * jnp.sum(residual**2, axis=-1))
        residual = row_weights[:, None] * residual
    _, g_near, g_far = confinement_penalty(out[n:n + m] - near, out[n + m:] - far, near, far, axis)
    far_cotangent = (weight * jnp.concatenate([g_near, g_far])).astype(residual.dtype)
    return loss, _dsm_kernel.backward(model, rows, jnp.concatenate([residual / n, far_cotangent]))


def _build_chunk_runner(static, tx, source_static, draw, from_array: bool, batch_size: int, dtype,
                        options: tuple = (None, False, None, 0, None, None, None, None, None), mesh=None,
                        sharded: bool = False,
                        kernel: bool = False):
    """The jit-compiled chunk of `fit`: a `lax.scan` of DSM steps.

    ``options`` = (ema_decay or None, antithetic, confine weight or None, far-field points per step,
    tail-weight power or None, stable-target reference rows K or None, broad noise (fraction,
    scale) or None, density weight (power, bandwidth, reference rows) or None, (σ of the last
    level, readout factor) or None).

    With a ``mesh`` (a 1-D `jax.sharding.Mesh` over the ``"batch"`` axis) the scan runs under
    `jax.shard_map`: parameters, optimiser state and keys are replicated, each device computes
    the loss and gradient on its ``batch_size / num_devices`` rows of the step's batch and
    ``lax.pmean`` averages them (the mean of equal-sized means is the batch mean). Without
    ``sharded`` every device forms the whole batch and noise exactly as one device does and takes
    its slice (the same parameters as one device up to the order of the float reduction). With
    ``sharded`` (multi-process data) ``data_in`` is ``(num_devices, m, d)``, each device's own
    block, ``batch_idx`` ``(steps, num_devices, batch_size / num_devices)`` indexes into it, and the
    antithetic pairs are formed within each device's rows.

    ``kernel`` is `rsnjax._dsm_kernel.enabled()` when `fit` builds the chunk: a part of the cache
    key only (the step chooses the C++ kernels or XLA when it is traced).
    """
    ema_decay, antithetic, confine, num_far, tail_weight, stable, broad, density, readout = options
    half = -(-batch_size // 2)
    # `broad_noise`: the scale of each row's noise (1, or c on the last rows of every antithetic
    # half, so that the two rows of a pair keep the same scale)
    noise_scale = None
    if broad is not None:
        period = half if antithetic else batch_size
        num_broad = int(round(broad[0] * period))
        noise_scale = np.where(np.arange(batch_size) % period >= period - num_broad, broad[1], 1.0)
        noise_scale = noise_scale.astype(np.dtype(dtype))[:, None]
    # ... and a broad row's own x is left out of its references: the stable target is the
    # σ-blurred score only for x̃ drawn at σ around its own reference row
    logit_mask = None
    if broad is not None and stable is not None:
        own = np.arange(batch_size) % (half if antithetic else batch_size)
        logit_mask = np.zeros((batch_size, stable), np.dtype(dtype))
        logit_mask[noise_scale[:, 0] != 1.0, own[noise_scale[:, 0] != 1.0]] = -np.inf
    ndev = 1 if mesh is None else mesh.devices.size
    per_device = batch_size // ndev
    local_half = -(-per_device // 2)

    def device_rows(a):  # this device's slice of a replicated (batch_size, ...) array
        k = jax.lax.axis_index(_BATCH_AXIS)
        return jax.lax.dynamic_slice_in_dim(a, k * per_device, per_device, axis=0)

    def sharded_batch(data_in, batch_idx, k_noise):  # multi-process data: this device's own rows
        k = jax.lax.axis_index(_BATCH_AXIS)
        idx = batch_idx[0]
        if antithetic:
            idx = jnp.concatenate([idx[:local_half], idx[:local_half]])[:per_device]
        batch = jax.tree_util.tree_map(lambda a: a[0][idx], data_in)
        batch, cond = tuple(batch) if isinstance(batch, (tuple, list)) else (batch, None)
        if antithetic:
            eps = jax.random.normal(k_noise, (ndev, local_half, batch.shape[1]), dtype)[k]
            noise = jnp.concatenate([eps, -eps])[:per_device]
        else:
            noise = device_rows(jax.random.normal(k_noise, (batch_size, batch.shape[1]), dtype))
        return batch, cond, noise

    def far_draws(k_noise, dim):  # the far-field penalty's directions u and radii ρ/radius
        if confine is None:
            return None
        k_dir, k_rad = jax.random.split(jax.random.fold_in(k_noise, 1))
        u = jax.random.normal(k_dir, (num_far, dim), dtype)
        u = u / jnp.linalg.norm(u, axis=-1, keepdims=True)
        return u, jax.random.uniform(k_rad, (num_far, 1), dtype, *_CONFINE_RADII)

    def reference_rows(data_in, batch, k_noise):  # `stable_target`: the batch's own rows + random ones
        if stable is None:
            if density is None:
                return None
            # `density_weight` alone: random data rows for the density estimate
            rows = jax.random.randint(jax.random.fold_in(k_noise, 3), (density[2],), 0, data_in.shape[0])
            return data_in[rows]
        own = batch[:half] if antithetic else batch
        others = jax.random.randint(jax.random.fold_in(k_noise, 2), (stable - own.shape[0],), 0,
                                    data_in.shape[0])
        return jnp.concatenate([own, data_in[others]])

    def draws(level_key, data_in, source, step, batch_idx):
        """Everything random of one step (it depends on the level's key and the step only):
        ``(batch, cond, noise, cond_far, far, reference)``, ``far`` = (u, ρ / radius) or None,
        ``reference`` the `stable_target` rows or None; with `broad_noise` the noise of the broad
        rows is already scaled."""
        k_data, k_noise = jax.random.split(jax.random.fold_in(level_key, step))
        if sharded:
            batch, cond, noise = sharded_batch(data_in, batch_idx, k_noise)
            return batch, cond, noise, cond, far_draws(k_noise, batch.shape[1]), None
        if from_array:
            batch = jax.tree_util.tree_map(lambda a: a[batch_idx], data_in)
        else:  # a target (its arrays passed in as `source`) or a data callable
            drawn = eqx.combine(source, source_static).sample(k_data, batch_size) if draw is None \
                else draw(k_data, batch_size)
            batch = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), drawn)
        batch, cond = tuple(batch) if isinstance(batch, (tuple, list)) else (batch, None)  # pairs (x, c)
        if antithetic:  # pairs (x, +ε), (x, −ε): the O(1/σ) part of the target's noise cancels
            eps = jax.random.normal(k_noise, (half, batch.shape[1]), dtype)
            noise = jnp.concatenate([eps, -eps])[:batch_size]
            batch = jnp.concatenate([batch[:half], batch[:half]])[:batch_size]
            if cond is not None:
                cond = jnp.concatenate([cond[:half], cond[:half]])[:batch_size]
        else:
            noise = jax.random.normal(k_noise, batch.shape, dtype)
        if noise_scale is not None:
            noise = noise * noise_scale
        reference = reference_rows(data_in, batch, k_noise) if from_array else None
        cond_far = cond  # the far points pair with the whole batch's inputs, as on one device
        if mesh is not None:
            batch, noise = device_rows(batch), device_rows(noise)
            cond = None if cond is None else device_rows(cond)
        return batch, cond, noise, cond_far, far_draws(k_noise, batch.shape[1]), reference

    def _update(p, opt_state, ema, sigma, far, step, drawn):
        batch, cond, noise, cond_far, far_uv, reference = drawn
        model = eqx.combine(p, static)
        weights = None
        if tail_weight is not None:  # rows drawn ∝ w(x): weight w(x̃)/w(x) gives E_p[w(x̃) · loss]
            mean, _, _, whitening = far
            weights = jnp.exp(_log_tail_weight(batch + sigma * noise, mean, whitening, tail_weight)
                              - _log_tail_weight(batch, mean, whitening, tail_weight))
        if density is not None:  # ∝ p̂(x̃)^(−α) over the reference rows, mean 1 over the rows
            w = density_weights(batch + sigma * noise, reference, sigma, density[1], density[0],
                                DENSITY_WEIGHT_CAP).astype(batch.dtype)
            weights = w if weights is None else weights * w
        if stable is not None:  # `stable_target`: t(x̃) replaces −ε/σ in every path below
            mask = None if logit_mask is None else (logit_mask if mesh is None else device_rows(logit_mask))
            batch, noise = _stable_target_inputs(batch, noise, sigma, reference, mask)
        if confine is not None and cond is None and mesh is None and _dsm_kernel.applies_to(model, batch):
            near, far_points, axis = _confinement_points(far, far_uv)
            loss, grads = _dsm_and_penalty_grads(model, batch, noise, sigma, near, far_points, axis,
                                                 confine / sigma**2, weights)
            return _apply(p, opt_state, ema, sigma, step, grads), loss
        if weights is not None:
            loss, grads = weighted_dsm_value_and_grad(model, batch, noise, sigma, weights, cond)
        elif cond is None:
            loss, grads = dsm_value_and_grad(model, batch, noise, sigma)
        else:
            loss, grads = conditional_dsm_value_and_grad(model, batch, cond, noise, sigma)
        if mesh is not None:  # the batch mean over all devices
            loss, grads = jax.lax.pmean((loss, grads), _BATCH_AXIS)
        if confine is not None:
            near, far_points, axis = _confinement_points(far, far_uv)
            if cond is None:
                pen_grads = _far_field_penalty_grad(model, near, far_points, axis)
            else:  # each far point paired with an input of the batch
                pen_grads = conditional_penalty_grad(model, near, far_points,
                                                     cond_far[jnp.arange(num_far) % cond_far.shape[0]], axis)
                if sharded:  # each device paired them with its own inputs
                    pen_grads = jax.lax.pmean(pen_grads, _BATCH_AXIS)
            weight = confine / sigma**2
            grads = jax.tree_util.tree_map(lambda g, h: g + (weight * h).astype(g.dtype), grads, pen_grads)
        return _apply(p, opt_state, ema, sigma, step, grads), loss

    def _apply(p, opt_state, ema, sigma, step, grads):  # the optimiser's step and the moving average
        updates, opt_state = tx.update(grads, opt_state, p)
        if readout is not None and getattr(updates, "A", None) is not None:  # `readout_factor`
            factor = jnp.where(sigma == readout[0], readout[1], 1.0).astype(updates.A.dtype)
            updates = eqx.tree_at(lambda u: u.A, updates, updates.A * factor)
        p = optax.apply_updates(p, updates)
        if ema_decay is not None:  # warm-up (1+t)/(10+t), restarted at every level
            beta = jnp.minimum(jnp.asarray(ema_decay, dtype), (1.0 + step) / (10.0 + step)).astype(dtype)
            ema = jax.tree_util.tree_map(lambda e, q: beta * e + (1 - beta) * q, ema, p)
        return p, opt_state, ema

    def scan_chunk(p, opt_state, ema, sigma, level_key, data_in, source, far, steps, batch_idx):
        hoisted = _hoisted_draws(draws, mesh is None and draw is None, level_key, data_in, source, steps,
                                 batch_idx)

        def one_step(carry, xs):
            p, opt_state, ema = carry
            step, drawn = xs
            if hoisted is None:  # xs holds the step's batch indices
                drawn = draws(level_key, data_in, source, step, drawn)
            return _update(p, opt_state, ema, sigma, far, step, drawn)

        carry, losses = jax.lax.scan(one_step, (p, opt_state, ema),
                                     (steps, batch_idx if hoisted is None else hoisted))
        return carry[0], carry[1], carry[2], losses

    if mesh is None:
        return jax.jit(scan_chunk)
    rep, rows = P(), P(_BATCH_AXIS)
    in_specs = (rep, rep, rep, rep, rep, rows if sharded else rep, rep, rep, rep,
                P(None, _BATCH_AXIS) if sharded else rep)
    return jax.jit(jax.shard_map(scan_chunk, mesh=mesh, in_specs=in_specs, out_specs=(rep, rep, rep, rep),
                                 check_vma=False))


#: `_build_chunk_runner` cached on everything that is not an array (the model's static part, the
#: optimiser object, the target's static part, the batch size, the dtype): a second `fit` with
#: the same optimiser object and model type reuses the compiled program instead of tracing and
#: compiling it again (≈ 1 s each time). The 8 most recent entries are kept (each holds the
#: programs compiled for it; `jax.clear_caches()` frees them). Used for array data and for
#: targets that are equinox modules (their JAX arrays become arguments); not for a data callable
#: or a plain-object target, whose state may change between calls.
_cached_chunk_runner = _cached(_build_chunk_runner)

#: Errors of a target whose `sample` needs concrete values of its arrays; `fit` then closes over
#: the target instead of passing its arrays in.
_CONCRETE_VALUE_ERRORS = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                          jax.errors.TracerBoolConversionError, jax.errors.TracerIntegerConversionError)

#: Defaults of `fit` (see its docstring and docs/QUALITY.md for the measurements behind them).
#: The default budget: every level but the last gets `DEFAULT_STEPS_PER_LEVEL` steps, the last
#: (σ_min, the only one the sampler uses) `DEFAULT_FINAL_STEPS` (see `default_steps`).
DEFAULT_STEPS_PER_LEVEL = 1000
DEFAULT_FINAL_STEPS = 160_000
DEFAULT_BATCH_SIZE = 128
DEFAULT_LEARNING_RATE = 1e-3
#: `fit`'s default ``readout_factor`` (with the default optimiser): the readout A's step at σ_min
DEFAULT_READOUT_FACTOR = 10.0
DEFAULT_EMA_DECAY = 0.999
DEFAULT_CONFINE = 1.0
#: `fit`'s ``density_weight``: data rows of the density estimate per step, and the largest weight
DENSITY_REFERENCE_ROWS = 1024
DENSITY_WEIGHT_CAP = 20.0
#: Far-field points per step for the confinement penalty (each with a second point twice as far out).
CONFINE_POINTS = 64
#: the confinement's least inward radial slope beyond the shell (`confinement_penalty`)
CONFINE_SLOPE = 0.1
#: the far points' whitened radii, in units of the data's largest (uniform in this range)
_CONFINE_RADII = (1.0, 3.0)


def _confinement_points(far, far_uv):
    """The penalty's points on the shell, twice as far out, and their outward axes L u."""
    mean, chol, radius, _ = far
    u, rho = far_uv
    offset = _times_transpose((radius * rho) * u, chol)
    return mean + offset, mean + 2.0 * offset, _times_transpose(u, chol)


#: Points drawn from a target (or data callable) to measure its extent and default schedule.
EXTENT_DRAWS = 10_000


def default_steps(num_levels: int) -> list[int]:
    """`fit`'s default steps per level: `DEFAULT_STEPS_PER_LEVEL` (1000) at every level but the
    last, `DEFAULT_FINAL_STEPS` (160 000) at the last.

    The sampler uses the model of the last level (σ_min) only; the earlier levels are a
    curriculum that brings the network near the data. What limits sample quality on thin and
    curved sets is how sharp the σ_min score gets, and a ReLU network sharpens slowly (on two
    concentric rings the learned radial slope reaches 11–17 of the true 30 after 2000 steps, and
    still only 26–29 after 6000 steps of noise-free regression onto the exact score), so the
    budget goes where it is used: with the same 20 000 steps in total, moving them to the last
    level lowered the rings' MMD² from 37× to 14× the floor. More steps there kept helping
    (20 000 → 160 000 took the swiss roll from 16/15/4.0× the floor to 0.1/0.7/0.3× over three
    seeds), and letting the readout keep up (`fit`'s ``readout_factor``, on by default) did the
    rest for moons (docs/QUALITY.md). ≈ 19 s for N = 1000, d = 2 on one core with the C++ DSM
    kernels.

    **Arguments:** `num_levels` ≥ 1. **Returns:** a list of `num_levels` ints.
    """
    num_levels = check_int(num_levels, "num_levels")
    return [DEFAULT_STEPS_PER_LEVEL] * (num_levels - 1) + [DEFAULT_FINAL_STEPS]


def _check_steps(steps_per_level, num_levels: int) -> list[int]:
    if isinstance(steps_per_level, (list, tuple, np.ndarray)):
        steps = [check_int(s, "steps_per_level") for s in np.asarray(steps_per_level).ravel().tolist()] \
            if np.ndim(steps_per_level) == 1 else None
        if steps is None or len(steps) != num_levels:
            raise ValueError(f"`steps_per_level` must be an int or one int per level ({num_levels} levels), "
                             f"got {steps_per_level!r}")
        return steps
    return [check_int(steps_per_level, "steps_per_level")] * num_levels


def _check_broad_noise(broad_noise) -> tuple[float, float]:
    if isinstance(broad_noise, (str, bytes)) or not isinstance(broad_noise, (tuple, list)) or len(broad_noise) != 2:
        raise TypeError(f"`broad_noise` must be a pair (fraction, scale), got {broad_noise!r}")
    fraction, scale = broad_noise
    for value, what in ((fraction, "fraction"), (scale, "scale")):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                or not math.isfinite(value):
            raise TypeError(f"`broad_noise` must be a pair of finite numbers (fraction, scale), got {what} {value!r}")
    if not 0 < fraction <= 1:
        raise ValueError(f"`broad_noise`'s fraction must be in (0, 1], got {fraction}")
    if not scale >= 1:
        raise ValueError(f"`broad_noise`'s scale must be ≥ 1 (a broader noise than σ), got {scale}")
    return float(fraction), float(scale)


@functools.lru_cache(maxsize=16)
def default_optimizer(learning_rate: float = DEFAULT_LEARNING_RATE):
    """The optimiser `fit` uses when none is given: Adam at a constant `learning_rate` (with the
    readout's step multiplied at the last level, see `fit`'s ``readout_factor``).

    `fit` returns the moving average of the parameters (``ema_decay``), which does what a
    decaying learning rate is usually there for (it averages out the DSM gradient noise)
    without slowing the iterate down: a constant rate with the average met the quality goal on
    more targets than a cosine decay within each level (`cosine_optimizer`; docs/QUALITY.md).
    Cached: one object per setting, so that repeated `fit` calls reuse the compiled chunk.

    **Arguments:** `learning_rate` > 0. **Returns:** an `optax.GradientTransformation`.
    """
    return optax.adam(check_positive(learning_rate, "learning_rate"))


@functools.lru_cache(maxsize=16)
def cosine_optimizer(steps_per_level: int, learning_rate: float = DEFAULT_LEARNING_RATE):
    """Adam whose learning rate decays cosine-wise from `learning_rate` to 1 % of it within
    every level of `steps_per_level` steps (the schedule restarts at each level, also with
    ``reset_optimizer=False``). `fit`'s default before the parameter average was measured
    against it; kept for comparison (``benchmarks/quality.py --variant cosine``). Cached."""
    steps_per_level = int(steps_per_level)
    if steps_per_level < 1:
        raise ValueError(f"`steps_per_level` must be a positive integer, got {steps_per_level}")
    cosine = optax.cosine_decay_schedule(learning_rate, steps_per_level, alpha=0.01)
    return optax.adam(lambda count: cosine(count % steps_per_level))


def fit(
    model: eqx.Module,
    data: Any,
    *,
    sigmas=None,
    steps_per_level: int | Sequence[int] | None = None,
    epochs_per_level: int | None = None,
    batch_size: int | Sequence[int] = DEFAULT_BATCH_SIZE,
    optimizer: optax.GradientTransformation | None = None,
    weight_decay: float = 0.0,
    reset_optimizer: bool = True,
    ema_decay: float | None = DEFAULT_EMA_DECAY,
    readout_factor: float | None = None,
    antithetic: bool = True,
    confine: float | None = DEFAULT_CONFINE,
    tail_weight: float | None = None,
    stable_target: int | None = None,
    broad_noise: tuple[float, float] | None = None,
    density_weight: float | None = None,
    key,
    progress: bool | None = None,
    chunk_size: int | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    max_chunks: int | None = None,
    data_parallel: bool | None = None,
) -> tuple[eqx.Module, History]:
    """Train a score model by denoising score matching over an annealed noise schedule.

    **Arguments:**

    - `model`: a `ScoreNetwork`, `SamplerOnly` or any equinox module mapping ``(batch, d)`` to
      ``(batch, d)``; or a conditional model (`ConditionalScoreNetwork`,
      `ConditionalSamplerOnly`, any module with an integer ``cond_dim`` mapping ``(x, c)`` to a
      score), trained by conditional DSM on pairs (the noise blurs x only).
    - `data`: an array ``(num, d)`` (shuffled epochs, the last incomplete batch dropped), a
      JAX-traceable callable ``(key, batch_size) -> (batch_size, d)``, or a target with
      ``sample(key, num)`` (fresh draws every step, as in the paper). For a conditional model:
      a pair ``(x, c)`` of arrays ``(num, d)`` and ``(num, cond_dim)``, or a callable or target
      that draws such pairs. The default schedule and the extent are those of the x part; the
      confinement's far-field points are paired with the batch's inputs c.
    - `sigmas`: the noise levels, e.g. `geometric_sigmas(...)`; all > 0, used in the given order.
      Default: `rsnjax.default_sigmas` of the data (σ_max = the largest pairwise distance,
      σ_min = the data's finest scale, 10 or more geometric levels).
    - `steps_per_level`: optimiser steps at each level: an int, or one int per level. Default:
      `default_steps` — 1000 at every level but the last and 160 000 at the last (σ_min), the
      only level whose model the sampler uses (≈ 19 s for N = 1000, d = 2 on one CPU core with
      the C++ DSM kernels; pass fewer steps for a quick run). For array data `epochs_per_level` may be given
      instead (steps = epochs × ⌊num / batch_size⌋ at every level).
    - `batch_size`: examples per step (default 128): an int, or one int per level (e.g. a larger
      batch at σ_min only; every distinct size compiles its own program).
    - `optimizer`: an optax transformation. Default: `default_optimizer` — Adam at a constant
      1e-3 (with the parameter average below and the readout's faster last level, ``readout_factor``;
      `cosine_optimizer` decays it within each level).
      (The paper's double peak uses
      ``optax.amsgrad(1e-4)`` with ``weight_decay=1e-3``.) Pass the same object to later
      `fit` calls to reuse the compiled program (it is traced once, so values its closures read
      are taken as they were then).
    - `ema_decay`: return the exponential moving average of the parameters with this decay
      (warm-up (1+t)/(10+t), restarted at every level), whatever the optimiser; None returns the
      last iterate. The average removes most of the 1/σ-sized step noise of small-σ levels.
    - `readout_factor`: at the last level (σ_min, the model the sampler uses) the optimiser's
      step for the readout A (W_out) is multiplied by this. Default None: 10
      (`DEFAULT_READOUT_FACTOR`) with the default optimiser, 1 (off) with a given one; a number
      applies to any optimiser. Why: in s(x) = −x + A φ(Bx + b) the hidden layer places the
      units' switching lines and A sets how steep the score is between them; on thin or curved
      data the σ_min score must be steep across the data (≈ 1/σ_min²), but Adam moves every
      parameter by about the learning rate per step, and the learned score stayed too shallow
      (two concentric rings: a radial slope of 11–17 where the blurred data's is 30). With the
      default 160 000 steps at σ_min, ×10 took moons from 4.6/0.9/0.4× the floor (seeds 0–2)
      to 2.4/0.3/0.15×, at no cost per step. Larger factors are faster and less stable: ×20 with
      80 000 steps failed the heavy-tailed Student-t on one seed of five (3.6×), ×30 with
      40 000 steps on two of three (docs/QUALITY.md). Models without a field ``A`` are
      unaffected.
    - `antithetic`: draw the noise in pairs ±ε on the same data point (half the batch's points,
      each used twice). The O(1/σ) noise of the DSM gradient cancels within a pair.
    - `confine`: weight of the far-field penalty that keeps the drift pointing inward outside
      the data (None or 0: off). Every step, 64 points z on the shell 1–3× the data's largest
      whitened radius (see `rsnjax.extent`) and the points z′ twice as far out along the same
      directions add ``confine/σ² · mean relu(κ + 0.1)²`` to the loss
      (`rsnjax.training.confinement_penalty`), κ the radial slope of the drift between z and z′
      along the outward whitened direction u (−1 for the −x leak alone, 0 for a score that tends
      to a constant, > 0 for a drift that turns outward): beyond the data the drift must turn
      inward, more and more. Without it a ReLU drift, unconstrained by DSM where there are no
      data, can grow outward linearly and chains escape. It acts only where it is violated and
      asks nothing of the drift's value, so heavy (Laplace-like) tails are kept.
    - `tail_weight`: a power q ≥ 0 (None or 0: off) that weights the DSM loss by
      w(x̃) = (1 + ‖W (x̃ − μ)‖²)^(q/2) of each noisy input's whitened radius (W, μ: the data's
      whitening and mean, see `rsnjax.extent`), so that a network of finite size spends more of
      itself on the tails. A weight that depends on x̃ alone leaves the minimiser, the blurred
      score, unchanged at every point. Rows are drawn with probability ∝ w(x) (with replacement)
      and weighted by w(x̃)/w(x), which is ≈ 1 at small σ, so the weighting costs little
      variance. Needs array `data` (draw a large sample from a target first) and one process.
      The recorded loss is then the weighted one. On the heavy-tailed Laplace X, q = 2 raised the
      stationary kurtosis on one seed of three (docs/RESULTS.md §2): an option, not a default.
    - `stable_target`: a number K ≥ `batch_size` of reference rows (None: off), for array data:
      the DSM target −ε/σ at x̃ = x + σε is replaced by the stable target field
      (`rsnjax.stable_target`, Xu et al. 2023) over a reference batch of K data rows, the
      step's own rows and K − (distinct rows in the batch) drawn at random:
      t(x̃) = Σ_j softmax_j(−‖x̃ − x_j‖²/2σ²) (x_j − x̃)/σ². Its minimiser is (up to an O(1/K)
      bias) the same blurred score, and its variance far lower wherever several data rows lie
      within a few σ of x̃. It costs ``batch_size × K`` distances per step (cheap in low d;
      K = 1024–4096). Needs array `data`, an unconditional model and one process. The recorded
      loss is then ½ mean ‖s(x̃) − t(x̃)‖², much smaller than the DSM loss at small σ.
      Measured on the 13 targets of ``benchmarks/quality.py`` (docs/QUALITY.md): at K = 2048 it
      cut the σ_min target's variance 17–48× and lowered moons' and swiss roll's MMD² on three
      seeds of three, but left them above the goal, made the double peak fail on one seed and
      tripled the training time: an option, not a default.
    - `broad_noise`: ``(fraction, scale)`` with 0 < fraction ≤ 1 and scale ≥ 1 (None: off);
      needs `stable_target`. That fraction of each batch's rows (whole antithetic pairs) is
      noised with ``scale·σ`` instead of σ, while the target is still the level-σ field
      t(x̃): since t depends on x̃ alone, the minimiser stays the σ-blurred score wherever the
      mixed proposal covers, and the points between close ridges, which σ-noise rarely reaches,
      get trained. A broad row's own x is left out of its references (with it, the target would
      point back at the row x̃ was drawn from, cσ away). Measured with (0.25, 3): worse than
      `stable_target` alone on moons and swiss roll (docs/QUALITY.md).
    - `density_weight`: a power α ≥ 0 (None or 0: off), for array data: each row's DSM loss is
      weighted by w(x̃) ∝ p̂(x̃)^(−α), normalised to mean 1 over the step's rows and clipped at
      `DENSITY_WEIGHT_CAP` (`density_weights`). p̂ is a Gaussian kernel density estimate over
      `DENSITY_REFERENCE_ROWS` random data rows per step, at bandwidth sqrt(σ² + h²), h = Scott's
      factor K^(−1/(d+4)) × the data's RMS standard deviation. A weight that depends on x̃ alone
      leaves the minimiser (the σ-blurred score) unchanged; this one shifts the network's
      capacity towards low-density regions, such as the valley between two close ridges, which
      DSM samples rarely. Needs array `data`, an unconditional model and one process; combines
      with `tail_weight` (the weights multiply). The recorded loss is then the weighted one.
      Measured on the thin curved sets of ``benchmarks/quality.py`` (docs/QUALITY.md): worse on
      circles and swiss roll on every seed (circles seed 0: 2.3× → 7.8× the floor at α = 0.5,
      49× at α = 1): an option, not a default.
    - `weight_decay`: PyTorch-style L2 decay: ``weight_decay · θ`` is added to the gradient
      *before* the optimiser (``optax.add_decayed_weights`` chained in front).
    - `reset_optimizer`: re-create the optimiser state at the start of every level (as the authors did).
    - `key`: PRNG key (keyword-only).
    - `progress`: show a progress bar (default: when stderr is a terminal).
    - `chunk_size`: steps per compiled chunk (default: the largest divisor of every level's steps
      that is ≤ 250). Results do not depend on it.
    - `checkpoint_dir`: when given, the model, optimiser state, loss history and position in the
      schedule are saved (atomically) to ``checkpoint_dir/fit_state.ckpt`` at the end of every
      level and, with `checkpoint_every`, every that many steps (at the next chunk boundary).
      Needs a `ScoreNetwork` or `SamplerOnly` model. Without `resume` an existing file there is
      replaced by the new run's first checkpoint.
    - `checkpoint_every`: also checkpoint every this many steps within a level.
    - `resume`: continue from the checkpoint in `checkpoint_dir` if there is one (start from
      scratch if there is none). The run must use the same model class and hyperparameters, key,
      schedule, steps per level, batch size, weight decay, `reset_optimizer` and data (arrays and
      targets are compared by content; a callable cannot be checked); the result then equals an
      uninterrupted run's bit for bit, whatever the chunk sizes. A checkpoint that does not match
      raises `CheckpointError` saying what differs. The optimiser itself is not recorded: pass the
      same one.
    - `max_chunks`: stop after this many compiled chunks (for tests and time-boxed runs); the
      checkpoint is written first so the run can be resumed.
    - `data_parallel`: split every step's batch over the local devices (`jax.sharding` mesh over
      a ``"batch"`` axis; parameters replicated, gradients averaged with ``lax.pmean``). Default
      (None): on when there are several local accelerators (GPUs, TPUs); not for several XLA CPU
      devices, which share the same cores (it measured 0.59–0.94× of one device for batches of
      128–1024 on 2 cores, docs/PERFORMANCE.md): True forces it there, False trains on one. The
      parameters equal a one-device run's up to the order of the float reduction; `batch_size`
      must be a multiple of the number of devices. Under ``jax.distributed`` (several processes, see
      `rsnjax.distributed`) training is always data-parallel over all processes' devices and an
      array ``data`` is this process's *local shard*: every device takes an equal block of its
      process's rows (the smallest block over all processes; extra rows are dropped), each step
      takes ``batch_size / num_devices`` rows from every block (antithetic pairs within a block),
      the extent and default schedule are measured on rows gathered from every process, and every
      process returns the same model; only process 0 writes checkpoints. A target or data
      callable is drawn from identically on every process (the whole batch, then split).

    **Returns:** ``(trained_model, history)``, see `History`. The model records the extent of
    its training data (``model.extent``, a `DataExtent`) for `sample`'s escape count.

    **Raises:** `TrainingDivergedError` when the loss becomes non-finite (the checkpoint on disk is
    left untouched: it is the last good one); `CheckpointError` when resuming from a corrupt or
    mismatched checkpoint; `ValueError`/`TypeError` naming the argument for bad input.
    """
    key = check_key(key)
    if not callable(model) or not jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array)):
        raise TypeError("`model` must be an equinox module with trainable floating-point arrays "
                        f"(e.g. a ScoreNetwork or SamplerOnly), got {type(model).__name__}")
    if sigmas is not None:
        if isinstance(sigmas, (str, bytes, dict, set)):
            raise TypeError(f"`sigmas` must be a 1-D sequence of positive numbers, got {type(sigmas).__name__}")
        try:
            sigmas = np.asarray(sigmas, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"`sigmas` must be a 1-D sequence of positive numbers: {err}") from None
        if sigmas.ndim != 1 or sigmas.size == 0:
            raise ValueError(f"`sigmas` must be a non-empty 1-D sequence, got shape {sigmas.shape}")
        if not np.all(np.isfinite(sigmas)) or np.any(sigmas <= 0):
            raise ValueError(f"`sigmas` must all be finite and > 0, got {sigmas}")
    level_batches = None  # one batch size per level, when a sequence is given
    if isinstance(batch_size, (list, tuple, np.ndarray)):
        level_batches = [check_int(b, "batch_size") for b in np.asarray(batch_size, dtype=object).ravel()]
        if not level_batches:
            raise ValueError("`batch_size` must be a positive int or a non-empty sequence of them (one per level)")
        for b in sorted(set(level_batches)):
            mesh = dist.fit_mesh(data_parallel, b)
        batch_size = max(level_batches)  # the largest, for the checks below
    else:
        batch_size = check_int(batch_size, "batch_size")
        mesh = dist.fit_mesh(data_parallel, batch_size)
    num_devices = 1 if mesh is None else mesh.devices.size
    multiprocess = dist.is_multiprocess()
    # rows an array `data` needs here: a batch, or this process's share of one under jax.distributed
    min_rows = batch_size // num_devices * jax.local_device_count() if multiprocess else batch_size
    weight_decay = check_positive(weight_decay, "weight_decay", allow_zero=True)
    if ema_decay is not None:
        if isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float, np.floating)) \
                or not 0 <= float(ema_decay) < 1:
            raise ValueError(f"`ema_decay` must be a number in [0, 1) or None, got {ema_decay!r}")
        ema_decay = float(ema_decay) or None
    if readout_factor is None:
        readout_factor = DEFAULT_READOUT_FACTOR if optimizer is None else 1.0
    readout_factor = check_positive(readout_factor, "readout_factor")
    if not isinstance(antithetic, (bool, np.bool_)):
        raise TypeError(f"`antithetic` must be a bool, got {type(antithetic).__name__}")
    antithetic = bool(antithetic)
    if confine is not None:
        confine = check_positive(confine, "confine", allow_zero=True) or None
    if tail_weight is not None:
        tail_weight = check_positive(tail_weight, "tail_weight", allow_zero=True) or None
    if stable_target is not None:
        stable_target = check_int(stable_target, "stable_target")
        if stable_target < batch_size:
            raise ValueError(f"`stable_target` (reference rows K) must be at least `batch_size` "
                             f"({batch_size}), got {stable_target}")
    if density_weight is not None:
        density_weight = check_positive(density_weight, "density_weight", allow_zero=True) or None
    if broad_noise is not None:
        broad_noise = _check_broad_noise(broad_noise)
        if stable_target is None:
            raise ValueError("`broad_noise` needs `stable_target` (the DSM target −ε/σ is tied to "
                             "noise of scale σ); give `stable_target=K` as well")
    dim = _model_dim(model)
    conditional = is_conditional(model)
    data_cond = None

    # --- the data source -------------------------------------------------------------------
    data_array = None
    if _is_target(data):
        if dim is not None and data.dim != dim:
            raise ValueError(f"`data` (a target of dim {data.dim}) does not match the model's dim {dim}")
        target = data
        if isinstance(data, eqx.Module):  # its JAX arrays become arguments of the cached program
            source, source_static = eqx.partition(data, lambda leaf: isinstance(leaf, jax.Array))
            draw = None
        else:  # a plain object: closed over, not cached (its attributes may change)
            source, source_static = None, None
            draw = lambda k, bs: target.sample(k, bs)  # noqa: E731
        kind = f"target:{type(data).__name__}:{_array_fingerprint(data)}"
    elif callable(data) and not isinstance(data, (np.ndarray, jax.Array)):
        source, source_static, draw = None, None, data
        kind = "callable"
    elif conditional:  # pairs (x, c)
        data_array, data_cond = check_pairs(data, dim, model.cond_dim, min_rows)
        source, source_static, draw = None, None, None
        kind = (f"pairs:{tuple(data_array.shape)}:{tuple(data_cond.shape)}:"
                f"{_array_fingerprint((data_array, data_cond))}")
    else:
        data_array = check_array(data, "data", ndim=2, dim=dim, min_rows=min_rows)
        source, source_static, draw = None, None, None
        kind = f"array:{tuple(data_array.shape)}:{_array_fingerprint(data_array)}"
    sharded = multiprocess and data_array is not None
    if stable_target is not None and (data_array is None or conditional or multiprocess):
        raise ValueError("`stable_target` needs `data` as an array, an unconditional model and one process, got "
                         + ("a run under jax.distributed" if multiprocess else
                            "a conditional model" if conditional else f"{kind.split(':')[0]} data")
                         + "; draw a large sample from a target first")
    if density_weight is not None and (data_array is None or conditional or multiprocess):
        raise ValueError("`density_weight` needs `data` as an array, an unconditional model and one process, got "
                         + ("a run under jax.distributed" if multiprocess else
                            "a conditional model" if conditional else f"{kind.split(':')[0]} data")
                         + "; draw a large sample from a target first")
    if tail_weight is not None and (data_array is None or multiprocess):
        raise ValueError("`tail_weight` needs `data` as an array (or (x, c) pairs) in one process, got "
                         + ("a run under jax.distributed" if multiprocess else f"{kind.split(':')[0]} data")
                         + "; draw a large sample from a target first")
    if sharded:  # each process's rows: blocks (num_devices, m, ·) of one global array, one per device
        local_rows = data_array.shape[0]
        global_x, block_rows = dist.shard_local_data(np.asarray(data_array), mesh)
        global_c = dist.shard_local_data(np.asarray(data_cond), mesh)[0] if data_cond is not None else None
        kind = f"shards:{num_devices}x{block_rows}:" + dist.combined_fingerprint(kind.rsplit(":", 1)[-1])
        # the extent's points: the same rows of every process, gathered (identical everywhere)
        share = min(local_rows, 100_000 // jax.process_count())
        share = int(dist.allgather_host(np.array([share])).min())
        extent_rows = dist.allgather_host(np.asarray(data_array[:share])).reshape(-1, data_array.shape[1])
    if data_array is not None:

        def epoch_steps(b: int) -> int:  # steps per epoch at batch size b
            return block_rows // (b // num_devices) if sharded else data_array.shape[0] // b

        if epochs_per_level is not None:
            if steps_per_level is not None:
                raise ValueError("give either `steps_per_level` or `epochs_per_level`, not both")
            epochs = check_int(epochs_per_level, "epochs_per_level")
            steps_per_level = epochs * epoch_steps(batch_size) if level_batches is None else None
    elif epochs_per_level is not None:
        raise ValueError("`epochs_per_level` needs array `data`; use `steps_per_level` for targets")

    # --- the data's extent (recorded on the model; the default schedule and the far field) ----
    extent_points = _extent_points(extent_rows if sharded else data_array,
                                   target.sample if _is_target(data) else data,
                                   jax.random.fold_in(key, _EXTENT_SALT), conditional)
    extent = data_extent(extent_points)
    if sigmas is None:
        sigmas = default_sigmas(extent_points)
    num_levels = len(sigmas)
    if level_batches is not None and len(level_batches) != num_levels:
        raise ValueError(f"`batch_size` has {len(level_batches)} entries but the schedule has {num_levels} "
                         "levels; give one batch size per level or a single int")
    batches = level_batches if level_batches is not None else [batch_size] * num_levels
    if epochs_per_level is not None and level_batches is not None:
        steps_per_level = [epochs * epoch_steps(b) for b in batches]
    level_steps = default_steps(num_levels) if steps_per_level is None else _check_steps(steps_per_level, num_levels)
    common = math.gcd(*level_steps)
    chunk = check_int(chunk_size, "chunk_size") if chunk_size is not None else _divisor_at_most(common, 250)
    if common % chunk:
        raise ValueError(f"`chunk_size` ({chunk}) must divide every level's steps (`steps_per_level`: "
                         f"{level_steps if len(set(level_steps)) > 1 else level_steps[0]})")
    if checkpoint_every is not None:
        checkpoint_every = check_int(checkpoint_every, "checkpoint_every")
        if checkpoint_dir is None:
            raise ValueError("`checkpoint_every` needs `checkpoint_dir`")
    if max_chunks is not None:
        max_chunks = check_int(max_chunks, "max_chunks", minimum=0)
    if not isinstance(resume, (bool, np.bool_)):
        raise TypeError(f"`resume` must be a bool, got {type(resume).__name__}")
    if resume and checkpoint_dir is None:
        raise ValueError("`resume=True` needs `checkpoint_dir`")
    if checkpoint_dir is not None:
        if isinstance(checkpoint_dir, bool) or not isinstance(checkpoint_dir, (str, os.PathLike)):
            raise TypeError(f"`checkpoint_dir` must be a str or os.PathLike, got {type(checkpoint_dir).__name__}")
        if Path(checkpoint_dir).exists() and not Path(checkpoint_dir).is_dir():
            raise ValueError(f"`checkpoint_dir` {str(checkpoint_dir)!r} exists and is not a directory")
        try:
            ckpt.model_spec(model)
        except TypeError:
            raise TypeError(
                "`checkpoint_dir` needs `model` to be a ScoreNetwork or SamplerOnly (the models "
                f"rsnjax can checkpoint), got {type(model).__name__}") from None

    # --- the optimiser and the compiled chunk ------------------------------------------------
    base = optimizer if optimizer is not None else default_optimizer()
    if not isinstance(base, optax.GradientTransformation):
        raise TypeError(f"`optimizer` must be an optax.GradientTransformation, got {type(base).__name__}")
    tx = _with_weight_decay(base, weight_decay)
    if getattr(model, "extent", None) is not None:
        # the extent is re-measured on this data; kept out of the compiled program's static part,
        # so that a model trained before (e.g. level by level) reuses the cached program
        model = with_extent(model, None)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    noise_root, data_root = jax.random.split(key)
    density = None
    if density_weight is not None:  # (α, h, K): Scott's bandwidth for K rows, the data's RMS sd
        rms_sd = float(np.sqrt(np.mean(np.var(np.asarray(data_array, np.float64), axis=0))))
        density = (density_weight, rms_sd * DENSITY_REFERENCE_ROWS ** (-1.0 / (data_array.shape[1] + 4)),
                   DENSITY_REFERENCE_ROWS)
    # the readout's step factor at the last level, found by its σ (static: the σ of the call's last level)
    readout = None if readout_factor == 1.0 else (float(np.asarray(sigmas[-1], dtype)), readout_factor)
    options = (ema_decay, antithetic, confine, CONFINE_POINTS if confine is not None else 0, tail_weight,
               stable_target, broad_noise, density, readout)
    build = _build_chunk_runner if draw is not None else _cached_chunk_runner
    runners = {b: build(static, tx, source_static, draw, data_array is not None, b, dtype, options,
                        mesh, sharded, _dsm_kernel.enabled()) for b in sorted(set(batches))}
    far = _far_field_arrays(extent, dtype)
    row_probs = None
    if tail_weight is not None:  # rows are drawn ∝ w(x) (see `tail_weight`)
        log_w = np.asarray(_log_tail_weight(jnp.asarray(data_array, jnp.float32), far[0].astype(jnp.float32),
                                            far[3].astype(jnp.float32), tail_weight), np.float64)
        row_probs = np.exp(log_w - log_w.max())
        row_probs = jnp.asarray(row_probs / row_probs.sum(), jnp.float32)

    def batch_indices(level: int, start: int, length: int) -> jax.Array:
        if data_array is None:
            return np.zeros((length, 0), np.int32)  # NumPy: no eager dispatch per chunk
        batch_size = batches[level]
        steps_per_epoch = epoch_steps(batch_size)
        if sharded:  # (length, num_devices, rows per device) into each device's own block
            per = batch_size // num_devices
            rows = np.empty((length, num_devices, per), np.int32)
            for g in range(start, start + length):
                epoch, pos = divmod(g, steps_per_epoch)
                perm = perms.get((level, epoch))
                if perm is None:
                    perms.clear()
                    base = jax.random.fold_in(jax.random.fold_in(data_root, level), epoch)
                    perm = np.stack([np.asarray(jax.random.permutation(jax.random.fold_in(base, j), block_rows))
                                     for j in range(num_devices)])
                    perms[(level, epoch)] = perm
                rows[g - start] = perm[:, pos * per : (pos + 1) * per]
            return rows
        rows = []
        for g in range(start, start + length):
            epoch, pos = divmod(g, steps_per_epoch)
            perm = perms.get((level, epoch))
            if perm is None:
                perms.clear()
                epoch_key = jax.random.fold_in(jax.random.fold_in(data_root, level), epoch)
                n = data_array.shape[0]
                perm = np.asarray(jax.random.permutation(epoch_key, n) if row_probs is None
                                  else jax.random.choice(epoch_key, n, (n,), p=row_probs))
                perms[(level, epoch)] = perm
            rows.append(perm[pos * batch_size : (pos + 1) * batch_size])
        return jnp.asarray(np.stack(rows), jnp.int32)

    perms: dict = {}
    offsets = np.concatenate([[0], np.cumsum(level_steps)]).astype(int).tolist()
    total = offsets[-1]
    loss_hist = np.full(total, np.nan)
    level_hist = np.repeat(np.arange(num_levels), level_steps)
    opt_state = tx.init(params)
    ema = params
    start_level, start_step = 0, 0

    fingerprint = {
        "sigmas": [float(s) for s in sigmas],
        "steps_per_level": level_steps if len(set(level_steps)) > 1 else level_steps[0],
        "batch_size": batch_size if level_batches is None else level_batches,
        "data": kind, "key": _key_fingerprint(key),
        "weight_decay": weight_decay, "reset_optimizer": bool(reset_optimizer),
        "ema_decay": ema_decay, "antithetic": antithetic, "confine": confine,
        # a checkpoint written before the readout factor existed does not resume under it
        **({"readout_factor": readout_factor} if readout_factor != 1.0 else {}),
        # the penalty's form: a checkpoint from before the slope penalty does not resume under it
        **({"confinement": f"radial slope <= -{CONFINE_SLOPE}"} if confine is not None else {}),
        **({"tail_weight": tail_weight} if tail_weight is not None else {}),
        **({"stable_target": stable_target} if stable_target is not None else {}),
        **({"broad_noise": list(broad_noise)} if broad_noise is not None else {}),
        **({"density_weight": density_weight} if density_weight is not None else {}),
    }
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if resume and ckpt_path.exists():
        name = repr(str(ckpt_path))
        header = ckpt.read_info(ckpt_path)
        meta = header.get("metadata", {})
        stored = meta.get("fit")
        if not isinstance(stored, dict) or not isinstance(meta.get("level"), int) \
                or not isinstance(meta.get("step"), int):
            raise ckpt.CheckpointError(
                f"checkpoint {name} was not written by `fit` (no training position in its header)")
        if header["model"] != ckpt.model_spec(model):
            raise ckpt.CheckpointError(
                f"checkpoint {name} holds a {_describe_spec(header['model'])}, but `model` is a "
                f"{_describe_spec(ckpt.model_spec(model))}; resume needs the same model")
        if header.get("dtype") != str(dtype):
            raise ckpt.CheckpointError(
                f"checkpoint {name} holds {header.get('dtype')} weights, but `model` has {dtype} weights")
        if stored != fingerprint:
            diff = sorted(k for k in set(fingerprint) | set(stored) if stored.get(k) != fingerprint.get(k))
            raise ckpt.CheckpointError(
                f"checkpoint {name} was written by a different fit configuration "
                f"(differs in: {', '.join(diff)}); resume needs the same key, schedule and data")
        if not (0 <= meta["level"] <= num_levels
                and 0 <= meta["step"] < (level_steps + [1])[meta["level"]]):
            raise ckpt.CheckpointError(
                f"checkpoint {name} is at level {meta['level']}, step {meta['step']}, outside this "
                f"schedule ({num_levels} levels of {fingerprint['steps_per_level']} steps)")
        model_loaded, extra, header = ckpt.load_with_extra(
            ckpt_path, {"opt_state": opt_state, "loss": jnp.zeros(total), "ema": params})
        if hasattr(model_loaded, "extent"):  # the extent is re-measured; params keep the model's structure
            model_loaded = with_extent(model_loaded, None)
        params = eqx.partition(model_loaded, eqx.is_inexact_array)[0]
        ema = extra["ema"]
        opt_state = extra["opt_state"]
        loss_hist = np.asarray(extra["loss"], dtype=np.float64)
        start_level, start_step = meta["level"], meta["step"]

    def save_checkpoint(level: int, step: int):
        if ckpt_path is None:
            return
        if jax.process_index() == 0:  # under jax.distributed every process holds the same state
            ckpt.save(ckpt_path, current(),
                      extra=dist.to_local({"opt_state": opt_state, "loss": jnp.asarray(loss_hist), "ema": ema}),
                      metadata={"fit": fingerprint, "level": level, "step": step})
        dist.barrier("rsnjax.fit.checkpoint")

    if progress is None:
        progress = sys.stderr.isatty()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=offsets[start_level] + start_step,
                   desc="DSM", unit="step", dynamic_ncols=True)

    def recorded(parameters):
        """The model with these parameters and, where it has the field, the data's extent."""
        out = eqx.combine(dist.to_local(parameters) if mesh is not None else parameters, static)
        return with_extent(out, extent) if hasattr(out, "extent") else out

    def finished():  # the model to hand back: the parameter average when kept
        return recorded(ema if ema_decay is not None else params)

    def current():  # the optimiser's current iterate, as checkpoints hold it
        return recorded(params)

    chunks_run = 0
    since_ckpt = 0
    data_in = data_array if data_array is not None else jnp.zeros((0,), dtype)
    if data_cond is not None:
        data_in = (data_array, data_cond)
    if sharded:
        data_in = global_x if data_cond is None else (global_x, global_c)
    if mesh is not None:  # replicated, except the blocks of multi-process data
        data_in = dist.put(data_in, mesh, P(_BATCH_AXIS) if sharded else P())
        source, far = dist.put(source, mesh), dist.put(far, mesh)
        index_spec = P(None, _BATCH_AXIS) if sharded else P()

    def call(fn, *args):
        if mesh is None:
            return fn(*args)
        return fn(*dist.put(args[:9], mesh), dist.put(args[9], mesh, index_spec))
    try:
        for level in range(start_level, num_levels):
            sigma = jnp.asarray(sigmas[level], dtype)
            level_key = jax.random.fold_in(noise_root, level)
            run_chunk = runners[batches[level]]
            step = start_step if level == start_level else 0
            if step == 0 and reset_optimizer and level > 0:
                opt_state = tx.init(params)
            while step < level_steps[level]:
                if max_chunks is not None and chunks_run >= max_chunks:
                    save_checkpoint(level, step)
                    return finished(), History(loss_hist, level_hist, sigmas)
                # A run resumed with another chunk size first realigns to a chunk boundary.
                length = chunk - step % chunk
                steps = np.arange(step, step + length, dtype=np.int32)
                args = (params, opt_state, ema, sigma, level_key, data_in, source, far, steps,
                        batch_indices(level, step, length))
                try:
                    new_params, new_opt, new_ema, losses = call(run_chunk, *args)
                except _CONCRETE_VALUE_ERRORS:
                    if source is None:
                        raise
                    # the target's `sample` needs concrete values: close over it instead
                    source, draw = None, (lambda k, bs: target.sample(k, bs))
                    runners = {b: _build_chunk_runner(static, tx, None, draw, False, b, dtype, options, mesh,
                                                      sharded) for b in runners}
                    run_chunk = runners[batches[level]]
                    new_params, new_opt, new_ema, losses = call(run_chunk, *args[:6], None, *args[7:])
                losses = dist.host(losses)
                g0 = offsets[level] + step
                if not np.all(np.isfinite(losses)):
                    bad = int(np.argmax(~np.isfinite(losses)))
                    loss_hist[g0 : g0 + bad] = losses[:bad]
                    raise TrainingDivergedError(
                        f"the DSM loss became non-finite at level {level} (sigma={sigmas[level]:.4g}), "
                        f"step {step + bad}; the returned `.model` is the last good one"
                        + (f" and {str(ckpt_path)!r} holds the last checkpoint" if ckpt_path else "")
                        + ". Lower the learning rate or check the data.",
                        model=current(),
                        history=History(loss_hist, level_hist, sigmas), level=level, step=step + bad)
                params, opt_state, ema = new_params, new_opt, new_ema
                loss_hist[g0 : g0 + length] = losses
                step += length
                chunks_run += 1
                since_ckpt += length
                if bar is not None:
                    bar.update(length)
                    bar.set_postfix(level=f"{level + 1}/{num_levels}", sigma=f"{sigmas[level]:.3g}",
                                    loss=f"{losses.mean():.4g}")
                if checkpoint_every is not None and since_ckpt >= checkpoint_every and step < level_steps[level]:
                    save_checkpoint(level, step)
                    since_ckpt = 0
            save_checkpoint(level + 1, 0) if level + 1 < num_levels else save_checkpoint(num_levels, 0)
            since_ckpt = 0
    finally:
        if bar is not None:
            bar.close()
    return finished(), History(loss_hist, level_hist, sigmas)
