"""The SDE `rsnjax.sample` runs for a conditional model driven by ``inputs``: one stimulus for all
chains, one per chain, or piecewise-constant stimuli that switch at given steps."""

from __future__ import annotations

import math
import types
import warnings
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ._validation import check_array, check_int, check_key, check_positive
from .conditional import ConditionalSamplerOnly, ConditionalScoreNetwork
from .extent import with_extent
from .reservoir import ReservoirSampler
from .sde import CircuitSDE, ReservoirLangevin, euler_maruyama, low_rank_apply

__all__ = ["sample_with_inputs"]


class _Driven(CircuitSDE):
    """A circuit driven by a piecewise-constant input, as one SDE that `sample` can run.

    The state is the circuit's state with each chain's inputs appended: ``(batch, state_dim +
    num_segments·cond_dim)`` (the inputs have zero drift and noise, so they ride along through
    `sample`'s blocks, padding and devices). The sampler's loop carries ``(circuit loop state,
    inputs (batch, S, cond_dim), step count)`` and uses segment k = #{switch_steps ≤ t} at step t.
    """

    switch_steps: Int[Array, " S1"]
    inner_state_dim: int = eqx.field(static=True)
    num_segments: int = eqx.field(static=True)
    input_dim: int = eqx.field(static=True)

    @property
    def state_dim(self) -> int:
        return self.inner_state_dim + self.num_segments * self.input_dim

    @property
    def floats_per_chain(self) -> int:
        return self._inner_floats() + self.num_segments * self.input_dim

    def _inner_floats(self) -> int:
        return self.inner_state_dim

    def _split(self, state):
        n = self.inner_state_dim
        inputs = state[..., n:].reshape(state.shape[:-1] + (self.num_segments, self.input_dim))
        return state[..., :n], inputs

    def _segment_input(self, inputs, t):
        if self.num_segments == 1:
            return inputs[..., 0, :]
        seg = jnp.sum(t >= self.switch_steps).astype(jnp.int32)
        return jax.lax.dynamic_index_in_dim(inputs, seg, axis=-2, keepdims=False)

    # the circuit, given its state and the current input (batch, cond_dim)
    def _inner_loop_state(self, state):
        return state

    def _inner_loop_step(self, loop_state, c, noise, step_size):
        raise NotImplementedError

    def _inner_loop_readout(self, loop_state):
        return self.readout_inner(loop_state)

    def _inner_state_from_loop(self, loop_state):
        return loop_state

    def _inner_drift(self, state, c):
        raise NotImplementedError

    def _inner_diffusion(self, noise):
        raise NotImplementedError

    def readout_inner(self, state):
        raise NotImplementedError

    # CircuitSDE
    def readout(self, state):
        return self.readout_inner(state[..., : self.inner_state_dim])

    def drift(self, state):
        """The drift with the first segment's input (the flat form has no clock)."""
        r, inputs = self._split(state)
        v = self._inner_drift(r, inputs[..., 0, :])
        return jnp.concatenate([v, jnp.zeros(inputs.shape[:-2] + (self.num_segments * self.input_dim,), v.dtype)], -1)

    def diffusion(self, noise):
        v = self._inner_diffusion(noise)
        return jnp.concatenate([v, jnp.zeros(v.shape[:-1] + (self.num_segments * self.input_dim,), v.dtype)], -1)

    def loop_state(self, state):
        r, inputs = self._split(state)
        return self._inner_loop_state(r), inputs, jnp.zeros((), jnp.int32)

    def loop_step(self, loop_state, noise, step_size):
        inner, inputs, t = loop_state
        new, x = self._inner_loop_step(inner, self._segment_input(inputs, t), noise, step_size)
        return (new, inputs, t + 1), x

    def loop_readout(self, loop_state):
        return self._inner_loop_readout(loop_state[0])

    def loop_input(self, loop_state):
        """``(batch, cond_dim)``: the input in force at the loop's step count (the one the next
        step uses); `rsnjax._recording` computes recorded rates with it."""
        _, inputs, t = loop_state
        return self._segment_input(inputs, t)

    def state_from_loop(self, loop_state):
        inner, inputs, _ = loop_state
        r = self._inner_state_from_loop(inner)
        return jnp.concatenate([r, inputs.reshape(inputs.shape[:-2] + (-1,)).astype(r.dtype)], -1)


