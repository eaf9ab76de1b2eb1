"""A small pipeline for the serving-stack tests: re-encode the input video with the input audio.

It runs through the very same worker code path as the real lip-sync pipeline (loaded by name with
LIPSYNC_PIPELINE=lipsync.testing.pipelines:reencode), reports progress per frame, and obeys cancel. Two test hooks ride
on the prompt, so one worker can play several scenarios: ``test:slow=<s>`` sleeps that long per frame, and
``test:crash`` raises half-way through (a bug in a pipeline must fail the request, not the worker), and
``test:die`` SIGKILLs its own worker process (an input that makes the worker run out of memory).
"""

from __future__ import annotations

import os
import signal
import time
from fractions import Fraction

import av
import numpy as np

from lipsync.contract.settings import Settings
from lipsync.worker.job import OutputFile, PipelineJob, PipelineOutput


def _hooks(prompt: str) -> tuple[float, bool]:
    slow, crash = 0.0, False
    for word in prompt.split():
        if word.startswith("test:slow="):
            slow = float(word.split("=", 1)[1])
        crash = crash or word == "test:crash"
    return slow, crash


def _audio(path: str, rate: int = 44100) -> np.ndarray:
    with av.open(path) as container:
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=rate)
        chunks = [f.to_ndarray() for frame in container.decode(audio=0) for f in resampler.resample(frame)]
    return np.concatenate(chunks, axis=1) if chunks else np.zeros((1, 0), np.float32)


class ReencodePipeline:
    def __init__(self, settings: Settings):
        self.settings = settings

    def __call__(self, job: PipelineJob) -> PipelineOutput:
        params = job.params
        prompt = params.custom_prompt if params.use_custom_prompt else ""
        slow, crash = _hooks(prompt)
        if "test:die" in prompt.split():
            os.kill(os.getpid(), signal.SIGKILL)
        out_path = job.workdir / "output.mp4"
        job.log("Re-encoding video (test pipeline)")
        with av.open(str(job.inputs["video"].path)) as src, av.open(str(out_path), "w") as dst:
            stream_in = src.streams.video[0]
            fps = Fraction(params.frame_rate) if params.frame_rate > 0 else (stream_in.average_rate or Fraction(25))
            total = min(params.num_frames, stream_in.frames or params.num_frames)
            video = dst.add_stream("libx264", rate=fps)
            video.width, video.height, video.pix_fmt = stream_in.width // 2 * 2, stream_in.height // 2 * 2, "yuv420p"
            audio = dst.add_stream("aac", rate=44100)  # every stream before the first mux (the header)
            audio.layout = "mono"
            count = 0
            for frame in src.decode(video=0):
                if count >= total:
                    break
                if crash and count >= total // 2:
                    raise RuntimeError("test pipeline crashed on purpose")
                rgb = frame.to_ndarray(format="rgb24")[: video.height, : video.width]
                for packet in video.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                    dst.mux(packet)
                count += 1
                job.progress("encoding frame", count, total)
                if slow:
                    time.sleep(slow)
            for packet in video.encode():
                dst.mux(packet)
            samples = _audio(str(job.inputs["audio"].path))[:, : int(44100 * count / fps)]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, np.float32), format="fltp", layout="mono")
            frame.sample_rate = 44100
            for packet in [*audio.encode(frame), *audio.encode()]:
                dst.mux(packet)
        return PipelineOutput(
            files={"video": OutputFile(out_path, "video/mp4", "output.mp4")},
            metrics={"frames": count},
        )


def reencode(settings: Settings) -> ReencodePipeline:
    return ReencodePipeline(settings)
