"""Statistical and mechanical checks of `rsnjax.sample`."""

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
from rsnjax import targets


def _em_stationary_variance(var, h):
    """Euler–Maruyama on the OU process dx = −x/var dt + √2 dB has stationary variance
    var / (1 − h/(2 var)) (exact for the discrete chain)."""
    return var / (1 - h / (2 * var))


def _check_gaussian_samples(s, mean, var, h):
    """The mean and variance of samples `s` (n, d) match Euler–Maruyama's stationary law within
    5 standard errors: SE(mean) = √(var/n), SE(var) = var·√(2/n)."""
    n = s.shape[0]
    expected_var = np.array([_em_stationary_variance(v, h) for v in var])
    np.testing.assert_array_less(np.abs(s.mean(0) - np.asarray(mean)), 5 * np.sqrt(expected_var / n))
    np.testing.assert_array_less(np.abs(s.var(0) - expected_var), 5 * expected_var * math.sqrt(2 / n))


# 50 000 chains: 5 SE of the variance is 3.2 %, so a sampler 5 % off is rejected (see the guard)
N_GAUSSIAN = 50_000


def test_langevin_on_a_gaussian_recovers_mean_and_variance():
    mean = jnp.array([1.0, -2.0])
    var = jnp.array([0.5, 2.0])
    target = targets.gaussian(mean, var)
    n, h = N_GAUSSIAN, 0.02
    out = rsnjax.sample(target, key=jax.random.key(0), num_chains=n, num_steps=1500, step_size=h, init="normal")
    s = np.asarray(out.samples, np.float64)
    assert s.shape == (n, 2)
    _check_gaussian_samples(s, mean, (0.5, 2.0), h)


def test_langevin_on_double_peak_recovers_mode_weights_and_variance():
    target = targets.double_peak()
    n = 8000
    out = rsnjax.sample(target, key=jax.random.key(1), num_chains=n, num_steps=2000, step_size=0.01)
    s = np.asarray(out.samples[:, 0], np.float64)
    assert abs((s > 0).mean() - 0.5) < 5 * math.sqrt(0.25 / n)
    assert abs(s.mean()) < 5 * math.sqrt(1.25 / n)
    # variance 1.25 (+ O(h) Euler bias ≈ 0.5 %); SE of the variance of a bimodal law ≈ 0.9·√(1/n)
    assert abs(s.var() - 1.25) < 5 * s.std() ** 2 * math.sqrt(2 / n)
    # the mode weights follow the target's component weights when they are unequal
    lopsided = targets.GaussianMixture(jnp.array([[-1.0], [1.0]]), 0.25, jnp.array([0.3, 0.7]))
    out = rsnjax.sample(lopsided, key=jax.random.key(2), num_chains=n, num_steps=4000, step_size=0.01)
    assert abs(float((out.samples[:, 0] > 0).mean()) - 0.7) < 5 * math.sqrt(0.21 / n)


def test_the_gaussian_check_fails_for_a_wrong_sampler():
    """Guard: the very check above (same tolerance, same sample size) rejects a sampler that is
    wrong by a little (score × 0.95, i.e. a ≈ 5 % too wide stationary law), while it accepts the
    right one with the same key."""
    target = targets.gaussian(jnp.zeros(1), jnp.ones(1))
    n, h = N_GAUSSIAN, 0.02
    kw = dict(dim=1, key=jax.random.key(0), num_chains=n, num_steps=1500, step_size=h, init="normal")
    right = np.asarray(rsnjax.sample(target.score, **kw).samples, np.float64)
    _check_gaussian_samples(right, [0.0], (1.0,), h)
    wrong = np.asarray(rsnjax.sample(lambda x: 0.95 * target.score(x), **kw).samples, np.float64)
    with pytest.raises(AssertionError):
        _check_gaussian_samples(wrong, [0.0], (1.0,), h)


