"""Face detection, landmarks and tracking over a video's frames.

Offline default: dlib's HOG frontal-face detector (built into the ``dlib-bin`` wheel, no model file) plus the
68-point shape predictor shipped in ``face-recognition-models`` (see lipsync/media/README.md for why). When an
insightface model pack is on disk (``insightface_root``, from ``LIPSYNC_INSIGHTFACE_ROOT``) and insightface
imports, its detector and 68-point 3D landmarks are used instead. Both give landmarks in the iBUG 68-point
layout, so masks and alignment do not care which one ran.

``track_faces`` is the first pass over the frames: it keeps only small per-frame numbers (landmarks and the
alignment of a square crop), picks the dominant face, bridges brief misses, smooths the alignment inside
each continuous shot, and leaves frames without a face marked absent (they pass through unchanged).

Speed: the detector (the costly part) runs on a downscaled copy, and only every ``detect_every`` frames;
in between, an analyzer that can (dlib) follows the face: its landmark predictor is seeded with the box of
the previous frame, moved with the landmarks. A followed frame falls back to the detector when the face is
lost or drifts: the new landmarks' extent moves or resizes too much against the previous frame's, or the
face region's appearance changes abruptly (a cut, a hand over the face).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np

from lipsync.media.errors import NoFaceDetected
from lipsync.media.track_smoothing import Rows, TrackRows

if TYPE_CHECKING:
    from lipsync.media.timeline import Timeline

log = logging.getLogger(__name__)

N_LANDMARKS = 68
LEFT_EYE = slice(36, 42)
RIGHT_EYE = slice(42, 48)
MOUTH = slice(48, 68)


@dataclass(frozen=True)
class FaceDetection:
    box: np.ndarray
    """(4,) float32 x0, y0, x1, y1 in frame pixels."""
    score: float
    landmarks: np.ndarray
    """(68, 2) float32 x, y in frame pixels, iBUG 68-point layout."""

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


class FaceAnalyzer(Protocol):
    """Anything that finds faces with 68 landmarks in an RGB uint8 frame.

    An analyzer may also have ``landmarks(rgb, box) -> (68, 2)``: landmarks of the face in ``box`` without
    running the detector; ``track_faces`` then follows faces between detections.
    """

    name: str

    def detect(self, rgb: np.ndarray) -> list[FaceDetection]: ...


def face_models_dir() -> str:
    """Folder of the dlib model files shipped by ``face-recognition-models`` (found without importing it:
    its ``__init__`` needs ``pkg_resources``, which recent setuptools no longer has)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("face-recognition-models is not installed; it ships the dlib landmark models")
    return os.path.join(list(spec.submodule_search_locations)[0], "models")


