"""MNIST (or scikit-learn's 8×8 digits): SO-SC, SO-FR and an RSN on PCA coordinates of
L2-normalised images (docs/SCIENCE.md §4–§5).

Pipeline: load the images (IDX files from ``data_dir``, else the bundled 8×8 digits for the
``quick``/``tiny`` presets), scale each to unit L2 norm, hold out a random ``holdout_fraction`` of
them, fit a PCA on the rest and train the three score models on the PCA coordinates. Sampling
follows the paper: ``num_chains`` chains started near zero (r₀ ~ ``init_scale``·N(0, I); zero in
PCA coordinates is the mean image), Euler–Maruyama, then inverse PCA.

What is recorded: a 10×10 grid of generated images per model next to held-out data (figure
``samples``), the DSM loss over training for all three (``loss``), and the numbers: MMD² and
sliced W₂ between generated and held-out PCA coordinates, with the value for real training images
(the noise floor at this sample size), and the DSM loss at σ_min on held-out images.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import datasets, default_sigmas, fit, geometric_sigmas, metrics, plotting, sample
from ..dsm import dsm_loss_with_noise
from ..networks import SamplerOnly, ScoreNetwork
from ..reservoir import ReservoirSampler
from ._common import FAMILIES, Stopwatch, finish_run, fit_options, fmt, make_optimizer, markdown_table, pm

NAME = "mnist"

_PAPER = dict(
    require_mnist=True,
    split="auto",
    max_images=None,
    holdout_fraction=0.1,
    pca_dim=300,
    digits_pca_dim=30,
    whiten=False,
    hidden=20_000,
    activation="relu",
    sigma_max=1.0,
    sigma_min=0.02,
    num_levels=10,
    epochs_per_level=100,
    steps_per_level=None,
    batch_size=64,
    learning_rate=1e-3,
    amsgrad=False,
    lr_schedule="constant",
    weight_decay=1e-3,
    num_chains=100,
    init_scale=0.01,
    num_steps=30_000,
    step_size=1e-6,
    noise_floor_repeats=5,
    figure_formats=("png", "pdf"),
    figure_dpi=110,
)

#: The settings that make digits on 2 CPU cores (``quick``): PCA to 50 dims *whitened* (every
#: coordinate unit variance, so the leak −x of s(x) = −x + Aφ(Bx + b) matches the data's scale
#: in every direction; 50 because a PCA-30 reconstruction of real images is already 6.6× the
#: Fréchet floor), N = 5000, `fit`'s remedies (parameter average, antithetic noise, confinement;
#: constant Adam 1e-3), σ_max derived from the data, σ_min = 0.2 in whitened units (the
#: data-derived σ_min, the 10th-neighbour distance, is ≈ 5 here and blurs every digit away),
#: 3000 steps per level; 1000 chains started at a draw of the Gaussian fitted to the data
#: (x₀ ~ N(0, I) whitened, r₀ = A⁺x₀), t = 5 at dt = 1e-3 (`stable_step_size` ≈ 1.5e-3).
_QUICK = {**_PAPER, "require_mnist": False, "pca_dim": 50, "digits_pca_dim": 30, "whiten": True, "hidden": 5000,
          "sigma_max": None, "sigma_min": 0.2, "num_levels": None, "remedies": True, "epochs_per_level": None,
          "steps_per_level": 3000, "batch_size": 128, "learning_rate": 1e-3, "weight_decay": 0.0,
          "num_chains": 1000, "init": "readout", "init_scale": 1.0, "num_steps": 5000, "step_size": 1e-3,
          "noise_floor_repeats": 3, "classifier_C": 20.0, "confidence": 0.9, "frechet_pca_dim": 50}

#: The named settings. ``paper`` is docs/SCIENCE.md §4–§5 (needs ``data_dir``; 1000 epochs in all, a
#: GPU job; the paper's plain DSM without remedies). ``quick``: see `_QUICK` (MNIST when
#: ``data_dir`` is given, else scikit-learn's 8×8 digits). ``tiny`` is for tests (seconds).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {**_PAPER, "init": "units", "classifier_C": 20.0, "confidence": 0.9, "frechet_pca_dim": 50},
    "quick": _QUICK,
    "tiny": {**_QUICK, "pca_dim": 10, "digits_pca_dim": 10, "hidden": 32, "sigma_min": 0.5, "num_levels": 2,
             "steps_per_level": 20, "batch_size": 32, "num_chains": 100, "num_steps": 50, "step_size": 1e-3,
             "noise_floor_repeats": 2,
             "frechet_pca_dim": 10, "figure_formats": ("png",), "figure_dpi": 50},
}


def load_data(config: dict, data_dir, *, key) -> dict:
    """Load, L2-normalise, split and PCA-project the images.

    **Returns:** a dict with ``train`` and ``heldout`` PCA coordinates, the ``pca``,
    ``image_shape``, ``source`` and the held-out images in pixel space.
    """
    if data_dir is None:
        if config["require_mnist"]:
            raise ValueError("this preset trains on MNIST: pass `data_dir` (a directory with the IDX files, "
                             "e.g. train-images-idx3-ubyte.gz)")
        data = datasets.load_digits()
        pca_dim = config["digits_pca_dim"]
    else:
        data = datasets.load_mnist(data_dir, split=config["split"])
        pca_dim = config["pca_dim"]
    images = datasets.l2_normalize(data.images)
    perm = np.asarray(jax.random.permutation(key, images.shape[0]))
    if config["max_images"] is not None:
        perm = perm[: config["max_images"]]
    num_holdout = max(2, int(round(config["holdout_fraction"] * len(perm))))
    held, train_idx = perm[:num_holdout], perm[num_holdout:]
    # whiten: unit variance along every kept axis, so the score model's leak −x matches the data scale
    pca = datasets.fit_pca(images[train_idx], min(pca_dim, len(train_idx), images.shape[1]), whiten=config["whiten"])
    labels = None if data.labels is None else np.asarray(data.labels)
    return {"train": pca.transform(images[train_idx]), "heldout": pca.transform(images[held]),
            "heldout_images": images[held], "train_images": images[train_idx],
            "train_labels": None if labels is None else labels[train_idx],
            "heldout_labels": None if labels is None else labels[held], "pca": pca, "image_shape": data.image_shape,
            "source": data.source, "num_images": int(len(perm))}


def make_model(family: str, config: dict, dim: int, key):
    if family == "SO-SC":
        return SamplerOnly(dim, dynamics="synaptic_current", activation=config["activation"], key=key)
    if family == "SO-FR":
        return SamplerOnly(dim, dynamics="firing_rate", activation=config["activation"], key=key)
    if family == "RSN":
        return ScoreNetwork(dim, config["hidden"], activation=config["activation"], key=key)
    raise ValueError(f"`family` must be one of {FAMILIES}, got {family!r}")


def sigmas_of(config: dict, data=None) -> np.ndarray:
    """The preset's noise levels; a ``None`` in ``sigma_max``/``sigma_min``/``num_levels`` is taken
    from `default_sigmas` of the training coordinates `data`."""
    if None not in (config["sigma_max"], config["sigma_min"], config["num_levels"]):
        return geometric_sigmas(config["sigma_max"], config["sigma_min"], config["num_levels"])
    if data is None:
        raise ValueError("this preset derives its noise levels from the data: pass `data`")
    derived = default_sigmas(np.asarray(data))
    smax = config["sigma_max"] if config["sigma_max"] is not None else float(derived[0])
    smin = config["sigma_min"] if config["sigma_min"] is not None else float(derived[-1])
    levels = config["num_levels"] or max(10, int(math.ceil(math.log(smax / smin) / math.log(2.0))) + 1)
    return geometric_sigmas(smax, smin, levels)


def train(family: str, config: dict, data, *, key, progress: bool | None = None):
    """Train one family on the PCA coordinates ``data`` over the whole schedule (one `fit` call,
    optimiser re-created at every level). **Returns:** ``(model, history)``."""
    k_init, k_fit = jax.random.split(key)
    model = make_model(family, config, data.shape[1], k_init)
    steps = config["steps_per_level"]
    if steps is None:
        steps = config["epochs_per_level"] * (data.shape[0] // config["batch_size"])
    return fit(model, jnp.asarray(data), sigmas=sigmas_of(config, data), key=k_fit, steps_per_level=steps,
               batch_size=config["batch_size"],
               optimizer=make_optimizer(config["learning_rate"], amsgrad=config["amsgrad"],
                                        schedule=config["lr_schedule"], steps_per_level=steps),
               weight_decay=config["weight_decay"], reset_optimizer=True, progress=progress,
               **fit_options(config))


def draw(family: str, model, config: dict, *, key):
    """``num_chains`` chains. ``init="readout"``: the readout starts at x₀ ~ init_scale·N(0, I) in
    PCA coordinates (with whitening: a draw from the Gaussian fitted to the data) and a reservoir
    at r₀ = A⁺x₀; ``"units"`` (the paper): every unit ~ init_scale·N(0, 1)."""
    circuit = ReservoirSampler.from_score_network(model) if family == "RSN" else model
    k_init, k_run = jax.random.split(key)
    if config.get("init", "units") == "readout":
        r0 = config["init_scale"] * jax.random.normal(k_init, (config["num_chains"], model.dim))
        if family == "RSN":
            r0 = r0 @ (circuit.noise_map / jnp.sqrt(2.0)).T
    else:
        state_dim = circuit.hidden if family == "RSN" else circuit.dim
        r0 = config["init_scale"] * jax.random.normal(k_init, (config["num_chains"], state_dim))
    return sample(circuit, key=k_run, num_chains=config["num_chains"], num_steps=config["num_steps"],
                  step_size=config["step_size"], initial_state=r0, on_nonfinite="flag", warn=False)


def nearest_distance(a, b, *, block: int = 500) -> np.ndarray:
    """For every row of `a`, the Euclidean distance to the nearest row of `b`."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    bb = np.sum(b * b, axis=1)
    out = []
    for i in range(0, len(a), block):
        x = a[i:i + block]
        d2 = np.sum(x * x, axis=1)[:, None] + bb[None, :] - 2.0 * x @ b.T
        out.append(np.sqrt(np.maximum(d2.min(axis=1), 0.0)))
    return np.concatenate(out)


