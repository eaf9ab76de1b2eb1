"""One video, many voices: the worker's video-side cache (``lipsync.worker.video_cache``) for every engine.

Each engine (small random weights in its published layout, a real tracked face) runs the real worker pipeline in
this process: the same video with a second audio reuses the probe, the face track, the crops and the engine's
image-encoder outputs — counted here, on the face analyzer's and the image encoder's own calls — and what it
hands the MP4 encoder is byte for byte what the same request hands it with the cache off (every I420 frame; the
audio is the request's own), and so is the MP4 file itself. For the file, the tests encode with x264's macroblock
tree off (``mbtree=0``, ``deterministic_x264``): the libx264 bundled with PyAV 18.1 (core 165) does not repeat
itself on a CPU with AVX-512 — its AVX-512 code on the macroblock-tree path gives other bits in 1 encode of 6 to
20 of the same frames, threads or not; not once in 40 encodes with AVX-512 masked off (``asm=`` up to AVX2), in 32
without assembly, in 80 without the macroblock tree (docs/performance.md) —, so two cache-off runs would differ too. A corrupted or
truncated entry between two requests gives the same frames again and one log line.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import pytest

from lipsync.contract.schema import STORAGE_SCHEME, LipsyncInput, validate_input
from lipsync.contract.settings import Settings
from lipsync.media import writer
from lipsync.queue.records import LogLevel
from lipsync.testing.media import make_face_video, make_speech
from lipsync.worker.job import LocalFile, PipelineJob
from lipsync.worker.orchestration import LipSyncWorkerPipeline

FRAMES = 12


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cache-media")
    return {"video": make_face_video(root / "face.mp4", frames=FRAMES, size=(160, 128)),
            "hello": make_speech(root / "hello.wav", "Hello there."),
            "bye": make_speech(root / "bye.wav", "Goodbye now.")}


class Calls:
    """Counts the calls of the wrapped object's methods (the real object does the work)."""

    def __init__(self, target):
        self._target, self.count = target, 0

    def __getattr__(self, name):
        value = getattr(self._target, name)
        if not callable(value):
            return value

        @functools.wraps(value)
        def counted(*args, **kwargs):
            self.count += 1
            return value(*args, **kwargs)
        return counted


def count_encoder(engine) -> dict[str, int]:
    """Wrap the engine's image encoder (its VAE's encoder: every image-encoder call goes through it) with a counter."""
    vae = {"musetalk": lambda e: e.nets.vae, "latentsync": lambda e: e.sampler.vae,
           "pipio": lambda e: e.model.vae, "infinitetalk": lambda e: e.sampler.vae,
           }[type(engine).__module__.split(".")[2]](engine)
    counter = {"calls": 0}
    encoder = vae.encoder
    original = encoder.forward

    def forward(*args, **kwargs):
        counter["calls"] += 1
        return original(*args, **kwargs)
    encoder.forward = forward
    return counter


@pytest.fixture(autouse=True)
def encoded_frames(monkeypatch) -> list:
    """Digest of the I420 frames each request hands the MP4 encoder, in order (the real writer writes them)."""
    digests: list = []
    write = writer.Mp4Writer.write_i420

    def recorded(self, frames):
        digests[-1].update(memoryview(frames.tobytes()))
        return write(self, frames)

    monkeypatch.setattr(writer.Mp4Writer, "write_i420", recorded)
    return digests


@pytest.fixture(autouse=True)
def deterministic_x264(monkeypatch) -> None:
    """libx264 with its macroblock tree off, so that the same frames give the same bits (see the module docstring):
    the MP4 files of two requests can then be compared byte for byte."""
    add_video = writer.Mp4Writer._add_video

    def without_mbtree(self, codec, width, height, options):
        if codec == "libx264":
            options = {**options, "x264-params": "mbtree=0"}
        return add_video(self, codec, width, height, options)

    monkeypatch.setattr(writer.Mp4Writer, "_add_video", without_mbtree)


def run(pipeline, tmp_path: Path, media, audio: str, name: str, **fields):
    params = validate_input(LipsyncInput, {"video": STORAGE_SCHEME + "x/video", "audio": STORAGE_SCHEME + "x/audio",
                                           "num_frames": FRAMES, **fields},
                            {"internal": True, "max_num_frames": 10_000, "max_prompt_chars": 2_000})
    logs: list[tuple[str, LogLevel]] = []
    workdir = tmp_path / name
    workdir.mkdir()
    job = PipelineJob(request_id=name, params=params, workdir=workdir,
                      inputs={"video": LocalFile(media["video"], "video/mp4"),
                              "audio": LocalFile(media[audio], "audio/wav")},
                      log=lambda message, level=LogLevel.INFO: logs.append((message, level)), progress=lambda *a: None)
    digests = _DIGESTS[0]
    digests.append(hashlib.blake2b())
    out = pipeline(job)
    mp4 = out.files["video"].path.read_bytes()
    assert mp4
    return (digests[-1].hexdigest(), hashlib.blake2b(mp4).hexdigest()), out.metrics, logs


_DIGESTS: list = []


