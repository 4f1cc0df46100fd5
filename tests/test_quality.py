"""Sample quality by default: the data-derived schedule, the recorded data extent, the escape
count and its warning, the R̂ warning, the far-field confinement and the defaults end to end."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rsnjax
from rsnjax import ReservoirSampler, SamplingWarning, ScoreNetwork, targets
from rsnjax.extent import data_extent, with_extent


# --- the data-derived schedule ----------------------------------------------------------------

def test_default_sigmas_measure_the_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 2))
    sig = rsnjax.default_sigmas(x)
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    assert sig[0] == pytest.approx(d.max(), rel=1e-6)              # σ_max: the largest pairwise distance
    np.fill_diagonal(d, np.inf)
    assert sig[-1] == pytest.approx(np.median(np.sort(d, 1)[:, 9]), rel=1e-6)   # 10th neighbour
    assert len(sig) >= 10 and np.all(np.diff(np.log(sig)) < 0)
    assert np.all(sig[:-1] / sig[1:] <= rsnjax.dsm.MAX_LEVEL_RATIO + 1e-9)
    # scale-equivariant: the schedule of 10·x is 10× the schedule of x
    np.testing.assert_allclose(rsnjax.default_sigmas(10 * x), 10 * sig, rtol=1e-5)
    # finer data → finer σ_min; the count grows when the range does
    thin = np.c_[rng.normal(size=2000) * 3, rng.normal(size=2000) * 0.01]
    assert rsnjax.default_sigmas(thin)[-1] < 0.2 * sig[-1]


@pytest.mark.parametrize("bad, match", [(np.zeros((20, 2)), "no spread"), (np.ones((5, 2)), "rows"),
                                        (np.full((20, 2), np.nan), "NaN|finite")])
def test_default_sigmas_rejects_bad_data(bad, match):
    with pytest.raises(ValueError, match=match):
        rsnjax.default_sigmas(bad)


# --- the extent travels with the model --------------------------------------------------------

def test_fit_records_the_extent_and_it_survives_mapping_and_checkpoints(tmp_path):
    x = np.random.default_rng(1).normal(size=(512, 2)).astype(np.float32) * [1.0, 3.0] + [5.0, 0.0]
    net, hist = rsnjax.fit(ScoreNetwork(2, 16, key=jax.random.key(0)), x, steps_per_level=4,
                           key=jax.random.key(1), progress=False)
    expected = data_extent(np.asarray(x, np.float32))
    np.testing.assert_allclose(net.extent.mean, expected.mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(net.extent.whitening, expected.whitening, rtol=1e-6, atol=1e-6)
    assert net.extent.radius == pytest.approx(expected.radius, rel=1e-6)
    assert len(hist.sigmas) >= 10                                  # the default schedule was used
    reservoir = ReservoirSampler.from_score_network(net)
    assert reservoir.extent == net.extent and reservoir.to_score_network().extent == net.extent
    rsnjax.save(tmp_path / "m.ckpt", reservoir)
    assert rsnjax.load(tmp_path / "m.ckpt").extent == net.extent
    # the whitened radius: the data's own points are all inside, a point far along the thin axis is not
    assert not net.extent.outside(x).any()
    assert net.extent.outside(np.array([[5.0 + 10 * net.extent.radius, 0.0]]))[0]


def test_a_bad_extent_in_a_checkpoint_is_an_error(tmp_path):
    bad = rsnjax.DataExtent((0.0, 0.0), (1.0, 0.0, 0.0, 1.0), -1.0, 3)   # a negative radius
    path = rsnjax.save(tmp_path / "m.ckpt", with_extent(ScoreNetwork(2, 4, key=jax.random.key(0)), bad))
    with pytest.raises(rsnjax.CheckpointError, match="data extent"):
        rsnjax.load(path)


# --- escapes and their warning ----------------------------------------------------------------

def _outward_network(dim=2, hidden=8, gain=3.0, offset=0.0):
    """s(x) = −x + A relu(Bx − offset), A relu(·) = gain·(x_k ∓ offset) past ±offset on each axis:
    beyond ±offset the drift grows outward like (gain − 1)·x, so chains leave any bounded set.
    With offset > 0 these units are silent where the data are (DSM cannot see them)."""
    B = jnp.concatenate([jnp.eye(dim), -jnp.eye(dim)] + [jnp.zeros((hidden - 2 * dim, dim))])
    b = jnp.concatenate([jnp.full(2 * dim, -offset), jnp.zeros(hidden - 2 * dim)])
    A = gain * jnp.concatenate([jnp.eye(dim), -jnp.eye(dim), jnp.zeros((dim, hidden - 2 * dim))], 1)
    A = A + 1e-3 * jax.random.normal(jax.random.key(0), A.shape)    # full row rank, tiny perturbation
    net = ScoreNetwork(dim, hidden, key=jax.random.key(0))
    return eqx.tree_at(lambda m: (m.A, m.B, m.b), net, (A, B, b))


def test_escaped_chains_are_counted_and_warned_about():
    extent = data_extent(np.random.default_rng(0).normal(size=(1000, 2)))
    net = with_extent(_outward_network(), extent)
    with pytest.warns(SamplingWarning, match="outside the training data"):
        out = rsnjax.sample(ReservoirSampler.from_score_network(net), key=jax.random.key(0), num_chains=64,
                            num_steps=400, step_size=0.01, init="normal")
    assert out.num_escaped == 64 and out.escaped.shape == (64,)
    # the same chains under a confining drift (the model's leak alone) stay inside: no warning
    tame = with_extent(_outward_network(gain=0.0), extent)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SamplingWarning)
        out = rsnjax.sample(tame, key=jax.random.key(0), num_chains=64, num_steps=400, step_size=0.01,
                            init="normal")
    assert out.num_escaped == 0
    # no extent (a target): nothing to count
    out = rsnjax.sample(targets.gaussian(np.zeros(2), np.eye(2)), key=jax.random.key(0), num_chains=8,
                        num_steps=10, step_size=0.01)
    assert out.escaped is None and out.num_escaped is None


def test_unmixed_chains_raise_an_rhat_warning_and_mixed_ones_do_not():
    target = targets.double_peak()
    # far apart over-dispersed starts, t = 0.2: the chains still remember where they started
    with pytest.warns(SamplingWarning, match="R̂"):
        out = rsnjax.sample(target, key=jax.random.key(0), num_chains=200, num_steps=40, step_size=0.005,
                            initial_state=jnp.linspace(-6, 6, 200)[:, None], save_every=4)
    assert out.rhat > 1.01
    with warnings.catch_warnings():
        warnings.simplefilter("error", SamplingWarning)
        out = rsnjax.sample(targets.gaussian(np.zeros(1), np.eye(1)), key=jax.random.key(0), num_chains=1000,
                            num_steps=4000, step_size=0.01, burn_in=1000, save_every=400)
    assert out.rhat <= 1.01


# --- the far field ----------------------------------------------------------------------------

def _radial_drift(net, extent, key, num=512):
    """⟨Lᵀ s(z), u⟩ at points z = μ + L ρ u on the shell ρ ∈ [1, 3]·radius (the penalty's points)."""
    d = extent.dim
    chol = np.linalg.inv(np.asarray(extent.whitening).reshape(d, d))
    u = np.array(jax.random.normal(key, (num, d)))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    rho = extent.radius * np.linspace(1.0, 3.0, num)[:, None]
    z = np.asarray(extent.mean) + (rho * u) @ chol.T
    return np.sum((np.asarray(net(jnp.asarray(z, jnp.float32))) @ chol) * u, axis=1)


def test_confinement_turns_an_outward_far_field_inward():
    x = np.random.default_rng(2).normal(size=(2048, 2)).astype(np.float32)
    start = _outward_network(hidden=64, offset=4.5)   # outward units beyond the data (radius ≈ 4.2)
    kwargs = dict(sigmas=[0.3], steps_per_level=300, optimizer=optax.adam(1e-2), ema_decay=None,
                  key=jax.random.key(3), progress=False)
    confined, _ = rsnjax.fit(start, x, **kwargs)
    free, _ = rsnjax.fit(start, x, confine=None, **kwargs)
    extent = confined.extent
    assert np.max(_radial_drift(confined, extent, jax.random.key(4))) < 0.0
    assert np.max(_radial_drift(free, extent, jax.random.key(4))) > 1.0   # without it: still outward


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_hand_written_penalty_gradient_matches_autodiff(activation):
    from rsnjax.training import _far_field_penalty_grad

    with jax.enable_x64(True):
        net = ScoreNetwork(2, 32, activation=activation, key=jax.random.key(0))
        net = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, net)
        # an outward far field, so that the penalty is violated at most points
        net = eqx.tree_at(lambda m: m.A, net, net.A + 3.0 * net.B.T)
        key_u, key_r = jax.random.split(jax.random.key(1))
        u = jax.random.normal(key_u, (64, 2), jnp.float64)
        u = u / jnp.linalg.norm(u, axis=1, keepdims=True)
        chol = jnp.array([[1.5, 0.0], [0.4, 0.7]], jnp.float64)
        mean = jnp.array([0.3, -0.2])
        offset = (3.0 * jax.random.uniform(key_r, (64, 1), jnp.float64, 1, 3) * u) @ chol.T
        axis = u @ chol.T
        near, far = mean + offset, mean + 2 * offset
        by_hand = _far_field_penalty_grad(net, near, far, axis)

        class Wrapped(eqx.Module):  # not a ScoreNetwork: takes the autodiff path
            net: ScoreNetwork

            def __call__(self, x):
                return self.net(x)

        reference = _far_field_penalty_grad(Wrapped(net), near, far, axis).net
        assert float(jnp.max(jnp.abs(by_hand.A))) > 0
        for a, b in zip(jax.tree_util.tree_leaves(by_hand), jax.tree_util.tree_leaves(reference)):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_confinement_penalty_asks_for_an_inward_slope_only():
    """The penalty is 0 for the −x leak alone (κ = −1) and for a drift that keeps turning inward
    at slope −2ε, ε² for a drift that tends to a constant (κ = 0, a Laplace tail), whatever that
    constant (inward or outward: the value is not asked for), (κ + ε)² for one that turns
    outward; its cotangents are its gradient."""
    from rsnjax.training import CONFINE_SLOPE as eps
    from rsnjax.training import confinement_penalty

    u = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    near, far = 5.0 * u, 10.0 * u

    def penalty(s_near, s_far):
        return float(confinement_penalty(s_near, s_far, near, far, u)[0])

    assert penalty(-near, -far) == 0.0
    assert penalty(-2 * eps * near, -2 * eps * far) == 0.0
    np.testing.assert_allclose(penalty(-1.4 * u, -1.4 * u), eps**2, rtol=1e-6)
    np.testing.assert_allclose(penalty(0.5 * u, 0.5 * u), eps**2, rtol=1e-6)
    np.testing.assert_allclose(penalty(0.1 * near, 0.1 * far), (0.1 + eps) ** 2, rtol=1e-5)
    s_near = jnp.array([[0.3, -0.2], [0.1, 0.4], [-0.5, 0.2]])
    s_far = jnp.array([[0.2, 0.1], [-0.3, 0.5], [0.1, -0.9]])
    _, g_near, g_far = confinement_penalty(s_near, s_far, near, far, u)
    want_near, want_far = jax.grad(lambda a, b: confinement_penalty(a, b, near, far, u)[0], (0, 1))(s_near, s_far)
    assert float(jnp.max(jnp.abs(want_far))) > 0
    np.testing.assert_allclose(g_near, want_near, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g_far, want_far, rtol=1e-5, atol=1e-7)


