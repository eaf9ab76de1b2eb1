"""The evaluator in process: a still-image source (the hosted model takes images) is compared with every
output frame, and a metric that cannot score records why while the others run."""

from __future__ import annotations

import numpy as np
import PIL.Image

from lipsync.evaluation.cases import Case
from lipsync.evaluation.evaluator import EvalOptions, Evaluator
from lipsync.media.writer import write_mp4


def test_still_image_source(tmp_path, media_clip):
    frames, audio = media_clip
    PIL.Image.fromarray(frames[0]).save(tmp_path / "face.png")
    still = np.repeat(frames[:1], 12, axis=0)
    write_mp4(tmp_path / "out.mp4", still, 25, None)
    evaluator = Evaluator(EvalOptions())
    result = evaluator.evaluate(Case("still", tmp_path / "out.mp4", tmp_path / "face.png"))
    assert result.errors == {}
    assert result.unchanged["frames"] == 12 and result.unchanged["psnr_db"] > 35
    assert result.identity["csim"] > 0.97
    assert result.sync is None and len(evaluator.skipped) == 2
