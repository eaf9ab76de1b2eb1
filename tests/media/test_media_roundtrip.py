"""Acceptance 2: decode → track → crop → paste-back of the unchanged crop → encode, checked exactly.

Stated bounds, per frame, against the decoded input frame:
- crop → paste-back alone (before encoding): PSNR ≥ 44 dB (measured ≈ 46-47 dB: bicubic crop, anti-aliased
  bilinear paste, feathered mask);
- after the H.264 encode (yuv420p, CRF 18) and decode: PSNR ≥ 34 dB for the whole frame and inside the
  face's crop square (measured ≈ 36-38 dB; re-subsampling the chroma to 4:2:0 dominates the loss).
"""

from __future__ import annotations

import subprocess
from fractions import Fraction

import numpy as np
import pytest

from lipsync.media.audio import load_audio
from lipsync.media.crop import crop_faces
from lipsync.media.paste import paste_faces
from lipsync.media.probe import probe_video, resolve_output_spec
from lipsync.media.video import iter_video_chunks, read_video
from lipsync.media.writer import Mp4Writer
from media_testkit import FPS, H, N, W

PSNR_PASTE_DB = 44.0
PSNR_FRAME_DB = 34.0
PSNR_FACE_DB = 34.0
CROP = 256


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def ffprobe_streams(path) -> list[dict]:
    import json

    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries",
         "stream=codec_name,pix_fmt,width,height,nb_frames,avg_frame_rate,duration,sample_rate,channels",
         "-of", "json", str(path)], check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)["streams"]


@pytest.fixture(scope="module")
def roundtrip(media, face_track, tmp_path_factory):
    path = tmp_path_factory.mktemp("rt") / "out.mp4"
    info = probe_video(media.face_mp4)
    spec = resolve_output_spec(info, num_frames=N)
    audio = load_audio(media.face_mp4, field="audio")
    paste_psnr = []
    with Mp4Writer(path, fps=spec.fps, width=spec.width, height=spec.height, audio=audio) as writer:
        start = 0
        for chunk in iter_video_chunks(media.face_mp4, spec, chunk_size=16):
            idx = list(range(start, start + len(chunk)))
            crops, _ = crop_faces(chunk, face_track, idx, CROP)
            pasted = paste_faces(chunk, crops, face_track, idx)
            paste_psnr += [psnr(a, b) for a, b in zip(pasted, chunk)]
            writer.write(pasted)
            start += len(chunk)
    return path, spec, audio, writer.result, paste_psnr


def test_roundtrip_geometry_is_exact(roundtrip):
    path, spec, audio, result, _ = roundtrip
    assert (result.num_frames, result.fps, result.width, result.height) == (N, Fraction(FPS), W, H)
    video, aac = ffprobe_streams(path)
    assert (video["codec_name"], video["pix_fmt"], video["width"], video["height"]) == ("h264", "yuv420p", W, H)
    assert int(video["nb_frames"]) == N and video["avg_frame_rate"] == f"{FPS}/1"
    assert float(video["duration"]) == pytest.approx(N / FPS, abs=1e-6)
    assert aac["codec_name"] == "aac" and int(aac["sample_rate"]) == audio.sample_rate
    assert float(aac["duration"]) == pytest.approx(N / FPS, abs=1e-6)  # the speech (>2 s) was cut to the video
    decoded = load_audio(path)
    assert decoded.num_samples == round(N / FPS * audio.sample_rate)


def test_roundtrip_frames_within_psnr_bound(media, roundtrip, face_track):
    path, spec, _, _, paste_psnr = roundtrip
    assert len(paste_psnr) == N and min(paste_psnr) > PSNR_PASTE_DB, min(paste_psnr)
    original = read_video(media.face_mp4, spec)
    again = read_video(path, resolve_output_spec(probe_video(path)))
    assert again.shape == original.shape == (N, H, W, 3)
    frame_psnr = [psnr(a, b) for a, b in zip(again, original)]
    assert min(frame_psnr) > PSNR_FRAME_DB, min(frame_psnr)
    for i in np.flatnonzero(face_track.present)[::7]:
        cx, cy, side, _ = face_track.alignment[i]
        x0, x1 = int(max(0, cx - side / 2)), int(min(W, cx + side / 2))
        y0, y1 = int(max(0, cy - side / 2)), int(min(H, cy + side / 2))
        assert psnr(again[i, y0:y1, x0:x1], original[i, y0:y1, x0:x1]) > PSNR_FACE_DB


def test_output_is_faststart(roundtrip):
    path = roundtrip[0]
    with open(path, "rb") as fh:
        head = fh.read()
    assert 0 < head.find(b"moov") < head.find(b"mdat")
