"""Faces on a real face: detection, tracking through a cover and a cut-away, crops, masks, paste-back, ID."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lipsync.contract.errors import NoFaceDetected
from lipsync.media.crop import crop_faces, landmarks_in_crop
from lipsync.media.embedding import FaceEmbedder, identity_distance
from lipsync.media.faces import DlibFaceAnalyzer, MOUTH, default_face_analyzer, track_faces
from lipsync.media.masks import face_blend_mask, latent_mask, lower_face_mask, mouth_mask
from lipsync.media.paste import paste_faces
from media_testkit import COVERED, CUT_AWAY, H, N, W, face_frame

SIZE = 128


@pytest.fixture(scope="module")
def analyzer():
    return default_face_analyzer()


@pytest.fixture(scope="module")
def decoded(media):
    from lipsync.media.probe import probe_video, resolve_output_spec
    from lipsync.media.video import read_video

    return read_video(media.face_mp4, resolve_output_spec(probe_video(media.face_mp4), num_frames=N))


def test_offline_default_is_dlib(analyzer, tmp_path):
    assert isinstance(analyzer, DlibFaceAnalyzer)
    # an insightface root without a model pack falls back to the offline analyzer
    assert isinstance(default_face_analyzer(str(tmp_path)), DlibFaceAnalyzer)


def test_face_fraction(face_track):
    # the astronaut's ~90 px face box at zoom 0.5-0.58 is ~45-52 px; the head square is about twice that,
    # on a 192 px tall frame
    assert 0.4 < face_track.face_fraction < 0.65


def test_track_follows_face_bridges_cover_and_passes_cut_away(face_track):
    t = face_track
    assert t.num_frames == N and t.frame_size == (W, H)
    expect_detected = np.ones(N, bool)
    expect_detected[list(COVERED) + list(CUT_AWAY)] = False
    assert (t.detected == expect_detected).all()
    expect_present = expect_detected.copy()
    expect_present[list(COVERED)] = True  # 4-frame miss bridged
    assert (t.present == expect_present).all()
    assert t.coverage == pytest.approx(expect_present.mean())
    assert np.isnan(t.landmarks[list(CUT_AWAY)]).all() and not np.isnan(t.landmarks[t.present]).any()


def test_landmarks_land_on_the_real_mouth(analyzer, face_track):
    # reference: landmarks on the original 512 px photo, moved by each frame's known pan and zoom
    (ref,) = analyzer.detect(__import__("skimage.data").data.astronaut())
    for i in (0, 15, 29, 45):
        t = min(i, 29) / 29.0
        zoom, dx, dy = 0.5 + 0.08 * t, -30 + 40 * t, 4 - 10 * t
        expect = ref.landmarks[MOUTH].mean(0) * zoom + (dx, dy)
        got = face_track.landmarks[i, MOUTH].mean(0)
        assert np.linalg.norm(got - expect) < 3.0, (i, got, expect)


def test_alignment_is_smooth_and_follows_the_pan(face_track):
    cx = face_track.alignment[:30, 0]
    steps = np.diff(cx)
    assert (steps > 0).all()  # the face pans right steadily: no jitter reversing the motion
    assert cx[29] - cx[0] == pytest.approx(40 + 0.08 * 200, abs=8)


def test_dominant_face_is_the_largest_and_sticks(analyzer):
    big = face_frame(0)
    canvas = np.zeros((H, W * 2, 3), np.uint8)
    canvas[:, W:] = big
    small = cv2.resize(big, (W * 3 // 4, H * 3 // 4))
    canvas[: small.shape[0], : small.shape[1]] = small
    track = track_faces([canvas[None]] * 3, analyzer)
    assert track.present.all()
    assert track.alignment[0, 0] > W  # the larger face, on the right


def test_no_face_at_all_is_a_typed_error(analyzer):
    coffee = np.stack([face_frame(CUT_AWAY[0])] * 4)
    track = track_faces([coffee], analyzer)
    assert track.coverage == 0.0
    with pytest.raises(NoFaceDetected) as err:
        track.require_face()
    assert err.value.field == "video" and err.value.error_type == "no_face_detected" and err.value.status_code == 422


def test_crops_are_square_and_aligned(decoded, face_track):
    crops, present = crop_faces(decoded, face_track, list(range(N)), SIZE)
    assert crops.shape == (N, SIZE, SIZE, 3) and (present == face_track.present).all()
    assert (crops[~present] == 0).all()
    for i in (0, 20, 45):
        lm = landmarks_in_crop(face_track, i, SIZE)
        eyes_y = lm[36:48, 1].mean()
        mouth = lm[MOUTH].mean(0)
        # upright, centred face: eye line level, mouth under the centre, all landmarks inside the crop
        assert abs(lm[36:42, 1].mean() - lm[42:48, 1].mean()) < 3
        assert abs(mouth[0] - SIZE / 2) < SIZE * 0.08 and mouth[1] > eyes_y
        assert lm.min() > 0 and lm.max() < SIZE


@pytest.mark.parametrize("size", [SIZE, 512])
def test_mouth_mask_covers_mouth_not_eyes(face_track, size):
    SIZE = size  # noqa: N806 (the assertions below read as for the module's crop size)
    lm = landmarks_in_crop(face_track, 0, SIZE)
    m = mouth_mask(lm, SIZE)
    assert m.shape == (SIZE, SIZE) and m.dtype == np.float32 and 0 <= m.min() and m.max() <= 1
    mx, my = np.round(lm[MOUTH].mean(0)).astype(int)
    ex, ey = np.round(lm[36:48].mean(0)).astype(int)
    assert m[my, mx] > 0.99 and m[ey, ex] < 0.01
    assert m[0, 0] == 0 and m[-1, -1] == 0
    soft = ((m > 0.02) & (m < 0.98)).sum()
    assert soft > 4 * SIZE  # feathered edge, not a hard cut-out
    assert lower_face_mask(SIZE)[int(SIZE * 0.7), SIZE // 2] == pytest.approx(1.0, abs=0.01)
    blend = face_blend_mask(lm, SIZE)
    assert blend[my, mx] > 0.99 and blend[0, 0] == 0


def test_latent_mask_pools_space_and_time():
    masks = np.zeros((17, 64, 64), np.float32)
    masks[5, 40, 3] = 1.0
    lat = latent_mask(masks)
    assert lat.shape == (3, 2, 2)
    assert lat[1, 1, 0] == 1.0 and lat.sum() == 1.0  # pixel frame 5 belongs to latent frame 1 (frames 1..8)


def test_paste_changes_only_the_masked_mouth_and_skips_faceless_frames(decoded, face_track):
    idx = list(range(N))
    crops, _ = crop_faces(decoded, face_track, idx, SIZE)
    edited = 255 - crops  # an obviously different "generated" face (negative)
    masks = np.stack([mouth_mask(landmarks_in_crop(face_track, i, SIZE), SIZE) if face_track.present[i]
                      else np.zeros((SIZE, SIZE), np.float32) for i in idx])
    out = paste_faces(decoded, edited, face_track, idx, masks=masks, colour_match=False)
    absent = ~face_track.present
    assert (out[absent] == decoded[absent]).all()  # bit-exact pass-through
    diff = np.abs(out.astype(int) - decoded).max(-1)
    lm = face_track.landmarks[0]
    mouth = np.round(lm[MOUTH].mean(0)).astype(int)
    assert diff[0, mouth[1], mouth[0]] > 50
    changed = np.argwhere(diff[0] > 2)
    lo, hi = lm[2:15].min(0) - 8, lm[2:15].max(0) + 8
    assert ((changed[:, 1] >= lo[0]) & (changed[:, 1] <= hi[0]) & (changed[:, 0] <= hi[1])).all()
    assert diff[0, : int(lm[36:48, 1].min())].max() <= 2  # nothing above the eyes moved


def test_colour_matching_hides_a_tone_shift(decoded, face_track):
    idx = [0, 1]
    crops, _ = crop_faces(decoded[:2], face_track, idx, SIZE)
    brighter = np.clip(crops.astype(int) + 40, 0, 255).astype(np.uint8)
    plain = paste_faces(decoded[:2], brighter, face_track, idx, colour_match=False)
    matched = paste_faces(decoded[:2], brighter, face_track, idx, colour_match=True)
    err_plain = np.abs(plain.astype(int) - decoded[:2]).mean()
    err_matched = np.abs(matched.astype(int) - decoded[:2]).mean()
    assert err_matched < err_plain / 4


def test_face_id_embedding(decoded, face_track):
    emb = FaceEmbedder()
    picks = face_track.sample_indices(4)
    assert len(picks) == 4 and all(face_track.detected[i] for i in picks)
    vecs = [emb.embed(decoded[i], face_track.landmarks[i]) for i in picks]
    assert all(v.shape == (128,) and abs(np.linalg.norm(v) - 1) < 1e-5 for v in vecs)
    assert max(identity_distance(vecs[0], v) for v in vecs[1:]) < 0.35  # same person across the clip
    mean = emb.embed_many([decoded[i] for i in picks], [face_track.landmarks[i] for i in picks])
    assert identity_distance(mean, vecs[0]) < 0.3
    # a different "person": the face with its features scrambled (eyes and mouth swapped by a flip)
    flipped = np.ascontiguousarray(decoded[0][::-1])
    lm = face_track.landmarks[0].copy()
    lm[:, 1] = decoded.shape[1] - 1 - lm[:, 1]
    assert identity_distance(emb.embed(flipped, lm), vecs[0]) > identity_distance(vecs[1], vecs[0])


def test_track_on_timeline_holds_background_faces(face_track):
    from lipsync.media.faces import track_on_timeline
    from lipsync.media.timeline import plan_timeline

    t = plan_timeline(N, addition_start_frames=[10], addition_durations=[4], removal_ranges=[24, 30], removal_bridge_durations=[2])
    out = track_on_timeline(face_track, t)
    bg = t.background_indices()
    assert out.num_frames == t.num_frames == N + 4 - 7 + 2
    assert (out.present == face_track.present[bg]).all()
    np.testing.assert_array_equal(out.alignment[11], face_track.alignment[9])  # first half of the addition
    np.testing.assert_array_equal(out.alignment[13], face_track.alignment[10])  # second half
    gen = np.array(t.generated)
    assert not out.detected[gen].any() and out.present[gen].all()
