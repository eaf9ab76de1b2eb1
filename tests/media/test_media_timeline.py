"""Every timeline-edit rule: additions, removals with and without bridges, both, edges, audio after edits."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from lipsync.contract.errors import InvalidInput
from lipsync.media.audio import AudioTrack, audio_window_indices, fit_to_timeline, frame_sample_ranges
from lipsync.media.timeline import GeneratedFrame, SourceFrame, plan_from_request, plan_timeline


def src(t):
    return t.source_indices().tolist()


def test_no_edits_is_identity():
    t = plan_timeline(5)
    assert src(t) == [0, 1, 2, 3, 4]
    assert t.generated == () and t.spans == () and t.removed == 0


def test_addition_in_the_middle():
    t = plan_timeline(6, addition_start_frames=[3], addition_durations=[2])
    assert src(t) == [0, 1, 2, -1, -1, 3, 4, 5]
    assert t.frames[3] == GeneratedFrame("addition", 0, 0) and t.frames[4] == GeneratedFrame("addition", 0, 1)
    assert t.generated == (3, 4)
    (span,) = t.spans
    assert (span.output_start, span.length, span.source_before, span.source_after) == (3, 2, 2, 3)


def test_additions_at_frame_zero_and_after_last_frame_any_order():
    t = plan_timeline(4, addition_start_frames=[4, 0], addition_durations=[1, 2])
    assert src(t) == [-1, -1, 0, 1, 2, 3, -1]
    assert t.frames[0] == GeneratedFrame("addition", 1, 0)
    assert t.frames[6] == GeneratedFrame("addition", 0, 0)
    first, last = t.spans
    assert (first.source_before, first.source_after) == (None, 0)
    assert (last.source_before, last.source_after) == (3, None)


def test_addition_before_the_last_frame():
    t = plan_timeline(4, addition_start_frames=[3], addition_durations=[1])
    assert src(t) == [0, 1, 2, -1, 3]


def test_removal_jump_cut():
    t = plan_timeline(8, removal_ranges=[2, 4], removal_bridge_durations=[0])
    assert src(t) == [0, 1, 5, 6, 7]
    assert t.generated == () and t.removed == 3


def test_removal_with_bridge():
    t = plan_timeline(8, removal_ranges=[2, 4], removal_bridge_durations=[2])
    assert src(t) == [0, 1, -1, -1, 5, 6, 7]
    assert t.frames[2] == GeneratedFrame("bridge", 0, 0)
    (span,) = t.spans
    assert (span.kind, span.source_before, span.source_after) == ("bridge", 1, 5)


def test_removal_at_frame_zero_and_at_last_frame():
    t = plan_timeline(6, removal_ranges=[0, 1, 5, 5], removal_bridge_durations=[1, 2])
    assert src(t) == [-1, 2, 3, 4, -1, -1]
    first, last = t.spans
    assert (first.source_before, first.source_after) == (None, 2)
    assert (last.source_before, last.source_after) == (4, None)


def test_single_frame_removal_and_adjacent_pairs_anchor_on_kept_frames():
    t = plan_timeline(8, removal_ranges=[2, 2, 3, 4], removal_bridge_durations=[1, 1])
    assert src(t) == [0, 1, -1, -1, 5, 6, 7]
    a, b = t.spans
    assert (a.source_before, a.source_after) == (1, 5)
    assert (b.source_before, b.source_after) == (1, 5)


def test_additions_and_removals_together_length_rule():
    t = plan_timeline(
        10, addition_start_frames=[0, 8], addition_durations=[2, 3],
        removal_ranges=[3, 4, 6, 6], removal_bridge_durations=[2, 0],
    )
    assert t.num_frames == 10 + 5 - 3 + 2
    assert src(t) == [-1, -1, 0, 1, 2, -1, -1, 5, 7, -1, -1, -1, 8, 9]
    kinds = [(f.kind, f.edit) for f in t.frames if isinstance(f, GeneratedFrame)]
    assert kinds == [("addition", 0)] * 2 + [("bridge", 0)] * 2 + [("addition", 1)] * 3


def test_bridge_comes_before_addition_at_the_same_place():
    t = plan_timeline(6, addition_start_frames=[3], addition_durations=[1], removal_ranges=[1, 2], removal_bridge_durations=[1])
    assert [type(f).__name__ + (f.kind if isinstance(f, GeneratedFrame) else "") for f in t.frames] == [
        "SourceFrame", "GeneratedFramebridge", "GeneratedFrameaddition", "SourceFrame", "SourceFrame", "SourceFrame",
    ]
    assert t.frames[3] == SourceFrame(3)


def test_remove_everything_but_bridge_left():
    t = plan_timeline(3, removal_ranges=[0, 2], removal_bridge_durations=[4])
    assert src(t) == [-1, -1, -1, -1]
    assert (t.spans[0].source_before, t.spans[0].source_after) == (None, None)


def test_plan_from_request_dict():
    t = plan_from_request(5, {"edit_addition_start_frames": [1], "edit_addition_durations": [1]})
    assert src(t) == [0, -1, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"addition_start_frames": [1], "addition_durations": []}, "edit_addition_durations"),
        ({"addition_start_frames": [11], "addition_durations": [1]}, "edit_addition_start_frames"),
        ({"addition_start_frames": [-1], "addition_durations": [1]}, "edit_addition_start_frames"),
        ({"addition_start_frames": [2], "addition_durations": [0]}, "edit_addition_durations"),
        ({"addition_start_frames": [2, 2], "addition_durations": [1, 1]}, "edit_addition_start_frames"),
        ({"addition_start_frames": [1.5], "addition_durations": [1]}, "edit_addition_start_frames"),
        ({"removal_ranges": [1, 2, 3], "removal_bridge_durations": [0]}, "edit_removal_ranges"),
        ({"removal_ranges": [1, 2], "removal_bridge_durations": []}, "edit_removal_bridge_durations"),
        ({"removal_ranges": [1, 2], "removal_bridge_durations": [-1]}, "edit_removal_bridge_durations"),
        ({"removal_ranges": [5, 2], "removal_bridge_durations": [0]}, "edit_removal_ranges"),
        ({"removal_ranges": [8, 10], "removal_bridge_durations": [0]}, "edit_removal_ranges"),
        ({"removal_ranges": [-1, 2], "removal_bridge_durations": [0]}, "edit_removal_ranges"),
        ({"removal_ranges": [1, 4, 3, 6], "removal_bridge_durations": [0, 0]}, "edit_removal_ranges"),
        ({"removal_ranges": [5, 6, 1, 2], "removal_bridge_durations": [0, 0]}, "edit_removal_ranges"),
        ({"removal_ranges": [0, 9], "removal_bridge_durations": [0]}, "edit_removal_ranges"),
        (
            {"addition_start_frames": [3], "addition_durations": [1], "removal_ranges": [2, 4], "removal_bridge_durations": [0]},
            "edit_addition_start_frames",
        ),
    ],
)
def test_impossible_edits_name_the_field(kwargs, field):
    with pytest.raises(InvalidInput) as err:
        plan_timeline(10, **kwargs)
    assert err.value.field == field
    assert err.value.to_body()["detail"][0]["loc"] == ["body", field]


def test_audio_follows_the_output_timeline_after_edits():
    fps = Fraction(25)
    t = plan_timeline(50, addition_start_frames=[10], addition_durations=[15], removal_ranges=[30, 39], removal_bridge_durations=[5])
    assert t.num_frames == 50 + 15 - 10 + 5
    sr = 16000
    ramp = np.arange(3 * sr, dtype=np.float32)[:, None]  # audio sample k holds value k: shows where it lands
    fitted, fit = fit_to_timeline(AudioTrack(ramp, sr), t.num_frames, fps)
    assert fit.action == "cut" and fitted.num_samples == t.num_frames * sr // 25
    ranges = frame_sample_ranges(t.num_frames, fps, sr)
    # output frame j plays audio time j/fps, whether it is a source, an added or a bridge frame
    for j in (0, 10, 24, 25, 40, t.num_frames - 1):
        a, b = ranges[j]
        assert (a, b) == (j * 640, (j + 1) * 640)
        assert fitted.samples[a, 0] == a
    assert ranges[-1, 1] == fitted.num_samples
    idx = audio_window_indices(t.num_frames, fps)
    assert idx.shape == (t.num_frames, 10)
    assert idx[12].tolist() == list(range(20, 30))
    assert idx[0].tolist() == [0] * 4 + list(range(6))
    assert idx.max() == 2 * t.num_frames - 1


def test_background_indices_hold_the_nearer_anchor_and_never_decrease():
    t = plan_timeline(
        10, addition_start_frames=[0, 5, 10], addition_durations=[2, 4, 1],
        removal_ranges=[7, 8], removal_bridge_durations=[3],
    )
    bg = t.background_indices()
    assert t.source_indices().tolist() == [-1, -1, 0, 1, 2, 3, 4, -1, -1, -1, -1, 5, 6, -1, -1, -1, 9, -1]
    assert bg.tolist() == [0, 0, 0, 1, 2, 3, 4, 4, 4, 5, 5, 5, 6, 6, 6, 9, 9, 9]
    assert (np.diff(bg) >= 0).all()
    assert plan_timeline(3, removal_ranges=[0, 2], removal_bridge_durations=[2]).background_indices().tolist() == [0, 0]


def test_reindexed_stream_follows_the_timeline():
    from lipsync.media.video import iter_reindexed

    source = np.arange(10, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    t = plan_timeline(10, addition_start_frames=[3], addition_durations=[2], removal_ranges=[6, 7], removal_bridge_durations=[0])
    bg = t.background_indices()
    chunks = list(iter_reindexed(iter(np.array_split(source, 4)), bg, chunk_size=3))
    assert [c.shape[0] for c in chunks] == [3, 3, 3, 1]
    assert np.concatenate(chunks)[:, 0, 0, 0].tolist() == bg.tolist() == [0, 1, 2, 2, 3, 3, 4, 5, 8, 9]
    with pytest.raises(ValueError):
        list(iter_reindexed(iter([source]), np.array([11])))
