"""`sample`: batched Euler–Maruyama for thousands of chains, as one jit-compiled program.

Layout of the computation (the whole thing is one `jax.jit`):

    chains ──shard_map over local devices──▶ per device: lax.map over blocks of `block_size`
    chains ──▶ per block: lax.scan over steps (burn-in, then `save_every`-step segments whose
    readout x = W_out r is stored)

Blocks keep a block's reservoir state in cache across steps. Every chain c draws its noise at step
t from ``fold_in(chain_key[c], t)`` with ``chain_key[c] = fold_in(key, c)``, so the result depends
only on ``key`` — not on the block size, the number of devices or the backend's blocking.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from ._validation import check_array, check_int, check_key, check_positive
from .networks import SamplerOnly, ScoreNetwork
from .reservoir import ReservoirSampler
from .sde import CircuitSDE, OutputLangevin, ReservoirLangevin

__all__ = ["sample", "SampleResult", "SimulationDivergedError", "as_sde", "skew_symmetric"]


class SampleResult(NamedTuple):
    """What `sample` returns.

    - ``samples``: ``(num_chains, dim)`` the readout of each chain's final state.
    - ``trajectory``: ``(num_saved, num_chains, dim)`` readouts every `save_every` steps after
      burn-in, or ``None`` when `save_every` was not given.
    - ``final_state``: ``(num_chains, state_dim)`` the final circuit state (r for a reservoir),
      or ``None`` unless ``return_state=True``.
    - ``nonfinite_step``: ``(num_chains,)`` int, for each chain the first step count after which
      its state was NaN/inf, −1 for chains that stayed finite.
    - ``wall_time``: seconds for the run, compilation excluded; ``compile_time``: seconds to compile.
    """

    samples: jax.Array
    trajectory: jax.Array | None
    final_state: jax.Array | None
    nonfinite_step: jax.Array
    wall_time: float
    compile_time: float


class SimulationDivergedError(FloatingPointError):
    """Some chains' states became NaN or infinite. ``.result`` holds the `SampleResult`."""

    def __init__(self, message: str, result: SampleResult):
        super().__init__(message)
        self.result = result


def skew_symmetric(dim: int, *, scale: float = 1.0, key=None) -> jax.Array:
    """A skew-symmetric ``(dim, dim)`` matrix S for accelerated sampling.

    With ``key`` None: the fixed rotation generator (S[i, i+1] = scale, S[i+1, i] = −scale);
    otherwise ``scale · (G − Gᵀ)/√2`` with Gaussian G.
    """
    dim = check_int(dim, "dim")
    if key is None:
        s = jnp.zeros((dim, dim)).at[jnp.arange(dim - 1), jnp.arange(1, dim)].set(scale)
    else:
        g = jax.random.normal(check_key(key), (dim, dim))
        s = scale * (g - g.T) / math.sqrt(2.0)
    return s - s.T if key is None else s


def as_sde(model: Any, *, tau: float | None = None, skew=None, dim: int | None = None) -> CircuitSDE:
    """The `CircuitSDE` that `sample` runs for ``model``.

    - `ReservoirSampler` → `ReservoirLangevin` (τ: the reservoir's own unless `tau` is given).
    - `ScoreNetwork`, `SamplerOnly`, a callable score function, or a target with ``.score``
      → `OutputLangevin` (``dim`` is needed for a bare function).
    - a `CircuitSDE` is returned as is.
    """
    if isinstance(model, CircuitSDE):
        return model
    if isinstance(model, ReservoirSampler):
        if tau is not None and tau != model.tau:
            model = ReservoirSampler(model.W_out, model.W_in, model.I, activation=model.activation,
                                     tau=tau, noise_map=model.noise_map)
        out_dim = model.dim
        sde_skew = _check_skew(skew, out_dim)
        return ReservoirLangevin(model, skew=sde_skew)
    tau = 1.0 if tau is None else check_positive(tau, "tau")
    if isinstance(model, (ScoreNetwork, SamplerOnly)):
        return OutputLangevin(model, model.dim, tau=tau, skew=_check_skew(skew, model.dim))
    if hasattr(model, "score") and hasattr(model, "dim") and not callable(model):
        return OutputLangevin(model.score, model.dim, tau=tau, skew=_check_skew(skew, model.dim))
    if callable(model):
        if dim is None:
            raise ValueError("`dim` is required when `model` is a plain score function "
                             "(or pass `initial_state` of shape (num_chains, dim))")
        dim = check_int(dim, "dim")
        return OutputLangevin(model, dim, tau=tau, skew=_check_skew(skew, dim))
    raise TypeError(
        "`model` must be a ReservoirSampler, ScoreNetwork, SamplerOnly, a target with `.score`, "
        f"or a score function; got {type(model).__name__}")


