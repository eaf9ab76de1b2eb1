"""Several faces in a video: every face tracked, and the face to lip-sync chosen by the request's ``speaker``.

An extension of the hosted schema (``lipsync.contract.schema.LipsyncInput.speaker``). ``"largest"`` (the default)
never comes here: ``lipsync.media.faces.FaceTracker`` follows the dominant face as it always has. Every other
value runs this module's first pass instead:

1. ``MultiFaceTracker``: the detector every ``detect_every`` frames (as ``FaceTracker``), each face followed by
   its landmarks in between, detections linked into candidate tracks by box overlap. A track ends when its face
   is gone for more than ``max_gap`` frames (a cut ends every track: the boxes jump).
2. A selection: for each frame, the candidate track to lip-sync, or none:
   - a point ``{frame, x, y}`` (input pixels): the track whose face (its box, a quarter larger each way) holds
     the point at that frame; no face there is ``InvalidInput`` on ``speaker``. Other tracks showing the same
     person (never at the same time as the chosen one; dlib's identity descriptor within ``SAME_PERSON`` of the
     chosen one's) are chosen too, so the choice survives cuts;
   - boxes ``[{frame, box}, …]``: keys linearly interpolated; in each frame from the first key to the last, the
     track whose box overlaps the interpolated one most (IoU at least ``BOX_MIN_IOU``); none outside the keys;
   - ``"auto"``: active-speaker detection on the *source*: each track's mouth opening (inner-lip gap over the eye
     distance, from the 68 landmarks) against the source's own audio (per-frame log energy), window by window
     (``WINDOW_S``, only where the voice-activity detector hears speech): the score is the best Pearson
     correlation over lags up to ``MAX_LAG`` frames; a window goes to the top track when it scores at least
     ``MIN_SCORE`` and leads the next by ``MIN_LEAD``, others keep the previous decision (a still mouth,
     ``MIN_MOUTH_MOTION``, scores 0). Without an audio track,
     or when no window decides, the largest face (said in the logs).
3. The chosen rows become a ``FaceTrack`` through ``lipsync.media.track_smoothing.TrackRows`` (the same bridging and
   smoothing as the default path); a change of chosen track starts a new shot, so smoothing never blends two
   faces. Frames without a chosen face are absent from the track, so they pass through untouched: so does every
   face that is not chosen.

``Selection.metrics()`` names the candidate tracks, the chosen track of each segment and why (for ``auto``: the
scores).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from lipsync.contract.errors import InvalidInput
from lipsync.contract.schema import SpeakerBoxes, SpeakerPoint
from lipsync.media.faces import (COUNTED_FACE_SCORE, FOLLOW_MAX_CHANGE, N_LANDMARKS, FaceAnalyzer, FaceDetection, FaceTrack, _follow, _iou, _same_frame,
                                 _thumbnail, alignment_from_landmarks)
from lipsync.media.track_smoothing import TrackRows

log = logging.getLogger(__name__)

LINK_IOU = 0.3
"""A detection continues a track when its box overlaps the track's last box by at least this (IoU)."""
POINT_MARGIN = 0.25
"""A point selects a face when it falls in the face's box grown by this fraction of its size on each side."""
SAME_PERSON = 0.6
"""dlib descriptors of one person are typically closer than this (Euclidean; different people further)."""
BOX_MIN_IOU = 0.3
WINDOW_S = 0.5
"""Seconds per active-speaker decision window."""
MAX_LAG = 2
"""Frames the mouth may lead or trail the sound by."""
MIN_MOUTH_MOTION = 0.01
"""A mouth whose opening varies less than this (standard deviation over a window, in eye distances) is still:
landmark jitter on a closed mouth is a few thousandths, a speaking mouth's a few hundredths."""
MIN_SCORE = 0.3
MIN_LEAD = 0.1
MAX_SEGMENTS = 64
"""Segments listed in the metrics at most (the rest are counted)."""


