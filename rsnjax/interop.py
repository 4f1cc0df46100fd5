"""rsnjax in a blackjax / numpyro / ArviZ stack.

- `as_blackjax`: any model `sample` accepts as a blackjax-style sampling algorithm, a pair of
  pure functions ``init(position) -> state`` and ``step(key, state) -> (state, info)`` with
  ``state.position`` the circuit's readout x. Run one chain with `jax.lax.scan`, many with
  `jax.vmap`, or hand it to blackjax's own loops (``blackjax.util.run_inference_algorithm``).
- `score_from_logdensity`: a log-density over a pytree position (a blackjax ``logdensity_fn``,
  the negative of a numpyro ``potential_fn``, or your own) as a target for `sample`, `fit`'s
  sampling side and `rsnjax.metrics`: flat ``(num, d)`` points in, scores out.
- `to_arviz`: a `SampleResult`'s saved trajectory as ArviZ data with dims
  ``(chain, draw, dim)`` (also `SampleResult.to_arviz`).

`sample` stays the fast path for many chains of one circuit (one compiled program, blocked for
cache, sharded over devices, noise from a counter hash). `as_blackjax` runs the *same*
Euler–Maruyama step (the same `CircuitSDE` and its fused step) but draws its noise with
``jax.random.normal(key, ...)`` from the key it is given, as blackjax kernels do, so its paths
are not those of `sample` with the same key; their laws are the same.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from ._validation import check_array, check_int, check_positive
from .sampling import as_sde
from .sde import CircuitSDE, ReservoirLangevin

__all__ = ["SamplingAlgorithm", "CircuitState", "CircuitInfo", "as_blackjax", "LogDensityTarget",
           "score_from_logdensity", "to_arviz"]


# --- a blackjax-style algorithm ---------------------------------------------------------------


class SamplingAlgorithm(NamedTuple):
    """A blackjax-style sampling algorithm: ``init(position) -> state`` and
    ``step(key, state) -> (state, info)``, both pure (the same fields as
    ``blackjax.base.SamplingAlgorithm``, so blackjax's loops accept it)."""

    init: Callable
    step: Callable


class CircuitState(NamedTuple):
    """The state of one chain of `as_blackjax`'s algorithm.

    - ``position``: ``(d,)`` the readout x of the circuit (for a `LogDensityTarget`, the pytree
      position it was built with).
    - ``circuit``: ``(state_dim,)`` the circuit's full state: r ∈ ℝᴺ for a `ReservoirSampler`,
      x itself for output-space models.
    """

    position: Any
    circuit: Float[Array, " state_dim"]


class CircuitInfo(NamedTuple):
    """What one step reports: ``is_finite``, whether the new circuit state is finite (a chain
    that stopped being finite stays so: lower the step size)."""

    is_finite: Bool[Array, ""]


def _model_dtype(sde: CircuitSDE):
    leaves = [x for x in jax.tree_util.tree_leaves(sde) if eqx.is_inexact_array(x)]
    return leaves[0].dtype if leaves else jnp.result_type(float)


def _make_init(sde: CircuitSDE, lift, ravel, unravel):
    dtype = _model_dtype(sde)

    def init(position, rng_key=None) -> CircuitState:
        """The state of a chain whose readout is `position` (`rng_key` is accepted, as blackjax's
        loops pass one, and not used: the start is deterministic)."""
        x = check_array(ravel(position), "position", ndim=1, dim=sde.dim, finite=False).astype(dtype)
        circuit = x if lift is None else x @ lift.T
        return CircuitState(unravel(x), circuit)

    return init


def _make_step(sde: CircuitSDE, step_size: float, unravel):
    def step(rng_key, state: CircuitState) -> tuple[CircuitState, CircuitInfo]:
        """One Euler–Maruyama step of the circuit with noise drawn from `rng_key`."""
        r = jnp.asarray(state.circuit)
        noise = jax.random.normal(rng_key, (1, sde.dim), r.dtype)
        new, _ = sde.euler_maruyama_step(r[None], noise, jnp.asarray(step_size, r.dtype))
        x = sde.readout(new)[0]
        new = new[0]
        return CircuitState(unravel(x), new), CircuitInfo(jnp.all(jnp.isfinite(new)))

    return step


def _identity(x):
    return x


def as_blackjax(model: Any, *, step_size: float, tau: float | None = None, skew=None,
                dim: int | None = None) -> SamplingAlgorithm:
    """A model as a blackjax-style sampling algorithm (one Euler–Maruyama step per call).

    The step is the one `sample` runs, dstate = drift(state) dt + noise_map · dW with the
    circuit's own state (the N reservoir units of a `ReservoirSampler`, the d outputs
    otherwise), fed standard-normal noise drawn from the step's ``key``. Both functions are pure
    and work on one chain: `jax.jit` them, `jax.vmap` them over chains, `jax.lax.scan` them over
    steps, or pass the algorithm to ``blackjax.util.run_inference_algorithm``. The model's
    weights are closed over (constants of any program that calls them).

    **Arguments:**

    - `model`: anything `sample` accepts: a `ReservoirSampler`, `ScoreNetwork`, `SamplerOnly`,
      a target with ``.score`` (including a `LogDensityTarget`), a score function
      ``(batch, d) -> (batch, d)`` (pass `dim`), or a `CircuitSDE`.
    - `step_size`: dt > 0 (keyword-only); see `stable_step_size`.
    - `tau`, `skew`, `dim`: as in `sample`.

    **Returns:** a `SamplingAlgorithm` ``(init, step)``:

    - ``init(position) -> CircuitState``: `position` ``(d,)`` is the readout to start from (a
      pytree like the example position for a `LogDensityTarget`). A reservoir starts at
      r = W_out⁺ x, the smallest state whose readout is x. (A second argument, the key that
      blackjax's loops pass, is ignored.)
    - ``step(key, state) -> (CircuitState, CircuitInfo)``.

    Example::

        algo = rsnjax.as_blackjax(reservoir, step_size=1e-3)
        def run(key, x0):
            def body(state, k):
                state, _ = algo.step(k, state)
                return state, state.position
            return jax.lax.scan(body, algo.init(x0), jax.random.split(key, 1000))[1]
        paths = jax.jit(jax.vmap(run))(jax.random.split(key, 512), x0s)   # (512, 1000, d)
    """
    step_size = check_positive(step_size, "step_size")
    sde = as_sde(model, tau=tau, skew=skew, dim=dim)
    lift = None
    if isinstance(sde, ReservoirLangevin):  # start from the smallest reservoir state with readout x
        w_out = np.asarray(sde.reservoir.W_out, np.float64)
        lift = jnp.asarray(np.linalg.pinv(w_out), _model_dtype(sde))  # (N, d)
    elif sde.state_dim != sde.dim:
        raise ValueError(f"`model` ({type(model).__name__}) has a state of size {sde.state_dim} that is "
                         f"not its readout (size {sde.dim}): as_blackjax cannot start it from a position")
    sde = sde.stepper()  # the fused form `sample` runs (a reservoir's factors laid out as rows)
    if isinstance(model, LogDensityTarget):
        ravel, unravel = model.ravel, model.unravel
    else:
        ravel = unravel = _identity
    return SamplingAlgorithm(init=_make_init(sde, lift, ravel, unravel), step=_make_step(sde, step_size, unravel))


# --- a log-density as a target ----------------------------------------------------------------


class LogDensityTarget(eqx.Module):
    """A log-density over a pytree position, seen as a target on flat points ``(num, d)``.

    Built by `score_from_logdensity`. It has what `sample` and `rsnjax.metrics` look for in a
    target: ``dim``, ``score(x)`` and ``log_prob(x)`` on flat points (no ``sample``: give the
    metrics reference draws, e.g. from NUTS, with ``reference_samples=``), plus ``ravel`` and
    ``unravel`` between the pytree and flat ``(d,)`` vectors (`jax.flatten_util.ravel_pytree`).
    The log-density only needs to be known up to an additive constant.
    """

    logdensity_fn: Callable
    unravel: Callable
    dim: int = eqx.field(static=True)

    def ravel(self, position) -> Float[Array, " dim"]:
        """The flat ``(d,)`` vector of a pytree position (``(d,)`` arrays pass through)."""
        flat, _ = ravel_pytree(position)
        return flat

    def _logp_flat(self, flat):
        return self.logdensity_fn(self.unravel(flat))

    def log_prob(self, x: Float[Array, "*batch dim"]) -> Float[Array, "*batch"]:
        """log p at flat points ``(..., d)`` (up to the density's constant)."""
        x = check_array(x, "x", dim=self.dim, finite=False)
        flat = x.reshape(-1, self.dim)
        return jax.vmap(self._logp_flat)(flat).reshape(x.shape[:-1])

    def score(self, x: Float[Array, "*batch dim"]) -> Float[Array, "*batch dim"]:
        """∇log p at flat points ``(..., d)``, by `jax.grad` of the log-density."""
        x = check_array(x, "x", dim=self.dim, finite=False)
        flat = x.reshape(-1, self.dim)
        return jax.vmap(jax.grad(self._logp_flat))(flat).reshape(x.shape).astype(x.dtype)


def score_from_logdensity(logdensity_fn: Callable, position: Any = None, *,
                          dim: int | None = None) -> LogDensityTarget:
    """Turn a log-density into a target that `sample` and the metrics accept.

    **Arguments:**

    - `logdensity_fn`: position ↦ scalar log-density (up to a constant), differentiable with
      `jax.grad`: a blackjax ``logdensity_fn``, ``lambda p: -potential_fn(p)`` for a numpyro
      model's ``potential_fn`` (unconstrained space, from
      ``numpyro.infer.util.initialize_model``), or any JAX function.
    - `position`: an example position, a pytree of arrays (e.g. ``{"mu": 0.0, "tau": jnp.ones(3)}``);
      only its structure, shapes and dtypes are used. The target's flat points are
      ``ravel_pytree(position)[0]``-shaped: ``d`` = the total number of entries.
    - `dim`: instead of `position`, when `logdensity_fn` takes a plain ``(d,)`` array.

    **Returns:** a `LogDensityTarget` with ``dim``, ``score`` ``(num, d) -> (num, d)``,
    ``log_prob`` ``(num, d) -> (num,)``, ``ravel`` and ``unravel``. Pass it to
    ``rsnjax.sample(target, ...)`` to run Langevin on it, to `as_blackjax`, to
    ``rsnjax.metrics.ksd(samples, target.score)``, or to
    ``rsnjax.metrics.evaluate(samples, target, reference_samples=...)``.
    """
    if not callable(logdensity_fn):
        raise TypeError(f"`logdensity_fn` must be callable, got {type(logdensity_fn).__name__}")
    if (position is None) == (dim is None):
        raise ValueError("pass exactly one of `position` (an example pytree position) or `dim` "
                         "(when `logdensity_fn` takes a flat (dim,) array)")
    if position is None:
        dim = check_int(dim, "dim")
        position = jnp.zeros((dim,), jnp.result_type(float))
    leaves = jax.tree_util.tree_leaves(position)
    if not leaves:
        raise ValueError("`position` has no array leaves")
    for leaf in leaves:
        if not jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact):
            raise TypeError(f"`position` must hold floating-point arrays (a log-density is differentiated "
                            f"with respect to them), got a leaf of dtype {jnp.asarray(leaf).dtype}")
    flat, unravel = ravel_pytree(position)
    try:
        value = logdensity_fn(position)
    except Exception as err:  # noqa: BLE001 - re-raised with what was called
        raise ValueError(f"`logdensity_fn(position)` failed on the example position: {err}") from err
    if jnp.shape(value) != ():
        raise ValueError(f"`logdensity_fn` must return a scalar, got shape {jnp.shape(value)}")
    return LogDensityTarget(logdensity_fn, unravel, int(flat.shape[0]))


