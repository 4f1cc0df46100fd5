import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rsnjax
from rsnjax import SamplerOnly, ScoreNetwork

PHI = {"relu": lambda z: np.maximum(z, 0), "tanh": np.tanh, "softplus": lambda z: np.log1p(np.exp(z))}


@pytest.mark.parametrize("activation", ["relu", "tanh", "softplus"])
def test_score_network_is_minus_x_plus_A_phi_Bx_plus_b(activation):
    net = ScoreNetwork(3, 50, activation=activation, key=jax.random.key(0))
    assert net.A.shape == (3, 50) and net.B.shape == (50, 3) and net.b.shape == (50,)
    x = np.asarray(jax.random.normal(jax.random.key(1), (8, 3)))
    A, B, b = (np.asarray(v, np.float64) for v in (net.A, net.B, net.b))
    expected = -x + PHI[activation](x @ B.T + b) @ A.T
    np.testing.assert_allclose(net(x), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(net(x[0]), expected[0], rtol=1e-5, atol=1e-5)  # one example


def _randomise(model, key):
    """Replace every array with random values so the formulas are tested away from the initial γ=1, Σ=I."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    leaves = [jax.random.normal(k, leaf.shape) for k, leaf in zip(keys, leaves)]
    return eqx.combine(jax.tree_util.tree_unflatten(tree, leaves), static)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_sampler_only_drifts_follow_paper_formulas(activation):
    x = np.asarray(jax.random.normal(jax.random.key(2), (6, 2)), np.float64)
    phi = PHI[activation]
    sc = _randomise(SamplerOnly(2, dynamics="synaptic_current", activation=activation, key=jax.random.key(3)), jax.random.key(4))
    W, b, g, S = (np.asarray(v, np.float64) for v in (sc.W, sc.b, sc.gamma, sc.Sigma))
    M = S @ S.T
    np.testing.assert_allclose(sc(x), (g * (phi(x) @ W.T + b - x)) @ M.T, rtol=1e-4, atol=1e-5)
    fr = _randomise(SamplerOnly(2, dynamics="firing_rate", activation=activation, key=jax.random.key(5)), jax.random.key(6))
    W, b, g, S = (np.asarray(v, np.float64) for v in (fr.W, fr.b, fr.gamma, fr.Sigma))
    M = S @ S.T
    np.testing.assert_allclose(fr(x), (g * (phi(x @ W.T + b) - x)) @ M.T, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fr.mobility, M, rtol=1e-5)


def test_sampler_only_initial_mobility_and_gain_are_identity():
    so = SamplerOnly(4, key=jax.random.key(0))
    np.testing.assert_array_equal(so.Sigma, np.eye(4))
    np.testing.assert_array_equal(so.gamma, np.ones(4))


def test_same_key_same_weights_and_sc_relu_drift_has_single_kink():
    a = ScoreNetwork(2, 10, key=jax.random.key(7))
    b = ScoreNetwork(2, 10, key=jax.random.key(7))
    assert all(np.array_equal(u, v) for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
    # 1-D SO-SC with ReLU is piecewise linear with one kink at 0 (docs/SCIENCE.md §2)
    so = _randomise(SamplerOnly(1, key=jax.random.key(8)), jax.random.key(9))
    xs = jnp.linspace(-3, 3, 601)[:, None]
    second = np.diff(np.asarray(so(xs))[:, 0], 2)
    assert np.sum(np.abs(second) > 1e-4) <= 2


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ScoreNetwork(2, 10, activation="sigmoidal", key=jax.random.key(0)), "activation"),
        (lambda: ScoreNetwork(0, 10, key=jax.random.key(0)), "dim"),
        (lambda: ScoreNetwork(2, -1, key=jax.random.key(0)), "hidden"),
        (lambda: ScoreNetwork(2, 10, key=None), "key"),
        (lambda: ScoreNetwork(2, 10, key=3), "key"),
        (lambda: SamplerOnly(2, dynamics="rate", key=jax.random.key(0)), "dynamics"),
        (lambda: ScoreNetwork(2, 10, key=jax.random.key(0))(jnp.zeros((4, 3))), "x"),
        (lambda: SamplerOnly(2, key=jax.random.key(0))(jnp.zeros((4, 1))), "x"),
    ],
)
def test_bad_input_names_the_argument(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_public_api_has_docstrings():
    for name in ["ScoreNetwork", "SamplerOnly", "fit", "geometric_sigmas", "sample", "ReservoirSampler"]:
        assert getattr(rsnjax, name).__doc__, name
    for name in ["GaussianMixture", "LaplaceMixture", "double_peak", "laplace_x"]:
        assert getattr(rsnjax.targets, name).__doc__, name
