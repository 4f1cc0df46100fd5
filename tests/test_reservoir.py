"""The weight mapping and the identity at the heart of the paper: W_out r_t = x_t."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rsnjax
from rsnjax import ReservoirSampler, ScoreNetwork


def test_mapping_gives_the_papers_weights():
    net = ScoreNetwork(2, 40, activation="tanh", key=jax.random.key(0))
    res = ReservoirSampler.from_score_network(net, tau=0.5)
    np.testing.assert_array_equal(res.W_out, net.A)
    np.testing.assert_array_equal(res.I, net.b)
    w_rec = res.dense_recurrent_weights()
    assert w_rec.shape == (40, 40)
    np.testing.assert_allclose(w_rec, net.B @ net.A, rtol=1e-6)
    s = np.linalg.svd(np.asarray(w_rec, np.float64), compute_uv=False)
    assert np.sum(s > 1e-5 * s[0]) == 2  # rank d (up to float32 rounding)
    # noise map √2 A⁺: A (√2 A⁺) = √2 I and A⁺ = Aᵀ(AAᵀ)⁻¹
    np.testing.assert_allclose(res.W_out @ res.noise_map, math.sqrt(2) * np.eye(2), atol=1e-5)
    a = np.asarray(net.A, np.float64)
    np.testing.assert_allclose(res.noise_map, math.sqrt(2) * a.T @ np.linalg.inv(a @ a.T), rtol=1e-4, atol=1e-6)
    assert res.tau == 0.5 and res.activation == "tanh"
    # and back
    back = res.to_score_network()
    x = jnp.ones((3, 2))
    np.testing.assert_allclose(back(x), net(x), rtol=1e-6)
    np.testing.assert_allclose(res.output_score(x), net(x), rtol=1e-6)


@pytest.mark.parametrize("bad_rows", ["duplicate", "zero", "tiny"])
def test_rank_deficient_readout_is_a_clear_error(bad_rows):
    net = ScoreNetwork(2, 30, key=jax.random.key(0))
    A = net.A
    if bad_rows == "duplicate":
        A = A.at[1].set(A[0])
    elif bad_rows == "zero":
        A = A.at[1].set(0.0)
    else:
        A = A.at[1].set(A[0] + 1e-12)
    with pytest.raises(rsnjax.RankDeficientReadoutError, match="full row rank"):
        ReservoirSampler.from_score_network(eqx.tree_at(lambda m: m.A, net, A))


def test_mapping_bad_input():
    with pytest.raises(TypeError, match="net"):
        ReservoirSampler.from_score_network(rsnjax.SamplerOnly(2, key=jax.random.key(0)))
    with pytest.raises(ValueError, match="tau"):
        ReservoirSampler.from_score_network(ScoreNetwork(2, 5, key=jax.random.key(0)), tau=0.0)
    with pytest.raises(rsnjax.RankDeficientReadoutError, match="W_out"):
        ReservoirSampler(jnp.ones((3, 2)), jnp.ones((2, 3)), jnp.ones(2))
    with pytest.raises(ValueError, match="W_out"):
        ReservoirSampler(jnp.full((1, 4), jnp.nan), jnp.ones((4, 1)), jnp.ones(4))


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("accelerated", [False, True])
def test_reservoir_readout_equals_output_space_langevin_with_the_same_noise(activation, accelerated):
    """Simulate r (N = 256) and x directly, feeding both the same d-dimensional noise; the
    readout W_out r_t equals x_t at every saved step (float64, 1200 steps)."""
    with jax.enable_x64(True):
        net = ScoreNetwork(2, 256, activation=activation, key=jax.random.key(0))
        net = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, net)
        net = eqx.tree_at(lambda m: m.A, net, net.A * 3.0)  # a score with real structure
        res = ReservoirSampler.from_score_network(net)
        skew = rsnjax.skew_symmetric(2, scale=0.7).astype(jnp.float64) if accelerated else None
        r0 = jax.random.normal(jax.random.key(1), (64, 256), jnp.float64)
        x0 = res.readout(r0)
        kw = dict(key=jax.random.key(2), num_chains=64, num_steps=1200, step_size=0.01, save_every=1, skew=skew)
        out_r = rsnjax.sample(res, initial_state=r0, return_state=True, **kw)
        out_x = rsnjax.sample(net, initial_state=x0, **kw)
        assert out_r.trajectory.dtype == jnp.float64
        assert out_r.trajectory.shape == (1200, 64, 2)
        scale = float(jnp.max(jnp.abs(out_x.trajectory)))
        assert scale > 0.5  # the paths moved
        np.testing.assert_allclose(out_r.trajectory, out_x.trajectory, rtol=0, atol=1e-9 * scale)
        np.testing.assert_allclose(res.readout(out_r.final_state), out_x.samples, atol=1e-9 * scale)


def test_identity_fails_without_the_pseudo_inverse_noise():
    """Guard for the test above: a reservoir whose noise map is not √2·A⁺ does not reproduce x."""
    with jax.enable_x64(True):
        net = ScoreNetwork(2, 64, key=jax.random.key(0))
        net = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, net)
        res = ReservoirSampler.from_score_network(net)
        wrong = eqx.tree_at(lambda m: m.noise_map, res, res.noise_map * 1.01)
        r0 = jnp.zeros((4, 64))
        kw = dict(key=jax.random.key(2), num_chains=4, num_steps=100, step_size=0.01, save_every=10)
        a = rsnjax.sample(wrong, initial_state=r0, **kw).trajectory
        b = rsnjax.sample(net, initial_state=res.readout(r0), **kw).trajectory
        assert float(jnp.max(jnp.abs(a - b))) > 1e-4


def test_noise_map_shape_is_checked():
    # a (1, dim) noise map used to be accepted (only ndim was checked) and broadcast one noise
    # value to every reservoir unit without an error
    net = ScoreNetwork(2, 6, key=jax.random.key(0))
    res = ReservoirSampler.from_score_network(net)
    for shape in [(1, 2), (6, 1), (2, 6), (6, 3)]:
        with pytest.raises(ValueError, match=r"noise_map.*\(6, 2\)"):
            ReservoirSampler(res.W_out, res.W_in, res.I, noise_map=np.ones(shape))
    ok = ReservoirSampler(res.W_out, res.W_in, res.I, noise_map=np.asarray(res.noise_map))
    np.testing.assert_array_equal(ok.noise_map, res.noise_map)


def test_reservoir_drift_reads_out_as_the_network_score():
    # W_out · drift(r) = (A φ(B W_out r + b) − W_out r)/τ = s(W_out r)/τ for every r (not only
    # on the readout's range): the leak −r and the rates must both be exact
    net = ScoreNetwork(2, 16, key=jax.random.key(0))
    tau = 0.7
    res = ReservoirSampler.from_score_network(net, tau=tau)
    r = jax.random.normal(jax.random.key(1), (5, 16))
    x = res.readout(r)
    np.testing.assert_allclose(res.readout(res.drift(r)), net(x) / tau, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res.output_score(x), net(x), rtol=1e-5, atol=1e-5)


def test_every_form_of_the_reservoir_step_is_the_euler_maruyama_step():
    # the fused step (`stepper`), its loop form (u, c) and the generic r + h·drift + √h·G ξ agree
    from rsnjax.sde import CircuitSDE, ReservoirLangevin

    with jax.enable_x64(True):
        net = ScoreNetwork(2, 16, key=jax.random.key(0))
        net = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, net)
        sde = ReservoirLangevin(ReservoirSampler.from_score_network(net, tau=0.8))
        r = jax.random.normal(jax.random.key(1), (5, 16), jnp.float64)
        noise = jax.random.normal(jax.random.key(2), (5, 2), jnp.float64)
        h = 0.05
        want = r + h * sde.drift(r) + math.sqrt(h) * sde.diffusion(noise)
        generic, x_generic = CircuitSDE.euler_maruyama_step(sde, r, noise, h)
        np.testing.assert_allclose(generic, want, rtol=1e-12, atol=1e-12)
        step = sde.stepper()
        fused, x = step.euler_maruyama_step(r, noise, h)
        np.testing.assert_allclose(fused, want, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(x, sde.readout(r), rtol=1e-12, atol=1e-12)
        loop, x_loop = step.loop_step(step.loop_state(r), noise, h)
        np.testing.assert_allclose(step.state_from_loop(loop), want, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(x_loop, sde.readout(r), rtol=1e-12, atol=1e-12)
