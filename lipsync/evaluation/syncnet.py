"""``SyncScorer``: SyncNet's LSE-D, LSE-C and offset for a clip, from frames or a file (docs/evaluation.md).

    scorer = SyncScorer("syncnet_v2.model")              # or SyncScorer(a_module) with forward_lip/forward_aud
    result = scorer.score(frames, audio16k, fps)          # frames (T, H, W, 3) RGB uint8, audio float 16 kHz
    result.lse_c, result.lse_d, result.offset

The network sees 25 fps face crops (``lipsync.evaluation.sync_crop``) and MFCC windows (``lipsync.evaluation.sync_features``)
exactly as the published evaluation prepares them; ``lipsync.evaluation.sync_metrics`` turns embeddings into figures.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lipsync.evaluation import sync_features as sf
from lipsync.evaluation.sync_crop import longest_face_run, syncnet_crops
from lipsync.evaluation.sync_metrics import SyncResult, sync_result
from lipsync.evaluation.syncnet_v2 import load_syncnet_v2
from lipsync.media.faces import FaceAnalyzer, FaceTrack, default_face_analyzer, track_faces

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
        crops = syncnet_crops(chunks(), track, start, end, self.crop_size)  # streamed: memory is one batch
        begin = start * sf.SAMPLES_PER_FRAME  # the reference cuts the audio to the track as well
        audio = np.asarray(audio16k)[begin : begin + (end - start) * sf.SAMPLES_PER_FRAME]
        return self.score_crops(crops, audio, num_frames=end - start)

    @torch.no_grad()
    def score_crops(
        self, crops: np.ndarray | Iterable[np.ndarray], audio16k: np.ndarray, num_frames: int | None = None
    ) -> SyncResult:
        """Crops (T, S, S, 3) RGB uint8 at 25 fps (an array, or an iterable of T crops with ``num_frames``
        = T) and their 16 kHz audio -> SyncResult."""
        num_frames = len(crops) if num_frames is None else num_frames
        count = sf.num_windows(num_frames, len(audio16k))
        if count < 1:
            raise NotEnoughFrames(f"{num_frames} frames and {len(audio16k) / sf.SAMPLE_RATE:.2f} s of audio make no 5-frame window")
        if abs(len(audio16k) / sf.SAMPLE_RATE - num_frames / sf.FPS) > 0.05:
            log.warning("audio (%.3f s) and video (%.3f s) lengths differ", len(audio16k) / sf.SAMPLE_RATE, num_frames / sf.FPS)
        mfcc = mfcc_windows(audio16k, count)
        a_feats = [self.net.forward_aud(mfcc[b : b + self.batch_size].to(self.device)).float().cpu()
                   for b in range(0, count, self.batch_size)]
        return sync_result(self._embed_video(iter(crops), count), torch.cat(a_feats), self.vshift)

    def _embed_video(self, crops: Iterator[np.ndarray], count: int) -> torch.Tensor:
        """Embeddings of the first ``count`` 5-frame windows, holding one batch of crops at a time."""
        feats, buffer, done = [], [], 0
        for crop in crops:
            buffer.append(crop)
            ready = len(buffer) - 4
            if ready >= self.batch_size or done + ready >= count:
                n = min(ready, count - done)
                windows = video_windows(torch.from_numpy(np.stack(buffer)), self.bgr)[:n]
                feats.append(self.net.forward_lip(windows.contiguous().to(self.device)).float().cpu())
                done, buffer = done + n, buffer[n:]
                if done >= count:
                    break
        if done < count:
            raise NotEnoughFrames(f"the crops ran out after {done} of {count} windows")
        return torch.cat(feats)
