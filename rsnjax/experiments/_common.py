"""Helpers shared by the experiments: output directories, version records, level-by-level
training, JSON output and small table builders."""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import fit
from ..training import History

#: Families compared in every experiment, in table order.
FAMILIES = ("SO-SC", "SO-FR", "RSN")


def versions() -> dict[str, str]:
    """The library versions, interpreter, machine and git commit, for the record."""
    import importlib.metadata as md

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("rsnjax", "jax", "jaxlib", "equinox", "optax", "diffrax", "numpy", "scipy",
                "scikit-learn", "matplotlib"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    out["jax_backend"] = jax.default_backend()
    out["devices"] = ", ".join(str(d) for d in jax.devices())
    out["cpu_count"] = str(os.cpu_count())
    try:
        root = Path(__file__).resolve().parents[2]
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=5)
        if commit.returncode == 0:
            out["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def prepare_out_dir(name: str, preset: str, out_dir: str | os.PathLike | None, overwrite: bool) -> Path:
    """The directory results go to.

    With ``out_dir=None``: ``results/<name>-<preset>/``, or ``...-2/``, ``...-3/``, ... when it
    already holds files (a new directory is made rather than overwriting). With an explicit
    `out_dir` that already holds files, `overwrite` must be True.
    """
    if out_dir is None:
        base = Path("results") / f"{name}-{preset}"
        candidate, i = base, 1
        while candidate.exists() and any(candidate.iterdir()):
            i += 1
            candidate = base.with_name(f"{base.name}-{i}")
        path = candidate
    else:
        path = Path(out_dir)
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(f"`out_dir` {str(path)!r} exists and is not a directory")
        if path.exists() and any(path.iterdir()) and not overwrite:
            raise FileExistsError(
                f"`out_dir` {str(path)!r} already holds files; pass overwrite=True (--overwrite) "
                "to write over them, or choose another directory"
            )
    path.mkdir(parents=True, exist_ok=True)
    return path


def enable_compilation_cache() -> str | None:
    """Turn on JAX's persistent compilation cache if the user has not configured one.

    Level-by-level training calls `fit` once per noise level, and each call compiles the same
    program again (≈ 1.5 s on 2 CPU cores); the persistent cache turns the repeats into look-ups.
    The cache lives in ``$RSNJAX_CACHE_DIR`` or ``$XDG_CACHE_HOME/rsnjax/jax`` (default
    ``~/.cache/rsnjax/jax``). Set ``RSNJAX_COMPILATION_CACHE=0`` to leave JAX's settings alone.
    It only takes effect if nothing has been compiled in this process yet.

    **Returns:** the cache directory in use, or None.
    """
    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    if os.environ.get("RSNJAX_COMPILATION_CACHE", "1") == "0":
        return None
    root = os.environ.get("RSNJAX_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "rsnjax", "jax")
    try:
        os.makedirs(root, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", root)
    return root


def fit_options(config: dict) -> dict:
    """`fit`'s quality remedies for a preset: its defaults (parameter average, antithetic noise,
    far-field confinement) when ``config["remedies"]`` is true, else plain annealed DSM as the
    paper trained (the presets' tables in docs/RESULTS.md were measured that way)."""
    if config.get("remedies", False):
        return {}
    return {"ema_decay": None, "antithetic": False, "confine": None}


@functools.lru_cache(maxsize=32)
def make_optimizer(learning_rate: float, *, amsgrad: bool = False, schedule: str = "constant",
                   steps_per_level: int | None = None) -> optax.GradientTransformation:
    """``optax.amsgrad`` or ``optax.adam``.

    ``schedule="constant"`` (the paper) keeps `learning_rate`; ``"cosine"`` decays it to 0 over
    `steps_per_level` steps. `fit` re-creates the optimiser state at every level, so the cosine
    restarts at every noise level (the schedule's step count lives in that state).
    Cached, so the levels share one optimiser object and `fit` reuses its compiled chunk.
    """
    if schedule == "cosine":
        if steps_per_level is None:
            raise ValueError("a cosine schedule needs `steps_per_level`")
        lr = optax.cosine_decay_schedule(learning_rate, steps_per_level)
    elif schedule == "constant":
        lr = learning_rate
    else:
        raise ValueError(f"`schedule` must be 'constant' or 'cosine', got {schedule!r}")
    return optax.amsgrad(lr) if amsgrad else optax.adam(lr)


def fit_levels(
    model,
    data,
    *,
    sigmas,
    key,
    steps_per_level: int | None = None,
    epochs_per_level: int | None = None,
    batch_size: int,
    learning_rate: float,
    amsgrad: bool = False,
    lr_schedule: str = "constant",
    weight_decay: float = 0.0,
    progress: bool | None = None,
    after_level: Callable[[int, Any], Any] | None = None,
    **options,
):
    """Train over the schedule one level at a time, so the model after every level is kept.

    Each level is one `fit` call with a one-level schedule and a fresh optimiser state — the
    authors' ``reset_optimizer`` semantics — with key ``fold_in(key, level)``. The levels share
    one (cached, stateless) optax transformation, so the training chunk compiles once.

    **Returns:** ``(model, history, per_level)``: the final model, a `History` over all levels,
    and the list of ``after_level(level, model)`` results (empty when it is None).
    """
    sigmas = np.asarray(sigmas, dtype=float)
    losses, per_level = [], []
    for level, sigma in enumerate(sigmas):
        model, hist = fit(
            model, data, sigmas=[float(sigma)], steps_per_level=steps_per_level,
            epochs_per_level=epochs_per_level, batch_size=batch_size,
            optimizer=make_optimizer(learning_rate, amsgrad=amsgrad, schedule=lr_schedule,
                                     steps_per_level=steps_per_level),
            weight_decay=weight_decay,
            key=jax.random.fold_in(key, level), progress=progress, **options,
        )
        losses.append(np.asarray(hist.loss))
        if after_level is not None:
            per_level.append(after_level(level, model))
    loss = np.concatenate(losses)
    level_index = np.repeat(np.arange(len(sigmas)), [len(x) for x in losses])
    return model, History(loss, level_index, sigmas), per_level


class EmpiricalTarget:
    """A data set dressed as a target: ``sample(key, num)`` draws rows without replacement
    (with replacement when ``num`` exceeds the rows). Used for MNIST noise floors."""

    def __init__(self, data):
        self.data = jnp.asarray(data)
        self.dim = int(self.data.shape[1])

    def sample(self, key, num: int):
        n = self.data.shape[0]
        idx = jax.random.choice(key, n, (num,), replace=num > n)
        return self.data[idx]


def to_jsonable(obj: Any) -> Any:
    """NumPy/JAX values → floats and lists, recursively; NaN/inf → None."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (str, bool)) or obj is None:
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    try:
        a = np.asarray(obj)
    except Exception:  # noqa: BLE001
        return str(obj)
    if a.dtype.kind in "fc" or a.dtype.kind in "iub":
        if a.ndim == 0:
            v = float(a) if a.dtype.kind in "fc" else int(a)
            return v if not (isinstance(v, float) and not math.isfinite(v)) else None
        return [to_jsonable(v) for v in a.tolist()] if a.dtype.kind in "fc" else a.tolist()
    return str(obj)


def write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n")
    return path


def finish_run(out_dir: Path, results: dict, figures: dict, watch: "Stopwatch",
               table_fn: Callable[[dict], str]) -> dict:
    """Record figures and timings in ``results``, write ``table.md`` and ``metrics.json``."""
    results["figures"] = {k: [str(p) for p in v] for k, v in figures.items()}
    results["timings"] = watch.times
    table = table_fn(results)
    (out_dir / "table.md").write_text(table)
    results["table"] = table
    write_json(out_dir / "metrics.json", results)
    return results


def fmt(v: Any, digits: int = 3) -> str:
    """A number for a table cell (None → —)."""
    if v is None:
        return "—"
    if isinstance(v, (list, tuple)) or np.ndim(v) > 0:
        return "[" + ", ".join(fmt(u, digits) for u in np.asarray(v).tolist()) + "]"
    v = float(v)
    if not math.isfinite(v):
        return "nan"
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4):
        return f"{v:.{max(digits - 1, 1)}e}"
    return f"{v:.{digits}g}"


def pm(mean: Any, sd: Any, digits: int = 3) -> str:
    """``mean ± sd`` for a table cell."""
    return f"{fmt(mean, digits)} ± {fmt(sd, 2)}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


class Stopwatch:
    """Wall-clock seconds per named phase."""

    def __init__(self):
        self.times: dict[str, float] = {}

    def __call__(self, name: str):
        watch = self

        class _Phase:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                watch.times[name] = watch.times.get(name, 0.0) + time.perf_counter() - self.t0

        return _Phase()
