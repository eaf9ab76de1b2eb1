"""Every bad input gets its typed 422 error naming the field, never a crash."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from lipsync.contract.errors import InvalidMedia, LipsyncError
from lipsync.media.audio import load_audio
from lipsync.media.errors import (
    AudioTooShort,
    ImageTooSmall,
    NoAudioStream,
    NotAMediaFile,
    NoVideoStream,
    TruncatedMedia,
    UnsupportedCodec,
)
from lipsync.media.probe import probe_video, resolve_output_spec
from lipsync.media.video import read_video
from media_testkit import run


def _check(err: LipsyncError, cls: type, field: str) -> None:
    assert type(err) is cls
    assert isinstance(err, InvalidMedia) and err.status_code == 422
    body = err.to_body()["detail"][0]
    assert body["loc"] == ["body", field] and body["type"] == cls.error_type and body["msg"]


def _decode_all(path):
    info = probe_video(path)
    return read_video(path, resolve_output_spec(info, num_frames=10_000))


def test_not_a_media_file(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is a text file, not a video\n" * 20)
    with pytest.raises(NotAMediaFile) as err:
        probe_video(path)
    _check(err.value, NotAMediaFile, "video")
    with pytest.raises(NotAMediaFile) as err:
        load_audio(path)
    _check(err.value, NotAMediaFile, "audio")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    with pytest.raises(NotAMediaFile):
        probe_video(path)


def test_truncated_mp4_without_index(media, tmp_path):
    data = media.face_mov.read_bytes()  # moov at the end: cutting it loses the index
    path = tmp_path / "cut.mov"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedMedia) as err:
        probe_video(path)
    _check(err.value, TruncatedMedia, "video")


def test_truncated_faststart_mp4_breaks_off_while_decoding(media, tmp_path):
    fast = tmp_path / "fast.mp4"
    run("ffmpeg", "-v", "error", "-y", "-i", str(media.face_mp4), "-an", "-c", "copy", "-movflags", "+faststart", str(fast))
    data = fast.read_bytes()
    path = tmp_path / "fast_cut.mp4"
    path.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(TruncatedMedia) as err:
        _decode_all(path)
    _check(err.value, TruncatedMedia, "video")


def test_truncated_image(media, tmp_path):
    data = media.still_jpg.read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[:200])
    with pytest.raises(TruncatedMedia):
        probe_video(path)


def test_no_video_stream(tmp_path):
    srt = tmp_path / "s.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n")
    path = tmp_path / "subtitles_only.mkv"
    run("ffmpeg", "-v", "error", "-y", "-i", str(srt), str(path))
    with pytest.raises(NoVideoStream) as err:
        probe_video(path)
    _check(err.value, NoVideoStream, "video")


@pytest.mark.parametrize("ext", ["wav", "m4a"])
def test_audio_only_file_given_as_video(media, tmp_path, ext):
    path = media.speech_wav
    if ext == "m4a":
        path = tmp_path / "speech.m4a"
        run("ffmpeg", "-v", "error", "-y", "-i", str(media.speech_wav), "-c:a", "aac", str(path))
    with pytest.raises(NoVideoStream) as err:
        probe_video(path)
    _check(err.value, NoVideoStream, "video")
    assert "audio-only" in err.value.message


def test_video_without_audio_given_as_audio(media):
    with pytest.raises(NoAudioStream) as err:
        load_audio(media.face_mov)
    _check(err.value, NoAudioStream, "audio")


def test_zero_length_audio(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(str(path), np.zeros((0,), np.float32), 16000)
    with pytest.raises(AudioTooShort) as err:
        load_audio(path)
    _check(err.value, AudioTooShort, "audio")


def test_unsupported_codec(media, tmp_path):
    data = media.face_mov.read_bytes()
    assert b"avc1" in data
    path = tmp_path / "unknown_codec.mov"
    path.write_bytes(data.replace(b"avc1", b"zzz1"))  # a fourcc no decoder knows
    with pytest.raises(UnsupportedCodec) as err:
        probe_video(path)
    _check(err.value, UnsupportedCodec, "video")
    with pytest.raises(UnsupportedCodec):
        read_video(path, resolve_output_spec(probe_video(media.face_mov)))


@pytest.mark.parametrize("size", [(40, 40), (300, 50)])
def test_image_too_small(tmp_path, size):
    import cv2

    path = tmp_path / "tiny.png"
    cv2.imwrite(str(path), np.full((size[1], size[0], 3), 128, np.uint8))
    with pytest.raises(ImageTooSmall) as err:
        probe_video(path)
    _check(err.value, ImageTooSmall, "video")


def test_video_too_small(media, tmp_path):
    path = tmp_path / "tiny.mp4"
    run("ffmpeg", "-v", "error", "-y", "-i", str(media.face_mov), "-vf", "scale=48:36", "-c:v", "libx264", str(path))
    with pytest.raises(ImageTooSmall):
        probe_video(path)


def test_missing_file(tmp_path):
    with pytest.raises(NotAMediaFile):
        probe_video(tmp_path / "nope.mp4")