def _check_skew(skew, dim: int):
    if skew is None:
        return None
    s = check_array(skew, "skew", ndim=2)
    if s.shape != (dim, dim):
        raise ValueError(f"`skew` must have shape ({dim}, {dim}), got {tuple(s.shape)}")
    if not np.allclose(np.asarray(s), -np.asarray(s).T, atol=1e-6 * (1 + float(jnp.abs(s).max()))):
        raise ValueError("`skew` must be skew-symmetric (S = −Sᵀ)")
    return s


def _initial_state(sde: CircuitSDE, init, initial_state, key, num_chains, dtype):
    n = sde.state_dim
    if initial_state is not None:
        x0 = check_array(initial_state, "initial_state", ndim=(1, 2), dim=n)
        if x0.ndim == 2 and x0.shape[0] != num_chains:
            raise ValueError(f"`initial_state` must have shape ({num_chains}, {n}) or ({n},), "
                             f"got {tuple(x0.shape)}")
        return jnp.broadcast_to(x0, (num_chains, n)).astype(dtype)
    if init == "uniform":  # the paper's double-peak start: U[−2, 2]
        return jax.random.uniform(key, (num_chains, n), dtype, -2.0, 2.0)
    if init == "normal":
        return jax.random.normal(key, (num_chains, n), dtype)
    if init == "zeros":
        return jnp.zeros((num_chains, n), dtype)
    raise ValueError(f"`init` must be 'uniform', 'normal' or 'zeros', got {init!r}")


def _local_devices(shard):
    devices = jax.local_devices()
    if shard is False or shard is None and len(devices) == 1:
        return devices[:1]
    if isinstance(shard, int) and not isinstance(shard, bool):
        if not 1 <= shard <= len(devices):
            raise ValueError(f"`shard` asks for {shard} devices, {len(devices)} are available")
        return devices[:shard]
    return devices


