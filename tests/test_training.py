import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rsnjax
from rsnjax import ScoreNetwork, targets
from rsnjax.dsm import dsm_loss_with_noise


def test_geometric_sigmas_match_the_papers_schedules():
    np.testing.assert_allclose(rsnjax.geometric_sigmas(1.0, 100**-0.9, 10), 100.0 ** (-np.arange(10) / 10))
    np.testing.assert_allclose(rsnjax.geometric_sigmas(1.0, 0.02, 10), 50.0 ** (-np.arange(10) / 9))
    assert rsnjax.geometric_sigmas(2.0, 1.0, 1).tolist() == [2.0]


def test_dsm_loss_is_minimised_by_the_true_blurred_score():
    """L(s + c g) is quadratic in c; its minimiser c* = −E[g·(s(x̃) + ε/σ)] / E[g²] must be ≈ 0
    for the true σ-blurred score (within 5 Monte-Carlo standard errors) and clearly not 0 for
    the un-blurred score."""
    target = targets.double_peak()
    sigma, n = 0.5, 200_000
    kx, ke = jax.random.split(jax.random.key(0))
    x = target.sample(kx, n)
    eps = jax.random.normal(ke, x.shape)
    noisy = x + sigma * eps
    true = target.blurred_score(noisy, sigma)
    for g in (noisy, jnp.tanh(noisy), jnp.ones_like(noisy)):
        terms = jnp.sum(g * (true + eps / sigma), -1)
        c_star = -terms.mean() / jnp.mean(jnp.sum(g**2, -1))
        se = terms.std() / math.sqrt(n) / jnp.mean(jnp.sum(g**2, -1))
        assert abs(float(c_star)) < 5 * float(se)
    wrong = target.score(noisy)
    terms = jnp.sum(noisy * (wrong + eps / sigma), -1)
    c_star = -terms.mean() / jnp.mean(jnp.sum(noisy**2, -1))
    se = terms.std() / math.sqrt(n) / jnp.mean(jnp.sum(noisy**2, -1))
    assert abs(float(c_star)) > 10 * float(se)
    # and the loss itself is lower for the true blurred score than for perturbations of it
    base = dsm_loss_with_noise(lambda y: target.blurred_score(y, sigma), x, eps, sigma)
    for shift in (0.2, -0.2):
        assert dsm_loss_with_noise(lambda y: target.blurred_score(y, sigma) + shift, x, eps, sigma) > base


@pytest.mark.parametrize("activation", ["relu", "tanh", "softplus"])
@pytest.mark.parametrize("dim", [1, 2, rsnjax.dsm.SMALL_DIM, rsnjax.dsm.SMALL_DIM + 1, 7])
def test_dsm_value_and_grad_matches_autodiff(activation, dim):
    """The hand-written ScoreNetwork gradient (both its small-d and matrix forms) against
    reverse-mode autodiff of `dsm_loss_with_noise`, in float64."""
    with jax.enable_x64(True):
        net = ScoreNetwork(dim, 37, activation=activation, key=jax.random.key(dim))
        net = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, net)
        # move the readout away from its small initial values so every term matters
        net = eqx.tree_at(lambda m: m.A, net, 3.0 * net.A)
        kx, ke = jax.random.split(jax.random.key(10 + dim))
        x = jax.random.normal(kx, (29, dim), jnp.float64) * 2.0
        noise = jax.random.normal(ke, (29, dim), jnp.float64)
        sigma = 0.37
        loss, grads = jax.jit(rsnjax.dsm_value_and_grad)(net, x, noise, sigma)
        ref_loss, ref_grads = eqx.filter_value_and_grad(lambda m: dsm_loss_with_noise(m, x, noise, sigma))(net)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
        for name in ("A", "B", "b"):
            got, ref = getattr(grads, name), getattr(ref_grads, name)
            assert got.shape == ref.shape
            assert float(jnp.max(jnp.abs(ref))) > 1e-3
            np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12 * float(jnp.max(jnp.abs(ref))))


def test_dsm_value_and_grad_of_other_models_is_autodiff():
    class Shifted(ScoreNetwork):
        def __call__(self, x):
            return super().__call__(x) + 1.0

    net = Shifted(2, 8, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (16, 2))
    noise = jax.random.normal(jax.random.key(2), (16, 2))
    loss, grads = rsnjax.dsm_value_and_grad(net, x, noise, 0.5)
    ref_loss, ref_grads = eqx.filter_value_and_grad(lambda m: dsm_loss_with_noise(m, x, noise, 0.5))(net)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    np.testing.assert_allclose(grads.b, ref_grads.b, rtol=1e-5, atol=1e-7)
    so = rsnjax.SamplerOnly(2, key=jax.random.key(3))
    loss, grads = rsnjax.dsm_value_and_grad(so, x, noise, 0.5)
    assert grads.Sigma.shape == (2, 2) and bool(jnp.isfinite(loss))