def test_same_key_same_samples_and_independent_of_block_size():
    net = rsnjax.ScoreNetwork(2, 64, key=jax.random.key(0))
    res = rsnjax.ReservoirSampler.from_score_network(net)
    kw = dict(key=jax.random.key(3), num_chains=300, num_steps=50, step_size=0.05, save_every=10)
    a = rsnjax.sample(res, **kw)
    b = rsnjax.sample(res, **kw)
    np.testing.assert_array_equal(a.samples, b.samples)
    np.testing.assert_array_equal(a.trajectory, b.trajectory)
    c = rsnjax.sample(res, block_size=64, **kw)  # 300 chains padded to 5 blocks of 64
    np.testing.assert_allclose(c.samples, a.samples, rtol=1e-5, atol=1e-5)
    d = rsnjax.sample(res, **{**kw, "key": jax.random.key(4)})
    assert not np.allclose(d.samples, a.samples)
    assert a.trajectory.shape == (5, 300, 2)
    np.testing.assert_array_equal(a.trajectory[-1], a.samples)
    assert a.wall_time > 0 and a.compile_time > 0


def test_burn_in_and_thinning_store_the_right_steps():
    """Deterministic dynamics make the saved steps checkable: a reservoir with no input, no bias
    and a zero noise map decays as r_t = (1 − h)^t r_0, so entry k of the trajectory must be
    (1 − h)^(burn_in + save_every·(k + 1)) r_0 — an off-by-one in burn-in or thinning shows."""
    res = rsnjax.ReservoirSampler(jnp.array([[1.0, 0.0]]), jnp.zeros((2, 1)), jnp.zeros(2),
                                  noise_map=jnp.zeros((2, 1)))
    r0 = jnp.array([[1.0, 0.0], [2.0, 0.5], [-1.0, 3.0]])
    h, burn_in, save_every, num_steps = 0.1, 10, 5, 20
    for backend in ("scan", "diffrax"):
        out = rsnjax.sample(res, key=jax.random.key(0), num_chains=3, num_steps=num_steps, step_size=h,
                            burn_in=burn_in, save_every=save_every, initial_state=r0, backend=backend)
        assert out.trajectory.shape == (4, 3, 1)
        steps = burn_in + save_every * np.arange(1, 5)
        expected = (1 - h) ** steps[:, None] * np.asarray(r0[:, 0])[None, :]
        np.testing.assert_allclose(out.trajectory[:, :, 0], expected, rtol=1e-5, err_msg=backend)
        np.testing.assert_allclose(out.samples[:, 0], (1 - h) ** (burn_in + num_steps) * r0[:, 0], rtol=1e-5)
        np.testing.assert_array_equal(out.trajectory[-1], out.samples)
    with pytest.raises(ValueError, match="save_every"):
        rsnjax.sample(lambda x: -x, dim=1, key=jax.random.key(0), num_chains=3, num_steps=20,
                      step_size=0.1, save_every=3)


@pytest.mark.slow
def test_diffrax_backend_agrees_statistically_with_scan():
    target = targets.double_peak()
    n = 6000
    kw = dict(num_chains=n, num_steps=1000, step_size=0.02)
    a = np.asarray(rsnjax.sample(target, key=jax.random.key(5), **kw).samples[:, 0], np.float64)
    out = rsnjax.sample(target, key=jax.random.key(6), backend="diffrax", save_every=100, **kw)
    b = np.asarray(out.samples[:, 0], np.float64)
    assert out.trajectory.shape == (10, n, 1)
    np.testing.assert_array_equal(out.trajectory[-1], out.samples)
    from scipy import stats

    assert stats.ks_2samp(a, b).pvalue > 1e-3
    assert abs(a.var() - b.var()) < 5 * 1.25 * math.sqrt(4 / n)
    assert abs((a > 0).mean() - (b > 0).mean()) < 5 * math.sqrt(0.5 / n)


