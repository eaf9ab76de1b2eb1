"""The pipio engine's host memory is flat in the video length: crops go to an on-disk FrameStore, the model's
masks are made a frame range at a time and the decode is handed on a VAE chunk at a time — and that path
computes exactly what the in-memory call of the model pipeline computes."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from lipsync.model.engine import CropBatch, EngineOptions, EngineRequest, Knobs
from lipsync.model.weights import load_engine

SIZE = 128  # a working size the tiny config runs at in seconds, big enough for per-frame arrays to count


@pytest.fixture(scope="module")
def engine():
    return load_engine(None, EngineOptions(device="cpu", dtype="fp32", num_inference_steps=1, face_crop_size=SIZE),
                       "pipio")


def _inputs(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    crops = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    landmarks = np.empty((n, 68, 2), np.float32)  # a lower face that moves a little: masks differ per frame
    landmarks[..., 0] = rng.uniform(0.3, 0.7, (n, 68)) * SIZE
    landmarks[..., 1] = rng.uniform(0.55, 0.9, (n, 68)) * SIZE
    present = np.ones(n, bool)
    present[n // 3] = False
    landmarks[n // 3] = np.nan
    t = np.arange(int(n / 25 * 16000)) / 16000
    audio = (0.2 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)
    return crops, landmarks, present, audio


def _request(n: int, audio: np.ndarray, tmp_path, knobs: Knobs) -> EngineRequest:
    generate = np.zeros(n, bool)
    generate[5:7] = True  # two bridged frames: synthesised whole
    return EngineRequest(audio=audio, fps=25.0, num_frames=n, generate=generate, is_image=False, knobs=knobs,
                         log=lambda m: None, progress=lambda *a: None, identity=np.full(128, 0.1, np.float32),
                         workdir=tmp_path)


def _batches(crops, present, landmarks, size: int = 16):
    for start in range(0, len(crops), size):
        sl = slice(start, start + size)
        yield CropBatch(start, crops[sl], present[sl], landmarks[sl])


def test_streaming_engine_equals_the_in_memory_pipeline(engine, tmp_path):
    n = 41
    crops, landmarks, present, audio = _inputs(n)
    knobs = Knobs(vae_chunk_size=17, vae_overlap_window_width=8, frame_block_width=24, appearance_cond_strength=3)
    request = _request(n, audio, tmp_path, knobs)
    chunks = list(engine.generate(request, _batches(crops, present, landmarks)))
    assert max(len(c) for c in chunks) <= 17 + 8 and sum(len(c) for c in chunks) == n  # a VAE chunk at a time
    streamed = np.concatenate(chunks)
    masks = engine.model_masks(landmarks)  # the whole timeline at once, as before
    references = engine._references(crops, present, request.generate, False)
    expected = engine.model(crops, masks, request.generate, audio, 25.0, face_id_embedding=request.identity,
                            reference_frames=references, vae_chunk_size=17, vae_overlap_window_width=8,
                            frame_block_width=24, feed_forward_num_splits=knobs.feed_forward_num_splits,
                            face_id_cond_strength=knobs.face_id_cond_strength, appearance_cond_strength=3,
                            seed=knobs.seed, num_inference_steps=1).frames
    assert np.array_equal(streamed, expected)
    assert list(tmp_path.iterdir()) == []  # the spill file was never linked into the work folder


def test_engine_host_memory_is_flat_in_length(engine, tmp_path):
    """Python-heap peak (numpy arrays are traced) while generating 48 and 240 frames: the old engine held
    crops, float masks and the output for the whole timeline (~110 kB a frame here, 2.6 MB at 512²)."""
    knobs = Knobs(vae_chunk_size=17, vae_overlap_window_width=8, frame_block_width=24)
    peaks = {}
    for n in (48, 240):
        crops, landmarks, present, audio = _inputs(n, seed=n)

        def lazy_batches():  # the worker's crops arrive chunk by chunk; none is kept here
            for batch in _batches(crops, present, landmarks):
                yield CropBatch(batch.start, batch.crops.copy(), batch.present, batch.landmarks)

        tracemalloc.start()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        frames = 0
        for chunk in engine.generate(_request(n, audio, tmp_path, knobs), lazy_batches()):
            frames += len(chunk)
            del chunk
        peaks[n] = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        assert frames == n
    per_frame_before = SIZE * SIZE * (3 + 4 + 3)
    assert peaks[240] - peaks[48] < 0.15 * 192 * per_frame_before, peaks
