"""``SyncScorer``: SyncNet's LSE-D, LSE-C and offset for a clip, from frames or a file (docs/evaluation.md).

    scorer = SyncScorer("syncnet_v2.model")              # or SyncScorer(a_module) with forward_lip/forward_aud
    result = scorer.score(frames, audio16k, fps)          # frames (T, H, W, 3) RGB uint8, audio float 16 kHz
    result.lse_c, result.lse_d, result.offset

The network sees 25 fps face crops (``evaluation.sync_crop``) and MFCC windows (``evaluation.sync_features``)
exactly as the published evaluation prepares them; ``evaluation.sync_metrics`` turns embeddings into figures.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import nn

from evaluation import sync_features as sf
from evaluation.sync_crop import longest_face_run, syncnet_crops
from evaluation.sync_metrics import SyncResult, sync_result
from evaluation.syncnet_v2 import load_syncnet_v2
from media.faces import FaceAnalyzer, FaceTrack, default_face_analyzer, track_faces

log = logging.getLogger(__name__)


def video_windows(crops: torch.Tensor, bgr: bool = True) -> torch.Tensor:
    """(T, S, S, 3) RGB 0-255 crops (any float or uint8 tensor, gradients kept) -> (T - 4, 3, 5, S, S)
    SyncNet windows (window i = frames i..i+4), BGR as the published network expects."""
    x = crops.float().permute(3, 0, 1, 2)  # (3, T, S, S)
    if bgr:
        x = x.flip(0)
    return x.unfold(1, 5, 1).permute(1, 0, 4, 2, 3)  # (T-4, 3, 5, S, S)


def mfcc_windows(audio16k: np.ndarray, count: int) -> torch.Tensor:
    """(count, 1, 13, 20) MFCC windows of 16 kHz audio (window i = MFCC frames 4i..4i+19)."""
    return torch.from_numpy(sf.audio_windows(sf.mfcc(audio16k), count))


class NotEnoughFrames(ValueError):
    """The clip has too few frames with a face (or too little audio) to score."""


class SyncScorer:
    """SyncNet scoring with the published procedure.

    ``network``: a ``syncnet_v2.model`` path, or any module with ``forward_lip((N, 3, 5, S, S))`` and
    ``forward_aud((N, 1, 13, 20))`` (and ``crop_size`` S, default 224) — the tests train a tiny one.
    ``vshift``: offsets searched, ±frames (15 as published). ``min_frames``: fewest consecutive face frames
    scored (the reference's pipeline keeps tracks over 100 frames, LatentSync's over 50; short clips are
    common here, so 25 by default). ``bgr``: the published network was trained on OpenCV's BGR frames.
    """

    def __init__(
        self,
        network: str | Path | nn.Module,
        *,
        device: str | torch.device = "cpu",
        vshift: int = 15,
        batch_size: int = 20,
        min_frames: int = 25,
        bgr: bool = True,
        analyzer: FaceAnalyzer | None = None,
    ):
        self.net = network if isinstance(network, nn.Module) else load_syncnet_v2(network)
        self.device = torch.device(device)
        self.net.eval().to(self.device)
        self.crop_size = int(getattr(self.net, "crop_size", 224))
        self.vshift, self.batch_size, self.min_frames, self.bgr = vshift, batch_size, min_frames, bgr
        self._analyzer = analyzer

    @property
    def analyzer(self) -> FaceAnalyzer:
        if self._analyzer is None:
            self._analyzer = default_face_analyzer()
        return self._analyzer

    # --- entry points ---------------------------------------------------------------------------------

    def score(self, frames: np.ndarray, audio16k: np.ndarray, fps: float | Fraction) -> SyncResult:
        """Frames (T, H, W, 3) RGB uint8 at ``fps`` with their 16 kHz audio (frame 0 at sample 0)."""
        frames = np.asarray(frames)
        idx = sf.resample_indices(len(frames), fps) if Fraction(fps).limit_denominator(1001000) != sf.FPS else np.arange(len(frames))
        frames25 = frames[idx]
        track = track_faces(list(frames25), self.analyzer)
        return self.score_track(lambda: iter([frames25]), track, audio16k)

    def score_track(
        self, chunks: Callable[[], Iterable[np.ndarray]], track: FaceTrack, audio16k: np.ndarray
    ) -> SyncResult:
        """Score the longest face run of ``track``; ``chunks()`` decodes the track's 25 fps frames again."""
        start, end = longest_face_run(track)
        if end - start < max(self.min_frames, 6):
            raise NotEnoughFrames(
                f"the longest run of frames with a face is {end - start} frames; at least {max(self.min_frames, 6)} are needed"
            )
        crops = np.stack(list(syncnet_crops(chunks(), track, start, end, self.crop_size)))
        begin = start * sf.SAMPLES_PER_FRAME  # the reference cuts the audio to the track as well
        return self.score_crops(crops, np.asarray(audio16k)[begin : begin + (end - start) * sf.SAMPLES_PER_FRAME])

    @torch.no_grad()
    def score_crops(self, crops: np.ndarray, audio16k: np.ndarray) -> SyncResult:
        """Crops (T, S, S, 3) RGB uint8 at 25 fps and their 16 kHz audio -> SyncResult."""
        count = sf.num_windows(len(crops), len(audio16k))
        if count < 1:
            raise NotEnoughFrames(f"{len(crops)} frames and {len(audio16k) / sf.SAMPLE_RATE:.2f} s of audio make no 5-frame window")
        if abs(len(audio16k) / sf.SAMPLE_RATE - len(crops) / sf.FPS) > 0.05:
            log.warning("audio (%.3f s) and video (%.3f s) lengths differ", len(audio16k) / sf.SAMPLE_RATE, len(crops) / sf.FPS)
        video = video_windows(torch.from_numpy(np.ascontiguousarray(crops)), self.bgr)  # a view: no copy
        mfcc = mfcc_windows(audio16k, count)
        v_feats, a_feats = [], []
        for b in range(0, count, self.batch_size):
            n = min(count, b + self.batch_size) - b
            v_feats.append(self.net.forward_lip(video[b : b + n].contiguous().to(self.device)).float().cpu())
            a_feats.append(self.net.forward_aud(mfcc[b : b + n].to(self.device)).float().cpu())
        return sync_result(torch.cat(v_feats), torch.cat(a_feats), self.vshift)
