"""Scale-out: data-parallel `fit` over devices and processes, `sample` over all processes' chains.

rsnjax runs on JAX's own distributed runtime. On one host, `fit` splits every step's batch over
the local devices and `sample` splits the chains over them. Under ``jax.distributed`` (several
processes, one or more devices each; see `initialize`) both work on the *global* device set:

- `sample` runs one chain axis over all processes' devices. Chain c's noise is a pure function of
  (``key``, c, step) (see `rsnjax.sampling.step_noise`), so its path does not depend on which
  device or process simulates it: every process gets the same samples as a one-process run.
  ``gather=True`` (the default) returns all chains on every process; ``gather=False`` only this
  process's rows, whose global indices are in ``SampleResult.chain_ids``.
- `fit` takes the ``data`` array each process passes as its *local shard*: each device holds an
  equal block of it, each step's global batch takes ``batch_size / num_devices`` rows from every
  device's block, the gradients are averaged over all devices (``lax.pmean``) and every process
  ends with the same parameters.

The helpers here are what `sample` and `fit` use; the public ones are `initialize`,
`is_multiprocess`, `process_count`, `process_index` and `gather_rows`.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["initialize", "is_multiprocess", "process_count", "process_index", "gather_rows"]

#: The name of the device axis `fit` splits the batch over.
BATCH_AXIS = "batch"


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, **kwargs: Any) -> None:
    """Start JAX's distributed runtime for rsnjax: ``jax.distributed.initialize`` with the same
    arguments (on SLURM and other detected clusters all may be omitted), after selecting the
    ``gloo`` collectives for the CPU backend (JAX's CPU backend otherwise has no cross-process
    collectives). Call it once per process, first thing after ``import jax``.

    **Arguments:** `coordinator_address` ``"host:port"`` of process 0, `num_processes`,
    `process_id` (0 … num_processes − 1), and any further keyword of
    ``jax.distributed.initialize`` (e.g. ``local_device_ids``).
    """
    if os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION") is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, **kwargs)


def process_count() -> int:
    """The number of JAX processes (1 without ``jax.distributed``)."""
    return jax.process_count()


def process_index() -> int:
    """This process's index, 0 … `process_count` − 1."""
    return jax.process_index()


def is_multiprocess() -> bool:
    """True under ``jax.distributed`` with more than one process."""
    return jax.process_count() > 1


def mesh_devices(shard: bool | int | None) -> list:
    """The devices `sample` spreads chains over: with one process the local devices as `shard`
    says (True/None: all, False: one, an int: that many); with several processes all processes'
    devices (`shard` must then be True or None: every process takes part)."""
    if not is_multiprocess():
        devices = jax.local_devices()
        if shard is False or shard is None and len(devices) == 1:
            return devices[:1]
        if isinstance(shard, int) and not isinstance(shard, bool):
            if not 1 <= shard <= len(devices):
                raise ValueError(f"`shard` asks for {shard} devices, {len(devices)} are available")
            return devices[:shard]
        if shard is True or shard is None:
            return devices
        raise TypeError(f"`shard` must be True, False, None or a number of devices, got {shard!r}")
    if shard is None or shard is True:
        return list(jax.devices())
    raise ValueError(f"`shard` must be True or None under jax.distributed ({jax.process_count()} processes: "
                     f"every process's devices take part), got {shard!r}")


def to_global(value, mesh: Mesh, spec: P) -> jax.Array:
    """``value`` (the same full array on every process) as a global array with ``spec`` over
    ``mesh``: each process places only its own devices' slices."""
    value = np.asarray(value)
    sharding = NamedSharding(mesh, spec)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def tree_to_global(tree, mesh: Mesh, spec: P = P()):
    """`to_global` on every array leaf of ``tree`` (replicated by default)."""
    return jax.tree_util.tree_map(
        lambda a: to_global(a, mesh, spec) if isinstance(a, (jax.Array, np.ndarray)) else a, tree)


