"""Real media for the evaluation tests, made once per session (astronaut face clip, espeak-ng speech)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lipsync.media.audio import fit_to_timeline, load_audio, to_model_audio
from lipsync.media.probe import probe_video, resolve_output_spec
from lipsync.media.video import read_video
from lipsync.testing.media import make_face_video, make_speech

CLIP_FRAMES = 30


@pytest.fixture(scope="session")
def eval_media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("eval_media")
    return {
        "face": make_face_video(d / "face.mp4", frames=CLIP_FRAMES, size=(256, 192)),
        "speech": make_speech(d / "speech.wav", "Lip sync, measured."),
    }


@pytest.fixture(scope="session")
def media_clip(eval_media) -> tuple[np.ndarray, np.ndarray]:
    """(frames (30, 192, 256, 3), 16 kHz audio of exactly 30 frames at 25 fps)."""
    spec = resolve_output_spec(probe_video(eval_media["face"]), num_frames=CLIP_FRAMES)
    frames = read_video(eval_media["face"], spec)
    audio, _ = fit_to_timeline(load_audio(eval_media["speech"]), len(frames), spec.fps)
    return frames, to_model_audio(audio)