class Judge:
    """An independent judge of generated images, fitted on the real training images only.

    - a classifier: scikit-learn's logistic regression on the L2-normalised pixels (``C`` as given);
    - Fréchet features: a PCA (``frechet_pca_dim`` axes) of the training images.

    `report(images)` gives, for images in the data's pixel scale: the fraction classified with
    probability ≥ ``confidence``, the class histogram, the Fréchet distance to the held-out images
    (features above) and the median distance to the nearest training image.
    """

    def __init__(self, data: dict, config: dict):
        from sklearn.linear_model import LogisticRegression

        if data["train_labels"] is None:
            raise ValueError("judging samples needs labels: the label IDX files next to the images")
        self.train_images = np.asarray(data["train_images"], np.float64)
        self.heldout_images = np.asarray(data["heldout_images"], np.float64)
        self.confidence = float(config["confidence"])
        self.classifier = LogisticRegression(C=float(config["classifier_C"]), max_iter=300)
        self.classifier.fit(self.train_images, data["train_labels"])
        self.accuracy = float(self.classifier.score(self.heldout_images, data["heldout_labels"]))
        dim = int(min(config["frechet_pca_dim"], self.train_images.shape[1], self.train_images.shape[0] - 1))
        self.features = datasets.fit_pca(self.train_images, dim, method="sklearn")
        self.num_classes = int(np.max(data["train_labels"])) + 1

    def frechet(self, images) -> float:
        return metrics.frechet_distance(np.asarray(self.features.transform(images)),
                                        np.asarray(self.features.transform(self.heldout_images)))

    def report(self, images) -> dict:
        images = np.asarray(images, np.float64)
        prob = self.classifier.predict_proba(images)
        classes = np.bincount(prob.argmax(axis=1), minlength=self.num_classes) / len(images)
        return {"confident_fraction": float(np.mean(prob.max(axis=1) >= self.confidence)),
                "class_histogram": classes, "frechet": self.frechet(images),
                "nearest_train_distance_median": float(np.median(nearest_distance(images, self.train_images)))}


