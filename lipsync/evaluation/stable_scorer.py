"""A second sync score with LatentSync's StableSyncNet: cosine similarity of 16-frame lower-face windows and
their mel windows, searched over ±``vshift`` frames like SyncNet's offset.

Inputs as LatentSync's SyncNet trainer makes them (``latentsync/data/syncnet_dataset.py``): 25 fps face
crops at the config's resolution scaled to [-1, 1], the lower half, ``num_frames`` of them stacked on
channels; Wav2Lip's mel spectrogram (``configs/audio.yaml``: pre-emphasis 0.97, 800-sample Hann STFT every
200 samples, 80 mel bands 55-7600 Hz, dB - 20 normalised into [-4, 4]); window for frame i starts at mel
frame int(80 · i / 25) and is 16/25 s (52 frames) long. Our crops are media's aligned face squares, not
LatentSync's own affine template — close, not identical; no published figures exist for this score anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import torch
from scipy import signal

from lipsync.evaluation.stable_syncnet import SYNCNET_16_PIXEL_ATTN, StableSyncNet, StableSyncNetConfig, load_stable_syncnet
from lipsync.evaluation.sync_features import FPS, SAMPLE_RATE

MEL_PER_SECOND = 80


def wav2lip_mel(audio16k: np.ndarray) -> np.ndarray:
    """(80, M) float32 mel spectrogram in [-4, 4], 80 frames per second."""
    emphasised = signal.lfilter([1, -0.97], [1], np.asarray(audio16k, np.float64))
    spec = np.abs(librosa.stft(y=emphasised, n_fft=800, hop_length=200, win_length=800))
    mel = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=800, n_mels=80, fmin=55, fmax=7600) @ spec
    db = 20 * np.log10(np.maximum(1e-5, mel)) - 20
    return np.clip(8 * (db + 100) / 100 - 4, -4, 4).astype(np.float32)


@dataclass(frozen=True)
class StableSyncResult:
    sim_at_zero: float
    """Mean cosine similarity at offset 0 (higher is better, at most 1)."""
    best_sim: float
    offset: int
    """Frames the picture lags the sound at the best shift (SyncNet's sign convention)."""
    conf: float
    """best_sim minus the median over shifts."""
    offsets: np.ndarray
    mean_sim: np.ndarray
    num_windows: int

    def summary(self) -> dict[str, float | int]:
        return {"sim_at_zero": self.sim_at_zero, "best_sim": self.best_sim, "offset": self.offset,
                "conf": self.conf, "num_windows": self.num_windows}


class StableSyncScorer:
    """``score_crops(crops (T, S, S, 3) RGB uint8 at 25 fps, audio16k)``; windows every ``stride`` frames."""

    def __init__(
        self,
        network: str | Path | StableSyncNet,
        config: StableSyncNetConfig | str | Path = SYNCNET_16_PIXEL_ATTN,
        *,
        device: str | torch.device = "cpu",
        vshift: int = 15,
        stride: int = 8,
        batch_size: int = 8,
    ):
        self.net = network if isinstance(network, StableSyncNet) else load_stable_syncnet(network, config)
        self.device = torch.device(device)
        self.net.eval().to(self.device)
        self.cfg = self.net.config
        self.vshift, self.stride, self.batch_size = vshift, stride, batch_size

    @property
    def crop_size(self) -> int:
        return self.cfg.resolution

    def _mel_window(self, mel: np.ndarray, frame: int, length: int) -> np.ndarray | None:
        start = int(MEL_PER_SECOND * (frame / float(FPS)))
        if frame < 0 or start + length > mel.shape[1]:
            return None
        return mel[:, start : start + length]

    @torch.no_grad()
    def score_crops(self, crops: np.ndarray, audio16k: np.ndarray) -> StableSyncResult:
        n, v = self.cfg.num_frames, self.vshift
        length = int(np.ceil(n / 5 * 16))  # LatentSync's mel_window_length: 52 for 16 frames
        starts = list(range(0, len(crops) - n + 1, self.stride))
        if not starts:
            raise ValueError(f"{len(crops)} frames make no {n}-frame window")
        visual = self._embed_visual([crops[i : i + n] for i in starts])
        mel = wav2lip_mel(audio16k)
        frames = sorted({i + k - v for i in starts for k in range(2 * v + 1)})
        windows = {f: w for f in frames if (w := self._mel_window(mel, f, length)) is not None}
        audio = dict(zip(windows, self._embed_audio([torch.from_numpy(w)[None] for w in windows.values()])))
        sims = np.full((len(starts), 2 * v + 1), np.nan)
        for r, i in enumerate(starts):
            for k in range(2 * v + 1):
                if (a := audio.get(i + k - v)) is not None:
                    sims[r, k] = float(visual[r] @ a)
        if np.isnan(sims[:, v]).all():
            raise ValueError("the audio is too short for any window at offset 0")
        mean = np.nanmean(np.where(np.isnan(sims).all(0, keepdims=True), -np.inf, sims), 0)
        best = int(np.nanargmax(mean))
        finite = mean[np.isfinite(mean)]
        return StableSyncResult(
            sim_at_zero=float(mean[v]), best_sim=float(mean[best]), offset=v - best,
            conf=float(mean[best] - np.median(finite)), offsets=v - np.arange(2 * v + 1),
            mean_sim=mean, num_windows=len(starts),
        )

    def _visual_input(self, crops: np.ndarray) -> torch.Tensor:
        """(F, S, S, 3) uint8 crops -> (3F, H, W) in [-1, 1], the lower half when the config says so."""
        x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        if x.shape[-1] != self.cfg.resolution:
            x = torch.nn.functional.interpolate(x, size=(self.cfg.resolution,) * 2, mode="bicubic")
        if self.cfg.lower_half:
            x = x[:, :, x.shape[2] // 2 :, :]
        return x.reshape(-1, *x.shape[2:])

    def _embed_visual(self, windows: list[np.ndarray]) -> list[torch.Tensor]:
        """Windows are converted to float a batch at a time: memory is the uint8 crops plus one batch."""
        out = []
        for b in range(0, len(windows), self.batch_size):
            batch = torch.stack([self._visual_input(w) for w in windows[b : b + self.batch_size]]).to(self.device)
            out.extend(torch.nn.functional.normalize(self.net.visual_encoder(batch).flatten(1), dim=1).float().cpu())
        return out

    def _embed_audio(self, windows: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for b in range(0, len(windows), self.batch_size * 4):
            batch = torch.stack(windows[b : b + self.batch_size * 4]).to(self.device)
            out.extend(torch.nn.functional.normalize(self.net.audio_encoder(batch).flatten(1), dim=1).float().cpu())
        return out