@dataclass(frozen=True)
class CandidateTrack:
    """One face followed through consecutive frames (small gaps allowed)."""

    id: int
    frames: np.ndarray
    """(n,) int64 increasing frame indices where the face was seen."""
    boxes: np.ndarray
    """(n, 4) float32 x0, y0, x1, y1 in frame pixels."""
    landmarks: np.ndarray
    """(n, 68, 2) float32."""
    detected: np.ndarray
    """(n,) bool: found by the detector (not followed)."""
    descriptor: np.ndarray | None = None
    """Identity descriptor at the track's first detection, when the tracker was given ``describe``."""

    @property
    def first(self) -> int:
        return int(self.frames[0])

    @property
    def last(self) -> int:
        return int(self.frames[-1])

    def index(self, frame: int) -> int | None:
        k = int(np.searchsorted(self.frames, frame))
        return k if k < len(self.frames) and self.frames[k] == frame else None

    def box_near(self, frame: int) -> np.ndarray | None:
        """The box at ``frame``, or at the nearest frame seen when ``frame`` is inside the track's span."""
        if not self.first <= frame <= self.last:
            return None
        k = int(np.argmin(np.abs(self.frames - frame)))
        return self.boxes[k]

    def median_box(self) -> list[float]:
        return [round(float(v), 1) for v in np.median(self.boxes, axis=0)]


@dataclass(frozen=True)
class FaceTracks:
    tracks: tuple[CandidateTrack, ...]
    num_frames: int
    frame_size: tuple[int, int]
    analyzer: str


@dataclass
class _Open:
    id: int
    frames: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    landmarks: list[np.ndarray] = field(default_factory=list)
    detected: list[bool] = field(default_factory=list)
    descriptor: np.ndarray | None = None
    face: FaceDetection | None = None
    thumb: np.ndarray | None = None
    look: np.ndarray | None = None
    """16x16 grey thumbnail of the face's box in its last frame (a detection unlike it starts a new track)."""

    def close(self) -> CandidateTrack:
        return CandidateTrack(self.id, np.array(self.frames, np.int64), np.stack(self.boxes).astype(np.float32),
                              np.stack(self.landmarks).astype(np.float32), np.array(self.detected, bool),
                              self.descriptor)


class MultiFaceTracker:
    """Every face, a chunk at a time: ``push`` decoded frames, ``finish`` for the ``FaceTracks``.

    ``describe(rgb, landmarks) -> vector``: called once per track, at its first detection (the identity
    descriptor a point selection follows across cuts)."""

    def __init__(self, analyzer: FaceAnalyzer, *, detect_every: int = 10, max_gap: int = 6,
                 describe: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None):
        self.analyzer, self.detect_every, self.max_gap, self.describe = analyzer, detect_every, max_gap, describe
        self._can_follow = detect_every > 1 and callable(getattr(analyzer, "landmarks", None))
        self._open: list[_Open] = []
        self._closed: list[CandidateTrack] = []
        self._next_id = 0
        self._since_detect = 0
        self._last_frame: np.ndarray | None = None
        self._last_faces: list[tuple[FaceDetection, bool]] = []
        self.num_frames = 0
        self.frame_size = (0, 0)

    def push(self, frames: np.ndarray) -> None:
        for frame in (frames if frames.ndim == 4 else frames[None]):
            self._push_frame(frame)

    def finish(self) -> FaceTracks:
        self._closed += [t.close() for t in self._open if t.frames]
        self._open = []
        tracks = tuple(sorted(self._closed, key=lambda t: t.id))
        log.info("%d face tracks over %d frames with %s", len(tracks), self.num_frames, self.analyzer.name)
        return FaceTracks(tracks, self.num_frames, self.frame_size, self.analyzer.name)

    def _push_frame(self, frame: np.ndarray) -> None:
        self.frame_size = (frame.shape[1], frame.shape[0])
        i = self.num_frames
        self.num_frames += 1
        for t in [t for t in self._open if i - t.frames[-1] > self.max_gap + 1]:
            self._open.remove(t)
            self._closed.append(t.close())
        if _same_frame(frame, self._last_frame):
            found = self._last_faces
        else:
            found = self._followed(frame) if self._since_detect < self.detect_every else None
            if found is None:
                found, self._since_detect = [(f, True) for f in _plausible(self.analyzer.detect(frame))], 1
            else:
                self._since_detect += 1
        self._last_frame, self._last_faces = frame, found
        self._link(frame, i, found)

    def _followed(self, frame: np.ndarray) -> list[tuple[FaceDetection, bool]] | None:
        """Every face of the previous frame found again by its landmarks; None when one is lost (detect)."""
        previous = [t for t in self._open if t.frames[-1] == self.num_frames - 2 and t.face is not None]
        if not self._can_follow or not previous:
            return None
        out = []
        for t in previous:
            face = _follow(self.analyzer, frame, t.face, t.thumb)
            if face is None:
                return None
            out.append((face, False))
        return out

    def _link(self, frame: np.ndarray, i: int, found: list[tuple[FaceDetection, bool]]) -> None:
        pairs = sorted(((_iou(face.box, t.boxes[-1]), a, b) for a, (face, _) in enumerate(found)
                        for b, t in enumerate(self._open)), reverse=True)
        taken_faces: set[int] = set()
        taken_tracks: set[int] = set()
        for overlap, a, b in pairs:
            if overlap < LINK_IOU or a in taken_faces or b in taken_tracks:
                continue
            if found[a][1] and not _looks_alike(frame, found[a][0], self._open[b]):
                continue  # a cut: another face where this one was
            taken_faces.add(a)
            taken_tracks.add(b)
            self._add(self._open[b], frame, i, *found[a])
        for a, (face, detected) in enumerate(found):
            if a not in taken_faces:
                t = _Open(self._next_id)
                self._next_id += 1
                if self.describe is not None:
                    t.descriptor = np.asarray(self.describe(frame, face.landmarks), np.float32)
                self._open.append(t)
                self._add(t, frame, i, face, detected)

    def _add(self, t: _Open, frame: np.ndarray, i: int, face: FaceDetection, detected: bool) -> None:
        t.look = _thumbnail(frame, face.box)
        t.frames.append(i)
        t.boxes.append(np.asarray(face.box, np.float32))
        t.landmarks.append(np.asarray(face.landmarks, np.float32))
        t.detected.append(detected)
        if self._can_follow and face is not t.face:
            t.face, t.thumb = face, _thumbnail(frame, face.box)