def heldout_dsm_loss(model, heldout, sigma: float, *, key, repeats: int = 4) -> float:
    """The DSM loss at noise level σ on held-out data (mean over `repeats` noise draws)."""
    x = jnp.asarray(heldout)
    vals = [float(dsm_loss_with_noise(model, x, jax.random.normal(k, x.shape, x.dtype), sigma))
            for k in jax.random.split(key, repeats)]
    return float(np.mean(vals))


def run(config: dict, out_dir: Path, *, key, progress: bool | None = None, data_dir=None, **_: Any) -> dict:
    """Load the data, train the three models, sample, and write table, JSON and figures.

    **Returns:** the results dict (also written to ``metrics.json``).
    """
    watch = Stopwatch()
    formats = tuple(config["figure_formats"])
    k_data, k_train, k_sample, k_eval = jax.random.split(key, 4)
    with watch("load data + PCA"):
        data = load_data(config, data_dir, key=k_data)
    train_x, held = data["train"], data["heldout"]
    sigmas = sigmas_of(config, train_x)
    n = config["num_chains"]
    results: dict[str, Any] = {
        "models": {}, "sigmas": sigmas, "data_source": data["source"], "num_images": data["num_images"],
        "num_train": int(train_x.shape[0]), "num_heldout": int(held.shape[0]), "pca_dim": int(train_x.shape[1]),
        "pca_explained_variance": float(np.sum(data["pca"].explained_variance_ratio)),
    }
    # The noise floor: real training images against the held-out set, at the sampler's size.
    floor = {"mmd2": [], "sliced_w2": []}
    for r in range(max(config["noise_floor_repeats"], 2)):
        kr = jax.random.fold_in(k_eval, 1000 + r)
        idx = np.asarray(jax.random.choice(kr, train_x.shape[0], (min(n, train_x.shape[0]),), replace=False))
        floor["mmd2"].append(float(metrics.mmd(train_x[idx], held)))
        floor["sliced_w2"].append(float(metrics.sliced_wasserstein(train_x[idx], held, key=jax.random.fold_in(kr, 1))))
    for name, vals in floor.items():
        results[f"{name}_floor"] = float(np.mean(vals))
        results[f"{name}_floor_std"] = float(np.std(vals, ddof=1))
    judge = None
    if data["train_labels"] is not None:
        with watch("fit the judge (classifier, Fréchet features)"):
            judge = Judge(data, config)
            real = judge.report(data["heldout_images"])
            sub = np.asarray(jax.random.choice(jax.random.fold_in(k_eval, 7), train_x.shape[0],
                                               (min(n, train_x.shape[0]),), replace=False))
            real["frechet"] = judge.frechet(data["train_images"][sub])  # real vs real: the floor
            pca = data["pca"]
            through = judge.report(np.asarray(pca.inverse_transform(pca.transform(data["heldout_images"]))))
            results["judge"] = {"classifier": f"logistic regression, C = {config['classifier_C']:g}",
                                "heldout_accuracy": judge.accuracy, "confidence": judge.confidence,
                                "frechet_features": f"PCA-{judge.features.components.shape[0]} of the training images",
                                "real": real, "real_through_pca": through}
    histories, images = {}, {"held-out data": data["heldout_images"]}
    generated = {}
    for i, family in enumerate(FAMILIES):
        with watch(f"train {family}"):
            t0 = time.perf_counter()
            model, history = train(family, config, train_x, key=jax.random.fold_in(k_train, i), progress=progress)
            train_time = time.perf_counter() - t0
        histories[family] = (history.loss, history.level)
        with watch(f"sample {family}"):
            res = draw(family, model, config, key=jax.random.fold_in(k_sample, i))
        x = np.asarray(res.samples)
        keep = np.all(np.isfinite(x), axis=1)
        entry: dict[str, Any] = {"final_loss_per_level": history.level_loss, "train_steps": int(len(history.loss)),
                                 "train_wall_time": train_time, "train_steps_per_second": len(history.loss) / train_time,
                                 "fraction_diverged": float(1 - keep.mean()), "escaped": res.num_escaped,
                                 "sampling_wall_time": res.wall_time, "sampling_compile_time": res.compile_time}
        with watch(f"evaluate {family}"):
            if keep.sum() >= 2:
                entry["mmd2"] = float(metrics.mmd(x[keep], held))
                entry["sliced_w2"] = float(metrics.sliced_wasserstein(x[keep], held, key=jax.random.fold_in(k_eval, i)))
            entry["heldout_dsm_loss_sigma_min"] = heldout_dsm_loss(model, held, float(sigmas[-1]),
                                                                   key=jax.random.fold_in(k_eval, 50 + i))
            entry["train_dsm_loss_sigma_min"] = heldout_dsm_loss(model, train_x[: held.shape[0]], float(sigmas[-1]),
                                                                 key=jax.random.fold_in(k_eval, 50 + i))
            entry["sample_norm_mean"] = float(np.mean(np.linalg.norm(x[keep], axis=1))) if keep.any() else None
        entry["data_norm_mean"] = float(np.mean(np.linalg.norm(held, axis=1)))
        images[family] = data["pca"].inverse_transform(np.where(keep[:, None], x, 0.0))
        generated[family] = np.where(keep[:, None], np.asarray(images[family]), np.nan).reshape(
            (-1,) + tuple(data["image_shape"]))
        if judge is not None and keep.sum() >= 2:
            entry["judge"] = judge.report(np.asarray(images[family])[keep])
        results["models"][family] = entry

    np.savez(out_dir / "samples.npz", **generated)

    figures = {}
    rows = cols = int(min(10, math.isqrt(min(n, data["heldout_images"].shape[0]))))
    fig = plotting.plot_image_grids(images, data["image_shape"], rows=rows, cols=cols)
    figures["samples"] = plotting.save_figure(fig, out_dir / "samples", formats=formats, dpi=config["figure_dpi"])
    fig = plotting.plot_image_grid(images["RSN"], data["image_shape"], rows=rows, cols=cols,
                                   title=f"RSN (N = {config['hidden']}) samples, inverse PCA")
    figures["samples_rsn"] = plotting.save_figure(fig, out_dir / "samples_rsn", formats=formats, dpi=config["figure_dpi"])
    fig = plotting.plot_loss_curves(histories, sigmas=sigmas)
    figures["loss"] = plotting.save_figure(fig, out_dir / "loss", formats=formats, dpi=config["figure_dpi"])
    return finish_run(out_dir, results, figures, watch, lambda r: comparison_table(r, config))


