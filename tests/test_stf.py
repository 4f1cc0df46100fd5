"""The stable target field (`rsnjax.stable_target`, `fit`'s ``stable_target`` and ``broad_noise``):
the exact blurred score, the same score as DSM's target with a lower variance, the C++ kernel
path against XLA, checkpoints and bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rsnjax
from rsnjax import ConditionalScoreNetwork, ScoreNetwork, _dsm_kernel, fit, geometric_sigmas, targets
from rsnjax.checkpoint import CheckpointError
from rsnjax.training import _stable_target_inputs

EPS = float(np.finfo(np.float32).eps)
needs_kernel = pytest.mark.skipif(not _dsm_kernel.available(),
                                  reason=f"C++ DSM kernel not built: {_dsm_kernel.unavailable_reason()}")


def _blurred_log_density(points, data, sigma):
    """log Σ_j exp(−‖z − x_j‖²/2σ²) in float64 NumPy (the blurred empirical density up to a constant)."""
    sq = np.sum((points[:, None, :] - data[None, :, :]) ** 2, axis=-1)
    logits = -sq / (2 * sigma**2)
    top = logits.max(axis=1, keepdims=True)
    return (top + np.log(np.sum(np.exp(logits - top), axis=1, keepdims=True)))[:, 0]


@pytest.mark.parametrize("dim, sigma", [(1, 0.05), (2, 0.3), (3, 1.0), (6, 0.7)])  # 6 > SMALL_DIM
def test_with_the_whole_data_set_it_is_the_blurred_empirical_score(dim, sigma):
    """With every data row as reference, t is the exact score of the data blurred by N(0, σ² I):
    compared with central differences of the blurred log-density in float64."""
    rng = np.random.default_rng(dim)
    data = rng.normal(size=(40, dim)) * rng.uniform(0.5, 2.0, dim)
    noisy = data[:9] + sigma * rng.normal(size=(9, dim))
    got = np.asarray(rsnjax.stable_target(jnp.asarray(noisy, jnp.float32),
                                          jnp.asarray(data, jnp.float32), sigma), np.float64)
    h = 1e-5 * sigma
    want = np.stack([(_blurred_log_density(noisy + h * e, data, sigma)
                      - _blurred_log_density(noisy - h * e, data, sigma)) / (2 * h)
                     for e in np.eye(dim)], axis=-1)
    # float32 rounding of (weighted mean − x̃)/σ²: a few ulps of the coordinates' size over σ²
    scale = np.max(np.abs(data)) / sigma**2
    np.testing.assert_allclose(got, want, rtol=0, atol=64 * EPS * scale)
    assert np.max(np.abs(want)) > 100 * 64 * EPS * scale  # not a comparison of zeros


def _targets_pair(key, data, sigma, batch, reference_rows):
    """For one batch: (x̃, STF target, DSM target −ε/σ), with the reference rows as `fit` forms
    them (the batch's own rows and reference_rows − batch random data rows)."""
    k_rows, k_noise, k_ref = jax.random.split(key, 3)
    x = data[jax.random.choice(k_rows, data.shape[0], (batch,), replace=False)]
    eps = jax.random.normal(k_noise, x.shape)
    noisy = x + sigma * eps
    reference = jnp.concatenate([x, data[jax.random.randint(k_ref, (reference_rows - batch,), 0, data.shape[0])]])
    return noisy, rsnjax.stable_target(noisy, reference, sigma), -eps / sigma


def test_same_score_as_the_dsm_target_with_a_lower_variance():
    """Both targets estimate the blurred score s_σ, so E[t(x̃) g(x̃)] = E[−ε/σ · g(x̃)] = E[s_σ g]
    for any g; by parts, E[s_σ(x̃) x̃] = −1 and E[s_σ(x̃) x̃³] = −3 E[x̃²] for any 1-D density.
    Checked on a skewed bimodal data set within 4 standard errors of the sample, and the STF
    values vary far less than DSM's."""
    rng = np.random.default_rng(0)
    n = 20_000
    mode = rng.random(n) < 0.3
    data = jnp.asarray(np.where(mode, -1.5 + 0.2 * rng.normal(size=n), 0.8 + 0.5 * rng.normal(size=n))[:, None],
                       jnp.float32)
    sigma = 0.05
    draws = [_targets_pair(k, data, sigma, 256, 2048) for k in jax.random.split(jax.random.key(1), 40)]
    noisy = np.concatenate([np.asarray(d[0], np.float64) for d in draws])[:, 0]
    stf = np.concatenate([np.asarray(d[1], np.float64) for d in draws])[:, 0]
    dsm = np.concatenate([np.asarray(d[2], np.float64) for d in draws])[:, 0]
    m = noisy.size
    for g, expected in ((noisy, -1.0), (noisy**3, -3.0 * np.mean(noisy**2))):
        for values in (stf * g, dsm * g):
            assert abs(values.mean() - expected) <= 4 * values.std() / np.sqrt(m), (values.mean(), expected)
        # the STF estimate is the sharper one (its spread includes the score's own spread over x̃)
        assert (stf * g).std() < 0.3 * (dsm * g).std()
    assert np.var(stf) < 0.05 * np.var(dsm)  # DSM's variance is 1/σ² = 400 per coordinate
    assert np.var(dsm) == pytest.approx(1 / sigma**2, rel=0.05)


def _xla_stf_loss_and_grad(net, noisy, target):
    params, static = eqx.partition(net, eqx.is_inexact_array)

    def loss(p):
        return 0.5 * jnp.mean(jnp.sum((eqx.combine(p, static)(noisy) - target) ** 2, axis=-1))

    return jax.value_and_grad(loss)(params)


@needs_kernel
@pytest.mark.parametrize("dim", [1, 2, 4])
def test_the_kernel_path_gives_the_stf_loss_and_gradient(monkeypatch, dim):
    """`fit` passes the target t as ε' = −σ t at x' = x̃ − σ ε' to the DSM step
    (`training._stable_target_inputs`): with the C++
    kernels and with XLA (RSNJAX_KERNEL=0) that is the loss ½ mean ‖s(x̃) − t‖² and its gradient
    (reference: autodiff through the model's own call, XLA)."""
    net = ScoreNetwork(dim, 157, key=jax.random.key(dim))
    net = eqx.tree_at(lambda m: m.A, net, 3.0 * net.A)
    kx, ke, kr = jax.random.split(jax.random.key(10 + dim), 3)
    sigma = 0.2
    x = jax.random.normal(kx, (64, dim), jnp.float32)
    noisy = x + sigma * jax.random.normal(ke, x.shape, jnp.float32)
    reference = jnp.concatenate([x, jax.random.normal(kr, (192, dim), jnp.float32)])
    t = rsnjax.stable_target(noisy, reference, sigma)
    shifted, noise = _stable_target_inputs(x, (noisy - x) / sigma, sigma, reference)
    ref_loss, ref_grads = _xla_stf_loss_and_grad(net, noisy, t)
    assert _dsm_kernel.applies_to(net, shifted)
    results = {"kernel": rsnjax.dsm_value_and_grad(net, shifted, noise, sigma)}
    monkeypatch.setenv("RSNJAX_KERNEL", "0")
    assert not _dsm_kernel.applies_to(net, shifted)
    results["xla"] = rsnjax.dsm_value_and_grad(net, shifted, noise, sigma)
    for loss, grads in results.values():
        # x' + σε' recovers x̃ up to float32 rounding of |x'|, which the residual sees unscaled
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-4)
        for name in ("A", "B", "b"):
            got, want = np.asarray(getattr(grads, name)), np.asarray(getattr(ref_grads, name))
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.max(np.abs(want)))


