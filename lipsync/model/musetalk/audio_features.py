"""MuseTalk's audio conditioning: whisper-tiny encoder states, one 10-step window per video frame.

What the published ``AudioProcessor`` computes (musetalk/utils/audio_processor.py), written as tensor ops:

1. the 16 kHz signal is cut into 30 s segments; each goes through whisper's feature extractor (log-mel, padded
   to 30 s) and the encoder with all hidden states: the embeddings + one per layer, the last after the final
   LayerNorm: (1500, L + 1, d) per segment at 50 steps/s; segments are concatenated and trimmed to
   ``floor(seconds * 50)`` steps;
2. zeros are put in front (``2 * ceil(50 / fps)`` steps) and behind (``6 * ceil(50 / fps)``);
3. frame i takes the 10 steps starting at ``floor(i * 50 / fps)`` of the padded sequence (its own 20 ms steps
   and 4 before / 5 after at 25 fps), flattened time-major to ``10 * (L + 1)`` tokens of d;
4. the UNet sees those tokens plus a fixed sinusoidal positional encoding (d_model 384, not learned).

One difference, on purpose: the reference casts fps to int before dividing (29.97 → 29, which drifts by a
frame every ~30 s); we divide by the exact output rate. For integer rates the windows are identical.
"""

from __future__ import annotations

import math

import numpy as np
import torch

SAMPLE_RATE = 16_000
AUDIO_STEPS_PER_S = 50
SEGMENT_S = 30
PAD_LEFT = 2
PAD_RIGHT = 2
WINDOW = 2 * (PAD_LEFT + PAD_RIGHT + 1)
"""Audio steps per frame (10)."""


def sinusoidal_encoding(length: int, d_model: int) -> torch.Tensor:
    """(length, d_model) float32: sin on even, cos on odd channels, frequencies 10000^(-2i/d)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div)
    return pe


@torch.no_grad()
def encoder_states(audio: np.ndarray, feature_extractor, encoder: torch.nn.Module) -> torch.Tensor:
    """(steps, L + 1, d) whisper encoder hidden states of 16 kHz mono ``audio`` at 50 steps/s, trimmed to the
    audio's length (step 2 of the module docstring happens in :func:`frame_windows`)."""
    param = next(encoder.parameters())
    seg = SEGMENT_S * SAMPLE_RATE
    states = []
    for start in range(0, max(1, len(audio)), seg):
        mel = feature_extractor(audio[start : start + seg], sampling_rate=SAMPLE_RATE, return_tensors="pt")
        mel = mel.input_features.to(device=param.device, dtype=param.dtype)
        hidden = encoder(mel, output_hidden_states=True).hidden_states
        states.append(torch.stack(hidden, dim=2)[0])  # (1500, L + 1, d)
    steps = math.floor(len(audio) / SAMPLE_RATE * AUDIO_STEPS_PER_S)
    return torch.cat(states)[:steps]


def window_starts(num_frames: int, fps: float) -> np.ndarray:
    """(T,) int64: first padded audio step of each frame's window (the reference's ``floor(i * 50/fps)``)."""
    return np.floor(np.arange(num_frames) * (AUDIO_STEPS_PER_S / fps)).astype(np.int64)


def pad_states(states: torch.Tensor, num_frames: int, fps: float) -> torch.Tensor:
    """The states with the reference's zero padding, extended further behind when ``num_frames`` frames reach
    past it (our audio is fitted to the timeline, so at most by rounding)."""
    pad = math.ceil(AUDIO_STEPS_PER_S / fps)
    left, right = pad * PAD_LEFT, pad * 3 * PAD_RIGHT
    need = int(window_starts(num_frames, fps)[-1]) + WINDOW if num_frames else 0
    right = max(right, need - left - states.shape[0])
    zeros = states.new_zeros
    return torch.cat([zeros((left, *states.shape[1:])), states, zeros((right, *states.shape[1:]))])


def frame_windows(padded: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """(n, WINDOW * (L + 1), d) tokens for frames whose window starts are ``starts`` (n,) on ``padded``'s
    device: one gather, no per-frame loop."""
    index = starts[:, None] + torch.arange(WINDOW, device=padded.device)[None, :]
    windows = padded[index]  # (n, WINDOW, L + 1, d)
    return windows.flatten(1, 2)
