"""Benchmark the worker pipeline's stages, old code against new in one run, as ratios.

For each case (size x seconds of 25 fps video of a real face) and each code tree (``new`` = this checkout,
``old`` = another checkout, e.g. ``git worktree add /tmp/old 8659ffd``), one request runs through
the lip-sync pipeline (``lipsync.worker.orchestration``) in its own process (same venv, ``PYTHONPATH`` = that tree) and the script prints
the request's wall time, each stage's frames/s, the CPU stages' time (wall minus model) and the process's
peak RSS; then the new/old ratios, and checks that both outputs agree (frame count, fps, size, audio) and
how close their paste-back is (PSNR of each output against the input, and of the two outputs).

    git worktree add /tmp/old 8659ffd
    .venv/bin/python scripts/bench_stages.py --old /tmp/old --cases 1080x1920:10            # acceptance 1
    .venv/bin/python scripts/bench_stages.py --old /tmp/old --cases 720x1280:10 720x1280:60 1080x1920:10 1080x1920:60
    .venv/bin/python scripts/bench_stages.py --cases 1080x1920:10 1080x1920:60                # new code only
    .venv/bin/python scripts/bench_stages.py --cases 1080x1920:10 --extra '{"speaker": "auto"}'  # a field's cost
    .venv/bin/python scripts/bench_stages.py --repeat --engines pipio musetalk latentsync --cases 1080x1920:10

``--repeat``: one video, many voices (``lipsync.worker.video_cache``). Per engine (random weights of
``--weights-size`` in its published layout; pipio: the tiny config), one worker process with a fresh cache runs
the same clip twice with two different audio tracks, and the script prints the first and the repeated request:
wall time, CPU stages (wall - model), face tracking, crops, the image encoder's time, the output phase (when the
engine gave its first crops, paste, encode, the tail after its last crops, stage threads' CPU), and the
repeated/first ratios. Also, labelled apart from the goal's measure: the output encode alone (the clip's frames
from memory through ``Mp4Writer``), and the same two requests without the output encode (``--skip-no-encode``:
not run).

The model is the engine the settings select (``LIPSYNC_*`` pass through; default the tiny pipio config with
random weights, so the model costs almost nothing and the CPU stages dominate).
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
FPS = 25


# ---------------------------------------------------------------------------------------------------- child
def child(video: Path, audio: Path, out: Path, frames: int) -> None:
    """One request through the pipeline of whatever tree PYTHONPATH points at; prints one JSON line."""
    import shutil

    try:
        from lipsync.contract.schema import STORAGE_SCHEME, LipsyncInput, validate_input
        from lipsync.contract.settings import Settings
        from lipsync.worker.job import LocalFile, PipelineJob, load_pipeline
    except ModuleNotFoundError:  # an old tree, from before the one-package layout (the "old" side of a comparison)
        from contract.schema import STORAGE_SCHEME, LipsyncInput, validate_input
        from contract.settings import Settings
        from worker.pipeline import LocalFile, PipelineJob, load_pipeline

    settings = Settings()
    t0 = time.perf_counter()
    pipeline = load_pipeline("lipsync", settings)
    load_s = time.perf_counter() - t0
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    body = {"video": STORAGE_SCHEME + "local/video", "audio": STORAGE_SCHEME + "local/audio", "num_frames": frames,
            **json.loads(os.environ.get("LIPSYNC_BENCH_EXTRA") or "{}")}
    context = {"internal": True, "max_num_frames": max(frames, settings.max_num_frames),
               "max_prompt_chars": settings.max_prompt_chars}
    params = validate_input(LipsyncInput, body, context)
    workdir = Path(tempfile.mkdtemp(prefix="bench-stages-"))
    job = PipelineJob(request_id="bench", params=params,
                      inputs={"video": LocalFile(video, "video/mp4"), "audio": LocalFile(audio, "audio/wav")},
                      workdir=workdir, log=lambda *a: None, progress=lambda *a: None)
    audios = [audio] + [Path(a) for a in os.environ.get("LIPSYNC_BENCH_MORE_AUDIO", "").split(os.pathsep) if a]
    null_from = int(os.environ.get("LIPSYNC_BENCH_NULL_ENCODE_FROM") or len(audios))
    for k, voice in enumerate(audios):  # --repeat: the same video again with each further voice
        job.inputs["audio"] = LocalFile(voice, "audio/wav")
        if k == null_from:  # the same again without the output encode, from a cold cache
            _null_encoder()
            cache = getattr(pipeline, "cache", None)
            for entry in [] if cache is None else cache.directory.glob("*.lsc"):
                entry.unlink()
        t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        result = pipeline(job)
        wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        shutil.move(str(result.files["video"].path), out if k == 0 else out.with_suffix(f".{k}.mp4"))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"wall_s": wall, "cpu_s": cpu, "load_s": load_s, "rss_loaded_mb": rss_loaded,
                          "peak_rss_mb": peak, "metrics": result.metrics}), flush=True)
    shutil.rmtree(workdir, ignore_errors=True)


def _null_encoder() -> None:
    """Replace the worker's MP4 writer by one that takes the frames and encodes nothing (and writes an empty
    file): what the request costs without the output encode (a GPU host encodes with NVENC)."""
    import lipsync.media.writer as writer

    class NullWriter:
        encoder_name = "none (benchmark: no output encode)"

        def __init__(self, path, *, fps, width, height, **_):
            self.path, self.fps, self.width, self.height, self.frames = path, fps, width, height, 0
            self.result = None

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            Path(self.path).write_bytes(b"")
            self.result = writer.WrittenVideo(str(self.path), self.frames, self.fps, self.width, self.height, 0, None)

        def write_i420(self, frames):
            self.frames += 1 if frames.ndim == 2 else len(frames)

    writer.Mp4Writer = NullWriter


def encode_alone(video: Path, frames: int) -> dict[str, float]:
    """The output encode by itself: the clip's first ``frames`` frames decoded to I420 in memory first, then
    written by the worker's ``Mp4Writer`` (libx264 at its preset and CRF, its own threads; NVENC where the
    settings and the host have it), timed: wall and process CPU seconds."""
    import av
    import numpy as np

    from lipsync.contract.settings import Settings
    from lipsync.media.writer import Mp4Writer

    with av.open(str(video)) as c:
        s = c.streams.video[0]
        planes = [f.to_ndarray(format="yuv420p") for _, f in zip(range(frames), c.decode(s))]
        width, height = s.width, s.height
    planes = np.stack(planes)
    with tempfile.TemporaryDirectory() as tmp:
        t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        with Mp4Writer(Path(tmp) / "x.mp4", fps=FPS, width=width, height=height, nvenc=Settings().nvenc) as w:
            for k in range(0, len(planes), 5):
                w.write_i420(planes[k : k + 5])
        wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "frames": len(planes), "encoder": w.encoder_name,
            "size": f"{width}x{height}"}


# ---------------------------------------------------------------------------------------------------- parent
def make_clip(path: Path, width: int, height: int, seconds: int) -> None:
    """A portrait/landscape clip of the astronaut's face panning slowly (H.264 via the ffmpeg CLI: fast)."""
    import cv2
    import skimage.data

    still = path.parent / "astronaut.png"
    if not still.exists():
        cv2.imwrite(str(still), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    side = int(max(width, height) * 1.1)
    vf = (f"scale={side}:{side},crop={width}:{height}:'{(side - width) // 2}+{side // 40}*sin(t/2)':"
          f"'{(side - height) // 2}+{side // 30}*sin(t/3)',format=yuv420p")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-loop", "1", "-framerate", str(FPS), "-i", str(still),
                    "-t", str(seconds), "-vf", vf, "-c:v", "libx264", "-preset", "veryfast", "-crf", "18",
                    str(path)], check=True)


