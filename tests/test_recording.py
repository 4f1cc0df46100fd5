"""Recording neural activity inside `rsnjax.sample` and the private (null-space) noise."""

import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rsnjax
from rsnjax._recording import recording_bytes


def _reservoir(hidden=64, dim=2, seed=0):
    net = rsnjax.ScoreNetwork(dim, hidden, key=jax.random.key(seed))
    return rsnjax.ReservoirSampler.from_score_network(net)


KW = dict(key=jax.random.key(3), num_chains=300, num_steps=60, step_size=0.05, save_every=10, warn=False)
CHAINS = [5, 0, 299, 17, 123]


@pytest.mark.parametrize("record_every", [10, 5, 30])
def test_readout_of_the_recorded_activity_is_the_saved_trajectory(record_every):
    res = _reservoir()
    plain = rsnjax.sample(res, **KW)
    out = rsnjax.sample(res, record_every=record_every, record_chains=CHAINS, record_rates=True,
                        block_size=64, **KW)
    # recording does not change the simulation (chains are moved between blocks, not altered)
    np.testing.assert_array_equal(out.samples, plain.samples)
    np.testing.assert_array_equal(out.trajectory, plain.trajectory)
    num_records = 60 // record_every
    assert out.activity.shape == (len(CHAINS), num_records, res.hidden)
    assert out.rates.shape == out.activity.shape
    act = np.asarray(out.activity, np.float64)
    readout = act @ np.asarray(res.W_out, np.float64).T  # (chains, records, d)
    # record i is the state after step (i + 1)·record_every; trajectory entry i after (i + 1)·10
    times_rec = record_every * np.arange(1, num_records + 1)
    times_traj = 10 * np.arange(1, 7)
    common, i_rec, i_traj = np.intersect1d(times_rec, times_traj, return_indices=True)
    assert len(common) >= 2
    expected = np.asarray(plain.trajectory, np.float64)[i_traj][:, CHAINS].transpose(1, 0, 2)
    scale = np.abs(act).max() * np.abs(np.asarray(res.W_out)).sum(1).max()
    np.testing.assert_allclose(readout[:, i_rec], expected, rtol=0, atol=8 * np.finfo(np.float32).eps * scale)
    # rates are φ(W_rec r + I) of the recorded state
    np.testing.assert_allclose(np.asarray(out.rates), np.asarray(res.rates(out.activity)), rtol=1e-5, atol=1e-5)


def test_recording_all_chains_and_a_subset_of_neurons_in_order():
    res = _reservoir()
    full = rsnjax.sample(res, record_every=20, **KW)
    assert full.activity.shape == (300, 3, 64) and full.rates is None
    part = rsnjax.sample(res, record_every=20, record_neurons=[40, 3, 7], record_chains=[9, 2], **KW)
    np.testing.assert_allclose(part.activity, full.activity[np.array([9, 2])][:, :, [40, 3, 7]], rtol=1e-6, atol=1e-6)
    # the final record is the final state
    state = rsnjax.sample(res, record_every=60, record_chains=[9, 2], return_state=True, **KW)
    np.testing.assert_allclose(state.activity[:, -1], state.final_state[np.array([9, 2])], rtol=1e-6, atol=1e-6)


def test_sampler_only_circuits_record_their_units_and_rates():
    for dynamics in ("firing_rate", "synaptic_current"):
        so = rsnjax.SamplerOnly(3, dynamics=dynamics, activation="tanh", key=jax.random.key(1))
        out = rsnjax.sample(so, record_every=10, record_rates=True, record_chains=[4, 1], **KW)
        traj = np.asarray(out.trajectory)[:, [4, 1]].transpose(1, 0, 2)
        np.testing.assert_array_equal(out.activity, traj)
        x = jnp.asarray(traj)
        want = jnp.tanh(x @ so.W.T + so.b) if dynamics == "firing_rate" else jnp.tanh(x)
        np.testing.assert_allclose(out.rates, want, rtol=1e-6, atol=1e-6)


