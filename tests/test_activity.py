"""`rsnjax.activity` against closed forms: an Ornstein–Uhlenbeck population with known mean,
variance, correlation and autocorrelation time.

The population: K neurons, x(t) = μ + s(t) + y(t), y a stationary OU process with covariance
C = σ²((1 − c)I + c 11ᵀ) and time constant τ, sampled exactly every dt (y' = φy + √(1 − φ²) L ξ,
φ = e^(−dt/τ), LLᵀ = C) in R independent chains; s(t) an optional signal shared by every chain
(the "stimulus": it must not enter noise correlations or Fano factors).

Standard errors (N = R·T samples, 2τ_rec = (1 + φ)/(1 − φ) ≈ 10 records between independent ones):
mean σ√(2τ_rec/N), variance σ²√(2(1 + φ²)/(1 − φ²)/N), ρ(k) √(2τ_rec/N), integrated time
τ√(2(2M + 1)/N) with M ≈ 5τ/dt (Sokal), a trial variance √(2/R) relative, a correlation
(1 − c²)/√R per time point. Every check allows 5 of them.
"""

import math

import jax
import numpy as np
import pytest

from rsnjax import activity

R, T, K, MU, SIGMA, C, DT, TAU = 400, 400, 12, 3.0, 1.0, 0.3, 0.5, 2.5
PHI = math.exp(-DT / TAU)
N = R * T
TAU_REC = (1 + PHI) / (1 - PHI)  # 2 × integrated time in records


def ou_population(seed, signal=None):
    rng = np.random.default_rng(seed)
    cov = SIGMA**2 * ((1 - C) * np.eye(K) + C)
    chol = np.linalg.cholesky(cov)
    y = rng.standard_normal((R, K)) @ chol.T
    out = np.empty((R, T, K))
    for t in range(T):
        out[:, t] = y
        y = PHI * y + math.sqrt(1 - PHI**2) * rng.standard_normal((R, K)) @ chol.T
    out += MU
    if signal is not None:
        out += signal[None, :, None]
    return out.astype(np.float32)


@pytest.fixture(scope="module")
def population():
    return ou_population(0)


@pytest.fixture(scope="module")
def driven():
    """The same population with a strong shared signal s(t) (amplitude 2σ, period 40 records)."""
    return ou_population(1, signal=2 * SIGMA * np.sin(2 * np.pi * np.arange(T) / 40))


def test_mean_and_variance(population):
    mean, var = activity.mean_and_variance(population)
    assert mean.shape == var.shape == (K,)
    np.testing.assert_array_less(np.abs(np.asarray(mean) - MU), 5 * SIGMA * math.sqrt(TAU_REC / N))
    se_var = SIGMA**2 * math.sqrt(2 * (1 + PHI**2) / (1 - PHI**2) / N)
    np.testing.assert_array_less(np.abs(np.asarray(var) - SIGMA**2), 5 * se_var)


def test_autocorrelation_function_and_time(population):
    rho = np.asarray(activity.autocorrelation(population, 20))
    assert rho.shape == (21, K)
    np.testing.assert_allclose(rho[0], 1.0, rtol=1e-5)
    np.testing.assert_array_less(np.abs(rho - PHI ** np.arange(21)[:, None]), 5 * math.sqrt(TAU_REC / N))
    tau = np.asarray(activity.autocorrelation_time(population, max_lag=60, dt=DT))
    # the trapezoid of ρ(k) = φᵏ: dt(1 + φ)/(2(1 − φ)) = τ + O(dt²/τ); window M ≈ 5τ/dt
    expected = DT * (1 + PHI) / (2 * (1 - PHI))
    se = expected * math.sqrt(2 * (2 * 5 * TAU / DT + 1) / N)
    truncation = math.exp(-5) * expected
    np.testing.assert_array_less(np.abs(tau - expected), 5 * se + truncation)
    # the neurons' estimates are nearly independent: their mean is √K times more precise
    assert abs(tau.mean() - expected) < 5 * se / math.sqrt(K) + truncation


