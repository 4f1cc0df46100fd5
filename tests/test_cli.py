"""The `rsnjax` command line: round trip, resume, config files, exit codes and messages."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import jax
import numpy as np
import pytest

import rsnjax
import rsnjax.metrics
from rsnjax import cli
from rsnjax import checkpoint as ckpt

TINY_TRAIN = ["--hidden", "8", "--num-levels", "2", "--sigma-max", "1.0", "--sigma-min", "0.3", "--steps-per-level", "8",
              "--batch-size", "16", "--learning-rate", "1e-2"]


def run_cli(capsys, *argv):
    """Run ``rsnjax argv`` in-process; return (exit code, stdout, stderr)."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *fragments: str):
    lines = [line for line in err.strip().splitlines() if line.startswith("rsnjax ")]
    assert lines and "error:" in lines[-1], err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])


# --- help --------------------------------------------------------------------------------------


def test_console_script_help_in_a_subprocess():
    script = Path(sys.executable).with_name("rsnjax")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "rsnjax.cli"]
    proc = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in cli.COMMANDS:
        assert name in proc.stdout
    assert "exit codes" in proc.stdout


@pytest.mark.parametrize("command", cli.COMMANDS)
def test_every_subcommand_has_complete_help(capsys, command):
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    sub = cli.build_parser().subparsers_by_name[command]
    for action in sub._actions:
        assert action.help, f"{command}: {action.dest} has no help text"
        for flag in action.option_strings:
            assert flag in out
    assert cli.main([command, "--help"]) == 0


def test_usage_errors_exit_2(capsys):
    code, _, err = run_cli(capsys)
    assert code == 2
    code, _, err = run_cli(capsys, "train", "double-peak", "--hidden", "0", "--out", "x")
    assert code == 2 and "--hidden" in err and "at least 1" in err
    code, _, err = run_cli(capsys, "sample", "m.ckpt", "--step-size", "-1")
    assert code == 2 and "--step-size" in err
    code, _, err = run_cli(capsys, "train", "double-peak", "--bogus")
    assert code == 2 and "--bogus" in err
    code, _, err = run_cli(capsys, "train", "double-peak")
    assert code == 2
    assert_one_line_error(err, "--out DIR")
    code, _, err = run_cli(capsys, "train", "no-such-target", "--out", "x")
    assert code == 2
    assert_one_line_error(err, "unknown target 'no-such-target'", "double-peak")


# --- the round trip ----------------------------------------------------------------------------


def test_train_sample_evaluate_round_trip(tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "double-peak", *TINY_TRAIN, "--out", run)
    assert code == 0, err
    assert "| level | sigma |" in out
    for name in ("model.ckpt", "history.npz", "history.json", "fit_state.ckpt", "train_config.json"):
        assert (run / name).is_file(), name
    model = rsnjax.load(run / "model.ckpt")
    assert isinstance(model, rsnjax.ScoreNetwork) and model.hidden == 8
    info = ckpt.read_info(run / "model.ckpt")
    assert info["metadata"]["train"]["target"] == "double-peak"
    with np.load(run / "history.npz") as history:
        assert history["loss"].shape == (16,) and np.all(np.isfinite(history["loss"]))
        np.testing.assert_allclose(history["sigmas"], [1.0, 0.3])
    assert len(json.loads((run / "history.json").read_text())["level_loss"]) == 2

    code, out, err = run_cli(capsys, "sample", run / "model.ckpt", "--chains", 64, "--steps", 40,
                             "--step-size", 1e-2, "--save-every", 10, "--seed", 3)
    assert code == 0, err
    with np.load(run / "samples.npz") as f:
        assert f["samples"].shape == (64, 1)
        assert f["trajectory"].shape == (4, 64, 1)
        assert np.all(f["nonfinite_step"] == -1)
        meta = json.loads(str(f["info"]))
    assert meta["space"] == "reservoir" and meta["seed"] == 3

    metrics_file = tmp_path / "metrics.json"
    code, out, err = run_cli(capsys, "evaluate", run / "samples.npz", "double-peak", "--json", metrics_file,
                             "--noise-floor-repeats", 0, "--num-projections", 8, "--num-reference", 200)
    assert code == 0, err
    assert "| metric | value |" in out and "mmd2" in out and "rhat" in out
    metrics = json.loads(metrics_file.read_text())["metrics"]
    assert metrics["num_samples"] == 64 and metrics["num_reference"] == 200
    assert np.isfinite(metrics["energy_distance"]) and np.isfinite(metrics["rhat"])

    # Outputs are never overwritten silently.
    code, _, err = run_cli(capsys, "evaluate", run / "samples.npz", "double-peak", "--json", metrics_file,
                           "--noise-floor-repeats", 0)
    assert code == 3
    assert_one_line_error(err, "refusing to overwrite", "metrics.json", "--overwrite")
    code, _, err = run_cli(capsys, "sample", run / "model.ckpt", "--chains", 8, "--steps", 4)
    assert code == 3
    assert_one_line_error(err, "samples.npz")
    code, _, err = run_cli(capsys, "train", "double-peak", *TINY_TRAIN, "--out", run)
    assert code == 3
    assert_one_line_error(err, "model.ckpt", "--overwrite", "--resume")
    metrics_file.write_text("old")
    code, _, err = run_cli(capsys, "evaluate", run / "samples.npz", "double-peak", "--json", metrics_file,
                           "--noise-floor-repeats", 0, "--num-projections", 8, "--num-reference", 200,
                           "--overwrite")
    assert code == 0, err
    assert json.loads(metrics_file.read_text())["metrics"] == metrics  # same seed, same numbers


