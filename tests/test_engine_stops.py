"""A request that times out while its engine is denoising frees the engine within one step.

RQ enforces ``job_timeout_s`` with SIGALRM: the exception lands in the worker's main thread, while the engine
runs in the pipeline's model thread. That thread must stop at its next step (it used to run the whole denoise
to the end, holding the GPU, before the stage could see the stop). Same for a cancel, which the engine's own
progress callback raises (tests/test_lipsync_pipeline.py::test_cancel_while_denoising covers it end to end).
"""

from __future__ import annotations

import signal
import threading
import time

import pytest

from lipsync.contract.schema import STORAGE_SCHEME, LipsyncInput, validate_input
from lipsync.contract.settings import Settings
from lipsync.queue.records import LogLevel
from lipsync.testing.media import make_face_video, make_speech
from lipsync.worker.job import LocalFile, PipelineJob
from lipsync.worker.orchestration import load_lipsync_pipeline


class Alarm(Exception):
    """What RQ's death penalty raises in the main thread."""


def test_a_timeout_during_denoising_stops_the_engine_within_one_step(tmp_path):
    video = make_face_video(tmp_path / "face.mp4", frames=20, size=(160, 128))
    audio = make_speech(tmp_path / "speech.wav", "Stop in time.")
    pipeline = load_lipsync_pipeline(Settings(num_inference_steps=100_000))
    params = validate_input(LipsyncInput, {"video": STORAGE_SCHEME + "x/video", "audio": STORAGE_SCHEME + "x/audio"},
                            {"internal": True, "max_num_frames": 10_000, "max_prompt_chars": 2_000})
    steps: list[float] = []
    fired: list[float] = []

    def progress(stage: str, done: int, total: int) -> None:
        if stage.startswith("denoising"):
            steps.append(time.monotonic())
            if len(steps) == 3:  # denoising is under way: the job's time runs out now
                signal.setitimer(signal.ITIMER_REAL, 0.01)

    def on_alarm(signum, frame):
        fired.append(time.monotonic())
        raise Alarm

    previous = signal.signal(signal.SIGALRM, on_alarm)
    job = PipelineJob(request_id="r", params=params, workdir=tmp_path / "work",
                      inputs={"video": LocalFile(video, "video/mp4"), "audio": LocalFile(audio, "audio/wav")},
                      log=lambda message, level=LogLevel.INFO: None, progress=progress)
    job.workdir.mkdir()
    try:
        with pytest.raises(Alarm):
            pipeline(job)
        returned = time.monotonic()
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert fired
    after = [t for t in steps if t > fired[0]]
    step_s = (steps[2] - steps[0]) / 2
    assert len(after) <= 1, f"{len(after)} steps after the timeout (a step takes {step_s:.3f} s)"
    assert returned - fired[0] < 2.0 + 2 * step_s
    assert not [t for t in threading.enumerate() if t.name == "lipsync-model" and t.is_alive()]
