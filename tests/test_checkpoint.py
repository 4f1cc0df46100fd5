"""Checkpoints: bit-exact round trips, corruption detection, and `fit`'s checkpoint/resume."""

from __future__ import annotations

import functools
import json
import os
import struct
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rsnjax
from rsnjax import checkpoint as ckpt
from rsnjax import targets, training
from rsnjax.checkpoint import CheckpointError

SIGMAS = rsnjax.geometric_sigmas(1.0, 0.1, 2)


# --- helpers -----------------------------------------------------------------------------------


def assert_bit_identical(a, b):
    """Same pytree structure (static fields included), dtypes, shapes and bytes."""
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def all_models():
    key = jax.random.key(3)
    net = rsnjax.ScoreNetwork(2, 8, activation="tanh", key=key)
    return {
        "score_network": net,
        "so_sc": rsnjax.SamplerOnly(2, dynamics="synaptic_current", activation="softplus", key=key),
        "so_fr": rsnjax.SamplerOnly(3, dynamics="firing_rate", key=key),
        "reservoir": rsnjax.ReservoirSampler.from_score_network(net, tau=0.5),
    }


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "model.ckpt"
    ckpt.save(path, rsnjax.ScoreNetwork(2, 8, key=jax.random.key(0)), metadata={"note": "x"})
    return path


# --- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["score_network", "so_sc", "so_fr", "reservoir"])
def test_round_trip_is_bit_exact_for_every_model_class(tmp_path, name):
    model = all_models()[name]
    # Perturb the weights so that defaults would not pass by accident.
    model = jax.tree_util.tree_map(
        lambda a: a * 1.7 + 0.1 if eqx.is_inexact_array(a) else a, model)
    path = tmp_path / f"{name}.ckpt"
    assert ckpt.save(path, model, metadata={"run": name}) == path
    loaded = rsnjax.load(path)
    assert type(loaded) is type(model)
    assert_bit_identical(loaded, model)
    info = ckpt.read_info(path)
    assert info["rsnjax_version"] == rsnjax.__version__
    assert info["jax_version"] == jax.__version__
    assert info["model"] == ckpt.model_spec(model)
    assert info["metadata"] == {"run": name}


def test_hyperparameters_are_in_the_header(tmp_path):
    models = all_models()
    ckpt.save(tmp_path / "a", models["reservoir"])
    ckpt.save(tmp_path / "b", models["so_sc"])
    assert ckpt.read_info(tmp_path / "a")["model"] == {
        "class": "ReservoirSampler", "dim": 2, "hidden": 8, "activation": "tanh", "tau": 0.5}
    assert ckpt.read_info(tmp_path / "b")["model"] == {
        "class": "SamplerOnly", "dim": 2, "dynamics": "synaptic_current", "activation": "softplus"}


def test_extra_state_round_trips_and_load_skips_it(tmp_path):
    net = rsnjax.ScoreNetwork(2, 8, key=jax.random.key(1))
    params = eqx.filter(net, eqx.is_inexact_array)
    opt_state = optax.adam(1e-3).init(params)
    opt_state = jax.tree_util.tree_map(lambda a: a + 1 if eqx.is_inexact_array(a) else a, opt_state)
    extra = {"opt_state": opt_state, "loss": jnp.arange(5.0)}
    path = tmp_path / "with_extra.ckpt"
    ckpt.save(path, net, extra=extra)
    template = {"opt_state": optax.adam(1e-3).init(params), "loss": jnp.zeros(5)}
    model, loaded_extra, header = ckpt.load_with_extra(path, template)
    assert_bit_identical(model, net)
    assert_bit_identical(loaded_extra, extra)
    assert header["has_extra"] is True
    assert_bit_identical(rsnjax.load(path), net)
    with pytest.raises(CheckpointError, match="does not match the expected structure"):
        ckpt.load_with_extra(path, {"loss": jnp.zeros(7)})
    ckpt.save(tmp_path / "plain.ckpt", net)
    with pytest.raises(CheckpointError, match="holds no extra state"):
        ckpt.load_with_extra(tmp_path / "plain.ckpt", template)


