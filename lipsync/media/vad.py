"""Silence detection: which output frames fall in a pause of the speech, so the model can close the mouth.

Uses silero-vad's TorchScript model, which the ``silero-vad`` wheel ships (no download). The file is loaded
directly with ``torch.jit.load`` rather than through ``import silero_vad``, whose ``model.py`` calls
``torch.set_num_threads(1)`` at import and would slow every other torch user in the process. torch is
imported lazily, so ``import media`` stays torch-free. When silero-vad or torch is missing, an energy gate
(RMS below -40 dBFS) stands in and says so in the logs.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings
from fractions import Fraction
from functools import lru_cache
from typing import Any

import numpy as np

from lipsync.media.audio import MODEL_SAMPLE_RATE

log = logging.getLogger(__name__)

WINDOW = 512
"""Samples per silero-vad step at 16 kHz (32 ms)."""


@lru_cache(maxsize=1)
def _silero_model() -> Any | None:
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations or importlib.util.find_spec("torch") is None:
        log.warning("silero-vad or torch not installed: using an energy gate for silence")
        return None
    import torch

    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "silero_vad.jit")
    with warnings.catch_warnings():  # torch 2.13 marks TorchScript loading deprecated; it still works
        warnings.simplefilter("ignore", DeprecationWarning)
        model = torch.jit.load(path, map_location="cpu")
    model.eval()
    return model


def speech_probability(wav16k: np.ndarray) -> np.ndarray:
    """Per 32 ms window (512 samples at 16 kHz) probability of speech, shape (ceil(n/512),)."""
    n_win = -(-wav16k.shape[0] // WINDOW)
    padded = np.zeros(n_win * WINDOW, np.float32)
    padded[: wav16k.shape[0]] = wav16k
    model = _silero_model()
    if model is None:
        rms = np.sqrt((padded.reshape(n_win, WINDOW) ** 2).mean(1) + 1e-12)
        return (20 * np.log10(rms) > -40.0).astype(np.float32)
    import torch

    model.reset_states()
    probs = np.empty(n_win, np.float32)
    with torch.inference_mode():
        x = torch.from_numpy(padded)
        for k in range(n_win):
            probs[k] = float(model(x[k * WINDOW : (k + 1) * WINDOW], MODEL_SAMPLE_RATE))
    return probs


def silent_frames(
    wav16k: np.ndarray,
    num_frames: int,
    fps: Fraction,
    *,
    threshold: float = 0.5,
    min_silence_s: float = 0.25,
) -> np.ndarray:
    """(num_frames,) bool: True where output frame j falls in a pause at least ``min_silence_s`` long.

    ``wav16k`` is the model audio already laid on the output timeline (16 kHz mono float32). Shorter
    pauses (between words) stay speech so the mouth keeps moving naturally.
    """
    speech = speech_probability(wav16k) >= threshold
    # close short gaps of silence
    min_win = max(1, int(round(min_silence_s * MODEL_SAMPLE_RATE / WINDOW)))
    silent = ~speech
    edges = np.flatnonzero(np.diff(np.concatenate([[0], silent.astype(np.int8), [0]])))
    for a, b in zip(edges[::2], edges[1::2]):
        if b - a < min_win:
            silent[a:b] = False
    centres = (np.arange(num_frames) + 0.5) / float(fps) * MODEL_SAMPLE_RATE
    win = np.clip((centres // WINDOW).astype(np.int64), 0, max(0, silent.size - 1))
    if silent.size == 0:
        return np.ones(num_frames, bool)
    out = silent[win]
    log.info("silence: %d of %d output frames", int(out.sum()), num_frames)
    return out


def silent_spans(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) frame ranges of True runs in a per-frame bool mask."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]
