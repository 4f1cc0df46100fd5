"""The C++ reservoir kernel (`rsnjax._kernels`) against XLA's loop, the reference.

Tolerance for kernel vs XLA (same key, same noise): the two differ only in float32 rounding: the
readout W_out u is summed in another order (≈ √N·ε·|x| ≈ 2e-6 per step at N = 203 and |x| ≤ 3),
tanh is the same rational approximation evaluated with the leak folded in (an ulp), and the leak's
contraction (1 − a) keeps the accumulated difference within a few per-step differences (the
runs here measured ≤ 1.4e-6). ``TOL`` = 2e-5·max(1, |x|) leaves a factor of 10 and is still 10⁴×
below what dropping the leak or shifting the noise by a step does (≥ 1e-2, checked by breaking
the kernel on purpose).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rsnjax
from rsnjax import _kernels
from rsnjax.sampling import chain_key_words, scan_steps, step_noise

pytestmark = pytest.mark.skipif(not _kernels.available(),
                                reason=f"the C++ kernel is not built here: {_kernels.unavailable_reason()}")

TOL = 2e-5


def _reservoir(dim, hidden, activation, seed=0):
    net = rsnjax.ScoreNetwork(dim, hidden, activation=activation, key=jax.random.key(seed))
    return rsnjax.ReservoirSampler.from_score_network(net)


def _both(monkeypatch, model, **kw):
    kw = dict(dict(key=jax.random.key(1), warn=False, on_nonfinite="flag", return_state=True), **kw)
    monkeypatch.setenv("RSNJAX_KERNEL", "0")
    ref = rsnjax.sample(model, **kw)
    monkeypatch.setenv("RSNJAX_KERNEL", "1")
    return ref, rsnjax.sample(model, **kw)


def _close(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    np.testing.assert_allclose(b, a, rtol=0, atol=TOL * max(1.0, float(np.nanmax(np.abs(a)))))


def test_tanh_approximation_error_against_float64():
    """The kernel's tanh is within 3e-7 of float64 tanh, absolute and relative (measured max
    2.6e-7, at x ≈ ±5.75, the same as XLA's own float32 tanh; ≈ 2 ulps at 1), within 2.4e-7 of
    XLA's tanh, odd, 1 at saturation, and keeps NaN."""
    x = np.concatenate([np.linspace(-12, 12, 200_001), np.geomspace(1e-8, 1, 2001), -np.geomspace(1e-8, 1, 2001)])
    x = x.astype(np.float32)
    y = _kernels.tanh(x).astype(np.float64)
    exact = np.tanh(x.astype(np.float64))
    assert np.max(np.abs(y - exact)) < 3e-7
    assert np.max(np.abs(y - exact) / np.maximum(np.abs(exact), 1e-30)) < 3e-7
    assert np.max(np.abs(y - np.asarray(jnp.tanh(x), np.float64))) < 2.4e-7
    np.testing.assert_array_equal(_kernels.tanh(-x), -_kernels.tanh(x))
    assert _kernels.tanh(np.array([20.0, -20.0], np.float32)).tolist() == [1.0, -1.0]
    assert np.isnan(_kernels.tanh(np.array([np.nan, 1.0], np.float32))[0])


def test_bound_loops_compute_what_they_say():
    """The machine-bound loops of the benchmarks do the work they are timed for: `aligned_rows`
    starts on a 64-byte line; `rmw_loop` makes every pass (x ← 0.9999x + 1e-4, 5 passes; a fused or
    skipped pass would leave x 1e-4 away, 10⁴× the tolerance) and `phi_loop` applies relu then
    x·1.0001 + 1e-3, each row by its own thread, to float32 rounding (fused multiply-adds)."""
    x = _kernels.aligned_rows(2, 1000, 0.0)
    assert x.ctypes.data % 64 == 0 and x.shape == (2, 1000) and x.flags.c_contiguous
    x[...] = np.linspace(-2, 2, 2000, dtype=np.float32).reshape(2, 1000)
    ref = x.astype(np.float64)
    _kernels.rmw_loop(x, 5, 2)
    for _ in range(5):
        ref = ref * np.float32(0.9999) + np.float32(1e-4)
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-6)
    y = _kernels.aligned_rows(2, 1000, 0.0)
    y[...] = np.linspace(-2, 2, 2000, dtype=np.float32).reshape(2, 1000)
    ref = np.maximum(y.astype(np.float64), 0) * np.float32(1.0001) + np.float32(1e-3)
    _kernels.phi_loop(y, 1, 2, "relu")
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-6)