def _plausible(faces: list[FaceDetection]) -> list[FaceDetection]:
    """Detections beside a face scoring ``COUNTED_FACE_SCORE`` or more are dropped when they score less (stray
    matches); a frame whose faces all score low keeps them, as the default tracker does."""
    strong = [f for f in faces if f.score >= COUNTED_FACE_SCORE]
    return strong or faces


def _looks_alike(frame: np.ndarray, face: FaceDetection, track: _Open) -> bool:
    now = _thumbnail(frame, face.box)
    return track.look is None or now is None or float(np.abs(now - track.look).mean()) <= FOLLOW_MAX_CHANGE


# --- selection ------------------------------------------------------------------------------------------


@dataclass
class Selection:
    """``choice[i]``: the candidate track lip-synced in frame i, -1 for none; ``why``: per chosen track, the
    reason (``scores`` per track id for ``auto``)."""

    mode: str
    choice: np.ndarray
    tracks: FaceTracks
    why: dict[int, dict[str, Any]] = field(default_factory=dict)
    note: str = ""

    def segments(self) -> list[tuple[int, int, int]]:
        """[(first frame, last frame, track id)] runs of one chosen track."""
        out = []
        edges = np.flatnonzero(np.diff(self.choice)) + 1
        for a, b in zip(np.r_[0, edges], np.r_[edges, len(self.choice)]):
            if len(self.choice) and self.choice[a] >= 0:
                out.append((int(a), int(b) - 1, int(self.choice[a])))
        return out

    def describe(self) -> str:
        """One log line: the tracks, and who was chosen where."""
        parts = []
        for first, last, tid in self.segments()[:8]:
            why = self.why.get((first, tid), self.why.get(tid, {}))
            scores = why.get("scores")
            parts.append(f"frames {first}-{last}: track {tid} ({why.get('why', '')}"
                         + (f"; scores {scores}" if scores else "") + ")")
        more = len(self.segments()) - 8
        return (f"speaker {self.mode}: {len(self.tracks.tracks)} face tracks; " + ("; ".join(parts) or "no face chosen")
                + (f"; {more} more segments" if more > 0 else "") + (f". {self.note}" if self.note else ""))

    def metrics(self) -> dict[str, Any]:
        segments = self.segments()
        listed = [{"frames": [a, b], "track": tid, **self.why.get((a, tid), self.why.get(tid, {}))}
                  for a, b, tid in segments[:MAX_SEGMENTS]]
        out: dict[str, Any] = {
            "mode": self.mode,
            "tracks": [{"id": t.id, "frames": [t.first, t.last], "box": t.median_box()} for t in self.tracks.tracks],
            "segments": listed,
        }
        if len(segments) > MAX_SEGMENTS:
            out["segments_not_listed"] = len(segments) - MAX_SEGMENTS
        if self.note:
            out["note"] = self.note
        return out