def _score_error(net, target, sigma, n=20_000):
    xs = target.sample(jax.random.key(123), n)
    return float(jnp.mean(jnp.sum((net(xs) - target.blurred_score(xs, sigma)) ** 2, -1)))


def test_fit_on_double_peak_learns_the_blurred_score():
    """The paper's schedule (10 levels, 100^(-k/10)) and batch 128, scaled down to 400 steps per
    level, N = 256, Adam with a per-level cosine decay. Threshold: the best *linear* score (the
    Gaussian fit, s(x) = −x/1.25) has error ≈ 2.07 against the σ_min-blurred double-peak score; a
    network that learned the bimodal shape must beat it by 4× (it reaches ≈ 0.2)."""
    target = targets.double_peak()
    sigmas = rsnjax.geometric_sigmas(1.0, 100**-0.9, 10)
    net = ScoreNetwork(1, 256, key=jax.random.key(0))
    opt = optax.adam(optax.cosine_decay_schedule(1e-3, 400, 0.01))
    trained, history = rsnjax.fit(net, target, sigmas=sigmas, steps_per_level=400, batch_size=128,
                                  optimizer=opt, key=jax.random.key(1), progress=False)
    assert history.loss.shape == (4000,) and np.all(np.isfinite(history.loss))
    assert history.level.tolist() == np.repeat(np.arange(10), 400).tolist()
    linear = _score_error(lambda x: -x / 1.25, target, sigmas[-1])
    assert 1.5 < linear < 2.5
    err = _score_error(trained, target, sigmas[-1])
    assert err < linear / 4, (err, linear)
    assert _score_error(net, target, sigmas[-1]) > 4 * err  # training, not the initialisation, did it


def test_fit_accepts_arrays_and_callables_and_is_reproducible():
    target = targets.gaussian(jnp.array([1.0, -1.0]), jnp.array([0.5, 2.0]))
    data = target.sample(jax.random.key(0), 640)
    kwargs = dict(sigmas=[0.5, 0.2], steps_per_level=40, batch_size=64, key=jax.random.key(1), progress=False)
    net = ScoreNetwork(2, 32, key=jax.random.key(2))
    a, ha = rsnjax.fit(net, data, **kwargs)
    b, hb = rsnjax.fit(net, data, **kwargs)
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(u, v)
    np.testing.assert_array_equal(ha.loss, hb.loss)
    # the chunk size does not change the result
    c, _ = rsnjax.fit(net, data, chunk_size=8, **kwargs)
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(c)):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)
    # epochs: 640 // 64 = 10 steps per epoch
    _, he = rsnjax.fit(net, data, sigmas=[0.5], epochs_per_level=3, batch_size=64, key=jax.random.key(1), progress=False)
    assert he.loss.shape == (30,)
    # a callable data source and a target are both drawn fresh every step
    _, hc = rsnjax.fit(net, lambda k, n: target.sample(k, n), **kwargs)
    _, ht = rsnjax.fit(net, target, **kwargs)
    np.testing.assert_allclose(hc.loss, ht.loss, rtol=1e-5)
    # training reduces the loss within a level
    assert hc.loss[30:40].mean() < hc.loss[:10].mean()


def test_fit_reuses_its_compiled_chunk_and_sees_new_target_arrays():
    """A second `fit` with the same optimiser object reuses the compiled chunk; the target's
    arrays are arguments of that program, so another target of the same kind is honoured."""
    from rsnjax.training import _cached_chunk_runner

    net = ScoreNetwork(1, 16, key=jax.random.key(0))
    opt = optax.adam(1e-2)
    kw = dict(sigmas=[0.5], steps_per_level=20, batch_size=32, key=jax.random.key(1), progress=False,
              optimizer=opt)
    near = targets.double_peak()
    _cached_chunk_runner.cache_clear()
    first, _ = rsnjax.fit(net, near, **kw)
    again, _ = rsnjax.fit(net, near, **kw)
    assert _cached_chunk_runner.cache_info().hits >= 1
    for u, v in zip(jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves(again)):
        np.testing.assert_array_equal(u, v)
    # the same kind of target (2 components in 1-D), other numbers
    two = targets.GaussianMixture(np.array([[-3.0], [3.0]]), np.array([[[0.1]], [[0.1]]]), np.array([0.5, 0.5]))
    cached, _ = rsnjax.fit(net, two, **kw)
    _cached_chunk_runner.cache_clear()
    fresh, _ = rsnjax.fit(net, two, **kw)
    for u, v in zip(jax.tree_util.tree_leaves(cached), jax.tree_util.tree_leaves(fresh)):
        np.testing.assert_array_equal(u, v)
    assert not np.allclose(cached.b, first.b)