def test_sample_space_selects_the_simulated_circuit(tmp_path, capsys, monkeypatch):
    net = rsnjax.ScoreNetwork(2, 6, key=jax.random.key(0))
    ckpt.save(tmp_path / "net.ckpt", net)
    ckpt.save(tmp_path / "res.ckpt", rsnjax.ReservoirSampler.from_score_network(net))
    simulated = []

    def fake_sample(model, **kwargs):
        simulated.append((model, kwargs))
        n = kwargs["num_chains"]
        return rsnjax.SampleResult(np.zeros((n, 2)), None, None, -np.ones(n, int), 0.1, 0.2)

    monkeypatch.setattr(rsnjax, "sample", fake_sample)
    for i, (file, space, expected) in enumerate([
            ("net.ckpt", None, rsnjax.ReservoirSampler), ("net.ckpt", "output", rsnjax.ScoreNetwork),
            ("res.ckpt", None, rsnjax.ReservoirSampler), ("res.ckpt", "output", rsnjax.ScoreNetwork)]):
        argv = ["sample", tmp_path / file, "--chains", 3, "--steps", 7, "--step-size", 0.5, "--seed", 4,
                "--out", tmp_path / f"s{i}.npz"] + (["--space", space] if space else [])
        code, _, err = run_cli(capsys, *argv)
        assert code == 0, err
        model, kwargs = simulated[-1]
        assert type(model) is expected
        assert (kwargs["num_chains"], kwargs["num_steps"], kwargs["step_size"]) == (3, 7, 0.5)
        with np.load(tmp_path / f"s{i}.npz") as f:
            assert json.loads(str(f["info"]))["space"] == (space or "reservoir")
            assert f["samples"].shape == (3, 2) and "trajectory" not in f.files
    # The reservoir is the exact mapping of the network.
    np.testing.assert_array_equal(simulated[0][0].W_out, net.A)


