"""lipsync.media.track_smoothing: rows made final frame by frame equal the batch definition of the track (bridge
the brief misses of each shot, then centred moving averages of the unwrapped alignment and the landmarks
inside each shot), whatever the chunking, and no row is final later than ``lag`` frames after it came."""

from __future__ import annotations

import numpy as np
import pytest

from lipsync.media.faces import alignment_from_landmarks
from lipsync.media.track_smoothing import TrackRows


def batch_track(raw: list[np.ndarray | None], shot: np.ndarray, max_gap: int, window: int):
    """The track as one batch computation over the whole video (the tracker's definition before it
    streamed): cumulative sums over each whole shot, np.unwrap over each whole shot."""

    def smooth(values: np.ndarray, w: int) -> np.ndarray:
        if w <= 1 or values.shape[0] < 2:
            return values
        half = w // 2
        csum = np.concatenate([np.zeros((1,) + values.shape[1:]), np.cumsum(values, axis=0, dtype=np.float64)])
        i = np.arange(values.shape[0])
        lo, hi = np.maximum(0, i - half), np.minimum(values.shape[0], i + half + 1)
        return ((csum[hi] - csum[lo]) / (hi - lo).reshape((-1,) + (1,) * (values.ndim - 1))).astype(values.dtype)

    n = len(raw)
    shot = shot.copy()
    detected = np.array([r is not None for r in raw])
    landmarks = np.full((n, 68, 2), np.nan, np.float32)
    for i, r in enumerate(raw):
        if r is not None:
            landmarks[i] = r
    seen = np.flatnonzero(detected)
    for a, b in zip(seen[:-1], seen[1:]):
        if 1 < b - a <= max_gap + 1 and shot[a] == shot[b]:
            w = ((np.arange(a + 1, b) - a) / (b - a)).astype(np.float32)[:, None, None]
            landmarks[a + 1 : b] = landmarks[a] * (1 - w) + landmarks[b] * w
            shot[a + 1 : b] = shot[a]
    present = shot >= 0
    alignment = np.full((n, 4), np.nan, np.float32)
    for s in np.unique(shot[present]):
        idx = np.flatnonzero(shot == s)
        for run in np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1):
            al = alignment_from_landmarks(landmarks[run])
            al[:, 3] = np.unwrap(al[:, 3])
            alignment[run] = smooth(al, window)
            landmarks[run] = smooth(landmarks[run], 3)
    return present, detected, landmarks, alignment


def random_faces(rng: np.random.Generator, n: int) -> tuple[list[np.ndarray | None], np.ndarray]:
    """A face drifting (and turning past ±180°, to exercise the unwrap) with misses of every length and cuts."""
    base = rng.uniform(100, 400, (68, 2)).astype(np.float32)
    raw: list[np.ndarray | None] = []
    shot = np.full(n, -1, np.int64)
    sid, last_seen = 0, -100
    for i in range(n):
        if rng.random() < 0.2:  # a miss
            raw.append(None)
            continue
        if i - last_seen > 7 or rng.random() < 0.05:  # a long gap always starts a new shot, a cut sometimes
            sid += 1
        theta = 0.3 * i
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]], np.float32)
        raw.append((base - 250) @ rot.T + 250 + rng.normal(0, 2, (68, 2)).astype(np.float32))
        shot[i], last_seen = sid, i
    return raw, shot


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("window", [1, 7, 9])
def test_streamed_rows_equal_the_batch_track(seed: int, window: int) -> None:
    rng = np.random.default_rng(seed)
    raw, shot = random_faces(rng, 300)
    want = batch_track(raw, shot, max_gap=6, window=window)

    rows = TrackRows(alignment_from_landmarks, max_gap=6, smooth_window=window)
    eager = TrackRows(alignment_from_landmarks, max_gap=6, smooth_window=window)  # taken after every frame
    got, final_at = [], {}
    for i, (r, s) in enumerate(zip(raw, shot)):
        rows.push(r, int(s))
        eager.push(r, int(s))
        if rng.random() < 0.3:  # taken at random moments, as chunks of any size end
            part = rows.take()
            if part is not None:
                got.append(part)
        part = eager.take()
        for k in range(part.start, part.start + len(part)) if part is not None else ():
            final_at[k] = i
    rows.finish()
    got.append(rows.take())
    present = np.concatenate([p.present for p in got])
    detected = np.concatenate([p.detected for p in got])
    landmarks = np.concatenate([p.landmarks for p in got])
    alignment = np.concatenate([p.alignment for p in got])
    assert [p.start for p in got] == list(np.cumsum([0] + [len(p) for p in got[:-1]]))
    np.testing.assert_array_equal(present, want[0])
    np.testing.assert_array_equal(detected, want[1])
    np.testing.assert_array_equal(landmarks, want[2])  # bit for bit, NaN where absent
    np.testing.assert_array_equal(alignment, want[3])
    assert max(i - k for k, i in final_at.items()) <= rows.lag
    assert len(final_at) > 250  # most rows were final before the end


def test_no_face_at_all_and_single_frames() -> None:
    rows = TrackRows(alignment_from_landmarks, max_gap=6, smooth_window=7)
    for _ in range(5):
        rows.push(None, -1)
    part = rows.take()
    assert part is not None and len(part) == 5 and not part.present.any()  # absent rows are final at once
    face = np.random.default_rng(0).uniform(0, 100, (68, 2)).astype(np.float32)
    rows.push(face, 1)
    rows.finish()
    last = rows.take()
    assert last is not None and last.start == 5 and last.present.tolist() == [True]
    np.testing.assert_array_equal(last.landmarks[0], face)  # a one-frame shot is not smoothed
