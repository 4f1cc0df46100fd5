"""`fit`'s ``tail_weight``: the weighted DSM loss, its gradient, and the rows it draws."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rsnjax import ConditionalScoreNetwork, SamplerOnly, ScoreNetwork, fit, targets
from rsnjax.dsm import dsm_value_and_grad
from rsnjax.extent import data_extent
from rsnjax.training import weighted_dsm_value_and_grad


def _autodiff(model, x, noise, sigma, weights, c=None):
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss(p):
        m = eqx.combine(p, static)
        r = (m(x + sigma * noise) if c is None else m(x + sigma * noise, c)) + noise / sigma
        return 0.5 * jnp.mean(weights * jnp.sum(r**2, axis=-1))

    return jax.value_and_grad(loss)(params)


def _max_diff(a, b):
    return max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(jax.tree_util.tree_leaves(a),
                                                                 jax.tree_util.tree_leaves(b)))


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_weighted_gradient_matches_autodiff(activation):
    keys = jax.random.split(jax.random.key(0), 5)
    x = jax.random.normal(keys[0], (33, 2))
    noise = jax.random.normal(keys[1], (33, 2))
    weights = jax.random.uniform(keys[2], (33,), minval=0.1, maxval=5.0)
    c = jax.random.normal(keys[3], (33, 3))
    models = [(ScoreNetwork(2, 57, activation=activation, key=keys[4]), None),
              (ConditionalScoreNetwork(2, 3, 41, activation=activation, key=keys[4]), c),
              (SamplerOnly(2, key=keys[4]), None)]
    for model, cond in models:
        loss, grads = weighted_dsm_value_and_grad(model, x, noise, 0.3, weights, cond)
        ref_loss, ref_grads = _autodiff(model, x, noise, 0.3, weights, cond)
        assert abs(float(loss) - float(ref_loss)) <= 1e-5 * abs(float(ref_loss))
        assert _max_diff(grads, ref_grads) <= 1e-5 * max(_max_diff(ref_grads, jax.tree_util.tree_map(
            jnp.zeros_like, ref_grads)), 1.0)
    # unit weights are the plain DSM loss
    model = models[0][0]
    loss, grads = weighted_dsm_value_and_grad(model, x, noise, 0.3, jnp.ones(33))
    ref_loss, ref_grads = dsm_value_and_grad(model, x, noise, 0.3)
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-6)
    assert _max_diff(grads, ref_grads) <= 1e-6 * max(1.0, float(jnp.max(jnp.abs(ref_grads.A))))


@pytest.mark.parametrize("confine", [None, 1.0])  # with the penalty: the kernels' fused pass
def test_recorded_loss_is_the_tail_weighted_expectation(confine):
    """With the parameters frozen (SGD at rate 0, no averaging) the mean recorded loss estimates
    E_p[w(x̃) ℓ] / E_p[w(x)], w(z) = (1 + ‖W(z − μ)‖²)^(q/2): rows drawn ∝ w(x) and weighted by
    w(x̃)/w(x). Uniform rows, or no weights, give values many standard errors away."""
    q, sigma, steps = 2.0, 0.5, 3000
    data = np.asarray(targets.laplace_x().sample(jax.random.key(1), 2048))
    model = ScoreNetwork(2, 16, key=jax.random.key(2))
    model = eqx.tree_at(lambda m: m.A, model, 10.0 * model.A)  # a loss that grows with the radius
    _, history = fit(model, data, sigmas=[sigma], steps_per_level=steps, optimizer=optax.sgd(0.0),
                     ema_decay=None, confine=confine, antithetic=False, tail_weight=q, key=jax.random.key(3),
                     progress=False)
    recorded = history.loss
    mean, se = recorded.mean(), recorded.std() / np.sqrt(steps)  # steps are independent draws

    # the same expectations by Monte Carlo over every row, 64 noise draws each
    extent = data_extent(data)
    W = np.asarray(extent.whitening).reshape(2, 2)

    def log_w(z):
        u = (z - np.asarray(extent.mean)) @ W.T
        return 0.5 * q * np.log1p(np.sum(u * u, axis=-1))

    eps = np.asarray(jax.random.normal(jax.random.key(4), (64,) + data.shape))
    noisy = data[None] + sigma * eps
    score = np.asarray(jax.vmap(model)(jnp.asarray(noisy)))
    ell = 0.5 * np.sum((score + eps / sigma) ** 2, axis=-1)                # (64, n)
    w_x, w_noisy = np.exp(log_w(data)), np.exp(log_w(noisy))
    expected = np.mean(w_noisy * ell) / np.mean(w_x)
    uniform_rows = np.mean(w_noisy / w_x[None] * ell)
    unweighted_rows = np.mean(w_x[None] * ell) / np.mean(w_x)
    assert abs(mean - expected) < 5 * se, (mean, expected, se)
    for wrong in (uniform_rows, unweighted_rows, ell.mean()):
        assert abs(wrong - expected) > 10 * se, (wrong, expected, se)


def test_tail_weight_zero_is_off_and_bad_input_is_named():
    data = np.asarray(jax.random.normal(jax.random.key(0), (512, 2)))
    kwargs = dict(sigmas=[0.5], steps_per_level=20, key=jax.random.key(1), progress=False)
    a, _ = fit(ScoreNetwork(2, 8, key=jax.random.key(2)), data, tail_weight=0.0, **kwargs)
    b, _ = fit(ScoreNetwork(2, 8, key=jax.random.key(2)), data, **kwargs)
    assert all(np.array_equal(u, v) for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
    with pytest.raises(ValueError, match="tail_weight"):
        fit(ScoreNetwork(2, 8, key=jax.random.key(2)), data, tail_weight=-1.0, **kwargs)
    with pytest.raises(ValueError, match="tail_weight.*array"):
        fit(ScoreNetwork(2, 8, key=jax.random.key(2)), targets.laplace_x(), tail_weight=2.0, **kwargs)
    with pytest.raises(TypeError, match="tail_weight"):
        fit(ScoreNetwork(2, 8, key=jax.random.key(2)), data, tail_weight="heavy", **kwargs)


@pytest.mark.skipif(not __import__("rsnjax._dsm_kernel", fromlist=["x"]).available(),
                    reason="C++ DSM kernel not built")
@pytest.mark.parametrize("confine", [None, 1.0])
def test_tail_weighted_fit_on_the_kernels_matches_xla(monkeypatch, confine):
    """The weighted gradient through the C++ kernels (with the far-field penalty: one fused pass)
    and through XLA: the same parameters up to float32 rounding over 300 Adam steps."""
    assert_weighted_fit_kernel_matches_xla(monkeypatch, 33, confine=confine, tail_weight=2.0)


def assert_weighted_fit_kernel_matches_xla(monkeypatch, batch_size, **options):
    """`fit` with these options (a loss weight) on the Laplace X, N = 61, 2 × 150 Adam steps, through
    the C++ kernels and through XLA: A, B, b agree to 16 ε·sqrt(batch · N)·sqrt(steps) of their
    scale. (Also used by tests/test_density_weight.py.)"""
    data = np.asarray(targets.laplace_x().sample(jax.random.key(1), 4096))

    def run():
        net = ScoreNetwork(2, 61, key=jax.random.key(1))
        return fit(net, data, sigmas=[1.0, 0.1], steps_per_level=150, batch_size=batch_size,
                   optimizer=optax.adam(1e-3), key=jax.random.key(0), progress=False, **options)[0]

    kernel = run()
    monkeypatch.setenv("RSNJAX_KERNEL", "0")
    xla = run()
    eps = float(np.finfo(np.float32).eps)
    tol = 16 * eps * np.sqrt(batch_size * 61) * np.sqrt(300)
    for name in ("A", "B", "b"):
        ref = np.asarray(getattr(xla, name))
        np.testing.assert_allclose(np.asarray(getattr(kernel, name)), ref, rtol=0, atol=tol * np.max(np.abs(ref)))
