"""Face crops made during the tracking pass, so that no second decode of the video is needed for them.

For an engine whose crop of a frame depends on that frame's track row alone (``EngineInfo.affines_per_frame``:
pipio) and a request without timeline edits (the output timeline is the source's), each frame's crop is known
as soon as its row of the track is final, a few frames after it was decoded (``lipsync.media.faces.FaceTracker``).
``EarlyCrops`` holds the decoded chunks until then, crops them with the engine's own rule, and appends the
crops to a ``FrameStore`` in the request's work folder (on disk: flat in video length). The crops are the
ones a second pass would make, bit for bit: the same frames, the same final rows, the same engine calls;
``tests/media/test_early_crops.py`` compares the two.

Why: pipio needs every crop before its first output frame, so the crop pass (an RGB decode of the whole
video, ~1.2 s of 250 frames at 1080x1920 on 2 cores) ran alone between tracking and the model.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lipsync.media.faces import FaceTrack
from lipsync.media.track_smoothing import Rows
from lipsync.model.engine import LipSyncEngine
from lipsync.media.frame_store import FrameStore


class EarlyCrops:
    """``hold`` each decoded chunk before the tracker sees it; ``crop_rows`` is the tracker's ``on_rows``."""

    def __init__(self, engine: LipSyncEngine, workdir: Path, analyzer: str):
        size = engine.info.crop_size
        self.engine = engine
        self.analyzer = analyzer
        self.store = FrameStore((size, size, 3), np.uint8, directory=workdir)
        self._held: deque[tuple[int, np.ndarray]] = deque()  # (index of its first frame, chunk)
        self._held_end = 0

    @property
    def held_frames(self) -> int:
        """Decoded frames held, waiting for their track rows."""
        return sum(len(chunk) for _, chunk in self._held)

    def hold(self, chunk: np.ndarray) -> None:
        self._held.append((self._held_end, chunk))
        self._held_end += len(chunk)

    def crop_rows(self, rows: Rows) -> None:
        if rows.start != len(self.store):
            raise RuntimeError(f"track rows from {rows.start}, but {len(self.store)} frames are cropped")
        stop = rows.start + len(rows)
        size = tuple(self._held[0][1].shape[2:0:-1]) if self._held else (0, 0)
        track = FaceTrack(rows.present, rows.detected, rows.landmarks, rows.alignment, size, self.analyzer)
        affines = self.engine.face_affines(track)
        present = rows.present & np.isfinite(affines).all(axis=(1, 2))
        affines = np.where(present[:, None, None], affines, np.nan)
        for first, chunk in self._held:
            a, b = max(first, rows.start), min(first + len(chunk), stop)
            if a < b:
                frames, rule = chunk[a - first : b - first], affines[a - rows.start : b - rows.start]
                self.store.append(self.engine.crop(frames, rule))
        while self._held and self._held[0][0] + len(self._held[0][1]) <= stop:
            self._held.popleft()  # every frame of it is cropped
        if len(self.store) != stop:
            raise RuntimeError(f"track rows up to {stop}, but only frames up to {self._held_end} were decoded")

    def batches(self, chunk_size: int) -> Iterator[np.ndarray]:
        """The stored crops again, ``chunk_size`` frames at a time."""
        for a in range(0, len(self.store), chunk_size):
            yield self.store[a : a + chunk_size]

    def close(self) -> None:
        self._held.clear()
        self.store.close()