def test_data_file_sampler_only_and_output_space(tmp_path, capsys, monkeypatch):
    data = np.asarray(rsnjax.targets.ring_of_gaussians().sample(jax.random.key(0), 64))
    np.save(tmp_path / "ring.npy", data)
    np.save(tmp_path / "reference.npy", data[::-1])
    run = tmp_path / "so"
    code, out, err = run_cli(capsys, "train", tmp_path / "ring.npy", "--model", "so-fr", "--num-levels", 1,
                             "--steps-per-level", 4, "--batch-size", 16, "--out", run)
    assert code == 0, err
    model = rsnjax.load(run / "model.ckpt")
    assert isinstance(model, rsnjax.SamplerOnly) and model.dynamics == "firing_rate" and model.dim == 2
    code, _, err = run_cli(capsys, "sample", run / "model.ckpt", "--space", "reservoir", "--chains", 8, "--steps", 4)
    assert code == 2
    assert_one_line_error(err, "no reservoir", "--space output")
    code, _, err = run_cli(capsys, "sample", run / "model.ckpt", "--chains", 16, "--steps", 8,
                           "--step-size", 1e-2, "--out", tmp_path / "s.npz")
    assert code == 0, err
    # The metrics themselves are tested in test_metrics.py; here: what the CLI hands over.
    seen = {}

    def fake_evaluate(samples, target, **kwargs):
        seen.update(samples=samples, target=target, **kwargs)
        return {"dim": 2, "energy_distance": 0.25}

    monkeypatch.setattr(rsnjax.metrics, "evaluate", fake_evaluate)
    code, out, err = run_cli(capsys, "evaluate", tmp_path / "s.npz", tmp_path / "reference.npy",
                             "--num-projections", 8, "--max-samples", 10)
    assert code == 0, err
    assert "| energy_distance | 0.25 |" in out
    assert seen["target"] is None and seen["trajectory"] is None
    np.testing.assert_array_equal(seen["reference_samples"], data[::-1])
    with np.load(tmp_path / "s.npz") as f:
        np.testing.assert_array_equal(seen["samples"], f["samples"])
    assert (seen["num_projections"], seen["max_samples"], seen["noise_floor_repeats"]) == (8, 10, 0)


# --- resume --------------------------------------------------------------------------------------


def test_cli_resume_gives_the_uninterrupted_model(tmp_path, capsys):
    args = ["train", "double-peak", *TINY_TRAIN, "--chunk-size", 4]
    code, _, err = run_cli(capsys, *args, "--out", tmp_path / "full")
    assert code == 0, err
    code, _, err = run_cli(capsys, *args, "--out", tmp_path / "cut", "--max-chunks", 3)
    assert code == 0, err
    assert "stopped after 12 of 16 steps" in err and "--resume" in err
    assert not (tmp_path / "cut" / "model.ckpt").exists()
    # Same options are required.
    code, _, err = run_cli(capsys, *args, "--out", tmp_path / "cut", "--resume", "--learning-rate", 0.5)
    assert code == 2
    assert_one_line_error(err, "learning-rate: 0.01 in the run, 0.5 now")
    code, _, err = run_cli(capsys, *args, "--out", tmp_path / "cut", "--resume")
    assert code == 0, err
    full = rsnjax.load(tmp_path / "full" / "model.ckpt")
    resumed = rsnjax.load(tmp_path / "cut" / "model.ckpt")
    for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(resumed)):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    # --overwrite starts afresh (the old training state is discarded).
    code, _, err = run_cli(capsys, *args, "--out", tmp_path / "cut", "--overwrite", "--max-chunks", 0)
    assert code == 0, err
    assert ckpt.read_info(tmp_path / "cut" / "fit_state.ckpt")["metadata"]["level"] == 0


# --- config files ------------------------------------------------------------------------------


