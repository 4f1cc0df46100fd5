"""Tests of rsnjax.experiments: every experiment's run() on the "tiny" preset writes its files,
the output-directory rules, and one statistical check of the paper's double-peak claim."""

import json

import jax
import numpy as np
import pytest

import rsnjax.experiments as ex
from rsnjax import metrics, targets
from rsnjax.experiments import _common, double_peak

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _leave_jax_config_alone(monkeypatch):
    # run() turns on JAX's persistent compilation cache unless told not to; tests must not change
    # the process-wide JAX configuration other test files run under.
    monkeypatch.setenv("RSNJAX_COMPILATION_CACHE", "0")


def _check_outputs(result, out_dir, figures):
    assert result["out_dir"] == str(out_dir)
    for name in ("config.json", "metrics.json", "table.md"):
        assert (out_dir / name).is_file(), name
    for stem in figures:
        png = out_dir / f"{stem}.png"
        assert png.is_file() and png.read_bytes()[:8] == PNG_MAGIC, stem
    record = json.loads((out_dir / "config.json").read_text())
    assert record["preset"] == "tiny" and record["versions"]["jax"] and record["wall_time"] > 0
    numbers = json.loads((out_dir / "metrics.json").read_text())
    table = (out_dir / "table.md").read_text()
    for family in ("SO-SC", "SO-FR", "RSN"):
        assert family in numbers["models"]
        assert f"| {family} |" in table
    return numbers


def test_double_peak_tiny(tmp_path):
    out = tmp_path / "dp"
    result = ex.run("double-peak", preset="tiny", out_dir=out)
    numbers = _check_outputs(result, out, ["score_per_level", "histograms", "histograms_long", "w1_vs_time", "loss"])
    config = ex.PRESETS["double-peak"]["tiny"]
    for family in ("SO-SC", "SO-FR", "RSN"):
        entry = numbers["models"][family]
        assert len(entry["per_level"]) == config["num_levels"]
        for run in ("paper", "long"):
            m = entry[run]
            assert m["num_samples"] + round(m["fraction_diverged"] * config["num_chains"]) == config["num_chains"]
            # the sample-based score error (at the last σ) agrees with the grid-based one of the
            # last level: two computations of the same quantity (2.3 vs 2.5 for SO-SC, 0.055
            # vs 0.053 for the RSN); the true-score error is 40× off for the RSN
            ratio = m["score_error"] / entry["per_level"][-1]["grid_error_blurred_min"]
            assert 0.7 < ratio < 1.4, (family, run, ratio)
            assert m["score_error"] > 5 * m["score_error_stderr"]
            # the floor repeats use independent exact sets (a reused key gives std 0), and the
            # unbiased MMD² between exact sets is ≈ 0 (a biased one is ≈ +2/n)
            assert m["mmd2_floor_std"] > 0 and abs(m["mmd2_floor"]) < 0.005, m
            steps = config["num_steps"] if run == "paper" else config["long_num_steps"]
            assert len(m["w1_vs_time"]) == steps // config["save_every"]
    assert "noise floor" in result["table"]


def test_laplace_x_tiny(tmp_path):
    out = tmp_path / "lx"
    result = ex.run("laplace-x", preset="tiny", out_dir=out)
    numbers = _check_outputs(result, out, ["hist2d", "kurtosis", "w1_vs_time", "loss"])
    config = ex.PRESETS["laplace-x"]["tiny"]
    rsn = numbers["models"]["RSN"]
    assert set(rsn) >= {"paper", "long"} and len(rsn["paper"]["excess_kurtosis"]) == 2
    assert len(rsn["long"]["kurtosis_pooled"]) == len(rsn["long"]["kurtosis_pooled_stderr"]) == 2
    ref = numbers["sampler_reference"]  # the exact score through the same sampler
    assert len(ref["excess_kurtosis"]["paper"]) == len(ref["kurtosis_pooled"]) == 2
    assert "exact score, same sampler" in result["table"]
    saved = config["accel_num_steps"] // config["save_every"]
    for label in ("exact score, plain", "exact score, accelerated", "RSN, plain", "RSN, accelerated"):
        assert np.asarray(numbers["acceleration"][label]["w1_vs_time"]).shape == (saved, 2)


def test_laplace_x_pooled_kurtosis_and_its_error():
    from rsnjax.experiments.laplace_x import pooled_kurtosis

    rng = np.random.default_rng(0)
    laplace = rng.laplace(scale=1 / np.sqrt(2), size=(10, 4000, 2))     # excess kurtosis exactly 3
    gauss = rng.normal(size=(10, 4000, 2))
    for draws, truth in ((laplace, 3.0), (gauss, 0.0)):
        value, se = pooled_kurtosis(draws)
        assert value.shape == se.shape == (2,) and np.all(se > 0)
        assert np.all(np.abs(value - truth) < 5 * se), (value, se)
    assert np.all(pooled_kurtosis(laplace)[1] < 0.5)  # 40 000 draws a marginal: far below one sample's sd
    # escaped (beyond the box) and non-finite chains are left out
    bad = laplace.copy()
    bad[:, 0] = np.nan
    bad[:, 1] = 1e3
    np.testing.assert_allclose(pooled_kurtosis(bad)[0], pooled_kurtosis(laplace[:, 2:])[0])