def test_private_noise_leaves_the_readout_path_bit_identical():
    res = _reservoir()
    kw = dict(record_every=10, record_chains=CHAINS, **KW)
    plain = rsnjax.sample(res, **kw)
    noisy = rsnjax.sample(res, private_noise=0.7, **kw)
    np.testing.assert_array_equal(noisy.samples, plain.samples)
    np.testing.assert_array_equal(noisy.trajectory, plain.trajectory)
    diff = np.asarray(noisy.activity, np.float64) - np.asarray(plain.activity, np.float64)
    assert np.abs(diff).mean() > 0.1  # the neurons did get the private noise ...
    # ... and it lives in the null space of W_out: the readout of the activity is unchanged
    readout = diff @ np.asarray(res.W_out, np.float64).T
    assert np.abs(readout).max() < 1e-5 * np.abs(diff).max() * math.sqrt(res.hidden)
    # a neuron's private noise does not depend on which other neurons or chains are recorded
    sub = rsnjax.sample(res, private_noise=0.7, **{**kw, "record_chains": [299, 5]}, record_neurons=[11, 60])
    np.testing.assert_allclose(sub.activity, noisy.activity[np.array([2, 0])][:, :, [11, 60]], rtol=1e-5, atol=1e-5)
    # private_noise = 0 is the plain circuit
    zero = rsnjax.sample(res, private_noise=0.0, **kw)
    np.testing.assert_allclose(zero.activity, plain.activity, rtol=1e-6, atol=1e-6)


def test_private_noise_has_the_null_space_covariance():
    """p = r(with) − r(without) is an OU process: Cov(p) → s²(I − A⁺A)/(1 − a/2) for the Euler chain."""
    res = _reservoir(hidden=24)
    n, h, s, steps = 4000, 0.1, 0.5, 200  # (1 − a)^(2·steps) ≈ 5e-19
    kw = dict(key=jax.random.key(7), num_chains=n, num_steps=steps, step_size=h, record_every=steps, warn=False)
    p = np.asarray(rsnjax.sample(res, private_noise=s, **kw).activity[:, -1], np.float64)
    p -= np.asarray(rsnjax.sample(res, **kw).activity[:, -1], np.float64)
    a = np.asarray(res.W_out, np.float64)
    projector = np.eye(24) - np.linalg.pinv(a) @ a
    expected = s**2 * projector / (1 - h / 2)
    cov = p.T @ p / n  # the mean is 0
    np.testing.assert_array_less(np.abs(cov - expected), 5 * s**2 * math.sqrt(2 / n))
    np.testing.assert_array_less(np.abs(p.mean(0)), 5 * s * math.sqrt(1 / n))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(record_every=7), ValueError, "record_every.*divide.*num_steps"),
    (dict(record_every=4), ValueError, "must divide one another"),
    (dict(record_every=10, record_neurons=[64]), ValueError, r"record_neurons.*\[0, 64\)"),
    (dict(record_every=10, record_neurons=[-1]), ValueError, "record_neurons"),
    (dict(record_every=10, record_neurons=[1, 1]), ValueError, "record_neurons.*repeat"),
    (dict(record_every=10, record_neurons=[0.5]), TypeError, "record_neurons.*integer"),
    (dict(record_every=10, record_chains=[300]), ValueError, r"record_chains.*\[0, 300\)"),
    (dict(record_every=10, record_chains=[]), ValueError, "record_chains.*at least one"),
    (dict(record_neurons=[1]), ValueError, "record_neurons.*needs `record_every`"),
    (dict(private_noise=1.0), ValueError, "private_noise.*needs `record_every`"),
    (dict(record_every=10, private_noise=-1.0), ValueError, "private_noise"),
    (dict(record_every=10, private_noise=1.0, return_state=True), ValueError, "return_state"),
    (dict(record_every=10, backend="diffrax"), ValueError, "backend='scan'"),
    (dict(record_every=10, record_rates=1), TypeError, "record_rates"),
])
def test_bad_recording_arguments_name_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        rsnjax.sample(_reservoir(), **{**KW, **kwargs})