def test_antithetic_pairs_cut_the_gradient_noise_at_small_sigma():
    """One SGD step of lr 1 moves the parameters by −∇: across 24 keys at σ = 0.01, the spread of
    that step is several times smaller with ±ε pairs (the O(1/σ) term cancels within a pair)."""
    x = np.random.default_rng(0).normal(size=(256, 1)).astype(np.float32)
    net = ScoreNetwork(1, 32, key=jax.random.key(0))
    opt = optax.sgd(1.0)

    def step_spread(antithetic):
        steps = [rsnjax.fit(net, x, sigmas=[0.01], steps_per_level=1, batch_size=64, optimizer=opt,
                            ema_decay=None, confine=None, antithetic=antithetic, key=jax.random.key(k),
                            progress=False)[0].A - net.A for k in range(24)]
        return float(np.mean(np.var(np.stack(steps), axis=0)))

    assert step_spread(True) < 0.2 * step_spread(False)


def test_readout_factor_multiplies_the_readouts_step_at_the_last_level_only():
    """With SGD (linear in the step) the readout's last-level step is exactly `readout_factor` ×
    the plain one, from the same first level, and B, b move exactly as without it. The default
    is 10 with the default optimiser (Adam's first step is the rate per entry: A moves 1e-2 at
    the last level, B 1e-3) and off with a given optimiser; a bad factor is named."""
    x = np.random.default_rng(0).normal(size=(512, 2)).astype(np.float32)
    net = ScoreNetwork(2, 32, key=jax.random.key(0))
    kw = dict(steps_per_level=1, batch_size=64, ema_decay=None, confine=None, antithetic=False,
              key=jax.random.key(1), progress=False)
    sgd = optax.sgd(0.1)
    first, _ = rsnjax.fit(net, x, sigmas=[1.0], optimizer=sgd, **kw)
    plain, _ = rsnjax.fit(net, x, sigmas=[1.0, 0.3], optimizer=sgd, **kw)
    fast, _ = rsnjax.fit(net, x, sigmas=[1.0, 0.3], optimizer=sgd, readout_factor=7, **kw)
    step = np.asarray(plain.A - first.A)
    assert np.abs(step).max() > 1e-3
    np.testing.assert_allclose(fast.A - first.A, 7 * step, rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(fast.B, plain.B)
    np.testing.assert_array_equal(fast.b, plain.b)
    default, _ = rsnjax.fit(net, x, sigmas=[1.0, 0.3], **kw)
    assert 0.0099 < float(np.abs(default.A - net.A).max()) < 0.0111
    assert float(np.abs(default.B - net.B).max()) < 2.01e-3
    given, _ = rsnjax.fit(net, x, sigmas=[1.0, 0.3], optimizer=optax.adam(1e-3), **kw)
    assert float(np.abs(given.A - net.A).max()) < 2.01e-3
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="readout_factor"):
            rsnjax.fit(net, x, sigmas=[1.0], readout_factor=bad, **kw)


