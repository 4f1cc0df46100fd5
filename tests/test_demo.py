import json
import math

import jax
import matplotlib.figure
import numpy as np
import pytest

import rsnjax.metrics
from rsnjax import checkpoint, demo, targets

ARGS = ["--target", "double-peak", "--hidden", "32", "--steps-per-level", "20",
        "--chains", "200", "--burn-in", "20", "--steps", "40", "--no-progress"]


def test_demo_runs_end_to_end_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["--out", str(out), *ARGS]
    assert demo.main(args) == 0
    for name in ["model.ckpt", "samples.npz", "metrics.json", "metrics.md", "demo.png"]:
        assert (out / name).stat().st_size > 0, name
    values = json.loads((out / "metrics.json").read_text())
    assert values["num_chains"] == 200 and values["hidden"] == 32
    target = targets.double_peak()
    with np.load(out / "samples.npz") as f:
        samples, trajectory = f["samples"], f["trajectory"]
    assert samples.shape == (200, 1) and trajectory.shape == (20, 200, 1)
    np.testing.assert_array_equal(trajectory[-1], samples)
    # the reported numbers are those of the files written: recompute them independently
    np.testing.assert_allclose(values["mode_weights"], rsnjax.metrics.mode_weights(samples, target), atol=1e-6)
    # the demo's reference has 200 draws: its mean is off by ≈ std/√200, so 5 of those
    big = np.asarray(target.sample(jax.random.key(99), 200_000))
    np.testing.assert_allclose(values["mean_error"], rsnjax.metrics.mean_error(samples, big),
                               atol=5 * big.std() / math.sqrt(200))
    net = checkpoint.load(out / "model.ckpt")
    sigma = checkpoint.read_info(out / "model.ckpt")["metadata"]["sigmas"][-1]
    again = rsnjax.metrics.score_error(net, target, key=jax.random.key(98), sigma=sigma)
    tol = 5 * math.hypot(values["score_error_stderr"], float(again.stderr))
    assert abs(values["score_error"] - float(again.value)) < tol, (values["score_error"], again)
    assert "| metric |" in capsys.readouterr().out
    # a second run must not silently replace the first one's files
    assert demo.main(args) == 3
    assert "--overwrite" in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())["target"] == "double-peak"


def test_demo_writes_strict_json_and_no_partial_files(tmp_path, monkeypatch):
    out = tmp_path / "demo"

    def fake_evaluate(samples, target, **kwargs):
        return {"ksd": float("nan"), "w1": [float("inf"), 0.5], "mean_error": 0.25}

    def failing_savefig(self, fname, **kwargs):
        if hasattr(fname, "write"):
            fname.write(b"\x89PNG partial")
        else:
            with open(fname, "wb") as f:
                f.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(rsnjax.metrics, "evaluate", fake_evaluate)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", failing_savefig)
    with pytest.raises(OSError, match="disk full"):
        demo.main(["--out", str(out), *ARGS])
    text = (out / "metrics.json").read_text()

    def no_constants(name):
        raise AssertionError(f"metrics.json holds {name}, which is not JSON")

    values = json.loads(text, parse_constant=no_constants)
    assert values["ksd"] is None and values["w1"] == [None, 0.5] and values["mean_error"] == 0.25
    assert not (out / "demo.png").exists()  # no half-written figure
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "metrics.md", "model.ckpt", "samples.npz"]
