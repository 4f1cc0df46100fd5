"""Analytic target distributions: ``log_prob``, ``score``, ``sample`` and, where it is analytic,
the score of the target blurred by N(0, σ² I) (what a network trained by denoising score matching
at noise level σ approximates).

Every method works on one point of shape ``(dim,)`` or on a batch of shape ``(..., dim)``.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr, logsumexp, ndtri
from jaxtyping import Array, Float, PRNGKeyArray

from ._validation import check_array, check_int, check_key, check_positive

__all__ = [
    "Target",
    "GaussianMixture",
    "LaplaceMixture",
    "double_peak",
    "laplace_x",
    "gaussian",
    "ring_of_gaussians",
]


class Target(eqx.Module):
    """Base class of the analytic targets.

    Subclasses implement `log_prob`, `sample` and usually `score`; `dim` is the dimension.
    """

    dim: eqx.AbstractVar[int]

    def log_prob(self, x: Float[Array, "*batch dim"]) -> Float[Array, "*batch"]:
        raise NotImplementedError

    @eqx.filter_jit
    def score(self, x: Float[Array, "*batch dim"]) -> Float[Array, "*batch dim"]:
        """∇ log p(x), by automatic differentiation unless a subclass gives a closed form."""
        flat = x.reshape(-1, x.shape[-1])
        grads = jax.vmap(jax.grad(lambda y: self.log_prob(y)))(flat)
        return grads.reshape(x.shape)

    def sample(self, key: PRNGKeyArray, num: int) -> Float[Array, "num dim"]:
        raise NotImplementedError

    def _check_points(self, x, name: str = "x") -> Array:
        return check_array(x, name, dim=self.dim, finite=False)


def _as_float64(value, name: str) -> np.ndarray:
    if isinstance(value, (str, bytes, dict, set)) or value is None:
        raise TypeError(f"`{name}` must be a real-valued array, got {type(value).__name__}")
    try:
        arr = np.asarray(value)
        if np.iscomplexobj(arr) or arr.dtype == np.bool_ or arr.dtype == object:
            raise TypeError
        return arr.astype(np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be a real-valued array, got {type(value).__name__}") from None


def _as_covariances(covariances, num: int, dim: int) -> np.ndarray:
    cov = _as_float64(covariances, "covariances")
    if cov.ndim == 0:
        cov = np.broadcast_to(cov * np.eye(dim), (num, dim, dim))
    elif cov.ndim == 1 and cov.shape[0] == num:
        cov = cov[:, None, None] * np.eye(dim)
    elif cov.ndim == 2 and cov.shape == (num, dim):
        cov = np.einsum("ki,ij->kij", cov, np.eye(dim))
    if cov.shape != (num, dim, dim):
        raise ValueError(
            f"`covariances` must be a scalar, ({num},), ({num}, {dim}) (diagonals) or "
            f"({num}, {dim}, {dim}), got shape {np.shape(covariances)}"
        )
    if not np.all(np.isfinite(cov)):
        raise ValueError("`covariances` contains NaN or infinite values")
    if not np.allclose(cov, np.swapaxes(cov, -1, -2), atol=1e-10):
        raise ValueError("`covariances` must be symmetric")
    if np.any(np.linalg.eigvalsh(cov) <= 0):
        raise ValueError("`covariances` must be positive definite")
    return np.array(cov)


def _as_weights(weights, num: int) -> np.ndarray:
    if weights is None:
        if num < 1:
            raise ValueError("a mixture needs at least one component")
        return np.full(num, 1.0 / num)
    if num < 1:
        raise ValueError("a mixture needs at least one component")
    w = _as_float64(weights, "weights")
    if w.shape != (num,):
        raise ValueError(f"`weights` must have shape ({num},), got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError(f"`weights` must be finite and positive, got {w}")
    return w / w.sum()


class GaussianMixture(Target):
    """A mixture of Gaussians Σ_k w_k N(μ_k, C_k) in any dimension.

    **Arguments:**

    - `means`: shape ``(num_components, dim)``.
    - `covariances`: a scalar variance, per-component variances ``(K,)``, diagonal variances
      ``(K, dim)`` or full ``(K, dim, dim)`` matrices.
    - `weights`: ``(K,)`` positive weights (normalised here); uniform when omitted.
    """

    means: Float[Array, "K dim"]
    covariances: Float[Array, "K dim dim"]
    weights: Float[Array, " K"]
    dim: int = eqx.field(static=True)

    def __init__(self, means, covariances, weights=None):
        m = np.asarray(check_array(means, "means", ndim=2), dtype=np.float64)
        num, dim = m.shape
        if num < 1 or dim < 1:
            raise ValueError(f"`means` must have shape (num_components, dim), got {m.shape}")
        dtype = jnp.result_type(float)
        self.means = jnp.asarray(m, dtype)
        self.covariances = jnp.asarray(_as_covariances(covariances, num, dim), dtype)
        self.weights = jnp.asarray(_as_weights(weights, num), dtype)
        self.dim = dim

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def blurred(self, sigma: float) -> "GaussianMixture":
        """The law of x + σ ε with ε ~ N(0, I): each covariance grows by σ² I."""
        sigma = check_positive(sigma, "sigma", allow_zero=True)
        eye = jnp.eye(self.dim, dtype=self.covariances.dtype)
        return GaussianMixture(self.means, self.covariances + sigma**2 * eye, self.weights)

    def _component_log_prob(self, x: Array, covariances: Array) -> Array:
        diff = x[..., None, :] - self.means  # (..., K, d)
        prec = jnp.linalg.inv(covariances)  # (K, d, d)
        maha = jnp.einsum("...ki,kij,...kj->...k", diff, prec, diff)
        logdet = jnp.linalg.slogdet(covariances)[1]
        return jnp.log(self.weights) - 0.5 * (maha + logdet + self.dim * math.log(2 * math.pi))

    def _score(self, x: Array, covariances: Array) -> Array:
        resp = jax.nn.softmax(self._component_log_prob(x, covariances), axis=-1)  # (..., K)
        prec = jnp.linalg.inv(covariances)
        comp = jnp.einsum("kij,...kj->...ki", prec, self.means - x[..., None, :])
        return jnp.sum(resp[..., None] * comp, axis=-2)

    @eqx.filter_jit
    def component_log_prob(self, x: Float[Array, "*batch dim"]) -> Float[Array, "*batch K"]:
        """log(w_k N(x; μ_k, C_k)) for each component k."""
        return self._component_log_prob(self._check_points(x), self.covariances)

    @eqx.filter_jit
    def log_prob(self, x: Float[Array, "*batch dim"]) -> Float[Array, "*batch"]:
        """log p(x)."""
        return logsumexp(self._component_log_prob(self._check_points(x), self.covariances), axis=-1)

    @eqx.filter_jit
    def score(self, x: Float[Array, "*batch dim"]) -> Float[Array, "*batch dim"]:
        """∇ log p(x) = Σ_k r_k(x) C_k⁻¹ (μ_k − x), r_k the posterior responsibilities."""
        return self._score(self._check_points(x), self.covariances)

    def blurred_score(self, x: Float[Array, "*batch dim"], sigma) -> Float[Array, "*batch dim"]:
        """Score of the target convolved with N(0, σ² I), in closed form (covariances + σ² I)."""
        sigma = check_positive(sigma, "sigma", allow_zero=True)
        return self._blurred_score(self._check_points(x), jnp.asarray(sigma, self.means.dtype))

    @eqx.filter_jit
    def _blurred_score(self, x, sigma):
        eye = jnp.eye(self.dim, dtype=self.covariances.dtype)
        return self._score(x, self.covariances + sigma**2 * eye)

    @eqx.filter_jit
    def sample(self, key: PRNGKeyArray, num: int) -> Float[Array, "num dim"]:
        """``num`` independent draws, shape ``(num, dim)``."""
        key = check_key(key)
        num = check_int(num, "num")
        k_comp, k_noise = jax.random.split(key)
        comp = jax.random.choice(k_comp, self.num_components, (num,), p=self.weights)
        chol = jnp.linalg.cholesky(self.covariances)
        eps = jax.random.normal(k_noise, (num, self.dim), self.means.dtype)
        return self.means[comp] + jnp.einsum("nij,nj->ni", chol[comp], eps)

    def mean(self) -> Float[Array, " dim"]:
        return self.weights @ self.means

    def covariance(self) -> Float[Array, "dim dim"]:
        mu = self.mean()
        d = self.means - mu
        return jnp.einsum("k,kij->ij", self.weights, self.covariances) + jnp.einsum(
            "k,ki,kj->ij", self.weights, d, d
        )


def gaussian(mean, covariance) -> GaussianMixture:
    """A single Gaussian N(mean, covariance), as a one-component `GaussianMixture`."""
    mean = jnp.atleast_1d(check_array(mean, "mean", ndim=(0, 1)))
    cov = check_array(covariance, "covariance", ndim=(0, 1, 2))
    if cov.ndim == 2:
        cov = cov[None]
    elif cov.ndim == 1:
        cov = cov[None]  # diagonal variances
    return GaussianMixture(mean[None, :], cov)


def double_peak() -> GaussianMixture:
    """The paper's 1-D bimodal target ½ N(−1, 0.5²) + ½ N(1, 0.5²)."""
    return GaussianMixture(jnp.array([[-1.0], [1.0]]), 0.25, jnp.array([0.5, 0.5]))


