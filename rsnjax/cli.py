"""The ``rsnjax`` command line: train, sample, evaluate, reproduce, bench, demo.

Every subcommand takes ``--config FILE.toml``: its keys are the subcommand's long option names
(dashes or underscores) or positional names; options given on the command line win. A key may
sit at the top level or in a table named after the subcommand (``[train]``, ``[sample]``, ...),
so one file can drive several subcommands.

Exit codes: 0 success; 1 runtime failure (diverged simulation or training, a missing optional
component, a failed benchmark); 2 usage error or bad input (bad flags, bad or corrupt files);
3 refused to overwrite an existing output (pass ``--overwrite``); 130 interrupted.
Expected errors are printed as one line on stderr, without a traceback (``--traceback`` or the
environment variable ``RSNJAX_TRACEBACK=1`` shows it).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import io
import json
import math
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["main", "build_parser", "CLIError", "TARGET_NAMES"]

#: Exit codes.
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_EXISTS, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

#: The built-in targets `train` and `evaluate` accept by name.
TARGET_NAMES = ("double-peak", "laplace-x", "ring")
MODEL_FAMILIES = ("rsn", "so-sc", "so-fr")
ACTIVATION_NAMES = ("relu", "tanh", "softplus")

MODEL_FILE = "model.ckpt"
HISTORY_NPZ = "history.npz"
HISTORY_JSON = "history.json"
RUN_CONFIG = "train_config.json"
#: ``fit``'s resumable state inside the output directory (see `rsnjax.training.CHECKPOINT_NAME`).
FIT_STATE = "fit_state.ckpt"


class CLIError(Exception):
    """An expected failure: printed as one line, exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


# ----------------------------------------------------------------------------------------------
# Argument types: accept strings (command line) and native TOML values (config files) alike.
# ----------------------------------------------------------------------------------------------


def _integer(minimum: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool):
            raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, str):
            try:
                value = int(value.strip().replace("_", ""))
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
        if not isinstance(value, int):
            raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    convert.__name__ = "integer"
    return convert


