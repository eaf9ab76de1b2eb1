"""Pass 2's paste side on decoded 4:2:0 planes (lipsync.media.yuv): the decode passes the planes through, the region
conversions agree with swscale, paste-back on planes equals paste-back on RGB up to rounding and leaves every
other pixel exactly as decoded, and the writer encodes the planes tagged with the source's own colour."""

from __future__ import annotations

import subprocess

import av
import cv2
import numpy as np
import pytest
import skimage.data

from lipsync.media.paste import paste_face, paste_face_i420
from lipsync.media.probe import probe_video, resolve_output_spec
from lipsync.media.video import i420_colour, iter_video_chunks, iter_video_i420_chunks, read_video
from lipsync.media.writer import Mp4Writer
from lipsync.media.yuv import ENCODE_COLOUR, Colour, i420_to_rgb, planes, rgb_to_i420
from media_testkit import H, W, run

COLOURS = [Colour("ITU601", False), Colour("ITU709", False), Colour("ITU601", True), Colour("ITU709", True)]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def _portrait() -> np.ndarray:
    return cv2.resize(skimage.data.astronaut(), (W, H), interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize("colour", COLOURS, ids=lambda c: f"{c.matrix}-{c.range_name}")
def test_region_conversions_agree_with_swscale(colour):
    rgb = _portrait()
    ref = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
        format="yuv420p", src_colorspace=colour.matrix, dst_colorspace=colour.matrix, src_color_range="JPEG",
        dst_color_range=colour.range_name).to_ndarray()
    ours = rgb_to_i420(rgb, colour)
    assert ours.shape == ref.shape == (H * 3 // 2, W)
    (oy, *ouv), (ry, *ruv) = planes(ours), planes(ref)
    assert np.abs(oy.astype(int) - ry).max() <= 1  # the same matrix, up to rounding
    for a, b in zip(ouv, ruv):  # swscale's chroma filter spans more than the 2x2 block averaged here
        assert np.abs(a.astype(int) - b).mean() < 1.0 and psnr(a, b) > 38
    back = av.VideoFrame.from_ndarray(ref, format="yuv420p").reformat(
        format="rgb24", src_colorspace=colour.matrix, src_color_range=colour.range_name,
        dst_color_range="JPEG").to_ndarray()
    assert psnr(i420_to_rgb(ref, colour), back) > 36  # chroma upsampling differs at edges only
    assert psnr(i420_to_rgb(ours, colour), rgb) > 33  # a 4:2:0 round trip of a detailed picture


def test_decode_passes_the_decoders_planes_through(media):
    spec = resolve_output_spec(probe_video(media.face_mp4), num_frames=12)
    colour = i420_colour(media.face_mp4, spec)
    assert colour == Colour("ITU601", False)  # untagged yuv420p: what FFmpeg assumes
    chunks = list(iter_video_i420_chunks(media.face_mp4, spec, colour, chunk_size=5))
    assert [len(c) for c in chunks] == [5, 5, 2] and chunks[0].shape[1:] == (H * 3 // 2, W)
    i420 = np.concatenate(chunks)
    with av.open(str(media.face_mp4)) as container:
        decoded = [f.to_ndarray() for _, f in zip(range(12), container.decode(video=0))]
    assert np.array_equal(i420, np.stack(decoded))  # the planes themselves, no conversion
    rgb = read_video(media.face_mp4, spec)
    assert psnr(np.stack([i420_to_rgb(f, colour) for f in i420]), rgb) > 40


def test_decode_converts_when_the_planes_cannot_pass(media):
    """A resized output is made through RGB, in the encoder's colour; so is a still."""
    info = probe_video(media.face_mp4)
    spec = resolve_output_spec(info, num_frames=4, width=W // 2, height=H // 2)
    assert i420_colour(media.face_mp4, spec) == ENCODE_COLOUR
    i420 = np.concatenate(list(iter_video_i420_chunks(media.face_mp4, spec, ENCODE_COLOUR)))
    rgb = np.concatenate(list(iter_video_chunks(media.face_mp4, spec)))
    assert np.array_equal(i420, np.stack([rgb_to_i420(f, ENCODE_COLOUR) for f in rgb]))
    still_spec = resolve_output_spec(probe_video(media.still_png), num_frames=3)
    assert i420_colour(media.still_png, still_spec) == ENCODE_COLOUR
    stills = np.concatenate(list(iter_video_i420_chunks(media.still_png, still_spec, ENCODE_COLOUR)))
    assert len(stills) == 3 and np.array_equal(stills[0], stills[2])


@pytest.mark.parametrize("angle", [90, 270])
def test_rotated_planes_match_the_rotated_rgb(media, tmp_path, angle):
    rotated = tmp_path / "rot.mp4"
    run("ffmpeg", "-v", "error", "-y", "-i", str(media.face_mov), "-c", "copy", "-metadata:s:v:0",
        f"rotate={angle}", str(rotated))
    spec = resolve_output_spec(probe_video(rotated), num_frames=4)
    colour = i420_colour(rotated, spec)
    assert colour.matrix == "ITU601" and (spec.width, spec.height) == (H, W)
    i420 = np.concatenate(list(iter_video_i420_chunks(rotated, spec, colour)))
    assert i420.shape == (4, W * 3 // 2, H)
    rgb = read_video(rotated, spec)
    assert psnr(np.stack([i420_to_rgb(f, colour) for f in i420]), rgb) > 40


def _paste_case(rgb: np.ndarray, size: int = 96):
    """An affine onto the astronaut's face, a noisy 'generated' crop and a feathered mouth mask."""
    from lipsync.media.crop import crop_face

    side = 110.0
    cx, cy = W * 0.5, H * 0.42
    s = size / side
    affine = np.array([[s, 0, -s * (cx - side / 2)], [0, s, -s * (cy - side / 2)]], np.float64)
    crop = crop_face(rgb, affine, size)
    noise = np.random.default_rng(0).integers(-30, 30, crop.shape)
    crop = np.clip(crop.astype(int) + 20 + noise, 0, 255).astype(np.uint8)  # a different tone: the seam shift
    mask = np.zeros((size, size), np.float32)
    cv2.ellipse(mask, (size // 2, int(size * 0.7)), (size // 4, size // 7), 0, 0, 360, 1.0, -1)
    return affine, crop, cv2.GaussianBlur(mask, (0, 0), size / 30)


@pytest.mark.parametrize("colour", COLOURS[:2], ids=lambda c: c.matrix)
def test_paste_on_planes_matches_paste_on_rgb(colour):
    source = rgb_to_i420(_portrait(), colour)
    rgb = i420_to_rgb(source, colour)
    affine, crop, mask = _paste_case(rgb)
    on_rgb = paste_face(rgb, crop, affine, mask)
    on_planes = source.copy()
    paste_face_i420(on_planes, crop, affine, mask, colour)
    expected = rgb_to_i420(on_rgb, colour)  # the RGB path's result as the encoder would get it
    changed = np.argwhere(np.any(on_rgb != rgb, axis=2))
    assert len(changed) > 500
    y0, x0 = changed.min(0)
    y1, x1 = changed.max(0) + 1
    yp, ep = planes(on_planes)[0], planes(expected)[0]
    assert psnr(yp[y0:y1, x0:x1], ep[y0:y1, x0:x1]) > 40
    for a, b in zip(planes(on_planes)[1:], planes(expected)[1:]):
        assert psnr(a, b) > 40
    # outside the mask's box every byte is the decoder's
    outside = np.ones(source.shape, bool)
    oy, ou, ov = planes(outside)
    oy[max(0, y0 - 4):y1 + 4, max(0, x0 - 4):x1 + 4] = False
    ou[max(0, y0 - 4) // 2:(y1 + 4) // 2, max(0, x0 - 4) // 2:(x1 + 4) // 2] = False
    ov[max(0, y0 - 4) // 2:(y1 + 4) // 2, max(0, x0 - 4) // 2:(x1 + 4) // 2] = False
    assert np.array_equal(on_planes[outside], source[outside])
    assert not np.array_equal(on_planes, source)


def test_paste_on_planes_without_mask_or_out_of_frame_changes_nothing():
    colour = ENCODE_COLOUR
    source = rgb_to_i420(_portrait(), colour)
    affine, crop, mask = _paste_case(i420_to_rgb(source, colour))
    frame = source.copy()
    paste_face_i420(frame, crop, affine, np.zeros_like(mask), colour)
    far = affine.copy()
    far[:, 2] += 10_000  # the crop lies far outside the frame
    paste_face_i420(frame, crop, far, mask, colour)
    assert np.array_equal(frame, source)


@pytest.mark.parametrize("colour", [Colour("ITU601", False), ENCODE_COLOUR, Colour("ITU709", True)],
                         ids=lambda c: f"{c.matrix}-{c.range_name}")
def test_writer_encodes_planes_tagged_with_their_colour(tmp_path, colour):
    rgb = _portrait()
    frames = np.stack([rgb_to_i420(np.roll(rgb, 3 * i, axis=1), colour) for i in range(6)])
    path = tmp_path / "out.mp4"
    with Mp4Writer(path, fps=25, width=W, height=H, colour=colour) as writer:
        writer.write_i420(frames[:2])
        writer.write_i420(frames[2])
        writer.write_i420(frames[3:])
    assert writer.result.num_frames == 6
    with av.open(str(path)) as container:
        decoded = list(container.decode(video=0))
    assert int(decoded[0].colorspace) == colour.colorspace_tag
    assert int(decoded[0].color_range) == colour.range_tag
    assert psnr(np.stack([f.to_ndarray() for f in decoded]), frames) > 40
    # FFmpeg's own decoder reads the tags back: the picture it shows is the one that was meant
    shown = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-frames:v", "1", "-f", "rawvideo",
                            "-pix_fmt", "rgb24", "-"], check=True, capture_output=True).stdout
    assert psnr(np.frombuffer(shown, np.uint8).reshape(H, W, 3), i420_to_rgb(frames[0], colour)) > 35


def test_writer_refuses_planes_of_another_size(tmp_path):
    with Mp4Writer(tmp_path / "x.mp4", fps=25, width=W, height=H) as writer:
        with pytest.raises(ValueError, match="I420 frames"):
            writer.write_i420(np.zeros((H, W), np.uint8))
        writer.write_i420(np.zeros((H * 3 // 2, W), np.uint8))
