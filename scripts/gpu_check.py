"""The GPU check: every engine on random weights through the worker path, as a GPU host runs it; one table.

    python scripts/gpu_check.py                  # on a GPU host: published sizes, bf16 and fp16, figures
    python scripts/gpu_check.py --emulate        # here: the same paths on the emulated CUDA device, no figures

For each engine (``lipsync.model.weights.ENGINES``), with random weights written in its published layout
(``lipsync weights random``: ``--size published`` on a GPU, ``small`` when emulating) — except InfiniteTalk at
the published size on a GPU, whose 14B random modules are built on the device, no files (``BUILT_ON_DEVICE``),
and run 4 steps without guidance on one 81-frame 480p chunk (bf16: alone, end to end with NVENC, the capped card
at the weights + ``--free-gib``; fp16: alone):

1. in bf16 and in fp16: the engine loaded as a worker loads it (``lipsync.worker.orchestration``), then
   - **alone**: ``engine.generate`` on ready crops (``--frames``), frames/s and peak device memory;
   - **end to end**: one request through the whole worker pipeline on a 1080x1920 face clip (decode, track,
     crops, engine, paste-back, encode), frames/s, with NVENC on and off;
   - pipio also with ``torch.compile`` (``LIPSYNC_COMPILE``: warm-up, then the same request);
   - **a smaller card**: one request of ``--cap-frames`` frames at ``vae_chunk_size`` 1025 and
     ``frame_block_width`` 10000 on a card with ``--free-gib`` GiB (default 24; weights included): the
     per-request memory caps must bind (logged, shown in the row) and the peak stay under it. On a GPU a
     ballast tensor takes the rest of the card; when emulating, the emulated card has that much;
2. one request through ``lipsync serve`` with the official Python client (on the CPU when emulating: the
   serving path is device-independent, and a worker process cannot share this process's emulated device).

It prints one table (Markdown, also written to ``--out``) and exits non-zero if any row failed. On an H100 the
defaults take about 8 minutes (predicted: no GPU has run it yet); ``--frames`` and ``--steps`` trade time for
precision. Random weights: the output is noise; the speed and memory are the trained model's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from bench_engines import end_to_end, engine_alone  # noqa: E402  (this folder's stage timers)

from lipsync.model.weights import ENGINES, write_random_weights  # noqa: E402

GiB = 1 << 30
DEFAULT_STEPS = {"infinitetalk": 4}
"""Without ``--steps``: InfiniteTalk at 4 steps (a distillation LoRA's count; its 40 guided steps are ~500 s an
81-frame chunk at 480p on an H100, predicted), every other engine at its own default."""
BUILT_ON_DEVICE = "random weights built on the GPU, no files"
"""InfiniteTalk at ``--size published`` on a GPU: its 14B transformer, umT5-XXL, CLIP and VAE are made on the
device in the run's dtype (``lipsync.model.infinitetalk.random_weights.random_engine``), 4 steps without
guidance, one 81-frame chunk at 480p. Its published random files would be ~50 GB (bf16) more on a 64 GiB disk
that already holds the other engines' ~18 GB, and minutes to write and read back; building on the device takes
seconds and gives the same modules, dtypes and memory. Its ``lipsync serve`` row runs the small random files."""
WHOLE_FRAME_FRAMES = 81
"""Frames of InfiniteTalk's timed runs (one chunk, the trained length): its chunk is ``frame_block_width``."""


@dataclass
class Row:
    engine: str
    dtype: str
    what: str
    fps: str = "-"
    peak_gib: str = "-"
    status: str = "ok"


def _peak_reset() -> None:
    import torch

    torch.cuda.reset_peak_memory_stats()


def _peak() -> str:
    import torch

    return f"{torch.cuda.max_memory_allocated() / GiB:.1f}"


def _clip(workdir: Path, frames: int) -> tuple[Path, Path]:
    from lipsync.testing.media import make_face_video, make_speech

    video = make_face_video(workdir / "face-1080x1920.mp4", frames=frames, size=(1080, 1920))
    return video, make_speech(workdir / "speech.wav", "This is the GPU check of the lip sync server.")