def test_models_without_neurons_cannot_be_recorded():
    net = rsnjax.ScoreNetwork(2, 16, key=jax.random.key(0))
    with pytest.raises(TypeError, match="ScoreNetwork.*from_score_network"):
        rsnjax.sample(net, record_every=10, **KW)
    with pytest.raises(TypeError, match="needs a circuit with neurons"):
        rsnjax.sample(lambda x: -x, dim=2, record_every=10, **KW)
    so = rsnjax.SamplerOnly(2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="private_noise.*ReservoirSampler"):
        rsnjax.sample(so, record_every=10, private_noise=1.0, **KW)


def test_recording_size_bound():
    assert recording_bytes(100, 10, 50) == 100 * 10 * 50 * 4
    # 10 chains over 4 blocks: 3 slots per block, 12 stored rows ≤ R + G − 1 = 13
    assert recording_bytes(100, 10, 50, num_blocks=4, rates=True) == 12 * 100 * 50 * 2 * 4
    with pytest.raises(ValueError, match="GiB.*record fewer"):
        rsnjax.sample(_reservoir(), **{**KW, "num_steps": 10**6, "save_every": None}, record_every=1)


SHARD_SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np, rsnjax
    assert len(jax.local_devices()) == 3, jax.local_devices()
    net = rsnjax.ScoreNetwork(2, 32, key=jax.random.key(0))
    res = rsnjax.ReservoirSampler.from_score_network(net)
    kw = dict(key=jax.random.key(1), num_chains=500, num_steps=40, step_size=0.05, save_every=20,
              record_every=10, record_chains=[499, 3, 250, 7, 100], record_rates=True, private_noise=0.3,
              warn=False)
    a = rsnjax.sample(res, shard=False, **kw)
    b = rsnjax.sample(res, block_size=50, **kw)  # 3 devices × 4 blocks: one recorded chain per block
    assert b.activity.shape == (5, 4, 32)
    for name in ("samples", "trajectory", "activity", "rates"):
        np.testing.assert_allclose(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)), rtol=1e-5, atol=1e-5)
    print("SHARDED-OK")
    """
)


def test_recording_on_several_devices_agrees_with_one():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=3", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SHARD_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert "SHARDED-OK" in proc.stdout, proc.stderr[-3000:]


# --- recording a conditional circuit driven by `inputs` -------------------------------------------

INPUTS = jax.random.normal(jax.random.key(8), (3, 2)) * 2.0
DRIVEN = dict(KW, burn_in=10, inputs=INPUTS, switch_steps=[20, 45])


def _driven_reservoir(hidden=48):
    net = rsnjax.ConditionalScoreNetwork(2, 2, hidden, key=jax.random.key(0))
    return rsnjax.ReservoirSampler.from_score_network(net)


def _input_at_records(record_every, num_records, burn_in=10, switch=(20, 45)):
    """The input in force after step burn_in + (i + 1)·record_every: segment #{switch ≤ t}."""
    t = burn_in + record_every * np.arange(1, num_records + 1)
    return np.asarray(INPUTS)[(t[:, None] >= np.asarray(switch)).sum(1)]