def run_child(tree: Path, video: Path, audio: Path, out: Path, frames: int, extra: str = "",
              env_extra: dict[str, str] | None = None, requests: int = 1):
    """One request (a dict), or with ``requests`` > 1 that many in one worker process (a list)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONUNBUFFERED": "1", "LIPSYNC_BENCH_EXTRA": extra,
           **(env_extra or {})}
    env.setdefault("LIPSYNC_DEVICE", "cpu")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(video), str(audio), str(out), str(frames)]
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"child in {tree} failed:\n{proc.stderr[-4000:]}")
    lines = [json.loads(line) for line in proc.stdout.strip().splitlines()[-requests:]]
    return lines[0] if requests == 1 else lines


# ---------------------------------------------------------------------------------------------------- --repeat
REPEAT_STAGES = ("cache_key_time", "probe_time", "face_track_time", "face_id_time", "crop_time", "encoder_time",
                 "model_time", "paste_encode_time")


OUTPUT_STAGES = ("audio_time", "model_first_out_time", "paste_time", "encode_time", "output_tail_time",
                 "cpu_decode_paste_time", "cpu_paste_time", "cpu_model_time")
"""Finer timing of pass 2 (the output phase): when the engine gave its first crops (from the request's start),
the paste and the encode (each stage's wall time, overlapped), the tail after the engine's last crops, and the
CPU seconds of the stage threads (the encoder's own threads not included)."""


VIDEO_SIDE = ("cache_key_time", "probe_time", "face_track_time", "face_id_time", "crop_time", "encoder_time")
"""What the cache serves (``cache_key``: hashing the video, the cache's own cost)."""


def _cpu_stages(r: dict) -> float:
    """Wall time less the engine's audio-driven work: the model's time without its image encoder (which is
    video side, run inside ``generate``)."""
    m = r["metrics"]
    return r["wall_s"] - (m.get("model_time", 0.0) - m.get("encoder_time", 0.0))


def repeat_line(name: str, r: dict, frames: int) -> str:
    m = r["metrics"]
    cpu = _cpu_stages(r)
    stages = "  ".join(f"{k.removesuffix('_time')} {m[k]:6.2f}" if k in m else f"{k.removesuffix('_time')}     -"
                       for k in REPEAT_STAGES)
    reused = ",".join(m.get("cache_reused", [])) or "-"
    detail = "  ".join(f"{k.removesuffix('_time')} {m[k]:6.2f}" for k in OUTPUT_STAGES if k in m)
    return (f"  {name:6s} wall {r['wall_s']:7.2f} s | CPU stages (wall - model + encoder) {cpu:7.2f} s | {stages} s | "
            f"encoder calls {m.get('encoder_calls', 0)} | reused {reused}\n"
            f"  {'':6s} output phase: {detail} s | process CPU {r['cpu_s']:6.1f} s")


def case_clip(args, case: str) -> tuple[int, int, str, int, Path]:
    """``WxH:seconds`` -> (width, height, seconds, frames, the face clip, made once under ``--clips``)."""
    size, seconds = case.split(":")
    width, height = map(int, size.split("x"))
    video = args.clips / f"face-{width}x{height}-{seconds}s.mp4"
    if not video.exists():
        make_clip(video, width, height, int(seconds))
    return width, height, seconds, int(seconds) * FPS, video


def repeat_main(args, audio: Path, other: Path) -> None:
    """First vs repeated request (same clip, another voice) per engine, each engine in its own worker process."""
    from lipsync.model.weights import write_random_weights

    for case in args.cases:
        width, height, seconds, frames, video = case_clip(args, case)
        print(f"{width}x{height}, {seconds} s = {frames} frames, first vs repeated request (video-side cache):",
              flush=True)
        encode = encode_alone(video, frames)
        print(f"  the output encode alone ({encode['encoder']}, {encode['frames']} I420 frames {encode['size']} "
              f"from memory through lipsync.media.writer.Mp4Writer): wall {encode['wall_s']:.2f} s, process CPU "
              f"{encode['cpu_s']:.2f} s ({1000 * encode['cpu_s'] / encode['frames']:.1f} ms a frame)", flush=True)
        for engine in args.engines:
            env = {"LIPSYNC_ENGINE": engine, "LIPSYNC_CACHE_BYTES": str(8 << 30)}
            if engine != "pipio":
                weights = args.clips / f"weights-{engine}-{args.weights_size}"
                if not weights.exists():
                    write_random_weights(engine, weights, size=args.weights_size)
                env["LIPSYNC_WEIGHTS_DIR"] = str(weights)
            more = [other] if args.skip_no_encode else [other, audio, other]  # the last two: no output encode
            with tempfile.TemporaryDirectory() as tmp:
                env |= {"LIPSYNC_CACHE_DIR": str(Path(tmp) / "cache"),
                        "LIPSYNC_BENCH_MORE_AUDIO": os.pathsep.join(map(str, more)),
                        "LIPSYNC_BENCH_NULL_ENCODE_FROM": "2"}
                first, repeat, *no_encode = run_child(ROOT, video, audio, Path(tmp) / "out.mp4", frames,
                                                      env_extra=env, requests=1 + len(more))
            print(f"  {engine} ({first['metrics'].get('engine')}, {first['metrics'].get('model')}):")
            print(repeat_line("first", first, frames))
            print(repeat_line("repeat", repeat, frames))
            if no_encode:
                print("  without the output encode (the same two requests again, the encoder replaced by one that "
                      "takes the frames and encodes nothing; a GPU host encodes with NVENC):")
                print(repeat_line("first", no_encode[0], frames))
                print(repeat_line("repeat", no_encode[1], frames))
            cpu = [_cpu_stages(r) for r in (first, repeat)]
            enc = [r["metrics"].get("encoder_time", 0.0) for r in (first, repeat)]
            side = [sum(r["metrics"].get(k, 0.0) for k in VIDEO_SIDE) for r in (first, repeat)]
            print(f"  {engine}: video-side stages ({' + '.join(k.removesuffix('_time') for k in VIDEO_SIDE)}) "
                  f"{side[0]:.2f} s -> {side[1]:.2f} s")
            print(f"  {engine}: repeated/first: CPU stages {cpu[0] / cpu[1]:.2f}x faster "
                  f"({'meets' if cpu[0] / cpu[1] >= 3 else 'BELOW'} the 3x goal), "
                  f"wall {first['wall_s'] / repeat['wall_s']:.2f}x "
                  f"faster; image encoder {enc[0]:.2f} s -> {enc[1]:.2f} s; metrics' time saved "
                  f"{repeat['metrics'].get('cache_saved_time', 0.0):.2f} s", flush=True)
            if no_encode:
                cpu = [_cpu_stages(r) for r in no_encode]
                print(f"  {engine}: repeated/first WITHOUT the output encode (not the goal's measure): CPU stages "
                      f"{cpu[0]:.2f} s -> {cpu[1]:.2f} s, {cpu[0] / cpu[1]:.2f}x faster; with it (the goal's "
                      f"measure, above): the encode alone is {encode['wall_s']:.2f} s of wall time", flush=True)


def iter_frames(path: Path):
    import av

    with av.open(str(path)) as c:
        for frame in c.decode(c.streams.video[0]):
            yield frame.to_ndarray(format="rgb24")


def video_info(path: Path) -> tuple[int, int, int, float]:
    """(frames, width, height, fps) by decoding (not trusting the header)."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        n = sum(1 for _ in c.decode(s))
        return n, s.width, s.height, float(s.average_rate)


def read_audio(path: Path):
    import av
    import numpy as np

    with av.open(str(path)) as c:
        if not c.streams.audio:
            return None
        return np.concatenate([f.to_ndarray() for f in c.decode(c.streams.audio[0])], axis=-1)


def _psnr(sq_err: float, count: int) -> float:
    import numpy as np

    return float("inf") if sq_err == 0 else float(10 * np.log10(255.0**2 / (sq_err / count)))


def compare(video: Path, outputs: dict[str, Path], frames: int) -> dict[str, str]:
    """Frame count, fps, size, audio of each output; PSNR against the input and between the outputs (streamed:
    one frame of each at a time)."""
    import numpy as np

    names = list(outputs)
    streams = [iter_frames(video)] + [iter_frames(outputs[n]) for n in names]
    err = {n: 0.0 for n in names}
    both, count = 0.0, 0
    for _, source, *outs in zip(range(frames), *streams):
        src = source.astype(np.float32)
        for n, out in zip(names, outs):
            err[n] += float(((out.astype(np.float32) - src) ** 2).sum())
        if len(outs) == 2:
            both += float(((outs[0].astype(np.float32) - outs[1]) ** 2).sum())
        count += source.size
    lines, infos = {}, {n: video_info(outputs[n]) for n in names}
    for n in names:
        f, w, h, fps = infos[n]
        lines[n] = f"{f} frames {w}x{h} @ {fps:g} fps, PSNR vs input {_psnr(err[n], count):.2f} dB"
    if len(names) == 2:
        audio = [read_audio(outputs[n]) for n in names]
        same_audio = (audio[0] is None and audio[1] is None) or (
            audio[0] is not None and audio[1] is not None and audio[0].shape == audio[1].shape
            and float(np.abs(audio[0] - audio[1]).max()) < 1e-4)
        same = infos[names[0]] == infos[names[1]]
        lines[f"{names[0]} vs {names[1]}"] = (f"frames/size/fps {'same' if same else 'DIFFER'}, audio "
                               f"{'same' if same_audio else 'DIFFERS'}, PSNR(new, old) {_psnr(both, count):.2f} dB")
    return lines


STAGES = ("face_track_time", "face_id_time", "crop_time", "model_time", "paste_encode_time")


def report(name: str, r: dict, frames: int) -> str:
    m = r["metrics"]
    cpu = r["wall_s"] - m.get("model_time", 0.0)
    stages = "  ".join(f"{k.removesuffix('_time')} {frames / m[k]:6.0f}/s" if m.get(k) else
                       f"{k.removesuffix('_time')}      -  " for k in STAGES)
    return (f"  {name:4s} wall {r['wall_s']:7.2f} s ({frames / r['wall_s']:5.1f} frames/s), "
            f"CPU time {r['cpu_s']:6.1f} s "
            f"| CPU stages "
            f"{cpu:7.2f} s ({frames / cpu:5.1f} frames/s) | {stages} | peak RSS {r['peak_rss_mb']:6.0f} MB "
            f"(after load {r['rss_loaded_mb']:.0f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=4, metavar=("VIDEO", "AUDIO", "OUT", "FRAMES"), help=argparse.SUPPRESS)
    parser.add_argument("--old", type=Path, help="checkout of the code to compare against (a git worktree)")
    parser.add_argument("--cases", nargs="+", default=["1080x1920:10"], help="WxH:seconds at 25 fps")
    parser.add_argument("--clips", type=Path, default=Path(tempfile.gettempdir()) / "bench-stages-clips",
                        help="where the input clips are made once and reused")
    parser.add_argument("--repeat", action="store_true", help="first vs repeated request per engine (the "
                        "video-side cache), instead of old vs new")
    parser.add_argument("--engines", nargs="+", default=["pipio"], help="--repeat: engines to run")
    parser.add_argument("--weights-size", default="small", help="--repeat: random weights size (small|published)")
    parser.add_argument("--skip-no-encode", action="store_true", help="--repeat: skip the two requests without the "
                        "output encode")
    parser.add_argument("--extra", default="", help="JSON of request fields: each case runs again on this "
                        "checkout with them ('new+extra'), and the cost of the fields is printed")
    args = parser.parse_args()
    if args.child:
        video, audio, out, frames = args.child
        return child(Path(video), Path(audio), Path(out), int(frames))

    sys.path.insert(0, str(ROOT))
    from lipsync.testing.media import make_speech

    args.clips.mkdir(parents=True, exist_ok=True)
    audio = args.clips / "speech.wav"
    if not audio.exists():
        make_speech(audio)
    if args.repeat:
        other = args.clips / "speech-other.wav"
        if not other.exists():
            make_speech(other, "Another voice says something else entirely, in about as many words.")
        return repeat_main(args, audio, other)
    trees = {"new": ROOT} | ({"old": args.old.resolve()} if args.old else {}) | ({"new+extra": ROOT} if args.extra else {})
    peaks: dict[tuple[str, str], dict[int, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            width, height, seconds, frames, video = case_clip(args, case)
            print(f"{width}x{height}, {seconds} s = {frames} frames:", flush=True)
            results, outputs = {}, {}
            for name, tree in trees.items():
                outputs[name] = Path(tmp) / f"{name}-{width}x{height}-{seconds}.mp4"
                results[name] = run_child(tree, video, audio, outputs[name], frames,
                                          args.extra if name == "new+extra" else "")
                print(report(name, results[name], frames), flush=True)
                peaks.setdefault((name, f"{width}x{height}"), {})[int(seconds)] = results[name]["peak_rss_mb"]
            if "old" in results:
                new, old = results["new"], results["old"]
                cpu = [r["wall_s"] - r["metrics"].get("model_time", 0.0) for r in (old, new)]
                print(f"  speed-up new/old: wall {old['wall_s'] / new['wall_s']:.2f}x, CPU stages (wall - model) "
                      f"{cpu[0] / cpu[1]:.2f}x, CPU time {old['cpu_s'] / new['cpu_s']:.2f}x; peak RSS "
                      f"{new['peak_rss_mb'] / old['peak_rss_mb']:.2f}x")
            if "new+extra" in results:
                plain, extra = results["new"], results["new+extra"]
                cpu = [r["wall_s"] - r["metrics"].get("model_time", 0.0) for r in (plain, extra)]
                print(f"  cost of {args.extra}: CPU stages (wall - model) {cpu[1] / cpu[0]:.3f}x, CPU time "
                      f"{extra['cpu_s'] / plain['cpu_s']:.3f}x, wall {extra['wall_s'] / plain['wall_s']:.3f}x")
            for name, line in compare(video, outputs, frames).items():
                print(f"  {name}: {line}")
    for (name, size), by_len in peaks.items():
        if len(by_len) > 1:
            short, long = min(by_len), max(by_len)
            ratio = by_len[long] / by_len[short]
            print(f"peak RSS {name} {size}: {long} s / {short} s = {ratio:.2f}x "
                  f"({'flat' if ratio <= 1.3 else 'NOT flat'}: the target is <= 1.3x)")


if __name__ == "__main__":
    main()
