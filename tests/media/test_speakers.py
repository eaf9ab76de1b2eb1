"""lipsync.media.speakers and lipsync.media.sync_modes on real media, without the stack: every face tracked in the
two-speaker clip (lipsync.testing.two_speakers), each selection rule, the chosen rows as one FaceTrack, and the
sync modes' frame orders."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from lipsync.contract.errors import InvalidInput
from lipsync.contract.schema import LipsyncInput, SpeakerBoxes, SpeakerPoint
from lipsync.media.faces import default_face_analyzer
from lipsync.media.probe import probe_video, resolve_output_spec
from lipsync.media.speakers import (MultiFaceTracker, mouth_opening, select_auto, select_boxes, select_largest,
                                    select_point, selected_track, source_audio_loader)
from lipsync.media.sync_modes import fit_sync_mode, frames_to_read, iter_in_order, output_frames_for_audio, sync_order
from lipsync.media.timeline import plan_timeline
from lipsync.media.video import iter_reindexed, iter_video_chunks
from lipsync.testing.two_speakers import FPS, make_two_speaker_clip, open_mouth


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory):
    clip = make_two_speaker_clip(tmp_path_factory.mktemp("two-speakers"))
    spec = resolve_output_spec(probe_video(clip.video))
    tracker = MultiFaceTracker(default_face_analyzer())
    for chunk in iter_video_chunks(clip.video, spec):
        tracker.push(chunk)
    return clip, tracker.finish()


def ids(tracks, clip) -> dict[str, int]:
    """Track id of each head (A left, B right) by where its median box lies."""
    out = {}
    for t in tracks.tracks:
        cx = float(np.median((t.boxes[:, 0] + t.boxes[:, 2]) / 2))
        out["A" if cx < clip.boxes["A"][2] else "B"] = t.id
    return out


def test_every_face_is_tracked_through_the_clip(two):
    clip, tracks = two
    assert len(tracks.tracks) == 2 and tracks.num_frames == clip.num_frames
    for t in tracks.tracks:
        assert (t.first, t.last, len(t.frames)) == (0, clip.num_frames - 1, clip.num_frames)
        assert t.detected.sum() >= clip.num_frames // 10  # the detector every 10 frames, followed in between


def test_mouth_opening_grows_with_the_mouth():
    import skimage.data

    analyzer = default_face_analyzer()
    photo = skimage.data.astronaut()
    gaps = [float(mouth_opening(analyzer.detect(open_mouth(photo, amount))[0].landmarks)) for amount in (0, 6, 12, 18)]
    assert gaps == sorted(gaps) and gaps[-1] > 2 * gaps[0], gaps


def test_auto_follows_the_speaking_mouth_window_by_window(two):
    clip, tracks = two
    head = ids(tracks, clip)
    wav = source_audio_loader(clip.video, max_seconds=10)()
    sel = select_auto(tracks, wav, Fraction(FPS))
    (a0, a1, first), (b0, b1, second) = sel.segments()
    assert (first, second) == (head["A"], head["B"]) and (a0, b1) == (0, clip.num_frames - 1) and b0 == a1 + 1
    assert abs(b0 - clip.first_half) <= FPS // 2
    segments = sel.metrics()["segments"]
    assert segments[0]["scores"][str(head["A"])] > 0.5 > segments[0]["scores"][str(head["B"])]
    assert segments[1]["scores"][str(head["B"])] > 0.5 > segments[1]["scores"][str(head["A"])]


def test_auto_without_source_audio_falls_back_to_the_largest_face(two):
    clip, tracks = two
    sel = select_auto(tracks, None, Fraction(FPS))
    assert sel.mode == "largest" and "no audio track" in sel.note
    assert set(sel.choice.tolist()) == {ids(tracks, clip)["A"]}
    silent = select_auto(tracks, np.zeros(16_000 * 3, np.float32), Fraction(FPS))
    assert silent.mode == "largest" and "mouth follows" in silent.note


def test_a_point_picks_the_face_holding_it_and_no_face_is_an_error_naming_speaker(two):
    clip, tracks = two
    x0, y0, x1, y1 = clip.boxes["B"]
    sel = select_point(tracks, SpeakerPoint(frame=10, x=(x0 + x1) / 2, y=(y0 + y1) / 2), (1.0, 1.0))
    assert set(sel.choice.tolist()) == {ids(tracks, clip)["B"]}
    half = select_point(tracks, SpeakerPoint(frame=10, x=x0 + x1, y=y0 + y1), (0.5, 0.5))  # input pixels 2x the frame
    assert set(half.choice.tolist()) == {ids(tracks, clip)["B"]}
    with pytest.raises(InvalidInput) as err:
        select_point(tracks, SpeakerPoint(frame=0, x=172, y=170), (1.0, 1.0))
    assert err.value.field == "speaker" and "on no face" in err.value.message and "faces there" in err.value.message


def test_boxes_pick_the_face_they_overlap_between_their_keys(two):
    clip, tracks = two
    box = list(next(t for t in tracks.tracks if t.id == ids(tracks, clip)["B"]).median_box())
    sel = select_boxes(tracks, SpeakerBoxes.model_validate({"boxes": [{"frame": 5, "box": box},
                                                                       {"frame": 30, "box": box}]}), (1.0, 1.0))
    assert (sel.choice[5:31] == ids(tracks, clip)["B"]).all() and (sel.choice[:5] == -1).all() and (sel.choice[31:] == -1).all()
    for keys, words in (([{"frame": 0, "box": [150, 0, 178, 20]}], "overlap no face"),
                        ([{"frame": clip.num_frames, "box": box}], "after the video's")):
        with pytest.raises(InvalidInput) as err:
            select_boxes(tracks, SpeakerBoxes.model_validate({"boxes": keys}), (1.0, 1.0))
        assert err.value.field == "speaker" and words in err.value.message, err.value.message


def test_the_chosen_rows_are_one_track_on_the_chosen_face_only(two):
    clip, tracks = two
    head = ids(tracks, clip)
    sel = select_auto(tracks, source_audio_loader(clip.video, max_seconds=10)(), Fraction(FPS))
    track = selected_track(sel)
    assert track.present.all() and track.num_frames == clip.num_frames
    for first, last, tid in sel.segments():
        x0, y0, x1, y1 = clip.boxes["A" if tid == head["A"] else "B"]
        lm = track.landmarks[first : last + 1]
        assert (lm[..., 0] >= x0).all() and (lm[..., 0] <= x1).all() and (lm[..., 1] >= y0).all() and (lm[..., 1] <= y1).all()
    # a frame not chosen is absent, never bridged over, even inside the same track
    gap = select_largest(tracks)
    gap.choice[20:23] = -1
    track = selected_track(gap)
    assert not track.present[20:23].any() and track.present[:20].all() and track.present[23:].all()


# --- sync modes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length,target", [(1, 5), (2, 7), (5, 3), (10, 25), (7, 7)])
def test_sync_orders(length, target):
    j = np.arange(target)
    assert sync_order(length, target, "loop").tolist() == (j % length).tolist()
    bounce = sync_order(length, target, "bounce")
    assert bounce[0] == 0 and (np.abs(np.diff(bounce)) <= 1).all() and bounce.max() == min(length, target) - 1 or length == 1
    remap = sync_order(length, target, "remap")
    assert (np.diff(remap) >= 0).all() and remap[0] == 0 and remap[-1] == (length - 1 if target >= length else remap[-1])
    assert len(set(remap.tolist())) == min(length, target)
    assert sync_order(length, length, "cut_off").tolist() == list(range(length))
    with pytest.raises(ValueError):
        sync_order(length, length + 1, "silence")


@pytest.mark.parametrize("length,target", [(1, 5), (2, 7), (5, 3), (4, 21), (7, 7)])
def test_published_order_is_both_authors_rule(length, target):
    """``published``: MuseTalk's cycle (the frames then the same reversed, indexed modulo the cycle) and
    LatentSync's loop_video (forward and reversed copies alternating until the audio's count, then cut), re-told."""
    frames = list(range(length))
    cycle = frames + frames[::-1]
    musetalk = [cycle[j % len(cycle)] for j in range(target)]
    copies, latentsync = 0, []
    while len(latentsync) < target:
        latentsync += frames if copies % 2 == 0 else frames[::-1]
        copies += 1
    got = sync_order(length, target, "published").tolist()
    assert got == musetalk == latentsync[:target]
    if length > 1 and target > length:  # the turning frame twice, where bounce shows it once
        assert got[length - 1] == got[length] == length - 1
        assert sync_order(length, target, "bounce").tolist()[length] == length - 2


def test_sync_mode_lays_the_edited_clip_over_the_output():
    clip = plan_timeline(6, addition_start_frames=[3], addition_durations=[2], removal_ranges=[0, 0],
                         removal_bridge_durations=[0])  # 1 2 + + 3 4 5
    looped = fit_sync_mode(clip, "loop", 16)
    assert looped.source_indices().tolist() == [1, 2, -1, -1, 3, 4, 5] * 2 + [1, 2]
    assert [(s.output_start, s.length, s.source_before, s.source_after) for s in looped.spans] == [(2, 2, 2, 3), (9, 2, 2, 3)]
    assert looped.background_indices().tolist() == [1, 2, 2, 3, 3, 4, 5] * 2 + [1, 2]
    bounced = fit_sync_mode(clip, "bounce", 9)
    assert bounced.source_indices().tolist() == [1, 2, -1, -1, 3, 4, 5, 4, 3]
    assert fit_sync_mode(clip, "silence") is clip and fit_sync_mode(clip, "cut_off", 99) is clip


def test_frames_out_of_order_come_from_the_frame_store(tmp_path):
    source = np.arange(23, dtype=np.uint8)[:, None, None] * np.ones((1, 4, 6), np.uint8)
    chunks = lambda: (source[a : a + 5] for a in range(0, len(source), 5))  # noqa: E731
    order = sync_order(9, 20, "bounce")
    got = np.concatenate(list(iter_in_order(chunks(), order, chunk_size=4, workdir=tmp_path)))
    assert (got == source[order]).all() and not list(tmp_path.iterdir())  # the store's file is gone
    ahead = np.array([0, 0, 3, 4, 4, 9])
    assert (np.concatenate(list(iter_in_order(chunks(), ahead, chunk_size=4))) ==
            np.concatenate(list(iter_reindexed(chunks(), ahead, chunk_size=4)))).all()


def test_what_a_sync_mode_reads_survives_the_queue():
    base = {"video": "https://example.com/v.mp4", "audio": "https://example.com/a.wav"}

    def read(is_image: bool = False, **fields) -> int:
        once = LipsyncInput.model_validate({**base, **fields})
        again = LipsyncInput.model_validate(once.model_dump(mode="json"))  # the API stores the dump; the worker re-reads
        return frames_to_read(again, is_image=is_image, max_num_frames=500)

    assert read() == 100 and read(sync_mode="cut_off") == 100 and read(num_frames=30) == 30
    assert read(sync_mode="loop") == 500 and read(sync_mode="silence") == 500 and read(sync_mode="remap", num_frames=30) == 30
    assert read(sync_mode="published") == 500 and read(True, sync_mode="published") == 1
    assert read(True, sync_mode="loop") == 1 and read(True, sync_mode="silence") == 100 and read(True) == 100
    assert "num_frames" in LipsyncInput.model_validate(base).model_dump()  # requests without the fields: as before


def test_audio_longer_than_max_num_frames_is_refused_on_sync_mode():
    assert output_frames_for_audio(0.6, Fraction(25), 100, "loop") == 15
    assert output_frames_for_audio(0.61, Fraction(25), 100, "loop") == 16  # the whole audio is heard
    with pytest.raises(InvalidInput) as err:
        output_frames_for_audio(4.1, Fraction(25), 100, "bounce")
    assert err.value.field == "sync_mode" and "max_num_frames" in err.value.message


def test_the_default_tracker_counts_faces_for_auto(two):
    from lipsync.media.faces import FaceTracker
    from lipsync.media.speakers import one_face_selection

    clip, _ = two
    spec = resolve_output_spec(probe_video(clip.video), num_frames=12)
    tracker = FaceTracker(default_face_analyzer())
    for chunk in iter_video_chunks(clip.video, spec):
        tracker.push(chunk[:, :, :176])  # A alone: B's half cut off
    track = tracker.finish()
    assert tracker.max_faces == 1
    sel = one_face_selection(track)
    assert sel.note == "one face: nothing to choose" and sel.segments() == [(0, 11, 0)]
    assert one_face_selection(track, faces=2, has_audio=False).note == "the video has no audio track: the largest face"
    both = FaceTracker(default_face_analyzer())
    for chunk in iter_video_chunks(clip.video, spec):
        both.push(chunk)
    both.finish()
    assert both.max_faces == 2


def test_a_point_follows_its_person_across_a_cut_by_identity(two):
    """Frames 0-9 show A and B; a cut; frames 10-19 show A alone, larger and elsewhere (a new track). A point on A
    chooses both of A's tracks (dlib descriptors of one person); without descriptors only the first, and says so."""
    import cv2

    from lipsync.media.embedding import FaceEmbedder

    clip, _ = two
    spec = resolve_output_spec(probe_video(clip.video), num_frames=1)
    first = next(iter_video_chunks(clip.video, spec))[0]
    later = np.full_like(first, 90)
    later[:, 120:296] = cv2.resize(first[:, :176], (176, 176), interpolation=cv2.INTER_AREA)
    frames = np.stack([first] * 10 + [later] * 10)
    x0, y0, x1, y1 = clip.boxes["A"]
    point = SpeakerPoint(frame=0, x=(x0 + x1) / 2, y=(y0 + y1) / 2)
    for describe in (FaceEmbedder().embed, None):
        tracker = MultiFaceTracker(default_face_analyzer(), describe=describe)
        tracker.push(frames)
        tracks = tracker.finish()
        assert len(tracks.tracks) == 3
        sel = select_point(tracks, point, (1.0, 1.0))
        a_first = int(sel.choice[0])
        if describe is not None:
            assert (sel.choice[:10] == a_first).all() and (sel.choice[10:] >= 0).all() and sel.choice[10] != a_first
            assert "same person" in sel.metrics()["segments"][1]["why"]
        else:
            assert (sel.choice[:10] == a_first).all() and (sel.choice[10:] == -1).all() and "across cuts" in sel.note