@pytest.mark.parametrize("engine_name", ["musetalk", "latentsync", "pipio", "infinitetalk"])
def test_same_video_another_audio_reuses_the_video_side_byte_for_byte(engine_name, small_weights, media, tmp_path,
                                                                      encoded_frames):
    _DIGESTS[:] = [encoded_frames]
    weights = None if engine_name == "pipio" else small_weights[engine_name]  # pipio: its tiny random config
    settings = Settings(weights_dir=weights, device="cpu", cache_dir=tmp_path / "cache",
                        cache_bytes=1 << 30, num_inference_steps=2 if engine_name != "musetalk" else None)
    pipeline = LipSyncWorkerPipeline(settings)
    analyzer = pipeline.analyzer = Calls(pipeline.analyzer)
    encoder = count_encoder(pipeline.engine)

    # the reference: the cache skipped for this request
    off_bye, metrics, logs = run(pipeline, tmp_path, media, "bye", "off-bye", skip_video_cache=True)
    assert "cache_reused" not in metrics and any("skipped" in m for m, _ in logs)
    assert not list((tmp_path / "cache").glob("*.lsc"))
    tracked_calls, encoder_calls = analyzer.count, encoder["calls"]
    assert tracked_calls > 0 and encoder_calls > 0

    # the first request with the video fills the cache; same bytes as without it
    first, metrics, _ = run(pipeline, tmp_path, media, "hello", "first")
    assert metrics["cache_reused"] == []
    assert set(metrics["cache_filled"]) == {"source", "crops", "image_encoder"}
    assert metrics["encoder_calls"] > 0 and metrics["encoder_reused"] == 0
    off_hello, _, _ = run(pipeline, tmp_path, media, "hello", "off-hello", skip_video_cache=True)
    assert first == off_hello

    # the same video, another audio: nothing of the video side is computed again, and the bytes are the
    # cache-off request's
    analyzer.count = encoder["calls"] = 0
    second, metrics, logs = run(pipeline, tmp_path, media, "bye", "second")
    assert second == off_bye
    assert analyzer.count == 0, "face tracking ran on a cached video"
    assert encoder["calls"] == 0, "the image encoder ran on cached frames"
    assert {"probe", "face_track", "crops", "image_encoder"} <= set(metrics["cache_reused"])
    assert metrics["cache_filled"] == [] and metrics["encoder_calls"] == 0 and metrics["encoder_reused"] > 0
    assert metrics["cache_saved_time"] > 0 and "face_track_time" not in metrics
    assert not [m for m, level in logs if level == LogLevel.WARN and "cache" in m.lower()]


def test_corrupt_truncated_or_deleted_entries_are_recomputed_with_one_log_line(small_weights, media, tmp_path,
                                                                               encoded_frames):
    _DIGESTS[:] = [encoded_frames]
    settings = Settings(weights_dir=small_weights["latentsync"], device="cpu", cache_dir=tmp_path / "cache",
                        cache_bytes=1 << 30, num_inference_steps=2)  # the quickest engine here
    pipeline = LipSyncWorkerPipeline(settings)
    reference, _, _ = run(pipeline, tmp_path, media, "bye", "reference", skip_video_cache=True)
    run(pipeline, tmp_path, media, "hello", "fill")
    entries = sorted((tmp_path / "cache").glob("*.lsc"))
    assert [p.name.split("-")[0] for p in entries] == ["crops", "encoder", "source"]

    def damage(kind: str, how: str) -> None:
        path = next((tmp_path / "cache").glob(f"{kind}-*.lsc"))
        data = bytearray(path.read_bytes())
        if how == "flip":
            data[len(data) // 2] ^= 0x40
            path.write_bytes(bytes(data))
        elif how == "truncate":
            path.write_bytes(bytes(data[: len(data) - 1000]))
        else:
            path.unlink()

    for step, (kind, how) in enumerate([("crops", "flip"), ("encoder", "truncate"), ("source", "flip"),
                                        ("source", "delete"), ("encoder", "delete")]):
        damage(kind, how)
        out, metrics, logs = run(pipeline, tmp_path, media, "bye", f"after-{kind}-{how}-{step}")
        assert out == reference, (kind, how)
        said = [m for m, level in logs if "corrupt" in m]
        assert len(said) == (0 if how == "delete" else 1), (kind, how, said)
        assert {"source": "source", "crops": "crops", "encoder": "image_encoder"}[kind] in metrics["cache_filled"]
    assert len(list((tmp_path / "cache").glob("*.lsc"))) == 3

    # a knob that changes the encoder's batching (so its bits): computed afresh, not taken from the other batching
    reference9, _, _ = run(pipeline, tmp_path, media, "bye", "reference-vae9", skip_video_cache=True, vae_chunk_size=9,
                            vae_overlap_window_width=4)
    out, metrics, _ = run(pipeline, tmp_path, media, "bye", "vae9", vae_chunk_size=9, vae_overlap_window_width=4)
    assert out == reference9 and metrics["encoder_calls"] > 0 and "crops" in metrics["cache_reused"]
    out, metrics, _ = run(pipeline, tmp_path, media, "bye", "vae65-again")  # the entry kept both batchings
    assert out == reference and metrics["encoder_calls"] == 0
