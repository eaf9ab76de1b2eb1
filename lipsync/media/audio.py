"""Audio in: decode any audio (or a video's audio track), 16 kHz mono for the model, and the output timeline.

The original-quality track (native sample rate and channels) is kept for the output mux; the model gets a
16 kHz mono float32 copy. Both are laid on the output timeline: output frame j covers the time
[j/fps, (j+1)/fps), audio shorter than the video is padded with silence, longer is cut.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import av
import numpy as np
import soxr

from lipsync.media.errors import AudioTooShort, NoAudioStream, TruncatedMedia
from lipsync.media.probe import check_decodable, open_container

log = logging.getLogger(__name__)

MODEL_SAMPLE_RATE = 16_000
"""Sample rate (Hz) of the audio the model's speech encoder reads."""

FEATURE_RATE = 50.0
"""Frames per second of the speech encoder's features (Whisper / wav2vec2 at 16 kHz)."""


@dataclass(frozen=True)
class AudioTrack:
    """Decoded audio: float32 samples in [-1, 1], shape (n, channels), at ``sample_rate`` Hz."""

    samples: np.ndarray
    sample_rate: int

    @property
    def num_samples(self) -> int:
        return int(self.samples.shape[0])

    @property
    def channels(self) -> int:
        return int(self.samples.shape[1])

    @property
    def duration_s(self) -> float:
        return self.num_samples / self.sample_rate


@dataclass(frozen=True)
class AudioFit:
    """How a track was laid on the output timeline (for the logs and the job metrics)."""

    action: Literal["padded", "cut", "exact"]
    source_s: float
    target_s: float


MAX_DECODE_RATE = 48_000  # bounds a hostile 192 kHz track to a quarter of its native memory


def load_audio(
    path: str | os.PathLike[str], *, field: str = "audio", max_seconds: float | None = None
) -> AudioTrack:
    """Decode the first audio stream of any file FFmpeg reads (wav, mp3, m4a/aac, opus, flac, a video …).

    Keeps the native sample rate up to ``MAX_DECODE_RATE`` (48 kHz; above that, e.g. 192 kHz, it is resampled
    down while decoding, so memory is bounded by the duration) and up to two channels (more are downmixed to
    stereo). ``max_seconds`` stops decoding early (the output timeline never needs more). Raises
    NotAMediaFile, TruncatedMedia, UnsupportedCodec, NoAudioStream or AudioTooShort, all 422 on ``field``.
    """
    path = os.fspath(path)
    with open_container(path, field) as container:
        if not container.streams.audio:
            raise NoAudioStream(f"the {field} file has no audio stream", field=field)
        stream = container.streams.audio[0]
        check_decodable(stream, field)
        rate = int(stream.codec_context.sample_rate or stream.rate or 0)
        if rate <= 0:
            raise TruncatedMedia(f"the {field} audio stream has no sample rate", field=field)
        channels = min(2, max(1, int(stream.codec_context.channels or 1)))
        rate = min(rate, MAX_DECODE_RATE)
        resampler = av.AudioResampler(format="fltp", layout="stereo" if channels == 2 else "mono", rate=rate)
        limit = None if max_seconds is None else int(np.ceil(max_seconds * rate))
        announced = None
        if stream.duration is not None and stream.time_base is not None:
            announced = int(round(stream.duration * stream.time_base * rate))
        parts: list[np.ndarray] = []
        total = 0
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    parts.append(out.to_ndarray().T.copy())
                    total += parts[-1].shape[0]
                if limit is not None and total >= limit:
                    break
            else:
                for out in resampler.resample(None):
                    parts.append(out.to_ndarray().T.copy())
                    total += parts[-1].shape[0]
        except av.FFmpegError as exc:
            if total == 0:
                raise TruncatedMedia(
                    f"the {field} audio cannot be decoded; the file is truncated or corrupt "
                    f"({exc.strerror or exc})",
                    field=field,
                ) from exc
            log.warning("the %s audio breaks off after %.2f s (%s); using what decoded", field, total / rate, exc)
    if total == 0:
        raise AudioTooShort(f"the {field} audio is empty (zero samples)", field=field)
    samples = np.concatenate(parts).astype(np.float32, copy=False)
    if announced is not None and 0 < announced < samples.shape[0]:
        samples = samples[:announced]  # the codec's last frame is padded past the stream's real end
    if limit is not None:
        samples = samples[:limit]
    return AudioTrack(np.ascontiguousarray(samples), rate)