@pytest.mark.parametrize("record_every", [5, 10, 20])
def test_recording_a_circuit_driven_by_switching_inputs(record_every):
    res = _driven_reservoir()
    plain = rsnjax.sample(res, **DRIVEN)
    out = rsnjax.sample(res, record_every=record_every, record_chains=CHAINS, record_rates=True, block_size=64,
                        **DRIVEN)
    np.testing.assert_array_equal(out.samples, plain.samples)
    np.testing.assert_array_equal(out.trajectory, plain.trajectory)
    num_records = 60 // record_every
    assert out.activity.shape == (len(CHAINS), num_records, res.hidden) == out.rates.shape
    act = np.asarray(out.activity, np.float64)
    readout = act @ np.asarray(res.W_out, np.float64).T
    times_rec = record_every * np.arange(1, num_records + 1)
    common, i_rec, i_traj = np.intersect1d(times_rec, 10 * np.arange(1, 7), return_indices=True)
    assert len(common) >= 3
    expected = np.asarray(plain.trajectory, np.float64)[i_traj][:, CHAINS].transpose(1, 0, 2)
    scale = np.abs(act).max() * np.abs(np.asarray(res.W_out)).sum(1).max()
    np.testing.assert_allclose(readout[:, i_rec], expected, rtol=0, atol=8 * np.finfo(np.float32).eps * scale)
    # rates φ(W_rec r + I + W_cond c) with the input in force at each record (it switches twice)
    c = jnp.broadcast_to(_input_at_records(record_every, num_records), out.activity.shape[:2] + (2,))
    want = np.asarray(res.rates(out.activity, c))
    np.testing.assert_allclose(np.asarray(out.rates), want, rtol=1e-5, atol=1e-5)
    stale = np.asarray(res.rates(out.activity, jnp.broadcast_to(INPUTS[0], c.shape)))
    assert np.abs(stale - want).max() > 0.1  # the input matters: a rate with the first input is wrong


def test_private_noise_with_inputs_leaves_the_readout_path_bit_identical():
    res = _driven_reservoir()
    kw = dict(record_every=10, record_chains=CHAINS, **DRIVEN)
    plain = rsnjax.sample(res, **kw)
    noisy = rsnjax.sample(res, private_noise=0.7, **kw)
    np.testing.assert_array_equal(noisy.samples, plain.samples)
    np.testing.assert_array_equal(noisy.trajectory, plain.trajectory)
    diff = np.asarray(noisy.activity, np.float64) - np.asarray(plain.activity, np.float64)
    assert np.abs(diff).mean() > 0.1
    readout = diff @ np.asarray(res.W_out, np.float64).T
    assert np.abs(readout).max() < 1e-5 * np.abs(diff).max() * math.sqrt(res.hidden)
    # it is the same process p as in the circuit without inputs (same W_out, key and chains)
    bare = rsnjax.ReservoirSampler(res.W_out, res.W_in, res.I, activation=res.activation, tau=res.tau)
    kw_bare = {k: v for k, v in kw.items() if k not in ("inputs", "switch_steps")}
    p_bare = (np.asarray(rsnjax.sample(bare, private_noise=0.7, **kw_bare).activity, np.float64)
              - np.asarray(rsnjax.sample(bare, **kw_bare).activity, np.float64))
    np.testing.assert_allclose(diff, p_bare, rtol=0, atol=1e-5)


def test_conditional_sampler_only_records_with_inputs():
    for dynamics in ("firing_rate", "synaptic_current"):
        so = rsnjax.ConditionalSamplerOnly(2, 2, dynamics=dynamics, activation="tanh", key=jax.random.key(1))
        out = rsnjax.sample(so, record_every=10, record_rates=True, record_chains=[4, 1], **DRIVEN)
        traj = np.asarray(out.trajectory)[:, [4, 1]].transpose(1, 0, 2)
        np.testing.assert_array_equal(out.activity, traj)
        x = jnp.asarray(traj)
        c = jnp.asarray(_input_at_records(10, 6))[None]
        want = jnp.tanh(x @ so.W.T + so.b + c @ so.C.T) if dynamics == "firing_rate" else jnp.tanh(x)
        np.testing.assert_allclose(out.rates, want, rtol=1e-6, atol=1e-6)


def test_recording_with_inputs_errors():
    net = rsnjax.ConditionalScoreNetwork(2, 2, 16, key=jax.random.key(0))
    with pytest.raises(TypeError, match="ConditionalScoreNetwork.*from_score_network"):
        rsnjax.sample(net, record_every=10, **DRIVEN)
    with pytest.raises(ValueError, match=r"record_neurons.*\[0, 48\)"):
        rsnjax.sample(_driven_reservoir(), record_every=10, record_neurons=[48], **DRIVEN)
