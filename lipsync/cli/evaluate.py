"""``lipsync eval``: score lip-sync outputs (a folder, a CSV) or a live server (``--server URL --cases FILE``),
writing report.md, report.json and plots/ into ``--out`` (docs/evaluation.md)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--inputs", type=Path, help="folder of case folders, each with output.mp4 [source.* audio.*]")
    src.add_argument("--csv", type=Path, help="CSV with columns output[,source,audio,name]")
    src.add_argument("--server", help="base URL of a lipsync server: submit --cases through fal-client, then score")
    parser.add_argument("--cases", type=Path, help="with --server: JSON list (or CSV) of {name, video, audio, …fields}")
    parser.add_argument("--out", type=Path, required=True, help="where report.md, report.json and plots/ go")
    parser.add_argument("--syncnet", type=Path, help="syncnet_v2.model (LSE-C, LSE-D, offset)")
    parser.add_argument("--stable-syncnet", type=Path, help="LatentSync's stable_syncnet.pt (a second sync score)")
    parser.add_argument("--stable-syncnet-config", type=Path,
                        help="its YAML (default: the published syncnet_16_pixel_attn.yaml's values)")
    parser.add_argument("--insightface-root", help="folder with models/buffalo_l (ArcFace CSIM; else dlib's descriptor); "
                        "default: LIPSYNC_INSIGHTFACE_ROOT")
    parser.add_argument("--device", default="cpu", help="torch device for the sync networks (cpu, cuda, cuda:1)")
    parser.add_argument("--vshift", type=int, default=15, help="offsets searched, ± frames at 25 fps (15 as published)")
    parser.add_argument("--min-frames", type=int, default=25, help="fewest consecutive face frames scored")
    parser.add_argument("--key", default=None, help="with --server: API key (default $FAL_KEY)")
    parser.add_argument("--app", default="pipio/lipsync", help="with --server: the app id")
    parser.add_argument("--timeout", type=float, default=600.0, help="with --server: seconds per request")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from lipsync.evaluation.cases import CaseError, cases_from_csv, cases_from_folder, server_cases
    from lipsync.evaluation.evaluator import CaseResult, EvalOptions, Evaluator
    from lipsync.evaluation.report import write_report
    from lipsync.evaluation.server_cases import FailedCase, run_on_server
    from lipsync.evaluation.weights import WeightsError
    from lipsync.model.loading import WeightsLoadError

    if bool(args.server) != bool(args.cases):
        print("lipsync eval: --server and --cases go together", file=sys.stderr)
        return 2
    try:
        options = EvalOptions(syncnet=args.syncnet, stable_syncnet=args.stable_syncnet,
                              stable_syncnet_config=args.stable_syncnet_config, insightface_root=args.insightface_root or _settings_insightface_root(),
                              device=args.device, vshift=args.vshift, min_frames=args.min_frames)
        evaluator = Evaluator(options)
        if args.server:
            todo = server_cases(args.cases)
            with tqdm(total=len(todo), desc="requests", unit="case") as bar:
                cases = run_on_server(args.server, todo, args.out, key=args.key or os.environ.get("FAL_KEY") or "local",
                                      app=args.app, timeout=args.timeout, progress=lambda _: bar.update())
        else:
            cases = cases_from_folder(args.inputs) if args.inputs else cases_from_csv(args.csv)
    except (CaseError, WeightsError, WeightsLoadError) as exc:
        print(f"lipsync eval: {exc}", file=sys.stderr)
        return 2
    for line in evaluator.skipped:
        print(line, file=sys.stderr)
    results = []
    for case in tqdm(cases, desc="scoring", unit="case"):
        if isinstance(case, FailedCase):
            results.append(CaseResult(case.name, "", None, None, errors={"request": case.error}))
        else:
            results.append(evaluator.evaluate(case))
    written = write_report(args.out, results, evaluator.description, evaluator.skipped)
    print(written["markdown"].read_text())
    print(f"wrote {written['markdown']}, {written['json']} and {args.out / 'plots'}", file=sys.stderr)
    return 0


def _settings_insightface_root() -> str | None:
    from lipsync.contract.settings import get_settings

    root = get_settings().insightface_root
    return str(root) if root else None
