"""The tutorials in examples/tutorials/ run at their tiny size and print sane numbers, and the
documentation site turns each into a page (mkdocs_hooks.percent_to_markdown)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "examples" / "tutorials"
sys.path.insert(0, str(ROOT))


def _hooks():
    pytest.importorskip("mkdocs", reason="the docs extra (mkdocs) is not installed")
    import mkdocs_hooks

    return mkdocs_hooks


def _run(name: str, out: Path) -> dict:
    env = {**os.environ, "RSNJAX_TUTORIAL_SIZE": "tiny", "RSNJAX_TUTORIAL_OUT": str(out),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    proc = subprocess.run([sys.executable, str(TUTORIALS / f"{name}.py")], cwd=out, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


def _figure(path: Path) -> None:
    import matplotlib.image

    assert path.is_file(), path
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 200 and image.shape[1] > 300
    assert image[..., :3].std() > 0.05  # not a blank canvas


@pytest.mark.slow
def test_quickstart_tiny(tmp_path):
    s = _run("quickstart", tmp_path)
    _figure(tmp_path / "quickstart_histogram.png")
    # the double peak: mean 0, sd √(1 + 0.25) = 1.118, half the mass on each side
    assert s["num_escaped"] == 0
    assert abs(s["sample_mean"]) < 0.15
    # sd within 0.08 of 1.118: about 3 standard errors of an sd from 1000 samples (0.025) plus
    # the tiny model's error (measured 1.098; a circuit with twice the noise variance gives 1.29)
    assert abs(s["sample_std"] - 1.118) < 0.08
    assert 0.4 < s["fraction_positive"] < 0.6
    assert 0 < s["step_size"] < 0.1
    assert s["rhat"] < 1.1
    # a tiny model is measurably off the target, but within a few times the floor's scale
    # (measured W1 0.114, floor 0.052 ± 0.039; twice the noise variance gives 0.195)
    assert s["w1"][0] < 0.16 and s["w1_floor"][0] < 0.1
    assert s["mmd2"] < 0.02


@pytest.mark.slow
def test_your_data_tiny(tmp_path):
    s = _run("your_data", tmp_path)
    _figure(tmp_path / "your_data_scatter.png")
    assert (tmp_path / "my_points.npy").is_file()
    assert s["num_escaped"] == 0 and s["num_chains"] == 1000
    assert max(s["rhat_per_dim"]) == pytest.approx(s["rhat"]) and s["rhat"] < 1.05  # measured 1.021
    # standardised data: samples near mean 0, sd 1
    assert max(abs(m) for m in s["sample_mean"]) < 0.15
    assert all(0.85 < v < 1.15 for v in s["sample_std"])
    # the floor (data vs data) is near 0 within its spread; the samples are above it but close
    # (measured 7.5 floor sd above it)
    assert abs(s["mmd2_floor"]) < 3 * s["mmd2_floor_std"] + 1e-3
    assert s["mmd2"] < s["mmd2_floor"] + 10 * s["mmd2_floor_std"]


@pytest.mark.slow
def test_reservoir_activity_tiny(tmp_path):
    s = _run("reservoir_activity", tmp_path)
    _figure(tmp_path / "activity_raster.png")
    assert s["activity_shape"] == [200, 100, 100]
    # all 100 neurons recorded: W_out r reproduces the saved readouts to float precision
    assert s["readout_error"] < 1e-4
    # the reservoir's fluctuations are about d = 2 dimensional; private noise adds dimensions
    # while the samples stay bit-identical
    assert 1.5 < s["participation_ratio"] < 4
    assert s["participation_ratio_private_noise"] > s["participation_ratio"] + 1
    assert s["samples_identical_with_private_noise"] is True
    assert s["median_variance"] > 0 and s["num_spikes_in_raster"] > 0
    assert s["median_fano_spiking"] > 1  # doubly stochastic: above Poisson
    assert 0.1 < s["mean_abs_noise_correlation"] < 0.9
    assert 0.1 < s["median_autocorrelation_time"] < 10


def test_percent_to_markdown():
    script = ('# %% [markdown]\n# # Title\n#\n# Some *text*.\n\n# %%\nimport x\n\nx.run()\n\n'
              '# %%\n\n# %% [markdown]\n# ## Part\n')
    md = _hooks().percent_to_markdown(script, source="examples/tutorials/t.py")
    blocks = md.split("\n\n")
    assert blocks[0] == "# Title"
    assert blocks[1].startswith('!!! note "Run this tutorial"')
    assert "[`examples/tutorials/t.py`](../../examples/tutorials/t.py)" in blocks[1]
    assert blocks[2] == "Some *text*."
    assert "```python\nimport x\n\nx.run()\n```" in md
    assert md.count("```python") == 1  # the empty code cell is dropped
    assert md.endswith("## Part\n")


def test_every_tutorial_is_in_the_site_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    scripts = sorted(p.stem for p in TUTORIALS.glob("*.py"))
    assert scripts == ["quickstart", "reservoir_activity", "your_data"]
    for name in scripts:
        assert f"tutorials/{name}.md" in nav, name