def test_accelerated_sampling_keeps_the_stationary_law():
    mean = jnp.array([0.5, -0.5])
    target = targets.gaussian(mean, jnp.array([1.0, 0.5]))
    n, h = 8000, 0.01
    s = np.asarray(rsnjax.sample(target, key=jax.random.key(7), num_chains=n, num_steps=2000, step_size=h,
                                 skew=rsnjax.skew_symmetric(2, scale=1.0), init="normal").samples, np.float64)
    np.testing.assert_array_less(np.abs(s.mean(0) - np.asarray(mean)), 5 * np.sqrt(np.array([1.0, 0.5]) / n) * 1.05)
    np.testing.assert_array_less(np.abs(s.var(0) - np.array([1.0, 0.5])), 5 * np.array([1.0, 0.5]) * math.sqrt(2 / n) + 0.02)
    with pytest.raises(ValueError, match="skew"):
        rsnjax.sample(target, key=jax.random.key(0), num_chains=2, num_steps=2, step_size=0.1, skew=jnp.eye(2))


def test_a_diverging_run_names_the_chains_and_the_step():
    # a deep well at 0 (barrier ≈ 40 kT at |x| = √40); outside it the cubic blows up in finite time
    unstable = lambda x: -4 * x + 0.1 * x**3  # noqa: E731
    init = jnp.array([[0.0], [8.0], [0.1], [-9.0]])
    with pytest.raises(rsnjax.SimulationDivergedError, match=r"2 of 4 chains.*chains 1, 3") as info:
        rsnjax.sample(unstable, dim=1, key=jax.random.key(0), num_chains=4, num_steps=200, step_size=0.1,
                      initial_state=init)
    bad = np.asarray(info.value.result.nonfinite_step)
    assert bad[0] == -1 and bad[2] == -1 and bad[1] > 0 and bad[3] > 0
    flagged = rsnjax.sample(unstable, dim=1, key=jax.random.key(0), num_chains=4, num_steps=200, step_size=0.1,
                            initial_state=init, on_nonfinite="flag")
    np.testing.assert_array_equal(flagged.nonfinite_step, bad)
    assert np.isfinite(flagged.samples[0, 0]) and np.isfinite(flagged.samples[2, 0])


def test_diffrax_backend_reports_the_divergence_step_as_scan_does():
    # it used to report every diverged chain at the last step
    unstable = lambda x: -4 * x + 0.1 * x**3  # noqa: E731
    init = jnp.array([[0.0], [8.0], [0.1], [-9.0]])
    kw = dict(dim=1, key=jax.random.key(0), num_chains=4, num_steps=200, step_size=0.1, initial_state=init,
              on_nonfinite="flag")
    with pytest.warns(rsnjax.SamplingWarning):
        a = rsnjax.sample(unstable, **kw).nonfinite_step
        b = rsnjax.sample(unstable, backend="diffrax", **kw).nonfinite_step
    np.testing.assert_array_equal(b, a)
    assert a[0] == -1 and a[2] == -1 and 0 < a[1] < 20 and 0 < a[3] < 20


def test_diffrax_backend_raises_when_the_solve_fails(monkeypatch):
    import diffrax

    real = diffrax.diffeqsolve

    def truncated(*args, **kwargs):  # a solver failure: max_steps reached before t1
        return real(*args, **{**kwargs, "max_steps": 3})

    monkeypatch.setattr(diffrax, "diffeqsolve", truncated)
    with pytest.raises(Exception, match="did not complete"):
        out = rsnjax.sample(lambda x: -x, dim=1, key=jax.random.key(0), num_chains=3, num_steps=37,
                            step_size=0.1, backend="diffrax")
        jax.block_until_ready(out.samples)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(step_size=0.0), "step_size"),
        (dict(step_size=-1e-3), "step_size"),
        (dict(step_size=float("nan")), "step_size"),
        (dict(num_chains=0), "num_chains"),
        (dict(num_steps=-5), "num_steps"),
        (dict(key=None), "key"),
        (dict(initial_state=jnp.zeros((5, 1))), "initial_state"),
        (dict(initial_state=jnp.zeros((4, 3))), "initial_state"),
        (dict(initial_state=jnp.full((4, 1), jnp.nan)), "initial_state"),
        (dict(backend="euler"), "backend"),
        (dict(init="gaussian"), "init"),
        (dict(tau=0.0), "tau"),
        (dict(on_nonfinite="ignore"), "on_nonfinite"),
        (dict(shard=2.0), "shard"),  # used to mean "all devices"
        (dict(shard="all"), "shard"),
    ],
)
def test_sample_bad_input_names_the_argument(kwargs, match):
    args = dict(key=jax.random.key(0), num_chains=4, num_steps=10, step_size=0.01)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        rsnjax.sample(targets.double_peak(), **args)


