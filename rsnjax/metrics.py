r"""Numbers for sample quality: score error, two-sample distances, KSD, moments, chain diagnostics.

The paper judges its samplers by pictures (histograms, score curves, kurtosis bars); this module
turns each picture into a number. Conventions:

- samples are arrays of shape ``(num, d)`` (a 1-D array is read as ``(num, 1)``);
- a saved trajectory has shape ``(num_saved, num_chains, d)`` (steps first, unlike ArviZ);
- randomised functions take a keyword-only ``key=`` (a JAX PRNG key);
- a *target* is duck-typed: ``target.dim``, ``target.sample(key, num)``, ``target.log_prob(x)``,
  ``target.score(x)``, and for mixtures ``target.component_log_prob(x)`` and
  ``target.blurred_score(x, sigma)``.

**Cost of the quadratic metrics.** [`mmd`][], [`energy_distance`][] and [`ksd`][] sum a kernel over
all pairs of points. They never build the full ``n × m`` matrix: the rows are cut into blocks of
``block_size`` points and a ``lax.map`` loop sums one ``block_size × m`` tile at a time, so memory
stays at about ``block_size · m`` numbers (by default ``block_size`` is chosen so a tile holds about
2²⁰ entries, 4 MB in float32) while the result is exact. Each also takes ``max_samples``: when a set
has more rows than that, a subset of ``max_samples`` rows is used (a random subset without
replacement when ``key`` is given, else evenly spaced rows), trading accuracy for time
(the cost falls as ``max_samples²``); by default nothing is subsampled. For scale: 10 000 × 10 000
points in d = 2 take about half a second for MMD² and the energy distance together (one fused
pass) and about as long for the KSD on 2 CPU cores. Sorting-based metrics (Wasserstein, chain
diagnostics) cost O(n log n).

Every array-valued function is jit-compatible (wrap it in ``jax.jit`` with the callables and the
integer options static); the argument checks still run on concrete inputs.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float, PRNGKeyArray

from ._validation import check_array, check_int, check_key, check_positive

__all__ = [
    "ScoreError",
    "NoiseFloor",
    "score_error",
    "mmd",
    "energy_distance",
    "sliced_wasserstein",
    "wasserstein_1d",
    "ksd",
    "mean_error",
    "covariance_error",
    "excess_kurtosis",
    "frechet_distance",
    "mode_weights",
    "rhat",
    "ess",
    "autocorrelation_time",
    "noise_floor",
    "evaluate",
    "format_table",
]

#: Number of kernel entries in one row-block tile of a pairwise sum (about 4 MB in float32).
_TILE_ENTRIES = 1 << 20
#: Up to this dimension pairwise differences are formed directly (exact, fused by XLA);
#: above it, squared distances use the ‖x‖² + ‖y‖² − 2 x·y expansion (a matmul).
_DIRECT_MAX_DIM = 8
#: Points (per set) used by the median heuristic.
_MEDIAN_POINTS = 500


# ----------------------------------------------------------------------------------------------
# Argument helpers
# ----------------------------------------------------------------------------------------------


def _samples(x: Any, name: str, *, min_rows: int = 1, what: str = "") -> Array:
    """Check a sample set: a finite (num, d) array (1-D is read as (num, 1))."""
    arr = check_array(x, name, ndim=(1, 2))
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.shape[0] < min_rows:
        for_what = f" for {what}" if what else ""
        raise ValueError(
            f"`{name}` needs at least {min_rows} samples (rows){for_what}, got {arr.shape[0]}"
        )
    if arr.shape[1] < 1:
        raise ValueError(f"`{name}` must have at least one column, got shape {tuple(arr.shape)}")
    return arr


def _same_dim(x: Array, y: Array, xname: str, yname: str) -> None:
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"`{yname}` has dimension {y.shape[1]} but `{xname}` has dimension {x.shape[1]}: "
            f"both must be (num, d) arrays with the same d"
        )


def _target_dim(target: Any, x: Array, name: str) -> None:
    dim = getattr(target, "dim", None)
    if dim is not None and int(dim) != x.shape[1]:
        raise ValueError(
            f"`{name}` has dimension {x.shape[1]} but `target.dim` is {int(dim)}"
        )


def _method(target: Any, attr: str, why: str) -> Callable:
    fn = getattr(target, attr, None)
    if not callable(fn):
        raise ValueError(
            f"`target` ({type(target).__name__}) has no `{attr}` method: {why}"
        )
    return fn


def _has_method(target: Any, attr: str) -> bool:
    return callable(getattr(target, attr, None))


def _subsample(x: Array, max_samples: int | None, key: Any, salt: int) -> Array:
    """At most ``max_samples`` rows of ``x``: random without replacement if ``key``, else evenly spaced."""
    n = x.shape[0]
    if max_samples is None or n <= max_samples:
        return x
    if key is None:
        idx = np.round(np.linspace(0, n - 1, max_samples)).astype(np.int64)
        return x[idx]
    idx = jax.random.choice(jax.random.fold_in(key, salt), n, (max_samples,), replace=False)
    return x[idx]


def _block(block_size: int | None, n: int, m: int) -> int:
    if block_size is None:
        b = max(8, _TILE_ENTRIES // max(m, 1))
    else:
        b = check_int(block_size, "block_size")
    return max(1, min(b, n))


def _max_samples(max_samples: Any) -> int | None:
    if max_samples is None:
        return None
    return check_int(max_samples, "max_samples", minimum=2)


# ----------------------------------------------------------------------------------------------
# Blocked pairwise sums
# ----------------------------------------------------------------------------------------------


def _order_key(a: Array) -> Array:
    """Integers ordered like the floats ``a`` (finite values; −0 is mapped to +0).

    XLA's CPU sort of floats compares with a NaN-aware total order and is 3–4× slower than an
    integer sort, so sorts go through these keys.
    """
    itype = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[a.dtype.itemsize]
    bits = lax.bitcast_convert_type(jnp.where(a == 0, jnp.zeros_like(a), a), itype)
    return jnp.where(bits < 0, bits ^ jnp.iinfo(itype).max, bits)


def _from_order_key(k: Array, dtype: Any) -> Array:
    bits = jnp.where(k < 0, k ^ jnp.iinfo(k.dtype).max, k)
    return lax.bitcast_convert_type(bits, dtype)


def _sort(a: Array, axis: int = 0) -> Array:
    """``jnp.sort`` for finite floats, through integer keys (much faster on CPU)."""
    if a.dtype not in (jnp.float32, jnp.float64):
        return jnp.sort(a, axis=axis)
    k = lax.sort(_order_key(a), dimension=axis % a.ndim, is_stable=False)
    return _from_order_key(k, a.dtype)


def _median_sorted(s: Array) -> Array:
    n = s.shape[0]
    return 0.5 * (s[(n - 1) // 2] + s[n // 2])


def _quantile_sorted(s: Array, q: float) -> Array:
    """Linear-interpolation quantile (NumPy's default) of a sorted 1-D array."""
    pos = q * (s.shape[0] - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, s.shape[0] - 1)
    return s[lo] + (pos - lo) * (s[hi] - s[lo])


def _sq(a: Array) -> Array:
    return a * a


def _coordinate_sum(term: Callable[[int], Array], d: int) -> Array:
    """Σ_k term(k) for k < d (coordinates or bandwidths), unrolled.

    XLA fuses the unrolled sum into one elementwise loop over the (B, m) tile, ~10× faster on CPU
    than a reduction over a tiny trailing axis of a (B, m, d) array.
    """
    total = term(0)
    for k in range(1, d):
        total = total + term(k)
    return total


def _sqdist(x: Array, y: Array) -> Array:
    """Squared Euclidean distances between the rows of x (B, d) and y (m, d): (B, m)."""
    if x.shape[-1] <= _DIRECT_MAX_DIM:
        return _coordinate_sum(lambda k: _sq(x[:, k, None] - y[None, :, k]), x.shape[-1])
    xx = jnp.sum(x * x, axis=-1)
    yy = jnp.sum(y * y, axis=-1)
    return jnp.maximum(xx[:, None] + yy[None, :] - 2.0 * (x @ y.T), 0.0)


def _blocked_sums(
    pair_fn: Callable[..., tuple[Array, ...]],
    rows: tuple[Array, ...],
    cols: tuple[Array, ...],
    *,
    block: int,
    exclude_diagonal: bool,
) -> tuple[Array, ...]:
    """``Σ_{i,j} pair_fn(rows_i, cols_j)`` for each output of ``pair_fn``, one row block at a time.

    ``pair_fn(*row_block, *cols)`` returns a tuple of ``(block, m)`` arrays. Rows are padded to a
    multiple of ``block``; padded rows (and the diagonal i == j when ``exclude_diagonal``) are masked.
    """
    n = rows[0].shape[0]
    m = cols[0].shape[0]
    num_blocks = -(-n // block)
    pad = num_blocks * block - n
    blocked = tuple(
        jnp.pad(r, ((0, pad),) + ((0, 0),) * (r.ndim - 1)).reshape((num_blocks, block) + r.shape[1:])
        for r in rows
    )
    starts = jnp.arange(num_blocks) * block
    col_idx = jnp.arange(m)

    def one_block(args):
        start, *row_block = args
        values = pair_fn(*row_block, *cols)
        row_idx = start + jnp.arange(block)
        mask = (row_idx < n)[:, None]
        if exclude_diagonal:
            mask = mask & (row_idx[:, None] != col_idx[None, :])
        return tuple(jnp.sum(jnp.where(mask, v, 0.0)) for v in values)

    sums = lax.map(one_block, (starts, *blocked))
    return tuple(jnp.sum(s) for s in sums)


def _median_bandwidth(x: Array, y: Array) -> Array:
    """Median pairwise distance of at most 2·500 pooled points (evenly spaced rows of each set)."""
    sx = max(1, -(-x.shape[0] // _MEDIAN_POINTS))
    sy = max(1, -(-y.shape[0] // _MEDIAN_POINTS))
    z = jnp.concatenate([x[::sx], y[::sy]], axis=0)
    r2 = _sqdist(z, z)
    iu = np.triu_indices(z.shape[0], 1)
    med = jnp.sqrt(_median_sorted(_sort(r2[iu])))
    return jnp.where(med > 0, med, jnp.ones_like(med))


@functools.partial(
    jax.jit, static_argnames=("block_x", "block_y", "want_mmd", "want_energy", "median", "unbiased")
)
def _pair_statistics(x, y, bandwidths, *, block_x, block_y, want_mmd, want_energy, median, unbiased):
    """MMD² (U-statistic, sum of RBF kernels) and/or energy distance in one pass over the pairs."""
    n, m = x.shape[0], y.shape[0]
    if median:
        bandwidths = _median_bandwidth(x, y)[None] * bandwidths
    coef = 0.5 / (bandwidths * bandwidths)

    def pair_fn(a, b):
        r2 = _sqdist(a, b)
        out = []
        if want_mmd:
            out.append(_coordinate_sum(lambda l: jnp.exp(-r2 * coef[l]), coef.shape[0]))
        if want_energy:
            out.append(jnp.sqrt(r2))
        return tuple(out)

    sxx = _blocked_sums(pair_fn, (x,), (x,), block=block_x, exclude_diagonal=True)
    syy = _blocked_sums(pair_fn, (y,), (y,), block=block_y, exclude_diagonal=True)
    sxy = _blocked_sums(pair_fn, (x,), (y,), block=block_x, exclude_diagonal=False)
    results = []
    i = 0
    if want_mmd:
        results.append(sxx[i] / (n * (n - 1)) + syy[i] / (m * (m - 1)) - 2.0 * sxy[i] / (n * m))
        i += 1
    if want_energy:
        if unbiased:
            within = sxx[i] / (n * (n - 1)) + syy[i] / (m * (m - 1))
        else:
            within = sxx[i] / (n * n) + syy[i] / (m * m)
        results.append(2.0 * sxy[i] / (n * m) - within)
    return tuple(results)


def _bandwidth_spec(bandwidth: Any) -> tuple[Array, bool]:
    """(bandwidths as a 1-D array, whether they are multipliers of the median heuristic)."""
    if bandwidth is None or (isinstance(bandwidth, str) and bandwidth == "median"):
        return jnp.ones((1,)), True
    if isinstance(bandwidth, str):
        raise ValueError(f"`bandwidth` must be None, 'median', a number or a list of numbers, got {bandwidth!r}")
    if isinstance(bandwidth, jax.core.Tracer):  # inside a user's jit: no value checks
        return jnp.atleast_1d(bandwidth), False
    try:
        values = np.atleast_1d(np.asarray(bandwidth, dtype=float))
    except (TypeError, ValueError):
        raise TypeError(f"`bandwidth` must be a number or a list of numbers, got {bandwidth!r}") from None
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"`bandwidth` must be a number or a non-empty list of numbers, got {bandwidth!r}")
    for v in values:
        check_positive(v, "bandwidth")
    return jnp.asarray(values, dtype=jnp.result_type(float)), False


def _two_samples(x, y, xname, yname, what, max_samples, key):
    x = _samples(x, xname, min_rows=2, what=what)
    y = _samples(y, yname, min_rows=2, what=what)
    _same_dim(x, y, xname, yname)
    max_samples = _max_samples(max_samples)
    if key is not None:
        key = check_key(key)
    return _subsample(x, max_samples, key, 0), _subsample(y, max_samples, key, 1)


# ----------------------------------------------------------------------------------------------
# Two-sample distances
# ----------------------------------------------------------------------------------------------


def mmd(
    x: Float[Array, "n d"],
    y: Float[Array, "m d"],
    *,
    bandwidth: float | Sequence[float] | None = None,
    block_size: int | None = None,
    max_samples: int | None = None,
    key: PRNGKeyArray | None = None,
) -> Float[Array, ""]:
    r"""Squared maximum mean discrepancy with an RBF kernel, unbiased U-statistic.

    $$\widehat{\mathrm{MMD}}^2_u = \frac{1}{n(n-1)}\sum_{i\ne j}k(x_i,x_j)
      + \frac{1}{m(m-1)}\sum_{i\ne j}k(y_i,y_j) - \frac{2}{nm}\sum_{i,j}k(x_i,y_j),$$

    with $k(x,y)=\sum_\ell \exp(-\|x-y\|^2/(2\ell^2))$ summed over the bandwidths $\ell$. The
    estimate is unbiased for MMD², so it can be slightly negative when the distributions agree.

    **Arguments:**

    - `x`: samples, shape `(n, d)`, `n ≥ 2`.
    - `y`: reference samples (e.g. from the target), shape `(m, d)`, `m ≥ 2`.
    - `bandwidth`: `None` (default) for the median heuristic, $\ell$ = the median distance between
        pooled points (computed on at most 500 evenly spaced points of each set); a number; or a
        list of numbers for a multi-bandwidth kernel (the sum of the RBF kernels).
    - `block_size`: rows per tile of the blocked pairwise sum (default: about 2²⁰ / m).
    - `max_samples`: use at most this many rows of each set (see the module notes).
    - `key`: PRNG key for the random subset when `max_samples` is given; optional.

    **Returns:**

    A scalar: the MMD² estimate.
    """
    x, y = _two_samples(x, y, "x", "y", "mmd", max_samples, key)
    bandwidths, median = _bandwidth_spec(bandwidth)
    (value,) = _pair_statistics(
        x, y, bandwidths.astype(x.dtype),
        block_x=_block(block_size, x.shape[0], y.shape[0]),
        block_y=_block(block_size, y.shape[0], y.shape[0]),
        want_mmd=True, want_energy=False, median=median, unbiased=True,
    )
    return value


def energy_distance(
    x: Float[Array, "n d"],
    y: Float[Array, "m d"],
    *,
    unbiased: bool = True,
    block_size: int | None = None,
    max_samples: int | None = None,
    key: PRNGKeyArray | None = None,
) -> Float[Array, ""]:
    r"""Energy distance (Székely & Rizzo), the squared form $D^2$.

    $$D^2 = 2\,\mathbb{E}\|X-Y\| - \mathbb{E}\|X-X'\| - \mathbb{E}\|Y-Y'\|,$$

    estimated with U-statistics for the within-set terms (average over $i\ne j$, unbiased, can be
    slightly negative) when `unbiased=True`, or with V-statistics (the energy distance between the
    two empirical distributions, always ≥ 0; in 1-D it equals
    ``scipy.stats.energy_distance(x, y) ** 2``) when `unbiased=False`.

    **Arguments:**

    - `x`: samples, shape `(n, d)`, `n ≥ 2`.
    - `y`: reference samples, shape `(m, d)`, `m ≥ 2`.
    - `unbiased`: U-statistic (default) or V-statistic.
    - `block_size`, `max_samples`, `key`: as in [`mmd`][].

    **Returns:**

    A scalar: the $D^2$ estimate.
    """
    x, y = _two_samples(x, y, "x", "y", "energy_distance", max_samples, key)
    (value,) = _pair_statistics(
        x, y, jnp.ones((1,), x.dtype),
        block_x=_block(block_size, x.shape[0], y.shape[0]),
        block_y=_block(block_size, y.shape[0], y.shape[0]),
        want_mmd=False, want_energy=True, median=False, unbiased=bool(unbiased),
    )
    return value


@functools.lru_cache(maxsize=64)
def _quantile_grid(n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merged grid of the two empirical quantile functions (exact integer arithmetic).

    Breakpoints are {i/n} ∪ {j/m}; on the interval ending at t = b/(nm) the quantile functions are
    x_(⌈tn⌉) and y_(⌈tm⌉). Returns the 0-based indices into the sorted samples and the interval widths.
    """
    bx = np.arange(1, n + 1, dtype=np.int64) * m
    by = np.arange(1, m + 1, dtype=np.int64) * n
    b = np.union1d(bx, by)
    a = np.concatenate([[0], b[:-1]])
    widths = (b - a) / float(n * m)
    ix = (b + m - 1) // m - 1
    iy = (b + n - 1) // n - 1
    return ix, iy, widths


def _abs_pow(d: Array, p: float) -> Array:
    if p == 1:
        return jnp.abs(d)
    if p == 2:
        return d * d
    return jnp.abs(d) ** p


def _wasserstein_pp_sorted(xs: Array, ys: Array, p: float) -> Array:
    """W_p^p between 1-D empirical distributions, per column of sorted (n, k) and (m, k): (k,)."""
    n, m = xs.shape[0], ys.shape[0]
    if n == m:
        return jnp.mean(_abs_pow(xs - ys, p), axis=0)
    ix, iy, widths = _quantile_grid(n, m)
    w = jnp.asarray(widths, xs.dtype)
    return jnp.sum(w[:, None] * _abs_pow(xs[ix] - ys[iy], p), axis=0)


@functools.partial(jax.jit, static_argnames=("p",))
def _wasserstein_1d_impl(x, y, *, p):
    pp = _wasserstein_pp_sorted(_sort(x, axis=0), _sort(y, axis=0), p)
    return pp if p == 1 else pp ** (1.0 / p)


def wasserstein_1d(
    x: Float[Array, "n d"], y: Float[Array, "m d"], *, p: float = 1
) -> Float[Array, " d"]:
    r"""Exact Wasserstein-$p$ distance between the empirical marginals, one per coordinate.

    $$W_p(\mu_k,\nu_k) = \Big(\int_0^1 |F_{x,k}^{-1}(t) - F_{y,k}^{-1}(t)|^p\,dt\Big)^{1/p},$$

    with $F^{-1}$ the empirical quantile functions (the sorted samples). When $n\ne m$ the integral
    is evaluated exactly on the merged grid of breakpoints $\{i/n\}\cup\{j/m\}$, on which both
    quantile functions are constant. For `p=1` this equals ``scipy.stats.wasserstein_distance``.

    **Arguments:**

    - `x`: samples, shape `(n, d)`.
    - `y`: reference samples, shape `(m, d)`.
    - `p`: the order, ≥ 1 (default 1).

    **Returns:**

    An array of shape `(d,)`: the distance for each marginal.
    """
    x = _samples(x, "x")
    y = _samples(y, "y")
    _same_dim(x, y, "x", "y")
    p = check_positive(p, "p")
    if p < 1:
        raise ValueError(f"`p` must be at least 1, got {p}")
    return _wasserstein_1d_impl(x, y, p=p)


@functools.partial(jax.jit, static_argnames=("num_projections", "p"))
def _sliced_impl(x, y, key, *, num_projections, p):
    theta = jax.random.normal(key, (x.shape[1], num_projections), x.dtype)
    theta = theta / jnp.linalg.norm(theta, axis=0, keepdims=True)
    px = _sort(x @ theta, axis=0)
    py = _sort(y @ theta, axis=0)
    return jnp.mean(_wasserstein_pp_sorted(px, py, p)) ** (1.0 / p)


def sliced_wasserstein(
    x: Float[Array, "n d"],
    y: Float[Array, "m d"],
    *,
    key: PRNGKeyArray,
    num_projections: int = 128,
    p: float = 2,
) -> Float[Array, ""]:
    r"""Sliced Wasserstein-$p$ distance (default $p=2$) by Monte Carlo over random directions.

    $$\mathrm{SW}_p = \Big(\frac{1}{L}\sum_{l=1}^{L} W_p^p(\theta_l^\top x,\ \theta_l^\top y)\Big)^{1/p},
      \qquad \theta_l \sim \mathrm{Uniform}(S^{d-1}),$$

    each 1-D $W_p$ computed exactly from sorted projections as in [`wasserstein_1d`][]. For
    isotropic Gaussians $N(\mu_1,\sigma_1^2 I)$, $N(\mu_2,\sigma_2^2 I)$ the population value is
    $\mathrm{SW}_2^2 = \|\mu_1-\mu_2\|^2/d + (\sigma_1-\sigma_2)^2$.

    **Arguments:**

    - `x`: samples, shape `(n, d)`.
    - `y`: reference samples, shape `(m, d)`.
    - `key`: PRNG key for the directions.
    - `num_projections`: number of directions $L$ (default 128; the Monte-Carlo error of
        $\mathrm{SW}_p^p$ over directions falls as $L^{-1/2}$).
    - `p`: the order, ≥ 1 (default 2).

    **Returns:**

    A scalar: the $\mathrm{SW}_p$ estimate.
    """
    x = _samples(x, "x")
    y = _samples(y, "y")
    _same_dim(x, y, "x", "y")
    key = check_key(key)
    num_projections = check_int(num_projections, "num_projections")
    p = check_positive(p, "p")
    if p < 1:
        raise ValueError(f"`p` must be at least 1, got {p}")
    return _sliced_impl(x, y, key, num_projections=num_projections, p=p)


# ----------------------------------------------------------------------------------------------
# Kernel Stein discrepancy
# ----------------------------------------------------------------------------------------------


def _stein_pair(xb, sb, y, sy, *, c2, beta):
    """IMQ Stein kernel u_p(x_i, y_j) for a block of rows: (B, m)."""
    d = xb.shape[-1]
    if d <= _DIRECT_MAX_DIM:
        r = [xb[:, k, None] - y[None, :, k] for k in range(d)]
        r2 = _coordinate_sum(lambda k: r[k] * r[k], d)
        ss = _coordinate_sum(lambda k: sb[:, k, None] * sy[None, :, k], d)
        # (s(y) − s(x)) · (x − y)
        sr = _coordinate_sum(lambda k: (sy[None, :, k] - sb[:, k, None]) * r[k], d)
    else:
        r2 = _sqdist(xb, y)
        ss = sb @ sy.T
        sy_r = xb @ sy.T - jnp.sum(y * sy, axis=-1)[None, :]
        sx_r = jnp.sum(xb * sb, axis=-1)[:, None] - sb @ y.T
        sr = sy_r - sx_r
    q = c2 + r2
    k = jnp.exp(beta * jnp.log(q))
    kq = k / q
    trace = -4.0 * beta * (beta - 1.0) * (kq / q) * r2 - 2.0 * beta * d * kq
    return (k * ss + 2.0 * beta * kq * sr + trace,)


@functools.partial(jax.jit, static_argnames=("block", "beta"))
def _ksd_impl(x, s, c, *, block, beta):
    n = x.shape[0]
    pair = functools.partial(_stein_pair, c2=c * c, beta=beta)
    (total,) = _blocked_sums(pair, (x, s), (x, s), block=block, exclude_diagonal=False)
    return jnp.sqrt(jnp.maximum(total / (n * n), 0.0))


def ksd(
    samples: Float[Array, "n d"],
    score_fn: Callable[[Float[Array, "n d"]], Float[Array, "n d"]],
    *,
    c: float = 1.0,
    beta: float = -0.5,
    block_size: int | None = None,
    max_samples: int | None = None,
    key: PRNGKeyArray | None = None,
) -> Float[Array, ""]:
    r"""Kernel Stein discrepancy with the inverse multiquadric kernel (Gorham & Mackey 2017).

    With $k(x,y)=(c^2+\|x-y\|^2)^\beta$, $s=\nabla\log p$ and $r=x-y$, $q=c^2+\|r\|^2$, the
    Stein kernel is

    $$u_p(x,y) = k\,s(x)\!\cdot\!s(y) + 2\beta q^{\beta-1}\,(s(y)-s(x))\!\cdot\!r
      - 4\beta(\beta-1)q^{\beta-2}\|r\|^2 - 2\beta d\,q^{\beta-1},$$

    and the returned value is the **V-statistic** $\mathrm{KSD} = \sqrt{\frac{1}{n^2}\sum_{i,j}u_p(x_i,x_j)}$
    (the discrepancy of the empirical measure, ≥ 0). For exact samples it shrinks like
    $O(n^{-1/2})$; compare against the value for exact target samples of the same size.

    **Arguments:**

    - `samples`: samples, shape `(n, d)`.
    - `score_fn`: the target's score, mapping `(n, d)` to `(n, d)` (evaluated once on all samples).
    - `c`: kernel scale $c > 0$ (default 1).
    - `beta`: kernel exponent $\beta\in(-1, 0)$ (default −1/2).
    - `block_size`, `max_samples`, `key`: as in [`mmd`][].

    **Returns:**

    A scalar: the KSD.
    """
    x = _samples(samples, "samples", min_rows=1)
    max_samples = _max_samples(max_samples)
    if key is not None:
        key = check_key(key)
    if not callable(score_fn):
        raise TypeError(f"`score_fn` must be callable, got {type(score_fn).__name__}")
    c = check_positive(c, "c")
    beta = float(beta)
    if not -1.0 < beta < 0.0:
        raise ValueError(f"`beta` must lie in (-1, 0), got {beta}")
    x = _subsample(x, max_samples, key, 0)
    s = check_array(score_fn(x), "score_fn(samples)", ndim=2)
    if s.shape != x.shape:
        raise ValueError(
            f"`score_fn` must map samples of shape {tuple(x.shape)} to the same shape, got {tuple(s.shape)}"
        )
    return _ksd_impl(x, s.astype(x.dtype), jnp.asarray(c, x.dtype), block=_block(block_size, x.shape[0], x.shape[0]), beta=beta)


# ----------------------------------------------------------------------------------------------
# Score error
# ----------------------------------------------------------------------------------------------


class ScoreError(NamedTuple):
    """Monte-Carlo estimate of a mean squared score error."""

    #: The estimate $\frac1n\sum_i e_i$.
    value: Array
    #: Its standard error, std$(e)/\sqrt{n}$.
    stderr: Array


def score_error(
    score_fn: Callable[[Float[Array, "n d"]], Float[Array, "n d"]],
    target: Any,
    *,
    key: PRNGKeyArray,
    num_samples: int = 10_000,
    sigma: float | None = None,
) -> ScoreError:
    r"""Mean squared score error under the target, $\mathbb{E}_{x\sim p}\|\nabla\log p(x) - s(x)\|^2$.

    Estimated by Monte Carlo with $x_i \sim p$ (``target.sample``):
    $e_i = \|\nabla\log p(x_i) - s(x_i)\|^2$, value $=\bar e$, stderr $=\mathrm{std}(e)/\sqrt n$
    (ddof = 1). With `sigma`, the reference is the score of the σ-blurred target
    $p_\sigma = p * N(0,\sigma^2 I)$, ``target.blurred_score(x, sigma)``, still with $x\sim p$
    (the quantity a denoising score matching network learns at noise level σ).

    **Arguments:**

    - `score_fn`: the score model, mapping `(n, d)` to `(n, d)`.
    - `target`: an object with `sample`, `score` (and `blurred_score` when `sigma` is given).
    - `key`: PRNG key for the samples.
    - `num_samples`: Monte-Carlo sample size $n$ (default 10 000).
    - `sigma`: noise level of the blurred target, or `None` for the target itself.

    **Returns:**

    A [`ScoreError`][] `(value, stderr)` of scalars.
    """
    if not callable(score_fn):
        raise TypeError(f"`score_fn` must be callable, got {type(score_fn).__name__}")
    key = check_key(key)
    num_samples = check_int(num_samples, "num_samples", minimum=2)
    sample = _method(target, "sample", "score_error draws x ~ target")
    if sigma is None:
        true_fn = _method(target, "score", "score_error needs the target's analytic score")
    else:
        sigma = check_positive(sigma, "sigma", allow_zero=True)
        blurred = _method(
            target, "blurred_score",
            "score_error with `sigma` needs an analytic blurred score (e.g. a Gaussian mixture)",
        )
        true_fn = lambda z: blurred(z, sigma)  # noqa: E731
    x = check_array(sample(key, num_samples), "target.sample(key, num_samples)", ndim=2)
    _target_dim(target, x, "target.sample(key, num_samples)")
    try:
        true = true_fn(x)
    except NotImplementedError:
        raise ValueError(
            f"`target` ({type(target).__name__}) has no analytic "
            f"{'blurred ' if sigma is not None else ''}score"
        ) from None
    model = check_array(score_fn(x), "score_fn(x)", ndim=2)
    if model.shape != x.shape:
        raise ValueError(
            f"`score_fn` must map points of shape {tuple(x.shape)} to the same shape, got {tuple(model.shape)}"
        )
    return ScoreError(*_score_error_impl(jnp.asarray(true, x.dtype), model.astype(x.dtype)))


@jax.jit
def _score_error_impl(true, model):
    e = jnp.sum((true - model) ** 2, axis=-1)
    return jnp.mean(e), jnp.std(e, ddof=1) / math.sqrt(e.shape[0])


# ----------------------------------------------------------------------------------------------
# Moments and modes
# ----------------------------------------------------------------------------------------------


@jax.jit
def _mean_error_impl(x, y_or_mean):
    mu = jnp.mean(y_or_mean, axis=0) if y_or_mean.ndim == 2 else y_or_mean
    return jnp.linalg.norm(jnp.mean(x, axis=0) - mu)


def _cov(x: Array) -> Array:
    c = x - jnp.mean(x, axis=0)
    return c.T @ c / (x.shape[0] - 1)


@functools.partial(jax.jit, static_argnames=("exact",))
def _covariance_error_impl(x, y_or_cov, *, exact):
    sigma = y_or_cov if exact else _cov(y_or_cov)
    return jnp.linalg.norm(_cov(x) - sigma)


@jax.jit
def _kurtosis_impl(x):
    c = x - jnp.mean(x, axis=0)
    m2 = jnp.mean(c * c, axis=0)
    m4 = jnp.mean((c * c) ** 2, axis=0)
    return m4 / (m2 * m2) - 3.0


def _reference_or_exact(reference, exact, name_ref, name_exact, shape, what):
    if (reference is None) == (exact is None):
        raise ValueError(f"{what} needs exactly one of `{name_ref}` and `{name_exact}`")
    if exact is not None:
        e = check_array(exact, name_exact)
        if e.shape != shape:
            raise ValueError(f"`{name_exact}` must have shape {shape}, got {tuple(e.shape)}")
        return None, e
    return reference, None


def mean_error(
    samples: Float[Array, "n d"],
    reference_samples: Float[Array, "m d"] | None = None,
    *,
    mean: Float[Array, " d"] | None = None,
) -> Float[Array, ""]:
    r"""Euclidean error of the sample mean, $\|\bar x - \mu\|_2$.

    $\mu$ is either the exact target mean (`mean=`) or the mean of `reference_samples`.

    **Arguments:**

    - `samples`: samples, shape `(n, d)`.
    - `reference_samples`: reference samples, shape `(m, d)`; or
    - `mean`: the exact mean, shape `(d,)`.

    **Returns:**

    A scalar.
    """
    x = _samples(samples, "samples")
    ref, mu = _reference_or_exact(reference_samples, mean, "reference_samples", "mean", (x.shape[1],), "mean_error")
    if ref is not None:
        mu = _samples(ref, "reference_samples")
        _same_dim(x, mu, "samples", "reference_samples")
    return _mean_error_impl(x, mu.astype(x.dtype))


def covariance_error(
    samples: Float[Array, "n d"],
    reference_samples: Float[Array, "m d"] | None = None,
    *,
    cov: Float[Array, "d d"] | None = None,
) -> Float[Array, ""]:
    r"""Frobenius error of the sample covariance, $\|\hat\Sigma - \Sigma\|_F$ (ddof = 1).

    $\Sigma$ is either the exact target covariance (`cov=`) or that of `reference_samples`.

    **Arguments:**

    - `samples`: samples, shape `(n, d)`, `n ≥ 2`.
    - `reference_samples`: reference samples, shape `(m, d)`, `m ≥ 2`; or
    - `cov`: the exact covariance, shape `(d, d)`.

    **Returns:**

    A scalar.
    """
    x = _samples(samples, "samples", min_rows=2, what="a covariance")
    d = x.shape[1]
    ref, sigma = _reference_or_exact(reference_samples, cov, "reference_samples", "cov", (d, d), "covariance_error")
    if ref is not None:
        y = _samples(ref, "reference_samples", min_rows=2, what="a covariance")
        _same_dim(x, y, "samples", "reference_samples")
        return _covariance_error_impl(x, y.astype(x.dtype), exact=False)
    return _covariance_error_impl(x, sigma.astype(x.dtype), exact=True)


def frechet_distance(x, y) -> float:
    """The Fréchet distance between Gaussians fitted to two sample sets (the statistic of FID,
    on whatever features you pass): ‖μ_x − μ_y‖² + tr(C_x + C_y − 2 (C_x^½ C_y C_x^½)^½).

    Computed in float64 with NumPy (symmetric eigendecompositions, no general matrix square
    root). It is biased upwards at small sample sizes: compare it with the value for two real
    sets of the same sizes.

    **Arguments:** `x` ``(n, d)``, `y` ``(m, d)``, n, m ≥ 2, finite.

    **Returns:** a float ≥ 0.
    """
    x = np.asarray(_samples(x, "x", min_rows=2), dtype=np.float64)
    y = np.asarray(_samples(y, "y", min_rows=2), dtype=np.float64)
    _same_dim(x, y, "x", "y")
    cx, cy = np.atleast_2d(np.cov(x.T)), np.atleast_2d(np.cov(y.T))
    w, v = np.linalg.eigh(cx)
    root_x = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    cross = np.linalg.eigvalsh(root_x @ cy @ root_x)
    value = (np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(cx) + np.trace(cy)
             - 2.0 * np.sum(np.sqrt(np.clip(cross, 0.0, None))))
    return float(max(value, 0.0))


def excess_kurtosis(samples: Float[Array, "n d"]) -> Float[Array, " d"]:
    r"""Excess kurtosis of each marginal, $g_2 = m_4/m_2^2 - 3$ (population moments, as
    ``scipy.stats.kurtosis(bias=True)``): 0 for a Gaussian, 3 for a Laplace distribution.

    **Arguments:**

    - `samples`: samples, shape `(n, d)`, `n ≥ 2`.

    **Returns:**

    An array of shape `(d,)`.
    """
    return _kurtosis_impl(_samples(samples, "samples", min_rows=2, what="a kurtosis"))


def mode_weights(samples: Float[Array, "n d"], target: Any) -> Float[Array, " K"]:
    r"""Fraction of samples assigned to each mixture component.

    Sample $x_i$ goes to $\arg\max_k \log(w_k p_k(x_i))$ (its highest posterior responsibility),
    from ``target.component_log_prob(x) -> (n, K)``. Overlapping components misassign some
    points; compare with the same statistic on exact target samples rather than with $w_k$.

    **Arguments:**

    - `samples`: samples, shape `(n, d)`.
    - `target`: a mixture target with `component_log_prob`.

    **Returns:**

    An array of shape `(K,)` summing to 1.
    """
    x = _samples(samples, "samples")
    _target_dim(target, x, "samples")
    comp = _method(target, "component_log_prob", "mode_weights needs a mixture target with components")
    try:
        logp = comp(x)
    except NotImplementedError:
        raise _NoComponents(f"`target` ({type(target).__name__}) has no mixture components") from None
    logp = check_array(logp, "target.component_log_prob(samples)", ndim=2, finite=False)
    if logp.shape[0] != x.shape[0]:
        raise ValueError(
            f"`target.component_log_prob` must return shape ({x.shape[0]}, K), got {tuple(logp.shape)}"
        )
    return _mode_weights_impl(logp.astype(x.dtype))


class _NoComponents(ValueError):
    """``target.component_log_prob`` raised ``NotImplementedError``: the target is no mixture."""


@jax.jit
def _mode_weights_impl(logp):
    return jnp.mean(jax.nn.one_hot(jnp.argmax(logp, axis=1), logp.shape[1], dtype=logp.dtype), axis=0)


# ----------------------------------------------------------------------------------------------
# Chain diagnostics (Vehtari, Gelman, Simpson, Carpenter & Bürkner 2021)
# ----------------------------------------------------------------------------------------------


def _trajectory(trajectory: Any) -> Array:
    arr = check_array(trajectory, "trajectory", ndim=3)
    if arr.shape[0] < 4:
        raise ValueError(
            "`trajectory` needs at least 4 saved steps (axis 0 of shape (num_saved, num_chains, d)) "
            f"for split chains, got shape {tuple(arr.shape)}"
        )
    if arr.shape[1] < 1 or arr.shape[2] < 1:
        raise ValueError(f"`trajectory` must have shape (num_saved, num_chains, d), got {tuple(arr.shape)}")
    return arr


def _split_chains(a: Array) -> Array:
    """(M, N) chains × draws → (2M, N // 2): first and last halves (the middle draw dropped if N is odd)."""
    half = a.shape[1] // 2
    return jnp.concatenate([a[:, :half], a[:, a.shape[1] - half:]], axis=0)


def _z_scale(a: Array) -> Array:
    """Rank-normalise all draws: Φ⁻¹((r − 3/8)/(S + 1/4)) with average ranks r for ties."""
    keys = _order_key(a.reshape(-1))
    ordered = lax.sort(keys, is_stable=False)
    below = jnp.searchsorted(ordered, keys, side="left", method="scan")
    upto = jnp.searchsorted(ordered, keys, side="right", method="scan")
    rank = (below + upto + 1).astype(a.dtype) / 2.0  # average 1-based rank of each tie group
    z = jax.scipy.special.ndtri((rank - 0.375) / (keys.size + 0.25))
    return z.reshape(a.shape)


def _rhat_basic(a: Array) -> Array:
    """Gelman–Rubin R̂ of (M, N) chains: sqrt(((N−1)/N·W + B/N) / W)."""
    n = a.shape[1]
    between = n * jnp.var(jnp.mean(a, axis=1), ddof=1)
    within = jnp.mean(jnp.var(a, axis=1, ddof=1))
    return jnp.sqrt((between / within + n - 1) / n)


def _autocov(a: Array) -> Array:
    """Biased autocovariance of each chain by FFT: (M, N)."""
    n = a.shape[1]
    c = a - jnp.mean(a, axis=1, keepdims=True)
    f = jnp.fft.rfft(c, n=2 * n, axis=1)
    return jnp.fft.irfft(f * jnp.conj(f), n=2 * n, axis=1)[:, :n] / n


def _geyer_tau(a: Array) -> Array:
    """Integrated autocorrelation time of (M, N) chains, Geyer's initial monotone sequence.

    A vectorised transcription of Stan's / ArviZ's ``_ess``: multi-chain autocorrelations
    ρ_t = 1 − (W − mean_m acov_m(t)) / var⁺, pair sums P_k = ρ_2k + ρ_2k+1 truncated before the first
    non-positive one, made monotone (running minimum), τ = −1 + 2 Σ_k P_k + max(ρ_2K, 0), clamped
    below at 1/log10(MN) (so ESS ≤ MN·log10(MN)). Constant draws give τ = 1.
    """
    m, n = a.shape
    acov = _autocov(a)
    mean_var = jnp.mean(acov[:, 0]) * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n
    if m > 1:
        var_plus = var_plus + jnp.var(jnp.mean(a, axis=1), ddof=1)
    rho = 1.0 - (mean_var - jnp.mean(acov, axis=0)) / var_plus
    rho = rho.at[0].set(1.0)
    num_pairs = n // 2
    pairs = rho[0: 2 * num_pairs: 2] + rho[1: 2 * num_pairs: 2]
    k_max = max((n - 3) // 2, 0)  # the last pair Stan's loop looks at
    k = jnp.arange(num_pairs)
    stop = (pairs <= 0) & (k <= k_max)
    cut = jnp.where(jnp.any(stop), jnp.argmax(stop), k_max)
    monotone = lax.cummin(jnp.where(k < cut, pairs, jnp.inf))
    total = jnp.sum(jnp.where(k < cut, monotone, 0.0))
    rho_even = rho[2 * cut]
    extra = jnp.where(pairs[cut] >= 0, rho_even, jnp.maximum(rho_even, 0.0))
    tau = -1.0 + 2.0 * total + extra
    tau = jnp.maximum(tau, 1.0 / math.log10(max(m * n, 2)))
    return jnp.where(jnp.max(a) == jnp.min(a), jnp.ones_like(tau), tau)


def _per_dim(trajectory: Array) -> Array:
    """(num_saved, num_chains, d) → (d, num_chains, num_saved)."""
    return jnp.transpose(trajectory, (2, 1, 0))


class _Diagnostics(NamedTuple):
    rhat: Array
    ess_bulk: Array
    ess_tail: Array
    tau: Array


@jax.jit
def _diagnostics_impl(trajectory) -> _Diagnostics:
    """All chain diagnostics per coordinate in one compiled program.

    They share the split, the sort and the rank normalisation, and the four autocorrelation-time
    estimates run as one vmapped computation: compiling one small program instead of four larger
    ones is what dominates the cost of a typical call.
    """

    def one(a):  # a: (chains, draws)
        split = _split_chains(a)
        ordered = _sort(split.reshape(-1))
        folded = jnp.abs(split - _median_sorted(ordered))
        z = jax.vmap(_z_scale)(jnp.stack([split, folded]))
        rhat = jnp.max(jax.vmap(_rhat_basic)(z))
        series = jnp.stack([
            z[0],                                                        # bulk
            (split <= _quantile_sorted(ordered, 0.05)).astype(a.dtype),  # tail, lower
            (split <= _quantile_sorted(ordered, 0.95)).astype(a.dtype),  # tail, upper
            split,                                                       # raw
        ])
        tau = jax.vmap(_geyer_tau)(series)
        return _Diagnostics(rhat, split.size / tau[0], split.size / jnp.maximum(tau[1], tau[2]), tau[3])

    return jax.vmap(one)(_per_dim(trajectory))


def rhat(trajectory: Float[Array, "num_saved num_chains d"], *, per_dim: bool = False) -> Array:
    r"""Rank-normalised split-$\hat R$ (Vehtari et al. 2021).

    Each chain is split into halves; all draws of one coordinate are rank-normalised,
    $z = \Phi^{-1}((r - 3/8)/(S + 1/4))$; $\hat R = \sqrt{((N-1)/N\,W + B/N)/W}$ with $W$ the mean
    within-chain variance and $B/N$ the variance of the chain means. The bulk value uses $z$ of
    the draws, the tail value $z$ of $|x - \mathrm{median}(x)|$; the reported $\hat R$ is their
    maximum (as ``arviz.rhat(method="rank")``). Values above ~1.01 indicate unmixed chains.
    `rhat`, `ess` and `autocorrelation_time` share one compiled program that computes all of them.

    **Arguments:**

    - `trajectory`: saved states, shape `(num_saved, num_chains, d)` (steps first),
        `num_saved ≥ 4`.
    - `per_dim`: return one value per coordinate instead of the maximum.

    **Returns:**

    A scalar (the maximum over coordinates), or shape `(d,)` when `per_dim=True`.
    """
    values = _diagnostics_impl(_trajectory(trajectory)).rhat
    return values if per_dim else jnp.max(values)


def ess(
    trajectory: Float[Array, "num_saved num_chains d"],
    *,
    method: str = "bulk",
    wall_time: float | None = None,
) -> Float[Array, " d"]:
    r"""Effective sample size per coordinate (Vehtari et al. 2021, as Stan and ArviZ).

    $\mathrm{ESS} = S/\hat\tau$, $S$ = number of draws, with $\hat\tau$ from Geyer's initial
    monotone sequence on the multi-chain autocorrelation estimate (see `autocorrelation_time`).

    - `"bulk"`: on the rank-normalised split chains.
    - `"tail"`: the minimum of the ESS of the indicators $I(x \le q_{0.05})$ and
      $I(x \le q_{0.95})$ on split chains (quantiles of the split draws, which are all draws
      when `num_saved` is even).
    - `"raw"`: on the split draws themselves ($S/\tau$ with $\tau$ = `autocorrelation_time`).

    $S$ counts the split draws: `num_chains · 2·(num_saved // 2)`. As in Stan, $\hat\tau$ is
    clamped below at $1/\log_{10} S$, so antithetic chains can give ESS > S.

    **Arguments:**

    - `trajectory`: saved states, shape `(num_saved, num_chains, d)`, `num_saved ≥ 4`.
    - `method`: `"bulk"` (default), `"tail"` or `"raw"`.
    - `wall_time`: if given (seconds taken to produce the trajectory), return ESS per second.

    **Returns:**

    An array of shape `(d,)`: ESS, or ESS / `wall_time`.
    """
    if method not in ("bulk", "tail", "raw"):
        raise ValueError(f"`method` must be 'bulk', 'tail' or 'raw', got {method!r}")
    traj = _trajectory(trajectory)
    if wall_time is not None:
        wall_time = check_positive(wall_time, "wall_time")
    diag = _diagnostics_impl(traj)
    if method == "raw":
        values = traj.shape[1] * 2 * (traj.shape[0] // 2) / diag.tau
    else:
        values = diag.ess_bulk if method == "bulk" else diag.ess_tail
    return values if wall_time is None else values / wall_time


def autocorrelation_time(trajectory: Float[Array, "num_saved num_chains d"]) -> Float[Array, " d"]:
    r"""Integrated autocorrelation time per coordinate, in saved steps.

    $\hat\tau = 1 + 2\sum_{t\ge1}\hat\rho_t$ with the multi-chain estimate
    $\hat\rho_t = 1 - (W - \overline{\mathrm{acov}}_t)/\widehat{\mathrm{var}}^+$ and Geyer's
    initial monotone sequence truncation (pair sums $\hat\rho_{2k}+\hat\rho_{2k+1}$ cut before the
    first non-positive one and made non-increasing), on the split but not rank-normalised draws.
    For an AR(1) chain with coefficient ρ, $\tau = (1+\rho)/(1-\rho)$. Chains that have not
    mixed inflate $\widehat{\mathrm{var}}^+$ and so $\hat\tau$.

    **Arguments:**

    - `trajectory`: saved states, shape `(num_saved, num_chains, d)`, `num_saved ≥ 4`.

    **Returns:**

    An array of shape `(d,)`; $S/\tau$ is `ess(trajectory, method="raw")`.
    """
    return _diagnostics_impl(_trajectory(trajectory)).tau


# ----------------------------------------------------------------------------------------------
# Noise floor
# ----------------------------------------------------------------------------------------------


class NoiseFloor(NamedTuple):
    """A metric's value between independent exact target sample sets."""

    #: Mean over repeats.
    mean: Array
    #: Standard deviation over repeats (ddof = 1; 0 for a single repeat).
    std: Array
    #: All values, shape `(repeats, ...)`.
    values: Array


def _accepts_key(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.kind == p.VAR_KEYWORD or (p.name == "key" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
        for p in params
    )


def noise_floor(
    metric_fn: Callable[..., Any],
    target: Any,
    *,
    key: PRNGKeyArray,
    num: int,
    num_reference: int | None = None,
    repeats: int = 5,
) -> NoiseFloor:
    r"""The value a two-sample metric takes between exact target samples.

    For $r = 1..R$: $x^{(r)}\sim p$ of size `num`, $y^{(r)}\sim p$ of size `num_reference`, value
    $v_r$ = `metric_fn(x, y)`. A sampler whose metric lies within mean ± a few std of this floor is
    indistinguishable from the target at these sample sizes.

    **Arguments:**

    - `metric_fn`: `metric_fn(x, y) -> scalar or array`; if it accepts a `key` keyword, a fresh
        key is passed each repeat (e.g. [`sliced_wasserstein`][]).
    - `target`: an object with `sample(key, num)`.
    - `key`: PRNG key.
    - `num`: size of the first set (use the sampler's number of samples).
    - `num_reference`: size of the second set (default `num`).
    - `repeats`: number of repeats $R$ (default 5).

    **Returns:**

    A [`NoiseFloor`][] `(mean, std, values)`; `values` has shape `(repeats,) + value shape`.
    """
    if not callable(metric_fn):
        raise TypeError(f"`metric_fn` must be callable, got {type(metric_fn).__name__}")
    key = check_key(key)
    num = check_int(num, "num")
    num_reference = num if num_reference is None else check_int(num_reference, "num_reference")
    repeats = check_int(repeats, "repeats")
    sample = _method(target, "sample", "noise_floor draws exact target samples")
    with_key = _accepts_key(metric_fn)
    values = []
    for k in jax.random.split(key, repeats):
        kx, ky, km = jax.random.split(k, 3)
        x, y = sample(kx, num), sample(ky, num_reference)
        values.append(jnp.asarray(metric_fn(x, y, key=km) if with_key else metric_fn(x, y)))
    values = jnp.stack(values)
    std = jnp.std(values, axis=0, ddof=1) if repeats > 1 else jnp.zeros_like(values[0])
    return NoiseFloor(jnp.mean(values, axis=0), std, values)


# ----------------------------------------------------------------------------------------------
# evaluate / format_table
# ----------------------------------------------------------------------------------------------


def _py(v: Any) -> Any:
    """JAX/NumPy value → float or (nested) list of floats."""
    a = np.asarray(v, dtype=float)
    return float(a) if a.ndim == 0 else a.tolist()


def evaluate(
    samples: Float[Array, "n d"],
    target: Any,
    *,
    key: PRNGKeyArray,
    reference_samples: Float[Array, "m d"] | None = None,
    trajectory: Float[Array, "num_saved num_chains d"] | None = None,
    wall_time: float | None = None,
    score_fn: Callable | None = None,
    sigma: float | None = None,
    num_reference: int | None = None,
    num_projections: int = 128,
    bandwidth: float | Sequence[float] | None = None,
    max_samples: int | None = None,
    noise_floor_repeats: int = 3,
    score_error_samples: int = 10_000,
) -> dict[str, Any]:
    r"""Every applicable metric of `samples` against `target`, as a JSON-serialisable dict.

    Always (against reference samples: `reference_samples`, or `num_reference` draws from
    ``target.sample``): `mean_error`, `covariance_error`, `excess_kurtosis` (per marginal) and
    `excess_kurtosis_reference` (the target's, estimated from the reference samples), `mmd2`
    (see [`mmd`][]), `energy_distance`, `sliced_w2`, `w1` (per marginal).
    If the target has `component_log_prob`: `mode_weights` and `mode_weights_reference`.
    If the target has `score`: `ksd`. If `score_fn` is given: `score_error`, `score_error_stderr`
    (at noise level `sigma`). If `trajectory` is given: `rhat`, `rhat_per_dim`, `ess_bulk`, `ess_tail`,
    `autocorrelation_time`, and with `wall_time` also `ess_bulk_per_second`, `ess_tail_per_second`.

    Noise floors: when the target can sample and `noise_floor_repeats > 0`, each two-sample metric
    and the KSD is also computed between independent exact target sets of the same sizes,
    `noise_floor_repeats` times, stored as `<name>_floor` (mean) and `<name>_floor_std`.
    Their cost is `noise_floor_repeats` times that of the metrics.

    **Arguments:**

    - `samples`: the sampler's output, shape `(n, d)`, `n ≥ 2`.
    - `target`: the target (see the module notes), or `None` when `reference_samples` is given
        (data without an analytic density: only the sample-based metrics are reported).
    - `key`: PRNG key.
    - `reference_samples`: samples from the target, shape `(m, d)`; drawn if not given.
    - `trajectory`: saved states `(num_saved, num_chains, d)` for R̂ / ESS.
    - `wall_time`: seconds taken by the sampler, for ESS per second.
    - `score_fn`: a score model `(n, d) -> (n, d)` for `score_error`.
    - `sigma`: noise level for `score_error` (uses `target.blurred_score`).
    - `num_reference`: size of the drawn reference set (default `n`).
    - `num_projections`: directions for `sliced_w2`.
    - `bandwidth`: MMD bandwidth(s), see [`mmd`][].
    - `max_samples`: subsample size for MMD, energy distance and KSD (default: all, blocked).
    - `noise_floor_repeats`: repeats of the noise floors (0 disables them).
    - `score_error_samples`: Monte-Carlo size of `score_error`.

    **Returns:**

    A `dict` mapping metric names to floats or lists of floats (plus `dim`, `num_samples`,
    `num_reference`).
    """
    x = _samples(samples, "samples", min_rows=2, what="evaluate")
    key = check_key(key)
    max_samples = _max_samples(max_samples)
    num_projections = check_int(num_projections, "num_projections")
    noise_floor_repeats = check_int(noise_floor_repeats, "noise_floor_repeats", minimum=0)
    if target is None and reference_samples is None:
        raise ValueError("`evaluate` needs a `target` or `reference_samples`")
    if target is not None:
        _target_dim(target, x, "samples")
    n, d = x.shape
    traj = None
    if trajectory is not None:
        traj = _trajectory(trajectory)
        if traj.shape[2] != d:
            raise ValueError(f"`trajectory` has dimension {traj.shape[2]} but `samples` has dimension {d}")
    wt = None if wall_time is None else check_positive(wall_time, "wall_time")
    if score_fn is not None and target is None:
        raise ValueError("`score_fn` needs a `target` with an analytic score")
    k_ref, k_sw, k_floor, k_score, k_sub = jax.random.split(key, 5)
    can_sample = target is not None and _has_method(target, "sample")
    if reference_samples is None:
        _method(target, "sample", "evaluate draws reference samples when `reference_samples` is not given")
        m = n if num_reference is None else check_int(num_reference, "num_reference", minimum=2)
        y = _samples(target.sample(k_ref, m), "target.sample(key, num_reference)")
    else:
        y = _samples(reference_samples, "reference_samples", min_rows=2, what="evaluate")
    _same_dim(x, y, "samples", "reference_samples")
    m = y.shape[0]
    bandwidths, median = _bandwidth_spec(bandwidth)
    has_score = target is not None and _has_method(target, "score")

    def sample_metrics(a: Array, b: Array, k: Array) -> dict[str, Array]:
        a_sub = _subsample(a, max_samples, k if max_samples else None, 0)
        b_sub = _subsample(b, max_samples, k if max_samples else None, 1)
        mmd2, energy = _pair_statistics(
            a_sub, b_sub, bandwidths.astype(a.dtype),
            block_x=_block(None, a_sub.shape[0], b_sub.shape[0]),
            block_y=_block(None, b_sub.shape[0], b_sub.shape[0]),
            want_mmd=True, want_energy=True, median=median, unbiased=True,
        )
        out = {
            "mean_error": mean_error(a, b),
            "covariance_error": covariance_error(a, b),
            "mmd2": mmd2,
            "energy_distance": energy,
            "sliced_w2": _sliced_impl(a, b, k_sw, num_projections=num_projections, p=2),
            "w1": _wasserstein_1d_impl(a, b, p=1),
        }
        if has_score:
            out["ksd"] = ksd(a, target.score, max_samples=max_samples, key=k if max_samples else None)
        return out

    values = sample_metrics(x, y, k_sub)
    result: dict[str, Any] = {"dim": d, "num_samples": n, "num_reference": m}
    result.update({name: _py(v) for name, v in values.items()})
    result["excess_kurtosis"] = _py(excess_kurtosis(x))
    result["excess_kurtosis_reference"] = _py(excess_kurtosis(y))
    if target is not None and _has_method(target, "component_log_prob"):
        try:
            result["mode_weights"] = _py(mode_weights(x, target))
            result["mode_weights_reference"] = _py(mode_weights(y, target))
        except _NoComponents:  # only "not a mixture" is skipped; a wrong shape or a bug propagates
            pass
    if score_fn is not None:
        err = score_error(score_fn, target, key=k_score, num_samples=score_error_samples, sigma=sigma)
        result["score_error"] = _py(err.value)
        result["score_error_stderr"] = _py(err.stderr)
    if can_sample and noise_floor_repeats > 0:
        floors = [
            sample_metrics(target.sample(jax.random.fold_in(k, 0), n), target.sample(jax.random.fold_in(k, 1), m),
                           jax.random.fold_in(k, 2))
            for k in jax.random.split(k_floor, noise_floor_repeats)
        ]
        for name in values:
            stacked = np.stack([np.asarray(f[name], dtype=float) for f in floors])
            result[f"{name}_floor"] = _py(stacked.mean(axis=0))
            result[f"{name}_floor_std"] = _py(stacked.std(axis=0, ddof=1) if len(floors) > 1 else 0 * stacked[0])
    if traj is not None:
        diag = _diagnostics_impl(traj)
        result["rhat"] = _py(jnp.max(diag.rhat))
        result["rhat_per_dim"] = _py(diag.rhat)
        bulk, tail = diag.ess_bulk, diag.ess_tail
        result["ess_bulk"] = _py(bulk)
        result["ess_tail"] = _py(tail)
        result["autocorrelation_time"] = _py(diag.tau)
        if wt is not None:
            result["wall_time"] = wt
            result["ess_bulk_per_second"] = _py(bulk / wt)
            result["ess_tail_per_second"] = _py(tail / wt)
    elif wt is not None:
        result["wall_time"] = wt
    return result


def _fmt(v: Any, digits: int) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (list, tuple, np.ndarray)):
        return "[" + ", ".join(_fmt(u, digits) for u in v) + "]"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.{digits}g}"
    return str(v)


def format_table(metrics: Mapping[str, Any], *, digits: int = 4) -> str:
    r"""A Markdown table of a metrics dict (as returned by [`evaluate`][]).

    `<name>_floor` and `<name>_floor_std` entries become a "noise floor" column (mean ± std) next
    to `<name>`. Given a mapping of run names to metrics dicts, the table has one column per run
    (and no noise floor column).

    **Arguments:**

    - `metrics`: a metrics dict, or a mapping `{run name: metrics dict}`.
    - `digits`: significant digits (default 4).

    **Returns:**

    The table as a string (lists are printed as `[a, b, …]`).
    """
    if not isinstance(metrics, Mapping):
        raise TypeError(f"`metrics` must be a dict, got {type(metrics).__name__}")
    digits = check_int(digits, "digits")
    if metrics and all(isinstance(v, Mapping) for v in metrics.values()):
        runs = list(metrics)
        names: list[str] = []
        for run in runs:
            names += [k for k in metrics[run] if k not in names]
        lines = ["| metric | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
        for name in names:
            cells = [_fmt(metrics[run].get(name), digits) for run in runs]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"
    base = [k for k in metrics if not (k.endswith("_floor") or k.endswith("_floor_std"))]
    has_floor = any(f"{k}_floor" in metrics for k in base)
    lines = ["| metric | value | noise floor |", "|---|---|---|"] if has_floor else ["| metric | value |", "|---|---|"]
    for name in base:
        row = f"| {name} | {_fmt(metrics[name], digits)} |"
        if has_floor:
            floor = ""
            if f"{name}_floor" in metrics:
                mean_, std_ = metrics[f"{name}_floor"], metrics.get(f"{name}_floor_std")
                if isinstance(mean_, (list, tuple)):
                    floor = "[" + ", ".join(
                        f"{_fmt(a, digits)} ± {_fmt(b, 2)}" for a, b in zip(mean_, std_ or [None] * len(mean_))
                    ) + "]"
                else:
                    floor = _fmt(mean_, digits) + (f" ± {_fmt(std_, 2)}" if std_ is not None else "")
            row += f" {floor} |"
        lines.append(row)
    return "\n".join(lines) + "\n"
