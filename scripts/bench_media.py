"""Benchmark the media pipeline: decode + face track + crop + paste-back + encode on 720p clips.

Makes a 10 s and a 60 s 1280x720 25 fps clip (the astronaut face panning, with audio) with the ffmpeg CLI,
then runs each through the pipeline in its own process and prints its peak RSS and frames per second.
Memory must stay flat: the 60 s peak has to be within 1.5x the 10 s peak (exit status 1 otherwise).

    .venv/bin/python scripts/bench_media.py [--seconds 10 60] [--crop 512] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_clip(path: Path, seconds: int) -> None:
    """A 720p clip of a real face panning and zooming slowly, with a tone as its audio."""
    import cv2
    import skimage.data

    still = path.parent / "astronaut.png"
    if not still.exists():
        cv2.imwrite(str(still), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    vf = "scale=1400:1400,crop=1280:720:'60+50*sin(t/2)':'120+60*sin(t/3)',format=yuv420p"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-loop", "1", "-framerate", "25", "-i", str(still),
         "-f", "lavfi", "-i", "sine=frequency=220:sample_rate=48000", "-t", str(seconds), "-vf", vf,
         "-c:v", "libx264", "-preset", "ultrafast", "-crf", "20", "-c:a", "aac", "-ac", "2", str(path)],
        check=True,
    )


def run_pipeline(src: Path, out: Path, crop: int) -> dict[str, float]:
    """Both passes, streaming; returns timings, frame count and this process's peak RSS."""
    from lipsync.contract.settings import Settings
    from lipsync.media.audio import load_audio
    from lipsync.media.crop import crop_faces
    from lipsync.media.faces import track_faces
    from lipsync.media.paste import paste_faces
    from lipsync.media.probe import probe_video, resolve_output_spec
    from lipsync.media.video import iter_video_chunks
    from lipsync.media.writer import Mp4Writer

    t0 = time.perf_counter()
    info = probe_video(src)
    spec = resolve_output_spec(info, num_frames=10**6)
    track = track_faces(iter_video_chunks(src, spec)).require_face()
    t1 = time.perf_counter()
    audio = load_audio(src, max_seconds=track.num_frames / float(spec.fps) + 1)
    done = 0
    nvenc = Settings().nvenc  # LIPSYNC_NVENC, as the worker reads it
    with Mp4Writer(out, fps=spec.fps, width=spec.width, height=spec.height, audio=audio, nvenc=nvenc) as writer:
        for chunk in iter_video_chunks(src, spec):
            idx = list(range(done, done + len(chunk)))
            crops, _ = crop_faces(chunk, track, idx, crop)
            writer.write(paste_faces(chunk, crops, track, idx))
            done += len(chunk)
    t2 = time.perf_counter()
    return {
        "frames": done,
        "coverage": track.coverage,
        "track_s": t1 - t0,
        "paste_encode_s": t2 - t1,
        "fps": done / (t2 - t0),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, nargs="+", default=[10, 60])
    parser.add_argument("--crop", type=int, default=512, help="face crop resolution (the model's working size)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # child mode: run one clip, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_pipeline(args.one, args.one.with_suffix(".out.mp4"), args.crop)))
        return 0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_media_"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = {}
    for seconds in args.seconds:
        clip = workdir / f"clip_{seconds}s.mp4"
        if not clip.exists():
            make_clip(clip, seconds)
        proc = subprocess.run(
            [sys.executable, __file__, "--one", str(clip), "--crop", str(args.crop)],
            check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results[seconds] = r
        print(
            f"{seconds:>3d} s 720p: {r['frames']} frames, {r['fps']:.1f} frames/s overall "
            f"(track {r['track_s']:.1f} s, crop+paste+encode {r['paste_encode_s']:.1f} s), "
            f"face coverage {100 * r['coverage']:.0f}%, peak RSS {r['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    if len(results) >= 2:
        short, long = min(results), max(results)
        ratio = results[long]["peak_rss_mb"] / results[short]["peak_rss_mb"]
        ok = ratio <= 1.5
        print(f"peak RSS {long} s / {short} s = {ratio:.2f} ({'OK' if ok else 'FAIL'}: limit 1.5)")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
