"""The README's integration flow end to end, with edits, and a stand-in for the model that paints the mouth.

The stand-in only replaces what the diffusion model will do (return crops); everything else is the real
media pipeline: decode, track, timeline, audio fit, face-ID, silence, crop, masks, paste-back and encode.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from lipsync.media.audio import audio_window_indices, fit_to_timeline, load_audio, to_model_audio
from lipsync.media.crop import crop_faces
from lipsync.media.embedding import track_embedding
from lipsync.media.faces import track_on_timeline
from lipsync.media.masks import mouth_masks
from lipsync.media.paste import paste_faces
from lipsync.media.probe import probe_video, resolve_output_spec
from lipsync.media.timeline import plan_from_request
from lipsync.media.vad import silent_frames
from lipsync.media.video import iter_reindexed, iter_video_chunks, read_video
from lipsync.media.writer import Mp4Writer
from media_testkit import CUT_AWAY, FPS, H, N, W

SIZE = 128
REQUEST = {
    "edit_addition_start_frames": [5],
    "edit_addition_durations": [10],
    "edit_removal_ranges": [44, 47],
    "edit_removal_bridge_durations": [2],
}


def paint_mouth(crops: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Stand-in for the model: a pure green mouth region."""
    out = crops.copy()
    out[masks > 0.5] = (0, 255, 0)
    return out


@pytest.fixture(scope="module")
def pipeline(media, face_track, tmp_path_factory):
    out_path = tmp_path_factory.mktemp("pipe") / "out.mp4"
    spec = resolve_output_spec(probe_video(media.face_mp4), num_frames=N)
    track = face_track.require_face()
    timeline = plan_from_request(track.num_frames, REQUEST)
    out_track = track_on_timeline(track, timeline)
    fps, T = spec.fps, timeline.num_frames
    audio = load_audio(media.speech_wav, max_seconds=T / float(fps) + 1)
    audio, fit = fit_to_timeline(audio, T, fps)
    wav16k = to_model_audio(audio)
    windows = audio_window_indices(T, fps)
    silent = silent_frames(wav16k, T, fps)
    face_id = track_embedding(iter_video_chunks(media.face_mp4, spec), track)
    bg = timeline.background_indices()
    with Mp4Writer(out_path, fps=fps, width=spec.width, height=spec.height, audio=audio) as w:
        j = 0
        for frames in iter_reindexed(iter_video_chunks(media.face_mp4, spec), bg):
            idx = list(range(j, j + len(frames)))
            crops, _ = crop_faces(frames, out_track, idx, SIZE)
            masks = mouth_masks(out_track, idx, SIZE)
            w.write(paste_faces(frames, paint_mouth(crops, masks), out_track, idx, masks=masks))
            j += len(frames)
    return dict(spec=spec, timeline=timeline, out_track=out_track, fit=fit, windows=windows, silent=silent,
                face_id=face_id, wav16k=wav16k, result=w.result, path=out_path, bg=bg)


def test_output_length_follows_the_edits_and_audio_matches(pipeline, media):
    t, r = pipeline["timeline"], pipeline["result"]
    assert t.num_frames == N + 10 - 4 + 2 == r.num_frames
    again = read_video(r.path, resolve_output_spec(probe_video(r.path)))
    assert again.shape == (t.num_frames, H, W, 3)
    back = load_audio(r.path)
    assert back.num_samples == round(Fraction(t.num_frames, FPS) * back.sample_rate)
    # the speech is longer than the 2.32 s output: cut, and the model audio is on the same timeline
    assert pipeline["fit"].action == "cut" and media.speech_seconds > t.num_frames / FPS
    assert pipeline["wav16k"].shape[0] == round(t.num_frames / FPS * 16000)
    assert pipeline["windows"].shape == (t.num_frames, 10) and pipeline["silent"].shape == (t.num_frames,)


def test_mouth_is_painted_only_where_a_face_is(pipeline, media):
    r, out_track, bg = pipeline["result"], pipeline["out_track"], pipeline["bg"]
    out = read_video(r.path, resolve_output_spec(probe_video(r.path)))
    src = read_video(media.face_mp4, resolve_output_spec(probe_video(media.face_mp4), num_frames=N))
    for j in range(r.num_frames):
        frame, base = out[j].astype(int), src[bg[j]].astype(int)
        if not out_track.present[j]:
            assert bg[j] in CUT_AWAY
            assert np.abs(frame - base).mean() < 4  # passed through (only the encode differs)
            continue
        mx, my = np.round(out_track.landmarks[j, 48:68].mean(0)).astype(int)
        r_, g, b = frame[my, mx]
        assert g > r_ + 100 and g > b + 100, j  # a green mouth (colour matching shifts it a little)
        top = int(out_track.landmarks[j, 17:27, 1].min())  # above the brows nothing changed
        assert np.abs(frame[:top] - base[:top]).mean() < 4  # only the H.264 generation loss


def test_face_id_of_the_clip(pipeline):
    face_id = pipeline["face_id"]
    assert face_id.shape == (128,) and abs(np.linalg.norm(face_id) - 1) < 1e-5
