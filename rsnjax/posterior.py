"""Conditional targets with exact posteriors: a Gaussian-mixture prior observed linearly with
Gaussian noise, y = H x + ε, ε ~ N(0, R).

The posterior p(x | y) is again a Gaussian mixture, in closed form. With prior components
N(μ_k, Σ_k) of weight π_k, S_k = H Σ_k Hᵀ + R and the gain K_k = Σ_k Hᵀ S_k⁻¹:

    w_k(y) ∝ π_k N(y; H μ_k, S_k),   m_k(y) = μ_k + K_k (y − H μ_k),   P_k = Σ_k − K_k H Σ_k,

and the posterior score is ∇ₓ log p(x | y) = ∇ log p(x) + Hᵀ R⁻¹ (y − H x).

`LinearGaussianObservation` is a *conditional target*: ``sample(key, num)`` draws joint pairs
``(x, y)`` (what `rsnjax.fit` trains a conditional model on), ``score(x, y)`` and
``log_prob(x, y)`` are those of the posterior (what `rsnjax.sample` runs with ``inputs=y``), and
``posterior(y)`` returns the posterior as a `rsnjax.targets.GaussianMixture` for exact draws.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp
from jaxtyping import Array, Float, PRNGKeyArray

from ._validation import check_array, check_int, check_key, check_positive
from .targets import GaussianMixture, _as_float64

__all__ = ["LinearGaussianObservation", "cue_combination", "bimodal_observation"]


def _log_pdf(diff, prec, logdet):
    """log N(diff; 0, P⁻¹) over a batch ``diff`` ``(..., K, n)`` with precisions ``prec``
    ``(K, n, n)`` and log-determinants of the covariances ``logdet`` ``(K,)``."""
    maha = jnp.einsum("...ki,kij,...kj->...k", diff, prec, diff)
    return -0.5 * (maha + logdet + diff.shape[-1] * math.log(2 * math.pi))


class LinearGaussianObservation(eqx.Module):
    """A Gaussian-mixture prior on x observed as y = H x + ε, ε ~ N(0, R): the joint law of
    (x, y) and the exact posterior p(x | y) (see the module docstring).

    **Arguments:**

    - `prior`: a `rsnjax.targets.GaussianMixture` of dimension d.
    - `H`: the observation matrix, ``(cond_dim, d)``.
    - `noise_cov`: R: a scalar variance, ``(cond_dim,)`` variances or a ``(cond_dim, cond_dim)``
      positive-definite matrix.

    ``dim`` is d, ``cond_dim`` the size of y. Every method takes x ``(..., d)`` and y
    ``(..., cond_dim)`` with broadcastable batch shapes. The matrices that do not depend on y
    (the gains K_k, the posterior covariances P_k, the precisions) are computed once, in
    float64, when the target is built, so `score` is a few small products (cheap inside a
    sampler's loop).
    """

    prior: GaussianMixture
    H: Float[Array, "cond_dim dim"]
    noise_cov: Float[Array, "cond_dim cond_dim"]
    _prior_prec: Float[Array, "K dim dim"]
    _prior_log_norm: Float[Array, " K"]
    _innov_prec: Float[Array, "K cond_dim cond_dim"]
    _innov_logdet: Float[Array, " K"]
    _gain: Float[Array, "K dim cond_dim"]
    _post_cov: Float[Array, "K dim dim"]
    _noise_prec_H: Float[Array, "cond_dim dim"]
    dim: int = eqx.field(static=True)
    cond_dim: int = eqx.field(static=True)

    def __init__(self, prior: GaussianMixture, H, noise_cov):
        if not isinstance(prior, GaussianMixture):
            raise TypeError(f"`prior` must be a GaussianMixture, got {type(prior).__name__}")
        h = _as_float64(H, "H")
        if h.ndim != 2 or h.shape[1] != prior.dim or h.shape[0] < 1:
            raise ValueError(f"`H` must have shape (cond_dim, {prior.dim}), got {h.shape}")
        m = h.shape[0]
        r = _as_float64(noise_cov, "noise_cov")
        if r.ndim == 0:
            r = r * np.eye(m)
        elif r.ndim == 1 and r.shape == (m,):
            r = np.diag(r)
        if r.shape != (m, m) or not np.all(np.isfinite(r)) or not np.allclose(r, r.T, atol=1e-12) \
                or np.any(np.linalg.eigvalsh(r) <= 0):
            raise ValueError(f"`noise_cov` must be a positive variance, ({m},) positive variances or a "
                             f"({m}, {m}) positive-definite matrix, got {np.shape(noise_cov)}")
        cov = np.asarray(prior.covariances, np.float64)
        innov = np.einsum("ij,kjl,ml->kim", h, cov, h) + r  # S_k = H Σ_k Hᵀ + R
        innov_prec = np.linalg.inv(innov)
        gain = np.einsum("kij,lj,klm->kim", cov, h, innov_prec)  # K_k = Σ_k Hᵀ S_k⁻¹
        post = cov - np.einsum("kij,jl,klm->kim", gain, h, cov)
        dtype = prior.means.dtype
        as_jnp = lambda a: jnp.asarray(a, dtype)  # noqa: E731
        self.prior = prior
        self.H = as_jnp(h)
        self.noise_cov = as_jnp(r)
        self._prior_prec = as_jnp(np.linalg.inv(cov))
        self._prior_log_norm = as_jnp(np.log(np.asarray(prior.weights, np.float64)) - 0.5 * np.linalg.slogdet(cov)[1])
        self._innov_prec = as_jnp(innov_prec)
        self._innov_logdet = as_jnp(np.linalg.slogdet(innov)[1])
        self._gain = as_jnp(gain)
        self._post_cov = as_jnp(0.5 * (post + np.swapaxes(post, -1, -2)))
        self._noise_prec_H = as_jnp(np.linalg.solve(r, h))
        self.dim = prior.dim
        self.cond_dim = m

    # --- the posterior's parameters -------------------------------------------------------
    def _check(self, x=None, y=None):
        out = []
        if x is not None:
            out.append(check_array(x, "x", dim=self.dim, finite=False))
        if y is not None:
            out.append(check_array(y, "y", dim=self.cond_dim, finite=False))
        return out

    def posterior_covariances(self) -> Float[Array, "K dim dim"]:
        """P_k = Σ_k − K_k H Σ_k (the same for every y)."""
        return self._post_cov

    def _means(self, y):
        innov = y[..., None, :] - self.prior.means @ self.H.T  # (..., K, m)
        return self.prior.means + jnp.einsum("kij,...kj->...ki", self._gain, innov)

    def _log_weights(self, y):
        diff = y[..., None, :] - self.prior.means @ self.H.T
        logw = jnp.log(self.prior.weights) + _log_pdf(diff, self._innov_prec, self._innov_logdet)
        return logw - logsumexp(logw, axis=-1, keepdims=True)

    def posterior_means(self, y: Float[Array, "*batch cond_dim"]) -> Float[Array, "*batch K dim"]:
        """m_k(y) = μ_k + K_k (y − H μ_k)."""
        (y,) = self._check(y=y)
        return self._means(y)

    def posterior_log_weights(self, y: Float[Array, "*batch cond_dim"]) -> Float[Array, "*batch K"]:
        """log w_k(y), normalised: log π_k + log N(y; H μ_k, S_k) − log p(y)."""
        (y,) = self._check(y=y)
        return self._log_weights(y)

    def posterior_weights(self, y: Float[Array, "*batch cond_dim"]) -> Float[Array, "*batch K"]:
        """w_k(y)."""
        return jnp.exp(self.posterior_log_weights(y))

    def evidence_log_prob(self, y: Float[Array, "*batch cond_dim"]) -> Float[Array, "*batch"]:
        """log p(y), the marginal law of the observation."""
        (y,) = self._check(y=y)
        diff = y[..., None, :] - self.prior.means @ self.H.T
        return logsumexp(jnp.log(self.prior.weights) + _log_pdf(diff, self._innov_prec, self._innov_logdet), axis=-1)

    def posterior(self, y: Float[Array, " cond_dim"]) -> GaussianMixture:
        """p(x | y) for one observation ``y`` ``(cond_dim,)`` as a `GaussianMixture`."""
        y = check_array(y, "y", ndim=1, dim=self.cond_dim)
        return GaussianMixture(np.asarray(self._means(y), np.float64), np.asarray(self._post_cov, np.float64),
                               np.asarray(jnp.exp(self._log_weights(y)), np.float64))

    # --- the conditional target's interface ----------------------------------------------
    def _blurred(self, x, y, sigma):
        """(responsibilities, per-component scores) of the posterior with covariances P_k + σ² I."""
        cov = self._post_cov + sigma**2 * jnp.eye(self.dim, dtype=self.H.dtype)
        prec, logdet = jnp.linalg.inv(cov), jnp.linalg.slogdet(cov)[1]
        x, means = jnp.broadcast_arrays(x[..., None, :], self._means(y))
        logc = self._log_weights(y) + _log_pdf(x - means, prec, logdet)
        return logc, jnp.einsum("kij,...kj->...ki", prec, means - x)

    def log_prob(self, x: Float[Array, "*batch dim"], y: Float[Array, "*batch cond_dim"]) -> Float[Array, "*batch"]:
        """log p(x | y) (normalised)."""
        x, y = self._check(x, y)
        return logsumexp(self._blurred(x, y, 0.0)[0], axis=-1)

    def score(self, x: Float[Array, "*batch dim"], y: Float[Array, "*batch cond_dim"]) -> Float[Array, "*batch dim"]:
        """∇ₓ log p(x | y) = ∇ log p(x) + Hᵀ R⁻¹ (y − H x)."""
        x, y = self._check(x, y)
        diff = self.prior.means - x[..., None, :]  # (..., K, d)
        maha = jnp.einsum("...ki,kij,...kj->...k", diff, self._prior_prec, diff)
        resp = jax.nn.softmax(self._prior_log_norm - 0.5 * maha, axis=-1)
        prior_score = jnp.sum(resp[..., None] * jnp.einsum("kij,...kj->...ki", self._prior_prec, diff), axis=-2)
        return prior_score + (y - x @ self.H.T) @ self._noise_prec_H

    def blurred_score(self, x: Float[Array, "*batch dim"], y: Float[Array, "*batch cond_dim"], sigma) -> Float[Array, "*batch dim"]:
        """The score of p(· | y) convolved with N(0, σ² I) (what conditional DSM at level σ
        approximates), in closed form: the posterior mixture with covariances P_k + σ² I."""
        sigma = check_positive(sigma, "sigma", allow_zero=True)
        x, y = self._check(x, y)
        logc, comp = self._blurred(x, y, sigma)
        return jnp.sum(jax.nn.softmax(logc, axis=-1)[..., None] * comp, axis=-2)

    def sample(self, key: PRNGKeyArray, num: int) -> tuple[Float[Array, "num dim"], Float[Array, "num cond_dim"]]:
        """``num`` joint draws ``(x, y)``: x from the prior, y = H x + ε."""
        key = check_key(key)
        num = check_int(num, "num")
        k_x, k_eps = jax.random.split(key)
        x = self.prior.sample(k_x, num)
        eps = jax.random.normal(k_eps, (num, self.cond_dim), x.dtype) @ jnp.linalg.cholesky(self.noise_cov).T
        return x, x @ self.H.T + eps

    def sample_posterior(self, key: PRNGKeyArray, y: Float[Array, " cond_dim"], num: int) -> Float[Array, "num dim"]:
        """``num`` exact draws of p(x | y) for one observation ``y`` ``(cond_dim,)``."""
        return self.posterior(y).sample(check_key(key), check_int(num, "num"))


def cue_combination(cue_variances, *, prior_mean: float = 0.0, prior_variance: float = 1.0) -> LinearGaussianObservation:
    """Cue combination: a stimulus s ~ N(prior_mean, prior_variance) seen through cues
    y_i = s + ε_i, ε_i ~ N(0, cue_variances[i]) (independent).

    The posterior is N(m, v) with 1/v = 1/prior_variance + Σ_i 1/cue_variances[i] (the
    reliabilities add) and m = v (prior_mean/prior_variance + Σ_i y_i / cue_variances[i]).

    **Returns:** a `LinearGaussianObservation` with ``dim`` 1 and ``cond_dim`` = number of cues.
    """
    var = _as_float64(cue_variances, "cue_variances").reshape(-1)
    if var.size < 1 or not np.all(np.isfinite(var)) or np.any(var <= 0):
        raise ValueError(f"`cue_variances` must be positive, got {cue_variances!r}")
    prior_variance = check_positive(prior_variance, "prior_variance")
    prior = GaussianMixture(np.array([[float(prior_mean)]]), prior_variance)
    return LinearGaussianObservation(prior, np.ones((var.size, 1)), var)


def bimodal_observation(*, separation: float = 1.0, spread: float = 0.5, h=(1.0, 0.5),
                        noise_std: float = 0.5) -> LinearGaussianObservation:
    """A 2-D bimodal prior ½ N((−a, 0), s² I) + ½ N((a, 0), s² I) (a = `separation`,
    s = `spread`) observed through one noisy linear measurement y = h·x + ε, ε ~ N(0, noise_std²).

    Observations near 0 give bimodal posteriors, large |y| unimodal ones.
    """
    a = check_positive(separation, "separation")
    s = check_positive(spread, "spread")
    prior = GaussianMixture(np.array([[-a, 0.0], [a, 0.0]]), s**2)
    return LinearGaussianObservation(prior, np.asarray(h, np.float64).reshape(1, 2),
                                     check_positive(noise_std, "noise_std") ** 2)