def capped_card(engine, free_gib: float, frames: int, ledger) -> tuple[float, list[str]]:
    """One request at the knobs that scale memory (``vae_chunk_size`` 1025, ``frame_block_width`` 10000) with
    ``free_gib`` GiB of device memory in all, the weights already on it: returns the peak in GiB and the lines the
    caps logged. Raises if the peak passes the card (a cap missing) or nothing bound."""
    import numpy as np
    import torch

    from lipsync.model.devices import typed_out_of_memory
    from lipsync.model.engine import CropBatch, EngineRequest, Knobs

    card = int(free_gib * GiB)
    size, logs = engine.info.crop_size, []
    if engine.info.whole_frame:
        frames = min(frames, 81)  # one chunk of a 14B video DiT is already a minute of GPU time
    t = np.arange(int(frames / 25 * 16000)) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    request = EngineRequest(audio=audio, fps=25.0, num_frames=frames, generate=np.zeros(frames, bool),
                            is_image=False, knobs=Knobs(vae_chunk_size=1025, frame_block_width=10_000),
                            log=logs.append, progress=lambda *a: None)
    if engine.info.needs_identity:
        from lipsync.media.embedding import EMBEDDING_DIM

        request.identity = np.full(EMBEDDING_DIM, 0.1, np.float32)  # what the worker's face embedder gives
    shape = (448, 896) if engine.info.whole_frame else (size, size)  # whole frames: a 16:9 480p bucket
    crops = np.random.default_rng(0).integers(0, 256, (16, *shape, 3), dtype=np.uint8)
    landmarks = np.full((16, 68, 2), size / 2, np.float32)
    batches = (CropBatch(s, crops[: min(16, frames - s)], np.ones(min(16, frames - s), bool),
                         landmarks[: min(16, frames - s)]) for s in range(0, frames, 16))
    ballast = None
    if ledger is not None:
        before = ledger.free_at_start
        ledger.free_at_start = card
    else:  # a real card: a ballast leaves ``card`` bytes in all, the weights on it included
        free, _ = torch.cuda.mem_get_info()
        extra = free - (card - torch.cuda.memory_allocated())
        if extra < 0:
            raise RuntimeError(f"this card has less than {free_gib} GiB free with the weights on it")
        ballast = torch.empty(extra, dtype=torch.uint8, device="cuda")
    try:
        _peak_reset()
        with torch.no_grad():
            done = sum(len(c) for c in typed_out_of_memory(engine.generate(request, batches), what=engine.info.name))
        peak = torch.cuda.max_memory_allocated() - (ballast.numel() if ballast is not None else 0)
    finally:
        del ballast
        if ledger is not None:
            ledger.free_at_start = before
        torch.cuda.empty_cache()
    bound = [line for line in logs if " asked, " in line]
    if done != frames or peak > card or not bound:
        raise RuntimeError(f"{done}/{frames} frames, peak {peak / GiB:.1f} of {free_gib} GiB, caps bound: {bound}")
    return peak / GiB, bound


def built_on_device(engine: str, args) -> bool:
    """InfiniteTalk at its published size on a real GPU: made on the device, never written (``BUILT_ON_DEVICE``)."""
    return engine == "infinitetalk" and args.size == "published" and not args.emulate


@contextlib.contextmanager
def random_infinitetalk_loader():
    """The worker's ``load_engine`` answering with ``random_engine`` (published sizes on the device, no files)."""
    from unittest import mock

    from lipsync.model import weights
    from lipsync.model.infinitetalk.random_weights import random_engine

    with mock.patch.object(weights, "load_engine", lambda root, options, engine=None: random_engine(options)):
        yield


