"""Test media, made once per session: a real face (scikit-image's astronaut) panned, zoomed, briefly covered
and cut away from; speech from espeak-ng; containers and codecs written with ffmpeg. No binary fixtures."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import soundfile as sf

W, H = 256, 192
FPS = 25
N = 50
COVERED = range(30, 34)  # a hand over the face: 4 frames, bridged by the tracker
CUT_AWAY = range(34, 42)  # another shot without a face: 8 frames, passed through


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is required to make the test media (apt-get install {tool})")


def run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def face_frame(i: int) -> np.ndarray:
    """Frame i of the scripted clip (RGB uint8, H x W)."""
    img = skimage.data.astronaut()
    if i in CUT_AWAY:
        coffee = skimage.data.coffee()
        return cv2.resize(coffee, (W, H), interpolation=cv2.INTER_AREA)
    t = min(i, 29) / 29.0
    zoom = 0.5 + 0.08 * t
    m = np.float32([[zoom, 0, -30 + 40 * t], [0, zoom, 4 - 10 * t]])
    frame = cv2.warpAffine(img, m, (W, H), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)
    if i in COVERED:
        cv2.rectangle(frame, (80, 20), (200, 130), (200, 160, 140), thickness=-1)
    return frame


def write_raw_video(path: Path, frames: np.ndarray, fps: float, *extra: str, audio: Path | None = None) -> Path:
    """Encode RGB frames with the ffmpeg CLI (not with the code under test)."""
    _need("ffmpeg")
    h, w = frames.shape[1:3]
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "-"]
    if audio is not None:
        cmd += ["-i", str(audio)]
    cmd += [*extra, str(path)]
    subprocess.run(cmd, input=frames.tobytes(), check=True, capture_output=True)
    return path


@dataclass(frozen=True)
class Media:
    root: Path
    speech_wav: Path
    speech_seconds: float
    face_frames: np.ndarray
    face_mp4: Path  # 50 frames, 25 fps, 256x192, H.264 + AAC speech
    face_mov: Path
    face_webm: Path  # VP9 + Opus
    face_mkv: Path
    still_png: Path
    still_jpg: Path
    still_webp: Path


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    _need("espeak-ng")
    root = tmp_path_factory.mktemp("media")
    wav = root / "speech.wav"
    run("espeak-ng", "-w", str(wav), "-s", "160", "Hello there. This is a test of lip sync. Goodbye.")
    speech_seconds = sf.info(str(wav)).duration
    frames = np.stack([face_frame(i) for i in range(N)])
    face_mp4 = write_raw_video(
        root / "face.mp4", frames, FPS, "-c:v", "libx264", "-crf", "10", "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-b:a", "128k", audio=wav,
    )
    face_mov = write_raw_video(root / "face.mov", frames, FPS, "-c:v", "libx264", "-crf", "14", "-pix_fmt", "yuv420p")
    face_webm = write_raw_video(
        root / "face.webm", frames, FPS, "-c:v", "libvpx-vp9", "-b:v", "0", "-crf", "30", "-deadline", "realtime",
        "-cpu-used", "8", "-c:a", "libopus", audio=wav,
    )
    face_mkv = write_raw_video(root / "face.mkv", frames, FPS, "-c:v", "libx264", "-crf", "14", "-pix_fmt", "yuv420p")
    still = cv2.cvtColor(face_frame(0), cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(root / "still.png"), still)
    cv2.imwrite(str(root / "still.jpg"), still, [cv2.IMWRITE_JPEG_QUALITY, 95])
    cv2.imwrite(str(root / "still.webp"), still, [cv2.IMWRITE_WEBP_QUALITY, 95])
    return Media(
        root, wav, speech_seconds, frames, face_mp4, face_mov, face_webm, face_mkv,
        root / "still.png", root / "still.jpg", root / "still.webp",
    )


@pytest.fixture(scope="session")
def face_track(media: Media):
    """The tracker's first pass over the decoded face clip (made once: detection is the slow part)."""
    from media.faces import track_faces
    from media.probe import probe_video, resolve_output_spec
    from media.video import iter_video_chunks

    spec = resolve_output_spec(probe_video(media.face_mp4), num_frames=N)
    return track_faces(iter_video_chunks(media.face_mp4, spec))
