"""A shortened ``scripts/train_synthetic.py``: the tiny model trained for 700 steps (about two minutes) on the synthetic
talking face learns lip-sync (the loss falls, and on held-out audio its sync score beats the untrained model's)."""

from __future__ import annotations

import pytest

from tests.training.test_train_distributed import synthetic_module

pytestmark = pytest.mark.slow


def test_training_learns_lip_sync_on_the_synthetic_face(tmp_path):
    # a fixed step count, not a time budget: the result does not depend on how busy the machine is
    result = synthetic_module().run(tmp_path / "synthetic", minutes=6.0, max_steps=700, train_clips=12,
                                    heldout_clips=6, steps=4, lr=1e-3, log=lambda line: None)
    assert result["steps"] == 700
    assert result["loss_last_10pct"] < 0.5 * result["loss_first_10pct"], result
    scores = result["scores"]
    assert scores["trained"] > scores["untrained"] + 0.15, result
    assert scores["trained"] > scores["trained_wrong_audio"], result