def test_participation_ratio(population):
    # eigenvalues of C: σ²(1 − c + Kc) once, σ²(1 − c) K − 1 times
    expected = K**2 / ((1 - C + K * C) ** 2 + (K - 1) * (1 - C) ** 2)
    pr = float(activity.participation_ratio(population))
    # dominated by the top eigenvalue's relative SE √(2τ_rec/N), entering tr(C²) twice
    assert abs(pr - expected) < 5 * expected * 2 * math.sqrt(TAU_REC / N)
    # the covariance it is computed from
    cov = np.asarray(activity.covariance(population))
    se_var = SIGMA**2 * math.sqrt(2 * (1 + PHI**2) / (1 - PHI**2) / N)
    np.testing.assert_allclose(cov, SIGMA**2 * ((1 - C) * np.eye(K) + C), rtol=0, atol=5 * se_var)


@pytest.mark.parametrize("window", [1, 10])
def test_noise_correlations_ignore_the_shared_signal(driven, window):
    corr = np.asarray(activity.noise_correlations(driven, window=window))
    assert corr.shape == (K, K)
    np.testing.assert_allclose(np.diag(corr), 1.0, rtol=1e-5)
    pairs = np.asarray(activity.pairwise(corr))
    assert pairs.shape == (K * (K - 1) // 2,)
    # one window's correlation has SE (1 − c²)/√R; windows (or ~2τ_rec records) are independent
    independent = T // max(window, int(TAU_REC))
    assert abs(pairs.mean() - C) < 5 * (1 - C**2) / math.sqrt(R * independent)


def test_fano_factor_of_window_counts(driven):
    w = 10
    ff = np.asarray(activity.fano_factor(driven, w, dt=DT))
    assert ff.shape == (T // w, K)
    # Λ = dt Σ x over w records: Var Λ = σ² dt² (w + 2 Σ_k (w − k) φᵏ), E Λ = dt Σ (μ + s(t))
    var = SIGMA**2 * DT**2 * (w + 2 * sum((w - k) * PHI**k for k in range(1, w)))
    signal = 2 * SIGMA * np.sin(2 * np.pi * np.arange(T) / 40)
    mean = DT * (w * MU + signal.reshape(-1, w).sum(1))
    expected = var / mean  # one per window: the shared signal changes the mean only
    rel = ff / expected[:, None]
    # a trial variance has relative SE √(2/R); averaged over T/w nearly independent windows
    np.testing.assert_allclose(rel.mean(0), 1.0, atol=5 * math.sqrt(2 / R) / math.sqrt(T // w) * 1.5)
    spikes = np.asarray(activity.fano_factor(driven, w, dt=DT, spiking=True))
    np.testing.assert_allclose(spikes, ff + 1.0, rtol=1e-6)
    counts = np.asarray(activity.window_counts(driven[:, :15], w, dt=DT))
    np.testing.assert_allclose(counts[:, 0], DT * driven[:, :10].sum(1), rtol=1e-5)
    assert counts.shape == (R, 1, K)


def test_the_functions_are_jittable(population):
    small = population[:50, :100]
    f = jax.jit(lambda a: (activity.mean_and_variance(a)[1], activity.participation_ratio(a),
                           activity.noise_correlations(a), activity.fano_factor(a, 5),
                           activity.autocorrelation_time(a, max_lag=20)))
    out = f(small)
    np.testing.assert_allclose(out[1], activity.participation_ratio(small), rtol=1e-5)
    np.testing.assert_allclose(out[4], activity.autocorrelation_time(small, max_lag=20), rtol=1e-5)


@pytest.mark.parametrize("call, match", [
    (lambda: activity.mean_and_variance(np.zeros((3, 4))), r"activity.*\(num_chains, num_records, num_neurons\)"),
    (lambda: activity.fano_factor(np.ones((1, 5, 2)), 2), "at least 2 chains"),
    (lambda: activity.fano_factor(np.ones((3, 5, 2)), 6), r"window.*\[1, 5\]"),
    (lambda: activity.autocorrelation(np.ones((3, 5, 2)), 5), r"max_lag.*\[1, 4\]"),
    (lambda: activity.window_counts(np.ones((3, 5, 2)), 2.0), "window.*integer"),
    (lambda: activity.pairwise(np.ones((2, 3))), "square"),
])
def test_bad_input_names_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


# --- variability timecourse: an OU population whose mean and variance change at a known record ---

def _switching_ou(seed, chains=2000, records=120, neurons=10, onset=60, phi=PHI, mus=(3.0, 5.0), vs=(1.0, 0.25)):
    """Independent OU neurons, stationary at (μ₁, v₁), whose target switches to (μ₂, v₂) from
    record `onset` on (exact transitions): x' = μ + φ(x − μ) + √((1 − φ²) v) ξ. Returns the
    activity and the exact mean m_n, variance v_n of every record (Cov(x_n, x_m) = φ^(m−n) v_n, n ≤ m)."""
    rng = np.random.default_rng(seed)
    x = mus[0] + math.sqrt(vs[0]) * rng.standard_normal((chains, neurons))
    out = np.empty((chains, records, neurons))
    m, v = np.empty(records), np.empty(records)
    mn, vn = mus[0], vs[0]
    for t in range(records):
        out[:, t], m[t], v[t] = x, mn, vn
        seg = int(t + 1 >= onset)  # the transition into record t + 1
        x = mus[seg] + phi * (x - mus[seg]) + math.sqrt((1 - phi**2) * vs[seg]) * rng.standard_normal(x.shape)
        mn, vn = mus[seg] + phi * (mn - mus[seg]), phi**2 * vn + (1 - phi**2) * vs[seg]
    return out.astype(np.float32), m, v


def _window_truth(m, v, window, starts, dt, phi=PHI):
    means, variances, fanos, var_counts, e_counts = [], [], [], [], []
    for s in starts:
        idx = np.arange(s, s + window)
        lag = np.abs(idx[:, None] - idx[None, :])
        cov = phi**lag * v[np.minimum(idx[:, None], idx[None, :])]
        e_count, var_count = dt * m[idx].sum(), dt**2 * cov.sum()
        means.append(m[idx].mean())
        variances.append(v[idx].mean())
        fanos.append(var_count / e_count)
        var_counts.append(var_count)
        e_counts.append(e_count)
    return tuple(np.array(a) for a in (means, variances, fanos, var_counts, e_counts))


@pytest.mark.parametrize("step", [None, 10])
def test_variability_timecourse_of_an_ou_population_with_a_switch(step):
    act, m, v = _switching_ou(5)
    chains, records, neurons = act.shape
    window, dt = 20, 0.5
    out = activity.variability_timecourse(act, window, step=step, dt=dt)
    starts = np.arange(0, records - window + 1, step or window)
    np.testing.assert_array_equal(out.start, starts)
    mean, var, fano, var_count, e_count = _window_truth(m, v, window, starts, dt)
    assert out.variance.shape == out.fano.shape == out.mean.shape == (len(starts),)
    np.testing.assert_array_less(np.abs(np.asarray(out.mean) - mean), 5 * math.sqrt(1.0 / (chains * neurons)))
    np.testing.assert_array_less(np.abs(np.asarray(out.variance) - var), 5 * 1.0 * math.sqrt(2 / (chains * neurons)))
    # relative standard errors of Var Λ (√(2/n), Gaussian counts) and of E Λ (√(Var Λ/n)/E Λ), n = R·K
    n = chains * neurons
    tol = 5 * fano * (math.sqrt(2 / n) + np.sqrt(var_count / n) / e_count)
    np.testing.assert_array_less(np.abs(np.asarray(out.fano) - fano), tol)
    # the windows before the onset are 4× as variable as those well after it (v₁ = 1, v₂ = 0.25)
    assert out.variance[0] > 3 * out.variance[-1]
    spiking = activity.variability_timecourse(act, window, step=step, dt=dt, spiking=True)
    np.testing.assert_allclose(spiking.fano, np.asarray(out.fano) + 1, rtol=1e-6)


def test_variability_timecourse_errors():
    act = np.ones((3, 10, 2), np.float32)
    with pytest.raises(ValueError, match="window"):
        activity.variability_timecourse(act, 11)
    with pytest.raises(ValueError, match="step"):
        activity.variability_timecourse(act, 2, step=0)
    with pytest.raises(ValueError, match="2 chains"):
        activity.variability_timecourse(act[:1], 2)
    with pytest.raises(ValueError, match="num_chains, num_records, num_neurons"):
        activity.variability_timecourse(act[0], 2)
