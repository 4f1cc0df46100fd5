"""The paper's experiments as reproducible runs that write numbers and figures.

Each experiment trains SO-SC, SO-FR and an RSN, samples them, and writes into a results directory:
``table.md`` (the comparison), ``metrics.json`` (every number), ``config.json`` (the preset, seed
and library versions) and PNG + PDF figures.

    >>> import rsnjax.experiments as ex
    >>> results = ex.run("double-peak", preset="quick")      # → results/double-peak-quick/

Names: ``"double-peak"``, ``"laplace-x"``, ``"mnist"``, ``"posterior"`` (conditional circuits
sampling posteriors; not in the paper), ``"neural-variability"`` (recorded neural activity; no
paper figure), ``"quenching"`` (neural variability at a stimulus onset; no paper figure). Presets: ``"paper"`` (docs/SCIENCE.md §4–§5; ``"full"`` for ``"posterior"``),
``"quick"`` (about a minute on 2 CPU cores, a few for ``"posterior"``),
``"tiny"`` (seconds, for tests). `PRESETS` holds the
settings of each; the docstring of each module says what its presets change.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import jax

from . import double_peak, laplace_x, mnist, neural_variability, posterior, quenching
from ._common import enable_compilation_cache, prepare_out_dir, to_jsonable, versions

__all__ = ["run", "PRESETS", "EXPERIMENTS"]

#: name → module with ``PRESETS`` and ``run(config, out_dir, *, key, progress, data_dir)``.
EXPERIMENTS = {"double-peak": double_peak, "laplace-x": laplace_x, "mnist": mnist, "posterior": posterior,
               "neural-variability": neural_variability, "quenching": quenching}

#: name → preset name → settings dict.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {name: mod.PRESETS for name, mod in EXPERIMENTS.items()}


def run(
    name: str,
    *,
    preset: str | dict = "quick",
    out_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict:
    """Run one experiment and write its table, numbers and figures.

    **Arguments:**

    - `name`: ``"double-peak"``, ``"laplace-x"``, ``"mnist"``, ``"posterior"``, ``"neural-variability"``
      or ``"quenching"``.
    - `preset`: ``"paper"`` (``"full"`` for ``"posterior"`` and ``"quenching"``), ``"quick"`` or ``"tiny"`` (see `PRESETS`).
    - `out_dir`: where to write. Default ``results/<name>-<preset>/`` (a fresh ``-2``, ``-3``, ...
      directory when that one already holds files). An explicit directory that holds files needs
      `overwrite`.
    - `overwrite`: allow writing into a non-empty `out_dir`.
    - `seed`: the PRNG seed (everything random derives from ``jax.random.key(seed)``).
    - `data_dir`: MNIST only: a directory with the IDX files (``train-images-idx3-ubyte[.gz]`` or
      ``t10k-images-idx3-ubyte[.gz]``). Without it the ``quick`` and ``tiny`` presets use
      scikit-learn's 8×8 digits; ``paper`` requires it.
    - `progress`: show progress bars (default: when stderr is a terminal).
    - `overrides`: settings that replace the preset's (e.g. ``{"hidden": 300}``), recorded in
      ``config.json``.

    **Returns:** a dict with ``out_dir``, ``config``, ``versions``, ``wall_time`` and the
    experiment's results (``table`` holds the Markdown table).

    **Raises:** `ValueError` for an unknown name, preset or setting; `FileExistsError` for a
    non-empty `out_dir` without `overwrite`.
    """
    if name not in EXPERIMENTS:
        raise ValueError(f"`name` must be one of {sorted(EXPERIMENTS)}, got {name!r}")
    module = EXPERIMENTS[name]
    if isinstance(preset, dict):
        config, preset_name = dict(preset), "custom"
    elif preset in module.PRESETS:
        config, preset_name = dict(module.PRESETS[preset]), preset
    else:
        raise ValueError(f"`preset` must be one of {sorted(module.PRESETS)} for {name!r}, got {preset!r}")
    if overrides:
        unknown = sorted(set(overrides) - set(config))
        if unknown:
            raise ValueError(f"`overrides` has unknown settings {unknown}; known: {sorted(config)}")
        config.update(overrides)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"`seed` must be an integer, got {seed!r}")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise FileNotFoundError(f"`data_dir` {str(data_dir)!r} is not a directory")
    cache = enable_compilation_cache()
    path = prepare_out_dir(name, preset_name, out_dir, overwrite)
    record = {"name": name, "preset": preset_name, "seed": seed, "config": config,
              "data_dir": None if data_dir is None else str(data_dir), "versions": versions(),
              "compilation_cache": cache, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    (path / "config.json").write_text(json.dumps(to_jsonable(record), indent=2) + "\n")
    t0 = time.perf_counter()
    results = module.run(config, path, key=jax.random.key(seed), progress=progress, data_dir=data_dir)
    wall = time.perf_counter() - t0
    record["wall_time"] = wall
    (path / "config.json").write_text(json.dumps(to_jsonable(record), indent=2) + "\n")
    return {"out_dir": str(path), "name": name, "preset": preset_name, "config": config,
            "versions": record["versions"], "wall_time": wall, **results}
