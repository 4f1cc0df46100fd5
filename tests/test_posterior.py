"""Targets with exact posteriors (Gaussian-mixture prior, linear-Gaussian observation) and a
statistical check of conditional sampling."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rsnjax
from rsnjax import posterior, targets


@pytest.fixture
def bimodal():
    with jax.enable_x64(True):
        yield posterior.bimodal_observation(separation=1.5, noise_std=0.7)


def _grid_posterior(t, y, n=801, half_width=5.0):
    """Mean, covariance and the mass of x₁ > 0 of p(x | y) ∝ p(x) N(y; Hx, R) by quadrature."""
    g = np.linspace(-half_width, half_width, n)
    xx = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    log_prior = np.asarray(t.prior.log_prob(jnp.asarray(xx)))
    h, r = np.asarray(t.H), float(t.noise_cov[0, 0])
    log_lik = -0.5 * (y - xx @ h.T)[:, 0] ** 2 / r
    w = np.exp(log_prior + log_lik - np.max(log_prior + log_lik))
    w /= w.sum()
    mean = w @ xx
    cov = (xx - mean).T @ ((xx - mean) * w[:, None])
    return mean, cov, float(w[xx[:, 0] > 0].sum())


def _mixture_moments(gm):
    return np.asarray(gm.mean()), np.asarray(gm.covariance())


@pytest.mark.parametrize("y", [-2.0, -0.5, 0.0, 0.5, 2.0])
def test_closed_form_posterior_equals_quadrature(bimodal, y):
    with jax.enable_x64(True):
        gm = bimodal.posterior(jnp.array([y]))
        mean, cov = _mixture_moments(gm)
        q_mean, q_cov, q_right = _grid_posterior(bimodal, y)
        np.testing.assert_allclose(mean, q_mean, atol=1e-6)
        np.testing.assert_allclose(cov, q_cov, atol=1e-6)
        # component 1 is the right-hand mode (μ₁ = (+a, 0))
        right = float(bimodal.posterior_weights(jnp.array([y]))[1])
        assert abs(right - q_right) < 0.02  # the modes overlap a little across x₁ = 0


def test_score_equals_finite_differences_of_log_prob(bimodal):
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (20, 2)) * 1.5
        y = jax.random.normal(jax.random.key(1), (20, 1)) * 1.5
        eps = 1e-5
        fd = np.stack([(bimodal.log_prob(x + eps * e, y) - bimodal.log_prob(x - eps * e, y)) / (2 * eps)
                       for e in np.eye(2)], -1)
        np.testing.assert_allclose(bimodal.score(x, y), fd, rtol=1e-6, atol=1e-7)
        # log_prob is normalised: it is the posterior mixture's log density
        for i in range(3):
            np.testing.assert_allclose(bimodal.log_prob(x[i], y[i]), bimodal.posterior(y[i]).log_prob(x[i]), rtol=1e-10)
        # the blurred score is the score of the posterior with covariances + σ² I
        sigma = 0.3
        for i in range(3):
            blurred = bimodal.posterior(y[i]).blurred_score(x[i], sigma)
            np.testing.assert_allclose(bimodal.blurred_score(x[i], y[i], sigma), blurred, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(bimodal.blurred_score(x, y, 0.0), bimodal.score(x, y), rtol=1e-9, atol=1e-12)


def test_posterior_and_joint_sample_moments(bimodal):
    """Exact posterior draws have the closed-form mean and covariance (tolerance 5 standard
    errors for n = 200 000); joint draws satisfy y − Hx ~ N(0, R)."""
    with jax.enable_x64(True):
        n = 200_000
        for y in (0.0, 0.5):
            x = np.asarray(bimodal.sample_posterior(jax.random.key(2), jnp.array([y]), n))
            mean, cov = _mixture_moments(bimodal.posterior(jnp.array([y])))
            se = np.sqrt(np.diag(cov) / n)
            assert np.all(np.abs(x.mean(0) - mean) < 5 * se)
            var_se = np.sqrt(2.0 / n) * np.diag(cov) * 2  # ×2 for the bimodal kurtosis
            assert np.all(np.abs(np.var(x, axis=0) - np.diag(cov)) < 5 * var_se)
        xs, ys = bimodal.sample(jax.random.key(3), n)
        resid = np.asarray(ys - xs @ bimodal.H.T)[:, 0]
        assert abs(resid.var() - 0.49) < 5 * 0.49 * math.sqrt(2.0 / n)
        assert abs(resid.mean()) < 5 * 0.7 / math.sqrt(n)


def test_cue_combination_is_the_reliability_weighted_average():
    with jax.enable_x64(True):
        t = posterior.cue_combination([0.5, 0.25], prior_mean=1.0, prior_variance=2.0)
        v = 1.0 / (1 / 2.0 + 1 / 0.5 + 1 / 0.25)
        np.testing.assert_allclose(t.posterior_covariances()[0, 0, 0], v, rtol=1e-12)
        y = jnp.array([0.3, -0.4])
        np.testing.assert_allclose(t.posterior_means(y)[0, 0], v * (1.0 / 2.0 + 0.3 / 0.5 - 0.4 / 0.25), rtol=1e-12)
        x = jnp.array([[0.1], [0.7]])
        np.testing.assert_allclose(t.score(x, y), -(x - v * (0.5 + 0.6 - 1.6)) / v, rtol=1e-10)


def test_bad_arguments_are_named():
    prior = targets.GaussianMixture(np.zeros((1, 2)), 1.0)
    with pytest.raises(ValueError, match="H"):
        posterior.LinearGaussianObservation(prior, np.ones((1, 3)), 1.0)
    with pytest.raises(ValueError, match="noise_cov"):
        posterior.LinearGaussianObservation(prior, np.ones((1, 2)), -1.0)
    with pytest.raises(TypeError, match="prior"):
        posterior.LinearGaussianObservation("x", np.ones((1, 2)), 1.0)
    with pytest.raises(ValueError, match="cue_variances"):
        posterior.cue_combination([1.0, 0.0])
    t = posterior.cue_combination([1.0, 1.0])
    with pytest.raises(ValueError, match="y"):
        t.score(jnp.zeros((3, 1)), jnp.zeros((3, 3)))


@pytest.mark.slow
def test_langevin_on_the_exact_posterior_score_with_per_chain_inputs(bimodal):
    """`sample(target, inputs=y)` with a different y per chain: each group of chains samples its
    own posterior (means within 5 standard errors, right-mode weight within 5 binomial SEs
    plus the step-size bias)."""
    ys = jnp.array([[-0.5], [0.0], [0.5], [2.0]])
    per = 2000
    inputs = jnp.repeat(ys, per, axis=0)
    x0, _ = bimodal.sample(jax.random.key(4), per * len(ys))  # from the prior
    out = rsnjax.sample(bimodal, key=jax.random.key(5), num_chains=per * len(ys), num_steps=4000,
                        step_size=5e-3, inputs=inputs, initial_state=x0, warn=False)
    x = np.asarray(out.samples).reshape(len(ys), per, 2)
    for i, y in enumerate(ys):
        mean, cov = _mixture_moments(bimodal.posterior(y))
        se = np.sqrt(np.diag(cov) / per)
        assert np.all(np.abs(x[i].mean(0) - mean) < 5 * se + 0.01), (float(y[0]), x[i].mean(0), mean)
        w = float(bimodal.posterior_weights(y)[1])
        assert abs(np.mean(x[i][:, 0] > 0) - w) < 5 * math.sqrt(w * (1 - w) / per) + 0.02


@pytest.mark.slow
def test_trained_conditional_rsn_samples_the_cue_combination_posterior():
    """A small conditional RSN trained on joint draws (stimulus, two cues) samples, for each of
    four cue pairs, a posterior whose mean is within 0.1 and whose variance within 25 % of the
    Bayesian values (exact: v = 1/7 ≈ 0.143). Fails when the pairs are scrambled in training
    (the network then learns the prior, mean ≈ 0 and variance 1)."""
    target = posterior.cue_combination([0.5, 0.25])
    net = rsnjax.ConditionalScoreNetwork(1, 2, 128, key=jax.random.key(0))
    net, _ = rsnjax.fit(net, target, steps_per_level=600, key=jax.random.key(1), progress=False)
    res = rsnjax.ReservoirSampler.from_score_network(net)
    cues = jnp.array([[1.0, 1.2], [-0.8, -0.5], [0.0, 0.3], [1.5, -0.2]])
    per = 1000
    out = rsnjax.sample(res, key=jax.random.key(2), num_chains=per * len(cues), num_steps=2000,
                        step_size=5e-3, inputs=jnp.repeat(cues, per, axis=0), init="zeros", warn=False)
    assert out.num_escaped == 0
    x = np.asarray(out.samples).reshape(len(cues), per)
    v = float(target.posterior_covariances()[0, 0, 0])
    for i, y in enumerate(cues):
        m = float(target.posterior_means(y)[0, 0])
        assert abs(x[i].mean() - m) < 0.1, (y, x[i].mean(), m)
        assert abs(x[i].var() / v - 1) < 0.25, (y, x[i].var(), v)