def check_engine(engine: str, folder: Path | None, dtype: str, args, workdir: Path, clip: tuple[Path, Path],
                 ledger=None) -> list[Row]:
    from lipsync.contract.settings import Settings
    from lipsync.worker.orchestration import load_lipsync_pipeline

    rows: list[Row] = []
    figures = not args.emulate
    on_device = built_on_device(engine, args)
    whole = engine == "infinitetalk"
    frames, batch = (WHOLE_FRAME_FRAMES, WHOLE_FRAME_FRAMES) if whole and not args.emulate else (args.frames, args.batch)
    tag_random = f" ({BUILT_ON_DEVICE})" if on_device else ""

    def attempt(what: str, run) -> None:
        row = Row(engine, dtype, what)
        try:
            _peak_reset()
            fps = run()
            if figures:
                row.fps, row.peak_gib = f"{fps:.2f}", _peak()
        except Exception as exc:  # one failed path must not hide the others
            row.status = f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
            traceback.print_exc()
        rows.append(row)
        print(f"  {engine} {dtype} {what}: {row.status} {row.fps} frames/s, peak {row.peak_gib} GiB", flush=True)

    compiles = (False, True) if engine == "pipio" else (False,)
    for compiled in compiles:
        # the emulated device is this thread's (torch's modes are per thread): its stages run inline
        settings = Settings(weights_dir=folder, device="cuda", dtype=dtype,
                            num_inference_steps=args.steps or DEFAULT_STEPS.get(engine),
                            compile=compiled and not args.emulate, stage_threads=not args.emulate,
                            random_weights_config="base" if folder is None else "tiny")
        try:
            with random_infinitetalk_loader() if on_device else contextlib.nullcontext():
                pipeline = load_lipsync_pipeline(settings)
            if compiled and args.emulate:  # the compile path, traced by dynamo without code generation
                from lipsync.model.pipio.engine import compile_blocks, warm_up

                compile_blocks(pipeline.engine.model, backend="eager")
                warm_up(pipeline.engine)
        except Exception as exc:
            rows.append(Row(engine, dtype, "load" + (" (compiled)" if compiled else ""),
                            status=f"FAILED: {type(exc).__name__}: {exc}"))
            traceback.print_exc()
            continue
        tag = " compiled" if compiled else ""
        warm = 5 if whole else None  # one 5-frame chunk: a second 81-frame chunk is 20-30 s of an 8-minute check
        attempt(f"alone{tag}{tag_random}" + (f", {frames} frames" if whole else ""),
                lambda: engine_alone(pipeline.engine, frames, batch, "cuda", warm=warm))
        if on_device and dtype == "fp16":  # the authors run bf16; fp16 proves the load and one chunk only (time)
            del pipeline
            continue
        # x264 is the same encode whatever the engine: a 14B chunk more to show it is not worth the check's time
        for nvenc in (True, False) if not compiled and not on_device else (True,):
            pipeline.settings = pipeline.settings.model_copy(update={"nvenc": nvenc})
            name = f"1080p end to end{tag}, " + ("NVENC" if nvenc else "x264")
            attempt(name, lambda: end_to_end(pipeline, *clip, frames, batch, workdir)["wall_fps"])
        if not compiled:
            free_gib = args.free_gib
            if on_device:  # 51 GB of weights: the card is the weights plus --free-gib
                import torch

                free_gib = round(torch.cuda.memory_allocated() / GiB + args.free_gib, 1)
            card = f"{free_gib:g} GiB card" + (f" (weights + {args.free_gib:g})" if on_device else "")
            row = Row(engine, dtype, f"{card}, vae_chunk_size 1025, frame_block_width 10000, "
                                     f"{min(args.cap_frames, 81) if whole else args.cap_frames} frames")
            try:
                peak, bound = capped_card(pipeline.engine, free_gib, args.cap_frames, ledger)
                row.peak_gib = f"{peak:.1f}"
                row.status = "ok; " + "; ".join(": ".join(line.split(": ")[:2]) for line in bound)  # what, asked/used
            except Exception as exc:
                row.status = f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                traceback.print_exc()
            rows.append(row)
            print(f"  {engine} {dtype} {row.what}: peak {row.peak_gib} GiB, {row.status}", flush=True)
            if on_device:  # the 14B model on a card smaller than its weights: LIPSYNC_OFFLOAD=blocks
                del pipeline
                rows.append(offloaded_row(settings, args))
    return rows


def offloaded_row(settings, args) -> Row:
    """InfiniteTalk with its blocks in host memory (``LIPSYNC_OFFLOAD=blocks``, umT5 on the CPU) on a card of
    ``--free-gib`` in all: one 81-frame chunk, its time and peak."""
    import gc

    import torch

    from lipsync.worker.orchestration import load_lipsync_pipeline

    gc.collect()
    torch.cuda.empty_cache()
    row = Row("infinitetalk", settings.dtype.value, f"{args.free_gib:g} GiB card, model offload (blocks streamed "
              f"from host memory, umT5 on the CPU), 81 frames ({BUILT_ON_DEVICE})")
    try:
        with random_infinitetalk_loader():
            pipeline = load_lipsync_pipeline(settings.model_copy(update={"offload": "blocks", "text_encoder": "cpu"}))
        start = time.perf_counter()
        peak, bound = capped_card(pipeline.engine, args.free_gib, 81, None)
        row.fps, row.peak_gib = f"{81 / (time.perf_counter() - start):.2f}", f"{peak:.1f}"
        row.status = "ok; " + "; ".join(": ".join(line.split(": ")[:2]) for line in bound)
    except Exception as exc:
        row.status = f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        traceback.print_exc()
    print(f"  infinitetalk {row.dtype} {row.what}: {row.fps} frames/s, peak {row.peak_gib} GiB, {row.status}",
          flush=True)
    return row