def _stf_fit(data, **kwargs):
    net = ScoreNetwork(2, 61, key=jax.random.key(1))
    options = dict(sigmas=geometric_sigmas(1.0, 0.1, 2), key=jax.random.key(0), steps_per_level=100,
                   batch_size=32, optimizer=optax.adam(1e-3), progress=False, stable_target=256)
    options.update(kwargs)
    return fit(net, data, **options)


DATA = np.asarray(targets.ring_of_gaussians().sample(jax.random.key(4), 3000), np.float32)


@pytest.mark.slow
@needs_kernel
def test_fit_with_stable_target_kernel_matches_xla(monkeypatch):
    """A short `fit` with the stable target and a broad proposal (EMA, antithetic pairs and the
    far-field penalty on) on the kernels and on XLA: the same parameters up to rounding, and
    not those of plain DSM."""
    net_k, hist_k = _stf_fit(DATA, broad_noise=(0.5, 3.0))
    monkeypatch.setenv("RSNJAX_KERNEL", "0")
    net_x, hist_x = _stf_fit(DATA, broad_noise=(0.5, 3.0))
    tol = 16 * EPS * np.sqrt(32 * 61) * np.sqrt(200)
    for name in ("A", "B", "b"):
        got, ref = np.asarray(getattr(net_k, name)), np.asarray(getattr(net_x, name))
        np.testing.assert_allclose(got, ref, rtol=0, atol=tol * np.max(np.abs(ref)))
    np.testing.assert_allclose(hist_k.loss, hist_x.loss, rtol=tol)
    plain, hist_p = _stf_fit(DATA, stable_target=None)
    assert np.max(np.abs(np.asarray(plain.A) - np.asarray(net_x.A))) > 100 * tol * np.max(np.abs(plain.A))
    # the STF loss is the much smaller ½‖s − t‖² (DSM's is ≈ d/2σ² at small σ)
    _, hist_s = _stf_fit(DATA)
    assert np.mean(hist_s.loss[-50:]) < 0.5 * np.mean(hist_p.loss[-50:])


