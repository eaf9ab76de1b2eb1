"""Frames/s of each lip-sync engine, alone and end to end, at the published network sizes (random weights).

Per engine (table ``ENGINES``: engine name → a writer of a random-weights folder in its published layout at the
published sizes), this script

1. writes that folder once (cached under ``--cache``) and loads it the way a worker does
   (``lipsync.worker.orchestration``, engine detected from the folder);
2. **engine alone**: ``engine.generate`` on ready crops + audio, ``--batch`` frames per UNet/VAE call, after one
   warm-up batch; frames/s;
3. **end to end** for each ``--sizes`` portrait clip (the astronaut's face, ``--seconds`` at 25 fps): one request
   through the worker pipeline in this process (probe, decode, face track, audio, crops, engine, paste-back,
   H.264 encode), ``--frames`` output frames; frames/s of the whole request, of the model, and of everything
   but the model (the CPU stages: what holds a fast GPU back).

On CPU the published networks take seconds per frame, so by default only a few frames are timed there
(``--frames``; the figures say how many); on a GPU the whole clip is. Random weights: the output is noise
and the speed is the trained model's.

    .venv/bin/python scripts/bench_engines.py                                  # CPU, MuseTalk, 4 frames
    .venv/bin/python scripts/bench_engines.py --device cuda --dtype fp16       # whole 10 s clips, batch 16
    .venv/bin/python scripts/bench_engines.py --engines musetalk --weights DIR --frames 250 --measure e2e
        # a whole 10 s clip on small random weights (lipsync/model/musetalk/random_weights.py): the CPU stages' rate
    .venv/bin/python scripts/bench_engines.py --engines latentsync --steps 1 --measure alone
    .venv/bin/python scripts/bench_engines.py --engines latentsync --steps 2
        # LatentSync 1.6 at full size on a CPU: one denoising step is the difference of the two runs, and the
        # published 20 steps are predicted from it (a 20-step CPU run takes ~15 min a frame)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FPS = 25


def _musetalk_folder(root: Path) -> Path:
    from lipsync.model.musetalk.random_weights import write_random_weights

    return write_random_weights(root, size="published", seed=0)


def _latentsync_folder(root: Path) -> Path:
    from scripts.bench_latentsync import latentsync_folder

    return latentsync_folder(root)


ENGINES: dict[str, Callable[[Path], Path]] = {
    "musetalk": _musetalk_folder,
    "latentsync": _latentsync_folder,
}
"""Engine name → writes random weights in the published layout at the published network sizes."""


def weights_folder(engine: str, cache: Path) -> Path:
    folder = cache / f"{engine}-published"
    done = folder / ".complete"
    if not done.exists():
        t0 = time.perf_counter()
        ENGINES[engine](folder)
        done.write_text("ok")
        print(f"  wrote random {engine} weights at published sizes to {folder} in {time.perf_counter() - t0:.1f} s",
              flush=True)
    return folder


def load_pipeline(folder: Path, device: str, dtype: str, steps: int | None = None):
    from lipsync.contract.settings import Settings
    from lipsync.worker.orchestration import load_lipsync_pipeline

    t0 = time.perf_counter()
    pipeline = load_lipsync_pipeline(Settings(weights_dir=folder, device=device, dtype=dtype,
                                              num_inference_steps=steps))
    return pipeline, time.perf_counter() - t0


def vae_chunk(batch: int) -> int:
    """The schema's vae_chunk_size is 8n+1: the smallest such value ≥ ``batch``."""
    return 8 * max(1, -(-(batch - 1) // 8)) + 1


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def engine_alone(engine, frames: int, batch: int, device: str, warm: int | None = None) -> float:
    """Frames/s of ``engine.generate`` over ``frames`` crops (after a warm-up of ``warm`` frames, default one
    batch). A whole-frame engine's crops are its bucket for a 16:9 1080p source (InfiniteTalk 480p: 896x448)."""
    import numpy as np

    from lipsync.model.engine import CropBatch, EngineRequest, Knobs

    size = engine.info.crop_size
    shape = (size, size)
    if engine.info.whole_frame:
        from lipsync.model.infinitetalk import crop_rule

        shape = crop_rule.size(1080, 1920, engine.table)
    rng = np.random.default_rng(0)

    def request(n: int) -> EngineRequest:
        t = np.arange(int(n / FPS * 16000)) / 16000
        audio = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2).astype(np.float32)
        knobs = Knobs(frame_block_width=batch, vae_chunk_size=vae_chunk(batch), feed_forward_num_splits=1)
        return EngineRequest(audio=audio, fps=FPS, num_frames=n, generate=np.zeros(n, bool), is_image=False,
                             knobs=knobs, log=lambda m: None, progress=lambda *a: None)

    def batches(n: int):
        crops = rng.integers(0, 256, (min(n, 16), *shape, 3), dtype=np.uint8)
        landmarks = np.zeros((len(crops), 68, 2), np.float32)
        for start in range(0, n, len(crops)):
            k = min(len(crops), n - start)
            yield CropBatch(start, crops[:k], np.ones(k, bool), landmarks[:k])

    warm = min(batch, frames) if warm is None else warm
    for _ in engine.generate(request(warm), batches(warm)):  # warm-up: kernels, allocator, whisper
        pass
    _sync(device)
    t0 = time.perf_counter()
    done = sum(len(out) for out in engine.generate(request(frames), batches(frames)))
    _sync(device)
    return done / (time.perf_counter() - t0)


def end_to_end(pipeline, clip: Path, audio: Path, frames: int, batch: int, workdir: Path) -> dict:
    from lipsync.contract.schema import STORAGE_SCHEME, LipsyncInput, validate_input
    from lipsync.worker.job import LocalFile, PipelineJob

    body = {"video": STORAGE_SCHEME + "local/video", "audio": STORAGE_SCHEME + "local/audio", "num_frames": frames,
            "frame_block_width": batch, "vae_chunk_size": vae_chunk(batch), "vae_overlap_window_width": 0,
            "feed_forward_num_splits": 1}
    context = {"internal": True, "max_num_frames": max(frames, 100_000), "max_prompt_chars": 10_000}
    job = PipelineJob(request_id="bench", params=validate_input(LipsyncInput, body, context),
                      inputs={"video": LocalFile(clip, "video/mp4"), "audio": LocalFile(audio, "audio/wav")},
                      workdir=workdir, log=lambda *a: None, progress=lambda *a: None)
    t0 = time.perf_counter()
    result = pipeline(job)
    wall = time.perf_counter() - t0
    m = result.metrics
    model = m.get("model_time", 0.0)
    return {"frames": m["frames"], "wall_fps": m["frames"] / wall, "model_fps": m["frames"] / max(model, 1e-9),
            "cpu_stages_fps": m["frames"] / max(wall - model, 1e-9), "wall_s": wall, "model_s": model}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto",
                        help="auto | fp32 | fp16 | bf16 (default auto: what a worker runs, each engine's own on CUDA)")
    parser.add_argument("--batch", type=int, default=16, help="frames per UNet and VAE call")
    parser.add_argument("--frames", type=int, default=None,
                        help="output frames timed (default: 4 on CPU, the whole clip on a GPU)")
    parser.add_argument("--steps", type=int, default=None,
                        help="denoising steps (LIPSYNC_NUM_INFERENCE_STEPS) for the diffusion engines; default: the "
                             "published count. On a CPU, time LatentSync at 1 and 2 steps: the difference is one "
                             "step's cost, and 20 steps are predicted from it")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--sizes", nargs="+", default=["720x1280", "1080x1920"], help="WxH of the input clips")
    parser.add_argument("--measure", nargs="+", default=["alone", "e2e"], choices=["alone", "e2e"])
    parser.add_argument("--weights", help="use this weights folder instead of random published-size weights (one "
                                          "engine; e.g. tests' small random weights, to time the CPU stages)")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "lipsync-bench-engines"))
    args = parser.parse_args()
    from scripts.bench_stages import make_clip
    from lipsync.testing.media import make_speech

    import torch

    dtype = args.dtype
    frames = args.frames or (args.seconds * FPS if args.device.startswith("cuda") else 4)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    speech = cache / "speech.wav"
    if not speech.exists():
        make_speech(speech, "This is a benchmark of the lip sync engines, ten seconds of speech or so, read aloud "
                            "slowly by a synthetic voice, so that every frame has something to say.")
    if args.weights and len(args.engines) != 1:
        parser.error("--weights needs exactly one --engines")
    what = f"weights {args.weights}" if args.weights else "random weights at the published sizes"
    print(f"device {args.device} ({torch.get_num_threads()} CPU threads), {dtype}, batch {args.batch}, "
          f"{frames} frames timed per case; {what}", flush=True)
    for engine in args.engines:
        folder = Path(args.weights) if args.weights else weights_folder(engine, cache)
        pipeline, load_s = load_pipeline(folder, args.device, dtype, args.steps)
        name = pipeline.info.name
        steps = getattr(pipeline.engine, "steps", None)
        print(f"{name}: loaded in {load_s:.1f} s" + (f"; {steps} denoising steps" if steps else ""), flush=True)
        if "alone" in args.measure:
            fps = engine_alone(pipeline.engine, frames, args.batch, args.device)
            print(f"{name}: engine alone {fps:8.3f} frames/s ({frames} frames of {pipeline.info.crop_size}² crops, "
                  f"UNet batch {args.batch}, VAE batch {vae_chunk(args.batch)})", flush=True)
        for size in args.sizes if "e2e" in args.measure else []:
            width, height = (int(v) for v in size.split("x"))
            clip = cache / f"face-{width}x{height}-{args.seconds}s.mp4"
            if not clip.exists():
                make_clip(clip, width, height, args.seconds)
            with tempfile.TemporaryDirectory() as tmp:
                r = end_to_end(pipeline, clip, speech, frames, args.batch, Path(tmp))
            print(f"{name}: end to end {width}x{height} {r['wall_fps']:8.3f} frames/s ({r['frames']} frames of a "
                  f"{args.seconds} s clip in {r['wall_s']:.1f} s; model {r['model_fps']:.3f} frames/s, CPU stages "
                  f"{r['cpu_stages_fps']:.2f} frames/s)", flush=True)
        del pipeline


if __name__ == "__main__":
    main()
