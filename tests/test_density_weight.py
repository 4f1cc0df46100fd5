"""`fit`'s ``density_weight`` (loss weights ∝ p̂(x̃)^(−α)) and its per-level ``batch_size``."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rsnjax import ScoreNetwork, fit, targets
from rsnjax.training import density_weights
from test_tail_weight import assert_weighted_fit_kernel_matches_xla


def _leaves_equal(a, b):
    return all(np.array_equal(u, v) for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_density_weights_are_the_normalised_inverse_kde():
    """w_i = p̂(x̃_i)^(−α) / mean_j p̂(x̃_j)^(−α), p̂ the Gaussian KDE over the reference rows at
    variance σ² + h² (computed here in float64), then clipped at the cap."""
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(300, 2))
    noisy = 1.5 * rng.normal(size=(64, 2))
    sigma, h, alpha = 0.3, 0.2, 0.7
    var = sigma**2 + h**2
    d2 = np.sum((noisy[:, None] - ref[None]) ** 2, -1)
    p_hat = np.mean(np.exp(-d2 / (2 * var)), 1) / (2 * np.pi * var)
    expected = p_hat ** (-alpha)
    expected /= expected.mean()
    w = np.asarray(density_weights(jnp.asarray(noisy, jnp.float32), jnp.asarray(ref, jnp.float32), sigma, h, alpha))
    np.testing.assert_allclose(w, expected, rtol=2e-4)
    assert w.max() / w.min() > 10  # the test points span low and high density
    capped = np.asarray(density_weights(jnp.asarray(noisy, jnp.float32), jnp.asarray(ref, jnp.float32), sigma, h,
                                        alpha, cap=2.0))
    np.testing.assert_allclose(capped, np.minimum(expected, 2.0), rtol=2e-4)
    # α = 0: all ones
    np.testing.assert_allclose(np.asarray(density_weights(jnp.asarray(noisy), jnp.asarray(ref), sigma, h, 0.0)),
                               1.0, rtol=1e-6)


def test_density_weights_follow_the_blurred_density():
    """Over K = 4096 rows of N(0, 1) the KDE is N(0, 1 + σ² + h²) up to sampling noise, so
    log w(x) + α log p(x) is constant: checked on |x| ≤ 2, where the KDE's relative standard
    error is below 1/sqrt(K · p(2)/p(0) · ...) ≈ 5 %, with a tolerance of α × 0.1."""
    rng = np.random.default_rng(1)
    k = 4096
    ref = rng.normal(size=(k, 1))
    x = np.linspace(-2, 2, 41)[:, None]
    sigma, h, alpha = 0.2, 0.3, 1.0
    w = np.asarray(density_weights(jnp.asarray(x, jnp.float32), jnp.asarray(ref, jnp.float32), sigma, h, alpha))
    var = 1 + sigma**2 + h**2
    log_p = -0.5 * x[:, 0] ** 2 / var
    resid = np.log(w) + alpha * log_p
    assert np.ptp(resid) < alpha * 0.1, np.ptp(resid)
    # the weight at ±2 is e^(2/var) ≈ 4.3 times that at 0
    assert w[-1] / w[20] == pytest.approx(np.exp(2 / var), rel=0.1)


def test_density_weight_keeps_the_minimiser():
    """On N(0, I) data at σ = 0.5 the DSM minimiser is the blurred score −x/(1 + σ²), and a weight
    of x̃ alone keeps it: the weighted fit (α = 0.5, weights up to ~4× on the grid) matches it
    within 0.1 on |x| ≤ 1.5, as the unweighted fit does. (Weighting the clean x instead tilts the
    data to N(0, ≈1.6) and the fitted slope to ≈ −0.54: 0.4 off at x = 1.5.)"""
    data = np.asarray(jax.random.normal(jax.random.key(0), (20000, 2)))
    grid = jnp.asarray(np.stack([np.linspace(-1.5, 1.5, 31), np.zeros(31)], 1), jnp.float32)
    sigma = 0.5
    model, _ = fit(ScoreNetwork(2, 32, key=jax.random.key(1)), data, sigmas=[sigma], steps_per_level=3000,
                   batch_size=256, confine=None, density_weight=0.5, key=jax.random.key(2), progress=False)
    err = np.asarray(model(grid))[:, 0] + np.asarray(grid[:, 0]) / (1 + sigma**2)
    assert np.max(np.abs(err)) < 0.1, err


def test_density_weight_zero_is_off_and_bad_input_is_named():
    data = np.asarray(jax.random.normal(jax.random.key(0), (512, 2)))
    kwargs = dict(sigmas=[0.5], steps_per_level=20, key=jax.random.key(1), progress=False)
    a, _ = fit(ScoreNetwork(2, 8, key=jax.random.key(2)), data, density_weight=0.0, **kwargs)
    b, _ = fit(ScoreNetwork(2, 8, key=jax.random.key(2)), data, **kwargs)
    c, _ = fit(ScoreNetwork(2, 8, key=jax.random.key(2)), data, density_weight=1.0, **kwargs)
    assert _leaves_equal(a, b)
    assert not _leaves_equal(b, c)
    with pytest.raises(ValueError, match="density_weight"):
        fit(ScoreNetwork(2, 8, key=jax.random.key(2)), data, density_weight=-1.0, **kwargs)
    with pytest.raises(TypeError, match="density_weight"):
        fit(ScoreNetwork(2, 8, key=jax.random.key(2)), data, density_weight="valleys", **kwargs)
    with pytest.raises(ValueError, match="density_weight.*array"):
        fit(ScoreNetwork(2, 8, key=jax.random.key(2)), targets.laplace_x(), density_weight=1.0, **kwargs)


@pytest.mark.skipif(not __import__("rsnjax._dsm_kernel", fromlist=["x"]).available(),
                    reason="C++ DSM kernel not built")
@pytest.mark.parametrize("confine", [None, 1.0])
def test_density_weighted_fit_on_the_kernels_matches_xla(monkeypatch, confine):
    """The density-weighted gradient through the C++ kernels (with the far-field penalty: one
    fused pass) and through XLA: the same parameters up to float32 rounding over 300 Adam steps."""
    assert_weighted_fit_kernel_matches_xla(monkeypatch, 34, confine=confine, density_weight=1.0)


def test_batch_size_per_level():
    """One batch size per level: equal sizes are the int's run bit for bit; each level draws its
    own number of rows; epochs count rows at each level's own size; a wrong length or entry is named."""
    data = np.asarray(jax.random.normal(jax.random.key(0), (640, 2)))
    kwargs = dict(sigmas=[1.0, 0.5, 0.2], key=jax.random.key(1), progress=False)
    a, _ = fit(ScoreNetwork(2, 8, key=jax.random.key(2)), data, steps_per_level=20, batch_size=64, **kwargs)
    b, _ = fit(ScoreNetwork(2, 8, key=jax.random.key(2)), data, steps_per_level=20, batch_size=[64, 64, 64], **kwargs)
    assert _leaves_equal(a, b)
    # each level uses its own size: with the model frozen (SGD at rate 0) the recorded loss's
    # spread over steps falls as 1/sqrt(batch), 4× from 16 to 256 rows (±10 % from 200 steps each)
    _, frozen = fit(ScoreNetwork(2, 8, key=jax.random.key(2)), data, sigmas=[0.5, 0.5], steps_per_level=200,
                    batch_size=[16, 256], optimizer=optax.sgd(0.0), ema_decay=None, confine=None,
                    key=jax.random.key(1), progress=False)
    spread = [frozen.loss[frozen.level == k].std() for k in (0, 1)]
    assert 2.5 < spread[0] / spread[1] < 6.0, spread
    _, h = fit(ScoreNetwork(2, 8, key=jax.random.key(2)), data, epochs_per_level=2, batch_size=[32, 64, 32],
               **kwargs)
    assert np.bincount(h.level).tolist() == [2 * 640 // 32, 2 * 640 // 64, 2 * 640 // 32]
    with pytest.raises(ValueError, match="batch_size.*2 entries.*3"):
        fit(ScoreNetwork(2, 8, key=jax.random.key(2)), data, steps_per_level=5, batch_size=[64, 64], **kwargs)
    with pytest.raises(ValueError, match="batch_size"):
        fit(ScoreNetwork(2, 8, key=jax.random.key(2)), data, steps_per_level=5, batch_size=[64, 0, 64], **kwargs)
    with pytest.raises(ValueError, match="batch_size"):
        fit(ScoreNetwork(2, 8, key=jax.random.key(2)), data, steps_per_level=5, batch_size=[], **kwargs)
    with pytest.raises(ValueError, match="stable_target.*128"):
        fit(ScoreNetwork(2, 8, key=jax.random.key(2)), data, steps_per_level=5, batch_size=[64, 64, 128],
            stable_target=100, **kwargs)
