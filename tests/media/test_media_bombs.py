"""Decompression bombs: files whose headers declare more pixels than the server decodes are refused from the
header, before any decoder allocates a frame."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import resource

from lipsync.media.errors import ImageTooLarge
from lipsync.media.probe import MAX_PIXELS, probe_video
from lipsync.testing.media import make_video


def _png_declaring(width: int, height: int) -> bytes:
    """A 100-byte PNG whose header says width x height RGB; its one compressed row is all the data there is."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("size", [(100_000, 100_000), (20_000, 20_000), (4097, 4096)])
def test_png_bomb_is_refused_from_its_header(tmp_path, size):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_declaring(*size))
    assert path.stat().st_size < 200
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageTooLarge) as err:
        probe_video(path)
    assert err.value.field == "video" and err.value.status_code == 422 and err.value.error_type == "image_too_large"
    assert "pixels" in err.value.message
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100  # nothing near width*height*3 bytes was allocated


def test_video_over_the_pixel_limit_is_refused_before_decoding(tmp_path):
    path = make_video(tmp_path / "v.mp4", frames=2, size=(128, 96))
    assert probe_video(path).width == 128
    with pytest.raises(ImageTooLarge):
        probe_video(path, max_pixels=128 * 96 - 1)
    assert MAX_PIXELS >= 3840 * 2160  # 4K UHD stays accepted


def test_video_whose_timestamps_declare_hours_is_refused_at_its_native_rate(tmp_path):
    # 200 frames over 10 h (a few KB): at its native 0.006 fps the output would last 4.6 h and the audio laid
    # under it would take gigabytes. Refused before decoding, naming the video.
    from lipsync.media.errors import ImplausibleFrameRate
    from lipsync.media.probe import resolve_output_spec
    from lipsync.testing.media import make_stretched_video

    info = probe_video(make_stretched_video(tmp_path / "hours.mp4", frames=200, hours=10))
    assert info.duration_s > 9 * 3600 and info.frame_count == 200
    with pytest.raises(ImplausibleFrameRate) as err:
        resolve_output_spec(info, frame_rate=-1, num_frames=100)
    assert err.value.field == "video" and err.value.status_code == 422
    assert "200 frames over" in err.value.message


def test_video_whose_timestamps_declare_hours_costs_what_its_output_does_with_a_frame_rate(tmp_path):
    # With an explicit frame_rate the output is num_frames / frame_rate seconds whatever the file declares:
    # the decode yields num_frames frames and stops, so memory does not grow with the declared duration.
    import tracemalloc

    from lipsync.media.audio import fit_to_timeline, AudioTrack
    from lipsync.media.probe import resolve_output_spec
    from lipsync.media.video import iter_video_chunks
    from lipsync.testing.media import make_stretched_video

    peaks = []
    for hours in (1, 10):
        path = make_stretched_video(tmp_path / f"h{hours}.mp4", frames=200, hours=hours)
        spec = resolve_output_spec(probe_video(path), frame_rate=25, num_frames=100)
        tracemalloc.start()
        frames = sum(len(c) for c in iter_video_chunks(path, spec))
        audio, _ = fit_to_timeline(AudioTrack(np.zeros((100, 2), np.float32), 48_000), frames, spec.fps)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert frames == 100 and audio.duration_s == pytest.approx(4.0)
    assert peaks[1] < peaks[0] * 1.5 + 1_000_000, peaks