def test_broad_noise_scales_the_noise_of_some_rows_only():
    """A broad scale of 1 is bitwise the plain stable target; a scale of 3 changes the run; and
    tail weights, the penalty and the EMA work with both options on."""
    base, _ = _stf_fit(DATA, steps_per_level=20)
    same, _ = _stf_fit(DATA, steps_per_level=20, broad_noise=(0.5, 1.0))
    broad, _ = _stf_fit(DATA, steps_per_level=20, broad_noise=(0.25, 3.0))
    for name in ("A", "B", "b"):
        np.testing.assert_array_equal(getattr(same, name), getattr(base, name))
    assert not np.array_equal(np.asarray(broad.A), np.asarray(base.A))
    weighted, hist = _stf_fit(DATA, steps_per_level=20, broad_noise=(0.25, 3.0), tail_weight=2.0,
                              antithetic=False)
    assert np.all(np.isfinite(hist.loss)) and np.all(np.isfinite(np.asarray(weighted.A)))


def test_resume_with_stable_target_is_bit_identical_and_checks_the_options(tmp_path):
    whole, _ = _stf_fit(DATA, steps_per_level=20, chunk_size=10, broad_noise=(0.25, 3.0))
    _stf_fit(DATA, steps_per_level=20, chunk_size=10, broad_noise=(0.25, 3.0), checkpoint_dir=tmp_path,
             max_chunks=3)
    resumed, _ = _stf_fit(DATA, steps_per_level=20, chunk_size=10, broad_noise=(0.25, 3.0),
                          checkpoint_dir=tmp_path, resume=True)
    for name in ("A", "B", "b"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(whole, name))
    with pytest.raises(CheckpointError, match="differs in: stable_target"):
        _stf_fit(DATA, steps_per_level=20, chunk_size=10, stable_target=512, broad_noise=(0.25, 3.0),
                 checkpoint_dir=tmp_path, resume=True, max_chunks=0)
    with pytest.raises(CheckpointError, match="differs in: broad_noise"):
        _stf_fit(DATA, steps_per_level=20, chunk_size=10, broad_noise=(0.5, 3.0),
                 checkpoint_dir=tmp_path, resume=True, max_chunks=0)
    with pytest.raises(CheckpointError, match="differs in: broad_noise, stable_target"):
        _stf_fit(DATA, steps_per_level=20, chunk_size=10, stable_target=None,
                 checkpoint_dir=tmp_path, resume=True, max_chunks=0)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(stable_target=16), ValueError, r"`stable_target` \(reference rows K\) must be at least `batch_size` \(32\)"),
    (dict(stable_target=256.0), TypeError, "`stable_target` must be an integer"),
    (dict(stable_target=0), ValueError, "`stable_target` must be at least 1"),
    (dict(stable_target=None, broad_noise=(0.5, 3.0)), ValueError, "`broad_noise` needs `stable_target`"),
    (dict(broad_noise=3.0), TypeError, r"`broad_noise` must be a pair \(fraction, scale\)"),
    (dict(broad_noise=(0.5, 3.0, 1.0)), TypeError, r"`broad_noise` must be a pair"),
    (dict(broad_noise=(0.0, 3.0)), ValueError, r"`broad_noise`'s fraction must be in \(0, 1\], got 0.0"),
    (dict(broad_noise=(1.5, 3.0)), ValueError, r"`broad_noise`'s fraction must be in \(0, 1\]"),
    (dict(broad_noise=(0.5, 0.5)), ValueError, "`broad_noise`'s scale must be ≥ 1"),
    (dict(broad_noise=(0.5, float("nan"))), TypeError, "finite numbers"),
    (dict(broad_noise=(0.5, "3")), TypeError, "finite numbers"),
])
def test_bad_options_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        _stf_fit(DATA, max_chunks=0, **kwargs)


