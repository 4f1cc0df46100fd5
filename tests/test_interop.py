"""Tests of rsnjax.interop: `as_blackjax` (blackjax-style, jittable, vmappable), `score_from_logdensity`
with pytree positions, and `to_arviz` against rsnjax.metrics."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rsnjax
from rsnjax import metrics, targets

# A ReLU score network whose score is exactly linear: relu(u) − relu(−u) = u, so with hidden units
# in ± pairs, s(x) = −x + c ⊙ (x − m): the stationary law is N(μ, v) per coordinate with
# v = 1/(1 − c), μ = −c m/(1 − c). Mapped onto a 4-unit reservoir it is an RSN with a known law.
C = np.array([0.5, 0.75])
M = np.array([0.4, -0.2])


def _gaussian_network():
    A = np.zeros((2, 4))
    B = np.zeros((4, 2))
    b = np.zeros(4)
    for k in range(2):
        A[k, 2 * k], A[k, 2 * k + 1] = C[k], -C[k]
        B[2 * k, k], B[2 * k + 1, k] = 1.0, -1.0
        b[2 * k], b[2 * k + 1] = -M[k], M[k]
    net = rsnjax.ScoreNetwork(2, 4, key=jax.random.key(0))
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    return eqx.tree_at(lambda n: (n.A, n.B, n.b), net, (f32(A), f32(B), f32(b)))


def _em_moments(step_size):
    """Mean and variance of Euler–Maruyama's stationary law for s(x) = −a (x − μ), a = 1 − c:
    x' = x − a h (x − μ) + √(2h) ξ has variance 2h / (1 − (1 − a h)²) = 1 / (a (1 − a h / 2))."""
    a = 1.0 - C
    return -C * M / a, 1.0 / (a * (1.0 - a * step_size / 2.0))


def _run_chains(algo, num_chains, num_steps, key, x0):
    def run(k):
        def body(state, kk):
            state, info = algo.step(kk, state)
            return state, info.is_finite

        state, finite = jax.lax.scan(body, algo.init(x0), jax.random.split(k, num_steps))
        return state.position, jnp.all(finite)

    return jax.jit(jax.vmap(run))(jax.random.split(key, num_chains))


@pytest.mark.parametrize("kind", ["reservoir", "score_network"])
def test_as_blackjax_jit_vmap_reproduces_gaussian_moments(kind):
    net = _gaussian_network()
    model = rsnjax.ReservoirSampler.from_score_network(net) if kind == "reservoir" else net
    h, n, steps = 0.02, 4000, 1500  # t = 30: the start's memory is e^(−2·0.25·30) = e^(−15)
    algo = rsnjax.as_blackjax(model, step_size=h)
    pos, finite = _run_chains(algo, n, steps, jax.random.key(1), jnp.zeros(2))
    assert pos.shape == (n, 2) and bool(jnp.all(finite))
    mean, var = _em_moments(h)
    x = np.asarray(pos, np.float64)
    # the final states are exactly Gaussian (linear recursion from a fixed start): 4 standard errors
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), 4 * np.sqrt(var / n))
    np.testing.assert_array_less(np.abs(x.var(0, ddof=1) - var), 4 * var * np.sqrt(2 / (n - 1)))


def test_as_blackjax_reservoir_state_and_purity():
    res = rsnjax.ReservoirSampler.from_score_network(_gaussian_network())
    algo = rsnjax.as_blackjax(res, step_size=0.01)
    x0 = jnp.array([0.3, -1.2])
    state = algo.init(x0)
    assert state.circuit.shape == (4,)  # the reservoir's own state, r = W_out⁺ x
    np.testing.assert_allclose(res.readout(state.circuit), x0, atol=1e-6)
    key = jax.random.key(7)
    s1, info = algo.step(key, state)
    s2, _ = jax.jit(algo.step)(key, state)
    np.testing.assert_allclose(s1.circuit, s2.circuit, atol=1e-6)  # pure: same key, same step
    np.testing.assert_allclose(s1.position, res.readout(s1.circuit), atol=1e-6)
    assert bool(info.is_finite)
    # one step is Euler–Maruyama of the output score with the step's noise: x' = x + h s(x) + √(2h) ξ
    xi = jax.random.normal(key, (1, 2), jnp.float32)[0]
    expected = x0 + 0.01 * res.output_score(x0) + np.sqrt(0.02) * xi
    np.testing.assert_allclose(s1.position, expected, atol=1e-5)
    s3, _ = algo.step(jax.random.key(8), state)
    assert not np.allclose(s3.position, s1.position)


def test_as_blackjax_rejects_bad_input():
    net = _gaussian_network()
    with pytest.raises(ValueError, match="step_size"):
        rsnjax.as_blackjax(net, step_size=-1.0)
    algo = rsnjax.as_blackjax(net, step_size=0.01)
    with pytest.raises(ValueError, match="`position`"):
        algo.init(jnp.zeros(3))
    with pytest.raises(ValueError, match="`dim`"):
        rsnjax.as_blackjax(lambda x: -x, step_size=0.01)


def test_as_blackjax_runs_in_blackjax_loop():
    blackjax = pytest.importorskip("blackjax")
    from blackjax.util import run_inference_algorithm

    algo = rsnjax.as_blackjax(targets.gaussian(jnp.zeros(2), jnp.eye(2)), step_size=0.05)
    final, (states, infos) = run_inference_algorithm(jax.random.key(0), algo, 50,
                                                     initial_position=jnp.ones(2))
    assert states.position.shape == (50, 2) and bool(jnp.all(infos.is_finite))
    np.testing.assert_allclose(final.position, states.position[-1])
    del blackjax


# --- score_from_logdensity ------------------------------------------------------------------------

