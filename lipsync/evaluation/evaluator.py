"""Score one case with every metric whose weights are present: the engine behind ``lipsync eval``.

A metric without its weights is skipped with one line (``Evaluator.skipped``); a metric that cannot score a
case (no face, too short) records its reason in that case's ``errors`` and the others still run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from lipsync.evaluation.cases import Case
from lipsync.evaluation.identity import csim, identity_embedder, track_identity
from lipsync.evaluation.stable_scorer import StableSyncScorer
from lipsync.evaluation.sync_crop import longest_face_run
from lipsync.evaluation.sync_features import SAMPLES_PER_FRAME
from lipsync.evaluation.syncnet import SyncScorer
from lipsync.evaluation.unchanged import unchanged_region
from lipsync.media.audio import load_audio, to_model_audio
from lipsync.media.crop import crop_faces
from lipsync.media.faces import FaceAnalyzer, default_face_analyzer, track_faces
from lipsync.media.probe import OutputSpec, expected_frame_count, probe_video
from lipsync.media.video import iter_video_chunks

log = logging.getLogger(__name__)

MAX_FRAMES = 10**6  # a decode cap only; clips are read streaming
STABLE_MAX_FRAMES = 1500  # 60 s at 25 fps


@dataclass(frozen=True)
class EvalOptions:
    syncnet: Path | None = None
    """``syncnet_v2.model``; None skips LSE-C / LSE-D."""
    stable_syncnet: Path | None = None
    """LatentSync's ``stable_syncnet.pt``; None skips the StableSyncNet score."""
    stable_syncnet_config: Path | None = None
    """Its YAML; None means the published ``syncnet_16_pixel_attn.yaml``."""
    insightface_root: str | None = None
    device: str = "cpu"
    vshift: int = 15
    min_frames: int = 25


@dataclass
class CaseResult:
    name: str
    output: str
    source: str | None
    audio: str | None
    sync: dict | None = None
    stable_sync: dict | None = None
    identity: dict | None = None
    unchanged: dict | None = None
    errors: dict[str, str] = field(default_factory=dict)


def _spec(
    path: Path, field: str, fps: Fraction | None = None, size: tuple[int, int] | None = None, frames: int | None = None
) -> OutputSpec:
    """Decode geometry; a still image yields ``frames`` copies (1 by default), a video up to ``frames``."""
    info = probe_video(path, field=field)
    width, height = size or (info.width, info.height)
    count = frames or (1 if info.kind == "image" else MAX_FRAMES)
    return OutputSpec(fps=Fraction(fps) if fps else info.fps, width=width, height=height, num_frames=count)


