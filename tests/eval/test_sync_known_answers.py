"""Acceptance 2: the metric pipeline gives known answers.

A tiny SyncNet, trained here in seconds on synthetic clips whose mouth follows the audio's loudness, goes
through the very scorer ``lipsync eval`` uses (MFCC, 5-frame / 0.2 s windows, ±15 shifts, LSE-D/LSE-C). It
must find ±3-frame offsets we introduce, and score aligned clips better than ones shifted past the search
range or with the wrong audio (LSE-D and LSE-C search the offset, so a ±3 shift only shows at offset 0).
The properties held for 4 training seeds x 8 clip seeds when this test was written.
"""

from __future__ import annotations

import numpy as np
import pytest

from lipsync.evaluation.syncnet import SyncScorer
from tests.eval.synthetic_sync import clip, train_tiny_syncnet

FRAMES = 150


@pytest.fixture(scope="module")
def scorer() -> SyncScorer:
    return SyncScorer(train_tiny_syncnet(seed=0))


@pytest.mark.parametrize("seed", [1, 2])
def test_recovers_introduced_offsets(scorer, seed):
    aligned = scorer.score_crops(*clip(seed, FRAMES))
    late = scorer.score_crops(*clip(seed, FRAMES, video_delay=3))    # picture 3 frames behind the sound
    early = scorer.score_crops(*clip(seed, FRAMES, video_delay=-3))  # picture 3 frames ahead
    crops, _ = clip(seed, FRAMES)
    wrong = scorer.score_crops(crops, clip(seed + 50, FRAMES)[1])
    assert (aligned.offset, late.offset, early.offset) == (0, 3, -3)
    assert late.offsets[np.argmin(late.mean_dist)] == 3  # the offset curve has its minimum there
    for shifted in (late, early):
        # at offset 0 the shifted clip is far worse; LSE-D / LSE-C search ±15 frames, so they still see
        # sync there (that is why the offset is reported beside them)
        assert shifted.dist_at_zero > 2 * aligned.dist_at_zero
        assert shifted.lse_c > 2 * wrong.lse_c
    assert aligned.num_windows == FRAMES - 5 and aligned.frame_conf.shape == (FRAMES - 5,)


@pytest.mark.parametrize("seed", [1, 2])
def test_aligned_scores_better_than_shifted_out_of_range_and_wrong_audio(scorer, seed):
    crops, audio = clip(seed, FRAMES)
    right = scorer.score_crops(crops, audio)
    worse = {
        "1 s late": scorer.score_crops(*clip(seed, FRAMES, video_delay=25)),  # beyond the ±15 search
        "1 s early": scorer.score_crops(*clip(seed, FRAMES, video_delay=-25)),
        "wrong audio": scorer.score_crops(crops, clip(seed + 50, FRAMES)[1]),
    }
    for name, other in worse.items():
        assert right.lse_d < 0.7 * other.lse_d, name
        assert right.lse_c > 2 * other.lse_c, name
        # per-window confidence is higher through the clip, not just on average
        assert np.median(right.frame_conf_smoothed) > np.median(other.frame_conf_smoothed), name


def test_scores_are_deterministic(scorer):
    a = scorer.score_crops(*clip(7, 60))
    b = scorer.score_crops(*clip(7, 60))
    assert a.summary() == b.summary()
    np.testing.assert_array_equal(a.mean_dist, b.mean_dist)


def test_streamed_crops_in_small_batches_give_the_same_figures(scorer):
    crops, audio = clip(9, 40, video_delay=2)
    whole = scorer.score_crops(crops, audio)
    streamed = SyncScorer(scorer.net, batch_size=7).score_crops(iter(list(crops)), audio, num_frames=len(crops))
    assert streamed.offset == whole.offset
    np.testing.assert_allclose(streamed.mean_dist, whole.mean_dist, rtol=1e-5)