def test_sample_rejects_unknown_models():
    with pytest.raises(TypeError, match="model"):
        rsnjax.sample("not a model", key=jax.random.key(0), num_chains=2, num_steps=2, step_size=0.1)
    with pytest.raises(ValueError, match="dim"):
        rsnjax.sample(lambda x: -x, key=jax.random.key(0), num_chains=2, num_steps=2, step_size=0.1)


SHARD_SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np, rsnjax
    assert len(jax.local_devices()) == 4, jax.local_devices()
    net = rsnjax.ScoreNetwork(2, 32, key=jax.random.key(0))
    res = rsnjax.ReservoirSampler.from_score_network(net)
    kw = dict(key=jax.random.key(1), num_chains=1000, num_steps=40, step_size=0.05, save_every=20)
    a = rsnjax.sample(res, shard=False, **kw)
    b = rsnjax.sample(res, **kw)              # all 4 devices
    assert len(b.samples.sharding.device_set) == 4, b.samples.sharding
    np.testing.assert_allclose(np.asarray(a.samples), np.asarray(b.samples), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(a.trajectory), np.asarray(b.trajectory), rtol=1e-5, atol=1e-6)
    c = rsnjax.sample(res, shard=2, **kw)
    np.testing.assert_allclose(np.asarray(a.samples), np.asarray(c.samples), rtol=1e-5, atol=1e-6)
    print("SHARDED-OK")
    """
)


def test_sharded_and_unsharded_runs_agree():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SHARD_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert "SHARDED-OK" in proc.stdout, proc.stderr[-3000:]


def test_step_noise_is_standard_normal_and_independent():
    """The hand-written counter-based Threefry noise: N(0, 1) marginals, no correlation across
    components, steps or chains (tolerances: 5 standard errors at n = 40 000 per statistic)."""
    from scipy import stats

    from rsnjax.sampling import chain_key_words, step_noise

    chains, steps = 20_000, 2
    words = chain_key_words(jax.random.key(0), jnp.arange(chains, dtype=jnp.uint32))
    z = np.stack([np.asarray(step_noise(words, t, 2, jnp.float32), np.float64) for t in range(steps)])
    flat = z.reshape(-1)
    n = flat.size
    assert abs(flat.mean()) < 5 / math.sqrt(n)
    assert abs(flat.var() - 1) < 5 * math.sqrt(2 / n)
    assert stats.kstest(flat, "norm").pvalue > 1e-3
    tol = 5 / math.sqrt(chains)
    assert abs(np.corrcoef(z[0, :, 0], z[0, :, 1])[0, 1]) < tol  # across components
    assert abs(np.corrcoef(z[0, :, 0], z[1, :, 0])[0, 1]) < tol  # across steps
    assert abs(np.corrcoef(z[0, :-1, 0], z[0, 1:, 0])[0, 1]) < tol  # across neighbouring chains
    # float64 draws use both hash words
    with jax.enable_x64(True):
        z64 = np.asarray(step_noise(words, 0, 2, jnp.float64))
    assert z64.dtype == np.float64 and abs(z64.var() - 1) < 5 * math.sqrt(2 / z64.size)


def test_step_noise_is_the_documented_function_of_the_counter():
    """Value by value: component j of chain c at step t is √2·erf⁻¹(2u − 1) with u from the first
    word of jax's own Threefry-2x32 of the counter (t, j) under the chain's key words (an
    independent computation: jax.extend's threefry and scipy's erfinv). The statistical test
    above cannot see a 1 % error in the scale; this one does."""
    import jax.extend.random as jr
    import scipy.special

    from rsnjax.sampling import chain_key_words, step_noise

    words = np.asarray(chain_key_words(jax.random.key(0), jnp.arange(4, dtype=jnp.uint32)))
    for t in (0, 5, 123_456):
        z = np.asarray(step_noise(jnp.asarray(words), t, 3, jnp.float32), np.float64)
        for c in range(4):
            for j in range(3):
                hi = int(np.asarray(jr.threefry_2x32(jnp.asarray(words[c]), jnp.array([t, j], jnp.uint32)))[0])
                u = (hi >> 9) / 2.0**23
                want = math.sqrt(2) * scipy.special.erfinv(max(2 * u - 1, -1 + 2.0**-23))
                assert abs(z[c, j] - want) < 1e-5 * max(1.0, abs(want)), (t, c, j, z[c, j], want)


def test_saving_the_trajectory_does_not_change_the_samples():
    """Saving every `save_every` steps cuts the scan into pieces that must continue the global
    step count: the samples are then bit-identical to an unsaved run, and trajectory entry k to
    the samples of a run that stops after its step burn_in + (k + 1)·save_every."""
    res = rsnjax.ReservoirSampler.from_score_network(rsnjax.ScoreNetwork(2, 16, key=jax.random.key(0)))
    kw = dict(key=jax.random.key(1), num_chains=20, burn_in=5, step_size=0.05, warn=False)
    saved = rsnjax.sample(res, num_steps=30, save_every=10, **kw)
    np.testing.assert_array_equal(rsnjax.sample(res, num_steps=30, **kw).samples, saved.samples)
    np.testing.assert_array_equal(rsnjax.sample(res, num_steps=20, **kw).samples, saved.trajectory[1])


def test_fused_uniform_start_is_jax_random_uniform_bit_for_bit():
    """`jax_uniform` (the chains' U[−2, 2] and normal starts) is `jax.random.uniform` bit for bit
    (a fused hash of the same counters), for several shapes and ranges, and falls back to it for
    keys and dtypes it does not cover; so is the normal start to `jax.random.normal`."""
    import types

    from rsnjax.sampling import _initial_state, jax_uniform

    key = jax.random.key(21)
    lo = float(np.nextafter(np.float32(-1), np.float32(0)))
    for shape in [(300, 203), (1, 5), (7, 1)]:
        for low, high in [(-2.0, 2.0), (lo, 1.0), (0.5, 3.0)]:
            np.testing.assert_array_equal(np.asarray(jax_uniform(key, shape, jnp.float32, low, high)),
                                          np.asarray(jax.random.uniform(key, shape, jnp.float32, low, high)))
    raw = jax.random.PRNGKey(4)  # a raw uint32 key: JAX's own draw
    np.testing.assert_array_equal(np.asarray(jax_uniform(raw, (3, 4), jnp.float32, -2.0, 2.0)),
                                  np.asarray(jax.random.uniform(raw, (3, 4), jnp.float32, -2.0, 2.0)))
    sde = types.SimpleNamespace(state_dim=203)
    np.testing.assert_array_equal(np.asarray(_initial_state(sde, "normal", None, key, 300, jnp.float32)),
                                  np.asarray(jax.random.normal(key, (300, 203), jnp.float32)))
    start = np.asarray(_initial_state(sde, "uniform", None, key, 300, jnp.float32))
    assert start.min() >= -2.0 and start.max() < 2.0 and abs(start.mean()) < 0.02