def gather_rows(x) -> np.ndarray:
    """The whole of a global array sharded along its first axis (or, with ``axis=1`` layouts,
    any sharding), as a NumPy array on every process; ``x`` itself when it is fully addressable."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return x


def local_rows(x: jax.Array, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """This process's rows of a global array sharded along ``axis``: ``(rows, indices)`` with the
    rows concatenated in global order and ``indices`` their global positions along ``axis``."""
    pieces = {}
    for shard in x.addressable_shards:
        sl = shard.index[axis]
        start = sl.start or 0
        pieces[start] = (np.asarray(shard.data), np.arange(start, start + shard.data.shape[axis]))
    order = sorted(pieces)
    rows = np.concatenate([pieces[s][0] for s in order], axis=axis)
    ids = np.concatenate([pieces[s][1] for s in order])
    return rows, ids


def to_local(tree):
    """Every fully replicated global array leaf of ``tree`` as an ordinary array on this
    process's first device (so that it can be saved, printed or used without the mesh)."""
    def local(a):
        if isinstance(a, jax.Array) and len(a.sharding.device_set) > 1:
            return jax.device_put(np.asarray(a.addressable_shards[0].data), jax.local_devices()[0])
        return a
    return jax.tree_util.tree_map(local, tree)


def allgather_host(value: np.ndarray) -> np.ndarray:
    """``(process_count, *value.shape)``: every process's ``value`` (same shape and dtype on all)."""
    if not is_multiprocess():
        return np.asarray(value)[None]
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.asarray(value), tiled=False))


def combined_fingerprint(local: str) -> str:
    """A hash of every process's ``local`` fingerprint string (16 hex characters each)."""
    if not is_multiprocess():
        return local
    codes = allgather_host(np.frombuffer(bytes.fromhex(local[:16].ljust(16, "0")), np.uint8))
    return hashlib.sha256(codes.tobytes()).hexdigest()[:16]


def fit_mesh(data_parallel: bool | None, batch_size: int) -> Mesh | None:
    """The mesh `fit` splits its batch over, or None for the plain one-device program.

    Under ``jax.distributed`` all processes' devices (data parallelism is then required);
    otherwise the local devices when there are several and `data_parallel` is True, or None and
    they are accelerators: several XLA CPU devices share the same cores, and splitting a batch
    over them measured slower than one device for every batch up to 1024 (0.63× at batch 128,
    docs/PERFORMANCE.md), so on CPU it is opt-in.
    ``batch_size`` must divide evenly over the devices (and per device into pairs with
    ``antithetic`` noise, checked by `fit`)."""
    if data_parallel is not None and not isinstance(data_parallel, (bool, np.bool_)):
        raise TypeError(f"`data_parallel` must be True, False or None, got {data_parallel!r}")
    if is_multiprocess():
        if data_parallel is False:
            raise ValueError("`data_parallel=False` is not possible under jax.distributed "
                             f"({jax.process_count()} processes train one model together)")
        devices: Sequence = jax.devices()
    else:
        devices = jax.local_devices()
        if data_parallel is False or (data_parallel is None and (
                len(devices) == 1 or all(d.platform == "cpu" for d in devices))):
            return None
    if batch_size % len(devices):
        raise ValueError(f"`batch_size` ({batch_size}) must be a multiple of the number of devices "
                         f"({len(devices)}) for data-parallel training; pass another batch size"
                         + ("" if is_multiprocess() else " or `data_parallel=False`"))
    return Mesh(np.array(devices), (BATCH_AXIS,))