class DlibFaceAnalyzer:
    """dlib HOG detector on a resized copy of the frame + 68-point landmarks on the full frame.

    ``detect_size``: the frame is scaled so its longer side is this many pixels before detection (HOG finds
    faces of about 80 px and up at that scale; small frames are enlarged, large ones shrunk for speed).
    """

    name = "dlib-hog+68"

    def __init__(self, *, detect_size: int = 640, upsample: int = 0, models_dir: str | None = None):
        import dlib  # lazy: importing media does not load dlib

        models_dir = models_dir or face_models_dir()
        self.detect_size = detect_size
        self.upsample = upsample
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(os.path.join(models_dir, "shape_predictor_68_face_landmarks.dat"))

    def detect(self, rgb: np.ndarray) -> list[FaceDetection]:
        rgb = np.ascontiguousarray(rgb)
        h, w = rgb.shape[:2]
        scale = self.detect_size / max(h, w)
        small = rgb if abs(scale - 1.0) < 1e-3 else cv2.resize(
            rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
            interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
        )
        rects, scores, _ = self._detector.run(small, self.upsample, 0.0)
        out = []
        for rect, score in zip(rects, scores):
            box = np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], np.float32) / scale
            out.append(FaceDetection(box, float(score), self.landmarks(rgb, box)))
        return out

    def landmarks(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        """(68, 2) landmarks of the face in ``box`` (frame pixels, truncated to integers as dlib takes them).

        The predictor is given the box's neighbourhood only (half a box on each side), not the whole frame:
        the same points (it never looks that far out), without converting a full-HD frame per call.
        """
        x0, y0, x1, y1 = (int(v) for v in box)
        h, w = rgb.shape[:2]
        margin = max(x1 - x0, y1 - y0) // 2 + 1
        ox, oy = max(0, x0 - margin), max(0, y0 - margin)
        sub = np.ascontiguousarray(rgb[oy : min(h, y1 + margin), ox : min(w, x1 + margin)])
        shape = self._predictor(sub, self._dlib.rectangle(x0 - ox, y0 - oy, x1 - ox, y1 - oy))
        return np.array([(p.x + ox, p.y + oy) for p in shape.parts()], dtype=np.float32)


class InsightFaceAnalyzer:
    """insightface (e.g. ``buffalo_l``) detector + 68-point 3D landmarks, used when its pack is on disk.

    Not exercised offline (no pack can be downloaded here); kept small so it is easy to check by eye.
    """

    name = "insightface"

    def __init__(self, root: str, pack: str = "buffalo_l"):
        from insightface.app import FaceAnalysis  # type: ignore[import-not-found]

        self._app = FaceAnalysis(name=pack, root=root, allowed_modules=["detection", "landmark_3d_68", "recognition"])
        self._app.prepare(ctx_id=0, det_size=(640, 640))

    def detect(self, rgb: np.ndarray) -> list[FaceDetection]:
        faces = self._app.get(np.ascontiguousarray(rgb[:, :, ::-1]))
        return [
            FaceDetection(f.bbox.astype(np.float32), float(f.det_score), f.landmark_3d_68[:, :2].astype(np.float32))
            for f in faces
        ]


def default_face_analyzer(insightface_root: str | os.PathLike[str] | None = None) -> FaceAnalyzer:
    """insightface when its model pack is found under ``insightface_root`` (``LIPSYNC_INSIGHTFACE_ROOT``), else dlib."""
    root = os.fspath(insightface_root) if insightface_root else None
    if root and os.path.isdir(os.path.join(root, "models")) and importlib.util.find_spec("insightface"):
        try:
            analyzer: FaceAnalyzer = InsightFaceAnalyzer(root)
            log.info("face analyzer: insightface from %s", root)
            return analyzer
        except Exception as exc:  # a broken pack must not stop the offline path
            log.warning("insightface pack at %s unusable (%s); using dlib", root, exc)
    log.info("face analyzer: dlib HOG + 68-point landmarks (face-recognition-models)")
    return DlibFaceAnalyzer()


# --- alignment ------------------------------------------------------------------------------------------


def alignment_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """(…, 68, 2) landmarks → (…, 4) [centre x, centre y, side, angle] of a square face crop.

    The square follows the usual FFHQ-style rule: centred a little below the eyes, oriented by the eye
    line and the eye-to-mouth vector, side 2·max(2·|eye-to-eye|, 1.8·|eye-to-mouth|) — the whole head.
    """
    le = landmarks[..., LEFT_EYE, :].mean(-2)
    re = landmarks[..., RIGHT_EYE, :].mean(-2)
    mouth = landmarks[..., MOUTH, :].mean(-2)
    eye_avg = (le + re) / 2
    e2e = re - le
    e2m = mouth - eye_avg
    x_axis = e2e - np.stack([-e2m[..., 1], e2m[..., 0]], -1)  # e2e and e2m turned by 90°, averaged
    angle = np.arctan2(x_axis[..., 1], x_axis[..., 0])
    half = np.maximum(np.linalg.norm(e2e, axis=-1) * 2.0, np.linalg.norm(e2m, axis=-1) * 1.8)
    centre = eye_avg + e2m * 0.1
    return np.concatenate([centre, (2 * half)[..., None], angle[..., None]], -1).astype(np.float32)


def affine_for(alignment: np.ndarray, size: int) -> np.ndarray:
    """(2, 3) float64 affine mapping frame pixels to a ``size`` x ``size`` crop for one alignment row."""
    cx, cy, side, angle = (float(v) for v in alignment)
    s = size / side
    c, si = np.cos(angle) * s, np.sin(angle) * s
    # rotate by -angle and scale about the centre, then move the centre to the crop's middle
    m = np.array([[c, si, 0.0], [-si, c, 0.0]])
    m[:, 2] = np.array([size / 2.0, size / 2.0]) - m[:, :2] @ np.array([cx, cy])
    return m


# --- tracking -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaceTrack:
    """Per-frame face of a video, indexed by the decoded (source) frame number."""

    present: np.ndarray
    """(T,) bool: a face is tracked in this frame (detected, or bridged over a brief miss)."""
    detected: np.ndarray
    """(T,) bool: the detector itself found the face in this frame."""
    landmarks: np.ndarray
    """(T, 68, 2) float32 frame pixels, lightly smoothed; NaN where absent."""
    alignment: np.ndarray
    """(T, 4) float32 smoothed crop square [cx, cy, side, angle]; NaN where absent."""
    frame_size: tuple[int, int]
    """(width, height) of the frames the track was made on."""
    analyzer: str

    @property
    def num_frames(self) -> int:
        return int(self.present.shape[0])

    @property
    def coverage(self) -> float:
        """Frames with a face / all frames."""
        return float(self.present.mean()) if self.num_frames else 0.0

    @property
    def face_fraction(self) -> float:
        """Median side of the crop square over the shorter frame side (0 without a face): the model can
        work on the face crop when this is small and on the whole frame when it is large."""
        if not self.present.any():
            return 0.0
        return float(np.median(self.alignment[self.present, 2]) / min(self.frame_size))

    def affine(self, index: int, size: int) -> np.ndarray:
        """Frame → crop affine (2, 3) for a ``size`` crop of frame ``index`` (which must have a face)."""
        if not self.present[index]:
            raise IndexError(f"frame {index} has no tracked face")
        return affine_for(self.alignment[index], size)

    def sample_indices(self, count: int) -> list[int]:
        """Up to ``count`` evenly spaced frames where the detector found the face (for the face-ID)."""
        idx = np.flatnonzero(self.detected)
        if idx.size <= count:
            return idx.tolist()
        return idx[np.linspace(0, idx.size - 1, count).round().astype(int)].tolist()

    def require_face(self, field: str = "video") -> "FaceTrack":
        """Return self, or raise NoFaceDetected when no frame has a face."""
        if not self.present.any():
            raise NoFaceDetected(
                f"no face was found in any of the {self.num_frames} frames of the {field}", field=field
            )
        return self


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _pick_dominant(faces: list[FaceDetection], previous: np.ndarray | None) -> FaceDetection:
    """The largest face, unless the face followed so far is still there and not much smaller."""
    largest = max(faces, key=lambda f: f.area)
    if previous is not None:
        same = [f for f in faces if _iou(f.box, previous) > 0.3 and f.area >= 0.5 * largest.area]
        if same:
            return max(same, key=lambda f: _iou(f.box, previous))
    return largest


COUNTED_FACE_SCORE = 0.3
"""Detections scoring below this are not counted in ``FaceTracker.max_faces``: dlib gives real faces about 1-2
and stray matches (a patch of a suit, a fold of cloth) a few hundredths; insightface scores real faces 0.5-1."""
FOLLOW_MIN_IOU = 0.6
"""A followed face is lost when its landmarks' extent overlaps the previous frame's by less than this."""
FOLLOW_MAX_CHANGE = 20.0
"""... or when the face region's 16x16 grey thumbnail changes by more than this (mean absolute, 0-255)."""


def _extent(landmarks: np.ndarray) -> np.ndarray:
    return np.concatenate([landmarks.min(0), landmarks.max(0)])


def _thumbnail(rgb: np.ndarray, box: np.ndarray) -> np.ndarray | None:
    h, w = rgb.shape[:2]
    x0, y0 = max(0, int(box[0])), max(0, int(box[1]))
    x1, y1 = min(w, int(box[2]) + 1), min(h, int(box[3]) + 1)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return None
    step = max(1, min(x1 - x0, y1 - y0) // 64)  # every step-th pixel: ~64x64 of them are plenty for 16x16
    region = np.ascontiguousarray(rgb[y0:y1:step, x0:x1:step])
    grey = cv2.cvtColor(region, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (16, 16), interpolation=cv2.INTER_AREA).astype(np.float32)


def _follow(analyzer: FaceAnalyzer, rgb: np.ndarray, face: FaceDetection,
            thumb: np.ndarray | None) -> FaceDetection | None:
    """The face of the previous frame found again in ``rgb`` by the landmark predictor alone, its box moved
    (and scaled) with the landmarks; None when it is lost or drifts (see the module docstring)."""
    now = _thumbnail(rgb, face.box)
    if thumb is None or now is None or float(np.abs(now - thumb).mean()) > FOLLOW_MAX_CHANGE:
        return None
    pts = analyzer.landmarks(rgb, face.box)  # type: ignore[attr-defined]
    before, after = _extent(face.landmarks), _extent(pts)
    if _iou(before, after) < FOLLOW_MIN_IOU:
        return None
    zoom = float(np.sqrt(max(_area(after), 1.0) / max(_area(before), 1.0)))
    c_box = (face.box[:2] + face.box[2:]) / 2
    c_before, c_after = (before[:2] + before[2:]) / 2, (after[:2] + after[2:]) / 2
    centre = c_after + (c_box - c_before) * zoom
    half = (face.box[2:] - face.box[:2]) / 2 * zoom
    return FaceDetection(np.concatenate([centre - half, centre + half]).astype(np.float32), face.score, pts)


def _area(box: np.ndarray) -> float:
    return float(max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1]))


