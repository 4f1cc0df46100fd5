"""Resumable sampling (`sample(..., checkpoint_dir=..., resume=True)`), progress between segments
and the compile cache across step sizes."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

import rsnjax
from rsnjax import _segments
from rsnjax.checkpoint import CheckpointError, read_info


def _models():
    net = rsnjax.ScoreNetwork(2, 32, key=jax.random.key(0))
    return {"reservoir": rsnjax.ReservoirSampler.from_score_network(net), "score-network": net}


# 150 chains in blocks of 64: 3 blocks and 42 padded chains, so padding is exercised on resume;
# 5 segments of 20 steps: 2 of burn-in, 3 saving 2 readouts each
KW = dict(key=jax.random.key(3), num_chains=150, num_steps=60, burn_in=40, step_size=0.05,
          save_every=10, return_state=True, block_size=64, checkpoint_every=20, warn=False)


class _Killed(Exception):
    pass


def _interrupt_after(monkeypatch, segments: int):
    """Make the run stop (as if killed) right after its `segments`-th checkpoint is written."""
    real = _segments._write
    calls = []

    def write(*args, **kwargs):
        real(*args, **kwargs)
        calls.append(kwargs["segment"])
        if len(calls) == segments:
            raise _Killed

    monkeypatch.setattr(_segments, "_write", write)
    return calls


def _assert_same(a, b):
    np.testing.assert_array_equal(a.samples, b.samples)
    np.testing.assert_array_equal(a.trajectory, b.trajectory)
    np.testing.assert_array_equal(a.final_state, b.final_state)
    np.testing.assert_array_equal(a.nonfinite_step, b.nonfinite_step)


@pytest.mark.parametrize("name", ["reservoir", "score-network"])
@pytest.mark.parametrize("stop_after", [1, 3])  # inside the burn-in, and after the first saving segment
def test_a_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path, monkeypatch, name, stop_after):
    model = _models()[name]
    plain = {k: v for k, v in KW.items() if k != "checkpoint_every"}
    whole = rsnjax.sample(model, **plain)  # one compiled program, no checkpoints
    with monkeypatch.context() as m:
        _interrupt_after(m, stop_after)
        with pytest.raises(_Killed):
            rsnjax.sample(model, checkpoint_dir=tmp_path, **KW)
    info = read_info(tmp_path / _segments.CHECKPOINT_NAME)
    assert (info["segment"], info["num_segments"], info["complete"]) == (stop_after, 5, False)
    resumed = rsnjax.sample(model, checkpoint_dir=tmp_path, resume=True, **KW)
    _assert_same(resumed, whole)
    assert read_info(tmp_path / _segments.CHECKPOINT_NAME)["complete"]
    # a finished run's checkpoint gives the same result again, without simulating
    monkeypatch.setattr(_segments, "_compiled_segment", lambda *a, **k: pytest.fail("simulated again"))
    _assert_same(rsnjax.sample(model, checkpoint_dir=tmp_path, resume=True, **KW), whole)


def test_segments_give_the_same_bits_and_block_size_the_same_up_to_rounding():
    """Cutting the run into segments (any `checkpoint_every`) changes no bit: every chain's noise
    is a function of its index and the global step only. Cutting the chains into blocks changes
    no bit either for blocks of >= 64 chains; smaller blocks may change XLA's kernel for the
    readout's matrix product and with it the rounding: at most a few float32 ulps per step."""
    model = _models()["reservoir"]
    kw = {k: v for k, v in KW.items() if k not in ("checkpoint_every", "block_size")}
    ref = rsnjax.sample(model, **kw)
    _assert_same(rsnjax.sample(model, progress=True, checkpoint_every=10, **kw), ref)
    _assert_same(rsnjax.sample(model, block_size=75, **kw), ref)
    steps = kw["burn_in"] + kw["num_steps"]
    bound = 4 * steps * np.finfo(np.float32).eps * (1 + np.abs(ref.samples).max())  # ~4e-5
    for block in (7,):
        out = rsnjax.sample(model, block_size=block, **kw)
        np.testing.assert_allclose(out.samples, ref.samples, rtol=0, atol=bound)
        np.testing.assert_allclose(out.trajectory, ref.trajectory, rtol=0, atol=bound)


