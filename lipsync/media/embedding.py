"""Face-ID embedding for identity conditioning.

Offline: dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1.dat`` from
``face-recognition-models``): 128-d, L2-normalised, computed on a 150 px chip aligned from the 68 landmarks.
Two photos of one person are typically < 0.6 apart (Euclidean), different people more. With an insightface
pack on disk the model could use ArcFace (512-d) instead; the dimension is part of the returned array.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from lipsync.media.faces import FaceTrack, face_models_dir

EMBEDDING_DIM = 128


class FaceEmbedder:
    """dlib ResNet descriptor; ``embed`` takes a frame and its 68 frame-pixel landmarks."""

    name = "dlib-resnet-128"
    dim = EMBEDDING_DIM

    def __init__(self, models_dir: str | None = None):
        import dlib  # lazy

        models_dir = models_dir or face_models_dir()
        self._dlib = dlib
        self._model = dlib.face_recognition_model_v1(os.path.join(models_dir, "dlib_face_recognition_resnet_model_v1.dat"))

    def embed(self, rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """(128,) float32 unit vector for the face with ``landmarks`` (68, 2) in frame ``rgb`` (H, W, 3)."""
        dlib = self._dlib
        pts = [dlib.point(int(round(x)), int(round(y))) for x, y in landmarks]
        xs, ys = landmarks[:, 0], landmarks[:, 1]
        rect = dlib.rectangle(int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
        shape = dlib.full_object_detection(rect, pts)
        chip = dlib.get_face_chip(np.ascontiguousarray(rgb), shape, size=150, padding=0.25)
        vec = np.asarray(self._model.compute_face_descriptor(chip), dtype=np.float32)
        return vec / max(float(np.linalg.norm(vec)), 1e-8)

    def embed_many(self, frames: Sequence[np.ndarray], landmarks: Sequence[np.ndarray]) -> np.ndarray:
        """Mean of the per-frame embeddings, re-normalised: the identity of a track."""
        if not frames:
            raise ValueError("no face to embed")
        vecs = np.stack([self.embed(f, lm) for f, lm in zip(frames, landmarks)])
        mean = vecs.mean(0)
        return (mean / max(float(np.linalg.norm(mean)), 1e-8)).astype(np.float32)


def identity_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance of two unit embeddings (dlib's rule of thumb: same person below 0.6)."""
    return float(np.linalg.norm(a - b))


def track_embedding(
    chunks: Iterable[np.ndarray], track: FaceTrack, embedder: FaceEmbedder | None = None, *, count: int = 8
) -> np.ndarray | None:
    """Identity of the tracked face: the mean embedding over up to ``count`` evenly spaced detected frames.

    ``chunks`` is a fresh decode of the same frames the track was made on (``iter_video_chunks``); reading
    stops after the last frame needed. None when the track has no detected face.
    """
    picks = track.sample_indices(count)
    if not picks:
        return None
    embedder = embedder or FaceEmbedder()
    wanted = set(picks)
    frames, marks = [], []
    base = 0
    for chunk in chunks:
        for k in range(len(chunk)):
            if base + k in wanted:
                frames.append(chunk[k])
                marks.append(track.landmarks[base + k])
        base += len(chunk)
        if base > picks[-1]:
            break
    return embedder.embed_many(frames, marks)


class FrameSampler:
    """Keeps copies of the frames at ``count`` evenly spaced positions of the ``expected`` length while a pass
    streams by, so the face-ID needs no decode of its own: ``chunks = sampler.tap(chunks)`` in the face-track
    pass, then ``sampler.embedding(track, embedder)``. Holds at most ``count`` frames (flat in length).
    """

    def __init__(self, expected: int, count: int = 8):
        n = max(1, expected)
        self.positions = sorted(set(np.linspace(0, n - 1, min(count, n)).round().astype(int).tolist()))
        self.frames: dict[int, np.ndarray] = {}

    def tap(self, chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        base, wanted = 0, set(self.positions)
        for chunk in chunks:
            for i in wanted.intersection(range(base, base + len(chunk))):
                self.frames[i] = np.array(chunk[i - base], copy=True)
            base += len(chunk)
            yield chunk

    def embedding(self, track: FaceTrack, embedder: FaceEmbedder) -> np.ndarray | None:
        """Mean embedding over the kept frames where the face was found; None when none of them shows it
        (then ``track_embedding`` decodes the frames it needs)."""
        picks = [i for i in sorted(self.frames) if i < track.num_frames and track.detected[i]]
        if not picks:
            return None
        return embedder.embed_many([self.frames[i] for i in picks], [track.landmarks[i] for i in picks])
