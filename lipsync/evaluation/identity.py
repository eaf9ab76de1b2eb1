"""Identity similarity (CSIM): cosine similarity of the source's and the output's face embeddings.

The field reports CSIM with ArcFace (insightface); we use it when an insightface pack is on disk
(``<root>/models/buffalo_l/w600k_r50.onnx`` and the ``insightface`` package), else media's dlib ResNet
descriptor. The two give different numbers (dlib's same-person similarities sit higher), so every report
names the embedder.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np

from lipsync.media.embedding import FaceEmbedder
from lipsync.media.faces import FaceTrack

log = logging.getLogger(__name__)

ARCFACE_FILE = Path("models") / "buffalo_l" / "w600k_r50.onnx"


class IdentityEmbedder(Protocol):
    name: str

    def embed(self, rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray: ...


class ArcFaceEmbedder:
    """insightface's ArcFace (buffalo_l's w600k_r50) on its 112 px crop aligned from 5 points of the 68."""

    name = "insightface-arcface-w600k_r50"

    def __init__(self, onnx_path: Path):
        from insightface.model_zoo import get_model  # optional dependency
        from insightface.utils.face_align import norm_crop

        self._model = get_model(str(onnx_path))
        self._model.prepare(ctx_id=-1)
        self._norm_crop = norm_crop

    def embed(self, rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        five = np.stack([landmarks[36:42].mean(0), landmarks[42:48].mean(0), landmarks[30], landmarks[48], landmarks[54]])
        chip = self._norm_crop(np.ascontiguousarray(rgb[..., ::-1]), five.astype(np.float32))  # insightface is BGR
        vec = np.asarray(self._model.get_feat(chip), np.float32).reshape(-1)
        return vec / max(float(np.linalg.norm(vec)), 1e-8)


def identity_embedder(insightface_root: str | None = None) -> IdentityEmbedder:
    """ArcFace when its pack and package are present, else dlib's descriptor (logged)."""
    root = insightface_root
    if root and (Path(root) / ARCFACE_FILE).is_file():
        try:
            return ArcFaceEmbedder(Path(root) / ARCFACE_FILE)
        except ImportError as exc:
            log.warning("insightface pack at %s but the package does not import (%s): using dlib", root, exc)
    return FaceEmbedder()


def track_identity(
    chunks: Iterable[np.ndarray], track: FaceTrack, embedder: IdentityEmbedder, count: int = 8
) -> np.ndarray | None:
    """Mean unit embedding over up to ``count`` evenly spaced frames where the face was detected."""
    picks = set(track.sample_indices(count))
    if not picks:
        return None
    vecs, base = [], 0
    for chunk in chunks:
        for k in range(len(chunk)):
            if base + k in picks:
                vecs.append(embedder.embed(chunk[k], track.landmarks[base + k]))
        base += len(chunk)
        if base > max(picks):
            break
    mean = np.mean(vecs, 0)
    return mean / max(float(np.linalg.norm(mean)), 1e-8)


def csim(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings (1 = same direction)."""
    return float(np.dot(a, b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))
