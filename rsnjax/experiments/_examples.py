"""Shared argparse front end of the example scripts in examples/ (each is a thin wrapper around
`rsnjax.experiments.run`; `rsnjax reproduce NAME` does the same)."""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(name: str, description: str, argv=None, *, data_default: str | None = None) -> dict:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--preset", default="quick", help="paper, quick (default, about a minute on 2 CPU cores) or tiny")
    parser.add_argument("--out", default=None, help="results directory (default results/<name>-<preset>/, "
                        "or a fresh -2, -3, ... when it already holds files)")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one preset setting, value as JSON (e.g. --set hidden=300); repeatable")
    if data_default is not None or name == "mnist":
        parser.add_argument("--data", default=data_default, metavar="DIR", help="required: directory with the "
                            "MNIST IDX files (train-images-idx3-ubyte[.gz] or t10k-images-idx3-ubyte[.gz]); "
                            "'none' uses the 8x8 digits bundled with scikit-learn (quick/tiny presets only)")
        parser.add_argument("--estimate-cost", action="store_true", help="time a few steps of the paper-size RSN "
                            "(N = 20 000, d = 300) on this machine, print the extrapolated cost of the paper preset, exit")
    args = parser.parse_args(argv)
    if hasattr(args, "data") and args.data is None and not args.estimate_cost:
        parser.error("--data is required: a directory with the MNIST IDX files (e.g. "
                     "t10k-images-idx3-ubyte.gz), or 'none' for scikit-learn's 8x8 digits")
    if getattr(args, "estimate_cost", False):
        from .mnist import estimate_cost

        print(json.dumps(estimate_cost(), indent=2))
        return {}
    from . import run

    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    data = getattr(args, "data", None)
    if data is not None and data.lower() == "none":
        data = None
    t0 = time.perf_counter()
    result = run(name, preset=args.preset, out_dir=args.out, overwrite=args.overwrite, seed=args.seed,
                 data_dir=data, overrides=overrides or None)
    print(result["table"])
    print(f"wrote {result['out_dir']}/ in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return result
