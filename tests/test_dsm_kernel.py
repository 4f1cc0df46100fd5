"""The C++ DSM kernels (rsnjax/_kernels/dsm.cc through rsnjax._dsm_kernel) against XLA's hand-written
passes (the reference), and `fit`'s draws made per chunk against draws made per step."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rsnjax
from rsnjax import ScoreNetwork, _dsm_kernel, fit, geometric_sigmas, targets, training
from rsnjax.dsm import _score_network_backward, _score_network_forward

EPS = float(np.finfo(np.float32).eps)
needs_kernel = pytest.mark.skipif(not _dsm_kernel.available(),
                                  reason=f"C++ DSM kernel not built: {_dsm_kernel.unavailable_reason()}")


def _network(dim, hidden, activation, seed):
    net = ScoreNetwork(dim, hidden, activation=activation, key=jax.random.key(seed))
    # a readout well away from its small initial values, so that every term matters
    return eqx.tree_at(lambda m: m.A, net, 3.0 * net.A)


def _float64_passes(net, x, g):
    """out, gA, gB, gb in float64 NumPy, and the sums of absolute terms each is made of (the scale
    of its float32 rounding error)."""
    A, B, b = (np.asarray(a, np.float64) for a in (net.A, net.B, net.b))
    x, g = np.asarray(x, np.float64), np.asarray(g, np.float64)
    u = x @ B.T + b
    if net.activation == "relu":
        h, dh = np.maximum(u, 0.0), (u > 0).astype(np.float64)
    else:
        h = np.tanh(u)
        dh = 1.0 - h * h
    back = g @ A
    gh = back * dh
    values = (h @ A.T, g.T @ h, gh.T @ x, gh.sum(0))
    # per output: Σ |terms| (products of absolute values, with the chained sums inside)
    mags = (np.abs(h) @ np.abs(A).T, np.abs(g).T @ np.abs(h), (np.abs(np.abs(g) @ np.abs(A)) * np.abs(dh)).T @ np.abs(x),
            (np.abs(g) @ np.abs(A) * np.abs(dh)).sum(0))
    return values, mags


def _assert_close(got, ref, mag, terms, what):
    """|got − ref| ≤ 8 ε √terms · Σ|terms| + 4 ε (a float32 sum of `terms` products, rounded at
    every step, is within ≈ ε √terms · Σ|terms| of the exact value for random-signed errors)."""
    got, ref, mag = np.asarray(got, np.float64), np.asarray(ref, np.float64), np.asarray(mag, np.float64)
    assert got.shape == ref.shape, what
    tol = 8 * EPS * np.sqrt(terms) * (mag + np.abs(ref)) + 4 * EPS
    bad = np.abs(got - ref) > tol
    assert not bad.any(), f"{what}: max excess {np.max(np.abs(got - ref) - tol):.3g} at {np.argwhere(bad)[:3]}"


@needs_kernel
@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_kernel_passes_match_xla_and_float64(activation, dim):
    """forward and backward at N = 37 (no multiple of any vector width: the padded last block),
    13 rows (an odd count: the forward's leftover rows), against XLA's passes and float64."""
    net = _network(dim, 37, activation, dim)
    kx, kg = jax.random.split(jax.random.key(20 + dim))
    x = 1.5 * jax.random.normal(kx, (13, dim), jnp.float32)
    g = jax.random.normal(kg, (13, dim), jnp.float32)
    out = jax.jit(_dsm_kernel.forward)(net, x)
    grads = jax.jit(_dsm_kernel.backward)(net, x, g)
    pre, h, xla_out = _score_network_forward(net, x)
    xla_grads = _score_network_backward(net, x, pre, h, g)
    (ref_out, ref_A, ref_B, ref_b), (m_out, m_A, m_B, m_b) = _float64_passes(net, x, g)
    n, rows = 37, 13
    for got in (out, xla_out):
        _assert_close(got, ref_out, m_out, n, "out")
    for gr in (grads, xla_grads):
        _assert_close(gr.A, ref_A, m_A, rows, "gA")
        _assert_close(gr.B, ref_B, m_B, rows, "gB")
        _assert_close(gr.b, ref_b, m_b, rows, "gb")
    assert grads.A.shape == net.A.shape and grads.B.shape == net.B.shape and grads.b.shape == net.b.shape
    # the kernel is deterministic: the same inputs give bitwise the same outputs
    again = jax.jit(_dsm_kernel.backward)(net, x, g)
    for name in ("A", "B", "b"):
        np.testing.assert_array_equal(getattr(again, name), getattr(grads, name))


@needs_kernel
@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("dim, hidden, batch", [(1, 1000, 129), (2, 203, 31), (4, 45, 7)])
def test_dsm_value_and_grad_kernel_matches_xla(monkeypatch, activation, dim, hidden, batch):
    """`dsm_value_and_grad` with the kernel (the default) against RSNJAX_KERNEL=0 (XLA)."""
    net = _network(dim, hidden, activation, 3 + dim)
    kx, ke = jax.random.split(jax.random.key(30 + dim))
    x = jax.random.normal(kx, (batch, dim), jnp.float32)
    noise = jax.random.normal(ke, (batch, dim), jnp.float32)
    sigma = 0.3
    assert _dsm_kernel.applies_to(net, x)
    kernel = rsnjax.dsm_value_and_grad(net, x, noise, sigma)
    monkeypatch.setenv("RSNJAX_KERNEL", "0")
    assert not _dsm_kernel.applies_to(net, x)
    xla = rsnjax.dsm_value_and_grad(net, x, noise, sigma)
    # scale of the rounding: the per-row residual is O(|ε|/σ), summed over the batch and N
    (loss_k, grads_k), (loss_x, grads_x) = kernel, xla
    np.testing.assert_allclose(loss_k, loss_x, rtol=8 * EPS * np.sqrt(hidden * batch))
    for name in ("A", "B", "b"):
        got, ref = np.asarray(getattr(grads_k, name)), np.asarray(getattr(grads_x, name))
        scale = np.max(np.abs(ref))
        assert scale > 1e-3
        np.testing.assert_allclose(got, ref, rtol=0, atol=16 * EPS * np.sqrt(batch * hidden) * scale)


@needs_kernel
def test_kernel_applies_only_where_it_should(monkeypatch):
    """The kernel is in the traced step for float32 relu/tanh, d ≤ 4, and not otherwise."""
    x2 = jnp.zeros((5, 2), jnp.float32)

    def uses_kernel(net, x):
        jaxpr = jax.make_jaxpr(rsnjax.dsm_value_and_grad)(net, x, x, 0.5)
        return "rsnjax_dsm" in str(jaxpr)

    for act in ("relu", "tanh"):
        assert uses_kernel(ScoreNetwork(2, 17, activation=act, key=jax.random.key(0)), x2)
    assert not uses_kernel(ScoreNetwork(2, 17, activation="softplus", key=jax.random.key(0)), x2)
    assert not uses_kernel(ScoreNetwork(5, 17, key=jax.random.key(0)), jnp.zeros((5, 5), jnp.float32))
    with jax.enable_x64(True):
        net64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a,
                                       ScoreNetwork(2, 17, key=jax.random.key(0)))
        assert not uses_kernel(net64, x2.astype(jnp.float64))
    monkeypatch.setenv("RSNJAX_KERNEL", "0")
    assert not _dsm_kernel.enabled()
    # (a new shape: jax caches traces, and the variable is read when the step is traced)
    assert not uses_kernel(ScoreNetwork(2, 19, key=jax.random.key(0)), x2)


def _short_fit(dim, activation, target):
    net = ScoreNetwork(dim, 61, activation=activation, key=jax.random.key(1))
    return fit(net, target, sigmas=geometric_sigmas(1.0, 0.1, 2), key=jax.random.key(0), steps_per_level=150,
               batch_size=33, optimizer=optax.adam(1e-3), progress=False)


@needs_kernel
@pytest.mark.parametrize("dim, activation", [(1, "relu"), (2, "tanh")])
def test_fit_with_kernel_matches_xla(monkeypatch, dim, activation):
    """A short `fit` (default remedies: EMA, antithetic noise, far-field penalty) with the kernel
    and with XLA: the same parameters up to float32 rounding accumulated over its 300 steps."""
    target = targets.double_peak() if dim == 1 else targets.ring_of_gaussians()
    net_k, hist_k = _short_fit(dim, activation, target)
    monkeypatch.setenv("RSNJAX_KERNEL", "0")
    net_x, hist_x = _short_fit(dim, activation, target)
    steps = 300
    # per step a relative rounding of ≈ ε √(batch·N) in the gradient; Adam's steps are of size
    # lr·O(1) whatever the gradient's scale, so the differences add up like a random walk
    tol = 16 * EPS * np.sqrt(33 * 61) * np.sqrt(steps)
    differs = False
    for name in ("A", "B", "b"):
        got, ref = np.asarray(getattr(net_k, name)), np.asarray(getattr(net_x, name))
        np.testing.assert_allclose(got, ref, rtol=0, atol=tol * np.max(np.abs(ref)))
        differs |= not np.array_equal(got, ref)
    assert differs  # really two code paths (their sums run in different orders)
    np.testing.assert_allclose(hist_k.loss, hist_x.loss, rtol=tol)


def test_fit_draws_per_chunk_equal_draws_per_step(monkeypatch):
    """`fit` draws a chunk's batches, noise and far-field points before its scan when they are
    small (`training.HOIST_BYTES`): bitwise the same training as drawing them step by step."""
    monkeypatch.setenv("RSNJAX_KERNEL", "0")
    target = targets.ring_of_gaussians()
    training._cached_chunk_runner.cache_clear()
    hoisted, hist_h = _short_fit(2, "tanh", target)
    monkeypatch.setattr(training, "HOIST_BYTES", -1)
    training._cached_chunk_runner.cache_clear()
    per_step, hist_s = _short_fit(2, "tanh", target)
    training._cached_chunk_runner.cache_clear()
    for name in ("A", "B", "b"):
        np.testing.assert_array_equal(getattr(hoisted, name), getattr(per_step, name))
    np.testing.assert_array_equal(hist_h.loss, hist_s.loss)
