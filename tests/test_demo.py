import json

from rsnjax import demo


def test_demo_runs_end_to_end_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["--out", str(out), "--target", "double-peak", "--hidden", "32", "--steps-per-level", "20",
            "--chains", "200", "--burn-in", "20", "--steps", "40", "--no-progress"]
    assert demo.main(args) == 0
    for name in ["model.ckpt", "samples.npz", "metrics.json", "metrics.md", "demo.png"]:
        assert (out / name).stat().st_size > 0, name
    values = json.loads((out / "metrics.json").read_text())
    assert values["num_chains"] == 200 and values["hidden"] == 32
    assert values["score_error"] > 0 and "sliced_w2" in values and "mode_weights" in values
    assert "| metric |" in capsys.readouterr().out
    # a second run must not silently replace the first one's files
    assert demo.main(args) == 3
    assert "--overwrite" in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())["target"] == "double-peak"
