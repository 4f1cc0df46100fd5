"""Tests of rsnjax.metrics against independent references (NumPy/SciPy formulas, closed forms,
loop-based ports of the published algorithms) and statistical checks with tolerances derived from
the sample sizes. Stand-in targets are defined here; nothing depends on rsnjax.targets."""

from __future__ import annotations

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from rsnjax import metrics

# ----------------------------------------------------------------------------------------------
# Stand-in targets
# ----------------------------------------------------------------------------------------------


def _jit_methods(cls):
    """Compile each method of a stand-in target as one program (op-by-op dispatch of the many
    small operations would compile each of them separately, which dominates short tests)."""
    for name in ("sample", "log_prob", "score", "blurred_score", "component_log_prob"):
        if name in cls.__dict__:
            static = (2,) if name == "sample" else ()
            setattr(cls, name, jax.jit(cls.__dict__[name], static_argnums=(0,) + static))
    cls.__hash__ = object.__hash__
    return cls


@_jit_methods
class Gaussian:
    """N(mean, std² I) with closed-form score and blurred score."""

    def __init__(self, mean, std=1.0):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = float(std)
        self.dim = self.mean.shape[0]

    def sample(self, key, num):
        return self.mean + self.std * jax.random.normal(key, (num, self.dim))

    def log_prob(self, x):
        return jnp.sum(jax.scipy.stats.norm.logpdf(x, self.mean, self.std), axis=-1)

    def score(self, x):
        return -(x - self.mean) / self.std**2

    def blurred_score(self, x, sigma):
        return -(x - self.mean) / (self.std**2 + sigma**2)


@_jit_methods
class PlainGaussian:
    """A target with no blurred score and no components."""

    def __init__(self, dim):
        self.dim = dim

    def sample(self, key, num):
        return jax.random.normal(key, (num, self.dim))

    def log_prob(self, x):
        return -0.5 * jnp.sum(x**2, axis=-1)

    def score(self, x):
        return -x


@_jit_methods
class Mixture:
    """Gaussian mixture with isotropic components N(means[k], stds[k]² I)."""

    def __init__(self, weights, means, stds):
        self.weights = np.asarray(weights, dtype=np.float32)
        self.means = np.asarray(means, dtype=np.float32).reshape(len(self.weights), -1)
        self.stds = np.asarray(stds, dtype=np.float32)
        self.dim = self.means.shape[1]

    def sample(self, key, num):
        kc, kn = jax.random.split(key)
        comp = jax.random.choice(kc, len(self.weights), (num,), p=self.weights)
        means, stds = jnp.asarray(self.means), jnp.asarray(self.stds)
        return means[comp] + stds[comp, None] * jax.random.normal(kn, (num, self.dim))

    def _component_log_prob(self, x, var):
        logpdf = jax.scipy.stats.norm.logpdf(x[:, None, :], self.means, jnp.sqrt(var)[:, None])
        return jnp.log(self.weights) + jnp.sum(logpdf, axis=-1)

    def component_log_prob(self, x):
        return self._component_log_prob(x, self.stds**2)

    def log_prob(self, x):
        return jax.scipy.special.logsumexp(self.component_log_prob(x), axis=-1)

    def _score(self, x, var):
        resp = jax.nn.softmax(self._component_log_prob(x, var), axis=-1)  # (n, K)
        return jnp.einsum("nk,nkd->nd", resp, (self.means - x[:, None, :]) / var[:, None])

    def score(self, x):
        return self._score(x, self.stds**2)

    def blurred_score(self, x, sigma):
        return self._score(x, self.stds**2 + sigma**2)


