"""Crops made during the tracking pass (lipsync.worker.early_crops) are the crops a second decode would give, bit for
bit, on a clip whose face is panned, zoomed, briefly covered (bridged) and cut away from; the pass holds only
the frames whose track rows are not final yet; the streamed track is the batch one."""

from __future__ import annotations

import numpy as np
import pytest
from media_testkit import N

from lipsync.media.faces import FaceTracker, default_face_analyzer, track_faces
from lipsync.media.probe import probe_video, resolve_output_spec
from lipsync.media.video import iter_video_chunks


@pytest.fixture(scope="module")
def pipio():
    from lipsync.model.engine import EngineOptions
    from lipsync.model.weights import load_engine

    return load_engine(None, EngineOptions(device="cpu", dtype="fp32", num_inference_steps=1, face_crop_size=64),
                       "pipio")


def test_crops_made_while_tracking_equal_a_second_pass(media, face_track, pipio, tmp_path) -> None:
    from lipsync.worker.early_crops import EarlyCrops

    assert pipio.info.affines_per_frame
    spec = resolve_output_spec(probe_video(media.face_mp4), num_frames=N)
    analyzer = default_face_analyzer()
    early = EarlyCrops(pipio, tmp_path, analyzer.name)
    tracker = FaceTracker(analyzer, on_rows=early.crop_rows)
    held = []
    for chunk in iter_video_chunks(media.face_mp4, spec, chunk_size=3):
        early.hold(chunk)
        tracker.push(chunk)
        held.append(early.held_frames)
    track = tracker.finish()
    assert max(held) <= tracker.lag + 2 * 3  # the lag, rounded up to whole chunks at both ends
    assert len(early.store) == track.num_frames == N

    # the clip exercises every rule: bridged misses, frames with no face, and more than one shot
    assert (track.present & ~track.detected).any() and (~track.present).any()
    for name in ("present", "detected", "landmarks", "alignment"):  # streamed = batch (lipsync.media.faces.track_faces)
        np.testing.assert_array_equal(getattr(track, name), getattr(face_track, name))

    # what the worker's second pass does without early crops: decode again, crop with the final track
    affines = pipio.face_affines(track)
    present = track.present & np.isfinite(affines).all(axis=(1, 2))
    want, j = [], 0
    for chunk in iter_video_chunks(media.face_mp4, spec, chunk_size=5):
        sl = slice(j, j + len(chunk))
        want.append(pipio.crop(chunk, np.where(present[sl, None, None], affines[sl], np.nan)))
        j += len(chunk)
    want = np.concatenate(want)
    got = np.concatenate(list(early.batches(7)))
    assert got.shape == want.shape and want[present].std() > 10  # real face crops, not blank ones
    np.testing.assert_array_equal(got, want)
    assert not got[~present].any()  # no face: a zero crop, as in the second pass
    early.close()


def test_track_faces_is_the_tracker_pushed_frame_by_frame(media, face_track) -> None:
    spec = resolve_output_spec(probe_video(media.face_mp4), num_frames=N)
    frames = np.concatenate(list(iter_video_chunks(media.face_mp4, spec, chunk_size=8)))
    one_by_one = track_faces(iter(frames))  # single frames instead of chunks: the same track
    np.testing.assert_array_equal(one_by_one.alignment, face_track.alignment)
