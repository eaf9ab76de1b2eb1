"""Synthetic talking clips with a known answer, and a tiny SyncNet trained on them in seconds.

A clip: a random loudness envelope (one value per 25 fps frame: bursts and pauses); the audio is noise
scaled by it (16 kHz); the picture is a 32 px face crop whose dark mouth opens with it. Shifting the picture
against the sound by k frames is an offset the scorer must find.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lipsync.evaluation import sync_features as sf

CROP = 32


def envelope(rng: np.random.Generator, frames: int) -> np.ndarray:
    """(frames,) in [0, 1]: syllables of 2-5 frames at random loudness, with pauses."""
    out = np.zeros(frames)
    i = 0
    while i < frames:
        n = int(rng.integers(2, 6))
        out[i : i + n] = rng.uniform(0.3, 1.0) if rng.random() < 0.7 else 0.0
        i += n
    return out


def audio_for(env: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noise whose amplitude follows the envelope (per frame, 640 samples each)."""
    amp = np.repeat(0.01 + 0.5 * env, sf.SAMPLES_PER_FRAME)
    return (rng.standard_normal(amp.size) * amp * 0.3).astype(np.float32)


def crops_for(env: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(T, 32, 32, 3) uint8 skin-coloured crops with a mouth ellipse opened by the envelope."""
    yy, xx = np.mgrid[0:CROP, 0:CROP]
    out = np.empty((env.size, CROP, CROP, 3), np.uint8)
    for t, e in enumerate(env):
        h = 0.8 + 7.0 * e
        inside = ((xx - 16) / 8.0) ** 2 + ((yy - 20) / h) ** 2 <= 1.0
        img = np.array([200.0, 150.0, 130.0])[None, None, :] * np.ones((CROP, CROP, 1))
        img[inside] = (60.0, 20.0, 30.0)
        img += rng.normal(0, 4, img.shape)
        out[t] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def clip(seed: int, frames: int, video_delay: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(crops, audio) where crop t shows the mouth of audio frame t - video_delay (picture lags sound)."""
    rng = np.random.default_rng(seed)
    env = envelope(rng, frames + abs(video_delay))
    d = abs(video_delay)
    audio_env = env[d:] if video_delay >= 0 else env[: frames]
    video_env = env[: frames] if video_delay >= 0 else env[d:]
    return crops_for(video_env, rng), audio_for(audio_env, rng)


class TinySyncNet(nn.Module):
    """The scorer's interface (forward_lip / forward_aud, crop_size) at toy size: two small MLPs, one on the
    five crops pooled to 8 x 8 grey, one on the MFCC window."""

    crop_size = CROP

    def __init__(self, dim: int = 16, hidden: int = 64):
        super().__init__()
        self.lip = nn.Sequential(nn.Flatten(), nn.Linear(5 * 8 * 8, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.aud = nn.Sequential(
            nn.Flatten(), nn.BatchNorm1d(13 * 20), nn.Linear(13 * 20, hidden), nn.ReLU(), nn.Linear(hidden, dim)
        )

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        grey = x.mean(1) / 255.0 - 0.5  # (N, 5, S, S)
        return self.lip(nn.functional.adaptive_avg_pool2d(grey, 8))

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        return self.aud(x)


def _windows(crops: np.ndarray, audio: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    count = sf.num_windows(len(crops), len(audio))
    video = torch.from_numpy(crops[..., ::-1].copy()).permute(3, 0, 1, 2).float()
    v = torch.stack([video[:, i : i + 5] for i in range(count)])
    a = torch.from_numpy(sf.audio_windows(sf.mfcc(audio), count))
    return v, a


def train_tiny_syncnet(seed: int = 0, steps: int = 150, batch: int = 64, margin: float = 2.0) -> TinySyncNet:
    """SyncNet's contrastive loss (pull aligned windows together, push windows ≥ 2 frames apart past
    ``margin``) on windows of fresh synthetic clips."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: extra threads only contend on a busy CPU
    try:
        return _train(seed, steps, batch, margin)
    finally:
        torch.set_num_threads(threads)


def _train(seed: int, steps: int, batch: int, margin: float) -> TinySyncNet:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pool_v, pool_a = [], []
    for k in range(12):  # 12 clips of 120 frames: ~1400 windows
        v, a = _windows(*clip(1000 + seed * 100 + k, 120))
        pool_v.append(v)
        pool_a.append(a)
    net = TinySyncNet()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    for _ in range(steps):
        c = rng.integers(0, len(pool_v), batch)
        i = np.array([rng.integers(0, len(pool_v[j])) for j in c])
        shift = rng.integers(2, 16, batch) * rng.choice([-1, 1], batch)
        j = np.clip(i + shift, 0, [len(pool_v[x]) - 1 for x in c])
        positive = rng.random(batch) < 0.5
        j = np.where(positive, i, j)
        v = torch.stack([pool_v[x][y] for x, y in zip(c, i)])
        a = torch.stack([pool_a[x][y] for x, y in zip(c, j)])
        y = torch.from_numpy((j == i).astype(np.float32))
        d = torch.nn.functional.pairwise_distance(net.forward_lip(v), net.forward_aud(a))
        loss = (y * d**2 + (1 - y) * torch.clamp(margin - d, min=0) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()
