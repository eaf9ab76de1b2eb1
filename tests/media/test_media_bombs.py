"""Decompression bombs: files whose headers declare more pixels than the server decodes are refused from the
header, before any decoder allocates a frame."""

from __future__ import annotations

import struct
import zlib

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