def test_mnist_paper_preset_requires_data():
    with pytest.raises(ValueError, match="data_dir"):
        ex.mnist.load_data(ex.PRESETS["mnist"]["paper"], None, key=jax.random.key(0))


def test_mnist_example_requires_data_argument(capsys):
    # examples/mnist.py names no default directory: without --data it stops with a clear message
    from rsnjax.experiments import _examples

    with pytest.raises(SystemExit) as exc:
        _examples.main("mnist", "MNIST", argv=[])
    assert exc.value.code == 2
    assert "--data is required" in capsys.readouterr().err


def test_run_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="`name`"):
        ex.run("double_peak", out_dir=tmp_path / "a")
    with pytest.raises(ValueError, match="`preset`"):
        ex.run("double-peak", preset="huge", out_dir=tmp_path / "a")
    with pytest.raises(ValueError, match="`overrides`.*hiden"):
        ex.run("double-peak", preset="tiny", out_dir=tmp_path / "a", overrides={"hiden": 3})
    with pytest.raises(FileNotFoundError, match="`data_dir`"):
        ex.run("mnist", preset="tiny", out_dir=tmp_path / "a", data_dir=tmp_path / "missing")
    assert not (tmp_path / "a").exists()  # nothing was written for a rejected call


def test_out_dir_is_never_overwritten_silently(tmp_path, monkeypatch):
    explicit = tmp_path / "explicit"
    explicit.mkdir()
    (explicit / "table.md").write_text("old")
    with pytest.raises(FileExistsError, match="overwrite"):
        _common.prepare_out_dir("double-peak", "quick", explicit, overwrite=False)
    assert _common.prepare_out_dir("double-peak", "quick", explicit, overwrite=True) == explicit
    monkeypatch.chdir(tmp_path)
    first = _common.prepare_out_dir("double-peak", "quick", None, overwrite=False)
    assert first == tmp_path.joinpath("results", "double-peak-quick").relative_to(tmp_path)
    (first / "table.md").write_text("x")
    second = _common.prepare_out_dir("double-peak", "quick", None, overwrite=False)
    assert second.name == "double-peak-quick-2" and second.is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        _common.prepare_out_dir("double-peak", "quick", tmp_path / "file", overwrite=True)


@pytest.mark.slow
def test_double_peak_rsn_is_bimodal_and_so_sc_is_not():
    """docs/SCIENCE.md §5: a ReLU RSN samples both modes of the double peak; SO-SC (ReLU) cannot.

    2000 chains: a mode weight has sd √(¼/2000) ≈ 0.011, so [0.4, 0.6] is a ±9 sd band around ½;
    the dip ratio (density at 0 over density at ±1, exact value 0.28) has sd ≲ 0.05 at this size,
    so < 0.6 and > 0.9 separate a bimodal from a unimodal sample by many sd.
    """
    config = {**double_peak.PRESETS["paper"], "hidden": 200, "steps_per_level": 400, "learning_rate": 3e-4}
    target = targets.double_peak()
    out = {}
    for family in ("RSN", "SO-SC"):
        model, _, _ = double_peak.train(family, config, key=jax.random.key(3))
        res = double_peak.draw(family, model, key=jax.random.key(4), num_chains=2000, num_steps=2000,
                               step_size=2e-3)
        x = np.asarray(res.samples)
        assert np.all(np.isfinite(x))
        out[family] = (np.asarray(metrics.mode_weights(x, target)), double_peak.dip_ratio(x))
    weights, dip = out["RSN"]
    assert np.all((weights > 0.4) & (weights < 0.6)), weights
    assert dip < 0.6, dip
    _, so_dip = out["SO-SC"]
    assert so_dip > 0.9, so_dip  # unimodal: no dip between the modes


@pytest.mark.slow
def test_posterior_tiny(tmp_path):
    out = tmp_path / "post"
    result = ex.run("posterior", preset="tiny", out_dir=out)
    numbers = _check_outputs(result, out, ["posterior_samples", "switch"])
    config = ex.PRESETS["posterior"]["tiny"]
    assert len(numbers["observations"]) == len(config["observations"])
    for family in ("SO-SC", "SO-FR", "RSN"):
        per = numbers["models"][family]["per_observation"]
        assert len(per) == len(config["observations"]) and all(o["mmd2"] is not None for o in per)
    assert [c["reliability_2"] for c in numbers["cue_combination"]] == list(config["cue_reliabilities"])
    assert set(numbers["switch"]["families"]) == {"exact", "SO-SC", "SO-FR", "RSN"}
    assert "Cue combination" in result["table"]