class Evaluator:
    def __init__(self, options: EvalOptions, analyzer: FaceAnalyzer | None = None):
        self.options = options
        self.skipped: list[str] = []
        self.analyzer = analyzer or default_face_analyzer(options.insightface_root)
        self.sync = self.stable = None
        if options.syncnet:
            self.sync = SyncScorer(options.syncnet, device=options.device, vshift=options.vshift,
                                   min_frames=options.min_frames, analyzer=self.analyzer)
        else:
            self.skipped.append("LSE-C / LSE-D skipped: no SyncNet weights (--syncnet syncnet_v2.model, see docs/evaluation.md)")
        if options.stable_syncnet:
            from lipsync.evaluation.stable_syncnet import SYNCNET_16_PIXEL_ATTN

            self.stable = StableSyncScorer(options.stable_syncnet, options.stable_syncnet_config or SYNCNET_16_PIXEL_ATTN,
                                           device=options.device, vshift=options.vshift)
        else:
            self.skipped.append("StableSyncNet score skipped: no weights (--stable-syncnet stable_syncnet.pt, see docs/evaluation.md)")
        self.embedder = identity_embedder(options.insightface_root)

    @property
    def description(self) -> dict:
        return {
            "syncnet": str(self.options.syncnet) if self.sync else None,
            "stable_syncnet": str(self.options.stable_syncnet) if self.stable else None,
            "identity_embedder": self.embedder.name,
            "face_analyzer": self.analyzer.name,
            "vshift": self.options.vshift,
        }

    def evaluate(self, case: Case) -> CaseResult:
        result = CaseResult(case.name, str(case.output), str(case.source) if case.source else None,
                            str(case.audio) if case.audio else None)
        if self.sync or self.stable:
            self._sync_scores(case, result)
        if case.source is None:
            result.errors["identity"] = result.errors["unchanged"] = "no source video given"
        else:
            self._guarded(result, "identity", lambda: self._identity(case))
            self._guarded(result, "unchanged", lambda: self._unchanged(case))
        return result

    @staticmethod
    def _guarded(result: CaseResult, key: str, compute) -> None:
        try:
            setattr(result, key, compute())
        except Exception as exc:  # one metric failing on one case must not stop the others
            log.warning("%s: %s failed: %s", result.name, key, exc)
            result.errors[key] = f"{type(exc).__name__}: {exc}"

    # --- metrics ------------------------------------------------------------------------------------

    def _audio16k(self, case: Case) -> tuple[np.ndarray, str]:
        try:
            return to_model_audio(load_audio(case.output, field="output")), "output"
        except Exception:
            if case.audio is None:
                raise
            return to_model_audio(load_audio(case.audio)), "audio"

    def _sync_scores(self, case: Case, result: CaseResult) -> None:
        try:
            spec = _spec(case.output, "output", fps=Fraction(25))
            track = track_faces(iter_video_chunks(case.output, spec, field="output"), self.analyzer)
            audio, audio_from = self._audio16k(case)
        except Exception as exc:
            for key, scorer in (("sync", self.sync), ("stable_sync", self.stable)):
                if scorer:
                    result.errors[key] = f"{type(exc).__name__}: {exc}"
            return
        chunks = lambda: iter_video_chunks(case.output, spec, field="output")  # noqa: E731
        if self.sync:
            self._guarded(result, "sync", lambda: self._syncnet(chunks, track, audio, audio_from))
        if self.stable:
            self._guarded(result, "stable_sync", lambda: self._stable(chunks, track, audio))

    def _syncnet(self, chunks, track, audio, audio_from) -> dict:
        r = self.sync.score_track(chunks, track, audio)
        start, end = longest_face_run(track)
        return {**r.summary(), "audio_from": audio_from, "frames": [start, end],
                "offsets": r.offsets.tolist(), "mean_dist": r.mean_dist.tolist(),
                "frame_conf": r.frame_conf.tolist(), "frame_conf_smoothed": r.frame_conf_smoothed.tolist()}

    def _stable(self, chunks, track, audio) -> dict:
        start, end = longest_face_run(track)
        if end - start > STABLE_MAX_FRAMES:  # its crops are held in memory (about 200 kB a frame)
            log.info("StableSyncNet scores the first %d of %d face frames", STABLE_MAX_FRAMES, end - start)
            end = start + STABLE_MAX_FRAMES
        if end - start < self.stable.cfg.num_frames:
            raise ValueError(f"the longest run of frames with a face is {end - start}; {self.stable.cfg.num_frames} needed")
        crops = []
        base = 0
        for chunk in chunks():
            idx = list(range(base, base + len(chunk)))
            keep = [k for k, i in enumerate(idx) if start <= i < end]
            if keep:
                crops.append(crop_faces(chunk[keep], track, [idx[k] for k in keep], self.stable.crop_size)[0])
            base += len(chunk)
            if base >= end:
                break
        begin = start * SAMPLES_PER_FRAME
        r = self.stable.score_crops(np.concatenate(crops), audio[begin : begin + (end - start) * SAMPLES_PER_FRAME])
        return {**r.summary(), "frames": [start, end], "offsets": r.offsets.tolist(), "mean_sim": [float(x) if np.isfinite(x) else None for x in r.mean_sim]}

    def _identity(self, case: Case) -> dict:
        vecs = []
        for path, field_ in ((case.source, "source"), (case.output, "output")):
            spec = _spec(path, field_)
            track = track_faces(iter_video_chunks(path, spec, field=field_), self.analyzer).require_face(field_)
            vec = track_identity(iter_video_chunks(path, spec, field=field_), track, self.embedder)
            if vec is None:
                raise ValueError(f"no detected face in the {field_}")
            vecs.append(vec)
        return {"csim": csim(*vecs), "embedder": self.embedder.name}

    def _unchanged(self, case: Case) -> dict:
        out_info = probe_video(case.output, field="output")
        out_spec = _spec(case.output, "output")
        frames = expected_frame_count(out_info, out_spec) + 1  # bounds a still source's repeats
        spec = _spec(case.source, "source", fps=out_info.fps, size=(out_info.width, out_info.height), frames=frames)
        track = track_faces(iter_video_chunks(case.source, spec, field="source"), self.analyzer)
        r = unchanged_region(iter_video_chunks(case.source, spec, field="source"),
                             iter_video_chunks(case.output, out_spec, field="output"), track)
        return r.summary()
