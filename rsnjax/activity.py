"""Measures of neural variability for recorded activity, as a physiologist would compute them.

Every function takes recorded activity laid out as trials × time × neurons,
``(num_chains, num_records, num_neurons)`` — the layout of `SampleResult.activity` and
`SampleResult.rates` (record with ``rsnjax.sample(..., record_every=k)``): a chain is a trial
(the same circuit and input, its own noise), records are ``dt`` apart. All functions are pure
`jax.numpy` and jit-compiled, with the window and lag counts as static arguments.

- `mean_and_variance`: per-neuron mean and variance over trials and time.
- `window_counts`: Λ = Σ rate·dt over non-overlapping windows (the "spike count" of a rate).
- `fano_factor`: Var/Mean of Λ across trials, per window and neuron (+1 for Poisson spikes).
- `noise_correlations`: the correlation matrix across trials at fixed time (or of window
  counts), averaged over time; `pairwise` picks its off-diagonal entries.
- `autocorrelation`, `autocorrelation_time`: the autocorrelation function and its integral.
- `participation_ratio`: the dimensionality (Σλ)²/Σλ² of the activity's covariance.
- `variability_timecourse`: per window of time, the mean, the across-trial variance and the
  Fano factor (e.g. before and after a stimulus onset: variability quenching).
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

__all__ = ["mean_and_variance", "window_counts", "fano_factor", "noise_correlations", "pairwise",
           "autocorrelation", "autocorrelation_time", "participation_ratio", "covariance",
           "variability_timecourse", "VariabilityTimecourse"]


def _check(activity, name: str = "activity") -> jax.Array:
    a = jnp.asarray(activity)
    if a.ndim != 3:
        raise ValueError(f"`{name}` must have shape (num_chains, num_records, num_neurons), got {tuple(a.shape)}")
    if not jnp.issubdtype(a.dtype, jnp.floating):
        a = a.astype(jnp.result_type(float))
    return a


def _check_count(value, name: str, maximum: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an integer, got {value!r}")
    if not 1 <= value <= maximum:
        raise ValueError(f"`{name}` must be in [1, {maximum}] ({what}), got {value}")
    return value


@jax.jit
def _mean_var(a):
    mean = a.mean(axis=(0, 1))
    return mean, ((a - mean) ** 2).mean(axis=(0, 1))


def mean_and_variance(activity: Float[Array, "chains records neurons"]):
    """Per-neuron mean and variance over chains and records (the stationary moments when the
    chains have mixed).

    **Returns:** ``(mean, variance)``, each ``(num_neurons,)``.
    """
    return _mean_var(_check(activity))


@partial(jax.jit, static_argnames=("window",))
def _counts(a, window, dt):
    c, t, k = a.shape
    num = t // window
    return a[:, : num * window].reshape(c, num, window, k).sum(axis=2) * dt


def window_counts(rates: Float[Array, "chains records neurons"], window: int, *, dt: float = 1.0):
    """Λ = Σ rate·dt over non-overlapping windows of `window` records (a trailing partial
    window is dropped): the expected spike count of a Poisson neuron firing at that rate.

    **Returns:** ``(num_chains, num_records // window, num_neurons)``.
    """
    a = _check(rates, "rates")
    window = _check_count(window, "window", a.shape[1], "records per window")
    return _counts(a, window, dt)


@jax.jit
def _fano(counts):
    mean = counts.mean(axis=0)
    var = counts.var(axis=0, ddof=1)
    return jnp.where(mean > 0, var / jnp.where(mean > 0, mean, 1.0), jnp.nan)


def fano_factor(rates: Float[Array, "chains records neurons"], window: int, *, dt: float = 1.0,
                spiking: bool = False):
    """Fano factors Var(Λ)/E(Λ) across chains (trials) of the window counts Λ (`window_counts`).

    With ``spiking=True``: the Fano factor of Poisson spike counts driven by the rates,
    1 + Var(Λ)/E(Λ) (law of total variance: a doubly stochastic Poisson count has variance
    E Λ + Var Λ). Needs at least 2 chains; NaN where the mean count is not positive.

    **Arguments:**

    - `rates`: ``(num_chains, num_records, num_neurons)``, non-negative for a meaningful count
      (e.g. `SampleResult.rates`).
    - `window`: records per counting window; `dt`: time between records.

    **Returns:** ``(num_records // window, num_neurons)``: one Fano factor per window and neuron.
    """
    a = _check(rates, "rates")
    if a.shape[0] < 2:
        raise ValueError(f"`rates` needs at least 2 chains (trials) for a variance, got {a.shape[0]}")
    ff = _fano(window_counts(a, window, dt=dt))
    return ff + 1.0 if spiking else ff


@jax.jit
def _noise_corr(counts):
    z = counts - counts.mean(axis=0)
    cov = jnp.einsum("cti,ctj->tij", z, z) / counts.shape[0]
    sd = jnp.sqrt(jnp.diagonal(cov, axis1=1, axis2=2))
    corr = cov / (sd[:, :, None] * sd[:, None, :])
    return corr.mean(axis=0)


def noise_correlations(activity: Float[Array, "chains records neurons"], *, window: int = 1):
    """Noise correlations: the Pearson correlation between neurons across chains (trials) at a
    fixed time — the same input, different noise — averaged over time. With `window` > 1 the
    correlations are those of window sums (`window_counts`, the spike-count correlations of
    physiology).

    **Returns:** ``(num_neurons, num_neurons)``, ones on the diagonal (NaN rows for neurons
    that do not vary across chains). `pairwise` gives its off-diagonal entries.
    """
    a = _check(activity)
    if a.shape[0] < 2:
        raise ValueError(f"`activity` needs at least 2 chains (trials), got {a.shape[0]}")
    counts = a if window == 1 else window_counts(a, window)
    return _noise_corr(counts)


def pairwise(matrix: Float[Array, "n n"]) -> Float[Array, " pairs"]:
    """The ``n(n − 1)/2`` entries above the diagonal of a square matrix (e.g. every neuron
    pair's noise correlation)."""
    m = jnp.asarray(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"`matrix` must be square, got shape {tuple(m.shape)}")
    i, j = jnp.triu_indices(m.shape[0], k=1)
    return m[i, j]


@partial(jax.jit, static_argnames=("max_lag",))
def _acf(a, max_lag):
    c, t, k = a.shape
    z = a - a.mean(axis=(0, 1))
    n = 1 << (2 * t - 1).bit_length()
    f = jnp.fft.rfft(z, n=n, axis=1)
    acov = jnp.fft.irfft(f * jnp.conj(f), n=n, axis=1)[:, : max_lag + 1].sum(axis=0)
    acov = acov / (c * (t - jnp.arange(max_lag + 1)))[:, None]
    return acov / acov[0]


def autocorrelation(activity: Float[Array, "chains records neurons"], max_lag: int):
    """The autocorrelation function ρ(k) of each neuron for lags k = 0 … `max_lag` records,
    averaged over chains (each neuron's mean over chains and time is subtracted: stationary
    activity is assumed).

    **Returns:** ``(max_lag + 1, num_neurons)``, ρ(0) = 1.
    """
    a = _check(activity)
    max_lag = _check_count(max_lag, "max_lag", a.shape[1] - 1, "lags shorter than the recording")
    return _acf(a, max_lag)


@partial(jax.jit, static_argnames=("window_factor",))
def _integrated_time(rho, dt, window_factor):
    # Sokal's automatic window: τ(M) = ½ + Σ_{k=1}^{M} ρ(k) at the smallest M ≥ c·τ(M)
    lags = jnp.arange(1, rho.shape[0], dtype=rho.dtype)[:, None]
    taus = 0.5 + jnp.cumsum(rho[1:], axis=0)
    ok = lags >= window_factor * taus
    first = jnp.where(ok.any(axis=0), jnp.argmax(ok, axis=0), rho.shape[0] - 2)
    return dt * jnp.take_along_axis(taus, first[None], axis=0)[0]


def autocorrelation_time(activity: Float[Array, "chains records neurons"], *, max_lag: int,
                         dt: float = 1.0, window_factor: float = 5.0):
    """The integrated autocorrelation time τ = dt·(½ + Σ_{k=1}^{M} ρ(k)) of each neuron (the
    trapezoidal integral of ρ from 0), with Sokal's window: M the smallest lag with
    M ≥ `window_factor`·τ(M)/dt (or `max_lag` when none is). An Ornstein–Uhlenbeck process of
    time constant τ gives τ up to O(dt²/τ) and a truncation bias of about e^(−window_factor)·τ.

    **Returns:** ``(num_neurons,)`` in the units of `dt` (the time between records).
    """
    return _integrated_time(autocorrelation(activity, max_lag), dt, float(window_factor))


@jax.jit
def _cov(a):
    x = a.reshape(-1, a.shape[-1])
    z = x - x.mean(axis=0)
    return z.T @ z / x.shape[0]


def covariance(activity: Float[Array, "chains records neurons"]) -> Float[Array, "neurons neurons"]:
    """The neurons' covariance over all chains and records, ``(num_neurons, num_neurons)``."""
    return _cov(_check(activity))


def participation_ratio(activity: Float[Array, "chains records neurons"]) -> jax.Array:
    """The dimensionality of the activity: PR = (Σλ)²/Σλ² = tr(C)²/tr(C²) of the neurons'
    covariance C over chains and records (1 when one direction carries all variance, the
    number of neurons when all carry the same)."""
    c = covariance(activity)
    return jnp.trace(c) ** 2 / jnp.sum(c * c)


class VariabilityTimecourse(NamedTuple):
    """What `variability_timecourse` returns; every field is ``(num_windows,)``, averaged over
    neurons (``fano`` over the neurons where it is defined).

    - ``mean``: the activity's mean over trials, the window's records and neurons.
    - ``variance``: the across-trial variance at fixed time, averaged over the window's records.
    - ``fano``: the Fano factor Var(Λ)/E(Λ) across trials of the window count Λ = Σ activity·dt
      (+1 with ``spiking=True``), as `fano_factor`.
    - ``start``: the index of each window's first record.
    """

    mean: jax.Array
    variance: jax.Array
    fano: jax.Array
    start: jax.Array


def _window_sums(x, window, step, axis):
    """Sums of `window` consecutive entries along `axis`, windows starting every `step`: sums
    over blocks of g = gcd(window, step) entries, then window/g consecutive blocks (no
    (…, windows, window, …) intermediate, no long cumulative sums)."""
    g = math.gcd(window, step)
    t = x.shape[axis]
    num = (t - window) // step + 1
    nb = t // g
    x = jnp.moveaxis(x, axis, 0)
    blocks = x[: nb * g].reshape((nb, g) + x.shape[1:]).sum(axis=1)
    stride = step // g
    out = sum(blocks[q: q + (num - 1) * stride + 1: stride] for q in range(window // g))
    return jnp.moveaxis(out, 0, axis)


@partial(jax.jit, static_argnames=("window", "step"))
def _timecourse(a, window, step, dt):
    c, t, k = a.shape
    starts = jnp.arange(0, t - window + 1, step)
    mean = _window_sums(a.mean(axis=(0, 2)), window, step, 0) / window
    variance = _window_sums(a.var(axis=0, ddof=1).mean(axis=1), window, step, 0) / window
    counts = _window_sums(a, window, step, 1) * dt  # (chains, windows, neurons)
    m = counts.mean(axis=0)
    ff = jnp.where(m > 0, counts.var(axis=0, ddof=1) / jnp.where(m > 0, m, 1.0), jnp.nan)
    return mean, variance, jnp.nanmean(ff, axis=1), starts


def variability_timecourse(activity: Float[Array, "chains records neurons"], window: int, *,
                           step: int | None = None, dt: float = 1.0,
                           spiking: bool = False) -> VariabilityTimecourse:
    """How variable the activity is across trials, window by window: the quantities whose drop
    at stimulus onset is called variability quenching (Churchland et al. 2010). Record the
    trials with the stimulus switched on at a known step (``sample(..., inputs=...,
    switch_steps=...)``) and compare the windows before and after it.

    **Arguments:**

    - `activity`: ``(num_chains, num_records, num_neurons)``, trials × time × neurons (rates,
      non-negative, for a meaningful Fano factor). At least 2 chains.
    - `window`: records per window.
    - `step`: records between the starts of successive windows (default `window`: adjacent,
      non-overlapping windows; smaller: sliding windows). A trailing partial window is dropped.
    - `dt`: time between records (the count Λ is Σ activity·dt).
    - `spiking`: the Fano factor of Poisson spike counts driven by the rates, 1 + Var Λ / E Λ.

    **Returns:** a `VariabilityTimecourse` of ``(num_windows,)`` arrays ``mean``, ``variance``
    (across chains at fixed time, averaged over the window's records and the neurons),
    ``fano`` (the mean over neurons of Var Λ / E Λ; neurons with E Λ ≤ 0 are left out, NaN when
    none is left) and ``start`` (each window's first record).
    """
    a = _check(activity)
    if a.shape[0] < 2:
        raise ValueError(f"`activity` needs at least 2 chains (trials) for a variance, got {a.shape[0]}")
    window = _check_count(window, "window", a.shape[1], "records per window")
    step = window if step is None else _check_count(step, "step", a.shape[1], "records between windows")
    mean, variance, fano, start = _timecourse(a, window, step, dt)
    return VariabilityTimecourse(mean, variance, fano + 1.0 if spiking else fano, start)