def _same_frame(frame: np.ndarray, last: np.ndarray | None) -> bool:
    """A repeated frame (an animated still, a frame duplicated by fps resampling); a sparse look first."""
    if last is None:
        return False
    if frame is last:
        return True
    return frame.shape == last.shape and np.array_equal(frame[::37, ::41], last[::37, ::41]) and \
        np.array_equal(frame, last)


class FaceTracker:
    """``track_faces`` a chunk at a time: ``push`` decoded frames, ``finish`` for the whole FaceTrack. After
    every push (and in ``finish``) the rows that became final go to ``on_rows`` (``lipsync.media.track_smoothing.Rows``,
    in order, at most ``lag`` frames behind the newest pushed): the worker crops faces with them during the
    tracking pass. Parameters: see ``track_faces``."""

    def __init__(self, analyzer: FaceAnalyzer | None = None, *, max_gap: int = 6, smooth_window: int = 7,
                 cut_iou: float = 0.1, detect_every: int = 10, on_rows: Callable[[Rows], None] | None = None):
        self.analyzer = analyzer or default_face_analyzer()
        self.on_rows = on_rows
        self.cut_iou, self.max_gap, self.detect_every = cut_iou, max_gap, detect_every
        self._can_follow = detect_every > 1 and callable(getattr(self.analyzer, "landmarks", None))
        self._rows = TrackRows(alignment_from_landmarks, max_gap=max_gap, smooth_window=smooth_window)
        self._followed: FaceDetection | None = None  # the face of the previous frame, to follow into this one
        self._thumb: np.ndarray | None = None
        self._since_detect = 0
        self._prev_box: np.ndarray | None = None
        self._last_seen = -(10**9)
        self._shot_id = 0
        self._last_frame: np.ndarray | None = None
        self._faces: list[FaceDetection] = []
        self._taken: list[Rows] = []
        self.num_frames = 0
        self.frame_size = (0, 0)
        self.max_faces = 0
        """Most faces the detector found in one frame, scoring at least ``COUNTED_FACE_SCORE`` (``speaker: "auto"``
        chooses only when it is above 1)."""

    @property
    def lag(self) -> int:
        return self._rows.lag

    def push(self, frames: np.ndarray) -> None:
        """One (H, W, 3) frame or an (n, H, W, 3) chunk, in order."""
        for frame in (frames if frames.ndim == 4 else frames[None]):
            self._push_frame(frame)
        self._take()

    def finish(self) -> FaceTrack:
        self._rows.finish()
        self._take()
        parts = self._taken
        empty = Rows(0, np.zeros(0, bool), np.zeros(0, bool), np.zeros((0, N_LANDMARKS, 2), np.float32),
                     np.zeros((0, 4), np.float32))
        track = FaceTrack(
            present=np.concatenate([empty.present] + [r.present for r in parts]),
            detected=np.concatenate([empty.detected] + [r.detected for r in parts]),
            landmarks=np.concatenate([empty.landmarks] + [r.landmarks for r in parts]),
            alignment=np.concatenate([empty.alignment] + [r.alignment for r in parts]),
            frame_size=self.frame_size, analyzer=self.analyzer.name)
        log.info("face coverage %.1f%% (%d of %d frames; %d detected, %d bridged) with %s",
                 100 * track.coverage, int(track.present.sum()), track.num_frames, int(track.detected.sum()),
                 int(track.present.sum() - track.detected.sum()), track.analyzer)
        return track

    def _take(self) -> None:
        rows = self._rows.take()
        if rows is not None:
            self._taken.append(rows)
            if self.on_rows is not None:
                self.on_rows(rows)

    def _push_frame(self, frame: np.ndarray) -> None:
        self.frame_size = (frame.shape[1], frame.shape[0])
        i = self.num_frames
        self.num_frames += 1
        # A repeated frame (an animated still, frames duplicated by fps resampling) reuses its detection.
        if not _same_frame(frame, self._last_frame):
            face = None
            if self._can_follow and self._followed is not None and self._since_detect < self.detect_every:
                face = _follow(self.analyzer, frame, self._followed, self._thumb)
            if face is not None:
                self._faces, self._since_detect = [face], self._since_detect + 1
            else:
                self._faces, self._since_detect = self.analyzer.detect(frame), 1
                self.max_faces = max(self.max_faces, sum(f.score >= COUNTED_FACE_SCORE for f in self._faces))
        self._last_frame = frame
        if i - self._last_seen > self.max_gap + 1:
            self._prev_box = None
        if not self._faces:
            self._rows.push(None, -1)
            self._followed = None
            return
        face = _pick_dominant(self._faces, self._prev_box)
        if self._can_follow and face is not self._followed:
            self._followed, self._thumb = face, _thumbnail(frame, face.box)
        if self._prev_box is None or _iou(face.box, self._prev_box) < self.cut_iou:
            self._shot_id += 1
        self._rows.push(face.landmarks, self._shot_id)
        self._prev_box, self._last_seen = face.box, i


