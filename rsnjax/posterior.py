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


def _gaussian_log_pdf(diff, cov):
    """log N(diff; 0, cov) over a batch ``diff`` ``(..., K, n)`` with ``cov`` ``(K, n, n)``."""
    prec = jnp.linalg.inv(cov)
    maha = jnp.einsum("...ki,kij,...kj->...k", diff, prec, diff)
    logdet = jnp.linalg.slogdet(cov)[1]
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
    ``(..., cond_dim)`` with broadcastable batch shapes.
    """

    prior: GaussianMixture
    H: Float[Array, "cond_dim dim"]
    noise_cov: Float[Array, "cond_dim cond_dim"]
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
        dtype = prior.means.dtype
        self.prior = prior
        self.H = jnp.asarray(h, dtype)
        self.noise_cov = jnp.asarray(r, dtype)
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

    def _innovation_cov(self):
        return jnp.einsum("ij,kjl,ml->kim", self.H, self.prior.covariances, self.H) + self.noise_cov

    def _gain(self):
        s = self._innovation_cov()
        return jnp.einsum("kij,lj,klm->kim", self.prior.covariances, self.H, jnp.linalg.inv(s))

    def posterior_covariances(self) -> Float[Array, "K dim dim"]:
        """P_k = Σ_k − K_k H Σ_k (the same for every y)."""
        gain = self._gain()
        cov = self.prior.covariances - jnp.einsum("kij,jl,klm->kim", gain, self.H, self.prior.covariances)
        return 0.5 * (cov + jnp.swapaxes(cov, -1, -2))

    def posterior_means(self, y: Float[Array, "*batch cond_dim"]) -> Float[Array, "*batch K dim"]:
        """m_k(y) = μ_k + K_k (y − H μ_k)."""
        (y,) = self._check(y=y)
        innov = y[..., None, :] - self.prior.means @ self.H.T  # (..., K, m)
        return self.prior.means + jnp.einsum("kij,...kj->...ki", self._gain(), innov)

    def posterior_log_weights(self, y: Float[Array, "*batch cond_dim"]) -> Float[Array, "*batch K"]:
        """log w_k(y), normalised: log π_k + log N(y; H μ_k, S_k) − log p(y)."""
        (y,) = self._check(y=y)
        diff = y[..., None, :] - self.prior.means @ self.H.T
        logw = jnp.log(self.prior.weights) + _gaussian_log_pdf(diff, self._innovation_cov())
        return logw - logsumexp(logw, axis=-1, keepdims=True)

    def posterior_weights(self, y: Float[Array, "*batch cond_dim"]) -> Float[Array, "*batch K"]:
        """w_k(y)."""
        return jnp.exp(self.posterior_log_weights(y))

    def evidence_log_prob(self, y: Float[Array, "*batch cond_dim"]) -> Float[Array, "*batch"]:
        """log p(y), the marginal law of the observation."""
        (y,) = self._check(y=y)
        diff = y[..., None, :] - self.prior.means @ self.H.T
        return logsumexp(jnp.log(self.prior.weights) + _gaussian_log_pdf(diff, self._innovation_cov()), axis=-1)

    def posterior(self, y: Float[Array, " cond_dim"]) -> GaussianMixture:
        """p(x | y) for one observation ``y`` ``(cond_dim,)`` as a `GaussianMixture`."""
        y = check_array(y, "y", ndim=1, dim=self.cond_dim)
        return GaussianMixture(np.asarray(self.posterior_means(y), np.float64),
                               np.asarray(self.posterior_covariances(), np.float64),
                               np.asarray(self.posterior_weights(y), np.float64))

    # --- the conditional target's interface ----------------------------------------------
    def log_prob(self, x: Float[Array, "*batch dim"], y: Float[Array, "*batch cond_dim"]) -> Float[Array, "*batch"]:
        """log p(x | y) (normalised)."""
        x, y = self._check(x, y)
        return self._blurred_log_prob(x, y, 0.0)

    def _blurred_log_prob(self, x, y, sigma):
        cov = self.posterior_covariances() + sigma**2 * jnp.eye(self.dim, dtype=self.H.dtype)
        diff = x[..., None, :] - self.posterior_means(y)
        return logsumexp(self.posterior_log_weights(y) + _gaussian_log_pdf(diff, cov), axis=-1)

    def score(self, x: Float[Array, "*batch dim"], y: Float[Array, "*batch cond_dim"]) -> Float[Array, "*batch dim"]:
        """∇ₓ log p(x | y) = ∇ log p(x) + Hᵀ R⁻¹ (y − H x)."""
        x, y = self._check(x, y)
        prior_score = self.prior._score(x, self.prior.covariances)
        resid = y - x @ self.H.T
        return prior_score + jnp.linalg.solve(self.noise_cov, resid[..., None])[..., 0] @ self.H

    def blurred_score(self, x: Float[Array, "*batch dim"], y: Float[Array, "*batch cond_dim"], sigma) -> Float[Array, "*batch dim"]:
        """The score of p(· | y) convolved with N(0, σ² I) (what conditional DSM at level σ
        approximates), in closed form: the posterior mixture with covariances P_k + σ² I."""
        sigma = check_positive(sigma, "sigma", allow_zero=True)
        x, y = self._check(x, y)
        cov = self.posterior_covariances() + sigma**2 * jnp.eye(self.dim, dtype=self.H.dtype)
        x, means = jnp.broadcast_arrays(x[..., None, :], self.posterior_means(y))
        logc = self.posterior_log_weights(y) + _gaussian_log_pdf(x - means, cov)
        resp = jax.nn.softmax(logc, axis=-1)
        comp = jnp.einsum("kij,...kj->...ki", jnp.linalg.inv(cov), means - x)
        return jnp.sum(resp[..., None] * comp, axis=-2)

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
