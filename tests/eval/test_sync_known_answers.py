"""Acceptance 2: the metric pipeline gives known answers.

A tiny SyncNet, trained here in seconds on synthetic clips whose mouth follows the audio's loudness, goes
through the very scorer ``lipsync eval`` uses (MFCC, 5-frame / 0.2 s windows, ±15 shifts, LSE-D/LSE-C). It
must find offsets we introduce, and score aligned clips better than shifted and wrong-audio ones.
"""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.syncnet import SyncScorer
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
    assert (aligned.offset, late.offset, early.offset) == (0, 3, -3)
    # the offset curve has its minimum where the offset is
    assert late.offsets[np.argmin(late.mean_dist)] == 3
    for shifted in (late, early):
        # LSE-D / LSE-C search the offset; the shifted clip still scores worse (its edge windows lose their
        # partners), and at offset 0 it is far worse
        assert aligned.lse_d < shifted.lse_d and aligned.lse_c > shifted.lse_c
        assert shifted.dist_at_zero > 2 * aligned.dist_at_zero
    assert aligned.num_windows == FRAMES - 5 and aligned.frame_conf.shape == (FRAMES - 5,)


@pytest.mark.parametrize("seed", [1, 2])
def test_wrong_audio_scores_worse(scorer, seed):
    crops, audio = clip(seed, FRAMES)
    _, other = clip(seed + 50, FRAMES)
    right, wrong = scorer.score_crops(crops, audio), scorer.score_crops(crops, other)
    assert right.lse_d < 0.7 * wrong.lse_d
    assert right.lse_c > 2 * wrong.lse_c
    # per-window confidence is higher through the clip, not just on average
    assert np.median(right.frame_conf_smoothed) > np.median(wrong.frame_conf_smoothed)


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