def ring_of_gaussians(num_modes: int = 8, radius: float = 2.0, std: float = 0.3) -> GaussianMixture:
    """``num_modes`` equal-weight isotropic Gaussians evenly spaced on a circle (2-D)."""
    num_modes = check_int(num_modes, "num_modes")
    radius = check_positive(radius, "radius")
    std = check_positive(std, "std")
    if not radius < 1e100:
        raise ValueError(f"`radius` must be below 1e100, got {radius}")
    if not 1e-100 < std < 1e100:
        raise ValueError(f"`std` must lie in (1e-100, 1e100) so that std² is a usable variance, got {std}")
    angles = 2 * np.pi * np.arange(num_modes) / num_modes
    means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return GaussianMixture(means, std**2)


# --- Gaussian-copula mixtures with Laplace marginals -------------------------------------------


def _standard_normal_quantile_from_log(log_u: Array) -> Array:
    """Φ⁻¹(u) given log u, for u ≤ ½, accurate far into the lower tail.

    ``ndtri(exp(log u))`` is used while u is a normal number; below, an asymptotic start.
    Two Newton steps on ``log_ndtr(z) = log u`` (in log space, so nothing underflows) polish it.
    """
    tiny = jnp.log(jnp.finfo(log_u.dtype).tiny) + 10.0
    safe = jnp.maximum(log_u, tiny)
    z_direct = ndtri(jnp.exp(safe))
    t = -2.0 * jnp.minimum(log_u, -1.0)
    z_asym = -jnp.sqrt(t - jnp.log(t) - math.log(2 * math.pi))
    z = jnp.where(log_u > tiny, z_direct, z_asym)
    for _ in range(2):
        # d/dz log Φ(z) = φ(z)/Φ(z) = exp(log φ(z) − log Φ(z))
        log_phi = -0.5 * z**2 - 0.5 * math.log(2 * math.pi)
        z = z - (log_ndtr(z) - log_u) * jnp.exp(log_ndtr(z) - log_phi)
    return z


