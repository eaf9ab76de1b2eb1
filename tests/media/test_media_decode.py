"""Video and image in: containers and codecs, output fps/size rules, VFR, rotation, streaming chunks."""

from __future__ import annotations

import subprocess
from fractions import Fraction

import av
import numpy as np
import pytest

from lipsync.contract.errors import InvalidInput
from lipsync.media.probe import IMAGE_FPS, expected_frame_count, probe_video, resolve_output_spec
from lipsync.media.video import iter_video_chunks, read_video

from media_testkit import FPS, H, N, W, run, write_raw_video


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.mark.parametrize("name", ["face_mp4", "face_mov", "face_webm", "face_mkv"])
def test_containers_decode_at_native_geometry(media, name):
    path = getattr(media, name)
    info = probe_video(path)
    assert (info.kind, info.width, info.height, info.fps, info.rotation) == ("video", W, H, Fraction(FPS), 0)
    spec = resolve_output_spec(info, num_frames=1000)
    assert (spec.fps, spec.width, spec.height) == (Fraction(FPS), W, H)
    frames = read_video(path, spec)
    assert frames.shape == (N, H, W, 3) and frames.dtype == np.uint8
    assert psnr(frames, media.face_frames) > 30
    assert expected_frame_count(info, spec) == N


def test_num_frames_is_taken_from_the_start(media):
    info = probe_video(media.face_mp4)
    frames = read_video(media.face_mp4, resolve_output_spec(info, num_frames=7))
    assert frames.shape[0] == 7
    assert psnr(frames, media.face_frames[:7]) > 30


def test_streaming_chunks_are_bounded(media):
    spec = resolve_output_spec(probe_video(media.face_mp4), num_frames=N)
    sizes = [c.shape[0] for c in iter_video_chunks(media.face_mp4, spec, chunk_size=8)]
    assert sizes == [8] * 6 + [2]


@pytest.mark.parametrize(
    ("frame_rate", "height", "width", "expect"),
    [
        (-1, -1, -1, (Fraction(25), 192, 256)),
        (-2, -2, -2, (Fraction(25, 2), 96, 128)),
        (-3, -3, -3, (Fraction(25, 3), 64, 86)),  # 85.33 → even 86
        (10, 101, 150, (Fraction(10), 100, 150)),  # 101 → even 100
    ],
)
def test_output_spec_rules(media, frame_rate, height, width, expect):
    spec = resolve_output_spec(probe_video(media.face_mp4), frame_rate=frame_rate, height=height, width=width)
    assert (spec.fps, spec.height, spec.width) == expect
    assert spec.height % 2 == 0 and spec.width % 2 == 0


@pytest.mark.parametrize(("field", "kwargs"), [("frame_rate", {"frame_rate": 0}), ("frame_rate", {"frame_rate": 500}),
                                               ("height", {"height": 0}), ("num_frames", {"num_frames": 0})])
def test_output_spec_rejects_bad_values(media, field, kwargs):
    with pytest.raises(InvalidInput) as err:
        resolve_output_spec(probe_video(media.face_mp4), **kwargs)
    assert err.value.field == field


def test_fps_and_size_resampling(media):
    info = probe_video(media.face_mp4)
    spec = resolve_output_spec(info, frame_rate=10, height=96, width=128, num_frames=1000)
    frames = read_video(media.face_mp4, spec)
    # 2 s at 10 fps; output frame j shows the source frame nearest to j * 2.5 (the earlier one on a tie)
    assert frames.shape == (20, 96, 128, 3)
    import cv2

    for j in (0, 3, 7, 19):
        i = int(np.ceil(j * 2.5 - 0.5))
        ref = cv2.resize(media.face_frames[i], (128, 96), interpolation=cv2.INTER_AREA)
        assert psnr(frames[j], ref) > 28, j


def _solid(level: int, w: int = 64, h: int = 64) -> np.ndarray:
    return np.full((h, w, 3), level, np.uint8)


def test_variable_frame_rate_is_resampled_to_constant(tmp_path):
    # source frames at irregular times (ms): frame k is painted with level 20k
    times_ms = [0, 40, 60, 200, 210, 400]
    path = tmp_path / "vfr.mkv"
    with av.open(str(path), "w") as out:
        st = out.add_stream("ffv1")
        st.width = st.height = 64
        st.pix_fmt = "yuv444p"
        st.codec_context.time_base = Fraction(1, 1000)
        for k, t in enumerate(times_ms):
            fr = av.VideoFrame.from_ndarray(_solid(20 * k + 10), format="rgb24")
            fr.pts, fr.time_base = t, Fraction(1, 1000)
            out.mux(st.encode(fr))
        out.mux(st.encode(None))
    info = probe_video(path)
    spec = resolve_output_spec(info, frame_rate=25, num_frames=1000)
    frames = read_video(path, spec)
    levels = np.round((frames[:, 32, 32, 0].astype(float) - 10) / 20).astype(int).tolist()
    # outputs every 40 ms: 0→f0, 40→f1, 80→f2 (60 nearer than 200), 120→f2 (mid 130), 160→f3, 200→f3,
    # 240→f4, 280..400→ f4 until mid 305, then f5 for 320..(400 + last interval 190)
    expected_times = [j * 40 for j in range(len(levels))]
    nearest = [int(np.argmin([abs(t - s) for s in times_ms])) for t in expected_times]
    assert levels[:6] == [0, 1, 2, 2, 3, 3]
    assert levels == nearest[: len(levels)]
    assert len(levels) == 15  # 400 ms + the last frame's 190 ms → 590 ms of 40 ms frames


