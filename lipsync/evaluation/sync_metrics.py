"""From embeddings to LSE-D, LSE-C and the offset, as the published evaluation computes them
(joonson/syncnet_python ``calc_pdist`` and ``evaluate``), vectorised.

For each video window i and shift k in 0..2v, the Euclidean distance between video embedding i and audio
embedding i + k - v (audio embeddings zero-padded by v at both ends, as there). Mean over windows gives one
distance per shift; the minimum is **LSE-D**, median minus minimum is **LSE-C**, and the offset is
v - argmin: positive when the picture lags the sound (video frame i matches audio frame i - offset).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import signal


@dataclass(frozen=True)
class SyncResult:
    """One clip's sync figures (published definitions) and the curves behind them."""

    lse_d: float
    """Mean distance at the best shift (LSE-D, lower is better)."""
    lse_c: float
    """Median over shifts of the mean distance, minus LSE-D (LSE-C, higher is better)."""
    offset: int
    """Frames (25 fps) the picture lags the sound by at the best shift; 0 is in sync."""
    dist_at_zero: float
    """Mean distance at offset 0 (not a published figure: unlike LSE-D it grows with an offset)."""
    offsets: np.ndarray
    """(2v+1,) the offset each shift stands for: v, v-1, …, -v."""
    mean_dist: np.ndarray
    """(2v+1,) mean distance per shift (the offset curve)."""
    frame_conf: np.ndarray
    """(N,) per-window confidence: median(mean_dist) - the window's distance at the best shift."""
    frame_conf_smoothed: np.ndarray
    """(N,) ``frame_conf`` median-filtered over 9 windows (what the reference prints)."""
    num_windows: int

    def summary(self) -> dict[str, float | int]:
        return {"lse_d": self.lse_d, "lse_c": self.lse_c, "offset": self.offset,
                "dist_at_zero": self.dist_at_zero, "num_windows": self.num_windows}


def shift_distances(video: torch.Tensor, audio: torch.Tensor, vshift: int) -> torch.Tensor:
    """(N, 2v+1) distances: [i, k] = ||video[i] - audio_padded[i + k]|| (``pairwise_distance``, its eps too)."""
    padded = F.pad(audio, (0, 0, vshift, vshift))
    windows = padded.unfold(0, 2 * vshift + 1, 1).transpose(1, 2)  # (N, 2v+1, D)
    return F.pairwise_distance(video[:, None, :].expand_as(windows), windows)


def sync_result(video: torch.Tensor, audio: torch.Tensor, vshift: int = 15) -> SyncResult:
    """LSE-D, LSE-C, offset and curves from (N, D) video and audio embeddings of the same N windows."""
    if video.shape != audio.shape or video.ndim != 2 or video.shape[0] == 0:
        raise ValueError(f"need (N, D) embeddings of equal shape with N > 0, got {tuple(video.shape)} and {tuple(audio.shape)}")
    dists = shift_distances(video.float().cpu(), audio.float().cpu(), vshift)
    mdist = dists.mean(0)
    minval, minidx = torch.min(mdist, 0)
    median = torch.median(mdist)
    fconf = (median - dists[:, minidx]).numpy().astype(np.float64)
    return SyncResult(
        lse_d=float(minval),
        lse_c=float(median - minval),
        offset=int(vshift - minidx),
        dist_at_zero=float(mdist[vshift]),
        offsets=vshift - np.arange(2 * vshift + 1),
        mean_dist=mdist.numpy().astype(np.float64),
        frame_conf=fconf,
        frame_conf_smoothed=signal.medfilt(fconf, kernel_size=9),
        num_windows=int(video.shape[0]),
    )
