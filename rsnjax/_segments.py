"""`rsnjax.sample` in segments: checkpoints that an interrupted run resumes from, and progress.

With ``checkpoint_dir`` (or a progress report) `sample` runs its ``burn_in + num_steps`` steps as
a Python loop over compiled segments of ``checkpoint_every`` steps instead of one program. A
segment advances every chain's loop state (the form the step loop carries, e.g. a reservoir's
split state (u, c)) from global step t₀ to t₀ + checkpoint_every; the noise of step t is
`rsnjax.sampling.step_noise` of the global step t, so the segments reproduce the one-program run
bit for bit, and so does a run resumed from any segment boundary.

Checkpoint file. After each segment the chains' loop states, their non-finite flags and the
trajectory saved so far are written to ``checkpoint_dir / CHECKPOINT_NAME`` in the format of
`rsnjax.checkpoint` (magic line, JSON header, SHA-256 of header and payload, atomic replace; the
payload is an ``.npz`` without pickles). The header records what the run was (a digest of the
model's arrays and the initial state, the key, num_chains, num_steps, burn_in, step_size,
save_every, checkpoint_every, dtype, return_state); resuming with anything different raises
`CheckpointError` naming what differs, before anything is written. The last checkpoint holds
the finished run (its samples too): resuming it again returns the same result without simulating.

The cost: one host round trip per segment, and a copy of the states (num_chains × state_dim
numbers, e.g. 40 MB for 10 000 reservoir chains of N = 1000 in float32) per checkpoint written.
"""

from __future__ import annotations

import hashlib
import io
import math
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from .checkpoint import CheckpointError, _as_path, read_header, write_checked

__all__ = ["CHECKPOINT_NAME", "default_checkpoint_every", "check_checkpoint_every", "Progress",
           "run_segmented", "DEFAULT_SEGMENTS"]

#: The file `sample` writes in its ``checkpoint_dir``.
CHECKPOINT_NAME = "sample-state.rsnjax"
_KIND = "sample-state"
#: `checkpoint_every` defaults to about this many segments per run.
DEFAULT_SEGMENTS = 20


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def check_checkpoint_every(value, *, burn_in: int, num_steps: int, save_every: int | None) -> int:
    """`checkpoint_every` checked against the run: it must divide `num_steps` and `burn_in` (when
    there is a burn-in) and be a multiple of `save_every` (when saving)."""
    from ._validation import check_int

    every = check_int(value, "checkpoint_every")
    problems = []
    if num_steps % every:
        problems.append(f"divide `num_steps` ({num_steps})")
    if burn_in % every:
        problems.append(f"divide `burn_in` ({burn_in})")
    if save_every is not None and every % save_every:
        problems.append(f"be a multiple of `save_every` ({save_every})")
    if problems:
        raise ValueError(f"`checkpoint_every` ({every}) must " + " and ".join(problems)
                         + f"; e.g. {default_checkpoint_every(burn_in, num_steps, save_every)}")
    return every