# --- ArviZ --------------------------------------------------------------------------------------


def _import_arviz():
    try:
        import arviz
    except ImportError as err:
        raise ImportError("`to_arviz` needs ArviZ: `pip install 'rsnjax[arviz]'` (or `pip install arviz`)") from err
    return arviz


def to_arviz(result: Any, *, var_name: str = "x", dim_name: str = "dim", coords: dict | None = None):
    """A `SampleResult`'s saved trajectory as ArviZ data, posterior variable ``var_name`` with
    dims ``(chain, draw, dim_name)``.

    The trajectory ``(num_saved, num_chains, d)`` (steps first, as `rsnjax.metrics` takes it)
    becomes ``(chain, draw, d)``: each chain's readouts every `save_every` steps after burn-in are
    its draws. ``arviz.rhat`` / ``arviz.ess`` on it agree with `rsnjax.metrics.rhat` / `ess` on
    the trajectory (for the tail ESS pass ``prob=0.05``: ArviZ ≥ 1 otherwise uses its 89 % interval
    instead of the 5 % / 95 % quantiles).

    **Arguments:**

    - `result`: a `SampleResult` from ``sample(..., save_every=k)``.
    - `var_name`: the posterior variable's name.
    - `dim_name`: the name of the output dimension.
    - `coords`: optional coordinates, e.g. ``{"dim": ["pc1", "pc2"]}``.

    **Returns:** ``arviz.InferenceData`` (ArviZ < 1; an ``xarray.DataTree`` from ArviZ ≥ 1).
    The posterior's ``attrs`` hold the run's ``wall_time`` and ``compile_time`` (seconds).

    **Raises:** `ImportError` without ArviZ; `ValueError` when nothing was saved.
    """
    traj = getattr(result, "trajectory", None)
    if traj is None:
        raise ValueError("the SampleResult has no trajectory: run `sample(..., save_every=k)` to save draws")
    az = _import_arviz()
    from ._version import __version__

    draws = np.moveaxis(np.asarray(traj), 0, 1)  # (chain, draw, d)
    posterior = {var_name: draws}
    dims = {var_name: [dim_name]}
    attrs = {"inference_library": "rsnjax", "inference_library_version": __version__,
             "wall_time": float(result.wall_time), "compile_time": float(result.compile_time)}
    major = int(str(az.__version__).split(".")[0])
    if major >= 1:  # ArviZ 1.x: from_dict({group: {var: array}}), returns a DataTree
        data = az.from_dict({"posterior": posterior}, coords=coords, dims=dims)
    else:
        data = az.from_dict(posterior=posterior, coords=coords, dims=dims)
    data.posterior.attrs.update(attrs)
    return data