def test_stable_target_needs_array_data_and_an_unconditional_model():
    with pytest.raises(ValueError, match="`stable_target` needs `data` as an array.*got target data"):
        fit(ScoreNetwork(2, 8, key=jax.random.key(0)), targets.ring_of_gaussians(), key=jax.random.key(0),
            stable_target=256, max_chunks=0, progress=False)
    with pytest.raises(ValueError, match="got callable data"):
        fit(ScoreNetwork(2, 8, key=jax.random.key(0)), lambda k, n: jax.random.normal(k, (n, 2)),
            key=jax.random.key(0), stable_target=256, max_chunks=0, progress=False)
    pairs = (DATA, DATA[:, :1])
    with pytest.raises(ValueError, match="got a conditional model"):
        fit(ConditionalScoreNetwork(2, 1, 8, key=jax.random.key(0)), pairs, key=jax.random.key(0),
            stable_target=256, max_chunks=0, progress=False)


def test_stable_target_function_checks_its_input():
    x = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="`reference` must have last axis of size 2"):
        rsnjax.stable_target(x, jnp.zeros((5, 3)), 0.1)
    with pytest.raises(ValueError, match="`noisy` must have 2 dimensions"):
        rsnjax.stable_target(jnp.zeros(4), jnp.zeros((5, 1)), 0.1)
    with pytest.raises(ValueError, match="`sigma`"):
        rsnjax.stable_target(x, jnp.zeros((5, 2)), -1.0)
    with pytest.raises(ValueError, match="`reference` needs at least 1 rows"):
        rsnjax.stable_target(x, jnp.zeros((0, 2)), 0.1)


@pytest.mark.parametrize("antithetic", [True, False])
def test_each_row_is_in_its_own_reference_batch(antithetic):
    """At a σ far below the distance between data rows, the softmax puts all its weight on the
    row x̃ was drawn from, so the stable target is DSM's −ε/σ: the first step's loss (same initial
    parameters) equals plain DSM's up to the rounding of (x − x̃)/σ². Without the row itself in
    the reference batch, the target would point to other rows, ~|Δx|/σ² away."""
    sigma = 1e-4
    options = dict(sigmas=[sigma], steps_per_level=4, chunk_size=4, antithetic=antithetic, stable_target=32)
    _, stf = _stf_fit(DATA, **options)
    _, plain = _stf_fit(DATA, **{**options, "stable_target": None})
    assert plain.loss[0] == pytest.approx(1 / sigma**2, rel=0.3)  # ½ E‖ε‖²/σ² with d = 2
    rounding = 8 * EPS * np.max(np.abs(DATA)) / sigma  # relative rounding of x − x̃
    np.testing.assert_allclose(stf.loss[0], plain.loss[0], rtol=rounding)


def test_a_broad_row_leaves_its_own_row_out_of_its_references():
    """At a tiny σ with every row broad (noise 2σ): with its own row among the references the
    target would be (x − x̃)/σ² = −2ε/σ (first loss ≈ 4 × DSM's ≈ 4/σ²); left out, it points to
    the nearest other data row, |Δx| ≫ σ away (first loss ≫ 1/σ²)."""
    sigma = 1e-4
    _, hist = _stf_fit(DATA, sigmas=[sigma], steps_per_level=4, chunk_size=4, stable_target=32,
                       broad_noise=(1.0, 2.0))
    assert hist.loss[0] > 1e4 / sigma**2