def shard_local_data(local: np.ndarray, mesh: Mesh) -> tuple[jax.Array, int]:
    """Each process's ``local`` rows ``(n, ...)`` as one global array ``(num_devices, m, ...)``
    sharded over the devices: this process's devices each take an equal block of its rows
    (m = the smallest block over all processes; the remainder is dropped). Returns the array and m."""
    local = np.asarray(local)
    local_devices = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    per = local.shape[0] // len(local_devices)
    m = int(allgather_host(np.array([per], np.int64)).min())
    if m < 1:
        raise ValueError("`data` has fewer rows on some process than it has devices: every device "
                         "needs at least a batch's share of rows")
    blocks = local[: m * len(local_devices)].reshape(len(local_devices), m, *local.shape[1:])
    sharding = NamedSharding(mesh, P(BATCH_AXIS))
    return jax.make_array_from_process_local_data(sharding, blocks,
                                                  (mesh.devices.size, m, *local.shape[1:])), m


def put(tree, mesh: Mesh, spec: P = P()):
    """Every array leaf of ``tree`` laid out as ``spec`` over ``mesh`` (a global array under
    ``jax.distributed``, whose value must then be the same on every process); leaves already laid
    out so are passed through. PRNG key arrays keep their type."""
    sharding = NamedSharding(mesh, spec)

    def one(a):
        if not isinstance(a, (jax.Array, np.ndarray, np.generic)):
            return a
        if isinstance(a, jax.Array) and (not a.is_fully_addressable  # already a global array
                                         or a.sharding.is_equivalent_to(sharding, a.ndim)):
            return a
        if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(one(jax.random.key_data(a)), impl=jax.random.key_impl(a))
        if not is_multiprocess():
            return jax.device_put(a, sharding)
        return to_global(host(a), mesh, spec)

    return jax.tree_util.tree_map(one, tree)


def host(a) -> np.ndarray:
    """A NumPy copy of ``a``; for a global array that spans other processes' devices, of the
    copy on this process's first device (right for replicated arrays only)."""
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        return np.asarray(a.addressable_shards[0].data)
    return np.asarray(a)


def barrier(name: str) -> None:
    """Wait until every process reaches this point (nothing with one process)."""
    if is_multiprocess():
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def chain_rows(make, devices) -> tuple:
    """``make()`` (which returns `sample`'s padded initial state and chain indices) as global
    arrays split over ``devices`` along the chain axis: each process computes only its own
    devices' rows (JAX's partitionable Threefry makes a random initial state the same as one
    process draws)."""
    sharding = NamedSharding(Mesh(np.array(devices), ("chains",)), P("chains"))
    return jax.jit(make, out_shardings=(sharding, sharding))()


def global_sample_args(args, mesh: Mesh):
    """`sample`'s program inputs ``(sde_arrays, state0, chain_ids, chain_root, step_size)`` as
    global arrays: the circuit, key and step size (the same on every process) replicated, the
    chains (see `chain_rows`) split over the mesh's ``"chains"`` axis."""
    sde_arrays, state0, chain_ids, root, step_size = args
    rows = P("chains")
    return (put(sde_arrays, mesh), put(state0, mesh, rows), put(chain_ids, mesh, rows), put(root, mesh),
            put(step_size, mesh))


def collect_chains(outputs, num_chains: int, gather: bool):
    """`sample`'s outputs ``(samples, trajectory or None, final or None, nonfinite_step)``,
    sharded over chains (the trajectory along axis 1) and padded past ``num_chains``, as this
    process returns them: all chains in order (``gather``; collected from every process under
    ``jax.distributed``), or only this process's rows. Returns the four and the rows' global
    chain indices."""
    import jax.numpy as jnp

    samples, traj, final, bad = outputs
    if gather or not is_multiprocess():
        def full(x, axis=0):
            return None if x is None else jnp.asarray(gather_rows(x)).take(jnp.arange(num_chains), axis=axis)
        return full(samples), full(traj, 1), full(final), full(bad), np.arange(num_chains)
    rows, ids = local_rows(samples)
    keep = ids < num_chains  # the padding chains are dropped

    def mine(x, axis=0):
        if x is None:
            return None
        r = local_rows(x, axis)[0]
        return jnp.asarray(r[keep] if axis == 0 else r[:, keep])
    return jnp.asarray(rows[keep]), mine(traj, 1), mine(final), mine(bad), ids[keep]
