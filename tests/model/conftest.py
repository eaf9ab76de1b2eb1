"""Shared fixtures of the model tests: the tiny preset on CPU (random init) and small synthetic clips."""

from __future__ import annotations

import numpy as np
import pytest

from lipsync.model.pipio.pipeline import LipSyncPipeline

SIZE = 64  # the tiny preset's working size: 2 x 2 latent tokens per frame
FPS = 25.0


@pytest.fixture(scope="session")
def tiny_pipe() -> LipSyncPipeline:
    return LipSyncPipeline.from_config("tiny", init_seed=0)


@pytest.fixture(scope="session")
def make_clip():
    """Factory of synthetic inputs (see ``_make_clip``)."""
    return _make_clip


def _make_clip(num_frames: int = 17, *, generate: slice | None = None, image: bool = False, seed: int = 0) -> dict:
    """Video-like (a moving texture) or image-like (T copies of one frame, all ``generate``) inputs."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    if image:
        frames = np.repeat(base[None], num_frames, axis=0)
    else:
        frames = np.stack([np.roll(base, 2 * i, axis=1) for i in range(num_frames)])
    mask = np.zeros((num_frames, SIZE, SIZE), np.float32)
    mask[:, 36:60, 16:48] = 1.0
    mask[:, 34:36, 16:48] = 0.5  # a soft edge
    gen = np.ones(num_frames, bool) if image else np.zeros(num_frames, bool)
    if generate is not None:
        gen[generate] = True
    audio = (0.2 * rng.standard_normal(int(16000 * num_frames / FPS))).astype(np.float32)
    return dict(frames=frames, mouth_mask=mask, generate=gen, audio=audio, fps=FPS)
