"""``lipsync data prepare SRC OUT`` and ``lipsync train CONFIG`` (added to ``lipsync.cli``; nothing heavy is
imported until a command runs, so ``lipsync api`` stays torch-free)."""

from __future__ import annotations

import argparse
import json
import sys


def _prepare(args: argparse.Namespace) -> None:
    from lipsync.training.prepare import PrepareOptions, format_summary, prepare

    given = dict(crop_size=args.size, fps=args.fps, max_frames=args.max_frames, min_coverage=args.min_coverage,
                 clips_per_shard=args.clips_per_shard, val_fraction=args.val_fraction, identity=args.identity,
                 workers=args.workers)
    from lipsync.contract.settings import get_settings

    root = get_settings().insightface_root
    given["insightface_root"] = str(root) if root else None
    options = PrepareOptions(**{k: v for k, v in given.items() if v is not None})  # None: PrepareOptions' default
    summary = prepare(args.src, args.out, options, progress=not args.no_progress)
    print(format_summary(summary))


def _train(args: argparse.Namespace) -> None:
    from lipsync.training.config import load_train_config
    from lipsync.training.trainer import train

    config = load_train_config(args.config, output_dir=args.output_dir, data=args.data)
    result = train(config, resume=args.resume, max_steps=args.stop_at)
    print(json.dumps({"output_dir": str(result.output_dir), "checkpoint": str(result.last_checkpoint),
                      "steps": len(result.losses), "seconds": round(result.seconds, 1),
                      "last_loss": result.losses[-1][1] if result.losses else None}), file=sys.stdout)


def add_training_commands(sub, common: argparse.ArgumentParser) -> None:
    data = sub.add_parser("data", parents=[common], help="training data: `lipsync data prepare SRC OUT`")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prep = data_sub.add_parser("prepare", parents=[common], help="clips -> WebDataset training shards")
    prep.add_argument("src", help="a folder of clips (searched recursively) or a .txt list of paths")
    prep.add_argument("out", help="output folder (re-run with the same folder to resume)")
    prep.add_argument("--size", type=int, help="working size of the crops (default 512; 64 for tiny)")
    prep.add_argument("--fps", type=int, help="training frame rate (default 25)")
    prep.add_argument("--max-frames", type=int, help="frames kept per clip (default 750)")
    prep.add_argument("--min-coverage", type=float, help="share of frames with a face (default 0.5)")
    prep.add_argument("--clips-per-shard", type=int, help="default 64")
    prep.add_argument("--val-fraction", type=float, help="share of identities held out (default 0.05)")
    prep.add_argument("--identity", choices=["file", "parent"],
                      help="what one identity is, for the train/val split")
    prep.add_argument("--workers", type=int, help="processes (default: CPUs - 1)")
    prep.add_argument("--no-progress", action="store_true")
    prep.set_defaults(func=_prepare)

    train = sub.add_parser("train", parents=[common], help="train the pipio model (run under `accelerate launch`)")
    train.add_argument("config", help="training config JSON (configs/training/*.json)")
    train.add_argument("--resume", help="'latest' or a checkpoint folder")
    train.add_argument("--output-dir", help="overrides the config's output_dir")
    train.add_argument("--data", help="overrides the config's data folder")
    train.add_argument("--stop-at", type=int, help="stop (and checkpoint) at this step; the LR schedule still "
                                                   "spans max_steps")
    train.set_defaults(func=_train)
