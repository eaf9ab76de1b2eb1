"""Makers of the test media, shared by conftest.py and the tests: a real face (scikit-image's astronaut)
panned, zoomed, briefly covered and cut away from; containers and codecs written with the ffmpeg CLI (not
with the code under test). No binary fixtures."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

W, H = 256, 192
FPS = 25
N = 50
COVERED = range(20, 24)  # a hand over the face: 4 frames, bridged by the tracker
CUT_AWAY = range(34, 42)  # another shot without a face: 8 frames, passed through


def need_tool(tool: str) -> None:
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
    need_tool("ffmpeg")
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