def default_checkpoint_every(burn_in: int, num_steps: int, save_every: int | None) -> int:
    """The segment length `sample` uses when `checkpoint_every` is not given: the largest valid
    length (a divisor of `num_steps` and `burn_in`, a multiple of `save_every`) that cuts the run
    into at least `DEFAULT_SEGMENTS` segments, else the smallest valid one (at worst `num_steps`
    when nothing smaller fits: one segment)."""
    g = math.gcd(num_steps, burn_in)  # gcd(n, 0) = n
    valid = [d for d in _divisors(g) if save_every is None or d % save_every == 0]
    if not valid:  # save_every divides num_steps but not burn_in: one segment each is impossible
        valid = [d for d in _divisors(num_steps) if save_every is None or d % save_every == 0]
        valid = [d for d in valid if burn_in % d == 0] or [g]
    target = max(1, (burn_in + num_steps) // DEFAULT_SEGMENTS)
    below = [d for d in valid if d <= target]
    return max(below) if below else min(valid)


class Progress:
    """A progress report between segments on stderr: a tqdm bar when tqdm is installed, else one
    plain line per segment (at most about once a second)."""

    def __init__(self, total: int, *, start: int = 0, desc: str = "rsnjax.sample"):
        self.total, self.done, self.desc = total, start, desc
        self.t0 = time.perf_counter()
        self.started_at = start
        self._last_print = -math.inf
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self.bar = None
        else:
            self.bar = tqdm(total=total, initial=start, unit="step", desc=desc, file=sys.stderr,
                            dynamic_ncols=True)

    def update(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(done - self.done)
        else:
            now = time.perf_counter()
            if now - self._last_print >= 1.0 or done == self.total:
                elapsed = now - self.t0
                rate = (done - self.started_at) / elapsed if elapsed > 0 else 0.0
                left = f", ~{(self.total - done) / rate:.0f} s left" if rate > 0 and done < self.total else ""
                print(f"{self.desc}: step {done}/{self.total} ({100 * done / self.total:.0f} %), "
                      f"{elapsed:.1f} s{left}", file=sys.stderr, flush=True)
                self._last_print = now
        self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --- the segment program ----------------------------------------------------------------------

def _make_segment_runner(*, pre: int, num_saved: int, save_every, block: int, unroll: int,
                         return_state: bool, dtype):
    """(sde, carry, bad, ids, root, t0, h) -> (carry, bad, traj, readout, final) for the chains of
    one device: ``pre`` steps from global step t0, then ``num_saved`` pieces of `save_every`
    steps, each followed by a readout (as `rsnjax.sampling`'s one-program runner)."""
    from .sampling import chain_key_words, scan_and_save, scan_steps

    def runner(sde, carry, bad, ids, root, t0, h):
        n = ids.shape[0] // block
        blocked = lambda a: a.reshape((n, block) + a.shape[1:])  # noqa: E731
        flat = lambda a: a.reshape((n * block,) + a.shape[2:])  # noqa: E731

        def one(args):
            c, b, i = args
            run = scan_steps(sde, chain_key_words(root, i), h, dtype, unroll)
            cb = (c, b)
            if pre:
                cb = run(cb, t0, pre)
            if num_saved:
                cb, traj = scan_and_save(sde, run, cb, t0 + jnp.uint32(pre), num_saved, save_every)
            else:
                traj = jnp.zeros((0,), dtype)
            x = sde.loop_readout(cb[0])
            final = sde.state_from_loop(cb[0]) if return_state else jnp.zeros((block, 0), dtype)
            return cb[0], cb[1], traj, x, final

        c, b, traj, x, final = jax.lax.map(one, (jax.tree_util.tree_map(blocked, carry), blocked(bad),
                                                 blocked(ids)))
        if num_saved:
            traj = jnp.moveaxis(traj, 0, 1).reshape(num_saved, n * block, -1)
        else:
            traj = jnp.zeros((0,), dtype)
        return jax.tree_util.tree_map(flat, c), flat(b), traj, flat(x), flat(final)

    return runner


def _compiled_segment(sde, args, *, pre, num_saved, save_every, block, unroll, return_state, dtype,
                      devices):
    from ._kernels import setting as kernel_setting
    from .sampling import _COMPILED, _COMPILED_MAX, _compile_cache_key

    runner = _make_segment_runner(pre=pre, num_saved=num_saved, save_every=save_every, block=block,
                                  unroll=unroll, return_state=return_state, dtype=dtype)
    sde_arrays, sde_static = eqx.partition(sde, eqx.is_array)
    if len(devices) > 1:
        mesh = Mesh(np.array(devices), ("chains",))
        chains = P("chains")
        out_specs = (chains, chains, P(None, "chains") if num_saved else P(), chains, chains)
        inner = runner
        sharded = jax.shard_map(
            lambda arrays, *a: inner(eqx.combine(arrays, sde_static), *a), mesh=mesh,
            in_specs=(P(), chains, chains, chains, P(), P(), P()), out_specs=out_specs, check_vma=False)
        runner = lambda sde_, *a: sharded(eqx.filter(sde_, eqx.is_array), *a)  # noqa: E731
    key = _compile_cache_key(sde_static, (sde_arrays,) + args,
                             ("segment", pre, num_saved, save_every, block, unroll, return_state,
                              str(dtype), tuple(d.id for d in devices), kernel_setting()))
    compiled = _COMPILED.get(key) if key is not None else None
    if compiled is None:
        fn = jax.jit(lambda arrays, *a: runner(eqx.combine(arrays, sde_static), *a))
        compiled = fn.lower(sde_arrays, *args).compile()
        if key is not None:
            _COMPILED[key] = compiled
            while len(_COMPILED) > _COMPILED_MAX:
                _COMPILED.pop(next(iter(_COMPILED)))
    else:
        _COMPILED[key] = _COMPILED.pop(key)
    return lambda *a: compiled(sde_arrays, *a)


# --- the checkpoint file -----------------------------------------------------------------------

def _digest(arrays) -> str:
    h = hashlib.sha256()
    for a in jax.tree_util.tree_leaves(arrays):
        a = np.asarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def run_description(sde, *, key, state0, num_chains, num_steps, burn_in, step_size, save_every,
                    checkpoint_every, dtype, return_state) -> dict:
    """What a checkpoint must match to be resumed: JSON-able values, compared key by key."""
    sde_arrays, sde_static = eqx.partition(sde, eqx.is_array)
    static = [getattr(x, "__qualname__", None) or type(x).__name__ if callable(x) else repr(x)
              for x in jax.tree_util.tree_leaves(sde_static)]
    return {
        "model": f"{type(sde).__name__} " + _digest(sde_arrays)[:32],
        "model_settings": hashlib.sha256(repr(static).encode()).hexdigest()[:32],
        "key": np.asarray(jax.random.key_data(key)).astype(np.uint64).tolist(),
        "initial_state": _digest(state0)[:32],
        "num_chains": num_chains, "num_steps": num_steps, "burn_in": burn_in,
        "step_size": float(step_size), "save_every": save_every,
        "checkpoint_every": checkpoint_every, "dtype": str(jnp.dtype(dtype)),
        "return_state": bool(return_state),
    }


_WHAT = {"model": "the model's weights", "model_settings": "the model's settings (activation, tau, ...)",
         "key": "the key", "initial_state": "the initial state (`init`/`initial_state`)"}


def _describe_mismatch(saved: dict, here: dict) -> str:
    parts = []
    for name in here:
        if saved.get(name) != here[name]:
            what = _WHAT.get(name, f"`{name}`")
            if name in _WHAT:
                parts.append(f"{what} differ{'s' if name in ('key',) else ''}")
            else:
                parts.append(f"{what} is {saved.get(name)!r} there and {here[name]!r} here")
    return "; ".join(parts)


def _write(path: Path, description: dict, *, segment: int, num_segments: int, step: int, carry_leaves,
           bad, traj, x=None, final=None) -> None:
    arrays = {f"carry_{i}": np.asarray(a) for i, a in enumerate(carry_leaves)}
    arrays["bad"] = np.asarray(bad)
    arrays["trajectory"] = np.asarray(traj)
    if x is not None:
        arrays["samples"] = np.asarray(x)
    if final is not None:
        arrays["final_state"] = np.asarray(final)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    header = {"kind": _KIND, "run": description, "segment": segment, "num_segments": num_segments,
              "step": step, "num_carry": len(carry_leaves), "complete": segment == num_segments}
    write_checked(path, header, buffer.getvalue())


def _read(path: Path, description: dict, carry_like, num_segments: int, num_burn_segments: int,
          num_saved_per_segment: int, dim: int) -> dict:
    name = repr(str(path))
    header, payload = read_header(path)
    if header.get("kind") != _KIND:
        raise CheckpointError(f"{name} is an rsnjax checkpoint but not of a `sample` run "
                              f"(kind {header.get('kind', 'model')!r}); point `checkpoint_dir` elsewhere")
    saved = header.get("run")
    if not isinstance(saved, dict) or saved != description:
        diff = _describe_mismatch(saved if isinstance(saved, dict) else {}, description)
        raise CheckpointError(f"checkpoint {name} was written by a different `sample` run ({diff}); "
                              "resume it with the same settings, or use another `checkpoint_dir`")
    segment = header.get("segment")
    if not isinstance(segment, int) or not 0 < segment <= num_segments or header.get("num_segments") != num_segments:
        raise CheckpointError(f"checkpoint {name} has a bad segment count {segment!r} of "
                              f"{header.get('num_segments')!r} (this run has {num_segments})")
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as err:  # noqa: BLE001 - numpy raises several types for a bad archive
        raise CheckpointError(f"checkpoint {name} has an unreadable payload: {err}") from None
    leaves = jax.tree_util.tree_leaves(carry_like)
    num_chains = description["num_chains"]
    expected = {f"carry_{i}": ((num_chains,) + tuple(a.shape[1:]), a.dtype) for i, a in enumerate(leaves)}
    expected["bad"] = ((num_chains,), np.dtype(np.int32))
    saved_rows = max(0, segment - num_burn_segments) * num_saved_per_segment
    expected["trajectory"] = (((saved_rows, num_chains, dim) if num_saved_per_segment else (0,)),
                              np.dtype(description["dtype"]))
    for k, (shape, dtype) in expected.items():
        a = arrays.get(k)
        if a is None or a.shape != shape or a.dtype != dtype:
            got = "missing" if a is None else f"{a.dtype}{a.shape}"
            raise CheckpointError(f"checkpoint {name} does not match this run: `{k}` is {got}, "
                                  f"expected {np.dtype(dtype)}{shape}")
    arrays["segment"] = segment
    return arrays


# --- the loop ------------------------------------------------------------------------------------

def run_segmented(sde, *, state0, chain_ids, root, h, num_chains: int, burn_in: int, num_steps: int,
                  save_every, block: int, unroll: int, return_state: bool, dtype, devices,
                  checkpoint_every: int, checkpoint_dir, resume: bool, description: dict | None,
                  progress: bool):
    """Run `sample`'s simulation in segments; returns ``(outputs, compile_time, wall_time)`` with
    ``outputs = (samples, traj, final, bad)`` over the padded chains, as the one-program path."""
    padded = state0.shape[0]
    every = checkpoint_every
    n_burn, n_run = burn_in // every, num_steps // every
    num_segments = n_burn + n_run
    per_segment_saved = every // save_every if save_every is not None else 0
    dim = sde.dim
    carry = sde.loop_state(state0)
    bad = jnp.full((padded,), -1, jnp.int32)
    trajs: list = []
    start_segment = 0
    x = final = None
    path = None
    if checkpoint_dir is not None:
        path = _as_path(checkpoint_dir, "checkpoint_dir") / CHECKPOINT_NAME
        if path.exists() or path.is_symlink():
            if not resume:
                raise CheckpointError(
                    f"checkpoint {str(path)!r} exists: pass resume=True to continue that run (or "
                    "return its result), or remove the file / use another `checkpoint_dir`; it was "
                    "not overwritten")
            saved = _read(path, description, carry, num_segments, n_burn, per_segment_saved, dim)
            start_segment = saved["segment"]

            def pad(a):
                a = jnp.asarray(a)
                return jnp.concatenate([a, jnp.broadcast_to(a[:1], (padded - num_chains,) + a.shape[1:])]) \
                    if padded > num_chains else a

            leaves, treedef = jax.tree_util.tree_flatten(carry)
            carry = jax.tree_util.tree_unflatten(
                treedef, [pad(saved[f"carry_{i}"]) for i in range(len(leaves))])
            bad = jnp.concatenate([jnp.asarray(saved["bad"]), jnp.full((padded - num_chains,), -1, jnp.int32)])
            if per_segment_saved and start_segment > n_burn:
                t = jnp.asarray(saved["trajectory"])
                trajs.append(jnp.concatenate([t, jnp.zeros((t.shape[0], padded - num_chains, dim), t.dtype)], 1))
            if start_segment == num_segments:
                x = saved.get("samples")
                final = saved.get("final_state")
                if x is None or (return_state and final is None):
                    raise CheckpointError(f"checkpoint {str(path)!r} is marked complete but holds no samples")
                x = jnp.asarray(x)
                final = jnp.asarray(final) if return_state else None
        elif not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
    report = Progress(burn_in + num_steps, start=start_segment * every) if progress else None
    compile_time = 0.0
    wall = 0.0
    programs: dict = {}
    try:
        for k in range(start_segment, num_segments):
            saving = k >= n_burn and per_segment_saved
            shape = (0 if saving else every, per_segment_saved if saving else 0)
            args = (carry, bad, chain_ids, root, jnp.uint32(k * every), h)
            if shape not in programs:
                t0 = time.perf_counter()
                programs[shape] = _compiled_segment(
                    sde, args, pre=shape[0], num_saved=shape[1], save_every=save_every, block=block,
                    unroll=unroll, return_state=return_state, dtype=dtype, devices=devices)
                compile_time += time.perf_counter() - t0
            t0 = time.perf_counter()
            carry, bad, traj, x, final = jax.block_until_ready(programs[shape](*args))
            wall += time.perf_counter() - t0
            if saving:
                trajs.append(traj)
            if path is not None:
                done = k + 1 == num_segments
                traj_so_far = (jnp.concatenate(trajs)[:, :num_chains] if trajs else
                               np.zeros((0, num_chains, dim) if per_segment_saved else (0,), dtype))
                _write(path, description, segment=k + 1, num_segments=num_segments, step=(k + 1) * every,
                       carry_leaves=[a[:num_chains] for a in jax.tree_util.tree_leaves(carry)],
                       bad=bad[:num_chains], traj=traj_so_far,
                       x=x[:num_chains] if done else None,
                       final=final[:num_chains] if done and return_state else None)
            if report is not None:
                report.update((k + 1) * every)
    finally:
        if report is not None:
            report.close()
    if trajs:
        traj = jnp.concatenate(trajs)
    else:
        traj = jnp.zeros((0,), dtype)
    if x.shape[0] < padded:  # a finished run read back from its checkpoint
        x = jnp.concatenate([x, jnp.zeros((padded - x.shape[0], dim), x.dtype)])
        final = (jnp.concatenate([final, jnp.zeros((padded - final.shape[0], final.shape[1]), final.dtype)])
                 if final is not None else jnp.zeros((padded, 0), dtype))
    if final is None or not return_state:
        final = jnp.zeros((padded, 0), dtype)
    last = burn_in + num_steps
    bad = jnp.where((bad < 0) & ~jnp.all(jnp.isfinite(x), axis=-1), last, bad)
    return (x, traj, final, bad), compile_time, wall


def segmentable(sde, state0) -> bool:
    """Whether every leaf of the SDE's loop state is per chain (the segment loop stores and pads
    chains); a circuit driven by inputs carries a step counter and is not."""
    shapes = jax.eval_shape(sde.loop_state, jax.ShapeDtypeStruct(state0.shape, state0.dtype))
    return all(len(s.shape) >= 1 and s.shape[0] == state0.shape[0] for s in jax.tree_util.tree_leaves(shapes))


def stderr_is_terminal() -> bool:
    try:
        return bool(sys.stderr is not None and sys.stderr.isatty())
    except (AttributeError, ValueError, OSError):
        return False

