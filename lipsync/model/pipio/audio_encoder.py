"""Speech features for lip sync: transformers' Whisper encoder, all hidden states, windowed per latent frame.

Whisper turns 16 kHz audio into a 100 Hz log-mel and its stride-2 conv gives 50 Hz features. The encoder only
accepts exactly ``2 * max_source_positions`` mel frames, so audio is cut into windows of that length (30 s for
real Whisper, 5 s in the tiny preset), each zero-padded, and the features are concatenated.

Per latent frame k (pixel frames [8k-7, 8k], or [0, 0] for k = 0) the window is widened by
``context_frames`` video frames on each side (LatentSync/MuseTalk use +-2) and resampled to a fixed number of
feature steps, so the projection sees the same shape at any fps.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from transformers import WhisperConfig, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder


def build_audio_encoder(config: dict) -> WhisperEncoder:
    """A randomly initialised Whisper encoder from ``WhisperConfig`` keywords (weights are loaded separately)."""
    return WhisperEncoder(WhisperConfig(**config)).eval()


def _feature_extractor(encoder: WhisperEncoder, sample_rate: int) -> tuple[WhisperFeatureExtractor, int]:
    mel_frames = 2 * encoder.config.max_source_positions
    hop = 160  # 10 ms at 16 kHz: Whisper's fixed mel hop
    window_samples = mel_frames * hop
    if window_samples % sample_rate:
        raise ValueError(f"max_source_positions={encoder.config.max_source_positions} must give whole-second windows")
    extractor = WhisperFeatureExtractor(feature_size=encoder.config.num_mel_bins, sampling_rate=sample_rate,
                                        hop_length=hop, chunk_length=window_samples // sample_rate)
    return extractor, window_samples


@torch.no_grad()
def encode_audio(encoder: WhisperEncoder, waveform: np.ndarray, sample_rate: int = 16000) -> torch.Tensor:
    """16 kHz mono float waveform (N,) -> features (P, num_layers + 1, d_model) at 50 Hz, P = ceil(N / 320).

    An empty waveform is treated as one window of silence.
    """
    extractor, window = _feature_extractor(encoder, sample_rate)
    waveform = np.asarray(waveform, dtype=np.float32).reshape(-1)
    num_windows = max(1, -(-len(waveform) // window))
    padded = np.zeros(num_windows * window, dtype=np.float32)
    padded[: len(waveform)] = waveform
    param = next(encoder.parameters())
    device_type = param.device.type
    no_autocast = torch.autocast(device_type, enabled=False) if torch.amp.is_autocast_available(device_type) else \
        contextlib.nullcontext()
    with no_autocast:  # the mel (torch.stft) stays fp32 under autocast
        mels = extractor(list(padded.reshape(num_windows, window)), sampling_rate=sample_rate, return_tensors="pt",
                         padding="max_length").input_features
    out = encoder(mels.to(param.device, param.dtype), output_hidden_states=True)
    stacked = torch.stack(out.hidden_states, dim=2)  # (windows, positions, layers + 1, d)
    steps = max(1, -(-len(waveform) // (2 * 160)))
    return stacked.flatten(0, 1)[:steps]


def latent_frame_windows(features: torch.Tensor, num_latent_frames: int, fps: float, feature_rate: int,
                         context_frames: int, steps: int, temporal_ratio: int = 8) -> torch.Tensor:
    """Resample per-latent-frame windows: (P, L, d) -> (F, steps, L, d), by linear interpolation in time.

    Times outside the audio clamp to its first/last feature (LatentSync's ``get_sliced_feature`` clamps too).
    """
    k = torch.arange(num_latent_frames, dtype=torch.float64)
    first = (k * temporal_ratio - (temporal_ratio - 1)).clamp(min=0)  # first pixel frame of latent frame k
    last = k * temporal_ratio
    start = (first - context_frames) / fps
    end = (last + 1 + context_frames) / fps
    frac = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps
    times = start[:, None] + (end - start)[:, None] * frac[None, :]  # (F, steps) seconds
    pos = (times * feature_rate - 0.5).clamp(0, features.shape[0] - 1)  # feature i is centred on (i + 0.5) / rate
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=features.shape[0] - 1)
    # The window arithmetic runs in float64 on the host (exact, tiny); indices and weights then go to the
    # features' device: a CUDA tensor may not be mixed with a non-scalar CPU one.
    w = (pos - lo).to(features.device, features.dtype)[..., None, None]
    lo, hi = lo.to(features.device), hi.to(features.device)
    return features[lo] * (1 - w) + features[hi] * w
