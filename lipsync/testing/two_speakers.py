"""A two-person clip for the speaker-selection tests and benchmarks: two faces side by side, each mouth opening
and closing with its own synthetic voice (espeak-ng), A speaking in the first half and B in the second, both
voices mixed into the clip's one audio track.

A is scikit-image's astronaut (the larger face, left); B is the same photo mirrored and recoloured (smaller,
right). A mouth "opens" by pulling the lower lip and jaw down and filling the gap dark (a warp of the photo), by
as much as its voice is loud in that frame; dlib's landmarks follow it (the inner-lip gap grows with it).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FPS = 25
SIZE = (320, 176)
HALF_S = 1.4
"""Seconds each person speaks (A first, then B)."""
RATE = 16_000
TEXT_A = "We met on the moon."
TEXT_B = "The view was lovely."

_LIP_Y, _MOUTH_X, _MOUTH_W = 144.0, 223.0, 26.0  # in the 512 x 512 astronaut photo
_CROP = (110, 30, 330, 250)  # x0, y0, x1, y1 of the head in the photo
_PLACE = {"A": (4, 4, 168), "B": (178, 26, 136)}  # x, y and side of each head in the frame


@dataclass(frozen=True)
class TwoSpeakerClip:
    video: Path
    """H.264 + AAC: the two faces and the mixed voices."""
    num_frames: int
    boxes: dict[str, tuple[int, int, int, int]]
    """Each head's square in frame pixels (x0, y0, x1, y1): A left, B right."""
    first_half: int
    """Frames [0, first_half) are A's turn, the rest B's."""


def open_mouth(photo: np.ndarray, amount: float) -> np.ndarray:
    """The astronaut photo with the mouth opened by ``amount`` pixels (0: as photographed)."""
    import cv2

    h, w = photo.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    below = ys - _LIP_Y
    pull = amount * np.exp(-((xs - _MOUTH_X) / _MOUTH_W) ** 2) * np.clip(1 - (below - 20) / 30, 0, 1) * (below > 0)
    src_y = (ys - pull).astype(np.float32)
    out = cv2.remap(photo, xs, src_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    out[(below > 0) & (src_y < _LIP_Y) & (np.abs(xs - _MOUTH_X) < 22)] = (60, 25, 30)
    return out


def _voice(path: Path, text: str, voice: str, seconds: float) -> np.ndarray:
    import soundfile as sf
    import soxr

    subprocess.run(["espeak-ng", "-v", voice, "-s", "190", "-w", str(path), text], check=True, capture_output=True)
    data, rate = sf.read(str(path), dtype="float32")
    data = soxr.resample(data if data.ndim == 1 else data.mean(1), rate, RATE).astype(np.float32)
    out = np.zeros(int(seconds * RATE), np.float32)
    data = data[: len(out) - RATE // 10]
    out[RATE // 20 : RATE // 20 + len(data)] = data
    return out


def _openings(voice: np.ndarray, frames: int) -> np.ndarray:
    """Per-frame mouth opening (pixels of the photo) from a voice's loudness."""
    per = RATE // FPS
    rms = np.sqrt(np.array([np.mean(voice[i * per : (i + 1) * per] ** 2) for i in range(frames)]) + 1e-12)
    level = np.clip(rms / max(float(rms.max()), 1e-6) * 1.4, 0, 1)
    return np.where(level > 0.12, 16.0 * level, 0.0)


def make_two_speaker_clip(folder: Path, *, half_s: float = HALF_S) -> TwoSpeakerClip:
    import cv2
    import skimage.data
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    half = int(round(half_s * FPS))
    frames = 2 * half
    a = _voice(folder / "voice_a.wav", TEXT_A, "en-us", half / FPS)
    b = _voice(folder / "voice_b.wav", TEXT_B, "en+f3", half / FPS)
    mix = np.concatenate([a, b])
    sf.write(str(folder / "mix.wav"), mix, RATE)
    open_a = np.concatenate([_openings(a, half), np.zeros(half)])
    open_b = np.concatenate([np.zeros(half), _openings(b, half)])

    photo = skimage.data.astronaut()
    x0, y0, x1, y1 = _CROP
    width, height = SIZE
    raw = bytearray()
    for j in range(frames):
        canvas = np.full((height, width, 3), 90, np.uint8)
        for name, amount in (("A", open_a[j]), ("B", open_b[j])):
            head = open_mouth(photo, amount)[y0:y1, x0:x1]
            if name == "B":
                head = head[:, ::-1, ::-1].copy()  # mirrored, and blue where the astronaut is red
            px, py, side = _PLACE[name]
            canvas[py : py + side, px : px + side] = cv2.resize(head, (side, side), interpolation=cv2.INTER_AREA)
        raw += canvas.tobytes()
    video = folder / "two_speakers.mp4"
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
           "-r", str(FPS), "-i", "-", "-i", str(folder / "mix.wav"), "-c:v", "libx264", "-crf", "12",
           "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(video)]
    subprocess.run(cmd, input=bytes(raw), check=True, capture_output=True)
    boxes = {k: (px, py, px + side, py + side) for k, (px, py, side) in _PLACE.items()}
    return TwoSpeakerClip(video, frames, boxes, half)