def _present(tracks: FaceTracks) -> np.ndarray:
    """(num_tracks, T) bool: the track spans the frame (seen, or inside a gap it bridges)."""
    out = np.zeros((len(tracks.tracks), tracks.num_frames), bool)
    for k, t in enumerate(tracks.tracks):
        out[k, t.first : t.last + 1] = True
    return out


def _areas(tracks: FaceTracks) -> np.ndarray:
    """(num_tracks, T) float: box area where the track spans the frame, else 0."""
    out = np.zeros((len(tracks.tracks), tracks.num_frames), np.float32)
    for k, t in enumerate(tracks.tracks):
        span = np.arange(t.first, t.last + 1)
        idx = np.clip(np.searchsorted(t.frames, span), 0, len(t.frames) - 1)
        b = t.boxes[idx]
        out[k, span] = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return out


def select_largest(tracks: FaceTracks, note: str = "") -> Selection:
    """The largest face in each frame, keeping the face chosen so far while it is at least half as large
    (``lipsync.media.faces``' rule, over whole tracks)."""
    areas = _areas(tracks)
    choice = np.full(tracks.num_frames, -1, np.int64)
    current = -1
    for i in range(tracks.num_frames):
        if not areas.size or areas[:, i].max() <= 0:
            current = -1
            continue
        best = int(np.argmax(areas[:, i]))
        if current < 0 or areas[current, i] < 0.5 * areas[best, i]:
            current = best
        choice[i] = tracks.tracks[current].id
    return Selection("largest", choice, tracks, {t.id: {"why": "largest face"} for t in tracks.tracks}, note)


def select_point(tracks: FaceTracks, point: SpeakerPoint, scale: tuple[float, float]) -> Selection:
    """The face holding the point at its frame, and every track of the same person (see the module doc)."""
    x, y, f = point.x * scale[0], point.y * scale[1], point.frame
    if f >= tracks.num_frames:
        raise InvalidInput(f"speaker frame {f} is beyond the video's {tracks.num_frames} frames", field="speaker")
    hits = []
    for t in tracks.tracks:
        box = t.box_near(f)
        if box is None:
            continue
        w, h = box[2] - box[0], box[3] - box[1]
        if box[0] - POINT_MARGIN * w <= x <= box[2] + POINT_MARGIN * w and box[1] - POINT_MARGIN * h <= y <= box[3] + POINT_MARGIN * h:
            centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
            hits.append((float(np.hypot(*(centre - (x, y)))), t))
    if not hits:
        faces = [[round(float(v) / s, 1) for v, s in zip(t.box_near(f), scale * 2)] for t in tracks.tracks
                 if t.box_near(f) is not None]
        raise InvalidInput(f"speaker point ({point.x:g}, {point.y:g}) at frame {f} is on no face; faces there "
                           f"(x0, y0, x1, y1 in input pixels): {faces or 'none'}", field="speaker")
    chosen = min(hits, key=lambda h: h[0])[1]
    why = {chosen.id: {"why": f"point ({point.x:g}, {point.y:g}) at frame {f}"}}
    same = [chosen]
    note = ""
    if chosen.descriptor is None:
        note = "no identity descriptor: the chosen face is not followed across cuts"
    else:
        for t in tracks.tracks:
            if t is not chosen and t.descriptor is not None and (t.last < chosen.first or t.first > chosen.last):
                # (a face seen together with the chosen one is someone else, however alike)
                distance = float(np.linalg.norm(t.descriptor - chosen.descriptor))
                if distance < SAME_PERSON:
                    same.append(t)
                    why[t.id] = {"why": f"same person as track {chosen.id} (identity distance {distance:.2f})"}
    choice = np.full(tracks.num_frames, -1, np.int64)
    for t in sorted(same, key=lambda t: t is chosen):  # the chosen track last: it wins where they overlap
        choice[t.first : t.last + 1] = t.id
    return Selection("point", choice, tracks, why, note)