def _normal(seed, shape, scale=1.0, shift=0.0):
    return (shift + scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _ar1(seed, rho, num_saved, num_chains):
    """Stationary AR(1) chains, layout (num_saved, num_chains, len(rho)); τ = (1+ρ)/(1−ρ)."""
    rho = np.asarray(rho, dtype=np.float64)
    rng = np.random.default_rng(seed)
    eps = rng.standard_normal((num_saved, num_chains, len(rho)))
    x = np.empty_like(eps)
    x[0] = eps[0]
    c = np.sqrt(1 - rho**2)
    for t in range(1, num_saved):
        x[t] = rho * x[t - 1] + c * eps[t]
    return x.astype(np.float32)


#: Every trajectory in the diagnostics tests has this shape, so the diagnostics compile once.
TRAJ_SHAPE = (10_000, 8, 4)
#: AR(1) coefficients of the four coordinates of the shared AR trajectory.
AR_RHO = (0.8, 0.8, -0.4, 0.95)


@functools.lru_cache(maxsize=None)
def _trajectories():
    ar = _ar1(90, AR_RHO, *TRAJ_SHAPE[:2])
    iid = _normal(91, TRAJ_SHAPE)
    offsets = np.array([0.0, 0.5, 1.0, 1.5] * 2, np.float32)[None, :, None]  # chain means, in sd units
    stuck = iid + offsets
    part = iid.copy()
    part[:, :, 1] = stuck[:, :, 1]  # only coordinate 1 stuck
    return {"ar": ar, "iid": iid, "stuck": stuck, "part": part}


# ----------------------------------------------------------------------------------------------
# NumPy references
# ----------------------------------------------------------------------------------------------


def _np_sqdist(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def _np_mmd2(x, y, bandwidths):
    def k(a, b):
        r2 = _np_sqdist(a, b)
        return sum(np.exp(-r2 / (2 * ell**2)) for ell in bandwidths)

    n, m = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return (
        (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
        + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        - 2 * kxy.mean()
    )


def _np_energy(x, y, unbiased):
    n, m = len(x), len(y)
    dxx, dyy, dxy = (np.sqrt(_np_sqdist(a, b)) for a, b in ((x, x), (y, y), (x, y)))
    if unbiased:
        return 2 * dxy.mean() - dxx.sum() / (n * (n - 1)) - dyy.sum() / (m * (m - 1))
    return 2 * dxy.mean() - dxx.mean() - dyy.mean()


def _np_autocov(a):
    n = a.shape[1]
    c = a - a.mean(axis=1, keepdims=True)
    f = np.fft.rfft(c, n=2 * n, axis=1)
    return np.fft.irfft(f * np.conj(f), n=2 * n, axis=1)[:, :n] / n


def _np_ess(ary):
    """Loop-based port of the Stan / ArviZ ``_ess`` (Geyer's initial monotone sequence)."""
    ary = np.asarray(ary, dtype=np.float64)
    if np.max(ary) - np.min(ary) == 0:
        return ary.size
    n_chain, n_draw = ary.shape
    acov = _np_autocov(ary)
    chain_mean = ary.mean(axis=1)
    mean_var = np.mean(acov[:, 0]) * n_draw / (n_draw - 1.0)
    var_plus = mean_var * (n_draw - 1.0) / n_draw
    if n_chain > 1:
        var_plus += np.var(chain_mean, ddof=1)
    rho_hat_t = np.zeros(n_draw)
    rho_hat_even = 1.0
    rho_hat_t[0] = rho_hat_even
    rho_hat_odd = 1.0 - (mean_var - np.mean(acov[:, 1])) / var_plus
    rho_hat_t[1] = rho_hat_odd
    t = 1
    while t < (n_draw - 3) and (rho_hat_even + rho_hat_odd) > 0.0:
        rho_hat_even = 1.0 - (mean_var - np.mean(acov[:, t + 1])) / var_plus
        rho_hat_odd = 1.0 - (mean_var - np.mean(acov[:, t + 2])) / var_plus
        if (rho_hat_even + rho_hat_odd) >= 0:
            rho_hat_t[t + 1] = rho_hat_even
            rho_hat_t[t + 2] = rho_hat_odd
        t += 2
    max_t = t - 2
    if rho_hat_even > 0:
        rho_hat_t[max_t + 1] = rho_hat_even
    t = 1
    while t <= max_t - 2:
        if (rho_hat_t[t + 1] + rho_hat_t[t + 2]) > (rho_hat_t[t - 1] + rho_hat_t[t]):
            rho_hat_t[t + 1] = (rho_hat_t[t - 1] + rho_hat_t[t]) / 2.0
            rho_hat_t[t + 2] = rho_hat_t[t + 1]
        t += 2
    ess = n_chain * n_draw
    tau_hat = -1.0 + 2.0 * np.sum(rho_hat_t[: max_t + 1]) + np.sum(rho_hat_t[max_t + 1 : max_t + 2])
    tau_hat = max(tau_hat, 1 / np.log10(ess))
    return ess / tau_hat


def _np_split(a):
    half = a.shape[1] // 2
    return np.concatenate([a[:, :half], a[:, a.shape[1] - half :]], axis=0)


def _np_z(a):
    r = scipy.stats.rankdata(a, method="average").reshape(a.shape)
    return scipy.stats.norm.ppf((r - 0.375) / (a.size + 0.25))


def _np_rhat_basic(a):
    n = a.shape[1]
    b = n * np.var(a.mean(axis=1), ddof=1)
    w = np.mean(np.var(a, axis=1, ddof=1))
    return np.sqrt((b / w + n - 1) / n)


def _np_diagnostics(traj):
    """Per dim: (rank-normalised split R̂, bulk ESS, tail ESS), trajectory in (steps, chains, d)."""
    out = []
    for k in range(traj.shape[2]):
        a = np.asarray(traj[:, :, k], np.float64).T  # (chains, draws)
        split = _np_split(a)
        rhat = max(_np_rhat_basic(_np_z(split)), _np_rhat_basic(_np_z(np.abs(split - np.median(split)))))
        bulk = _np_ess(_np_z(split))
        lo, hi = np.quantile(a, [0.05, 0.95])
        tail = min(_np_ess(_np_split((a <= lo).astype(float))), _np_ess(_np_split((a <= hi).astype(float))))
        out.append((rhat, bulk, tail))
    return np.array(out)


# ----------------------------------------------------------------------------------------------
# Two-sample distances vs NumPy / SciPy
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [3, 12])  # 12 takes the matmul-expansion path (> 8 dimensions)
def test_mmd_matches_numpy(dim):
    x = _normal(0, (50, dim))
    y = _normal(1, (40, dim), scale=1.3, shift=0.2)
    # one bandwidth with the default (single) block; three bandwidths with blocks of 7 rows, which
    # exercises the padding and the diagonal mask across blocks
    for bw, block in ((1.3, None), ([0.5, 2.0, 4.0], 7)):
        want = _np_mmd2(x, y, np.atleast_1d(bw))
        got = float(metrics.mmd(x, y, bandwidth=bw, block_size=block))
        assert got == pytest.approx(want, abs=2e-6, rel=1e-4)
    # median heuristic: all 90 points are used (< 500 per set), ℓ = median pooled pairwise distance
    z = np.concatenate([x, y])
    ell = np.median(np.sqrt(_np_sqdist(z, z))[np.triu_indices(len(z), 1)])
    assert float(metrics.mmd(x, y)) == pytest.approx(_np_mmd2(x, y, [ell]), abs=2e-6, rel=1e-4)


@pytest.mark.parametrize("dim", [2, 12])
def test_energy_distance_matches_numpy(dim):
    x = _normal(2, (50, dim))
    y = _normal(3, (45, dim), shift=0.3)
    for unbiased in (True, False):
        got = float(metrics.energy_distance(x, y, unbiased=unbiased, block_size=16))
        assert got == pytest.approx(_np_energy(x, y, unbiased), abs=1e-5, rel=1e-4)


def test_energy_distance_v_statistic_is_scipy_squared_in_1d():
    x, y = _normal(4, (60,)), _normal(5, (35,), shift=0.5)
    want = scipy.stats.energy_distance(x, y) ** 2
    assert float(metrics.energy_distance(x, y, unbiased=False)) == pytest.approx(want, rel=1e-4)


def test_wasserstein_1d_matches_scipy():
    x = _normal(6, (37, 3))
    y = _normal(7, (53, 3), scale=2.0, shift=0.4)
    got = np.asarray(metrics.wasserstein_1d(x, y))
    want = [scipy.stats.wasserstein_distance(x[:, k], y[:, k]) for k in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    same = np.asarray(metrics.wasserstein_1d(x, x[::-1] + 1.0))
    np.testing.assert_allclose(same, 1.0, rtol=1e-5)


@settings(max_examples=10, deadline=None)
@given(
    n=st.sampled_from([1, 2, 5, 13, 30]),  # few sizes: examples share compiled programs
    m=st.sampled_from([1, 2, 5, 13, 30]),
    seed=st.integers(0, 1000),
    zeros=st.booleans(),
)
def test_wasserstein_1d_property_vs_scipy(n, m, seed, zeros):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 1)).astype(np.float32) * 3
    y = rng.standard_normal((m, 1)).astype(np.float32)
    if zeros:  # exercise ties, −0.0 and +0.0 in the integer-key sort
        x[: n // 2] = 0.0
        y[: m // 2] = -0.0
    got = float(metrics.wasserstein_1d(x, y)[0])
    assert got == pytest.approx(scipy.stats.wasserstein_distance(x[:, 0], y[:, 0]), rel=1e-5, abs=1e-6)


def test_wasserstein_2_unequal_sizes_vs_quantile_integral():
    x = _normal(8, (31, 1))
    y = _normal(9, (47, 1), scale=1.5)
    t = (np.arange(200_000) + 0.5) / 200_000  # midpoint rule on the piecewise-constant integrand
    qx = np.quantile(x[:, 0], t, method="inverted_cdf")
    qy = np.quantile(y[:, 0], t, method="inverted_cdf")
    want = math.sqrt(np.mean((qx - qy) ** 2))
    # the midpoint rule errs only on the grid cells containing one of the 78 breakpoints
    assert float(metrics.wasserstein_1d(x, y, p=2)[0]) == pytest.approx(want, rel=2e-3)


def test_wasserstein_2_gaussian_closed_form():
    # W2(N(μ1,σ1²), N(μ2,σ2²)) = sqrt((μ1−μ2)² + (σ1−σ2)²) = sqrt(0.25 + 0.25) ≈ 0.707.
    # With n = 100 000 the empirical W2² fluctuates by O(1/sqrt(n)) ≈ 0.003 of the squared
    # scale, i.e. ≈ 0.002 on W2; allow 0.01.
    x = _normal(10, (100_000, 1))
    y = _normal(11, (100_000, 1), scale=1.5, shift=0.5)
    assert float(metrics.wasserstein_1d(x, y, p=2)[0]) == pytest.approx(math.sqrt(0.5), abs=0.01)


def test_sliced_wasserstein_1d_is_exact_w2():
    x, y = _normal(12, (40, 1)), _normal(13, (70, 1), shift=1.0)
    sw = float(metrics.sliced_wasserstein(x, y, key=jax.random.key(0), num_projections=3))
    assert sw == pytest.approx(float(metrics.wasserstein_1d(x, y, p=2)[0]), rel=1e-5)


def test_sliced_wasserstein_gaussian_closed_form():
    # N(0, I) vs N(μ, σ² I) in d = 3, μ = (0.6, 0, 0), σ = 1.5:
    # SW2² = ‖μ‖²/d + (1 − σ)² = 0.12 + 0.25 = 0.37.
    # Errors on SW2²: directions (L = 500): sd of (θ·μ)² is ‖μ‖²·sqrt(2(d−1)/(d²(d+2))) ≈ 0.107
    # per direction, 0.005 over L. Samples (n = 20 000): per direction W2² ≈ Δm² + Δs² with
    # Var(Δm̂²) ≈ 4Δm²(1+σ²)/n and Var(Δŝ²) ≈ 2Δs²(1+σ²)/n, sd ≈ 0.013. Allow 0.045 (> 3 sd).
    x = _normal(14, (20_000, 3))
    y = _normal(15, (20_000, 3), scale=1.5) + np.array([0.6, 0.0, 0.0], np.float32)
    sw = float(metrics.sliced_wasserstein(x, y, key=jax.random.key(1), num_projections=500))
    assert sw**2 == pytest.approx(0.37, abs=0.045)


# ----------------------------------------------------------------------------------------------
# Each two-sample metric separates "same" from "shifted by 0.2 SD"
# ----------------------------------------------------------------------------------------------


def _w1_first(x, y):
    return metrics.wasserstein_1d(x, y)[0]


@pytest.mark.parametrize(
    "metric",
    [metrics.mmd, metrics.energy_distance, metrics.sliced_wasserstein, _w1_first],
    ids=["mmd", "energy", "sliced_w2", "w1"],
)
def test_two_sample_metric_separates_small_shift(metric):
    # n = m = 4000 in d = 2; "slightly different" = mean shift of 0.2 SD in the first coordinate.
    # The floor (exact vs exact, 8 repeats) is the null distribution; the shifted value must lie
    # more than 5 null standard deviations above its mean (it is 11–24 SD above in practice).
    n = 4000
    target = Gaussian([0.0, 0.0])
    floor = metrics.noise_floor(metric, target, key=jax.random.key(20), num=n, repeats=8)
    assert floor.values.shape == (8,)
    x = target.sample(jax.random.key(21), n) + jnp.array([0.2, 0.0])
    y = target.sample(jax.random.key(22), n)
    kw = {"key": jax.random.key(23)} if metric is metrics.sliced_wasserstein else {}
    value = float(metric(x, y, **kw))
    assert value > float(floor.mean) + 5 * float(floor.std)


# ----------------------------------------------------------------------------------------------
# KSD
# ----------------------------------------------------------------------------------------------


def _np_stein_matrix(x, score, c, beta, h=1e-4):
    """u_p(x_i, x_j) from the raw IMQ kernel with central finite differences in float64
    (independent of the hand-derived formula in rsnjax.metrics)."""
    x = np.asarray(x, np.float64)
    s = np.asarray(score(x), np.float64)
    n, d = x.shape

    def k(a, b):  # (n, 1, d), (1, n, d) -> (n, n)
        return (c**2 + ((a - b) ** 2).sum(-1)) ** beta

    a, b = x[:, None, :], x[None, :, :]
    eye = np.eye(d) * h
    grad_x = np.stack([(k(a + eye[i], b) - k(a - eye[i], b)) / (2 * h) for i in range(d)], -1)
    grad_y = np.stack([(k(a, b + eye[i]) - k(a, b - eye[i])) / (2 * h) for i in range(d)], -1)
    trace = sum(
        (k(a + eye[i], b + eye[i]) - k(a + eye[i], b - eye[i]) - k(a - eye[i], b + eye[i])
         + k(a - eye[i], b - eye[i])) / (4 * h * h)
        for i in range(d)
    )
    sx, sy = s[:, None, :], s[None, :, :]
    return k(a, b) * (sx * sy).sum(-1) + (sx * grad_y).sum(-1) + (sy * grad_x).sum(-1) + trace


@pytest.mark.parametrize("dim, c, beta", [(2, 1.0, -0.5), (10, 0.7, -0.3)])  # 10: matmul path
def test_ksd_matches_finite_difference_stein_kernel(dim, c, beta):
    target = Gaussian(np.linspace(-0.5, 0.5, dim), std=1.3)
    x = _normal(30, (30, dim), scale=1.1)
    want = math.sqrt(_np_stein_matrix(x, lambda z: -(z - target.mean) / target.std**2, c, beta).mean())
    got = float(metrics.ksd(x, target.score, c=c, beta=beta, block_size=8))
    assert got == pytest.approx(want, rel=1e-4)


def test_ksd_near_zero_for_exact_samples_and_larger_when_shifted():
    # For exact N(0, I) samples the V-statistic has E[n·KSD²] = E u(x, x) = E‖x‖² + d = 4 (c = 1,
    # β = −1/2, d = 2); the off-diagonal part is a degenerate U-statistic with mean 0 and O(1)
    # spread on the n·KSD² scale. Check the mean over 10 independent sets within 4 standard errors.
    n, reps = 1000, 10
    target = Gaussian([0.0, 0.0])
    exact = np.array(
        [n * float(metrics.ksd(target.sample(jax.random.key(40 + i), n), target.score)) ** 2 for i in range(reps)]
    )
    se = exact.std(ddof=1) / math.sqrt(reps)
    assert abs(exact.mean() - 4.0) < 4 * se + 0.2
    # A 0.2-SD mean shift: n·KSD² grows like n·δ²·E[k] (≈ 20 at n = 1000), far above the null.
    shifted = target.sample(jax.random.key(60), n) + jnp.array([0.2, 0.0])
    value = n * float(metrics.ksd(shifted, target.score)) ** 2
    assert value > exact.mean() + 5 * exact.std(ddof=1)


# ----------------------------------------------------------------------------------------------
# Score error
# ----------------------------------------------------------------------------------------------


def test_score_error_zero_for_true_score_and_closed_form_for_shift():
    target = Gaussian([0.5, -1.0], std=0.8)
    key = jax.random.key(70)
    err = metrics.score_error(target.score, target, key=key, num_samples=2000)
    assert float(err.value) == pytest.approx(0.0, abs=1e-10)
    assert float(err.stderr) == pytest.approx(0.0, abs=1e-10)
    shift = jnp.array([0.3, -0.4])  # ‖shift‖² = 0.25 for every x
    err = metrics.score_error(lambda x: target.score(x) + shift, target, key=key, num_samples=2000)
    assert float(err.value) == pytest.approx(0.25, rel=1e-5)


def test_score_error_monte_carlo_value_and_stderr():
    # Target N(0, I), d = 2, model s(x) = −x/2: e = ‖x‖²/4, E e = d/4 = 0.5, Var e = 2d/16 = 0.25,
    # so stderr = 0.5/sqrt(n). n = 20 000: check the value within 4 stderr, the stderr within 5 %
    # (its relative sampling error is ≈ sqrt((κ−1)/(4n)) ≈ 1 %: ‖x‖² ~ χ²₂ is exponential, κ = 9).
    n = 20_000
    target = Gaussian([0.0, 0.0])
    err = metrics.score_error(lambda x: -x / 2, target, key=jax.random.key(71), num_samples=n)
    assert float(err.stderr) == pytest.approx(0.5 / math.sqrt(n), rel=0.05)
    assert abs(float(err.value) - 0.5) < 4 * float(err.stderr)


def test_score_error_blurred():
    mix = Mixture([0.3, 0.7], [-2.0, 2.0], [0.5, 0.8])
    sigma = 0.6
    key = jax.random.key(72)
    exact = metrics.score_error(lambda x: mix.blurred_score(x, sigma), mix, key=key, num_samples=500, sigma=sigma)
    assert float(exact.value) == pytest.approx(0.0, abs=1e-10)
    # the unblurred score is not the blurred one
    other = metrics.score_error(mix.score, mix, key=key, num_samples=500, sigma=sigma)
    assert float(other.value) > 10 * float(other.stderr)


def test_score_error_errors():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="blurred"):
        metrics.score_error(lambda x: -x, PlainGaussian(2), key=key, num_samples=10, sigma=0.1)
    with pytest.raises(ValueError, match="score_fn"):
        metrics.score_error(lambda x: -x[:, :1], PlainGaussian(2), key=key, num_samples=10)
    with pytest.raises(ValueError, match="score_fn"):
        metrics.score_error(lambda x: x * jnp.nan, PlainGaussian(2), key=key, num_samples=10)
    with pytest.raises(TypeError, match="key"):
        metrics.score_error(lambda x: -x, PlainGaussian(2), key=None, num_samples=10)
    with pytest.raises(ValueError, match="num_samples"):
        metrics.score_error(lambda x: -x, PlainGaussian(2), key=key, num_samples=1)


# ----------------------------------------------------------------------------------------------
# Moments and modes
# ----------------------------------------------------------------------------------------------


def test_mean_and_covariance_error_match_numpy():
    x = _normal(80, (200, 3))
    y = _normal(81, (300, 3), scale=1.2, shift=0.1)
    want_mean = np.linalg.norm(x.mean(0) - y.mean(0))
    want_cov = np.linalg.norm(np.cov(x, rowvar=False) - np.cov(y, rowvar=False))
    assert float(metrics.mean_error(x, y)) == pytest.approx(want_mean, rel=1e-5)
    assert float(metrics.covariance_error(x, y)) == pytest.approx(want_cov, rel=1e-4)
    assert float(metrics.mean_error(x, mean=np.zeros(3))) == pytest.approx(np.linalg.norm(x.mean(0)), rel=1e-5)
    assert float(metrics.covariance_error(x, cov=np.eye(3))) == pytest.approx(
        np.linalg.norm(np.cov(x, rowvar=False) - np.eye(3)), rel=1e-4
    )
    with pytest.raises(ValueError, match="exactly one"):
        metrics.mean_error(x)
    with pytest.raises(ValueError, match="exactly one"):
        metrics.covariance_error(x, y, cov=np.eye(3))
    with pytest.raises(ValueError, match="cov"):
        metrics.covariance_error(x, cov=np.eye(2))


def test_excess_kurtosis_matches_scipy():
    x = _normal(82, (100, 3)) ** 3
    np.testing.assert_allclose(
        metrics.excess_kurtosis(x), scipy.stats.kurtosis(x, axis=0, fisher=True, bias=True), rtol=1e-4
    )


def test_excess_kurtosis_laplace_and_gaussian():
    # Laplace: excess kurtosis 3. Delta-method variance of g2 for a Laplace(b) law, with central
    # moments μ_2k = (2k)! b^2k: n·Var ≈ (μ8−μ4²)/μ2⁴ − 4μ4(μ6−μ2μ4)/μ2⁵ + 4μ4²(μ4−μ2²)/μ2⁶ = 1188.
    # n = 100 000: sd ≈ 0.109; allow 4 sd per marginal. Gaussian: sd = sqrt(24/n) ≈ 0.0155.
    n = 100_000
    lap = np.random.default_rng(83).laplace(size=(n, 2)).astype(np.float32)
    np.testing.assert_allclose(metrics.excess_kurtosis(lap), 3.0, atol=4 * math.sqrt(1188 / n))
    np.testing.assert_allclose(metrics.excess_kurtosis(_normal(84, (n, 2))), 0.0, atol=4 * math.sqrt(24 / n))


def test_mode_weights():
    mix = Mixture([0.3, 0.7], [-3.0, 3.0], [1.0, 1.0])
    exact = metrics.mode_weights(np.array([[-5.0], [-4.0], [4.0], [5.0], [6.0]]), mix)
    np.testing.assert_allclose(exact, [0.4, 0.6])
    # n = 20 000 samples: misassignment ≈ Φ(−3) ≈ 0.0013 per side shifts the weights by < 0.001;
    # the binomial sd is sqrt(0.21/n) ≈ 0.0032; allow 4 sd.
    n = 20_000
    w = metrics.mode_weights(mix.sample(jax.random.key(85), n), mix)
    assert w.shape == (2,)
    np.testing.assert_allclose(w, [0.3, 0.7], atol=4 * math.sqrt(0.21 / n))
    with pytest.raises(ValueError, match="component_log_prob"):
        metrics.mode_weights(np.zeros((3, 2)), PlainGaussian(2))
    with pytest.raises(ValueError, match="samples"):
        metrics.mode_weights(np.zeros((3, 2)), mix)  # dimension 2 vs target.dim 1


# ----------------------------------------------------------------------------------------------
# Chain diagnostics
# ----------------------------------------------------------------------------------------------


def test_diagnostics_match_loop_reference():
    # AR(1) coordinates with ρ = 0.8, antithetic ρ = −0.4 (ESS > S) and ρ = 0.95 with one chain
    # shifted by 2 sd (unmixed), compared with the loop-based port of Stan / ArviZ in float64.
    traj = _trajectories()["ar"].copy()
    traj[:, 0, 3] += 2.0
    want = _np_diagnostics(traj)
    np.testing.assert_allclose(metrics.rhat(traj, per_dim=True), want[:, 0], rtol=1e-4)
    assert float(metrics.rhat(traj)) == pytest.approx(want[:, 0].max(), rel=1e-4)
    np.testing.assert_allclose(metrics.ess(traj), want[:, 1], rtol=2e-3)
    np.testing.assert_allclose(metrics.ess(traj, method="tail"), want[:, 2], rtol=2e-3)
    raw = np.array([_np_ess(_np_split(traj[:, :, k].T)) for k in range(traj.shape[2])])
    np.testing.assert_allclose(metrics.ess(traj, method="raw"), raw, rtol=2e-3)
    np.testing.assert_allclose(metrics.autocorrelation_time(traj), traj[:, :, 0].size / raw, rtol=2e-3)


def test_ess_and_autocorrelation_time_of_ar1():
    # τ = (1+ρ)/(1−ρ): 9 for ρ = 0.8, 3/7 for ρ = −0.4. 8 chains × 10 000 steps (S = 80 000).
    # The relative sd of the windowed estimate is ≈ sqrt(2(2W+1)/S) with window W ≈ 3τ ≈ 27:
    # ≈ 3.7 %, and ≈ 2.6 % for the mean of the two ρ = 0.8 coordinates; allow 4 sd.
    traj = _trajectories()["ar"]
    s = traj[:, :, 0].size
    tau = np.array([(1 + r) / (1 - r) for r in AR_RHO[:3]])
    got = np.asarray(metrics.autocorrelation_time(traj))[:3]
    np.testing.assert_allclose(got, tau, rtol=0.15)
    assert got[:2].mean() == pytest.approx(9.0, rel=0.1)
    bulk = np.asarray(metrics.ess(traj))[:3]  # rank-normalising a Gaussian AR(1) changes little
    np.testing.assert_allclose(bulk, s / tau, rtol=0.15)
    np.testing.assert_allclose(metrics.ess(traj, wall_time=2.0)[:3], bulk / 2.0, rtol=1e-6)
    # independent draws: τ ≈ 1, ESS ≈ S, bulk and tail (relative sd of ESS ≈ 1–2 %; allow 10 %)
    iid = _trajectories()["iid"]
    for method in ("bulk", "tail", "raw"):
        np.testing.assert_allclose(metrics.ess(iid, method=method), s, rtol=0.1)


def test_rhat_mixed_and_stuck_chains():
    # Independent chains: R̂ − 1 is O(1/N) with N = 5000 draws per split chain → R̂ < 1.01.
    t = _trajectories()
    assert float(metrics.rhat(t["iid"])) < 1.01
    # Chains stuck at means 0, 0.5, 1, 1.5 (in units of their own sd): R̂ ≈ sqrt(1 + 0.36) > 1.1.
    per_dim = np.asarray(metrics.rhat(t["stuck"], per_dim=True))
    assert per_dim.shape == (4,) and (per_dim > 1.1).all()
    # only coordinate 1 stuck: the maximum picks it up, the other coordinates stay near 1
    per_dim = np.asarray(metrics.rhat(t["part"], per_dim=True))
    assert float(metrics.rhat(t["part"])) == pytest.approx(per_dim[1]) and per_dim[1] > 1.1
    assert np.delete(per_dim, 1).max() < 1.01


def test_diagnostics_errors():
    with pytest.raises(ValueError, match="trajectory.*4 saved steps"):
        metrics.rhat(np.zeros((3, 4, 2)))
    with pytest.raises(ValueError, match="trajectory.*3 dimensions"):
        metrics.ess(np.zeros((100, 2)))
    bad = _normal(97, (10, 2, 2))
    bad[3, 1, 0] = np.nan
    with pytest.raises(ValueError, match="trajectory.*NaN"):
        metrics.autocorrelation_time(bad)
    with pytest.raises(ValueError, match="method"):
        metrics.ess(_normal(98, (10, 2, 2)), method="median")
    with pytest.raises(ValueError, match="wall_time"):
        metrics.ess(_normal(98, (10, 2, 2)), wall_time=0.0)


# ----------------------------------------------------------------------------------------------
# Argument errors and jit
# ----------------------------------------------------------------------------------------------


def test_two_sample_errors():
    x, y3 = np.zeros((10, 2)), np.ones((10, 3))
    key = jax.random.key(0)
    for fn in (metrics.mmd, metrics.energy_distance, metrics.wasserstein_1d, metrics.mean_error,
               metrics.covariance_error, functools.partial(metrics.sliced_wasserstein, key=key)):
        with pytest.raises(ValueError, match="dimension 3.*dimension 2"):
            fn(x, y3)
    with pytest.raises(ValueError, match="`x` needs at least 2 samples"):
        metrics.mmd(np.zeros((1, 2)), x)
    with pytest.raises(ValueError, match="`y` needs at least 2 samples"):
        metrics.energy_distance(x, np.zeros((1, 2)))
    nan = np.zeros((10, 2))
    nan[2, 1] = np.nan
    with pytest.raises(ValueError, match="`x` contains 1 NaN"):
        metrics.mmd(nan, x)
    with pytest.raises(ValueError, match="`y` contains 1 NaN"):
        metrics.wasserstein_1d(x, nan)
    with pytest.raises(ValueError, match="`samples` contains"):
        metrics.ksd(nan, lambda z: -z)
    with pytest.raises(ValueError, match="bandwidth"):
        metrics.mmd(x, x, bandwidth=-1.0)
    with pytest.raises(ValueError, match="max_samples"):
        metrics.mmd(x, x, max_samples=1)
    with pytest.raises(TypeError, match="key"):
        metrics.sliced_wasserstein(x, x, key=None)
    with pytest.raises(ValueError, match="beta"):
        metrics.ksd(x, lambda z: -z, beta=0.5)
    with pytest.raises(ValueError, match="score_fn"):
        metrics.ksd(x, lambda z: z[:, 0])
    with pytest.raises(ValueError, match="samples.*3 dimensions|samples.*1 or 2"):
        metrics.excess_kurtosis(np.zeros((2, 2, 2)))


def test_jit_and_subsampling():
    x = _normal(100, (300, 2))
    y = _normal(101, (250, 2), shift=0.3)
    np.testing.assert_allclose(jax.jit(metrics.mmd)(x, y), metrics.mmd(x, y), rtol=1e-5)
    f = jax.jit(functools.partial(metrics.ksd, score_fn=lambda z: -z))
    np.testing.assert_allclose(f(x), metrics.ksd(x, lambda z: -z), rtol=1e-5)
    # max_samples: evenly spaced rows without a key, a random subset with one
    idx_x = np.round(np.linspace(0, 299, 250)).astype(int)
    np.testing.assert_allclose(metrics.mmd(x, y, max_samples=250), metrics.mmd(x[idx_x], y), rtol=1e-5)
    a = metrics.mmd(x, y, max_samples=250, key=jax.random.key(1))
    b = metrics.mmd(x, y, max_samples=250, key=jax.random.key(2))
    assert float(a) != float(b)


def test_noise_floor_vector_metric_and_key_passing():
    target = Gaussian([0.0, 0.0, 0.0])
    floor = metrics.noise_floor(metrics.wasserstein_1d, target, key=jax.random.key(3), num=50,
                                num_reference=60, repeats=4)
    assert floor.values.shape == (4, 3) and floor.mean.shape == (3,) and floor.std.shape == (3,)
    assert (np.asarray(floor.std) > 0).all()
    seen = []

    def metric(x, y, *, key):
        seen.append((x.shape, y.shape, key))
        return metrics.sliced_wasserstein(x, y, key=key)

    floor = metrics.noise_floor(metric, target, key=jax.random.key(4), num=50, num_reference=60, repeats=3)
    assert [s[:2] for s in seen] == [((50, 3), (60, 3))] * 3
    assert len({str(jax.random.key_data(s[2])) for s in seen}) == 3


# ----------------------------------------------------------------------------------------------
# evaluate and format_table
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow  # compiles every metric for new shapes: ≈ 6–8 s on 2 cores
def test_evaluate_mixture_all_metrics():
    means = np.array([[-2.0, 0.0, 0.0, 1.0], [2.0, 0.0, 1.0, 0.0]])
    mix = Mixture([0.4, 0.6], means, [0.6, 0.8])
    x = mix.sample(jax.random.key(110), 400) * 1.05
    ref = mix.sample(jax.random.key(111), 500)
    traj = _trajectories()["ar"]
    res = metrics.evaluate(
        x, mix, key=jax.random.key(113), reference_samples=ref, trajectory=traj, wall_time=2.0,
        score_fn=mix.score, noise_floor_repeats=2, score_error_samples=400,  # shapes as the floors
    )
    json.dumps(res)
    expected = {
        "mean_error", "covariance_error", "mmd2", "energy_distance", "sliced_w2", "w1", "ksd",
        "excess_kurtosis", "excess_kurtosis_reference", "mode_weights", "mode_weights_reference",
        "score_error", "score_error_stderr", "rhat", "rhat_per_dim", "ess_bulk", "ess_tail",
        "autocorrelation_time", "ess_bulk_per_second", "ess_tail_per_second", "mmd2_floor",
        "mmd2_floor_std", "ksd_floor", "w1_floor_std",
    }
    assert expected <= set(res)
    assert res["num_samples"] == 400 and res["num_reference"] == 500 and res["dim"] == 4
    assert res["w1"] == pytest.approx(np.asarray(metrics.wasserstein_1d(x, ref)).tolist(), rel=1e-6)
    z = np.concatenate([x, ref])  # 400 + 500 points: the median heuristic uses all of them
    ell = np.median(np.sqrt(_np_sqdist(z, z))[np.triu_indices(len(z), 1)])
    assert res["mmd2"] == pytest.approx(_np_mmd2(x, ref, [ell]), rel=1e-4, abs=1e-6)
    # float32: the within/between terms are ≈ 3, so absolute rounding errors are ≈ 1e-6
    assert res["energy_distance"] == pytest.approx(_np_energy(x, ref, True), rel=1e-4, abs=2e-5)
    assert res["ksd"] == pytest.approx(float(metrics.ksd(x, mix.score)), rel=1e-5)
    assert res["mode_weights"] == pytest.approx(np.asarray(metrics.mode_weights(x, mix)).tolist())
    assert res["score_error"] == pytest.approx(0.0, abs=1e-10)
    assert res["rhat_per_dim"] == pytest.approx(np.asarray(metrics.rhat(traj, per_dim=True)).tolist())
    assert res["ess_bulk_per_second"][0] == pytest.approx(res["ess_bulk"][0] / 2.0)
    assert isinstance(res["w1_floor"], list) and len(res["w1_floor"]) == 4

    table = metrics.format_table(res)
    lines = table.strip().splitlines()
    assert lines[0] == "| metric | value | noise floor |" and lines[1] == "|---|---|---|"
    assert all(line.startswith("| ") and line.endswith(" |") for line in lines[2:])
    mmd_row = next(line for line in lines if line.startswith("| mmd2 |"))
    assert "±" in mmd_row
    assert not any(line.startswith("| mmd2_floor") for line in lines)
    multi = metrics.format_table({"rsn": {"mmd2": 0.1, "w1": [1.0, 2.0]}, "so": {"mmd2": 0.2}})
    assert multi.splitlines()[0] == "| metric | rsn | so |"
    assert "| w1 | [1, 2] | — |" in multi


def test_evaluate_without_target_and_errors():
    # the shapes of the separation tests (4000 × 4000, d = 2): sliced W2 and W1 are compiled already
    x, ref = _normal(120, (4000, 2)), _normal(121, (4000, 2))
    res = metrics.evaluate(x, None, key=jax.random.key(0), reference_samples=ref)
    assert "mmd2" in res and "ksd" not in res and "mmd2_floor" not in res and "mode_weights" not in res
    x = x[:100]
    with pytest.raises(ValueError, match="reference_samples.*dimension 3"):
        metrics.evaluate(x, None, key=jax.random.key(0), reference_samples=_normal(1, (10, 3)))
    with pytest.raises(ValueError, match="samples.*target.dim"):
        metrics.evaluate(x, PlainGaussian(3), key=jax.random.key(0))
    with pytest.raises(ValueError, match="trajectory"):
        metrics.evaluate(x, PlainGaussian(2), key=jax.random.key(0), trajectory=np.zeros((3, 5, 2)),
                         noise_floor_repeats=0)
    with pytest.raises(ValueError, match="target.*reference_samples"):
        metrics.evaluate(x, None, key=jax.random.key(0))


class _NotAMixture:
    """A target whose ``component_log_prob`` exists but raises ``NotImplementedError``."""

    dim = 2

    def component_log_prob(self, x):
        raise NotImplementedError


class _BrokenMixture:
    """A target whose ``component_log_prob`` returns the wrong shape (a bug in the target)."""

    dim = 2

    def component_log_prob(self, x):
        return jnp.zeros((x.shape[0] + 1, 2))


def test_evaluate_skips_only_non_mixtures():
    # "not a mixture" leaves `mode_weights` out; a broken `component_log_prob` is reported,
    # not silently dropped (it used to be swallowed by `except ValueError: pass`)
    x, ref = _normal(130, (50, 2)), _normal(131, (50, 2))
    res = metrics.evaluate(x, _NotAMixture(), key=jax.random.key(0), reference_samples=ref,
                           noise_floor_repeats=0)
    assert "mode_weights" not in res and res["num_samples"] == 50
    with pytest.raises(ValueError, match="component_log_prob.*shape"):
        metrics.evaluate(x, _BrokenMixture(), key=jax.random.key(0), reference_samples=ref,
                         noise_floor_repeats=0)


@pytest.mark.slow
def test_evaluate_10k_by_10k_runs():
    # 10 000 × 10 000 pairs in d = 2 with the blocked sums (no timing assertion here; see the
    # benchmarks for speed).
    target = Gaussian([0.0, 0.0])
    x = target.sample(jax.random.key(130), 10_000) + jnp.array([0.1, 0.0])
    res = metrics.evaluate(x, target, key=jax.random.key(131), noise_floor_repeats=1)
    assert res["num_samples"] == res["num_reference"] == 10_000
    assert all(np.isfinite(res[k]) for k in ("mmd2", "energy_distance", "sliced_w2", "ksd", "mmd2_floor"))
    assert res["mmd2"] > res["mmd2_floor"]


def test_frechet_distance_matches_the_gaussian_closed_form():
    # Gaussians N(m1, C1), N(m2, C2) with commuting covariances: FD = |m1 − m2|² + Σ (√λ1 − √λ2)²
    rng = np.random.default_rng(5)
    n, d = 200_000, 3
    m1, m2 = np.zeros(d), np.array([1.0, -0.5, 0.25])
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([1.5, 1.0, 0.5])
    x = m1 + rng.standard_normal((n, d)) * s1
    y = m2 + rng.standard_normal((n, d)) * s2
    exact = np.sum((m1 - m2) ** 2) + np.sum((s1 - s2) ** 2)
    got = metrics.frechet_distance(x, y)
    # sampling error of means and variances at n = 2e5: ≈ 0.01 on these scales
    assert abs(got - exact) < 0.03, (got, exact)
    assert metrics.frechet_distance(x, x) < 1e-9
    with pytest.raises(ValueError, match="`y`"):
        metrics.frechet_distance(x, y[:, :2])