@pytest.mark.parametrize("angle", [90, 180, 270])
def test_rotation_metadata_is_applied(media, tmp_path, angle):
    rotated = tmp_path / "rot.mp4"
    run("ffmpeg", "-v", "error", "-y", "-i", str(media.face_mov), "-c", "copy", "-metadata:s:v:0", f"rotate={angle}", str(rotated))
    info = probe_video(rotated)
    w, h = (H, W) if angle in (90, 270) else (W, H)
    assert (info.width, info.height) == (w, h) and info.rotation in (angle, 360 - angle)
    spec = resolve_output_spec(info, num_frames=5)
    frames = read_video(rotated, spec)
    assert frames.shape == (5, h, w, 3)
    # ffmpeg's own autorotation is the reference
    ref = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(rotated), "-frames:v", "5", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        check=True, capture_output=True,
    ).stdout
    ref = np.frombuffer(ref, np.uint8).reshape(5, h, w, 3)
    assert psnr(frames, ref) > 40


@pytest.mark.parametrize("name", ["still_png", "still_jpg", "still_webp"])
def test_image_is_a_still_animated_for_num_frames(media, name):
    path = getattr(media, name)
    info = probe_video(path)
    assert (info.kind, info.width, info.height, info.fps) == ("image", W, H, IMAGE_FPS)
    spec = resolve_output_spec(info, num_frames=30)
    assert spec.fps == 25
    frames = read_video(path, spec)
    assert frames.shape == (30, H, W, 3)
    assert (frames == frames[0]).all()
    assert psnr(frames[0], media.face_frames[0]) > 30
    assert resolve_output_spec(info, frame_rate=30, height=-2, width=-2, num_frames=3).fps == 30
    half = read_video(path, resolve_output_spec(info, height=-2, width=-2, num_frames=3))
    assert half.shape == (3, H // 2, W // 2, 3)


@pytest.mark.parametrize(
    ("name", "codec", "args"),
    [
        ("hevc.mp4", "hevc", ["-c:v", "libx265", "-x265-params", "log-level=error", "-pix_fmt", "yuv420p", "-tag:v", "hvc1"]),
        ("av1.mp4", ("libdav1d", "av1"), ["-c:v", "libsvtav1", "-preset", "12", "-crf", "30", "-pix_fmt", "yuv420p"]),
    ],
)
def test_h265_and_av1_decode(media, tmp_path, name, codec, args):
    path = write_raw_video(tmp_path / name, media.face_frames[:10], FPS, *args)
    info = probe_video(path)
    assert info.codec in ((codec,) if isinstance(codec, str) else codec)
    frames = read_video(path, resolve_output_spec(info))
    assert frames.shape == (10, H, W, 3) and psnr(frames, media.face_frames[:10]) > 28


def test_higher_output_fps_repeats_frames(media):
    spec = resolve_output_spec(probe_video(media.face_mov), frame_rate=50, num_frames=1000)
    frames = read_video(media.face_mov, spec)
    assert frames.shape[0] == 2 * N
    assert (frames[0::2] == frames[1::2]).all()
    assert psnr(frames[0::2], media.face_frames) > 30


def test_exif_orientation_of_a_jpeg_is_applied(media, tmp_path):
    from PIL import Image

    img = Image.fromarray(media.face_frames[0])
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "exif.jpg"
    img.save(path, quality=95, exif=exif)
    info = probe_video(path)
    assert (info.width, info.height) == (H, W)
    frame = read_video(path, resolve_output_spec(info, num_frames=1))[0]
    assert psnr(frame, np.rot90(media.face_frames[0], k=-1)) > 30


def test_measured_frame_rates_snap_to_standard_ones():
    from lipsync.media.probe import snap_fps

    assert snap_fps(Fraction(2996, 100)) == Fraction(30000, 1001)
    assert snap_fps(Fraction(30012, 1000)) == 30
    assert snap_fps(Fraction(25)) == 25
    assert snap_fps(Fraction(15)) == 15
    assert snap_fps(Fraction(1234567, 100000)) == Fraction(12346, 1000)


def test_native_fps_above_the_maximum_is_capped(tmp_path, media):
    path = write_raw_video(tmp_path / "fast.mp4", media.face_frames[:8], 240, "-c:v", "libx264", "-pix_fmt", "yuv420p")
    info = probe_video(path)
    assert info.fps == 240
    spec = resolve_output_spec(info)
    assert spec.fps == 120
    assert read_video(path, spec).shape[0] == 4