def comparison_table(results: dict, config: dict) -> str:
    """The Markdown table of an MNIST results dict."""
    lines = [f"Data: {results['data_source']} ({results['num_train']} training / {results['num_heldout']} held-out "
             f"images), PCA to {results['pca_dim']} dims ({results['pca_explained_variance']:.1%} of the variance). "
             f"{config['num_chains']} chains, t = {config['num_steps'] * config['step_size']:g} "
             f"(dt = {config['step_size']:g} × {config['num_steps']} steps).\n"]
    header = ["model", "MMD² to held-out", "sliced W₂ to held-out", "held-out DSM loss at σ_min",
              "train DSM loss at σ_min", "mean ‖x‖ (data: {:.3g})".format(results["models"]["RSN"]["data_norm_mean"]),
              "train steps/s"]
    rows = []
    for family in FAMILIES:
        m = results["models"][family]
        rows.append([family, fmt(m.get("mmd2")), fmt(m.get("sliced_w2")), fmt(m["heldout_dsm_loss_sigma_min"]),
                     fmt(m["train_dsm_loss_sigma_min"]), fmt(m["sample_norm_mean"]), fmt(m["train_steps_per_second"])])
    rows.append(["real training images (noise floor)", pm(results["mmd2_floor"], results["mmd2_floor_std"]),
                 pm(results["sliced_w2_floor"], results["sliced_w2_floor_std"]), "—", "—", "—", "—"])
    lines.append(markdown_table(header, rows))
    if "judge" in results:
        j = results["judge"]
        real = j["real"]
        lines.append(f"\n**Judged by an independent classifier** ({j['classifier']} on the training images' "
                     f"L2-normalised pixels; held-out accuracy {j['heldout_accuracy']:.3f}). Confident: "
                     f"p ≥ {j['confidence']:g}. Fréchet distance on {j['frechet_features']}, against the held-out "
                     f"images; the real row's value is training vs held-out images (the floor). Nearest: the "
                     f"median distance to the nearest training image.\n")
        header = ["images", "confident fraction", "(÷ real)", "classes (0–9)", "Fréchet", "(÷ floor)",
                  "nearest training image", "(÷ real)"]
        rows = [["real held-out", fmt(real["confident_fraction"], 3), "1", fmt(real["class_histogram"], 2),
                 fmt(real["frechet"], 3), "1", fmt(real["nearest_train_distance_median"], 3), "1"]]
        through = j.get("real_through_pca")
        if through is not None:  # what the PCA alone costs: held-out images projected and reconstructed
            rows.append([f"real held-out through the PCA-{results['pca_dim']}", fmt(through["confident_fraction"], 3),
                         fmt(through["confident_fraction"] / max(real["confident_fraction"], 1e-12), 2),
                         fmt(through["class_histogram"], 2), fmt(through["frechet"], 3),
                         fmt(through["frechet"] / max(real["frechet"], 1e-12), 2),
                         fmt(through["nearest_train_distance_median"], 3),
                         fmt(through["nearest_train_distance_median"] / max(real["nearest_train_distance_median"], 1e-12), 2)])
        for family in FAMILIES:
            m = results["models"][family].get("judge")
            if m is None:
                rows.append([family, "—", "—", "—", "—", "—", "—", "—"])
                continue
            rows.append([family, fmt(m["confident_fraction"], 3),
                         fmt(m["confident_fraction"] / max(real["confident_fraction"], 1e-12), 2),
                         fmt(m["class_histogram"], 2), fmt(m["frechet"], 3),
                         fmt(m["frechet"] / max(real["frechet"], 1e-12), 2),
                         fmt(m["nearest_train_distance_median"], 3),
                         fmt(m["nearest_train_distance_median"] / max(real["nearest_train_distance_median"], 1e-12), 2)])
        lines.append(markdown_table(header, rows))
    return "\n".join(lines)