def check_serve(engine: str, folder: Path, args, workdir: Path, clip: tuple[Path, Path]) -> Row:
    """One request through ``lipsync serve`` and fal-client, the weights in LIPSYNC_WEIGHTS_DIR."""
    import fal_client
    import httpx

    from lipsync.client import point_fal_client
    from lipsync.testing.stack import free_port, wait_until

    row = Row(engine, "auto", "lipsync serve + fal-client" + (" (CPU)" if args.emulate else ""))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIPSYNC_")}
    env.update(LIPSYNC_WEIGHTS_DIR=str(folder), LIPSYNC_DEVICE="cpu" if args.emulate else "cuda",
               LIPSYNC_NUM_INFERENCE_STEPS=str(args.steps or 2 if args.emulate else args.steps or ""))
    env = {k: v for k, v in env.items() if v != ""}
    log = open(workdir / f"serve-{engine}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "lipsync", "serve", "--port", str(port), "--data-dir",
                             str(workdir / f"serve-{engine}")], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"lipsync serve exited ({workdir / f'serve-{engine}.log'})")
            try:
                return httpx.get(f"{base}/readyz", timeout=1).json().get("workers") == 1
            except (httpx.HTTPError, ValueError):
                return False

        wait_until(ready, 600, "lipsync serve")
        point_fal_client(base)
        client = fal_client.SyncClient(key="local")
        t0 = time.perf_counter()
        result = client.subscribe("pipio/lipsync", arguments={
            "video": client.upload_file(str(clip[0])), "audio": fal_client.encode_file(str(clip[1])),
            "num_frames": args.frames})
        if not result.get("video", {}).get("url"):
            raise RuntimeError(f"no video in {result}")
        if not args.emulate:
            row.fps = f"{args.frames / (time.perf_counter() - t0):.2f}"
    except Exception as exc:
        row.status = f"FAILED: {type(exc).__name__}: {str(exc)[:120]}"
    finally:
        proc.terminate()
        proc.wait(120)
    print(f"  {engine} serve: {row.status}", flush=True)
    return row


def table(rows: list[Row], args) -> str:
    import torch

    device = "emulated CUDA device (no figures)" if args.emulate else torch.cuda.get_device_name()
    lines = [f"GPU check on {device}, `{args.size}` random weights, {args.frames} frames, steps "
             f"{args.steps or 'the model default'}", "",
             "| engine | dtype | path | frames/s | peak GiB | status |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.engine} | {r.dtype} | {r.what} | {r.fps} | {r.peak_gib} | {r.status} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emulate", action="store_true", help="run every path on the emulated CUDA device")
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    parser.add_argument("--size", choices=["small", "published"], help="default: published, small with --emulate")
    parser.add_argument("--frames", type=int, help="frames per run (default 100; 12 with --emulate)")
    parser.add_argument("--batch", type=int, default=16, help="frames per UNet/VAE call (frame_block_width)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: each model's own)")
    parser.add_argument("--weights", default=str(Path(tempfile.gettempdir()) / "lipsync-gpu-check"),
                        help="where the random weights are written (kept for a rerun)")
    parser.add_argument("--no-serve", action="store_true", help="skip the lipsync serve request")
    parser.add_argument("--free-gib", type=float, default=24.0, help="the smaller card's memory (GiB)")
    parser.add_argument("--cap-frames", type=int, default=250, help="frames of the smaller card's request")
    parser.add_argument("--out", help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    args.size = args.size or ("small" if args.emulate else "published")
    args.frames = args.frames or (12 if args.emulate else 100)
    if args.emulate:
        args.steps = args.steps or 2
    else:
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA device: run on a GPU host, or pass --emulate")

    workdir = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    clip = _clip(workdir, args.frames)
    folders = {}
    for engine in args.engines:
        folder = Path(args.weights) / f"{engine}-{args.size}"
        if engine == "pipio" and args.emulate and args.size == "published":
            folders[engine] = None  # built in its dtype on the emulated device: no 9 GB of files to write
            continue
        if engine == "infinitetalk" and args.size == "published":
            # on a GPU: built on the device (BUILT_ON_DEVICE), the small files serve the `lipsync serve` row only;
            # emulated: 50 GB of random files for a fake device: no
            folder = Path(args.weights) / f"{engine}-small"
            size = "small"
        else:
            size = args.size
        if not (folder / ".complete").exists():
            write_random_weights(engine, folder, size=size)
            (folder / ".complete").write_text("ok")
        folders[engine] = folder

    from lipsync.testing.emulated_gpu import emulated_cuda

    rows: list[Row] = []
    for engine in args.engines:
        for dtype in ("bf16", "fp16"):
            print(f"{engine} in {dtype}:", flush=True)
            with emulated_cuda() if args.emulate else contextlib.nullcontext() as ledger:
                folder = None if built_on_device(engine, args) else folders[engine]
                rows += check_engine(engine, folder, dtype, args, workdir, clip, ledger)
            if not args.emulate:  # the next load starts on an empty card (InfiniteTalk's weights are 51 GB)
                import gc

                import torch

                gc.collect()
                torch.cuda.empty_cache()
        if not args.no_serve and folders[engine] is not None:
            rows.append(check_serve(engine, folders[engine], args, workdir, clip))
    report = table(rows, args)
    print("\n" + report)
    if args.out:
        Path(args.out).write_text(report + "\n")
    failed = [r for r in rows if not r.status.startswith("ok")]  # a capped-card row reads "ok; <caps>"
    print(f"\n{len(rows) - len(failed)} of {len(rows)} paths ok")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