class _DrivenOutput(_Driven):
    """Langevin dynamics dx = (I + S) s(x, c_t) dt/τ + √(2/τ) dB of a conditional score."""

    model: Any
    skew: Float[Array, "dim dim"] | None
    method: str = eqx.field(static=True)
    tau: float = eqx.field(static=True)

    @property
    def dim(self) -> int:
        return self.inner_state_dim

    def _inner_floats(self) -> int:
        return self.inner_state_dim + int(getattr(self.model, "hidden", 0) or 0)

    def _score(self, x, c):
        return self.model(x, c) if self.method == "call" else getattr(self.model, self.method)(x, c)

    def _inner_drift(self, x, c):
        s = self._score(x, c)
        if self.skew is not None:
            s = s + s @ self.skew.T
        return s / self.tau

    def _inner_diffusion(self, noise):
        return math.sqrt(2.0 / self.tau) * noise

    def readout_inner(self, state):
        return state

    def _inner_loop_step(self, x, c, noise, step_size):
        return euler_maruyama(x, self._inner_drift(x, c), self._inner_diffusion(noise), step_size), x


class _DrivenReservoir(_Driven):
    """The reservoir with the input current W_cond c_t + I: its own fused step (or, with a skew
    matrix, `ReservoirLangevin`'s) with the constant input I replaced by each chain's current."""

    circuit: CircuitSDE  # a `_ReservoirStep`, or a `ReservoirLangevin` with skew
    W_cond: Float[Array, "hidden cond_dim"]
    I: Float[Array, " hidden"]

    @property
    def dim(self) -> int:
        return self.circuit.dim

    def _inner_floats(self) -> int:
        return self.circuit.floats_per_chain

    def _with_input(self, c):
        current = self.I + low_rank_apply(c, self.W_cond)
        if isinstance(self.circuit, ReservoirLangevin):
            return eqx.tree_at(lambda s: s.reservoir.I, self.circuit, current)
        return eqx.tree_at(lambda s: s.I, self.circuit, current)

    def readout_inner(self, state):
        return self.circuit.readout(state)

    def neurons(self):
        """The reservoir's weights as `rsnjax._recording` reads them (W_out, W_in, I, W_cond,
        activation, τ), from the stepper's rows (or the `ReservoirLangevin`'s reservoir)."""
        if isinstance(self.circuit, ReservoirLangevin):
            res = self.circuit.reservoir
            w_out, w_in, activation, tau = res.W_out, res.W_in, res.activation, res.tau
        else:
            step = self.circuit
            w_out, w_in, activation, tau = step.W_out, step.in_rows.T, step.activation, step.tau
        return types.SimpleNamespace(W_out=w_out, W_in=w_in, I=self.I, W_cond=self.W_cond,
                                     activation=activation, tau=tau, hidden=w_out.shape[1])

    def _inner_drift(self, r, c):
        return self._with_input(c).drift(r)

    def _inner_diffusion(self, noise):
        return self.circuit.diffusion(noise)

    def _inner_loop_state(self, r):
        return self.circuit.loop_state(r)

    def _inner_loop_step(self, loop_state, c, noise, step_size):
        return self._with_input(c).loop_step(loop_state, noise, step_size)

    def _inner_loop_readout(self, loop_state):
        return self.circuit.loop_readout(loop_state)

    def _inner_state_from_loop(self, loop_state):
        return self.circuit.state_from_loop(loop_state)