def estimate_cost(config: dict | None = None, *, num_train: int = 54_000, train_steps: int = 20,
                  sample_steps: int = 100, key=None) -> dict:
    """Time a few training steps and sampling steps of the (paper-size) RSN on random data and
    extrapolate to the full run. Only the RSN is timed: it dominates (the SO models have d² ≪ N d
    parameters).

    **Arguments:**

    - `config`: the settings (default the ``paper`` preset).
    - `num_train`: training images (54 000 = the 60 000 training images less the 10 % held out).
    - `train_steps`, `sample_steps`: steps timed after compilation.

    **Returns:** a dict with measured seconds per step and the extrapolated totals.
    """
    config = dict(PRESETS["paper"] if config is None else config)
    key = jax.random.key(0) if key is None else key
    d = config["pca_dim"]
    data = 0.05 * jax.random.normal(key, (max(num_train // 50, config["batch_size"] * 4), d))
    model = make_model("RSN", config, d, key)
    opt = make_optimizer(config["learning_rate"], amsgrad=config["amsgrad"])
    timings = {}
    for steps in (train_steps, 2 * train_steps):
        t0 = time.perf_counter()
        fit(model, data, sigmas=[1.0], steps_per_level=steps, batch_size=config["batch_size"], optimizer=opt,
            weight_decay=config["weight_decay"], key=key, progress=False, chunk_size=steps)
        timings[steps] = time.perf_counter() - t0
    per_step = (timings[2 * train_steps] - timings[train_steps]) / train_steps
    steps_per_epoch = num_train // config["batch_size"]
    total_steps = steps_per_epoch * config["epochs_per_level"] * config["num_levels"]
    res = sample(ReservoirSampler.from_score_network(model), key=key, num_chains=config["num_chains"],
                 num_steps=sample_steps, step_size=config["step_size"], init="zeros")
    per_sample_step = res.wall_time / sample_steps
    return {"seconds_per_train_step": per_step, "train_steps": total_steps,
            "train_seconds": per_step * total_steps,
            "seconds_per_sample_step": per_sample_step, "sample_seconds": per_sample_step * config["num_steps"],
            "hidden": config["hidden"], "pca_dim": d, "batch_size": config["batch_size"],
            "device": str(jax.devices()[0])}
