"""MP4 out: H.264 (yuv420p, CRF quality) + AAC, ``+faststart``, written frame by frame.

Throughput: x264 runs with its own thread pool at ``veryfast`` (``default_crf``): CRF 18 from 1280x720 up,
within 0.4 dB of the landed ``medium``/18 on smooth and on noisy (camera-like) 1080x1920 footage at 3x its
speed and no bigger; CRF 16 below, where ``veryfast``/18 loses more (the 256x192 test clip misses the face PSNR
bound that ``medium``/18 meets) and x264 costs little anyway. CRF 16 at HD sizes would write 2.5x the bytes of
``medium``/18 on noisy footage (docs/performance.md). With a GPU present and an FFmpeg build that has ``h264_nvenc``, that encoder
is used instead (``encoder_name``); any failure to open it falls back to libx264 silently (logged at INFO).

The writer takes frames incrementally, so memory stays flat, and lays the audio on the video timeline as it
goes: after frame j the audio is written up to time (j + 1)/fps, padded with silence past the track's end;
at ``close`` it stops at exactly num_frames/fps (cut when the track is longer). The input's sample rate and
channel count are kept when AAC supports them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from types import TracebackType

import av
import numpy as np
import soxr

from lipsync.media.audio import AudioTrack, timeline_samples
from lipsync.media.yuv import ENCODE_COLOUR, SPC_BT709, Colour, frame_height, rgb_to_i420

log = logging.getLogger(__name__)

AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
HD_CRF, SMALL_CRF = 18, 16
"""x264 constant-rate factors at ``veryfast`` (``default_crf``): visually lossless for most content."""
HD_PIXELS = 1280 * 720
DEFAULT_PRESET = "veryfast"
"""x264 preset chosen for throughput at equal quality (see the module docstring)."""
NVENC_PRESET = "p4"
"""NVENC preset (p1 fastest .. p7 best); with ``cq`` = the CRF, constant-quality rate control."""
AUDIO_BITRATE_PER_CHANNEL = 160_000
"""AAC bits per second per channel (320 kb/s stereo), capped by what the sample rate allows."""


@dataclass(frozen=True)
class WrittenVideo:
    path: str
    num_frames: int
    fps: Fraction
    width: int
    height: int
    audio_samples: int
    audio_sample_rate: int | None

    @property
    def duration_s(self) -> float:
        return float(self.num_frames / self.fps)


class Mp4Writer:
    """Streaming MP4 writer. Use as a context manager; ``write`` takes (H, W, 3) or (n, H, W, 3) RGB uint8,
    ``write_i420`` decoded planes (``lipsync.media.yuv``) as they are.

    ``audio``: the track to mux (any length; it is padded or cut to the frames written). None: no audio.
    ``colour``: the stream's matrix and range, tagged in the file: RGB frames are converted into it, I420
    frames must already be in it (BT.709 limited by default; the source's own when its planes pass through).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fps: Fraction | int | float,
        width: int,
        height: int,
        audio: AudioTrack | None = None,
        crf: int | None = None,
        preset: str = DEFAULT_PRESET,
        colour: Colour = ENCODE_COLOUR,
        nvenc: bool = True,
    ):
        if width % 2 or height % 2:
            raise ValueError(f"H.264 yuv420p needs even sizes, got {width}x{height}")
        self.colour = colour
        crf = default_crf(width, height) if crf is None else crf
        self.path = os.fspath(path)
        self.fps = Fraction(fps).limit_denominator(1001)
        self.width, self.height = width, height
        self._container = av.open(self.path, mode="w", format="mp4", options={"movflags": "+faststart"})
        self.encoder_name = "libx264"
        if nvenc and use_nvenc():
            try:
                self._video = self._add_video("h264_nvenc", width, height,
                                              # b=0: constant quality at `cq`; with FFmpeg's default
                                              # bitrate the VBR would stay capped at 2 Mb/s whatever cq says
                                              {"rc": "vbr", "cq": str(crf), "b": "0", "preset": NVENC_PRESET})
                self._video.codec_context.open()  # fail here (no device, driver too old), not at the first frame
                self.encoder_name = "h264_nvenc"
            except Exception as exc:  # a GPU that cannot encode must not fail the request
                log.info("h264_nvenc unusable (%s); encoding with libx264", exc)
                self._container.close()
                self._container = av.open(self.path, mode="w", format="mp4", options={"movflags": "+faststart"})
        if self.encoder_name == "libx264":
            self._video = self._add_video("libx264", width, height, {"crf": str(crf), "preset": preset, "threads": "0"})
            # Frame threads, not the slices PyAV asks for by default: a sliced frame waits for its slowest slice,
            # and next to the decode and paste threads that cost ~15 % of the pipeline's wall time (1080p, 2 cores;
            # docs/performance.md). Same quality, ~1 % smaller files.
            self._video.codec_context.thread_type = "FRAME"
        # Always tagged (``_add_video``): untagged video is read as BT.601 by FFmpeg but as BT.709 by browsers.
        self._frames = 0
        self._audio_in = audio
        self._audio_stream = None
        self._audio_written = 0
        self._layout = "mono"
        self._closed = False
        self.result: WrittenVideo | None = None
        if audio is not None:
            try:
                self._open_audio(audio)
            except Exception:
                self._abort()
                raise

    def _add_video(self, codec: str, width: int, height: int, options: dict[str, str]):
        stream = self._container.add_stream(codec, rate=self.fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = 1 / self.fps
        stream.options = options
        ctx = stream.codec_context
        ctx.colorspace = self.colour.colorspace_tag
        if self.colour.colorspace_tag == SPC_BT709:  # a passed-through BT.601 source keeps its own (unknown)
            ctx.color_primaries = ctx.color_trc = SPC_BT709  # primaries and transfer, as FFmpeg read it
        ctx.color_range = self.colour.range_tag
        return stream

    def _open_audio(self, audio: AudioTrack) -> None:
        rate = audio.sample_rate
        if rate not in AAC_RATES:
            rate = 48000
            samples = soxr.resample(audio.samples, audio.sample_rate, rate, quality="HQ").astype(np.float32)
            log.info("audio at %d Hz is not an AAC rate; resampled to %d Hz", audio.sample_rate, rate)
            audio = AudioTrack(samples, rate)
        self._audio_in = audio
        layout = "stereo" if audio.channels == 2 else "mono"
        stream = self._container.add_stream("aac", rate=rate)
        stream.layout = layout
        stream.format = "fltp"
        bitrate = min(AUDIO_BITRATE_PER_CHANNEL, 6 * rate) * audio.channels
        stream.bit_rate = bitrate
        stream.codec_context.time_base = Fraction(1, rate)
        self._audio_stream = stream
        self._layout = layout

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abort()

    @property
    def frames_written(self) -> int:
        return self._frames

    def write(self, frames: np.ndarray) -> None:
        """Append one frame (H, W, 3) or a chunk (n, H, W, 3) of RGB uint8 frames at the output size."""
        if self._closed:
            raise RuntimeError("the writer is closed")
        batch = frames[None] if frames.ndim == 3 else frames
        if batch.shape[1:] != (self.height, self.width, 3):
            raise ValueError(f"frames are {batch.shape[1:]}, the writer expects {(self.height, self.width, 3)}")
        for rgb in batch:  # lipsync.media.yuv's conversion: 6 ms a 1080p frame against swscale's 20 ms (matrix change)
            self._encode(av.VideoFrame.from_ndarray(rgb_to_i420(rgb, self.colour), format="yuv420p"))

    def write_i420(self, frames: np.ndarray) -> None:
        """Append one I420 frame (H * 3 / 2, W) or a chunk (n, H * 3 / 2, W), already in ``colour``: no
        conversion (the encoder takes the planes)."""
        if self._closed:
            raise RuntimeError("the writer is closed")
        batch = frames[None] if frames.ndim == 2 else frames
        if batch.shape[1:] != (self.height * 3 // 2, self.width) or frame_height(batch[0]) != self.height:
            raise ValueError(f"I420 frames are {batch.shape[1:]}, the writer expects "
                             f"{(self.height * 3 // 2, self.width)}")
        for i420 in batch:
            self._encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(i420), format="yuv420p"))

    def _encode(self, frame: av.VideoFrame) -> None:
        frame.pts = self._frames
        frame.time_base = self._video.codec_context.time_base
        self._container.mux(self._video.encode(frame))
        self._frames += 1
        self._write_audio_until(self._frames)

    def _write_audio_until(self, num_frames: int) -> None:
        if self._audio_stream is None or self._audio_in is None:
            return
        track = self._audio_in
        end = timeline_samples(num_frames, self.fps, track.sample_rate)
        if end <= self._audio_written:
            return
        part = track.samples[self._audio_written : min(end, track.num_samples)]
        if part.shape[0] < end - self._audio_written:
            pad = np.zeros((end - self._audio_written - part.shape[0], track.channels), np.float32)
            part = np.concatenate([part, pad])
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(part.T, dtype=np.float32), format="fltp", layout=self._layout)
        frame.sample_rate = track.sample_rate
        frame.pts = self._audio_written
        frame.time_base = Fraction(1, track.sample_rate)
        self._container.mux(self._audio_stream.encode(frame))
        self._audio_written = end

    def close(self) -> WrittenVideo:
        """Flush the encoders and finish the file (the moov atom is moved to the front)."""
        if self._closed:
            assert self.result is not None
            return self.result
        if self._frames == 0:
            self._abort()
            raise ValueError("no frame was written; an MP4 needs at least one")
        self._container.mux(self._video.encode(None))
        rate = None
        if self._audio_stream is not None and self._audio_in is not None:
            self._container.mux(self._audio_stream.encode(None))
            rate = self._audio_in.sample_rate
            have = self._audio_in.num_samples
            action = "padded with silence" if have < self._audio_written else "cut" if have > self._audio_written else "exact"
            log.info("audio %.3f s laid on the %.3f s video: %s", have / rate, self._audio_written / rate, action)
        self._container.close()
        self._closed = True
        self.result = WrittenVideo(
            self.path, self._frames, self.fps, self.width, self.height, self._audio_written, rate
        )
        return self.result

    def _abort(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._container.close()
            except Exception:  # the file is being discarded anyway
                pass
            if os.path.exists(self.path):
                os.remove(self.path)


def default_crf(width: int, height: int) -> int:
    """CRF 18 from 1280x720 up, 16 below (see the module docstring)."""
    return HD_CRF if width * height >= HD_PIXELS else SMALL_CRF


def use_nvenc() -> bool:
    """NVENC when this FFmpeg build has ``h264_nvenc`` and an NVIDIA GPU is visible (``/dev/nvidia0`` or a CUDA
    device in torch, when torch is already imported). ``Mp4Writer(nvenc=False)`` (``LIPSYNC_NVENC=false``) skips it."""
    if "h264_nvenc" not in av.codecs_available:
        return False
    return gpu_present()


def gpu_present() -> bool:
    import sys

    torch = sys.modules.get("torch")  # never import torch just for this
    if torch is not None:
        try:
            return bool(torch.cuda.is_available())
        except Exception:
            return False
    return os.path.exists("/dev/nvidia0")


def write_mp4(
    path: str | os.PathLike[str], frames: np.ndarray, fps: Fraction | int, audio: AudioTrack | None = None, **kwargs: object
) -> WrittenVideo:
    """Write a whole (T, H, W, 3) array at once (short clips, tests)."""
    with Mp4Writer(path, fps=fps, width=frames.shape[2], height=frames.shape[1], audio=audio, **kwargs) as w:  # type: ignore[arg-type]
        w.write(frames)
    assert w.result is not None
    return w.result