def test_a_corrupt_checkpoint_raises_and_is_left_alone(tmp_path, monkeypatch):
    model = _models()["reservoir"]
    with monkeypatch.context() as m:
        _interrupt_after(m, 2)
        with pytest.raises(_Killed):
            rsnjax.sample(model, checkpoint_dir=tmp_path, **KW)
    path = tmp_path / _segments.CHECKPOINT_NAME
    good = path.read_bytes()
    for bad, match in [(good[:-1] + bytes([good[-1] ^ 1]), "corrupt: payload checksum"),
                       (good[: len(good) // 2], "truncated"),
                       (b"not a checkpoint", "not an rsnjax checkpoint")]:
        path.write_bytes(bad)
        with pytest.raises(CheckpointError, match=match):
            rsnjax.sample(model, checkpoint_dir=tmp_path, resume=True, **KW)
        assert path.read_bytes() == bad  # nothing was written over it
        assert sorted(os.listdir(tmp_path)) == [_segments.CHECKPOINT_NAME]


def test_a_checkpoint_of_another_run_raises_naming_the_difference(tmp_path, monkeypatch):
    models = _models()
    model = models["reservoir"]
    with monkeypatch.context() as m:
        _interrupt_after(m, 1)
        with pytest.raises(_Killed):
            rsnjax.sample(model, checkpoint_dir=tmp_path, **KW)
    path = tmp_path / _segments.CHECKPOINT_NAME
    before = path.read_bytes()
    other = rsnjax.ReservoirSampler.from_score_network(rsnjax.ScoreNetwork(2, 32, key=jax.random.key(1)))
    for change, match in [({"step_size": 0.04}, "`step_size` is 0.05 there and 0.04 here"),
                          ({"key": jax.random.key(4)}, "the key differs"),
                          ({"num_chains": 140}, "`num_chains` is 150 there and 140 here"),
                          ({"num_steps": 80}, "`num_steps` is 60 there and 80 here"),
                          ({"init": "normal"}, "the initial state"),
                          ({"save_every": 20}, "`save_every` is 10 there and 20 here"),
                          ({"checkpoint_every": 10}, "`checkpoint_every` is 20 there and 10 here"),
                          ({"model": other}, "the model's weights differ"),
                          ({"model": models["score-network"]}, "the model's weights")]:
        kw = {**KW, **change}
        with pytest.raises(CheckpointError, match=match):
            rsnjax.sample(kw.pop("model", model), checkpoint_dir=tmp_path, resume=True, **kw)
        assert path.read_bytes() == before
    # without resume=True an existing checkpoint is never overwritten
    with pytest.raises(CheckpointError, match="exists: pass resume=True"):
        rsnjax.sample(model, checkpoint_dir=tmp_path, **KW)
    assert path.read_bytes() == before
    # a model checkpoint is not a sampling checkpoint
    rsnjax.save(path, model)
    with pytest.raises(CheckpointError, match="not of a `sample` run"):
        rsnjax.sample(model, checkpoint_dir=tmp_path, resume=True, **KW)


@pytest.mark.parametrize("kwargs, match", [
    (dict(checkpoint_every=7), r"`checkpoint_every` \(7\) must divide `num_steps` \(60\) and divide `burn_in` \(40\)"),
    (dict(checkpoint_every=5), r"be a multiple of `save_every` \(10\)"),
    (dict(resume=True), "`resume=True` needs `checkpoint_dir`"),
    (dict(progress="yes"), "`progress` must be True, False or None"),
    (dict(progress=True, backend="diffrax"), "not supported with backend='diffrax'"),
])
def test_segment_arguments_are_checked(kwargs, match):
    kw = {**KW, "checkpoint_every": 20, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        rsnjax.sample(_models()["reservoir"], **kw)


def test_default_checkpoint_every_divides_the_run():
    assert _segments.default_checkpoint_every(0, 10_000, None) == 500  # 20 segments
    assert _segments.default_checkpoint_every(1000, 10_000, 100) == 500  # divides both, multiple of 100
    assert _segments.default_checkpoint_every(0, 7, None) == 1
    assert _segments.default_checkpoint_every(0, 30, 30) == 30  # one segment when nothing smaller fits


def test_progress_is_reported_between_segments(monkeypatch, capsys):
    model = _models()["score-network"]
    kw = {k: v for k, v in KW.items() if k != "checkpoint_every"}
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # the plain-line fallback
    monkeypatch.setattr(_segments.time, "perf_counter", iter(np.arange(0.0, 1e4, 2.0)).__next__)
    rsnjax.sample(model, progress=True, checkpoint_every=20, **kw)
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        f"rsnjax.sample: step {s}/100 ({100 * s // 100} %)" for s in (20, 40, 60, 80, 100)]
    rsnjax.sample(model, progress=False, **kw)
    rsnjax.sample(model, **kw)  # default: off, stderr is not a terminal here
    assert capsys.readouterr().err == ""


def test_progress_uses_tqdm_when_installed(capsys):
    pytest.importorskip("tqdm")
    kw = {k: v for k, v in KW.items() if k != "checkpoint_every"}
    rsnjax.sample(_models()["score-network"], progress=True, checkpoint_every=20, **kw)
    err = capsys.readouterr().err
    assert "rsnjax.sample: 100%" in err and "100/100" in err  # (tqdm may skip the middle ones)


def test_a_new_step_size_does_not_recompile():
    traces = []

    def score(x):
        traces.append(1)  # runs when the program is traced, not when it runs
        return -x

    kw = dict(dim=2, key=jax.random.key(0), num_chains=8, num_steps=10, warn=False)
    a = rsnjax.sample(score, step_size=0.1, **kw)
    assert len(traces) >= 1
    n = len(traces)
    b = rsnjax.sample(score, step_size=0.05, **kw)
    assert len(traces) == n  # the compiled program was reused
    # and the step size did change the numbers: x' = (1 − h) x + √(2h) ξ from the same start
    x0 = rsnjax.sample(score, step_size=0.1, **{**kw, "num_steps": 1}).samples
    assert not np.allclose(a.samples, b.samples)
    c = rsnjax.sample(score, step_size=0.05, **{**kw, "num_steps": 1}).samples
    assert not np.allclose(x0, c)
    # the same holds for the segment programs
    rsnjax.sample(score, step_size=0.1, progress=True, checkpoint_every=5, **kw)
    m = len(traces)
    rsnjax.sample(score, step_size=0.3, progress=True, checkpoint_every=5, **kw)
    assert len(traces) == m


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, jax, numpy as np, rsnjax
    net = rsnjax.ScoreNetwork(2, 200, key=jax.random.key(0))
    res = rsnjax.ReservoirSampler.from_score_network(net)
    rsnjax.sample(res, key=jax.random.key(7), num_chains=1000, num_steps=3000, step_size=0.01,
                  save_every=100, checkpoint_dir=sys.argv[1], checkpoint_every=100, warn=False)
    print("FINISHED")
    """
)


@pytest.mark.slow
def test_sampling_killed_with_sigkill_resumes_to_the_same_bits(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    path = tmp_path / _segments.CHECKPOINT_NAME
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err[-3000:]
    info = read_info(path)  # a whole, checksummed file although the writer was killed
    assert 1 <= info["segment"] < info["num_segments"] == 30
    net = rsnjax.ScoreNetwork(2, 200, key=jax.random.key(0))
    res = rsnjax.ReservoirSampler.from_score_network(net)
    kw = dict(key=jax.random.key(7), num_chains=1000, num_steps=3000, step_size=0.01, save_every=100, warn=False)
    resumed = rsnjax.sample(res, checkpoint_dir=tmp_path, checkpoint_every=100, resume=True, **kw)
    whole = rsnjax.sample(res, **kw)
    _assert_same(resumed, whole)


def test_cli_sample_checkpoints_and_resumes(tmp_path, monkeypatch, capsys):
    from rsnjax import cli

    rsnjax.save(tmp_path / "model.ckpt", _models()["score-network"])
    common = ["sample", str(tmp_path / "model.ckpt"), "--chains", "50", "--steps", "40", "--burn-in", "20",
              "--step-size", "0.05", "--save-every", "10", "--seed", "2"]
    resumable = common + ["--checkpoint-dir", str(tmp_path / "state"), "--checkpoint-every", "10",
                          "--out", str(tmp_path / "resumed.npz")]
    assert cli.main(common + ["--out", str(tmp_path / "whole.npz")]) == 0
    with monkeypatch.context() as m:
        _interrupt_after(m, 3)
        real = _segments._write

        def interrupt(*a, **k):  # Ctrl-C after the 3rd checkpoint
            try:
                real(*a, **k)
            except _Killed:
                raise KeyboardInterrupt from None

        m.setattr(_segments, "_write", interrupt)
        assert cli.main(resumable) == 130
    err = capsys.readouterr().err
    assert "interrupted; continue from" in err and "--resume" in err
    assert cli.main(resumable[:-2] + ["--step-size", "0.04", "--resume"] + resumable[-2:]) == 2
    assert "`step_size` is 0.05 there and 0.04 here" in capsys.readouterr().err
    assert cli.main(resumable + ["--resume", "--no-progress"]) == 0
    with np.load(tmp_path / "whole.npz") as a, np.load(tmp_path / "resumed.npz") as b:
        np.testing.assert_array_equal(a["samples"], b["samples"])
        np.testing.assert_array_equal(a["trajectory"], b["trajectory"])


def test_checkpoints_alone_report_no_progress_when_stderr_is_not_a_terminal(tmp_path, capsys):
    rsnjax.sample(_models()["score-network"], checkpoint_dir=tmp_path, **KW)
    assert capsys.readouterr().err == ""
