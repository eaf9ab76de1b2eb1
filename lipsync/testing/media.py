"""Small real media for tests and benchmarks: H.264 clips (a gradient, or scikit-image's astronaut face panning
and zooming), a WAV tone, espeak-ng speech, data: URI request bodies, and a PyAV read-back of an MP4."""

from __future__ import annotations

import base64
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def make_video(path: Path, *, frames: int = 12, size: tuple[int, int] = (64, 48), fps: int = 25) -> Path:
    """A small H.264 MP4 whose frames differ (a moving gradient), with no audio."""
    width, height = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        x = np.arange(width)[None, :, None]
        for i in range(frames):
            rgb = np.broadcast_to(((x * 4 + i * 9) % 256).astype(np.uint8), (height, width, 3)).copy()
            rgb[..., 1] = (i * 20) % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def make_wav(path: Path, *, seconds: float = 1.0, rate: int = 16000) -> Path:
    """A mono 16-bit WAV: a 440 Hz tone."""
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    with av.open(str(path), "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode()]:
            out.mux(packet)
    return path


def make_face_video(path: Path, *, frames: int = 25, size: tuple[int, int] = (256, 192), fps: int = 25) -> Path:
    """A real face (scikit-image's astronaut photo) slowly panning and zooming, as H.264."""
    import cv2
    import skimage.data

    width, height = size
    photo = skimage.data.astronaut()
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            t = i / max(frames - 1, 1)
            zoom = (0.5 + 0.08 * t) * width / 256
            m = np.float32([[zoom, 0, (-30 + 40 * t) * width / 256], [0, zoom, (4 - 10 * t) * height / 192]])
            rgb = cv2.warpAffine(photo, m, (width, height), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def make_speech(path: Path, text: str = "Hello, this is a lip sync test.") -> Path:
    """Speech from espeak-ng (a WAV at 22.05 kHz)."""
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    return path


def data_uri_body(video: Path, audio: Path, **extra) -> dict:
    """A request body with both files inlined as data: URIs (no upload, no URL fetch)."""

    def uri(path: Path, mime: str) -> str:
        return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()

    return {"video": uri(video, "video/mp4"), "audio": uri(audio, "audio/wav"), **extra}


def probe(path: Path) -> dict:
    """Frame count, fps, size and audio duration of an MP4, read back with PyAV."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        fps = Fraction(video.average_rate) if video.average_rate else None
        size = (video.width, video.height)
        frames = sum(1 for _ in container.decode(video=0))
    with av.open(str(path)) as container:
        audio = container.streams.audio[0] if container.streams.audio else None
        samples = sum(f.samples for f in container.decode(audio=0)) if audio else 0
        rate = audio.rate if audio else 0
    return {
        "frames": frames,
        "fps": fps,
        "size": size,
        "audio_seconds": samples / rate if rate else 0.0,
    }


def make_stretched_video(path: Path, *, frames: int = 200, hours: float = 10.0, size: tuple[int, int] = (64, 64)) -> Path:
    """A small H.264 MP4 whose ``frames`` timestamps are spread evenly over ``hours``: a few hundred KB that
    declares a multi-hour video (0.006 fps for 200 frames over 10 h)."""
    width, height = size
    step_ms = int(hours * 3600 * 1000 / max(frames - 1, 1))
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        stream.time_base = Fraction(1, 1000)
        for i in range(frames):
            rgb = np.full((height, width, 3), (i * 7) % 256, np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i * step_ms, Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def tracked_face_clip(path: Path, *, frames: int, size: tuple[int, int]):
    """``make_face_video`` decoded and face-tracked: (frames (T, H, W, 3) uint8, FaceTrack) with the face in
    every frame, for tests that run an engine's crop rule on a real face."""
    from lipsync.media.faces import default_face_analyzer, track_faces
    from lipsync.media.probe import probe_video, resolve_output_spec
    from lipsync.media.video import iter_video_chunks

    make_face_video(path, frames=frames, size=size)
    spec = resolve_output_spec(probe_video(path), num_frames=frames)
    decoded = np.concatenate(list(iter_video_chunks(path, spec)))
    track = track_faces(iter_video_chunks(path, spec), default_face_analyzer())
    if not track.present.all():
        raise AssertionError("the face was lost in a frame of the test clip")
    return decoded, track
