"""The face track's second half: bridge brief misses and smooth inside each shot, one frame at a time.

``TrackRows`` takes the tracker's raw per-frame result (the dominant face's landmarks, or none, and its
shot number) as frames are decoded, and makes each row final as soon as no later frame can change it: a
miss waits for the next detection (bridged when it comes within ``max_gap + 1`` frames in the same shot),
and a smoothed row waits for the ``smooth_window // 2`` frames after it. A row is therefore final at most
``max_gap + 1 + smooth_window // 2`` frames after it was pushed, which lets the worker crop faces during
the tracking pass while holding only that many decoded frames.

The arithmetic is the batch definition's, step for step (float64 running sums from the shot's first
frame, ``np.unwrap``'s float32 corrections accumulated in order), so no row depends on how the frames were
chunked or how far the pass has got; ``tests/media/test_track_smoothing.py`` checks it against the batch
formulas.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

N_LANDMARKS = 68
LANDMARK_WINDOW = 3
"""Frames in the centred moving average of the landmarks (the alignment has its own, wider window)."""
MAX_HALF = 8
"""Widest half-window a smoothing may have: a shot keeps its running sums this far back."""

_PI, _TWO_PI = np.float32(math.pi), np.float32(2 * math.pi)


@dataclass(frozen=True)
class Rows:
    """Final rows ``[start, start + len)`` of a track (the arrays of ``lipsync.media.faces.FaceTrack``)."""

    start: int
    present: np.ndarray
    detected: np.ndarray
    landmarks: np.ndarray
    alignment: np.ndarray

    def __len__(self) -> int:
        return int(self.present.shape[0])


class _Shot:
    """One shot's rows: the unwrapped alignment and the landmarks, with their float64 running sums."""

    def __init__(self, alignment_of: Callable[[np.ndarray], np.ndarray]):
        self.length = 0
        self._alignment_of = alignment_of
        self._angle_prev: np.float32 | None = None
        self._correction = np.float32(0.0)
        self._base = 0  # the lists below start at this row of the shot (older entries are dropped)
        self._alignment: list[np.ndarray] = []
        self._landmarks: list[np.ndarray] = []
        self._csum_al: list[np.ndarray] = [np.zeros(4)]  # _csum[k - base] = sum of rows [0, k)
        self._csum_lm: list[np.ndarray] = [np.zeros((N_LANDMARKS, 2))]

    def add(self, landmarks: np.ndarray) -> None:
        """Append (k, 68, 2) float32 bridged landmarks."""
        for al, lm in zip(self._alignment_of(landmarks), landmarks):
            angle = al[3]
            if self._angle_prev is not None:  # one step of np.unwrap, its float32 operations in order
                dd = np.float32(angle - self._angle_prev)
                ddmod = np.float32(np.mod(np.float32(dd + _PI), _TWO_PI) - _PI)
                if ddmod == -_PI and dd > 0:
                    ddmod = _PI
                step = np.float32(0.0) if abs(dd) < _PI else np.float32(ddmod - dd)
                self._correction = np.float32(self._correction + step)
            self._angle_prev = angle
            al = al.copy()
            al[3] = np.float32(angle + self._correction)
            self._alignment.append(al)
            self._landmarks.append(lm)
            self._csum_al.append(self._csum_al[-1] + al.astype(np.float64))
            self._csum_lm.append(self._csum_lm[-1] + lm.astype(np.float64))
            self.length += 1

    def row(self, k: int, half: int, ended: bool) -> tuple[np.ndarray, np.ndarray]:
        """(alignment (4,), landmarks (68, 2)) float32 of row ``k``, centred means over ``half`` rows each
        side (the landmarks over ``LANDMARK_WINDOW``), the window shrinking at the shot's ends."""
        n = self.length if ended else k + max(half, LANDMARK_WINDOW // 2) + 1
        return (self._mean(self._alignment, self._csum_al, k, half, n),
                self._mean(self._landmarks, self._csum_lm, k, LANDMARK_WINDOW // 2, n))

    def _mean(self, rows: list[np.ndarray], csum: list[np.ndarray], k: int, half: int, n: int) -> np.ndarray:
        if half == 0 or self.length < 2:  # the batch rule: no smoothing with window 1 or a single row
            return rows[k - self._base]
        lo, hi = max(0, k - half), min(n, k + half + 1)
        return ((csum[hi - self._base] - csum[lo - self._base]) / (hi - lo)).astype(np.float32)

    def forget_before(self, k: int) -> None:
        """Drop what no row from ``k - MAX_HALF`` on needs (the sums reach back ``half`` rows)."""
        drop = k - MAX_HALF - self._base
        if drop >= 256:
            del self._alignment[:drop], self._landmarks[:drop], self._csum_al[:drop], self._csum_lm[:drop]
            self._base += drop


class TrackRows:
    """Raw per-frame faces in (``push``), final smoothed rows out (``take``), in frame order."""

    def __init__(self, alignment_of: Callable[[np.ndarray], np.ndarray], *, max_gap: int, smooth_window: int):
        if smooth_window // 2 > MAX_HALF:
            raise ValueError(f"smooth_window {smooth_window} is wider than {2 * MAX_HALF + 1} frames")
        self.max_gap = max_gap
        self.half = smooth_window // 2 if smooth_window > 1 else 0
        self._alignment_of = alignment_of
        self._pushed = 0
        self._last: tuple[int, np.ndarray, int] | None = None  # (frame, raw landmarks, shot) of the last face
        self._missing: list[int] = []  # frames after the last face that a next face may still bridge
        self._shot: _Shot | None = None
        self._shot_id = -1
        self._shot_done = 0  # rows of the open shot already final
        self._shot_detected: deque[bool] = deque()  # per row of the open shot not yet final
        self._out: list[tuple[bool, bool, np.ndarray | None, np.ndarray | None]] = []
        self._taken = 0

    @property
    def lag(self) -> int:
        """Most frames a row can wait, after it was pushed, before it is final."""
        return self.max_gap + 1 + max(self.half, LANDMARK_WINDOW // 2)

    def push(self, landmarks: np.ndarray | None, shot: int) -> None:
        """The next frame's dominant face (68, 2) and shot number, or None (and -1) for no face."""
        i = self._pushed
        self._pushed += 1
        if landmarks is None:
            self._missing.append(i)
            if self._last is None or i + 1 - self._last[0] > self.max_gap + 1:  # no face can bridge it now
                self._absent()
            return
        landmarks = np.asarray(landmarks, np.float32)
        if self._missing:
            a, before, before_shot = self._last  # type: ignore[misc]
            if 1 < i - a <= self.max_gap + 1 and before_shot == shot:
                w = ((np.arange(a + 1, i) - a) / (i - a)).astype(np.float32)[:, None, None]
                self._face_rows(shot, before * (1 - w) + landmarks * w, detected=False)
                self._missing = []
            else:
                self._absent()
        self._face_rows(shot, landmarks[None], detected=True)
        self._last = (i, landmarks, shot)

    def finish(self) -> None:
        """No more frames: every row is final."""
        self._absent()
        self._close()

    def take(self) -> Rows | None:
        """The rows that became final since the last call (None when there are none)."""
        rows, self._out = self._out, []
        if not rows:
            return None
        start, self._taken = self._taken, self._taken + len(rows)
        nan_lm = np.full((N_LANDMARKS, 2), np.nan, np.float32)
        nan_al = np.full(4, np.nan, np.float32)
        return Rows(start=start,
                    present=np.array([r[0] for r in rows], bool),
                    detected=np.array([r[1] for r in rows], bool),
                    landmarks=np.stack([nan_lm if r[2] is None else r[2] for r in rows]),
                    alignment=np.stack([nan_al if r[3] is None else r[3] for r in rows]))

    # --------------------------------------------------------------------------------------------------
    def _face_rows(self, shot: int, landmarks: np.ndarray, *, detected: bool) -> None:
        if self._shot is not None and shot != self._shot_id:
            self._close()
        if self._shot is None:
            self._shot, self._shot_id, self._shot_done = _Shot(self._alignment_of), shot, 0
        self._shot.add(landmarks)
        self._shot_detected.extend([False] * (len(landmarks) - 1) + [detected])
        self._emit(ended=False)

    def _emit(self, *, ended: bool) -> None:
        s = self._shot
        assert s is not None
        wait = 0 if ended else max(self.half, LANDMARK_WINDOW // 2)
        while self._shot_done + wait < s.length:
            k = self._shot_done
            al, lm = s.row(k, self.half, ended)
            self._out.append((True, self._shot_detected.popleft(), lm, al))
            self._shot_done += 1
        s.forget_before(self._shot_done)

    def _close(self) -> None:
        if self._shot is not None:
            self._emit(ended=True)
            self._shot = None

    def _absent(self) -> None:
        if self._missing:
            self._close()
            self._out.extend((False, False, None, None) for _ in self._missing)
            self._missing = []
