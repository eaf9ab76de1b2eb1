"""SyncNet's inputs, as the published evaluation (joonson/syncnet_python ``SyncNetInstance.evaluate``) makes
them: 16 kHz 16-bit PCM -> MFCC (python_speech_features defaults: 25 ms windows every 10 ms, 13 cepstra,
26 filters, 512-point FFT, pre-emphasis 0.97, lifter 22, log energy as coefficient 0) -> 100 MFCC frames per
second; 25 fps crops -> 5-frame windows; window i is video frames i..i+4 against MFCC frames 4i..4i+19
(both 0.2 s)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import python_speech_features

SAMPLE_RATE = 16000
FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
MFCC_PER_FRAME = 4


def to_pcm16(audio16k: np.ndarray) -> np.ndarray:
    """Float audio in [-1, 1] -> int16, as ffmpeg's ``pcm_s16le`` writes it (the reference reads a WAV)."""
    return np.clip(np.round(np.asarray(audio16k, np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def mfcc(audio16k: np.ndarray) -> np.ndarray:
    """(13, M) float32 MFCC of 16 kHz float audio, on the int16 scale the reference computes them on."""
    return python_speech_features.mfcc(to_pcm16(audio16k), SAMPLE_RATE).T.astype(np.float32)


def num_windows(num_frames: int, num_samples: int, window: int = 5) -> int:
    """The reference's window count: min(frames, floor(samples / 640)) - 5 (the last possible one is unused,
    as there)."""
    return max(0, min(num_frames, num_samples // SAMPLES_PER_FRAME) - window)


def audio_windows(coefficients: np.ndarray, count: int, length: int = 20) -> np.ndarray:
    """(count, 1, 13, length) MFCC windows: window i starts at MFCC frame 4i."""
    starts = np.arange(count) * MFCC_PER_FRAME
    idx = starts[:, None] + np.arange(length)[None, :]
    return np.ascontiguousarray(coefficients[:, idx].transpose(1, 0, 2)[:, None])


def resample_indices(num_frames: int, fps: Fraction | float, target_fps: int = FPS) -> np.ndarray:
    """Source-frame index of every ``target_fps`` frame (nearest earlier timestamp, like ``ffmpeg -r 25``)."""
    fps = Fraction(fps).limit_denominator(1001000)
    duration = Fraction(num_frames) / fps
    count = int(duration * target_fps)
    idx = np.array([int(Fraction(j, target_fps) * fps + Fraction(1, 10**6)) for j in range(count)], dtype=np.int64)
    return np.clip(idx, 0, num_frames - 1)