def sample(
    model: Any,
    *,
    key,
    num_chains: int,
    num_steps: int,
    step_size: float,
    initial_state=None,
    init: Literal["uniform", "normal", "zeros"] = "uniform",
    burn_in: int = 0,
    save_every: int | None = None,
    return_state: bool = False,
    tau: float | None = None,
    skew=None,
    dim: int | None = None,
    backend: Literal["scan", "diffrax"] = "scan",
    on_nonfinite: Literal["raise", "flag"] = "raise",
    block_size: int | None = None,
    unroll: int = 1,
    shard: bool | int | None = None,
    dtype=None,
) -> SampleResult:
    """Simulate many chains of a circuit with Euler–Maruyama and return readout samples.

    **Arguments:**

    - `model`: a `ReservoirSampler` (simulates the N-dimensional reservoir, reads out x = W_out r),
      a `ScoreNetwork`, a `SamplerOnly` circuit, a target with ``.score``, a score function
      ``(batch, d) -> (batch, d)`` (pass `dim`), or a `CircuitSDE`.
    - `key`: PRNG key (keyword-only). The same key gives the same samples.
    - `num_chains`: number of independent chains.
    - `num_steps`: Euler–Maruyama steps after burn-in.
    - `step_size`: dt > 0.
    - `initial_state`: ``(num_chains, state_dim)`` or ``(state_dim,)`` (state_dim = N for a
      reservoir, d otherwise). Default: drawn as `init` says.
    - `init`: ``"uniform"`` (U[−2, 2], the paper's double-peak start), ``"normal"`` or ``"zeros"``.
    - `burn_in`: steps run before saving starts (not saved, not counted in `num_steps`).
    - `save_every`: store the readout every this many steps (must divide `num_steps`); the
      trajectory then has ``num_steps // save_every`` entries. Full reservoir states are never stored.
    - `return_state`: also return the final full state (r for a reservoir).
    - `tau`: time constant (a reservoir's own τ by default, else 1).
    - `skew`: ``(d, d)`` skew-symmetric S for non-reversible sampling dx = (I + S) s dt + √2 dB.
    - `backend`: ``"scan"`` (hand-rolled `lax.scan`) or ``"diffrax"`` (diffrax Euler with an
      `UnsafeBrownianPath`; statistically equivalent, different noise).
    - `on_nonfinite`: ``"raise"`` a `SimulationDivergedError` naming the chains and steps, or
      ``"flag"`` them in ``nonfinite_step`` and return.
    - `block_size`: chains simulated together per block (default: min(num_chains per device, 1024)).
    - `unroll`: `lax.scan` unroll factor of the step loop.
    - `shard`: split chains over all local devices (default: when more than one is present);
      an int uses that many devices; False uses one.
    - `dtype`: state dtype (default: the model's dtype).

    **Returns:** a `SampleResult`: ``samples`` ``(num_chains, d)``, ``trajectory``
    ``(num_saved, num_chains, d)`` or None, ...
    """
    key = check_key(key)
    num_chains = check_int(num_chains, "num_chains")
    num_steps = check_int(num_steps, "num_steps")
    step_size = check_positive(step_size, "step_size")
    burn_in = check_int(burn_in, "burn_in", minimum=0)
    unroll = check_int(unroll, "unroll")
    if on_nonfinite not in ("raise", "flag"):
        raise ValueError(f"`on_nonfinite` must be 'raise' or 'flag', got {on_nonfinite!r}")
    if backend not in ("scan", "diffrax"):
        raise ValueError(f"`backend` must be 'scan' or 'diffrax', got {backend!r}")
    if save_every is not None:
        save_every = check_int(save_every, "save_every")
        if num_steps % save_every:
            raise ValueError(f"`save_every` ({save_every}) must divide `num_steps` ({num_steps})")
    if tau is not None:
        tau = check_positive(tau, "tau")
    if dim is None and callable(model) and not isinstance(model, (eqx.Module,)) and initial_state is not None:
        dim = int(np.shape(initial_state)[-1])
    sde = as_sde(model, tau=tau, skew=skew, dim=dim)
    if dtype is None:
        leaves = [x for x in jax.tree_util.tree_leaves(sde) if eqx.is_inexact_array(x)]
        dtype = leaves[0].dtype if leaves else jnp.result_type(float)
    dtype = jnp.dtype(dtype)
    sde = jax.tree_util.tree_map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, sde)

    devices = _local_devices(shard)
    ndev = len(devices)
    per_device = -(-num_chains // ndev)
    block = check_int(block_size, "block_size") if block_size is not None else min(per_device, 1024)
    block = min(block, per_device)
    per_device = -(-per_device // block) * block
    padded = per_device * ndev

    k_init, k_chains = jax.random.split(key)
    state0 = _initial_state(sde, init, initial_state, k_init, num_chains, dtype)
    if padded > num_chains:
        state0 = jnp.concatenate([state0, jnp.broadcast_to(state0[:1], (padded - num_chains, state0.shape[1]))])
    chain_ids = jnp.arange(padded, dtype=jnp.uint32)

    num_saved = num_steps // save_every if save_every is not None else 0
    runner = _make_runner(sde, backend=backend, step_size=step_size, burn_in=burn_in,
                          num_steps=num_steps, save_every=save_every, block=block, unroll=unroll,
                          return_state=return_state, dtype=dtype)
    if ndev > 1:
        mesh = Mesh(np.array(devices), ("chains",))
        out_specs = (P("chains"), P(None, "chains") if num_saved else P(), P("chains"), P("chains"))
        per_device_runner = runner
        sde_static_for_shard = eqx.partition(sde, eqx.is_array)[1]
        sharded = jax.shard_map(
            lambda arrays, *args: per_device_runner(eqx.combine(arrays, sde_static_for_shard), *args),
            mesh=mesh, in_specs=(P(), P("chains"), P("chains"), P()), out_specs=out_specs, check_vma=False)
        runner = lambda sde_, *args: sharded(eqx.filter(sde_, eqx.is_array), *args)  # noqa: E731
    sde_arrays, sde_static = eqx.partition(sde, eqx.is_array)
    fn = jax.jit(lambda arrays, *args: runner(eqx.combine(arrays, sde_static), *args))
    t0 = time.perf_counter()
    compiled = fn.lower(sde_arrays, state0, chain_ids, k_chains).compile()
    compile_time = time.perf_counter() - t0
    t0 = time.perf_counter()
    samples, traj, final, bad = jax.block_until_ready(compiled(sde_arrays, state0, chain_ids, k_chains))
    wall = time.perf_counter() - t0

    samples = samples[:num_chains]
    bad = bad[:num_chains]
    traj = traj[:, :num_chains] if num_saved else None
    final = final[:num_chains] if return_state else None
    result = SampleResult(samples, traj, final, bad, wall, compile_time)
    bad_np = np.asarray(bad)
    if on_nonfinite == "raise" and np.any(bad_np >= 0):
        chains = np.flatnonzero(bad_np >= 0)
        first = int(bad_np[chains].min())
        shown = ", ".join(str(c) for c in chains[:10]) + (" ..." if len(chains) > 10 else "")
        raise SimulationDivergedError(
            f"{len(chains)} of {num_chains} chains became NaN/inf (first after step {first}; "
            f"chains {shown}). The step_size {step_size} is probably too large for this model; "
            "pass on_nonfinite='flag' to get the finite chains back.", result)
    return result


def _make_runner(sde, *, backend, step_size, burn_in, num_steps, save_every, block, unroll,
                 return_state, dtype) -> Callable:
    """The function (sde, state0, chain_ids, chain_root) -> (samples, traj, final, bad) for the
    chains of one device; it is shard-mapped over devices by `sample`."""
    num_saved = num_steps // save_every if save_every is not None else 0
    h = jnp.asarray(step_size, dtype)

    def em_block(sde, r0, ids, root):
        keys = jax.vmap(lambda i: jax.random.fold_in(root, i))(ids)

        def step(carry, t):
            state, bad = carry
            noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, t), (sde.dim,), dtype))(keys)
            new, x = sde.euler_maruyama_step(state, noise, h)
            finite = jnp.all(jnp.isfinite(x), axis=-1)
            bad = jnp.where((bad < 0) & ~finite, t.astype(jnp.int32), bad)
            return (new, bad), None

        def run(carry, start, length):
            ts = start + jnp.arange(length, dtype=jnp.uint32)
            return jax.lax.scan(step, carry, ts, unroll=min(unroll, max(length, 1)))[0]

        carry = (r0, jnp.full(r0.shape[:1], -1, jnp.int32))
        if burn_in:
            carry = run(carry, 0, burn_in)
        if num_saved:
            def segment(c, s):
                c = run(c, burn_in + s * save_every, save_every)
                return c, sde.readout(c[0])
            carry, traj = jax.lax.scan(segment, carry, jnp.arange(num_saved, dtype=jnp.uint32))
        else:
            carry = run(carry, burn_in, num_steps)
            traj = jnp.zeros((0,), dtype)
        return carry, traj

    def diffrax_block(sde, r0, ids, root):
        from ._diffrax_backend import solve_block

        return solve_block(sde, r0, jax.random.fold_in(root, ids[0]), step_size=step_size,
                           burn_in=burn_in, num_steps=num_steps, save_every=save_every, dtype=dtype)

    simulate = em_block if backend == "scan" else diffrax_block

    def runner(sde, state0, ids, root):
        n = state0.shape[0] // block
        blocks = (state0.reshape(n, block, -1), ids.reshape(n, block))

        def one(args):
            (state, bad), traj = simulate(sde, args[0], args[1], root)
            x = sde.readout(state)
            last = jnp.uint32(burn_in + num_steps)
            bad = jnp.where((bad < 0) & ~jnp.all(jnp.isfinite(x), axis=-1), last.astype(jnp.int32), bad)
            return x, traj, (state if return_state else jnp.zeros((block, 0), dtype)), bad

        x, traj, final, bad = jax.lax.map(one, blocks)
        x = x.reshape(n * block, x.shape[-1])
        final = final.reshape(n * block, final.shape[-1])
        bad = bad.reshape(n * block)
        if num_saved:
            traj = jnp.moveaxis(traj, 0, 1).reshape(num_saved, n * block, -1)
        else:
            traj = jnp.zeros((0,), dtype)
        return x, traj, final, bad

    return runner
