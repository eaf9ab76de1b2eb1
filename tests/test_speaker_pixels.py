"""Faces not selected are left untouched pixel for pixel: on the two-speaker clip with a point on A, every frame the
worker hands the MP4 encoder (I420, the real writer's input) holds B's head exactly as the decoded source does —
the lossy encode after it is the only change, and it is the same for any frame (``tests/test_speaker_sync_mode.py``
checks the encoded output through the stack)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from lipsync.contract.schema import STORAGE_SCHEME, LipsyncInput, validate_input
from lipsync.contract.settings import Settings
from lipsync.media import writer
from lipsync.testing.two_speakers import make_two_speaker_clip
from lipsync.worker.job import LocalFile, PipelineJob
from lipsync.worker.orchestration import load_lipsync_pipeline


def _i420(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="yuv420p") for f in container.decode(video=0)]


def _planes(i420: np.ndarray, box: tuple[int, int, int, int], height: int):
    """Y, U and V of a box (even corners) in one (H * 3 / 2, W) I420 frame: Y's H rows, then U and V, each
    (H/2, W/2) stored as H/4 rows of W."""
    x0, y0, x1, y1 = box
    width = i420.shape[1]
    u = i420[height : height + height // 4].reshape(height // 2, width // 2)
    v = i420[height + height // 4 :].reshape(height // 2, width // 2)
    return (i420[y0:y1, x0:x1], u[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2], v[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2])


def test_the_face_not_selected_reaches_the_encoder_unchanged(tmp_path, monkeypatch):
    clip = make_two_speaker_clip(tmp_path / "two")
    sent: list[np.ndarray] = []
    write = writer.Mp4Writer.write_i420

    def recorded(self, frames):
        sent.extend(frames[None] if frames.ndim == 2 else frames)
        return write(self, frames)

    monkeypatch.setattr(writer.Mp4Writer, "write_i420", recorded)
    pipeline = load_lipsync_pipeline(Settings(num_inference_steps=1, stage_threads=False))
    a = clip.boxes["A"]
    params = validate_input(LipsyncInput, {"video": STORAGE_SCHEME + "x/video", "audio": STORAGE_SCHEME + "x/audio",
                                           "speaker": {"frame": 0, "x": (a[0] + a[2]) / 2, "y": (a[1] + a[3]) / 2}},
                            {"internal": True, "max_num_frames": 10_000, "max_prompt_chars": 2_000})
    job = PipelineJob(request_id="pixels", params=params, workdir=tmp_path,
                      inputs={"video": LocalFile(clip.video, "video/mp4"), "audio": LocalFile(clip.video, "video/mp4")},
                      log=lambda *a, **k: None, progress=lambda *a: None)
    out = pipeline(job)
    source = _i420(clip.video)
    height = source[0].shape[0] * 2 // 3
    assert len(sent) == len(source) == clip.num_frames, out.metrics
    b = tuple(int(c) // 2 * 2 for c in clip.boxes["B"])
    repainted = 0
    for got, src in zip(sent, source):
        assert got.shape == src.shape
        for plane_got, plane_src in zip(_planes(got, b, height), _planes(src, b, height)):
            np.testing.assert_array_equal(plane_got, plane_src)  # B: untouched, to the byte
        repainted += int((np.abs(_planes(got, a, height)[0].astype(int) - _planes(src, a, height)[0]) > 40).sum())
    assert repainted > 0  # A was lip-synced (random weights: visibly)