def _check_inputs(inputs, switch_steps, *, cond_dim, num_chains, total_steps):
    """``(inputs (num_chains, S, cond_dim), switch_steps (S − 1,))`` from `sample`'s arguments."""
    if switch_steps is None:
        c = check_array(inputs, "inputs", ndim=(1, 2))
        if c.shape[-1] != cond_dim:
            raise ValueError(f"`inputs` must have last axis of size {cond_dim} (the model's cond_dim), "
                             f"got shape {tuple(c.shape)}")
        if c.ndim == 2 and c.shape[0] != num_chains:
            raise ValueError(f"`inputs` must have shape ({cond_dim},) (one input for all chains) or "
                             f"({num_chains}, {cond_dim}) (one per chain), got {tuple(c.shape)}")
        return jnp.broadcast_to(c, (num_chains, cond_dim))[:, None, :], np.zeros((0,), np.int32)
    if isinstance(switch_steps, (str, bytes, dict, set)):
        raise TypeError(f"`switch_steps` must be a 1-D sequence of step counts, got {type(switch_steps).__name__}")
    steps = np.asarray(switch_steps)
    if steps.ndim != 1 or steps.size == 0 or steps.dtype.kind not in "iu":
        raise ValueError(f"`switch_steps` must be a non-empty 1-D sequence of integers, got {switch_steps!r}")
    if np.any(steps <= 0) or np.any(np.diff(steps) <= 0) or np.any(steps >= total_steps):
        raise ValueError(f"`switch_steps` must increase strictly within (0, burn_in + num_steps = "
                         f"{total_steps}), got {steps.tolist()}")
    num_segments = steps.size + 1
    c = check_array(inputs, "inputs", ndim=(2, 3))
    if c.shape[0] != num_segments or c.shape[-1] != cond_dim or (c.ndim == 3 and c.shape[1] != num_chains):
        raise ValueError(
            f"with {steps.size} `switch_steps`, `inputs` must have shape ({num_segments}, {cond_dim}) "
            f"(one input per segment) or ({num_segments}, {num_chains}, {cond_dim}) (per segment "
            f"and chain), got {tuple(c.shape)}")
    c = c[:, None, :] if c.ndim == 2 else c
    c = jnp.broadcast_to(c, (num_segments, num_chains, cond_dim))
    return jnp.moveaxis(c, 0, 1), steps.astype(np.int32)


def _driven_sde(model, *, cond_dim, dim, tau, skew, switch_steps, num_segments):
    """The `_Driven` SDE for ``model`` (see `sample_with_inputs`)."""
    from .sampling import _check_skew, as_sde

    common = dict(switch_steps=jnp.asarray(switch_steps, jnp.int32), num_segments=num_segments,
                  input_dim=cond_dim)
    if isinstance(model, ReservoirSampler):
        plain = ReservoirSampler(model.W_out, model.W_in, model.I, activation=model.activation,
                                 tau=model.tau if tau is None else tau, noise_map=model.noise_map)
        circuit = as_sde(plain, skew=skew).stepper()
        return _DrivenReservoir(circuit=circuit, W_cond=model.W_cond, I=model.I,
                                inner_state_dim=model.hidden, **common)
    tau = 1.0 if tau is None else check_positive(tau, "tau")
    if isinstance(model, (ConditionalScoreNetwork, ConditionalSamplerOnly)) or (
            callable(model) and not (hasattr(model, "score") and hasattr(model, "dim"))):
        method = "call"
    elif hasattr(model, "score") and hasattr(model, "dim"):
        method = "score"
    else:
        raise TypeError(
            "`model` must be a ReservoirSampler with input weights, a ConditionalScoreNetwork, a "
            "ConditionalSamplerOnly, a conditional target with `.score(x, c)`, or a score "
            f"function (x, c) -> score; got {type(model).__name__}")
    if dim is None:
        dim = getattr(model, "dim", None)
    if dim is None:
        raise ValueError("`dim` is required when `model` is a plain score function (x, c) -> score "
                         "(or pass `initial_state` of shape (num_chains, dim))")
    dim = check_int(dim, "dim")
    if getattr(model, "extent", None) is not None:  # as `as_sde`: keep it out of the static part
        model = with_extent(model, None)
    return _DrivenOutput(model=model, skew=_check_skew(skew, dim), method=method, tau=tau,
                         inner_state_dim=dim, **common)


