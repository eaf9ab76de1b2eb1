"""Audio in: formats, 16 kHz mono, timeline fit (pad / cut), frame windows, silence."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import soundfile as sf

from lipsync.media.audio import (
    MODEL_SAMPLE_RATE,
    AudioTrack,
    audio_window_indices,
    fit_to_timeline,
    frame_sample_ranges,
    load_audio,
    to_model_audio,
)
from lipsync.media.vad import silent_frames, silent_spans
from media_testkit import run


def test_wav_keeps_native_rate_and_samples(media):
    ref, sr = sf.read(str(media.speech_wav), dtype="float32")
    track = load_audio(media.speech_wav)
    assert (track.sample_rate, track.channels, track.num_samples) == (sr, 1, ref.shape[0])
    assert np.abs(track.samples[:, 0] - ref).max() < 1e-4


@pytest.mark.parametrize("name", ["face_mp4", "face_webm"])
def test_audio_track_of_a_video_file(media, name):
    track = load_audio(getattr(media, name))
    # AAC keeps 22.05 kHz; Opus always decodes at 48 kHz
    assert track.sample_rate in (22050, 48000)
    assert abs(track.duration_s - media.speech_seconds) < 0.03
    assert float(np.abs(track.samples).max()) > 0.1


@pytest.mark.parametrize("ext,args", [("m4a", ["-c:a", "aac", "-ar", "44100", "-ac", "2"]), ("mp3", ["-c:a", "libmp3lame"]),
                                      ("opus", ["-c:a", "libopus"]), ("flac", ["-c:a", "flac"])])
def test_compressed_formats(media, tmp_path, ext, args):
    out = tmp_path / f"speech.{ext}"
    run("ffmpeg", "-v", "error", "-y", "-i", str(media.speech_wav), *args, str(out))
    track = load_audio(out)
    assert abs(track.duration_s - media.speech_seconds) < 0.06
    wav = to_model_audio(track)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert abs(wav.shape[0] / MODEL_SAMPLE_RATE - media.speech_seconds) < 0.06


def test_max_seconds_stops_early(media):
    track = load_audio(media.speech_wav, max_seconds=0.5)
    assert track.num_samples == int(np.ceil(0.5 * track.sample_rate))


def test_model_audio_is_16k_mono(media):
    track = load_audio(media.speech_wav)
    wav = to_model_audio(track)
    assert wav.shape[0] == pytest.approx(track.duration_s * 16000, abs=2)
    # resampling keeps the signal: energy within a few percent
    assert np.sqrt((wav**2).mean()) == pytest.approx(np.sqrt((track.samples**2).mean()), rel=0.05)


@pytest.mark.parametrize(("seconds", "action"), [(1.0, "padded"), (3.0, "cut"), (2.0, "exact")])
def test_fit_to_timeline(seconds, action):
    sr = 48000
    track = AudioTrack(np.ones((int(seconds * sr), 2), np.float32), sr)
    fitted, fit = fit_to_timeline(track, 50, Fraction(25))
    assert fit.action == action
    assert fitted.num_samples == 2 * sr and fitted.channels == 2
    if action == "padded":
        assert (fitted.samples[sr:] == 0).all() and (fitted.samples[:sr] == 1).all()


def test_fractional_fps_sample_ranges_tile_the_timeline():
    fps = Fraction(30000, 1001)
    r = frame_sample_ranges(300, fps, 16000)
    assert r[0, 0] == 0 and (r[1:, 0] == r[:-1, 1]).all()
    assert r[-1, 1] == round(300 * 1001 / 30000 * 16000)
    assert set(np.diff(r, axis=1).ravel().tolist()) <= {533, 534}


def test_window_indices_at_30fps_samples():
    idx = audio_window_indices(4, Fraction(30), rate_hz=16000, frames_before=0, frames_after=0)
    assert idx.shape == (4, 533)
    assert idx[1, 0] == 533 and idx[3, 0] == 1600 and idx[3, -1] == 2132  # 4 frames = 2133 samples


def test_silence_marks_pauses_not_speech(media):
    speech = to_model_audio(load_audio(media.speech_wav))
    pad = np.zeros(MODEL_SAMPLE_RATE, np.float32)
    wav = np.concatenate([pad, speech, pad])  # 1 s silence, speech, 1 s silence
    n = int(len(wav) / MODEL_SAMPLE_RATE * 25)
    silent = silent_frames(wav, n, Fraction(25))
    spans = silent_spans(silent)
    loud = np.flatnonzero(np.abs(wav) > 0.02)
    first, last = loud[0] / MODEL_SAMPLE_RATE * 25, loud[-1] / MODEL_SAMPLE_RATE * 25  # in frames
    assert spans[0][0] == 0 and abs(spans[0][1] - first) <= 3
    assert spans[-1][1] == n and abs(spans[-1][0] - last) <= 3
    # between them mostly speech, with the pauses between the three sentences found as silence
    inner = silent[spans[0][1] : spans[-1][0]]
    assert 0.05 < inner.mean() < 0.5
    assert len(spans) >= 3