class LaplaceMixture(Target):
    """A mixture of Gaussian copulas with Laplace marginals (heavy tails, excess kurtosis 3).

    Component k draws z ~ N(0, R_k) (R_k a correlation matrix) and maps each coordinate through
    x_i = F⁻¹(Φ(z_i)), F the Laplace(0, b) CDF. Its exact density is

        p_k(x) = |R_k|^(−½) exp(−½ zᵀ(R_k⁻¹ − I) z) · Π_i f(x_i),   z_i = Φ⁻¹(F(x_i)),

    f(x) = exp(−|x|/b) / (2b). With the default b = 1/√2 each marginal has variance 1.
    Log-density and score are evaluated in log space and stay finite far into the tails.

    **Arguments:**

    - `correlations`: ``(K, dim, dim)`` correlation matrices (unit diagonal, positive definite).
    - `weights`: ``(K,)`` positive weights; uniform when omitted.
    - `scale`: the Laplace scale b (variance 2b²).
    """

    correlations: Float[Array, "K dim dim"]
    weights: Float[Array, " K"]
    scale: float = eqx.field(static=True)
    dim: int = eqx.field(static=True)

    def __init__(self, correlations, weights=None, *, scale: float = 1.0 / math.sqrt(2.0)):
        r = np.asarray(check_array(correlations, "correlations", ndim=3), dtype=np.float64)
        num, dim, dim2 = r.shape
        if num < 1 or dim < 1 or dim != dim2:
            raise ValueError(f"`correlations` must have shape (K, dim, dim), got {r.shape}")
        if not np.allclose(np.diagonal(r, axis1=1, axis2=2), 1.0):
            raise ValueError("`correlations` must have unit diagonals (they are correlation matrices)")
        _as_covariances(r, num, dim)  # symmetric positive definite
        dtype = jnp.result_type(float)
        self.correlations = jnp.asarray(r, dtype)
        self.weights = jnp.asarray(_as_weights(weights, num), dtype)
        self.scale = check_positive(scale, "scale")
        self.dim = dim

    @property
    def num_components(self) -> int:
        return self.correlations.shape[0]

    def _latent(self, x: Array) -> tuple[Array, Array]:
        """z = Φ⁻¹(F(x)) and log dz/dx, elementwise, by symmetry about 0."""
        b = self.scale
        log_u = math.log(0.5) - jnp.abs(x) / b  # log F(−|x|)
        z_neg = _standard_normal_quantile_from_log(log_u)
        z = -jnp.sign(x) * z_neg
        # dz/dx = f(x) / φ(z)
        log_f = -math.log(2 * b) - jnp.abs(x) / b
        log_dz = log_f + 0.5 * z**2 + 0.5 * math.log(2 * math.pi)
        return z, log_dz

    @eqx.filter_jit
    def component_log_prob(self, x: Float[Array, "*batch dim"]) -> Float[Array, "*batch K"]:
        """log(w_k p_k(x)) for each component k."""
        x = self._check_points(x)
        z, _ = self._latent(x)
        quad, logdet = self._copula_terms(z)
        log_marg = jnp.sum(-math.log(2 * self.scale) - jnp.abs(x) / self.scale, axis=-1)
        return jnp.log(self.weights) - 0.5 * logdet - 0.5 * quad + log_marg[..., None]

    def _copula_terms(self, z: Array) -> tuple[Array, Array]:
        eye = jnp.eye(self.dim, dtype=self.correlations.dtype)
        q = jnp.linalg.inv(self.correlations) - eye  # (K, d, d)
        quad = jnp.einsum("...i,kij,...j->...k", z, q, z)
        logdet = jnp.linalg.slogdet(self.correlations)[1]
        return quad, logdet

    @eqx.filter_jit
    def log_prob(self, x: Float[Array, "*batch dim"]) -> Float[Array, "*batch"]:
        """log p(x), exact."""
        return logsumexp(self.component_log_prob(x), axis=-1)

    @eqx.filter_jit
    def score(self, x: Float[Array, "*batch dim"]) -> Float[Array, "*batch dim"]:
        """∇ log p(x) in closed form: Σ_k r_k [−(R_k⁻¹ − I) z] ⊙ dz/dx − sign(x)/b."""
        x = self._check_points(x)
        z, log_dz = self._latent(x)
        quad, logdet = self._copula_terms(z)
        log_comp = jnp.log(self.weights) - 0.5 * logdet - 0.5 * quad
        resp = jax.nn.softmax(log_comp, axis=-1)  # marginal factor is shared by all components
        eye = jnp.eye(self.dim, dtype=self.correlations.dtype)
        q = jnp.linalg.inv(self.correlations) - eye
        grad_z = -jnp.einsum("kij,...j->...ki", q, z)  # (..., K, d)
        copula = jnp.sum(resp[..., None] * grad_z, axis=-2) * jnp.exp(log_dz)
        return copula - jnp.sign(x) / self.scale

    @eqx.filter_jit
    def sample(self, key: PRNGKeyArray, num: int) -> Float[Array, "num dim"]:
        """``num`` independent draws, shape ``(num, dim)``."""
        key = check_key(key)
        num = check_int(num, "num")
        k_comp, k_noise = jax.random.split(key)
        comp = jax.random.choice(k_comp, self.num_components, (num,), p=self.weights)
        chol = jnp.linalg.cholesky(self.correlations)
        eps = jax.random.normal(k_noise, (num, self.dim), self.correlations.dtype)
        z = jnp.einsum("nij,nj->ni", chol[comp], eps)
        # x = F⁻¹(Φ(z)) = −sign(z) b (log 2 + log Φ(−|z|))
        return -jnp.sign(z) * self.scale * (math.log(2.0) + log_ndtr(-jnp.abs(z)))


def laplace_x(correlation: float = 0.9) -> LaplaceMixture:
    """The paper's 2-D heavy-tailed "X": ½ copula(+ρ) + ½ copula(−ρ), Laplace marginals of variance 1."""
    try:
        rho = float(correlation)
    except (TypeError, ValueError):
        raise TypeError(f"`correlation` must be a number in (−1, 1), got {correlation!r}") from None
    if not -1.0 < rho < 1.0:
        raise ValueError(f"`correlation` must lie in (−1, 1), got {correlation}")
    r = np.array([[[1.0, rho], [rho, 1.0]], [[1.0, -rho], [-rho, 1.0]]])
    return LaplaceMixture(r, np.array([0.5, 0.5]))