def test_save_rejects_bad_arguments(tmp_path):
    net = rsnjax.ScoreNetwork(1, 4, key=jax.random.key(0))
    with pytest.raises(TypeError, match="`model`"):
        ckpt.save(tmp_path / "x", lambda x: x)
    with pytest.raises(TypeError, match="`metadata`"):
        ckpt.save(tmp_path / "x", net, metadata={"bad": object()})
    with pytest.raises(TypeError, match="`metadata`"):
        ckpt.save(tmp_path / "x", net, metadata={"bad": float("nan")})
    with pytest.raises(TypeError, match="`metadata` must be a dict"):
        ckpt.save(tmp_path / "x", net, metadata=[1, 2])
    with pytest.raises(TypeError, match="`path`"):
        ckpt.save(None, net)
    assert not (tmp_path / "x").exists()


# --- atomic writes -----------------------------------------------------------------------------


def test_write_is_atomic_and_replaces(tmp_path, saved, monkeypatch):
    old = saved.read_bytes()
    net2 = rsnjax.ScoreNetwork(2, 8, key=jax.random.key(9))

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ckpt.os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        ckpt.save(saved, net2)
    monkeypatch.undo()
    assert saved.read_bytes() == old  # the good file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == [saved.name]  # no temporary left behind
    ckpt.save(saved, net2)
    assert_bit_identical(rsnjax.load(saved), net2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [saved.name]
    umask = os.umask(0)
    os.umask(umask)
    assert saved.stat().st_mode & 0o777 == 0o666 & ~umask


# --- corruption ----------------------------------------------------------------------------------


def test_every_truncation_is_detected(tmp_path, saved):
    data = saved.read_bytes()
    bad = tmp_path / "cut.ckpt"
    for cut in sorted({1, 5, len(ckpt.MAGIC), len(ckpt.MAGIC) + 4, len(ckpt.MAGIC) + 8, 60,
                       len(data) // 2, len(data) - 40, len(data) - 1}):
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated") as info:
            rsnjax.load(bad)
        assert str(bad) in str(info.value)
    bad.write_bytes(b"")
    with pytest.raises(CheckpointError, match="truncated"):
        rsnjax.load(bad)


def test_every_flipped_byte_is_detected(tmp_path, saved):
    data = saved.read_bytes()
    bad = tmp_path / "flipped.ckpt"
    for position in range(len(data)):
        corrupt = bytearray(data)
        corrupt[position] ^= 0x40
        bad.write_bytes(bytes(corrupt))
        with pytest.raises(CheckpointError) as info:
            rsnjax.load(bad)
        message = str(info.value)
        assert str(bad) in message
        assert any(w in message for w in ("corrupt", "magic", "truncated", "header")), message


def test_padding_wrong_magic_missing_and_old_format(tmp_path, saved):
    data = saved.read_bytes()
    padded = tmp_path / "padded.ckpt"
    padded.write_bytes(data + b"\0")
    with pytest.raises(CheckpointError, match="padded"):
        rsnjax.load(padded)
    npy = tmp_path / "array.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(CheckpointError, match="not an rsnjax checkpoint"):
        rsnjax.load(npy)
    with pytest.raises(CheckpointError, match="does not exist"):
        rsnjax.load(tmp_path / "nope.ckpt")
    with pytest.raises(CheckpointError, match="not a file"):
        rsnjax.load(tmp_path)
    # A file written by a future (or older) format is named as such, not as "corrupt".
    header = json.dumps({"format": 99}).encode()
    future = tmp_path / "future.ckpt"
    future.write_bytes(ckpt.MAGIC + struct.pack("<Q", len(header)) + header + b"\0" * 40)
    with pytest.raises(CheckpointError, match="has format 99"):
        rsnjax.load(future)


# --- fit: checkpoint and resume ---------------------------------------------------------------


def _fit(tmp_dir=None, *, key=0, model_key=1, data=None, **kwargs):
    net = rsnjax.ScoreNetwork(1, 8, key=jax.random.key(model_key))
    kwargs.setdefault("steps_per_level", 8)
    kwargs.setdefault("chunk_size", 4)
    return rsnjax.fit(net, targets.double_peak() if data is None else data, sigmas=kwargs.pop("sigmas", SIGMAS),
                      batch_size=16, key=jax.random.key(key), progress=False,
                      checkpoint_dir=tmp_dir, **kwargs)


@functools.lru_cache(maxsize=1)
def _reference_fit():
    """The uninterrupted run of `_fit`'s default configuration (computed once per session)."""
    return _fit()


def test_interrupted_and_resumed_fit_equals_uninterrupted(tmp_path):
    reference, ref_history = _reference_fit()
    # Stop in the middle of level 1 (chunks: level 0 = 2 chunks, then 1 of level 1), then resume
    # with another chunk size: the first resumed chunk realigns (step 4 with chunks of 8).
    partial, history = _fit(tmp_path, max_chunks=3)
    assert np.isnan(history.loss).sum() == 4
    meta = ckpt.read_info(tmp_path / training.CHECKPOINT_NAME)["metadata"]
    assert (meta["level"], meta["step"]) == (1, 4)
    resumed, resumed_history = _fit(tmp_path, resume=True, chunk_size=8)
    assert_bit_identical(resumed, reference)
    assert ref_history.loss.tobytes() == resumed_history.loss.tobytes()
    # Resuming a finished run returns the finished model at once.
    again, _ = _fit(tmp_path, resume=True)
    assert_bit_identical(again, reference)


def test_resume_carries_optimizer_state_with_array_data(tmp_path):
    data = np.asarray(targets.double_peak().sample(jax.random.key(5), 40))
    kwargs = dict(data=data, optimizer=optax.adam(3e-2), weight_decay=1e-3, reset_optimizer=False,
                  steps_per_level=6, chunk_size=2)
    reference, ref_history = _fit(**kwargs)
    _fit(tmp_path, max_chunks=1, **kwargs)  # stops at level 0, step 2: Adam's moments matter
    resumed, history = _fit(tmp_path, resume=True, **kwargs)
    assert_bit_identical(resumed, reference)
    assert ref_history.loss.tobytes() == history.loss.tobytes()


def test_checkpoint_every(tmp_path, monkeypatch):
    written = []
    real_save = ckpt.save

    def recording_save(path, model, *, extra=None, metadata=None):
        written.append((metadata["level"], metadata["step"]))
        return real_save(path, model, extra=extra, metadata=metadata)

    monkeypatch.setattr(training.ckpt, "save", recording_save)
    _fit(tmp_path, steps_per_level=12, chunk_size=2, checkpoint_every=4)
    assert written == [(0, 4), (0, 8), (1, 0), (1, 4), (1, 8), (2, 0)]
    written.clear()
    # Checkpoints fall on chunk boundaries: every 6 steps with chunks of 4 → after step 8.
    _fit(tmp_path, steps_per_level=12, chunk_size=4, checkpoint_every=6)
    assert written == [(0, 8), (1, 0), (1, 8), (2, 0)]
    meta = ckpt.read_info(tmp_path / training.CHECKPOINT_NAME)["metadata"]
    assert (meta["level"], meta["step"]) == (2, 0)
    with pytest.raises(ValueError, match="`checkpoint_every` needs `checkpoint_dir`"):
        _fit(None, checkpoint_every=4)


DOUBLE_PEAK = targets.double_peak()


def _nan_sometimes(key, batch_size):
    """Double-peak draws, except that about one step in 12 returns NaN (decided by the key)."""
    k_bad, k_x = jax.random.split(key)
    x = DOUBLE_PEAK.sample(k_x, batch_size)
    return jnp.where(jax.random.uniform(k_bad) < 1 / 12, jnp.nan, x)


def test_divergence_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    last_written = {}
    real_save = ckpt.save

    def recording_save(path, model, *, extra=None, metadata=None):
        out = real_save(path, model, extra=extra, metadata=metadata)
        last_written["bytes"] = path.read_bytes()
        last_written["position"] = (metadata["level"], metadata["step"])
        return out

    monkeypatch.setattr(training.ckpt, "save", recording_save)
    with pytest.raises(rsnjax.TrainingDivergedError) as info:
        _fit(tmp_path, data=_nan_sometimes, steps_per_level=30, chunk_size=1, checkpoint_every=1)
    err = info.value
    assert err.level * 30 + err.step > 0, "this key must diverge after at least one good step"
    path = tmp_path / training.CHECKPOINT_NAME
    assert path.read_bytes() == last_written["bytes"]  # untouched by the failing step
    assert last_written["position"] == (err.level, err.step)  # ... and it is the last good one
    assert_bit_identical(rsnjax.load(path), err.model)
    assert str(path) in str(err)
    history = err.history
    assert np.all(np.isfinite(history.loss[: err.level * 30 + err.step]))


def _fit_checkpoint(tmp_path, **kwargs):
    """A fit checkpoint at (level 0, step 0), written without compiling anything."""
    _fit(tmp_path, max_chunks=0, **kwargs)
    return tmp_path / training.CHECKPOINT_NAME


def test_resume_refuses_a_checkpoint_of_another_model_or_config(tmp_path):
    path = _fit_checkpoint(tmp_path)
    name = str(path)
    net16 = rsnjax.ScoreNetwork(1, 16, key=jax.random.key(1))
    with pytest.raises(CheckpointError, match=r"holds a ScoreNetwork\(.*hidden=8.*hidden=16") as info:
        rsnjax.fit(net16, targets.double_peak(), sigmas=SIGMAS, steps_per_level=8, batch_size=16,
                   key=jax.random.key(0), checkpoint_dir=tmp_path, resume=True, max_chunks=0)
    assert name in str(info.value)
    so = rsnjax.SamplerOnly(1, key=jax.random.key(1))
    with pytest.raises(CheckpointError, match="holds a ScoreNetwork.*SamplerOnly"):
        rsnjax.fit(so, targets.double_peak(), sigmas=SIGMAS, steps_per_level=8, batch_size=16,
                   key=jax.random.key(0), checkpoint_dir=tmp_path, resume=True, max_chunks=0)
    with pytest.raises(CheckpointError, match="differs in: key"):
        _fit(tmp_path, key=7, resume=True, max_chunks=0)
    with pytest.raises(CheckpointError, match="differs in: sigmas"):
        _fit(tmp_path, sigmas=[1.0, 0.2], resume=True, max_chunks=0)
    with pytest.raises(CheckpointError, match="differs in: data"):  # another 1-D target
        _fit(tmp_path, data=targets.gaussian(jnp.zeros(1), 1.0), resume=True, max_chunks=0)
    with pytest.raises(CheckpointError, match="differs in: steps_per_level"):
        _fit(tmp_path, steps_per_level=4, resume=True, max_chunks=0)
    # Array data is compared by content, not only shape.
    data = np.asarray(targets.double_peak().sample(jax.random.key(5), 40))
    _fit_checkpoint(tmp_path, data=data)
    with pytest.raises(CheckpointError, match="differs in: data"):
        _fit(tmp_path, data=data + 1.0, resume=True, max_chunks=0)


def test_resume_refuses_a_checkpoint_written_under_another_confinement(tmp_path, monkeypatch):
    """The confinement penalty's form is in the fingerprint: a checkpoint written under another
    penalty (an earlier version's) does not silently resume under this one."""
    _fit_checkpoint(tmp_path)
    monkeypatch.setattr(training, "CONFINE_SLOPE", 0.5)
    with pytest.raises(CheckpointError, match="differs in: confinement"):
        _fit(tmp_path, resume=True, max_chunks=0)


def test_resume_refuses_corrupt_or_foreign_files(tmp_path):
    path = _fit_checkpoint(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as info:
        _fit(tmp_path, resume=True, max_chunks=0)
    assert str(path) in str(info.value)
    ckpt.save(path, rsnjax.ScoreNetwork(1, 8, key=jax.random.key(1)))  # a plain model file
    with pytest.raises(CheckpointError, match="not written by `fit`"):
        _fit(tmp_path, resume=True, max_chunks=0)
    # Without `resume` the stale file is simply replaced by the new run's checkpoint.
    _fit(tmp_path, max_chunks=0)
    assert ckpt.read_info(path)["metadata"]["level"] == 0


def test_fit_checkpoint_argument_checks(tmp_path):
    with pytest.raises(ValueError, match="`resume=True` needs `checkpoint_dir`"):
        _fit(None, resume=True)
    with pytest.raises(ValueError, match="`max_chunks`"):
        _fit(tmp_path, max_chunks=-1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="`checkpoint_dir`.*not a directory"):
        _fit(tmp_path / "file")

    class Custom(eqx.Module):
        w: jax.Array

        def __call__(self, x):
            return -x * self.w

    with pytest.raises(TypeError, match="`checkpoint_dir` needs `model`"):
        rsnjax.fit(Custom(jnp.ones(1)), targets.double_peak(), sigmas=SIGMAS, steps_per_level=2,
                   key=jax.random.key(0), checkpoint_dir=tmp_path)


# --- a process killed mid-run (SIGKILL, no cleanup) ---------------------------------------------

_KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import jax, rsnjax
    from rsnjax import targets

    # SIGKILL the process inside its KILL_AT-th checkpoint write, after the temporary file is
    # written and before it is renamed over the previous checkpoint.
    real_replace, writes = os.replace, [0]

    def replace(src, dst):
        writes[0] += 1
        if writes[0] == int(os.environ["KILL_AT"]):
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)

    os.replace = replace
    net = rsnjax.ScoreNetwork(1, 8, key=jax.random.key(1))
    rsnjax.fit(net, targets.double_peak(), sigmas=rsnjax.geometric_sigmas(1.0, 0.1, 2),
               steps_per_level=8, batch_size=16, key=jax.random.key(0), progress=False,
               chunk_size=4, checkpoint_dir=sys.argv[1], checkpoint_every=4)
""")


@pytest.mark.slow
def test_killed_process_resumes_bit_exactly(tmp_path):
    script = tmp_path / "kill_fit.py"
    script.write_text(_KILL_SCRIPT)
    run_dir = tmp_path / "run"
    # Checkpoints fall at (level, step) = (0, 4), (1, 0), (1, 4), (2, 0): die writing (1, 4).
    proc = subprocess.run([sys.executable, str(script), str(run_dir)], env=dict(os.environ, KILL_AT="3"),
                          capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    meta = ckpt.read_info(run_dir / training.CHECKPOINT_NAME)["metadata"]
    assert (meta["level"], meta["step"]) == (1, 0)  # the last complete checkpoint survived
    assert any(p.name.endswith(".tmp") for p in run_dir.iterdir())  # the interrupted write
    resumed, history = _fit(run_dir, resume=True)
    reference, ref_history = _reference_fit()
    assert_bit_identical(resumed, reference)
    assert ref_history.loss.tobytes() == history.loss.tobytes()


def test_resume_with_per_level_steps_equals_uninterrupted(tmp_path):
    """Levels of different lengths: stop inside the longer second level, resume, same bits."""
    reference, ref_history = _fit(steps_per_level=[4, 12])
    partial, history = _fit(tmp_path, steps_per_level=[4, 12], max_chunks=2)
    meta = ckpt.read_info(tmp_path / training.CHECKPOINT_NAME)["metadata"]
    assert (meta["level"], meta["step"]) == (1, 4)
    assert np.isnan(history.loss).sum() == 8
    resumed, resumed_history = _fit(tmp_path, steps_per_level=[4, 12], resume=True)
    assert_bit_identical(resumed, reference)
    assert ref_history.loss.tobytes() == resumed_history.loss.tobytes()
    # another per-level budget is a different run: refused, naming the difference
    with pytest.raises(ckpt.CheckpointError, match="steps_per_level"):
        _fit(tmp_path, steps_per_level=[4, 8], resume=True)
