import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from rsnjax import targets


def test_double_peak_matches_scipy_density_and_moments():
    t = targets.double_peak()
    x = jnp.linspace(-4, 4, 41)[:, None]
    expected = 0.5 * stats.norm.pdf(x[:, 0], -1, 0.5) + 0.5 * stats.norm.pdf(x[:, 0], 1, 0.5)
    np.testing.assert_allclose(np.exp(t.log_prob(x)), expected, rtol=1e-5)
    n = 100_000
    s = np.asarray(t.sample(jax.random.key(0), n))
    assert s.shape == (n, 1)
    # mean 0, variance 0.25 + 1; tolerances: 5 standard errors
    assert abs(s.mean()) < 5 * math.sqrt(1.25 / n)
    assert abs(s.var() - 1.25) < 5 * 1.25 * math.sqrt(2 / n) * 1.3
    assert abs((s > 0).mean() - 0.5) < 5 * math.sqrt(0.25 / n)


def test_gaussian_mixture_score_is_gradient_of_log_prob_and_blur_is_convolution():
    t = targets.GaussianMixture(
        jnp.array([[0.0, 1.0], [2.0, -1.0], [-1.5, 0.5]]),
        jnp.array([[[1.0, 0.3], [0.3, 0.5]], [[0.4, 0.0], [0.0, 0.8]], [[0.7, -0.2], [-0.2, 0.6]]]),
        jnp.array([0.2, 0.5, 0.3]),
    )
    x = jax.random.normal(jax.random.key(1), (7, 2)) * 2
    autodiff = jax.vmap(jax.grad(lambda y: t.log_prob(y)))(x)
    np.testing.assert_allclose(t.score(x), autodiff, rtol=1e-4, atol=1e-5)
    # single point and batch agree
    np.testing.assert_allclose(t.score(x[0]), t.score(x)[0], rtol=1e-6)
    # blurring adds σ² I to every covariance: compare with scipy's density of the blurred mixture
    sigma = 0.7
    blurred = t.blurred(sigma)
    dens = sum(
        float(w) * stats.multivariate_normal(np.asarray(m), np.asarray(c) + sigma**2 * np.eye(2)).pdf(np.asarray(x))
        for w, m, c in zip(t.weights, t.means, t.covariances)
    )
    np.testing.assert_allclose(np.exp(blurred.log_prob(x)), dens, rtol=1e-4)
    np.testing.assert_allclose(t.blurred_score(x, sigma), blurred.score(x), rtol=1e-6)
    np.testing.assert_allclose(t.blurred_score(x, 0.0), t.score(x), rtol=1e-6)


def test_laplace_score_matches_finite_differences_of_log_density():
    with jax.enable_x64(True):
        t = targets.laplace_x()
        x = jax.random.normal(jax.random.key(2), (20, 2), jnp.float64) * 3
        x = x.at[0].set(jnp.array([0.3, -0.2])).at[1].set(jnp.array([8.0, -7.5]))
        eps = 1e-6
        fd = jnp.stack(
            [(t.log_prob(x + eps * e) - t.log_prob(x - eps * e)) / (2 * eps) for e in jnp.eye(2)], axis=-1
        )
        np.testing.assert_allclose(t.score(x), fd, rtol=1e-5, atol=1e-5)


def test_laplace_is_stable_far_in_the_tails():
    t = targets.laplace_x()
    x = jnp.array([[30.0, 30.0], [-30.0, 30.0], [30.0, -29.0], [-30.0, 0.1], [1e3, -1e3], [0.0, 0.0]])
    assert np.all(np.isfinite(t.log_prob(x)))
    assert np.all(np.isfinite(t.score(x)))
    # along the ridge x1 = x2 the marginals fall by 2/b per unit step and the copula gives back
    # ρ/(1+ρ)·z² with z² ≈ 2|x|/b: the log-density falls with slope (2/b)/(1+ρ) asymptotically
    lp = t.log_prob(jnp.array([[20.0, 20.0], [21.0, 21.0]]))
    np.testing.assert_allclose(lp[0] - lp[1], 2 * math.sqrt(2) / 1.9, rtol=0.03)


def test_laplace_density_integrates_to_one_and_agrees_with_its_sampler():
    t = targets.laplace_x()
    grid = jnp.linspace(-14, 14, 561)
    h = float(grid[1] - grid[0])
    xx, yy = jnp.meshgrid(grid, grid, indexing="ij")
    pts = jnp.stack([xx.ravel(), yy.ravel()], -1)
    dens = jnp.exp(t.log_prob(pts))
    assert abs(float(dens.sum()) * h * h - 1.0) < 5e-3
    n = 200_000
    s = np.asarray(t.sample(jax.random.key(3), n))
    # E|x1 x2| by quadrature vs by sampling (the copula's correlation structure)
    f_quad = float(jnp.sum(dens * jnp.abs(pts[:, 0] * pts[:, 1]))) * h * h
    f = np.abs(s[:, 0] * s[:, 1])
    assert abs(f.mean() - f_quad) < 5 * f.std() / math.sqrt(n) + 5e-3
    # marginals are Laplace with variance 1 (b = 1/√2): KS test, and excess kurtosis ≈ 3
    for i in range(2):
        assert stats.kstest(s[:20_000, i], stats.laplace(scale=1 / math.sqrt(2)).cdf).pvalue > 1e-3
    kurt = stats.kurtosis(s, axis=0)
    assert np.all(np.abs(kurt - 3.0) < 0.3)
    # the X: half the mass has x1 x2 > 0
    assert abs((s[:, 0] * s[:, 1] > 0).mean() - 0.5) < 5 * math.sqrt(0.25 / n)


def test_ring_and_gaussian_helpers():
    ring = targets.ring_of_gaussians(6, radius=3.0, std=0.2)
    assert ring.means.shape == (6, 2)
    np.testing.assert_allclose(jnp.linalg.norm(ring.means, axis=1), 3.0, rtol=1e-6)
    g = targets.gaussian(jnp.array([1.0, -1.0]), jnp.array([[2.0, 0.5], [0.5, 1.0]]))
    np.testing.assert_allclose(g.score(jnp.array([1.0, -1.0])), 0.0, atol=1e-6)
    np.testing.assert_allclose(g.covariance(), [[2.0, 0.5], [0.5, 1.0]], rtol=1e-6)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: targets.GaussianMixture(jnp.zeros((2, 2)), jnp.array([[[1.0, 2.0], [2.0, 1.0]]] * 2)), "positive definite"),
        (lambda: targets.GaussianMixture(jnp.zeros((2, 2)), 1.0, jnp.array([0.5, 0.3, 0.2])), "weights"),
        (lambda: targets.GaussianMixture(jnp.zeros((2, 2)), 1.0, jnp.array([1.0, -1.0])), "weights"),
        (lambda: targets.GaussianMixture(jnp.array([[jnp.nan, 0.0]]), 1.0), "means"),
        (lambda: targets.GaussianMixture(jnp.zeros(3), 1.0), "means"),
        (lambda: targets.laplace_x(1.5), "correlation"),
        (lambda: targets.LaplaceMixture(jnp.array([[[2.0, 0.0], [0.0, 1.0]]])), "correlations"),
        (lambda: targets.double_peak().log_prob(jnp.zeros((3, 2))), "x"),
        (lambda: targets.double_peak().blurred(-1.0), "sigma"),
        (lambda: targets.double_peak().sample(jax.random.key(0), 0), "num"),
    ],
)
def test_bad_input_names_the_argument(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()