def test_config_file_keys_and_precedence(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text(
        'target = "double-peak"\nnum-levels = 1\nsteps_per_level = 4\nbatch-size = 16\n'
        f'out = "{tmp_path / "from_config"}"\n'
        "[train]\nhidden = 6\n"
        "[sample]\nchains = 5\n")
    args, _ = cli.parse_args(["train", "--config", str(config), "--hidden", "7"])
    assert (args.target, args.num_levels, args.steps_per_level, args.batch_size) == ("double-peak", 1, 4, 16)
    assert args.hidden == 7  # the command line wins
    args, _ = cli.parse_args(["train", "--config", str(config)])
    assert args.hidden == 6 and args.out == str(tmp_path / "from_config")

    bad = tmp_path / "bad.toml"
    for text, fragment in [("hiden = 3\n", "unknown key 'hiden'"),
                           ("hidden = 0\n", "key 'hidden': must be at least 1"),
                           ('model = "big"\n', "key 'model' must be one of rsn, so-sc, so-fr"),
                           ('resume = "yes"\n', "key 'resume' must be true or false"),
                           ("[tarin]\nhidden = 3\n", "unknown table [tarin]"),
                           ("hidden = \n", "not valid TOML")]:
        bad.write_text(text)
        code, _, err = run_cli(capsys, "train", "--config", bad)
        assert code == 2, text
        assert_one_line_error(err, fragment, str(bad))
    code, _, err = run_cli(capsys, "train", "--config", tmp_path / "missing.toml")
    assert code == 2
    assert_one_line_error(err, "does not exist")


# --- failures ----------------------------------------------------------------------------------


def test_bad_files_exit_2_with_the_file_named(tmp_path, capsys):
    model_file = tmp_path / "m.ckpt"
    ckpt.save(model_file, rsnjax.ScoreNetwork(1, 4, key=jax.random.key(0)))
    data = model_file.read_bytes()
    model_file.write_bytes(data[:-7])
    code, _, err = run_cli(capsys, "sample", model_file, "--chains", 4, "--steps", 2)
    assert code == 2
    assert_one_line_error(err, str(model_file), "truncated")
    code, _, err = run_cli(capsys, "sample", tmp_path / "nothing.ckpt")
    assert code == 2
    assert_one_line_error(err, "nothing.ckpt", "does not exist")
    np.save(tmp_path / "cube.npy", np.zeros((3, 3, 3)))
    code, _, err = run_cli(capsys, "train", tmp_path / "cube.npy", "--out", tmp_path / "o")
    assert code == 2
    assert_one_line_error(err, "cube.npy", "shape (num, d)")
    np.save(tmp_path / "nan.npy", np.array([[0.0], [np.nan]]))
    code, _, err = run_cli(capsys, "evaluate", tmp_path / "nan.npy", "double-peak")
    assert code == 2
    assert_one_line_error(err, "nan.npy", "NaN")
    np.save(tmp_path / "two.npy", np.zeros((10, 2)))
    code, _, err = run_cli(capsys, "evaluate", tmp_path / "two.npy", "double-peak", "--noise-floor-repeats", 0)
    assert code == 2
    assert_one_line_error(err, "dimension")
    np.save(tmp_path / "small.npy", np.zeros((8, 1)))
    code, _, err = run_cli(capsys, "train", tmp_path / "small.npy", "--batch-size", 16, "--out", tmp_path / "o2")
    assert code == 2
    assert_one_line_error(err, "`data` needs at least 16 rows")


def test_diverged_simulation_exits_1(tmp_path, capsys):
    model_file = tmp_path / "m.ckpt"
    ckpt.save(model_file, rsnjax.ScoreNetwork(1, 4, key=jax.random.key(0)))
    code, _, err = run_cli(capsys, "sample", model_file, "--chains", 8, "--steps", 50, "--step-size", 50)
    assert code == 1
    assert_one_line_error(err, "simulation diverged", "chains", "--on-nonfinite flag")
    assert not (tmp_path / "samples.npz").exists()
    code, _, err = run_cli(capsys, "sample", model_file, "--chains", 8, "--steps", 50, "--step-size", 50,
                           "--on-nonfinite", "flag")
    assert code == 0, err
    with np.load(tmp_path / "samples.npz") as f:
        assert np.all(f["nonfinite_step"] >= 0)
    code, _, err = run_cli(capsys, "evaluate", tmp_path / "samples.npz", "double-peak")
    assert code == 2
    assert_one_line_error(err, "NaN")


def test_diverged_training_exits_1(tmp_path, capsys, monkeypatch):
    def diverging_fit(model, *args, **kwargs):
        raise rsnjax.TrainingDivergedError("the DSM loss became non-finite at level 1", model=model,
                                           history=None, level=1, step=3)

    monkeypatch.setattr(rsnjax, "fit", diverging_fit)
    code, _, err = run_cli(capsys, "train", "double-peak", *TINY_TRAIN, "--out", tmp_path / "r")
    assert code == 1
    assert_one_line_error(err, "training diverged", "non-finite", "no checkpoint was written yet")


def test_bugs_are_not_reported_as_bad_input(tmp_path, capsys, monkeypatch):
    # A ValueError/TypeError raised inside JAX (a bug) keeps its traceback; only rsnjax's own
    # validation (a ``raise`` in rsnjax) is "bad input", exit 2.
    model_file = tmp_path / "m.ckpt"
    ckpt.save(model_file, rsnjax.ScoreNetwork(1, 4, key=jax.random.key(0)))

    def buggy_sample(model, **kwargs):
        return jax.numpy.zeros(3) + jax.numpy.zeros(4)  # shape mismatch raised by JAX

    monkeypatch.setattr(rsnjax, "sample", buggy_sample)
    with pytest.raises((TypeError, ValueError), match="shapes|broadcast"):
        cli.main(["sample", str(model_file), "--chains", "8", "--steps", "5", "--out", str(tmp_path / "s.npz")])
    assert not (tmp_path / "s.npz").exists()
    # the same command with a genuine validation error from rsnjax is still exit 2
    monkeypatch.undo()
    code, _, err = run_cli(capsys, "evaluate", tmp_path / "missing.npz", "double-peak")
    assert code == 2


def test_reproduce_refuses_options_run_does_not_take(tmp_path, capsys, monkeypatch):
    calls = []
    fake = types.ModuleType("rsnjax.experiments")

    def old_run(name, *, preset, out_dir):
        calls.append(name)
        return {"out_dir": str(out_dir)}

    fake.run = old_run
    monkeypatch.setitem(sys.modules, "rsnjax.experiments", fake)
    for flag in (["--seed", 3], ["--overwrite"], ["--data-dir", tmp_path], ["--progress"], ["--no-progress"]):
        code, _, err = run_cli(capsys, "reproduce", "ring", "--out", tmp_path / "r", *flag)
        assert code == 2, flag
        assert_one_line_error(err, "does not accept", str(flag[0]).replace("no-", ""))
    assert calls == []
    code, _, err = run_cli(capsys, "reproduce", "ring", "--out", tmp_path / "r")  # defaults only: fine
    assert code == 0 and calls == ["ring"], err


def test_reproduce_and_demo_lazy_imports(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "rsnjax.experiments", None)  # as if not installed
    code, _, err = run_cli(capsys, "reproduce", "double-peak", "--out", tmp_path / "r")
    assert code == 1
    assert_one_line_error(err, "needs rsnjax.experiments")
    calls = []
    fake = types.ModuleType("rsnjax.experiments")

    def fake_run(name, *, preset, out_dir, seed=0):
        calls.append((name, preset, Path(out_dir), seed))
        return {"out_dir": str(out_dir), "table": "| model | mmd2 |\n|---|---|\n| rsn | 0.5 |\n"}

    fake.run = fake_run
    monkeypatch.setitem(sys.modules, "rsnjax.experiments", fake)
    code, out, err = run_cli(capsys, "reproduce", "ring", "--preset", "paper", "--out", tmp_path / "r",
                             "--seed", 2)
    assert code == 0, err
    assert calls == [("ring", "paper", tmp_path / "r", 2)]  # only the options run() accepts
    assert "| rsn | 0.5 |" in out and str(tmp_path / "r") in out
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "old.json").write_text("{}")
    code, _, err = run_cli(capsys, "reproduce", "ring", "--out", tmp_path / "r")
    assert code == 3
    assert_one_line_error(err, "non-empty directory")

    monkeypatch.setitem(sys.modules, "rsnjax.demo", None)
    code, _, err = run_cli(capsys, "demo")
    assert code == 1
    assert_one_line_error(err, "needs rsnjax.demo")
    demo = types.ModuleType("rsnjax.demo")
    demo.main = lambda argv: 0 if argv == ["--fast", "--help"] else 5
    monkeypatch.setitem(sys.modules, "rsnjax.demo", demo)
    assert cli.main(["demo", "--fast", "--", "--help"]) == 0

    def demo_with_argparse(argv):
        raise SystemExit(2)  # what argparse does on a usage error

    demo.main = demo_with_argparse
    assert cli.main(["demo", "--bad"]) == 2


def test_bench_passes_arguments_and_exit_status(tmp_path, capsys):
    script = tmp_path / "run.py"
    script.write_text("import sys\nprint('ARGS', sys.argv[1:])\nsys.exit(0 if '--quick' in sys.argv else 4)\n")
    proc = subprocess.run([sys.executable, "-m", "rsnjax.cli", "bench", "--script", str(script), "--quick"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ARGS ['--quick']" in proc.stdout
    code, _, err = run_cli(capsys, "bench", "--script", script)
    assert code == 4
    assert_one_line_error(err, "exited with status 4")
    code, _, err = run_cli(capsys, "bench", "--script", tmp_path / "missing.py")
    assert code == 2
    assert_one_line_error(err, "missing.py")
