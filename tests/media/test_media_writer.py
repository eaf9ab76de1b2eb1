"""MP4 writer: exact frame count and fps (fractional too), audio laid on the video timeline, input rate kept."""

from __future__ import annotations

import json
import subprocess
from fractions import Fraction

import numpy as np
import pytest

from lipsync.media.audio import AudioTrack, load_audio
from lipsync.media.probe import probe_video, resolve_output_spec
from lipsync.media.video import read_video
from lipsync.media.writer import Mp4Writer, write_mp4


def probe(path) -> list[dict]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_entries",
         "stream=codec_name,nb_read_frames,avg_frame_rate,duration,sample_rate,channels,bit_rate",
         "-of", "json", str(path)], check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)["streams"]


def gradient_frames(n: int, w: int = 96, h: int = 64) -> np.ndarray:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    frames = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        frames[i] = np.clip(x + 3 * i, 0, 255).astype(np.uint8)
    return frames


def tone(seconds: float, rate: int, channels: int) -> AudioTrack:
    t = np.arange(int(round(seconds * rate))) / rate
    wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return AudioTrack(np.repeat(wave[:, None], channels, axis=1), rate)


@pytest.mark.parametrize(("fps", "n"), [(Fraction(30000, 1001), 31), (Fraction(24), 13), (Fraction(25, 2), 9)])
def test_exact_frame_count_and_fps(tmp_path, fps, n):
    path = tmp_path / "v.mp4"
    result = write_mp4(path, gradient_frames(n), fps)
    (video,) = probe(path)
    assert int(video["nb_read_frames"]) == n == result.num_frames
    assert Fraction(video["avg_frame_rate"]) == fps
    assert float(video["duration"]) == pytest.approx(float(n / fps), abs=1e-3)
    assert probe_video(path).fps == fps


@pytest.mark.parametrize(("rate", "channels", "seconds"), [(48000, 2, 0.5), (44100, 1, 3.0), (22050, 1, 1.2)])
def test_audio_matches_video_duration_and_keeps_rate(tmp_path, rate, channels, seconds):
    n, fps = 30, Fraction(25)
    path = tmp_path / "av.mp4"
    write_mp4(path, gradient_frames(n), fps, audio=tone(seconds, rate, channels))
    video, audio = probe(path)
    assert audio["codec_name"] == "aac" and int(audio["sample_rate"]) == rate and int(audio["channels"]) == channels
    assert abs(float(audio["duration"]) - float(video["duration"])) < float(1 / fps)
    back = load_audio(path)
    assert back.num_samples == round(n / fps * rate)
    if seconds < float(n / fps) - 0.1:  # padded: silence after the tone ends
        end = int(seconds * rate)
        assert np.abs(back.samples[end + rate // 20 :]).max() < 0.01
        assert np.abs(back.samples[: end - rate // 20]).max() > 0.2


def test_high_audio_bitrate(tmp_path):
    rng = np.random.default_rng(0)
    noise = AudioTrack((rng.standard_normal((48000 * 2, 2)) * 0.2).astype(np.float32), 48000)
    path = tmp_path / "br.mp4"
    write_mp4(path, gradient_frames(50), 25, audio=noise)
    audio = probe(path)[1]
    assert int(audio["bit_rate"]) > 250_000


def test_non_aac_rate_is_resampled(tmp_path):
    path = tmp_path / "r.mp4"
    write_mp4(path, gradient_frames(10), 25, audio=tone(0.4, 37000, 1))
    assert int(probe(path)[1]["sample_rate"]) == 48000


def test_streaming_writes_and_quality(tmp_path):
    frames = gradient_frames(40, 128, 96)
    path = tmp_path / "s.mp4"
    with Mp4Writer(path, fps=25, width=128, height=96) as w:
        for chunk in np.array_split(frames, 7):
            w.write(chunk)
        w.write(frames[0])
    back = read_video(path, resolve_output_spec(probe_video(path)))
    assert back.shape == (41, 96, 128, 3)
    mse = ((back[:40].astype(float) - frames) ** 2).mean()
    assert 10 * np.log10(255**2 / mse) > 38  # CRF 18, not a tiny bitrate


def test_odd_size_and_wrong_frame_shape_are_refused(tmp_path):
    with pytest.raises(ValueError, match="even"):
        Mp4Writer(tmp_path / "x.mp4", fps=25, width=97, height=64)
    with Mp4Writer(tmp_path / "y.mp4", fps=25, width=96, height=64) as w:
        with pytest.raises(ValueError, match="expects"):
            w.write(np.zeros((64, 98, 3), np.uint8))
        w.write(np.zeros((64, 96, 3), np.uint8))
    assert probe_video(tmp_path / "y.mp4").frame_count == 1


def test_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "z.mp4"
    with pytest.raises(RuntimeError):
        with Mp4Writer(path, fps=25, width=96, height=64) as w:
            w.write(np.zeros((64, 96, 3), np.uint8))
            raise RuntimeError("job failed")
    assert not path.exists()


def test_output_is_tagged_bt709_and_colours_survive(tmp_path):
    red = np.zeros((3, 64, 64, 3), np.uint8)
    red[..., 0] = 255
    path = tmp_path / "red.mp4"
    write_mp4(path, red, 25)
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=color_space,color_primaries,color_transfer,color_range",
         "-of", "json", str(path)], check=True, capture_output=True, text=True,
    ).stdout
    tags = json.loads(out)["streams"][0]
    assert tags == {"color_space": "bt709", "color_primaries": "bt709", "color_transfer": "bt709", "color_range": "tv"}
    back = read_video(path, resolve_output_spec(probe_video(path)))
    assert np.abs(back.astype(int) - red).max() <= 3


def test_crf_follows_the_frame_size(tmp_path):
    """CRF 18 from 1280x720 up, 16 below (lipsync.media.writer.default_crf): read from the x264 settings the encoder
    writes into the stream itself."""
    for (w, h), crf in (((1280, 720), b"crf=18.0"), ((720, 1280), b"crf=18.0"), ((256, 192), b"crf=16.0")):
        path = tmp_path / f"{w}x{h}.mp4"
        write_mp4(path, np.full((2, h, w, 3), 90, np.uint8), 25)
        data = path.read_bytes()
        assert b"x264 - core" in data and crf in data, (w, h)