def test_kernel_noise_is_step_noise_to_a_few_ulps():
    """The kernel draws each step's noise itself: the same Threefry bits and uniform as
    `step_noise`, then √2·erf⁻¹ with XLA's polynomial and its own log. Over 64 chains × 2
    components × 2000 steps (and across the uint32 wrap of the step counter): ≥ 95 % of the
    draws bit-identical (measured ≈ 99 %), all within 4 ulps (measured ≤ 3), out to |z| > 4.
    A counter off by one step, or one erf⁻¹ coefficient off in its 6th digit, fails this."""
    keys = np.asarray(chain_key_words(jax.random.key(11), jnp.arange(64, dtype=jnp.uint32)))
    for first in (0, 2 ** 32 - 700):
        steps = (first + np.arange(2000, dtype=np.uint64)) % 2 ** 32
        ref = np.asarray(step_noise(jnp.asarray(keys), jnp.asarray(steps, jnp.uint32)[:, None, None], 2,
                                    jnp.float32))  # (steps, chains, 2)
        got = np.stack([np.stack([_kernels.normals(keys[c], first, j, 2000) for j in range(2)], -1)
                        for c in range(64)], 1)
        assert got.shape == ref.shape and np.abs(ref).max() > 4
        ulps = np.abs(got.view(np.int32).astype(np.int64) - ref.view(np.int32).astype(np.int64))
        assert np.mean(ulps == 0) >= 0.95
        assert ulps.max() <= 4


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("dim", [1, 2, 5])
def test_kernel_matches_xla_loop(monkeypatch, activation, dim):
    """N = 203 (not a multiple of the vector width: full, half and scalar tails), 37 chains in
    blocks of 16 (padded), burn-in + save_every, and the burn-in longer than two chunks."""
    model = _reservoir(dim, 203, activation)
    ref, got = _both(monkeypatch, model, num_chains=37, num_steps=240, step_size=0.02,
                     burn_in=300, save_every=30, block_size=16)
    assert np.all(np.isfinite(np.asarray(ref.trajectory)))
    _close(ref.trajectory, got.trajectory)
    _close(ref.samples, got.samples)
    _close(ref.final_state, got.final_state)
    np.testing.assert_array_equal(got.nonfinite_step, -1)
    # the chains move: a wrong step would not stay within TOL
    assert float(jnp.abs(ref.trajectory[-1] - ref.trajectory[0]).max()) > 0.1


def test_kernel_results_do_not_depend_on_blocks_threads_or_segments(monkeypatch):
    """Every chain's arithmetic in the kernel is the same whatever the block, thread split or
    chunk cut (segments): the same bits. (Blocks of >= 64 chains: smaller ones can change XLA's
    product for the noise part, as on XLA's loop.)"""
    model = _reservoir(2, 100, "tanh")
    kw = dict(key=jax.random.key(3), num_chains=128, num_steps=200, step_size=0.02, burn_in=100,
              save_every=20, warn=False, return_state=True)
    a = rsnjax.sample(model, block_size=128, **kw)
    b = rsnjax.sample(model, block_size=64, **kw)
    monkeypatch.setenv("RSNJAX_KERNEL_THREADS", "3")
    c = rsnjax.sample(model, block_size=128, progress=True, checkpoint_every=20, **kw)
    for other in (b, c):
        np.testing.assert_array_equal(np.asarray(other.trajectory), np.asarray(a.trajectory))
        np.testing.assert_array_equal(np.asarray(other.final_state), np.asarray(a.final_state))


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_nonfinite_chains_are_reported_at_the_same_step(monkeypatch, activation):
    """With a = h/τ = 3 the leak term −2u doubles |u| every step until it overflows (chain 4
    starts at 1e30 and overflows first): the kernel reports every chain at the step XLA's loop
    does, and the diverged chains' samples are non-finite on both."""
    model = _reservoir(2, 203, activation)
    start = np.array(jax.random.uniform(jax.random.key(5), (9, 203), minval=-2, maxval=2))
    start[4] *= 1e30
    ref, got = _both(monkeypatch, model, num_chains=9, num_steps=400, step_size=3.0 * model.tau,
                     initial_state=start)
    steps = np.asarray(ref.nonfinite_step)
    assert np.all((steps > 0) & (steps < 400)) and len(set(steps.tolist())) > 1
    assert steps[4] == steps.min() and steps[4] < 60
    np.testing.assert_array_equal(got.nonfinite_step, ref.nonfinite_step)
    assert not np.isfinite(np.asarray(got.samples)).any()


def test_which_loops_use_the_kernel(monkeypatch):
    """tanh/relu reservoirs with d ≤ 8 in float32 compile to the kernel's custom call; RSNJAX_KERNEL=0,
    skew, softplus, d = 9 and float64 stay on XLA's loop."""

    def uses_kernel(sde, dtype=jnp.float32):
        sde = jax.tree_util.tree_map(lambda a: a.astype(dtype) if eqx_inexact(a) else a, sde.stepper())
        run = scan_steps(sde, chain_key_words(jax.random.key(0), jnp.arange(4, dtype=jnp.uint32)),
                         jnp.asarray(0.01, dtype), dtype, 1)
        state = sde.loop_state(jnp.zeros((4, sde.state_dim), dtype))
        text = jax.jit(lambda s: run((s, jnp.full((4,), -1, jnp.int32)), 0, 10)).lower(state).as_text()
        return "rsnjax_reservoir_steps" in text

    def eqx_inexact(a):
        return isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jnp.inexact)

    as_sde = rsnjax.sampling.as_sde
    assert uses_kernel(as_sde(_reservoir(2, 20, "tanh")))
    assert uses_kernel(as_sde(_reservoir(8, 20, "relu")))
    assert not uses_kernel(as_sde(_reservoir(9, 20, "tanh")))
    assert not uses_kernel(as_sde(_reservoir(2, 20, "softplus")))
    assert not uses_kernel(as_sde(_reservoir(2, 20, "tanh"), skew=rsnjax.skew_symmetric(2)))
    with jax.enable_x64(True):
        assert not uses_kernel(as_sde(_reservoir(2, 20, "tanh")), jnp.float64)
    monkeypatch.setenv("RSNJAX_KERNEL", "0")
    assert not uses_kernel(as_sde(_reservoir(2, 20, "tanh")))


def test_threads_setting_is_checked(monkeypatch):
    monkeypatch.setenv("RSNJAX_KERNEL_THREADS", "0")
    with pytest.raises(ValueError, match="RSNJAX_KERNEL_THREADS must be a positive integer, got '0'"):
        _kernels.num_threads()
    monkeypatch.setenv("RSNJAX_KERNEL_THREADS", "2")
    assert _kernels.num_threads() == 2
    assert os.environ["RSNJAX_KERNEL_THREADS"] == "2"
