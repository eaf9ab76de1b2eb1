"""Audio features and their alignment to latent frames; prompt encoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lipsync.model.pipio.audio_encoder import encode_audio, latent_frame_windows
from lipsync.model.pipio.text_encoder import encode_prompt


@pytest.mark.parametrize("seconds", [0.0, 1.0, 7.3])  # 7.3 s spans two of the tiny encoder's 5 s windows
def test_whisper_features_are_50hz_with_every_hidden_state(tiny_pipe, seconds):
    encoder = tiny_pipe.audio_encoder
    samples = int(16000 * seconds)
    features = encode_audio(encoder, np.zeros(samples, np.float32))
    steps = max(1, -(-samples // 320))
    assert features.shape == (steps, encoder.config.encoder_layers + 1, encoder.config.d_model)


def test_long_audio_features_do_not_depend_on_what_follows_the_window(tiny_pipe):
    rng = np.random.default_rng(0)
    audio = rng.standard_normal(16000 * 6).astype(np.float32)
    full = encode_audio(tiny_pipe.audio_encoder, audio)
    head = encode_audio(tiny_pipe.audio_encoder, audio[: 16000 * 5])  # exactly the first window
    assert torch.allclose(full[: head.shape[0]], head, atol=1e-5)


def test_latent_frame_windows_are_centred_on_their_frames():
    # Feature i carries its own time (i + 0.5) / 50 s, so a window's mean is the time it listens to.
    rate, fps, context = 50, 25.0, 2
    times = (torch.arange(400, dtype=torch.float64) + 0.5) / rate
    features = times.view(-1, 1, 1)
    windows = latent_frame_windows(features, num_latent_frames=6, fps=fps, feature_rate=rate,
                                   context_frames=context, steps=16)
    assert windows.shape == (6, 16, 1, 1)
    for k in range(2, 6):  # (k = 0, 1 listen before t = 0 and clamp to the first feature)
        first, last = 8 * k - 7, 8 * k  # the pixel frames of latent frame k
        centre = ((first - context) + (last + 1 + context)) / 2 / fps
        assert windows[k].mean().item() == pytest.approx(centre, abs=1e-6)
        assert windows[k].min().item() >= (first - context) / fps - 1e-9
        assert windows[k].max().item() <= (last + 1 + context) / fps + 1e-9


def test_prompt_is_padded_and_masked(tiny_pipe):
    hidden, mask = encode_prompt(tiny_pipe.tokenizer, tiny_pipe.text_encoder, "hi", max_tokens=16)
    assert hidden.shape == (1, 16, tiny_pipe.text_encoder.config.d_model)
    assert mask.tolist() == [[1, 1, 1] + [0] * 13]  # 'h', 'i', </s>, then padding
    long_hidden, long_mask = encode_prompt(tiny_pipe.tokenizer, tiny_pipe.text_encoder, "x" * 100, max_tokens=16)
    assert long_hidden.shape == (1, 16, 32) and long_mask.sum() == 16