def track_faces(
    frames: Iterable[np.ndarray],
    analyzer: FaceAnalyzer | None = None,
    *,
    max_gap: int = 6,
    smooth_window: int = 7,
    cut_iou: float = 0.1,
    detect_every: int = 10,
) -> FaceTrack:
    """First pass: detect, follow and smooth the dominant face over frames or (n, H, W, 3) chunks.

    ``max_gap``: misses up to this many frames inside one shot are bridged by interpolation (a hand
    passing, a blink of the detector); longer ones pass through unchanged. A jump of the face box (IoU
    with the last box below ``cut_iou``) starts a new shot, and smoothing never crosses shots.
    ``smooth_window``: frames in the centred moving average of the crop alignment.
    ``detect_every``: the detector runs at least every this many frames; in between the face is followed by
    its landmarks when the analyzer can (1: detect on every frame). A new face entering the picture is
    therefore picked up within ``detect_every`` frames.
    Returns a FaceTrack even with no face at all; call ``require_face()`` to turn that into NoFaceDetected.
    """
    tracker = FaceTracker(analyzer, max_gap=max_gap, smooth_window=smooth_window, cut_iou=cut_iou,
                          detect_every=detect_every)
    for item in frames:
        tracker.push(item)
    return tracker.finish()


def track_on_timeline(track: FaceTrack, timeline: "Timeline") -> FaceTrack:
    """The face track re-laid on the output timeline: row j is the face of output frame j.

    A source frame copies its row. A generated frame (addition or bridge) takes the row of its background
    frame (``timeline.background_indices()``), so the generated crop lands exactly on the face of the held
    frame behind it. ``detected`` is False on generated frames.
    """
    bg = timeline.background_indices()
    generated = timeline.source_indices() < 0
    return FaceTrack(
        present=track.present[bg].copy(),
        detected=track.detected[bg] & ~generated,
        landmarks=track.landmarks[bg].copy(),
        alignment=track.alignment[bg].copy(),
        frame_size=track.frame_size,
        analyzer=track.analyzer,
    )
