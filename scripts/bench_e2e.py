"""End-to-end benchmark through the official Python client: K requests against a server with W workers.

Starts redis-server + the API + W workers on 127.0.0.1 (like the tests) with the given pipeline, submits K
requests of a real face clip and espeak-ng speech, and prints per request the queue wait, each stage's time
(as the pipeline reports them in the completed status's metrics) and the total, then throughput:

    .venv/bin/python scripts/bench_e2e.py --requests 8 --workers 2                     # the lip-sync pipeline
    .venv/bin/python scripts/bench_e2e.py --pipeline lipsync.testing.pipelines:reencode          # the serving stack alone

Extra LIPSYNC_* settings pass through the environment (e.g. LIPSYNC_WEIGHTS_DIR, LIPSYNC_DEVICE).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fal_client  # noqa: E402

from lipsync.client import point_fal_client  # noqa: E402
from lipsync.testing.media import make_face_video, make_speech  # noqa: E402
from lipsync.testing.stack import API_KEYS, make_stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pipeline", default="lipsync")
    parser.add_argument("--frames", type=int, default=25)
    parser.add_argument("--size", default="256x192", help="WxH of the input clip")
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        video = make_face_video(Path(tmp) / "face.mp4", frames=args.frames, size=(width, height))
        audio = make_speech(Path(tmp) / "speech.wav")
        stack = make_stack(Path(tmp) / "stack", pipeline=args.pipeline)
        try:
            stack.start_api("--log-level", "WARNING")
            t0 = time.perf_counter()
            for i in range(args.workers):
                stack.start_worker(f"bench-w{i + 1}")
            print(f"{args.workers} workers ready in {time.perf_counter() - t0:.1f} s (pipeline {args.pipeline})")
            point_fal_client(stack.base_url)
            client = fal_client.SyncClient(key=f"alice:{API_KEYS['alice']}")
            inputs = {"video": client.upload_file(video), "audio": client.upload_file(audio),
                      "num_frames": args.frames}
            started = time.perf_counter()
            handles = [(time.perf_counter(), client.submit("pipio/lipsync", inputs)) for _ in range(args.requests)]
            for submitted_at, handle in handles:
                result = handle.get()
                total = time.perf_counter() - submitted_at
                status = client.status("pipio/lipsync", handle.request_id, with_logs=False)
                metrics = status.metrics or {}
                if status.error:
                    print(f"  {handle.request_id[:8]} ERROR {status.error_type}: {status.error}")
                    continue
                stages = "  ".join(f"{k.removesuffix('_time')} {v:.2f}" for k, v in metrics.items()
                                   if k.endswith("_time") and k != "total_time")
                print(f"  {handle.request_id[:8]} total {total:6.2f} s | {stages} | {result['video']['file_size']} B")
            wall = time.perf_counter() - started
            print(f"throughput: {args.requests} requests in {wall:.1f} s = {args.requests / wall:.2f} requests/s "
                  f"({args.requests * args.frames / wall:.1f} output frames/s)")
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