def to_model_audio(track: AudioTrack, sample_rate: int = MODEL_SAMPLE_RATE) -> np.ndarray:
    """Mono float32 at ``sample_rate`` (16 kHz by default), shape (n,)."""
    mono = track.samples.mean(axis=1, dtype=np.float32)
    if track.sample_rate == sample_rate:
        return mono
    return soxr.resample(mono, track.sample_rate, sample_rate, quality="HQ").astype(np.float32, copy=False)


def timeline_samples(num_frames: int, fps: Fraction, sample_rate: int) -> int:
    """Samples that cover ``num_frames`` output frames at ``fps`` exactly (rounded to the nearest sample)."""
    return int(round(Fraction(num_frames) / Fraction(fps) * sample_rate))


def fit_to_timeline(track: AudioTrack, num_frames: int, fps: Fraction) -> tuple[AudioTrack, AudioFit]:
    """Pad with silence or cut the track so it lasts exactly ``num_frames / fps`` seconds."""
    target = timeline_samples(num_frames, fps, track.sample_rate)
    have = track.num_samples
    fit = AudioFit("exact", have / track.sample_rate, target / track.sample_rate)
    if have < target:
        pad = np.zeros((target - have, track.channels), np.float32)
        samples = np.concatenate([track.samples, pad])
        fit = AudioFit("padded", fit.source_s, fit.target_s)
        log.info("audio is %.3f s, shorter than the %.3f s video: padded with silence", fit.source_s, fit.target_s)
    elif have > target:
        samples = track.samples[:target]
        fit = AudioFit("cut", fit.source_s, fit.target_s)
        log.info("audio is %.3f s, longer than the %.3f s video: cut", fit.source_s, fit.target_s)
    else:
        samples = track.samples
    return AudioTrack(samples, track.sample_rate), fit


def frame_sample_ranges(num_frames: int, fps: Fraction, sample_rate: int = MODEL_SAMPLE_RATE) -> np.ndarray:
    """(num_frames, 2) int64 [start, end) sample indices of each output frame's own audio."""
    j = np.arange(num_frames + 1, dtype=np.int64)
    edges = np.array([round(Fraction(int(k)) / Fraction(fps) * sample_rate) for k in j], dtype=np.int64)
    return np.stack([edges[:-1], edges[1:]], axis=1)


def audio_window_indices(
    num_frames: int,
    fps: Fraction,
    *,
    rate_hz: float = FEATURE_RATE,
    frames_before: int = 2,
    frames_after: int = 2,
    total: int | None = None,
) -> np.ndarray:
    """Index from every output frame to its audio window in a feature (or sample) sequence at ``rate_hz``.

    Row j lists the indices of the window centred on frame j, spanning ``frames_before`` frames before to
    ``frames_after`` after (at 25 fps and 50 Hz with 2/2: indices [2j-4, 2j+6), 10 steps, as LatentSync).
    Indices are clamped to [0, total-1] (edge repeated); ``total`` defaults to the timeline's own length.
    Use as ``features[idx]`` → (num_frames, W, dim).
    """
    per_frame = rate_hz / float(fps)
    width = max(1, int(round((frames_before + frames_after + 1) * per_frame)))
    starts = np.round((np.arange(num_frames) - frames_before) * per_frame).astype(np.int64)
    idx = starts[:, None] + np.arange(width, dtype=np.int64)[None, :]
    if total is None:
        total = int(round(num_frames * per_frame))
    return np.clip(idx, 0, max(0, total - 1))
