"""The ``lipsync`` command: ``lipsync api`` runs the HTTP API, ``lipsync worker`` one GPU worker, and
``lipsync serve`` all of it (with a private Redis) on one machine.

Configuration comes from ``LIPSYNC_*`` environment variables (README lists them); flags cover only what
differs between processes on one host.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _api(args: argparse.Namespace) -> None:
    import uvicorn

    from lipsync.contract.settings import get_settings
    from lipsync.server.app import create_app

    # Several processes need an import string (each builds its own app); one process takes the app itself.
    target = "lipsync.server.app:create_app" if args.workers > 1 else create_app(get_settings())
    uvicorn.run(
        target,
        factory=args.workers > 1,
        workers=args.workers,
        host=args.host,
        port=args.port,
        log_level=args.log_level.lower(),
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )


def _worker(args: argparse.Namespace) -> None:
    from lipsync.contract.settings import get_settings

    settings = get_settings()  # a bad value stops here, before the model stack is imported
    from lipsync.worker.worker import run_worker  # imports the model stack: keep it out of `lipsync api`

    run_worker(settings, name=args.name, queues=args.queue or None, burst=args.burst)


def _serve(args: argparse.Namespace) -> None:
    from lipsync.cli.serve import serve

    serve(args.host, args.port, Path(args.data_dir), args.log_level)


def _run(args: argparse.Namespace) -> None:
    from lipsync.contract.settings import get_settings
    from lipsync.cli.run import parse_sets, run

    sys.exit(run(args.video, args.audio, Path(args.out), parse_sets(args.set or []), get_settings()))


def _eval(args: argparse.Namespace) -> None:
    from lipsync.cli.evaluate import run

    sys.exit(run(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lipsync", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    api = sub.add_parser("api", parents=[common], help="run the HTTP API (fal queue protocol)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--workers", type=int, default=1, help="API processes (all stateless; Redis holds the state)")
    api.add_argument("--ssl-certfile", help="serve HTTPS with this certificate (PEM)")
    api.add_argument("--ssl-keyfile", help="the certificate's private key (PEM)")
    api.set_defaults(func=_api)

    serve = sub.add_parser("serve", parents=[common], help="API + one worker + a private redis-server, one command")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--data-dir", default="./data", help="redis data, storage and logs (default ./data)")
    serve.set_defaults(func=_serve)

    run = sub.add_parser("run", parents=[common], help="run one request in this process (no server, no Redis)")
    run.add_argument("--video", required=True, help="video or image file (or an http(s) URL)")
    run.add_argument("--audio", required=True, help="audio file, or a video whose audio track to use")
    run.add_argument("--out", required=True, help="where to write the MP4")
    run.add_argument("--set", action="append", metavar="FIELD=VALUE",
                     help="any input field, e.g. --set num_frames=50 --set seed=7 (repeatable)")
    run.set_defaults(func=_run)

    from lipsync.cli.evaluate import add_arguments as add_eval_arguments  # argparse only: no torch at import

    evaluate = sub.add_parser("eval", parents=[common], help="score outputs (LSE-C/LSE-D, CSIM, PSNR/SSIM), or a live server")
    add_eval_arguments(evaluate)
    evaluate.set_defaults(func=_eval)

    worker = sub.add_parser("worker", parents=[common], help="run one worker (loads the pipeline once, then serves jobs)")
    worker.add_argument("--name", help="unique, stable worker name, e.g. $(hostname)-gpu0")
    worker.add_argument("--queue", action="append", help="queue to serve (repeatable); default: every app's")
    worker.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    worker.set_defaults(func=_worker)

    from lipsync.cli.train import add_training_commands  # `lipsync data prepare`, `lipsync train`

    add_training_commands(sub, common)

    from lipsync.cli.weights import add_arguments as add_weights_commands  # `lipsync weights fetch|check`

    add_weights_commands(sub, common)
    return parser


def main(argv: list[str] | None = None) -> None:
    from pydantic import ValidationError

    from lipsync.contract.settings import Settings, describe_errors

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if args.command in ("api", "worker", "serve", "run"):
            Settings()  # every setting checked at start, whatever the command reads first
        args.func(args)
    except ValidationError as exc:
        if exc.title != Settings.__name__:
            raise
        print(f"lipsync: bad configuration\n{describe_errors(exc)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