def sample_with_inputs(model, *, inputs, switch_steps, key, num_chains, num_steps, step_size,
                       initial_state=None, init="uniform", burn_in=0, tau=None, skew=None,
                       dim=None, dtype=None, extent=None, return_state=False, **settings):
    """`rsnjax.sample` of a conditional model driven by ``inputs`` (called by `sample` when it
    is given ``inputs``; see its docstring). The result is `sample`'s for the circuit alone:
    samples, trajectory and the final state (without the inputs)."""
    from .sampling import _initial_state, sample

    key = check_key(key)
    num_chains = check_int(num_chains, "num_chains")
    num_steps = check_int(num_steps, "num_steps")
    burn_in = check_int(burn_in, "burn_in", minimum=0)
    if isinstance(model, CircuitSDE):
        raise TypeError("`inputs` needs a conditional model, not a CircuitSDE")
    if isinstance(model, ReservoirSampler) and model.W_cond is None:
        raise ValueError("`inputs` was given but the ReservoirSampler has no input weights (W_cond): "
                         "build it from a ConditionalScoreNetwork")
    cond_dim = getattr(model, "cond_dim", None)
    if cond_dim is None:
        if not callable(model) or isinstance(model, eqx.Module):
            raise ValueError(f"`inputs` was given but `model` ({type(model).__name__}) takes no input; "
                             "use a conditional model (e.g. ConditionalScoreNetwork)")
        cond_dim = int(np.shape(inputs)[-1]) if np.ndim(inputs) else 0
    if dim is None and initial_state is not None and not isinstance(model, ReservoirSampler) \
            and not hasattr(model, "dim"):
        dim = int(np.shape(initial_state)[-1])
    c, steps = _check_inputs(inputs, switch_steps, cond_dim=cond_dim, num_chains=num_chains,
                             total_steps=burn_in + num_steps)
    if switch_steps is not None and settings.get("backend", "scan") == "diffrax":
        raise ValueError("time-varying `inputs` (with `switch_steps`) need backend='scan'")
    if extent is None:
        extent = getattr(model, "extent", None)
    sde = _driven_sde(model, cond_dim=cond_dim, dim=dim, tau=tau, skew=skew, switch_steps=steps,
                      num_segments=c.shape[1])
    if dtype is None:
        leaves = [a for a in jax.tree_util.tree_leaves(model) if eqx.is_inexact_array(a)]
        dtype = leaves[0].dtype if leaves else jnp.result_type(float)

    k_init, _ = jax.random.split(key)  # as `sample` splits it: the same key gives the same start
    shape = types.SimpleNamespace(state_dim=sde.inner_state_dim)  # what `_initial_state` reads
    state0 = _initial_state(shape, init, initial_state, k_init, num_chains, jnp.dtype(dtype))
    state0 = jnp.concatenate([state0, c.reshape(num_chains, -1).astype(state0.dtype)], -1)
    with warnings.catch_warnings(record=True) as caught:  # re-issued below, attributed to the caller
        warnings.simplefilter("always")
        result = sample(sde, key=key, num_chains=num_chains, num_steps=num_steps, step_size=step_size,
                        initial_state=state0, burn_in=burn_in, dtype=dtype, extent=extent,
                        return_state=return_state, **settings)
    for w in caught:
        warnings.warn(w.message, w.category, stacklevel=3)
    if result.final_state is not None:
        result = result._replace(final_state=result.final_state[:, : sde.inner_state_dim])
    return result
