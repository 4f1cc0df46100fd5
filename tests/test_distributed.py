"""Scale-out: data-parallel `fit` on 2 forced CPU devices, and `sample`/`fit` under
jax.distributed with 2 processes on 127.0.0.1 (CPU, one device each, gloo collectives)."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

import rsnjax
from rsnjax import distributed

ROOT = Path(__file__).resolve().parents[1]


def _env(devices: int) -> dict:
    pythonpath = os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
                PYTHONPATH=pythonpath)


DATA_PARALLEL_SCRIPT = textwrap.dedent(
    """
    import tempfile
    import jax, numpy as np, rsnjax
    assert len(jax.local_devices()) == 2, jax.local_devices()
    data = np.asarray(jax.random.normal(jax.random.key(1), (512, 2)))
    net = rsnjax.ScoreNetwork(2, 64, key=jax.random.key(0))
    kw = dict(sigmas=[1.0, 0.3], steps_per_level=40, batch_size=64, key=jax.random.key(2), chunk_size=20)
    one, h_one = rsnjax.fit(net, data, data_parallel=False, **kw)
    two, h_two = rsnjax.fit(net, data, data_parallel=True, **kw)  # CPU devices: opt-in
    default, _ = rsnjax.fit(net, data, **kw)  # the default on CPU devices is one device: the same bits
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
               zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(default)) if hasattr(a, "shape"))
    leaves = lambda m: [np.asarray(x) for x in jax.tree_util.tree_leaves(m) if hasattr(x, "shape")]
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(leaves(one), leaves(two)))
    scale = max(float(np.max(np.abs(a))) for a in leaves(one))
    loss_diff = float(np.max(np.abs(h_one.loss - h_two.loss)))
    with tempfile.TemporaryDirectory() as d:  # interrupted after one chunk, resumed on both devices
        rsnjax.fit(net, data, checkpoint_dir=d, max_chunks=1, data_parallel=True, **kw)
        resumed, _ = rsnjax.fit(net, data, checkpoint_dir=d, resume=True, data_parallel=True, **kw)
    resumed_equal = all(np.array_equal(a, b) for a, b in zip(leaves(resumed), leaves(two)))
    try:
        rsnjax.fit(net, data, data_parallel=True, **dict(kw, batch_size=63))
        batch_error = ""
    except ValueError as err:
        batch_error = str(err)
    print("RESULT", __import__("json").dumps(dict(diff=diff, scale=scale, loss_diff=loss_diff,
          resumed_equal=resumed_equal, batch_error=batch_error)))
    """
)


def _run_result(script: str, devices: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", script], env=_env(devices), capture_output=True, text=True,
                          timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_fit_data_parallel_on_two_devices_matches_one_device():
    r = _run_result(DATA_PARALLEL_SCRIPT, 2)
    # the same 80 Adam steps; only the order of the batch reduction differs (float32: ~1e-7
    # relative per step, growing slowly over 80 steps), far below a step's own size (lr 1e-3)
    assert r["diff"] <= 1e-5 * max(1.0, r["scale"]), r
    assert r["loss_diff"] <= 1e-4, r
    assert r["resumed_equal"], r
    assert "batch_size" in r["batch_error"] and "multiple" in r["batch_error"], r


def test_fit_data_parallel_argument_is_checked():
    net = rsnjax.ScoreNetwork(2, 8, key=jax.random.key(0))
    with pytest.raises(TypeError, match="data_parallel"):
        rsnjax.fit(net, np.zeros((64, 2)), data_parallel="yes", key=jax.random.key(0), steps_per_level=1)


def test_gather_false_on_one_process_returns_all_rows_with_their_ids():
    net = rsnjax.ScoreNetwork(2, 16, key=jax.random.key(0))
    kw = dict(key=jax.random.key(1), num_chains=10, num_steps=20, step_size=0.05, warn=False)
    full = rsnjax.sample(net, **kw)
    mine = rsnjax.sample(net, gather=False, **kw)
    assert full.chain_ids is None
    np.testing.assert_array_equal(mine.chain_ids, np.arange(10))
    np.testing.assert_array_equal(np.asarray(mine.samples), np.asarray(full.samples))
    with pytest.raises(TypeError, match="gather"):
        rsnjax.sample(net, gather="no", **kw)
    assert not distributed.is_multiprocess() and distributed.process_count() == 1


# --- two processes -------------------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import jax
    from rsnjax import distributed
    pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    assert jax.process_count() == 2 and len(jax.devices()) == 2 and len(jax.local_devices()) == 1
    from tests.test_distributed import run_case

    saved = run_case(pid, out)
    np.savez(f"{out}/p{pid}.npz", **saved)
    print("WORKER-OK", pid)
    """
)

SAMPLE_KW = dict(num_chains=37, num_steps=40, step_size=0.05, save_every=10, warn=False)