def _write_tiny_mnist(directory, num=300, seed=0):
    """A small IDX image set the test writes itself: each class a bright bar at its own place
    (so a classifier can learn it) plus noise, 28×28 uint8, with labels."""
    from rsnjax import datasets

    rng = np.random.default_rng(seed)
    labels = np.arange(num) % 10
    images = rng.integers(0, 40, size=(num, 28, 28))
    for i, c in enumerate(labels):
        images[i, 2 + 2 * c: 5 + 2 * c, 4:24] = 255
    datasets.write_idx(directory / "t10k-images-idx3-ubyte.gz", images.astype(np.uint8))
    datasets.write_idx(directory / "t10k-labels-idx1-ubyte.gz", labels.astype(np.uint8))


def test_mnist_tiny_whole_path_from_idx_files(tmp_path):
    # the whole MNIST path on IDX files: load, PCA, train, sample, inverse PCA, judge, samples.npz
    data_dir = tmp_path / "idx"
    data_dir.mkdir()
    _write_tiny_mnist(data_dir)
    out = tmp_path / "mn"
    result = ex.run("mnist", preset="tiny", out_dir=out, data_dir=data_dir)
    numbers = _check_outputs(result, out, ["samples", "samples_rsn", "loss"])
    config = ex.PRESETS["mnist"]["tiny"]
    assert numbers["num_train"] == 270 and numbers["num_heldout"] == 30
    judge = numbers["judge"]
    assert judge["heldout_accuracy"] >= 0.9  # the bars are easy: a judge that cannot learn them is broken
    real = judge["real"]
    assert abs(sum(real["class_histogram"]) - 1.0) < 1e-9
    # real held-out bars are judged confidently (1.0 measured) and lie closer to the training set
    # than any model's samples (Fréchet 0.08 against 0.11–0.20; nearest-image 0.20 against ≥ 0.68)
    assert real["confident_fraction"] > 0.9
    for family in ("SO-SC", "SO-FR", "RSN"):
        model_judge = numbers["models"][family]["judge"]
        assert model_judge["frechet"] > real["frechet"] > 0, family
        assert model_judge["nearest_train_distance_median"] > real["nearest_train_distance_median"], family
    with np.load(out / "samples.npz") as z:
        assert sorted(z.files) == ["RSN", "SO-FR", "SO-SC"]
        for family in z.files:
            images = z[family]
            assert images.shape == (config["num_chains"], 28, 28)
            m = numbers["models"][family]
            if m["fraction_diverged"] == 0:
                # pixel scale: the inverse PCA of L2-normalised images, so rows have norm near 1
                norms = np.linalg.norm(images.reshape(len(images), -1), axis=1)
                assert 0.2 < np.median(norms) < 5.0
                assert 0.0 <= m["judge"]["confident_fraction"] <= 1.0
                assert abs(sum(m["judge"]["class_histogram"]) - 1.0) < 1e-9
    assert "Judged by an independent classifier" in (out / "table.md").read_text()


def test_neural_variability_tiny(tmp_path):
    out = tmp_path / "nv"
    result = ex.run("neural-variability", preset="tiny", out_dir=out)
    numbers = _check_outputs(result, out, ["traces", "fano", "noise_correlations", "autocorrelation"])
    config = ex.PRESETS["neural-variability"]["tiny"]
    plain, private = numbers["models"]["RSN"], numbers["models"]["RSN + private noise"]
    assert "| RSN + private noise |" in result["table"]
    # the private noise leaves the readout bit-identical and spreads the activity over more dimensions
    assert private["readout_bit_identical"] is True and private["readout_w1"] == plain["readout_w1"]
    assert private["participation_ratio"] > plain["participation_ratio"]
    assert plain["num_neurons"] == config["record_neurons"] and numbers["models"]["SO-FR"]["num_neurons"] == 2
    for m in numbers["models"].values():
        assert m["fano_median"] >= 1.0  # Poisson spikes: 1 + Var(Λ)/E(Λ)
        assert len(m["autocorrelation_median"]) == config["max_lag"] + 1


@pytest.mark.slow
def test_quenching_tiny(tmp_path):
    out = tmp_path / "q"
    result = ex.run("quenching", preset="tiny", out_dir=out)
    numbers = _check_outputs(result, out, ["quenching"])
    plain, private = numbers["models"]["RSN"], numbers["models"]["RSN + private noise"]
    assert "| RSN + private noise |" in result["table"] and "→" in result["table"]
    assert numbers["exact"]["post_variance"] == pytest.approx(0.2)
    # the private noise leaves the readout bit-identical and adds variance to the neurons
    assert private["readout_bit_identical"] is True
    assert private["readout_variance_pre"] == plain["readout_variance_pre"]
    assert private["variance_pre"] > plain["variance_pre"]
    for m in numbers["models"].values():
        assert m["fano_pre"] >= 1.0 and m["fano_late"] >= 1.0  # Poisson spikes: 1 + Var(Λ)/E(Λ)
        tc = m["timecourse"]
        assert min(tc["start_ms"]) < 0 < max(tc["start_ms"])  # windows before and after onset