def test_fit_targets_that_are_not_traceable_pytrees_still_work():
    """A plain-object target is closed over anew by every `fit` (a changed attribute is seen);
    an equinox target whose `sample` needs concrete values falls back to being closed over."""
    net = ScoreNetwork(1, 8, key=jax.random.key(0))
    opt = optax.sgd(1e-3)
    kw = dict(sigmas=[0.5], steps_per_level=5, batch_size=16, key=jax.random.key(1), progress=False,
              optimizer=opt)

    class Shifted:  # not a pytree
        dim = 1

        def __init__(self, mu):
            self.mu = mu

        def sample(self, key, num):
            return self.mu + jax.random.normal(key, (num, 1))

    plain = Shifted(0.0)
    _, near = rsnjax.fit(net, plain, **kw)
    plain.mu = 30.0
    _, far = rsnjax.fit(net, plain, **kw)
    _, far_fresh = rsnjax.fit(net, Shifted(30.0), **kw)
    np.testing.assert_array_equal(far.loss, far_fresh.loss)
    assert far.loss.mean() > 10 * near.loss.mean()

    class Concrete(eqx.Module):
        mu: jax.Array
        dim: int = eqx.field(static=True, default=1)

        def sample(self, key, num):
            return float(self.mu) + jax.random.normal(key, (num, 1))  # needs a concrete value

    _, concrete = rsnjax.fit(net, Concrete(jnp.asarray(30.0)), **kw)
    np.testing.assert_allclose(concrete.loss, far.loss, rtol=1e-6)


def test_weight_decay_is_added_to_the_gradient_before_the_optimizer():
    """With SGD, one step with L2 decay λ moves every parameter by −lr(∇L + λθ): compare the
    decayed run with the undecayed one from the same key (same batch and noise)."""
    net = ScoreNetwork(1, 16, key=jax.random.key(0))
    data = targets.double_peak().sample(jax.random.key(1), 64)
    kwargs = dict(sigmas=[0.3], steps_per_level=1, batch_size=64, key=jax.random.key(2), progress=False,
                  ema_decay=None)  # the last iterate, not the parameter average
    lr, lam = 0.1, 0.5
    plain, _ = rsnjax.fit(net, data, optimizer=optax.sgd(lr), **kwargs)
    decayed, _ = rsnjax.fit(net, data, optimizer=optax.sgd(lr), weight_decay=lam, **kwargs)
    for p, d, t0 in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(decayed), jax.tree_util.tree_leaves(net)):
        np.testing.assert_allclose(d, p - lr * lam * t0, rtol=1e-5, atol=1e-6)


def test_reset_optimizer_restarts_adam_at_each_level():
    net = ScoreNetwork(1, 16, key=jax.random.key(0))
    target = targets.double_peak()
    kw = dict(sigmas=[0.5, 0.4], steps_per_level=20, batch_size=32, key=jax.random.key(1), progress=False,
              optimizer=optax.adam(1e-2))
    reset, _ = rsnjax.fit(net, target, reset_optimizer=True, **kw)
    kept, _ = rsnjax.fit(net, target, reset_optimizer=False, **kw)
    diff = max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(jax.tree_util.tree_leaves(reset), jax.tree_util.tree_leaves(kept)))
    assert diff > 1e-4


def test_fit_trains_sampler_only_circuits():
    target = targets.double_peak()
    so = rsnjax.SamplerOnly(1, dynamics="firing_rate", key=jax.random.key(0))
    trained, hist = rsnjax.fit(so, target, sigmas=[0.5, 0.3], steps_per_level=100, batch_size=128,
                               optimizer=optax.adam(1e-2), key=jax.random.key(1), progress=False)
    assert np.all(np.isfinite(hist.loss))
    assert not np.allclose(trained.gamma, so.gamma)


def test_fit_stops_on_a_non_finite_loss_and_returns_the_last_good_model():
    net = ScoreNetwork(1, 8, key=jax.random.key(0))
    with pytest.raises(rsnjax.TrainingDivergedError, match="non-finite") as info:
        rsnjax.fit(net, targets.double_peak(), sigmas=[0.5], steps_per_level=10, optimizer=optax.sgd(1e30),
                   batch_size=8, key=jax.random.key(1), progress=False)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(eqx.filter(info.value.model, eqx.is_array)))