def _number(*, allow_zero: bool) -> Callable[[Any], float]:
    def convert(value: Any) -> float:
        if isinstance(value, bool):
            raise argparse.ArgumentTypeError(f"expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
        if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
            kind = "non-negative" if allow_zero else "positive"
            raise argparse.ArgumentTypeError(f"must be a finite {kind} number, got {value!r}")
        return number

    convert.__name__ = "number"
    return convert


def _text(value: Any) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise argparse.ArgumentTypeError(f"expected a string, got {value!r}")
    return os.fspath(value)


positive_int = _integer(1)
non_negative_int = _integer(0)
positive_float = _number(allow_zero=False)
non_negative_float = _number(allow_zero=True)


# ----------------------------------------------------------------------------------------------
# The parser
# ----------------------------------------------------------------------------------------------


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep the hand-wrapped descriptions and examples; show defaults that say something."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        default = action.default
        if ("(default" in help_text or default is None or default is False
                or default is argparse.SUPPRESS or not action.option_strings):
            return help_text
        return help_text + " (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (plus a pointer to --help) and exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _common(parser: argparse.ArgumentParser, *, overwrite: bool = True) -> None:
    parser.add_argument("--config", type=_text, metavar="FILE.toml", default=None,
                        help="read options from a TOML file (keys: long option names; the command "
                             "line wins)")
    if overwrite:
        parser.add_argument("--overwrite", action="store_true", default=False,
                            help="replace existing output files (otherwise refuse with exit code 3)")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``rsnjax`` command (subparsers under ``.subparsers_by_name``)."""
    parser = _Parser(
        prog="rsnjax",
        formatter_class=_Formatter,
        description=(
            "Train recurrent reservoir-sampler networks (RSNs) by denoising score matching, "
            "sample them with thousands of Langevin chains, and measure the samples."),
        epilog=(
            "quick start:\n"
            "  rsnjax train double-peak --hidden 64 --steps-per-level 200 --out run\n"
            "  rsnjax sample run/model.ckpt --chains 2000 --steps 2000 --step-size 1e-3\n"
            "  rsnjax evaluate run/samples.npz double-peak\n\n"
            "exit codes: 0 ok, 1 runtime failure (e.g. diverged simulation), 2 usage error or "
            "bad input, 3 refused to overwrite (pass --overwrite), 130 interrupted.\n"
            "Run 'rsnjax COMMAND --help' for a command's options."),
    )
    from . import __version__ as version

    parser.add_argument("--version", action="version", version=f"rsnjax {version}")
    parser.add_argument("--traceback", action="store_true", default=False,
                        help="show the Python traceback of expected errors (debugging)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    subs: dict[str, argparse.ArgumentParser] = {}

    # --- train ---------------------------------------------------------------------------------
    p = sub.add_parser(
        "train", formatter_class=_Formatter, help="train a score model by annealed DSM",
        description=(
            "Train a score model by denoising score matching over a geometric noise schedule and\n"
            "write OUT/model.ckpt, OUT/history.npz and OUT/history.json. The resumable training\n"
            "state is kept in OUT/fit_state.ckpt (saved at the end of every noise level and\n"
            "every --checkpoint-every steps); --resume continues an interrupted run and gives\n"
            "the same model as an uninterrupted one."),
        epilog=(
            "examples:\n"
            "  rsnjax train double-peak --hidden 256 --out runs/dp\n"
            "  rsnjax train data.npy --model so-fr --steps-per-level 500 --out runs/so\n"
            "  rsnjax train --config train.toml --resume"))
    p.add_argument("target", nargs="?", type=_text, default=None,
                   help=f"a target name ({', '.join(TARGET_NAMES)}; fresh draws every step) or a "
                        "data file .npy/.npz holding an array of shape (num, d)")
    p.add_argument("--model", choices=MODEL_FAMILIES, default="rsn",
                   help="rsn: 2-layer score network s(x) = -x + A phi(Bx + b), sampled as a "
                        "reservoir; so-sc / so-fr: sampler-only circuit with synaptic-current / "
                        "firing-rate dynamics")
    p.add_argument("--hidden", type=positive_int, default=256, metavar="N",
                   help="reservoir size N (rsn only)")
    p.add_argument("--activation", choices=ACTIVATION_NAMES, default="relu", help="nonlinearity phi")
    p.add_argument("--sigma-max", type=positive_float, default=None,
                   help="largest noise level (default: from the data, rsnjax.default_sigmas)")
    p.add_argument("--sigma-min", type=positive_float, default=None,
                   help="smallest noise level (default: from the data; the paper's is 100^-0.9 = 0.01585)")
    p.add_argument("--num-levels", type=positive_int, default=None,
                   help="number of geometric noise levels (default: from the data, at least 10)")
    p.add_argument("--steps-per-level", type=positive_int, default=None,
                   help="optimiser steps at every level (default: fit's, 1000 per level and 160000 at the last)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="examples per step")
    p.add_argument("--learning-rate", type=positive_float, default=1e-3, help="optimiser learning rate")
    p.add_argument("--optimizer", choices=("adam", "cosine", "amsgrad"), default="adam",
                   help="adam: constant learning rate (fit's default, with the parameter average); "
                        "cosine: Adam cosine-decayed to 1%% within every level; "
                        "amsgrad: constant learning rate (the paper's double peak used it)")
    p.add_argument("--ema-decay", type=non_negative_float, default=0.999,
                   help="return the moving average of the parameters with this decay (0: the last iterate)")
    p.add_argument("--no-antithetic", dest="antithetic", action="store_false", default=True,
                   help="independent noise per example instead of antithetic pairs ±eps")
    p.add_argument("--confine", type=non_negative_float, default=1.0,
                   help="weight of the far-field penalty keeping the drift inward outside the data (0: off)")
    p.add_argument("--weight-decay", type=non_negative_float, default=0.0,
                   help="PyTorch-style L2 decay added to the gradient before the optimiser")
    p.add_argument("--keep-optimizer-state", action="store_true", default=False,
                   help="do not re-create the optimiser state at each noise level")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed (initial weights and training)")
    p.add_argument("--out", type=_text, default=None, metavar="DIR", help="output directory (required)")
    p.add_argument("--resume", action="store_true", default=False,
                   help="continue the run in OUT from its last checkpoint (same options needed); "
                        "rewrites that run's own outputs")
    p.add_argument("--checkpoint-every", type=positive_int, default=None, metavar="K",
                   help="also checkpoint every K steps within a level")
    p.add_argument("--chunk-size", type=positive_int, default=None,
                   help="steps per compiled chunk (must divide --steps-per-level; results do not "
                        "depend on it)")
    p.add_argument("--max-chunks", type=non_negative_int, default=None,
                   help="stop after this many chunks (time-boxing); continue later with --resume")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: when stderr is a terminal)")
    _common(p)
    subs["train"] = p

    # --- sample --------------------------------------------------------------------------------
    p = sub.add_parser(
        "sample", formatter_class=_Formatter, help="run Langevin chains of a trained model",
        description=(
            "Simulate --chains Euler-Maruyama chains of a checkpointed model and write the final\n"
            "states' readouts (and, with --save-every, the trajectory) to an .npz file.\n"
            "A ScoreNetwork (rsn) is sampled as its reservoir-sampler network by default (the N\n"
            "reservoir units are simulated, x = W_out r is read out); --space output runs the\n"
            "same Langevin dynamics directly in the d-dimensional output space."),
        epilog=(
            "output .npz keys: samples (chains, d); trajectory (saved, chains, d) with --save-every;\n"
            "nonfinite_step (chains,); wall_time; compile_time; info (JSON text).\n\n"
            "example:\n"
            "  rsnjax sample runs/dp/model.ckpt --chains 5000 --steps 10000 --step-size 1e-4"))
    p.add_argument("checkpoint", nargs="?", type=_text, default=None, help="a model checkpoint (.ckpt)")
    p.add_argument("--chains", type=positive_int, default=1000, help="number of independent chains")
    p.add_argument("--steps", type=positive_int, default=10_000, help="Euler-Maruyama steps after burn-in")
    p.add_argument("--step-size", type=positive_float, default=1e-3, help="time step dt")
    p.add_argument("--burn-in", type=non_negative_int, default=0, help="steps run before saving starts")
    p.add_argument("--save-every", type=positive_int, default=None,
                   help="store the readout every this many steps (must divide --steps)")
    p.add_argument("--backend", choices=("scan", "diffrax"), default="scan", help="simulation backend")
    p.add_argument("--space", choices=("reservoir", "output"), default=None,
                   help="simulate the reservoir or the output-space Langevin dynamics (default: "
                        "reservoir when the model has one)")
    p.add_argument("--init", choices=("uniform", "normal", "zeros"), default="uniform",
                   help="initial state: U[-2, 2], N(0, 1) or 0 in every unit")
    p.add_argument("--tau", type=positive_float, default=None, help="time constant (default: the model's, else 1)")
    p.add_argument("--block-size", type=positive_int, default=None, help="chains simulated together per block")
    p.add_argument("--on-nonfinite", choices=("raise", "flag"), default="raise",
                   help="raise: fail (exit 1) when a chain becomes NaN/inf; flag: record it in "
                        "nonfinite_step and write the samples anyway")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed")
    p.add_argument("--out", type=_text, default=None, metavar="FILE.npz",
                   help="output file (default: samples.npz beside the checkpoint)")
    p.add_argument("--checkpoint-dir", type=_text, default=None, metavar="DIR",
                   help="checkpoint the chains in DIR/sample-state.rsnjax after every segment of "
                        "--checkpoint-every steps, so that a killed run continues with --resume")
    p.add_argument("--checkpoint-every", type=positive_int, default=None, metavar="K",
                   help="segment length in steps: divides --steps and --burn-in, a multiple of "
                        "--save-every (default: the largest such that cuts the run into >= 20 segments)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run checkpointed in --checkpoint-dir (same options; a "
                        "difference is an error naming it); the samples are bit-identical to an "
                        "uninterrupted run's")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="report progress between segments (default: when stderr is a terminal)")
    _common(p)
    subs["sample"] = p

    # --- evaluate ------------------------------------------------------------------------------
    p = sub.add_parser(
        "evaluate", formatter_class=_Formatter, help="measure samples against a target",
        description=(
            "Compare samples with a target (by name) or with reference samples (.npy/.npz) using\n"
            "rsnjax.metrics.evaluate; print a table and optionally write the numbers as JSON.\n"
            "When the samples file holds a trajectory, R-hat and ESS are reported too."),
        epilog="example:\n  rsnjax evaluate runs/dp/samples.npz double-peak --json runs/dp/metrics.json")
    p.add_argument("samples", nargs="?", type=_text, default=None,
                   help="samples .npz (as written by 'rsnjax sample') or .npy of shape (num, d)")
    p.add_argument("target", nargs="?", type=_text, default=None,
                   help=f"a target name ({', '.join(TARGET_NAMES)}) or reference samples .npy/.npz")
    p.add_argument("--json", type=_text, default=None, metavar="FILE", help="also write the metrics as JSON")
    p.add_argument("--model", type=_text, default=None, metavar="CKPT",
                   help="a model checkpoint: also report its score error against the target")
    p.add_argument("--sigma", type=positive_float, default=None,
                   help="with --model: compare with the target blurred at this noise level")
    p.add_argument("--num-reference", type=_integer(2), default=None,
                   help="reference draws from a named target (default: as many as samples)")
    p.add_argument("--max-samples", type=_integer(2), default=None,
                   help="subsample size for MMD, energy distance and KSD (default: all)")
    p.add_argument("--noise-floor-repeats", type=non_negative_int, default=3,
                   help="repeats of each metric between exact target sets (0: none)")
    p.add_argument("--num-projections", type=positive_int, default=256, help="directions for sliced W2")
    p.add_argument("--digits", type=positive_int, default=4, help="significant digits in the table")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed")
    _common(p)
    subs["evaluate"] = p

    # --- reproduce -----------------------------------------------------------------------------
    p = sub.add_parser(
        "reproduce", formatter_class=_Formatter, help="reproduce an experiment of the paper",
        description="Run a named experiment of the paper with rsnjax.experiments.run.",
        epilog="example:\n  rsnjax reproduce double-peak --preset quick --out results/dp")
    p.add_argument("name", nargs="?", type=_text, default=None,
                   help="experiment name (double-peak, laplace-x, mnist, posterior, neural-variability, quenching)")
    p.add_argument("--preset", type=_text, default="quick",
                   help="quick: about a minute on 2 CPU cores; paper: the paper's sizes (tiny: "
                        "seconds, for tests)")
    p.add_argument("--out", type=_text, default=None, metavar="DIR",
                   help="output directory (default: results/NAME-PRESET, or a fresh -2, -3, ... "
                        "when that one holds files)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed")
    p.add_argument("--data-dir", type=_text, default=None, metavar="DIR",
                   help="mnist only: a directory with the MNIST IDX files")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show progress bars (default: when stderr is a terminal)")
    _common(p)
    subs["reproduce"] = p

    # --- bench ---------------------------------------------------------------------------------
    p = sub.add_parser(
        "bench", formatter_class=_Formatter, help="run the benchmarks (benchmarks/run.py)",
        description=(
            "Run benchmarks/run.py of the rsnjax source checkout with this Python. Every other\n"
            "argument is passed through (e.g. --quick); put '--' before arguments that rsnjax\n"
            "would otherwise read itself (e.g. 'rsnjax bench -- --help')."),
        epilog="example:\n  rsnjax bench --quick")
    p.add_argument("--script", type=_text, default=None, metavar="PATH",
                   help="the benchmark script (default: benchmarks/run.py of the checkout or the "
                        "current directory)")
    _common(p, overwrite=False)
    subs["bench"] = p

    # --- demo ----------------------------------------------------------------------------------
    p = sub.add_parser(
        "demo", formatter_class=_Formatter, help="a short end-to-end demonstration",
        description=("Run rsnjax.demo.main; every other argument is passed through (put '--'\n"
                     "before the demo's own --help)."))
    _common(p, overwrite=False)
    subs["demo"] = p

    parser.subparsers_by_name = subs  # type: ignore[attr-defined]
    return parser


PASS_THROUGH = ("bench", "demo")
COMMANDS = ("train", "sample", "evaluate", "reproduce", "bench", "demo")


# ----------------------------------------------------------------------------------------------
# Config files
# ----------------------------------------------------------------------------------------------


def _read_toml(path: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise CLIError("--config needs Python ≥ 3.11 (tomllib) or the 'tomli' package") from None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise CLIError(f"config file {path!r} does not exist") from None
    except OSError as err:
        raise CLIError(f"config file {path!r} cannot be read: {err.strerror or err}") from None
    except tomllib.TOMLDecodeError as err:
        raise CLIError(f"config file {path!r} is not valid TOML: {err}") from None


def _config_defaults(path: str, command: str, parser: argparse.ArgumentParser) -> dict:
    """The converted values of the config file's keys for ``command``."""
    data = _read_toml(path)
    subcommands = set(COMMANDS)
    values: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            if key == command:
                values.update(value)
            elif key not in subcommands:
                raise CLIError(f"config file {path!r}: unknown table [{key}] (tables may be named "
                               f"after a command: {', '.join(sorted(subcommands))})")
        else:
            values[key] = value
    actions = {}
    for action in parser._actions:  # noqa: SLF001 - argparse has no public API for this
        if action.dest in ("help", "config", argparse.SUPPRESS):
            continue
        actions[action.dest] = action
    out = {}
    for key, value in values.items():
        dest = key.replace("-", "_")
        action = actions.get(dest)
        if action is None:
            valid = ", ".join(sorted(a.replace("_", "-") for a in actions))
            raise CLIError(f"config file {path!r}: unknown key {key!r} for 'rsnjax {command}' "
                           f"(valid: {valid})")
        where = f"config file {path!r}: key {key!r}"
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,  # noqa: SLF001
                               argparse.BooleanOptionalAction)):
            if not isinstance(value, bool):
                raise CLIError(f"{where} must be true or false, got {value!r}")
        else:
            if isinstance(value, (dict, list)):
                raise CLIError(f"{where} must be a single value, got {value!r}")
            if action.type is not None:
                try:
                    value = action.type(value)
                except argparse.ArgumentTypeError as err:
                    raise CLIError(f"{where}: {err}") from None
            if action.choices is not None and value not in action.choices:
                raise CLIError(f"{where} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
        out[dest] = value
    return out


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Parse the command line (and the ``--config`` file). Returns ``(namespace, pass_through)``.

    Raises `SystemExit` (code 2) for usage errors, as argparse does, and `CLIError` for a bad
    config file.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    subs = parser.subparsers_by_name  # type: ignore[attr-defined]
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        raise SystemExit(EXIT_USAGE)
    if args.command in PASS_THROUGH:
        extra = _drop_separator(extra)
    elif extra:
        subs[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    if args.config is not None:
        sub = subs[args.command]
        sub.set_defaults(**_config_defaults(args.config, args.command, sub))
        args, extra = parser.parse_known_args(argv)
        if args.command in PASS_THROUGH:
            extra = _drop_separator(extra)
    return args, extra


def _drop_separator(extra: list[str]) -> list[str]:
    """The pass-through arguments without the first ``--`` (which only shields them from rsnjax)."""
    if "--" in extra:
        extra = list(extra)
        extra.remove("--")
    return extra


# ----------------------------------------------------------------------------------------------
# Helpers shared by the commands
# ----------------------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _jsonable(value: Any) -> Any:
    """Nested dicts/lists of JSON values with NaN/inf turned into None and arrays into lists."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_bytes(path: Path, data: bytes) -> None:
    from .checkpoint import atomic_write_bytes

    try:
        atomic_write_bytes(path, data)
    except OSError as err:
        raise CLIError(f"cannot write {str(path)!r}: {err.strerror or err}", EXIT_FAILURE) from None


def _write_json(path: Path, value: Any) -> None:
    _write_bytes(path, (json.dumps(_jsonable(value), indent=2, allow_nan=False) + "\n").encode())


def _write_npz(path: Path, arrays: dict) -> None:
    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    _write_bytes(path, buffer.getvalue())


def _refuse_existing(paths: Sequence[Path], overwrite: bool, hint: str = "") -> None:
    """Raise (exit code 3) if any of ``paths`` exists and ``overwrite`` is False."""
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        shown = ", ".join(repr(str(p)) for p in existing[:3]) + (" ..." if len(existing) > 3 else "")
        raise CLIError(f"refusing to overwrite {shown}: pass --overwrite to replace "
                       f"{'it' if len(existing) == 1 else 'them'}{hint}", EXIT_EXISTS)


def _normalise_name(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _target_by_name(name: str):
    from . import targets

    factories = {"double-peak": targets.double_peak, "laplace-x": targets.laplace_x,
                 "ring": targets.ring_of_gaussians}
    return factories[_normalise_name(name)]()


def _is_target_name(name: str) -> bool:
    return _normalise_name(name) in TARGET_NAMES


def _load_array_file(path_str: str, what: str, *, keys: Sequence[str] = ("samples", "data", "x")):
    """A (num, d) float array from a .npy or .npz file (a 1-D array is read as (num, 1))."""
    import numpy as np

    path = Path(path_str)
    if not path.is_file():
        raise CLIError(f"{what} {path_str!r} does not exist or is not a file")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise CLIError(f"{what} {path_str!r} is not a readable .npy/.npz file: {err}") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            names = list(loaded.files)
            chosen = next((k for k in keys if k in names), names[0] if len(names) == 1 else None)
            if chosen is None:
                raise CLIError(f"{what} {path_str!r} holds arrays {names}; expected one named "
                               f"{' or '.join(keys)} (or a single array)")
            try:
                array = loaded[chosen]
            except (OSError, ValueError) as err:
                raise CLIError(f"{what} {path_str!r}: array {chosen!r} cannot be read: {err}") from None
    else:
        array = loaded
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise CLIError(f"{what} {path_str!r} must hold real numbers, got dtype {array.dtype}")
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise CLIError(f"{what} {path_str!r} must hold an array of shape (num, d), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        bad = int(np.sum(~np.isfinite(array)))
        raise CLIError(f"{what} {path_str!r} contains {bad} NaN or infinite value(s)")
    return array.astype(np.float32) if array.dtype != np.float32 else array


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _require(value: Any, what: str, command: str) -> Any:
    if value is None:
        raise CLIError(f"'rsnjax {command}' needs {what} (see 'rsnjax {command} --help')")
    return value


def _load_model(path: str):
    from .checkpoint import load, read_info

    info = read_info(path)  # CheckpointError names the file and what is wrong
    return load(path), info


# ----------------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------------

#: Options that define a training run (compared on --resume). The rest only steer execution.
_RUN_KEYS = ("target", "model", "hidden", "activation", "sigma_max", "sigma_min", "num_levels",
             "steps_per_level", "batch_size", "learning_rate", "optimizer", "weight_decay",
             "keep_optimizer_state", "ema_decay", "antithetic", "confine", "seed")


def cmd_train(args: argparse.Namespace) -> int:
    target_arg = _require(args.target, "a target name or data file", "train")
    out = Path(_require(args.out, "--out DIR", "train"))
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {str(out)!r} exists and is not a directory")

    run = {k: getattr(args, k) for k in _RUN_KEYS}
    if _is_target_name(target_arg):
        run["target"] = _normalise_name(target_arg)
        data_sha = None
    else:
        path = Path(target_arg)
        if not path.exists():
            raise CLIError(f"unknown target {target_arg!r}: expected one of {', '.join(TARGET_NAMES)}, "
                           "or an existing .npy/.npz data file")
        data_sha = _file_sha256(target_arg)
        run["target"] = f"file:{path.name}"  # the content (hash) defines the run, not the path
    run["data_sha256"] = data_sha

    outputs = [out / MODEL_FILE, out / HISTORY_NPZ, out / HISTORY_JSON]
    state_file, config_file = out / FIT_STATE, out / RUN_CONFIG
    if args.resume:
        if config_file.is_file():
            try:
                stored = json.loads(config_file.read_text())
            except (OSError, ValueError) as err:
                raise CLIError(f"{str(config_file)!r} cannot be read: {err}") from None
            stored_run = {k: stored.get("run", {}).get(k) for k in run}
            if stored_run != run:
                diff = [k for k in run if stored_run[k] != run[k]]
                detail = "; ".join(f"{k.replace('_', '-')}: {stored_run[k]!r} in the run, {run[k]!r} now"
                                   for k in diff)
                raise CLIError(f"--resume: the run in {str(out)!r} used other options ({detail}); "
                               "give the same options, or start a new run in another directory")
        if not state_file.is_file():
            _say(f"rsnjax train: no checkpoint in {str(out)!r} yet; starting from the beginning")
    else:
        _refuse_existing(outputs + [state_file, config_file], args.overwrite,
                         ", or --resume to continue that run")

    import jax
    import numpy as np
    import optax

    from . import SamplerOnly, ScoreNetwork, cosine_optimizer, default_optimizer, default_sigmas, fit, geometric_sigmas
    from .training import TrainingDivergedError

    if data_sha is None:
        data = _target_by_name(run["target"])
        dim = data.dim
        data_desc = f"target {run['target']}"
    else:
        data = _load_array_file(target_arg, "data file")
        dim = data.shape[1]
        data_desc = f"data {target_arg!r} ({data.shape[0]} x {dim})"
    key_init, key_fit = jax.random.split(jax.random.key(args.seed))
    sigmas = None
    if (args.sigma_max, args.sigma_min, args.num_levels) != (None, None, None):
        points = data if data_sha is not None else data.sample(jax.random.fold_in(key_fit, 1), 10_000)
        derived = default_sigmas(np.asarray(points))
        sigma_max = args.sigma_max if args.sigma_max is not None else float(derived[0])
        sigma_min = args.sigma_min if args.sigma_min is not None else min(float(derived[-1]), sigma_max)
        sigmas = geometric_sigmas(sigma_max, sigma_min, args.num_levels or len(derived))
    if args.model == "rsn":
        model = ScoreNetwork(dim, args.hidden, activation=args.activation, key=key_init)
    else:
        dynamics = "synaptic_current" if args.model == "so-sc" else "firing_rate"
        model = SamplerOnly(dim, dynamics=dynamics, activation=args.activation, key=key_init)
    if args.optimizer == "cosine":
        if args.steps_per_level is None:
            raise CLIError("--optimizer cosine decays within each level and needs --steps-per-level")
        optimizer = cosine_optimizer(args.steps_per_level, args.learning_rate)
    elif args.optimizer == "amsgrad":
        optimizer = optax.amsgrad(args.learning_rate)
    else:
        optimizer = default_optimizer(args.learning_rate)

    out.mkdir(parents=True, exist_ok=True)
    if not args.resume and state_file.exists():  # --overwrite: start the run afresh
        state_file.unlink()
    from . import __version__

    _write_json(config_file, {"run": run, "rsnjax_version": __version__})
    _say(f"rsnjax train: {args.model} (dim {dim}" + (f", hidden {args.hidden}" if args.model == "rsn" else "")
         + f") on {data_desc}; "
         + (f"{len(sigmas)} levels" if sigmas is not None else "noise levels from the data")
         + (f" x {args.steps_per_level} steps" if args.steps_per_level else ", fit's default steps")
         + f"; out {str(out)!r}")
    start = time.perf_counter()
    try:
        trained, history = fit(
            model, data, sigmas=sigmas, steps_per_level=args.steps_per_level,
            batch_size=args.batch_size, optimizer=optimizer, weight_decay=args.weight_decay,
            reset_optimizer=not args.keep_optimizer_state, key=key_fit, progress=args.progress,
            ema_decay=args.ema_decay, antithetic=args.antithetic, confine=args.confine,  # 0: off
            chunk_size=args.chunk_size, checkpoint_dir=out, checkpoint_every=args.checkpoint_every,
            resume=args.resume, max_chunks=args.max_chunks)
    except TrainingDivergedError as err:
        kept = (f"; {str(state_file)!r} holds the last good checkpoint" if state_file.exists()
                else "; no checkpoint was written yet")
        raise CLIError(f"training diverged: {err}{kept}", EXIT_FAILURE) from None
    except KeyboardInterrupt:
        raise CLIError(f"interrupted; continue from {str(state_file)!r} with the same options "
                       "and --resume", EXIT_INTERRUPTED) from None
    seconds = time.perf_counter() - start
    steps_done = int(np.sum(np.isfinite(history.loss)))
    total = history.loss.size
    if steps_done < total:
        _say(f"rsnjax train: stopped after {steps_done} of {total} steps (--max-chunks); "
             f"continue with the same options and --resume")
        return EXIT_OK

    from .checkpoint import save

    level_loss = np.asarray(history.level_loss)
    sigmas = np.asarray(history.sigmas)
    summary = {"sigmas": sigmas, "level_loss": level_loss,
               "final_loss": float(level_loss[-1]),
               "steps_per_level": history.steps_per_level.tolist(), "total_steps": total,
               "seconds": round(seconds, 3)}
    save(out / MODEL_FILE, trained, metadata=_jsonable({"train": run, "history": summary}))
    _write_npz(out / HISTORY_NPZ, {"loss": history.loss, "level": history.level, "sigmas": history.sigmas,
                                   "level_loss": level_loss})
    _write_json(out / HISTORY_JSON, {**summary, "run": run})
    # sigma^2 x loss is comparable across levels (the loss itself grows like 1/sigma^2).
    print("| level | sigma | DSM loss (last quarter of level) | sigma^2 x loss |")
    print("|---|---|---|---|")
    for k, (s, loss) in enumerate(zip(np.asarray(sigmas), level_loss)):
        print(f"| {k} | {s:.4g} | {loss:.4g} | {s * s * loss:.4g} |")
    print(f"wrote {str(out / MODEL_FILE)!r}, {HISTORY_NPZ}, {HISTORY_JSON} ({seconds:.1f} s)")
    return EXIT_OK


# ----------------------------------------------------------------------------------------------
# sample
# ----------------------------------------------------------------------------------------------


def cmd_sample(args: argparse.Namespace) -> int:
    checkpoint = _require(args.checkpoint, "a checkpoint file", "sample")
    out = Path(args.out) if args.out is not None else Path(checkpoint).parent / "samples.npz"
    if args.save_every is not None and args.steps % args.save_every:
        raise CLIError(f"--save-every ({args.save_every}) must divide --steps ({args.steps})")
    if args.resume and args.checkpoint_dir is None:
        raise CLIError("--resume needs --checkpoint-dir (where the run was checkpointed)")
    _refuse_existing([out], args.overwrite)

    import jax
    import numpy as np

    from . import ReservoirSampler, SamplingWarning, ScoreNetwork, SimulationDivergedError, sample
    from .checkpoint import CheckpointError

    model, info = _load_model(checkpoint)
    space = args.space
    if isinstance(model, ScoreNetwork):
        space = space or "reservoir"
        if space == "reservoir":
            model = ReservoirSampler.from_score_network(model)
    elif isinstance(model, ReservoirSampler):
        space = space or "reservoir"
        if space == "output":
            model = model.to_score_network()
    else:
        if space == "reservoir":
            raise CLIError(f"--space reservoir: {str(checkpoint)!r} holds a {info['model']['class']}, "
                           "which has no reservoir; use --space output")
        space = "output"
    _say(f"rsnjax sample: {args.chains} chains x {args.steps} steps (dt {args.step_size:g}) of "
         f"{info['model']['class']} in {space} space ({args.backend})")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SamplingWarning)
            result = sample(model, key=jax.random.key(args.seed), num_chains=args.chains, num_steps=args.steps,
                            step_size=args.step_size, init=args.init, burn_in=args.burn_in,
                            save_every=args.save_every, tau=args.tau, backend=args.backend,
                            on_nonfinite=args.on_nonfinite, block_size=args.block_size,
                            checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every,
                            resume=args.resume, progress=args.progress)
        for w in caught:  # one line each, like the command's other messages
            _say(f"rsnjax sample: warning: {w.message}" if issubclass(w.category, SamplingWarning)
                 else warnings.formatwarning(w.message, w.category, w.filename, w.lineno).rstrip())
    except SimulationDivergedError as err:
        message = " ".join(str(err).split()).replace("pass on_nonfinite='flag'", "pass --on-nonfinite flag")
        raise CLIError(f"simulation diverged: {message}", EXIT_FAILURE) from None
    except CheckpointError as err:  # in the command line's words
        raise CLIError(str(err).replace("pass resume=True", "pass --resume")
                       .replace("`checkpoint_dir`", "--checkpoint-dir")) from None
    except KeyboardInterrupt:
        if args.checkpoint_dir is None:
            raise
        raise CLIError(f"interrupted; continue from {args.checkpoint_dir!r} with the same options and "
                       "--resume", EXIT_INTERRUPTED) from None
    arrays = {"samples": np.asarray(result.samples), "nonfinite_step": np.asarray(result.nonfinite_step),
              "wall_time": np.float64(result.wall_time), "compile_time": np.float64(result.compile_time)}
    if result.trajectory is not None:
        arrays["trajectory"] = np.asarray(result.trajectory)
    if result.escaped is not None:
        arrays["escaped"] = np.asarray(result.escaped)
    if result.rhat is not None:
        arrays["rhat"] = np.float64(result.rhat)
    meta = {"checkpoint": str(checkpoint), "model": info["model"], "space": space,
            "chains": args.chains, "steps": args.steps, "step_size": args.step_size,
            "burn_in": args.burn_in, "save_every": args.save_every, "backend": args.backend,
            "init": args.init, "seed": args.seed, "tau": args.tau, "checkpoint_dir": args.checkpoint_dir}
    arrays["info"] = np.array(json.dumps(_jsonable(meta)))
    _write_npz(out, arrays)
    bad = int(np.sum(arrays["nonfinite_step"] >= 0))
    print(f"wrote {str(out)!r}: samples {arrays['samples'].shape}"
          + (f", trajectory {arrays['trajectory'].shape}" if "trajectory" in arrays else "")
          + (f", {bad} non-finite chains" if bad else "")
          + (f", {result.num_escaped} chains outside the training data" if result.num_escaped else "")
          + (f", R-hat {result.rhat:.3f}" if result.rhat is not None else "")
          + f" (compile {result.compile_time:.2f} s, run {result.wall_time:.2f} s)")
    return EXIT_OK


# ----------------------------------------------------------------------------------------------
# evaluate
# ----------------------------------------------------------------------------------------------


def _read_samples_file(path_str: str):
    """(samples, trajectory or None, wall_time or None) from a samples .npz or an .npy."""
    import numpy as np

    samples = _load_array_file(path_str, "samples file")
    trajectory = wall_time = None
    if path_str.endswith(".npz"):
        with np.load(path_str, allow_pickle=False) as f:
            if "trajectory" in f.files:
                trajectory = np.asarray(f["trajectory"])
                if trajectory.ndim != 3 or trajectory.shape[2] != samples.shape[1]:
                    raise CLIError(f"samples file {path_str!r}: trajectory has shape {trajectory.shape}, "
                                   f"expected (saved, chains, {samples.shape[1]})")
            if "wall_time" in f.files:
                wall_time = float(f["wall_time"])
            if "nonfinite_step" in f.files and np.any(np.asarray(f["nonfinite_step"]) >= 0):
                raise CLIError(f"samples file {path_str!r} holds chains that became NaN/inf "
                               "(see its nonfinite_step); rerun 'rsnjax sample' with a smaller --step-size")
    return samples, trajectory, wall_time


def cmd_evaluate(args: argparse.Namespace) -> int:
    samples_path = _require(args.samples, "a samples file", "evaluate")
    target_arg = _require(args.target, "a target name or reference file", "evaluate")
    if args.sigma is not None and args.model is None:
        raise CLIError("--sigma needs --model")
    json_path = Path(args.json) if args.json is not None else None
    if json_path is not None:
        _refuse_existing([json_path], args.overwrite)
    samples, trajectory, wall_time = _read_samples_file(samples_path)

    import jax

    try:
        from .metrics import evaluate, format_table
    except ImportError as err:
        raise CLIError(f"'rsnjax evaluate' needs rsnjax.metrics, which cannot be imported: {err}",
                       EXIT_FAILURE) from None

    target = reference = None
    if _is_target_name(target_arg):
        target = _target_by_name(target_arg)
    elif Path(target_arg).exists():
        reference = _load_array_file(target_arg, "reference file")
    else:
        raise CLIError(f"unknown target {target_arg!r}: expected one of {', '.join(TARGET_NAMES)}, "
                       "or an existing .npy/.npz file of reference samples")
    score_fn = None
    if args.model is not None:
        if target is None:
            raise CLIError("--model (score error) needs a named target with an analytic score")
        from . import ReservoirSampler

        model, _ = _load_model(args.model)
        score_fn = model.output_score if isinstance(model, ReservoirSampler) else model
    metrics = evaluate(samples, target, key=jax.random.key(args.seed), reference_samples=reference,
                       trajectory=trajectory, wall_time=wall_time if trajectory is not None else None,
                       score_fn=score_fn, sigma=args.sigma, num_reference=args.num_reference,
                       max_samples=args.max_samples,
                       noise_floor_repeats=args.noise_floor_repeats if target is not None else 0,
                       num_projections=args.num_projections)
    print(format_table(metrics, digits=args.digits), end="")
    if json_path is not None:
        _write_json(json_path, {"samples": samples_path, "target": target_arg, "metrics": metrics})
        print(f"wrote {str(json_path)!r}")
    return EXIT_OK


# ----------------------------------------------------------------------------------------------
# reproduce, bench, demo
# ----------------------------------------------------------------------------------------------


def _lazy_module(name: str, command: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name == name:
            raise CLIError(f"'rsnjax {command}' needs {name}, which this installation of rsnjax "
                           "does not have", EXIT_FAILURE) from None
        raise CLIError(f"{name} cannot be imported: {err}", EXIT_FAILURE) from None
    except ImportError as err:
        raise CLIError(f"{name} cannot be imported: {err}", EXIT_FAILURE) from None


def cmd_reproduce(args: argparse.Namespace) -> int:
    name = _require(args.name, "an experiment name", "reproduce")
    out = Path(args.out) if args.out is not None else None
    if out is not None:
        if out.exists() and not out.is_dir():
            raise CLIError(f"--out {str(out)!r} exists and is not a directory")
        if out.is_dir() and any(out.iterdir()) and not args.overwrite:
            raise CLIError(f"refusing to write into the non-empty directory {str(out)!r}: pass "
                           "--overwrite to replace its results", EXIT_EXISTS)
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise CLIError(f"--data-dir {args.data_dir!r} is not a directory")
    experiments = _lazy_module("rsnjax.experiments", "reproduce")
    run = getattr(experiments, "run", None)
    if not callable(run):
        raise CLIError("rsnjax.experiments has no run() function", EXIT_FAILURE)
    # Pass the optional settings that this version of run() accepts.
    import inspect

    optional = {"overwrite": args.overwrite, "seed": args.seed, "data_dir": args.data_dir,
                "progress": args.progress}
    defaults = {"overwrite": False, "seed": 0, "data_dir": None, "progress": None}
    try:
        accepted = inspect.signature(run).parameters
    except (TypeError, ValueError):  # no signature: pass everything
        accepted = optional
    dropped = [k for k, v in optional.items() if k not in accepted and v != defaults[k]]
    if dropped:
        flags = ", ".join("--" + k.replace("_", "-") for k in dropped)
        raise CLIError(f"this rsnjax.experiments.run() does not accept {flags}")
    optional = {k: v for k, v in optional.items() if k in accepted}
    try:
        result = run(name, preset=args.preset, out_dir=out, **optional)
    except FileExistsError as err:
        raise CLIError(f"{err} (pass --overwrite)", EXIT_EXISTS) from None
    where = out
    if isinstance(result, dict):
        where = result.get("out_dir", out)
        if isinstance(result.get("table"), str):
            print(result["table"].rstrip("\n"))
        else:
            scalars = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if scalars:
                from .metrics import format_table

                print(format_table(scalars), end="")
    if where is not None:
        print(f"results in {str(where)!r}")
    return EXIT_OK


def _find_benchmark(script: str | None) -> Path:
    if script is not None:
        path = Path(script)
        if not path.is_file():
            raise CLIError(f"--script {script!r} does not exist")
        return path
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "benchmarks" / "run.py", Path.cwd() / "benchmarks" / "run.py"):
        if candidate.is_file():
            return candidate
    raise CLIError("benchmarks/run.py not found: 'rsnjax bench' runs from a source checkout of rsnjax "
                   "(or pass --script PATH)", EXIT_FAILURE)


def cmd_bench(args: argparse.Namespace, extra: list[str]) -> int:
    script = _find_benchmark(args.script)
    try:
        completed = subprocess.run([sys.executable, str(script), *extra], check=False)
    except KeyboardInterrupt:
        raise CLIError("interrupted", EXIT_INTERRUPTED) from None
    if completed.returncode != 0:
        code = completed.returncode if 0 < completed.returncode < 128 else EXIT_FAILURE
        raise CLIError(f"{str(script)!r} exited with status {completed.returncode}", code)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, extra: list[str]) -> int:
    demo = _lazy_module("rsnjax.demo", "demo")
    entry = getattr(demo, "main", None)
    if not callable(entry):
        raise CLIError("rsnjax.demo has no main() function", EXIT_FAILURE)
    try:
        code = entry(extra)
    except SystemExit as exit_:  # the demo's own argparse (--help, usage errors)
        code = exit_.code if isinstance(exit_.code, int) else (EXIT_OK if exit_.code is None else EXIT_USAGE)
    return int(code) if isinstance(code, int) else EXIT_OK


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------


def _error_code(err: BaseException) -> int | None:
    """The exit code of an expected library error, or None for a bug."""
    from .checkpoint import CheckpointError
    from .reservoir import RankDeficientReadoutError
    from .sampling import SimulationDivergedError
    from .training import TrainingDivergedError

    if isinstance(err, (SimulationDivergedError, TrainingDivergedError, RankDeficientReadoutError)):
        return EXIT_FAILURE
    if isinstance(err, CheckpointError):
        return EXIT_USAGE
    if isinstance(err, (ValueError, TypeError)):
        from ._validation import raised_by_rsnjax

        return EXIT_USAGE if raised_by_rsnjax(err) else None
    if isinstance(err, OSError):
        return EXIT_FAILURE
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``rsnjax`` command with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    **Arguments:**

    - `argv`: the arguments after the program name.

    **Returns:** 0 success, 1 runtime failure, 2 usage error or bad input, 3 refused to
    overwrite, 130 interrupted. Expected errors are printed as one line on stderr.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    show_traceback = "--traceback" in argv or os.environ.get("RSNJAX_TRACEBACK", "") not in ("", "0")
    command = next((a for a in argv if not a.startswith("-")), "")
    try:
        args, extra = parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    except CLIError as err:
        print(f"rsnjax {command}: error: {err}".replace("  ", " "), file=sys.stderr)
        return err.code
    command = args.command
    handlers = {"train": cmd_train, "sample": cmd_sample, "evaluate": cmd_evaluate,
                "reproduce": cmd_reproduce}
    try:
        if command == "bench":
            return cmd_bench(args, extra)
        if command == "demo":
            return cmd_demo(args, extra)
        return handlers[command](args)
    except CLIError as err:
        if show_traceback:
            raise
        print(f"rsnjax {command}: error: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        if show_traceback:
            raise
        print(f"rsnjax {command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - mapped below; unexpected ones re-raise
        code = _error_code(err)
        if code is None or show_traceback:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"rsnjax {command}: error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