MU = {"loc": jnp.array([1.0, -2.0]), "scale": jnp.array(0.5)}
VAR = {"loc": jnp.array([0.5, 2.0]), "scale": jnp.array(0.25)}


def _pytree_logdensity(p):
    """An independent Gaussian over a dict position (the form blackjax and numpyro use)."""
    return sum(jnp.sum(-0.5 * (p[k] - MU[k]) ** 2 / VAR[k]) for k in ("loc", "scale"))


def test_score_from_logdensity_pytree_position():
    target = rsnjax.score_from_logdensity(_pytree_logdensity, {"loc": jnp.zeros(2), "scale": jnp.array(1.0)})
    assert target.dim == 3
    # ravel_pytree orders dict keys: loc (2 entries), then scale
    flat_mu, flat_var = np.array([1.0, -2.0, 0.5]), np.array([0.5, 2.0, 0.25])
    x = jax.random.normal(jax.random.key(0), (5, 3))
    np.testing.assert_allclose(target.score(x), -(np.asarray(x) - flat_mu) / flat_var, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(target.log_prob(x), -0.5 * np.sum((np.asarray(x) - flat_mu) ** 2 / flat_var, 1),
                               rtol=1e-5)
    back = target.unravel(x[0])
    assert set(back) == {"loc", "scale"} and back["loc"].shape == (2,) and back["scale"].shape == ()
    np.testing.assert_allclose(target.ravel(back), x[0])


def test_score_from_logdensity_is_a_sample_and_metrics_target():
    target = rsnjax.score_from_logdensity(_pytree_logdensity, MU)
    h, n = 0.02, 2000
    out = rsnjax.sample(target, key=jax.random.key(3), num_chains=n, num_steps=800, step_size=h,
                        init="zeros", warn=False)
    x = np.asarray(out.samples, np.float64)
    flat_mu, flat_var = np.array([1.0, -2.0, 0.5]), np.array([0.5, 2.0, 0.25])
    # t = 16 from 0: the slowest coordinate (variance 2) keeps e^(−16) of its start
    var_em = flat_var / (1.0 - h / (2.0 * flat_var))
    np.testing.assert_array_less(np.abs(x.mean(0) - flat_mu), 4 * np.sqrt(var_em / n))
    np.testing.assert_array_less(np.abs(x.var(0, ddof=1) - var_em), 4 * var_em * np.sqrt(2 / (n - 1)))
    # the metrics take it as a target with a score: KSD is small on its samples, large off them
    ksd_on = float(metrics.ksd(out.samples, target.score))
    ksd_off = float(metrics.ksd(out.samples + 1.0, target.score))
    assert ksd_on < 0.25 * ksd_off
    # and as_blackjax keeps the pytree position
    algo = rsnjax.as_blackjax(target, step_size=h)
    state, _ = algo.step(jax.random.key(0), algo.init(MU))
    assert set(state.position) == {"loc", "scale"} and state.circuit.shape == (3,)


def test_score_from_logdensity_rejects_bad_input():
    with pytest.raises(TypeError, match="logdensity_fn"):
        rsnjax.score_from_logdensity(3.0, dim=2)
    with pytest.raises(ValueError, match="exactly one of `position`"):
        rsnjax.score_from_logdensity(_pytree_logdensity)
    with pytest.raises(ValueError, match="scalar"):
        rsnjax.score_from_logdensity(lambda x: x, dim=2)
    with pytest.raises(TypeError, match="floating-point"):
        rsnjax.score_from_logdensity(lambda p: 0.0, {"n": jnp.arange(3)})
    flat = rsnjax.score_from_logdensity(lambda x: -0.5 * jnp.sum(x**2), dim=2)
    np.testing.assert_allclose(flat.score(jnp.ones((4, 2))), -np.ones((4, 2)))


# --- ArviZ --------------------------------------------------------------------------------------


def test_to_arviz_agrees_with_rsnjax_metrics():
    az = pytest.importorskip("arviz")
    target = targets.gaussian(jnp.array([1.0, -1.0]), jnp.array([[1.0, 0.3], [0.3, 0.5]]))
    # short and poorly mixed on purpose (R̂ well above 1), so that a draw/chain mix-up shows
    out = rsnjax.sample(target, key=jax.random.key(0), num_chains=8, num_steps=400, step_size=0.01,
                        save_every=4, warn=False)
    data = out.to_arviz()
    post = data.posterior["x"]
    assert post.dims == ("chain", "draw", "dim") and post.shape == (8, 100, 2)
    np.testing.assert_array_equal(post.values[3, :, 1], np.asarray(out.trajectory)[:, 3, 1])
    rhat = np.asarray(metrics.rhat(out.trajectory, per_dim=True))
    assert rhat.min() > 1.05
    np.testing.assert_allclose(az.rhat(data, method="rank")["x"].values, rhat, rtol=1e-4)
    np.testing.assert_allclose(az.ess(data, method="bulk")["x"].values, metrics.ess(out.trajectory), rtol=1e-4)
    # the 5 % / 95 % tails: ArviZ < 1 defaults to them, ArviZ ≥ 1 to its 89 % interval (prob 0.11 /
    # 0.89), so name them (checked with ArviZ 0.23.4 and 1.3.0)
    np.testing.assert_allclose(az.ess(data, method="tail", prob=0.05)["x"].values,
                               metrics.ess(out.trajectory, method="tail"), rtol=1e-4)
    assert data.posterior.attrs["wall_time"] == out.wall_time


def test_to_arviz_needs_a_trajectory():
    out = rsnjax.sample(targets.gaussian(jnp.zeros(1), jnp.eye(1)), key=jax.random.key(0), num_chains=4,
                        num_steps=10, step_size=0.01, warn=False)
    with pytest.raises(ValueError, match="save_every"):
        out.to_arviz()