def select_boxes(tracks: FaceTracks, boxes: SpeakerBoxes, scale: tuple[float, float]) -> Selection:
    keys = np.array([b.frame for b in boxes.boxes], np.float64)
    values = np.array([b.box for b in boxes.boxes], np.float64) * np.array(scale * 2)
    choice = np.full(tracks.num_frames, -1, np.int64)
    if keys[0] >= tracks.num_frames:
        raise InvalidInput(f"speaker boxes start at frame {int(keys[0])}, after the video's {tracks.num_frames} "
                           "frames", field="speaker")
    last = min(int(keys[-1]), tracks.num_frames - 1)
    for i in range(int(keys[0]), last + 1):
        target = np.array([np.interp(i, keys, values[:, c]) for c in range(4)])
        best, best_iou = -1, BOX_MIN_IOU
        for t in tracks.tracks:
            box = t.box_near(i)
            if box is not None and _iou(box, target) >= best_iou:
                best, best_iou = t.id, _iou(box, target)
        choice[i] = best
    if (choice < 0).all():
        raise InvalidInput(f"speaker boxes overlap no face (IoU {BOX_MIN_IOU} or more) in frames {int(keys[0])}-{last}",
                           field="speaker")
    return Selection("boxes", choice, tracks, {t.id: {"why": "overlaps the given boxes most"} for t in tracks.tracks})


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """(…, 68, 2) → (…,) inner-lip gap over the eye distance."""
    gap = np.linalg.norm(landmarks[..., [61, 62, 63], :] - landmarks[..., [67, 66, 65], :], axis=-1).mean(-1)
    eyes = np.linalg.norm(landmarks[..., 36:42, :].mean(-2) - landmarks[..., 42:48, :].mean(-2), axis=-1)
    return gap / np.maximum(eyes, 1e-3)


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Best Pearson correlation of the mouth openings x and the loudness y over lags up to MAX_LAG frames (0 where
    the mouth is still, see ``MIN_MOUTH_MOTION``, or the sound flat)."""
    best = 0.0
    for lag in range(-MAX_LAG, MAX_LAG + 1):
        a, b = (x[lag:], y[: len(y) - lag]) if lag >= 0 else (x[:lag], y[-lag:])
        ok = np.isfinite(a) & np.isfinite(b)
        if ok.sum() < 4:
            continue
        a, b = a[ok], b[ok]
        if a.std() < MIN_MOUTH_MOTION or b.std() < 1e-3:
            continue
        best = max(best, float(np.corrcoef(a, b)[0, 1]))
    return best


def audio_activity(wav16k: np.ndarray, num_frames: int, fps: Fraction) -> tuple[np.ndarray, np.ndarray]:
    """Per video frame: (log energy (T,), speech heard (T,) bool) of 16 kHz mono audio at the frame's time."""
    from lipsync.media.audio import frame_sample_ranges
    from lipsync.media.vad import WINDOW, speech_probability

    ranges = frame_sample_ranges(num_frames, fps)
    padded = np.zeros(max(int(ranges[-1, 1]), len(wav16k)), np.float32)
    padded[: len(wav16k)] = wav16k
    csum = np.concatenate([[0.0], np.cumsum(padded.astype(np.float64) ** 2)])
    energy = (csum[ranges[:, 1]] - csum[ranges[:, 0]]) / np.maximum(ranges[:, 1] - ranges[:, 0], 1)
    loudness = np.log10(energy + 1e-8)
    probability = speech_probability(padded)
    centre = ((ranges[:, 0] + ranges[:, 1]) // 2) // WINDOW
    speech = probability[np.clip(centre, 0, len(probability) - 1)] >= 0.5
    return loudness.astype(np.float32), speech


def select_auto(tracks: FaceTracks, wav16k: np.ndarray | None, fps: Fraction) -> Selection:
    """Active-speaker detection (see the module doc); ``wav16k``: the source's own audio, 16 kHz mono."""
    if len(tracks.tracks) <= 1:
        return select_largest(tracks, "one face: nothing to choose")
    if wav16k is None:
        return select_largest(tracks, "the video has no audio track: the largest face")
    T = tracks.num_frames
    loudness, speech = audio_activity(wav16k, T, fps)
    opening = np.full((len(tracks.tracks), T), np.nan, np.float32)
    for k, t in enumerate(tracks.tracks):
        opening[k, t.frames] = mouth_opening(t.landmarks)
    width = max(4, round(WINDOW_S * float(fps)))
    decided = np.full(T, -1, np.int64)  # per frame: the window's winner (track index), -1 undecided
    scores_of: list[tuple[int, int, np.ndarray]] = []
    for a in range(0, T, width):
        b = min(T, a + width)
        if b - a < 4 or speech[a:b].mean() < 0.3:
            continue
        scores = np.array([_correlation(opening[k, a:b], loudness[a:b])
                           if np.isfinite(opening[k, a:b]).mean() >= 0.6 else 0.0 for k in range(len(tracks.tracks))])
        order = np.argsort(scores)[::-1]
        scores_of.append((a, b, scores))
        if scores[order[0]] >= MIN_SCORE and scores[order[0]] - scores[order[1]] >= MIN_LEAD:
            decided[a:b] = order[0]
    if not (decided >= 0).any():
        return select_largest(tracks, "no face's mouth follows the speech: the largest face")
    # undecided frames keep the decision before them (the first decision before it), where that track is there
    present = _present(tracks)
    filled = decided.copy()
    current = int(decided[np.flatnonzero(decided >= 0)[0]])
    for i in range(T):
        if decided[i] >= 0:
            current = int(decided[i])
        filled[i] = current
    fallback = select_largest(tracks).choice
    ids = np.array([t.id for t in tracks.tracks], np.int64)
    choice = np.where(present[filled, np.arange(T)], ids[filled], fallback)
    why: dict[Any, dict[str, Any]] = {}
    sel = Selection("auto", choice, tracks, why)
    for first, last, tid in sel.segments():
        inside = [s for a, b, s in scores_of if a <= last and b > first]
        if inside:
            mean = np.mean(inside, axis=0)
            why[(first, tid)] = {"why": "its mouth follows the source's speech",
                                 "scores": {str(t.id): round(float(v), 3) for t, v in zip(tracks.tracks, mean)}}
        else:
            why[(first, tid)] = {"why": "no speech decided here: the previous choice or the largest face"}
    return sel


def one_face_selection(track: FaceTrack, mode: str = "auto", *, faces: int = 1, has_audio: bool = True) -> Selection:
    """The selection ``auto`` makes without a second tracking pass: the default tracker's own track (the request
    then runs exactly as with ``largest``, crops made during tracking included), when that tracker never saw
    two faces in a frame (``faces``) or the video has no audio track to score them against."""
    frames = np.flatnonzero(track.detected)
    candidates: tuple[CandidateTrack, ...] = ()
    if frames.size:
        lm = track.landmarks[frames]
        boxes = np.concatenate([lm.min(1), lm.max(1)], axis=1)
        candidates = (CandidateTrack(0, frames.astype(np.int64), boxes, lm, np.ones(len(frames), bool)),)
    choice = np.where(track.present, 0, -1).astype(np.int64)
    found = FaceTracks(candidates, track.num_frames, track.frame_size, track.analyzer)
    if faces > 1 and not has_audio:
        return Selection(mode, choice, found, {0: {"why": "the largest face"}},
                         "the video has no audio track: the largest face")
    return Selection(mode, choice, found, {0: {"why": "the only face"}}, "one face: nothing to choose")


def select(tracks: FaceTracks, speaker: Any, *, scale: tuple[float, float], fps: Fraction,
           source_audio: Callable[[], np.ndarray | None]) -> Selection:
    """The ``Selection`` for a request's ``speaker`` (anything but ``"largest"``, which ``FaceTracker`` does)."""
    if isinstance(speaker, SpeakerPoint):
        return select_point(tracks, speaker, scale)
    if isinstance(speaker, SpeakerBoxes):
        return select_boxes(tracks, speaker, scale)
    if speaker == "auto":
        return select_auto(tracks, source_audio() if len(tracks.tracks) > 1 else None, fps)
    return select_largest(tracks)


def selected_track(selection: Selection, *, max_gap: int = 6, smooth_window: int = 7) -> FaceTrack:
    """The chosen faces as one ``FaceTrack`` (bridged and smoothed as ``FaceTracker`` does, a new shot at every
    change of chosen track)."""
    tracks = {t.id: t for t in selection.tracks.tracks}
    rows = TrackRows(alignment_from_landmarks, max_gap=max_gap, smooth_window=smooth_window)
    shot, previous = 0, -2
    for i, tid in enumerate(selection.choice):
        if tid != previous:
            shot += 1
            previous = int(tid)
        k = tracks[int(tid)].index(i) if tid >= 0 else None
        rows.push(None if k is None else tracks[int(tid)].landmarks[k], shot if k is not None else -1)
    rows.finish()
    taken = rows.take()
    T = selection.tracks.num_frames
    if taken is None:
        taken_present = np.zeros(T, bool)
        return FaceTrack(taken_present, taken_present.copy(), np.full((T, N_LANDMARKS, 2), np.nan, np.float32),
                         np.full((T, 4), np.nan, np.float32), selection.tracks.frame_size, selection.tracks.analyzer)
    detected = taken.detected.copy()
    for i in np.flatnonzero(detected):
        t = tracks[int(selection.choice[i])]
        detected[i] = bool(t.detected[t.index(i)])
    return FaceTrack(taken.present, detected, taken.landmarks, taken.alignment, selection.tracks.frame_size,
                     selection.tracks.analyzer)


def source_audio_loader(video_path: str | os.PathLike[str], *, max_seconds: float) -> Callable[[], np.ndarray | None]:
    """A loader of the video file's own audio track (16 kHz mono), None when it has none."""

    def load() -> np.ndarray | None:
        from lipsync.media.audio import load_audio, to_model_audio
        from lipsync.media.errors import NoAudioStream

        try:
            return to_model_audio(load_audio(video_path, field="video", max_seconds=max_seconds))
        except NoAudioStream:
            return None

    return load


class SpeakerTracker:
    """``FaceTracker``'s surface (``push`` chunks, ``finish`` → ``FaceTrack``) for a request's ``speaker``: every
    face tracked, the chosen ones kept; ``selection`` holds the choice afterwards (its ``metrics()``).

    ``scale``: decoded frame pixels per input pixel (x, y), for points and boxes given in input pixels.
    ``source_audio``: loads the video's own audio (16 kHz mono) or gives None; only ``auto`` with several faces
    calls it. A point selection describes each face's identity with ``embed`` (dlib's ResNet when None)."""

    def __init__(self, analyzer: FaceAnalyzer, speaker: Any, *, scale: tuple[float, float], fps: Fraction,
                 source_audio: Callable[[], np.ndarray | None],
                 embed: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None):
        if isinstance(speaker, SpeakerPoint) and embed is None:
            from lipsync.media.embedding import FaceEmbedder

            embed = FaceEmbedder().embed
        self.speaker, self.scale, self.fps, self.source_audio = speaker, scale, fps, source_audio
        self._tracker = MultiFaceTracker(analyzer, describe=embed if isinstance(speaker, SpeakerPoint) else None)
        self.selection: Selection | None = None

    def push(self, frames: np.ndarray) -> None:
        self._tracker.push(frames)

    def finish(self) -> FaceTrack:
        tracks = self._tracker.finish()
        self.selection = select(tracks, self.speaker, scale=self.scale, fps=self.fps, source_audio=self.source_audio)
        return selected_track(self.selection)

    def describe(self) -> str:
        return "speaker: not chosen yet" if self.selection is None else self.selection.describe()
