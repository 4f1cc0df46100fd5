"""The diffrax backend of `rsnjax.sample`: the same SDE solved by `diffrax.diffeqsolve`.

Euler's method with an `UnsafeBrownianPath` (fixed steps, no Brownian tree: cheap, and enough since
nothing is differentiated through the solve) and `ForwardMode` adjoint, which `UnsafeBrownianPath`
requires. The state is the whole block ``(block, state_dim)``; the Brownian motion is
d-dimensional per chain ``(block, dim)`` and enters through the SDE's own noise map, so a
reservoir's N-dimensional noise is never formed as a dense matrix product.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp


class _NoiseTerm(diffrax.AbstractTerm):
    """g(y) dW with g applied as the SDE's `diffusion` map (a matrix-free control term)."""

    sde: eqx.Module
    path: diffrax.AbstractBrownianPath

    def vf(self, t, y, args):
        return y  # unused: `prod` needs only the control

    def contr(self, t0, t1, **kwargs):
        return self.path.evaluate(t0, t1, **kwargs)

    def prod(self, vf, control):
        return self.sde.diffusion(control)

    def vf_prod(self, t, y, args, control):
        return self.sde.diffusion(control)


def solve_block(sde, r0, key, *, step_size, burn_in, num_steps, save_every, dtype):
    """Simulate one block of chains; returns ``((final_state, nonfinite_step), trajectory)``
    with the same layout as the scan backend."""
    block = r0.shape[0]
    total = burn_in + num_steps
    t1 = total * step_size
    path = diffrax.UnsafeBrownianPath(shape=jax.ShapeDtypeStruct((block, sde.dim), dtype), key=key)
    terms = diffrax.MultiTerm(diffrax.ODETerm(lambda t, y, args: sde.drift(y)), _NoiseTerm(sde, path))
    subs = [diffrax.SubSaveAt(t1=True)]
    if save_every is not None:
        num_saved = num_steps // save_every
        ts = jnp.asarray((burn_in + save_every * jnp.arange(1, num_saved + 1)) * step_size, dtype)
        subs.append(diffrax.SubSaveAt(ts=ts, fn=lambda t, y, args: sde.readout(y)))
    sol = diffrax.diffeqsolve(
        terms, diffrax.Euler(), t0=0.0, t1=t1, dt0=step_size, y0=r0,
        saveat=diffrax.SaveAt(subs=subs), stepsize_controller=diffrax.ConstantStepSize(),
        adjoint=diffrax.ForwardMode(), max_steps=total + 1, throw=False,
    )
    final = sol.ys[0][-1]
    traj = sol.ys[1] if save_every is not None else jnp.zeros((0,), dtype)
    bad = jnp.where(jnp.all(jnp.isfinite(sde.readout(final)), axis=-1), -1, total).astype(jnp.int32)
    return (final, bad), traj