def test_fit_rejects_a_data_source_that_draws_non_finite_points():
    net = ScoreNetwork(1, 8, key=jax.random.key(0))
    with pytest.raises(ValueError, match="`data` drew points"):
        rsnjax.fit(net, lambda k, n: jnp.full((n, 1), jnp.inf), sigmas=[0.5], steps_per_level=10,
                   batch_size=8, key=jax.random.key(1), progress=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sigmas=[0.5, -0.1]), "sigmas"),
        (dict(sigmas=[0.5, 0.0]), "sigmas"),
        (dict(sigmas=[]), "sigmas"),
        (dict(data=np.full((64, 1), np.nan)), "data"),
        (dict(data=np.zeros((64, 3))), "data"),
        (dict(data=np.zeros((10, 1))), "data"),
        (dict(batch_size=0), "batch_size"),
        (dict(steps_per_level=0), "steps_per_level"),
        (dict(key=None), "key"),
        (dict(optimizer="adam"), "optimizer"),
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(data=targets.laplace_x()), "data"),
    ],
)
def test_fit_bad_input_names_the_argument(kwargs, match):
    args = dict(data=np.zeros((64, 1)), sigmas=[0.5], steps_per_level=2, batch_size=16, key=jax.random.key(0), progress=False)
    args.update(kwargs)
    data = args.pop("data")
    with pytest.raises((ValueError, TypeError), match=match):
        rsnjax.fit(ScoreNetwork(1, 8, key=jax.random.key(0)), data, **args)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: rsnjax.geometric_sigmas(0.0, 0.1, 3), "sigma_max"),
        (lambda: rsnjax.geometric_sigmas(1.0, -0.1, 3), "sigma_min"),
        (lambda: rsnjax.geometric_sigmas(1.0, 2.0, 3), "sigma_min"),
        (lambda: rsnjax.geometric_sigmas(1.0, 0.1, 0), "num_levels"),
        (lambda: rsnjax.dsm_loss(lambda x: x, jnp.zeros((4, 1)), 0.0, key=jax.random.key(0)), "sigma"),
        (lambda: rsnjax.dsm_loss(lambda x: x, jnp.array([[jnp.nan]]), 0.1, key=jax.random.key(0)), "x"),
    ],
)
def test_dsm_bad_input(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_steps_per_level_may_differ_between_levels():
    """One int per level: level k runs exactly that many steps (the history says so), the run
    equals the same levels trained one after another, and the default budget is `default_steps`."""
    target = targets.gaussian(jnp.array([1.0, -1.0]), jnp.array([0.5, 2.0]))
    data = np.asarray(target.sample(jax.random.key(0), 640))
    net = ScoreNetwork(2, 16, key=jax.random.key(2))
    common = dict(batch_size=64, key=jax.random.key(1), progress=False, ema_decay=None, confine=None)
    model, history = rsnjax.fit(net, data, sigmas=[0.5, 0.2, 0.1], steps_per_level=[6, 4, 10], **common)
    np.testing.assert_array_equal(history.level, np.repeat([0, 1, 2], [6, 4, 10]))
    np.testing.assert_array_equal(history.steps_per_level, [6, 4, 10])
    assert np.isfinite(history.loss).all() and history.loss.shape == (20,)
    # the per-level loss summary reads each level's own steps: level 1's last quarter is its last step
    assert history.level_loss[1] == history.loss[9]
    assert history.level_loss[2] == pytest.approx(history.loss[-2:].mean())
    # a chunk size must divide every level's steps; the default divides them all
    with pytest.raises(ValueError, match="chunk_size"):
        rsnjax.fit(net, data, sigmas=[0.5, 0.2, 0.1], steps_per_level=[6, 4, 10], chunk_size=4, **common)
    # different steps give a different run (the lengths are used, not ignored)
    other, _ = rsnjax.fit(net, data, sigmas=[0.5, 0.2, 0.1], steps_per_level=[6, 4, 12], **common)
    assert not np.array_equal(np.asarray(other.A), np.asarray(model.A))
    # the default budget: 1000 steps per level, 160 000 at the last
    assert rsnjax.default_steps(3) == [1000, 1000, 160_000]
    assert rsnjax.default_steps(1) == [160_000]


@pytest.mark.parametrize("steps, match", [([5, 5], "one int per level"), ([5, 0, 5], "steps_per_level"),
                                          ([[5, 5, 5]], "one int per level"), ([5, 2.5, 5], "steps_per_level")])
def test_per_level_steps_bad_input(steps, match):
    with pytest.raises((ValueError, TypeError), match=match):
        rsnjax.fit(ScoreNetwork(1, 8, key=jax.random.key(0)), np.zeros((64, 1)), sigmas=[0.5, 0.2, 0.1],
                   steps_per_level=steps, batch_size=16, key=jax.random.key(0), progress=False)
