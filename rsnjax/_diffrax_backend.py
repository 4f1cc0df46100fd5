"""The diffrax backend of `rsnjax.sample`: the same SDE solved by `diffrax.diffeqsolve`.

Euler's method with constant steps, `ForwardMode` adjoint (nothing is differentiated through the
solve) and a Brownian path that hands diffrax the sampler's own per-chain noise (`step_noise`):
the solve runs in units of steps (t = 0, 1, 2, ... with dt = 1, drift scaled by the step size h
and noise by √h, i.e. dy = h·b(y) ds + √h·g(y) dW_s), so the path knows the step index exactly
and chain c's increment at step t is the same standard normal the scan backend uses. The diffrax
backend therefore reproduces the scan backend's samples up to floating-point rounding and, like it,
does not depend on the block size or the number of devices. The state is the whole block
``(block, state_dim)``; the d-dimensional noise enters through the SDE's own noise map, so a
reservoir's N-dimensional noise is never formed as a dense matrix product.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .sampling import step_noise

#: float32 times count steps exactly up to 2²⁴.
MAX_STEPS_FLOAT32_TIME = 2**24


class _ChainNoisePath(diffrax.AbstractBrownianPath):
    """W(s₁) − W(s₀) for s in steps: chain c's standard normal of step ⌊s₀⌉ (times √(s₁ − s₀),
    which is 1 for the unit steps the backend takes)."""

    key_words: Array
    dim: int = eqx.field(static=True)
    dtype: jnp.dtype = eqx.field(static=True)
    levy_area: type = eqx.field(static=True, default=diffrax.BrownianIncrement)

    @property
    def t0(self):
        return -jnp.inf

    @property
    def t1(self):
        return jnp.inf

    def evaluate(self, t0, t1=None, left=True, use_levy=False):
        del left
        if t1 is None:
            raise NotImplementedError("the sampler's noise path only provides increments")
        step = jnp.round(t0).astype(jnp.uint32)
        w = step_noise(self.key_words, step, self.dim, self.dtype)
        w = w * jnp.sqrt(jnp.asarray(t1 - t0, self.dtype))
        if use_levy:
            return diffrax.BrownianIncrement(dt=t1 - t0, W=w)
        return w


class _NoiseTerm(diffrax.AbstractTerm):
    """√h · g(y) dW with g applied as the SDE's `diffusion` map (a matrix-free control term)."""

    sde: eqx.Module
    path: diffrax.AbstractBrownianPath
    scale: Array  # √h, an input of the compiled program

    def vf(self, t, y, args):
        return y  # unused: `prod` needs only the control

    def contr(self, t0, t1, **kwargs):
        return self.path.evaluate(t0, t1, **kwargs)

    def prod(self, vf, control):
        return self._noise(control)

    def vf_prod(self, t, y, args, control):
        return self._noise(control)

    def _noise(self, control):
        # the state is (circuit state, finite-step counter); the counter gets no noise
        return self.scale * self.sde.diffusion(control), jnp.zeros(control.shape[:1], jnp.result_type(float))


def solve_block(sde, r0, key_words, *, step_size, burn_in, num_steps, save_every, dtype):
    """Simulate one block of chains (noise key words ``(block, 2)`` from `chain_key_words`;
    ``step_size`` a scalar array, traced); returns ``((final_state, nonfinite_step), trajectory)`` with the same layout as the scan
    backend."""
    total = burn_in + num_steps
    if total >= MAX_STEPS_FLOAT32_TIME and jnp.dtype(jnp.result_type(float)) != jnp.float64:
        raise ValueError(f"backend='diffrax' counts steps in float32 time, exact up to "
                         f"{MAX_STEPS_FLOAT32_TIME} steps; got burn_in + num_steps = {total}. "
                         "Use backend='scan' or enable jax_enable_x64.")
    h = jnp.asarray(step_size, dtype)
    path = _ChainNoisePath(key_words, sde.dim, jnp.dtype(dtype))
    count_dtype = jnp.result_type(float)

    def drift(t, y, args):
        # the counter grows by one per step taken from a finite state: it ends at the first
        # non-finite step (a non-finite state stays non-finite)
        finite = jnp.all(jnp.isfinite(sde.readout(y[0])), axis=-1)
        return h * sde.drift(y[0]), finite.astype(count_dtype)

    terms = diffrax.MultiTerm(diffrax.ODETerm(drift), _NoiseTerm(sde, path, jnp.sqrt(h)))
    subs = [diffrax.SubSaveAt(t1=True)]
    if save_every is not None:
        num_saved = num_steps // save_every
        ts = jnp.asarray(burn_in + save_every * jnp.arange(1, num_saved + 1), jnp.result_type(float))
        subs.append(diffrax.SubSaveAt(ts=ts, fn=lambda t, y, args: sde.readout(y[0])))
    y0 = (r0, jnp.zeros(r0.shape[:1], count_dtype))
    sol = diffrax.diffeqsolve(
        terms, diffrax.Euler(), t0=0.0, t1=float(total), dt0=1.0, y0=y0,
        saveat=diffrax.SaveAt(subs=subs), stepsize_controller=diffrax.ConstantStepSize(),
        adjoint=diffrax.ForwardMode(), max_steps=total + 1, throw=False,
    )
    final, count = sol.ys[0][0][-1], sol.ys[0][1][-1]
    # throw=False keeps NaN chains flowing to `on_nonfinite`; any other solver failure is an error
    final = eqx.error_if(final, sol.result != diffrax.RESULTS.successful,
                         "backend='diffrax': the solve did not complete (diffrax result not successful)")
    traj = sol.ys[1] if save_every is not None else jnp.zeros((0,), dtype)
    # as the scan backend: the number of steps after which the state was first non-finite
    finite = jnp.all(jnp.isfinite(sde.readout(final)), axis=-1)
    bad = jnp.where(finite, -1, count.astype(jnp.int32)).astype(jnp.int32)
    return (final, bad), traj