# --- the defaults, end to end -----------------------------------------------------------------

@pytest.mark.slow
def test_fit_defaults_sample_a_bimodal_target_from_data_alone():
    """`fit(model, data, key=...)` with nothing else: the reservoir's samples have the double
    peak's mode weights within 5 standard errors and the dip between the modes; no chain escapes."""
    target = targets.double_peak()
    data = np.asarray(target.sample(jax.random.key(0), 20_000))
    net, _ = rsnjax.fit(ScoreNetwork(1, 256, key=jax.random.key(1)), data, steps_per_level=600,
                        key=jax.random.key(2), progress=False)
    reservoir = ReservoirSampler.from_score_network(net)
    n = 4000
    out = rsnjax.sample(reservoir, key=jax.random.key(3), num_chains=n, num_steps=2000, burn_in=4000,
                        step_size=0.005, save_every=200)
    x = np.asarray(out.samples)[:, 0]
    right = np.mean(x > 0)
    assert abs(right - 0.5) < 5 * np.sqrt(0.25 / n)
    assert out.num_escaped == 0
    hist, _ = np.histogram(x, bins=[-1.2, -0.8, -0.2, 0.2, 0.8, 1.2])
    assert hist[2] < 0.6 * min(hist[1], hist[3])                  # a dip between the modes
    assert 0.45 ** 2 < np.var(x[x > 0]) < 0.55 ** 2 + 0.02        # each mode's width, ≈ 0.5² (+σ_min²)


@pytest.mark.slow
def test_constant_adam_still_balances_the_modes_thanks_to_the_average():
    """The issue's failing recipe: a constant optax.adam(1e-3), 600 steps per level, N = 500.
    With the parameter average (the default) the modes are balanced within 0.45–0.55."""
    target = targets.double_peak()
    opt = optax.adam(1e-3)
    for seed in range(2):
        net, _ = rsnjax.fit(ScoreNetwork(1, 500, key=jax.random.key(seed)), target, steps_per_level=600,
                            optimizer=opt, sigmas=rsnjax.geometric_sigmas(1.0, 100 ** -0.9, 10),
                            key=jax.random.key(10 + seed), progress=False)
        out = rsnjax.sample(ReservoirSampler.from_score_network(net), key=jax.random.key(seed),
                            num_chains=4000, num_steps=3000, step_size=0.005, warn=False)
        right = float(np.mean(np.asarray(out.samples) > 0))
        assert 0.45 <= right <= 0.55, (seed, right)
