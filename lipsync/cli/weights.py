"""``lipsync weights fetch ENGINE DIR``, ``lipsync weights check DIR`` and ``lipsync weights random ENGINE DIR``:
get, inspect, or write (random, for tests and benchmarks) a weights folder.

Both are table-driven by ``lipsync.model.weights``: an engine's files, repositories and licences live in its
``lipsync/model/<engine>/layout.py``, so a new engine needs no change here. torch-free but for ``random``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(sub, common: argparse.ArgumentParser) -> None:
    from lipsync.model.weights import ENGINES

    weights = sub.add_parser("weights", help="download a published checkpoint, or check a weights folder")
    action = weights.add_subparsers(dest="weights_command", required=True)
    fetch = action.add_parser("fetch", parents=[common], help="download an engine's published files into DIR (needs internet)")
    fetch.add_argument("engine", choices=[e for e in ENGINES if e != "pipio"], help="engine to download")
    fetch.add_argument("dir", help="weights folder to fill (created); files already there are kept")
    fetch.add_argument("--variant", help="e.g. musetalk-1.0 (default: the engine's first layout)")
    fetch.set_defaults(func=_fetch)
    check = action.add_parser("check", parents=[common], help="print the engine a folder holds, each file with its size, what is missing")
    check.add_argument("dir", help="weights folder")
    check.add_argument("--engine", choices=list(ENGINES), help="check against this engine (as LIPSYNC_ENGINE)")
    check.set_defaults(func=_check)
    random = action.add_parser("random", parents=[common], help="write RANDOM weights in an engine's published layout "
                               "(tests, benchmarks, smoke runs: never a trained model)")
    random.add_argument("engine", choices=list(ENGINES))
    random.add_argument("dir", help="weights folder to write (created)")
    random.add_argument("--size", choices=["small", "published"], default="small",
                        help="small: CPU-sized networks; published: the published network sizes (GBs)")
    random.add_argument("--seed", type=int, default=0, help="initialisation seed")
    random.set_defaults(func=_random)


def _fetch(args: argparse.Namespace) -> None:
    from lipsync.model.weights import WeightsFolderError, fetch

    root = Path(args.dir)
    try:
        check = fetch(args.engine, root, variant=args.variant,
                      on_file=lambda f: print(f"downloading {f.source()} -> {root / f.path}", flush=True))
    except WeightsFolderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(check.report())
    print(f"ready: LIPSYNC_WEIGHTS_DIR={root} lipsync serve" if check.ok else "incomplete: see MISSING above")
    sys.exit(0 if check.ok else 1)


def _check(args: argparse.Namespace) -> None:
    from lipsync.model.weights import WeightsFolderError, detect

    try:
        check = detect(Path(args.dir), args.engine)
    except WeightsFolderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(check.report())
    if check.root is None or not check.present:
        print("no weights: the worker runs pipio with RANDOM weights (not a trained model)")
    missing = [f for f in check.missing if f.required]
    print("ok" if not missing else f"{len(missing)} required file(s) missing")
    sys.exit(0 if not missing else 1)


def _random(args: argparse.Namespace) -> None:
    from lipsync.model.weights import write_random_weights

    root = write_random_weights(args.engine, Path(args.dir), size=args.size, seed=args.seed)
    print(f"wrote RANDOM {args.engine} weights ({args.size}, seed {args.seed}) to {root}: not a trained model")