def run_case(pid: int, out: str | None = None) -> dict:
    """What each of the two processes runs (pid 0, 1) and the one-process reference (pid -1:
    one device, the same sampling run, and `fit` on process 0's shard alone)."""
    net = rsnjax.ScoreNetwork(2, 32, key=jax.random.key(0))
    res = rsnjax.ReservoirSampler.from_score_network(net)
    one = dict(shard=False) if pid < 0 else {}
    gathered = rsnjax.sample(res, key=jax.random.key(1), **one, **SAMPLE_KW)
    saved = dict(samples=np.asarray(gathered.samples), trajectory=np.asarray(gathered.trajectory))
    if pid >= 0:
        mine = rsnjax.sample(res, key=jax.random.key(1), gather=False, **SAMPLE_KW)
        saved.update(local=np.asarray(mine.samples), local_traj=np.asarray(mine.trajectory), ids=mine.chain_ids)
    # fit: each process passes its own shard (process 1's data shifted by +3 along x)
    shard = max(pid, 0)
    data = np.asarray(jax.random.normal(jax.random.key(10 + shard), (200, 2))) + np.array([3.0 * shard, 0.0])
    fit_kw = dict(sigmas=[1.0, 0.3], steps_per_level=20, batch_size=32, key=jax.random.key(2),
                  data_parallel=None if pid >= 0 else False)
    model, hist = rsnjax.fit(net, data, **fit_kw)
    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(model) if hasattr(x, "shape")]
    if out is not None:  # a checkpoint on the shared directory: stopped after one level, resumed
        rsnjax.fit(net, data, checkpoint_dir=f"{out}/ckpt", max_chunks=1, **fit_kw)
        resumed, _ = rsnjax.fit(net, data, checkpoint_dir=f"{out}/ckpt", resume=True, **fit_kw)
        saved["resumed_equal"] = all(np.array_equal(np.asarray(a), b) for a, b in zip(
            [x for x in jax.tree_util.tree_leaves(resumed) if hasattr(x, "shape")], leaves))
    saved.update({f"param{i}": a for i, a in enumerate(leaves)}, loss=hist.loss,
                 extent_mean=np.asarray(model.extent.mean))
    return saved


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_sample_and_fit(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, str(script), str(pid), port, str(tmp_path)], env=_env(1),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT) for pid in (0, 1)]
    outputs = []
    try:
        ref = run_case(-1)  # meanwhile, the one-process reference here
        for p in procs:
            outputs.append(p.communicate(timeout=150))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0 and "WORKER-OK" in out, err[-3000:]
    p0, p1 = (dict(np.load(tmp_path / f"p{pid}.npz", allow_pickle=False)) for pid in (0, 1))

    # gathered samples on both processes: those of a one-process run with the same key, bit for bit
    for p in (p0, p1):
        np.testing.assert_array_equal(p["samples"], ref["samples"])
        np.testing.assert_array_equal(p["trajectory"], ref["trajectory"])
    # gather=False: disjoint rows that together cover every chain once, each with its own values
    ids = np.concatenate([p0["ids"], p1["ids"]])
    assert len(p0["ids"]) > 0 and len(p1["ids"]) > 0
    np.testing.assert_array_equal(np.sort(ids), np.arange(37))
    for p in (p0, p1):
        np.testing.assert_array_equal(p["local"], ref["samples"][p["ids"]])
        np.testing.assert_array_equal(p["local_traj"], ref["trajectory"][:, p["ids"]])

    # fit on different local shards: identical parameters on both processes
    params = sorted(k for k in p0 if k.startswith("param"))
    assert params
    for k in params:
        np.testing.assert_array_equal(p0[k], p1[k])
    np.testing.assert_array_equal(p0["loss"], p1["loss"])
    # process 0 wrote the checkpoint, both resumed from it to the uninterrupted result
    assert p0["resumed_equal"] and p1["resumed_equal"]
    assert np.all(np.isfinite(p0["loss"]))
    # the extent is measured on both shards (x means 0 and 3: 1.5 ± 5 standard errors of 400 points)
    assert abs(p0["extent_mean"][0] - 1.5) < 5 * np.sqrt(3.25 / 400), p0["extent_mean"]
    # and process 1's shard was trained on: the result differs from a fit on process 0's shard alone
    assert max(float(np.max(np.abs(p0[k] - ref[k]))) for k in params) > 1e-3


@pytest.mark.slow
def test_gpu_benchmark_script_runs_on_cpu_with_smoke(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--smoke", "--repeats", "1",
                           "--out", str(out)], env=_env(1), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    kinds = [r["kind"] for r in result["rows"]]
    assert kinds.count("sample") == 4 and kinds.count("train_step") == 1, kinds
    assert all(r["chain_steps_per_s"] > 0 for r in result["rows"] if r["kind"] == "sample")
    assert result["rows"][-1]["ms_per_step"] > 0 and result["platform"] == "cpu"
