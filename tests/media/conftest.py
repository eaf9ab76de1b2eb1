"""Test media, made once per session: a real face (scikit-image's astronaut) panned, zoomed, briefly covered
and cut away from; speech from espeak-ng; containers and codecs written with ffmpeg. No binary fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf

# The tests import their helpers as the top-level module ``media_testkit`` (this folder has no __init__.py,
# so a package named ``media`` here can never shadow the real one); keep that working under any rootdir.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from media_testkit import FPS, N, Media, face_frame, need_tool, run, write_raw_video  # noqa: E402


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    need_tool("espeak-ng")
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
    from lipsync.media.faces import track_faces
    from lipsync.media.probe import probe_video, resolve_output_spec
    from lipsync.media.video import iter_video_chunks

    spec = resolve_output_spec(probe_video(media.face_mp4), num_frames=N)
    return track_faces(iter_video_chunks(media.face_mp4, spec))
