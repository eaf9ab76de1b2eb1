"""``sync_mode`` and ``speaker`` (extensions of the hosted schema) end to end: the real stack (redis-server, the
API, an RQ worker running the lip-sync pipeline with the tiny random-weights model, 2 steps), requests through
the official Python client, outputs read back frame by frame.

Media made here: a face clip (scikit-image's astronaut) whose top band carries each source frame's number in
binary, so an output frame says which source frame it shows; its first frame as a still; a 0.6 s tone.
"""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import cv2
import fal_client
import httpx
import numpy as np
import pytest
import skimage.data

from lipsync.client import point_fal_client
from lipsync.media.sync_modes import sync_order
from lipsync.testing.media import make_wav, probe
from lipsync.testing.stack import wait_until
from tests.conftest import ALICE, _stack
from tests.test_js_client import requires_js, run_js

W, H, FPS, N = 160, 128, 25, 10
BAND, BITS = 8, 5  # the top BAND rows hold the frame number: BITS blocks of W // BITS pixels, white = 1
AUTH = {"Authorization": f"Key {ALICE}"}
AAC_FRAME_S = 1024 / 22050
# Above the two-speaker clip (70 frames), below the defaults of num_frames (100) and frame_block_width (136):
# requests that leave them out still run (cut_off: num_frames defaults to the limit).
MAX_FRAMES = 80


def numbered_frame(i: int) -> np.ndarray:
    m = np.float32([[0.36, 0, -20 + i], [0, 0.36, 2]])
    rgb = cv2.warpAffine(skimage.data.astronaut(), m, (W, H), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)
    rgb[:BAND] = 0
    for bit in range(BITS):
        if i >> bit & 1:
            rgb[:BAND, bit * (W // BITS):(bit + 1) * (W // BITS)] = 255
    return rgb


def frame_number(rgb: np.ndarray) -> int:
    blocks = [rgb[1:BAND - 1, b * (W // BITS) + 2:(b + 1) * (W // BITS) - 2].mean() for b in range(BITS)]
    return sum(1 << b for b, v in enumerate(blocks) if v > 128)


def ffmpeg_mp4(path: Path, frames: np.ndarray, fps: int, size: tuple[int, int] = (W, H)) -> Path:
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{size[0]}x{size[1]}",
           "-r", str(fps), "-i", "-", "-c:v", "libx264", "-crf", "12", "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(cmd, input=frames.tobytes(), check=True, capture_output=True)
    return path


def decode(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("sync-media")
    frames = np.stack([numbered_frame(i) for i in range(N)])
    still = d / "still.png"
    cv2.imwrite(str(still), cv2.cvtColor(frames[0], cv2.COLOR_RGB2BGR))
    return {"numbered": ffmpeg_mp4(d / "numbered.mp4", frames, FPS), "still": still,
            "tone": make_wav(d / "tone.wav", seconds=0.6, rate=22050),
            "short": make_wav(d / "short.wav", seconds=0.2, rate=22050),
            "long": make_wav(d / "long.wav", seconds=6.0, rate=8000)}


@pytest.fixture(scope="module")
def sstack(tmp_path_factory: pytest.TempPathFactory):
    yield from _stack(tmp_path_factory, "speaker-sync", pipeline="lipsync", num_inference_steps="2",
                      max_num_frames=str(MAX_FRAMES))


def submit(stack, video: Path, audio: Path, **params) -> str:
    """Through the official Python client (file inputs as data URIs: no uploads)."""
    point_fal_client(stack.base_url)
    client = fal_client.SyncClient(key=ALICE)
    handle = client.submit("pipio/lipsync", {"video": fal_client.encode_file(video),
                                             "audio": fal_client.encode_file(audio), **params})
    return handle.request_id


def finished(stack, request_id: str, timeout: float = 90) -> dict:
    url = f"{stack.base_url}/pipio/lipsync/requests/{request_id}/status"

    def done():
        status = httpx.get(url, params={"logs": 1}, headers=AUTH).json()
        return status if status["status"] == "COMPLETED" else None

    return wait_until(done, timeout, "the request to finish", interval=0.2)


def run_ok(stack, tmp_path: Path, video: Path, audio: Path, **params) -> tuple[dict, dict, list[np.ndarray]]:
    """(completed status with logs and metrics, probe of the MP4, its decoded frames)."""
    request_id = submit(stack, video, audio, **params)
    status = finished(stack, request_id)
    assert status.get("error") is None, (status, stack.logs())
    out = fal_client.SyncClient(key=ALICE).result("pipio/lipsync", request_id)["video"]
    path = tmp_path / f"{request_id}.mp4"
    path.write_bytes(httpx.get(out["url"]).content)
    return status, probe(path), decode(path)


def assert_audio_covers(info: dict, frames: int) -> None:
    want = float(Fraction(frames, FPS))
    assert want - 0.002 <= info["audio_seconds"] <= want + AAC_FRAME_S + 0.002, (info, want)


# --- sync_mode ----------------------------------------------------------------------------------------------

AUDIO_FRAMES = 15  # 0.6 s at 25 fps


@pytest.mark.parametrize("mode", ["loop", "bounce", "remap", "published"])
def test_sync_mode_follows_the_audio_with_the_mode_s_frame_order(sstack, clips, tmp_path, mode):
    status, info, frames = run_ok(sstack, tmp_path, clips["numbered"], clips["tone"], sync_mode=mode)
    want = sync_order(N, AUDIO_FRAMES, mode).tolist()
    assert info["frames"] == AUDIO_FRAMES and [frame_number(f) for f in frames] == want, mode
    assert_audio_covers(info, AUDIO_FRAMES)
    metrics = status["metrics"]
    assert metrics["sync_mode"] == mode and metrics["frames"] == AUDIO_FRAMES and metrics["source_frames"] == N
    assert {"loop": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4],
            "bounce": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 8, 7, 6, 5, 4],
            "remap": [0, 1, 1, 2, 3, 3, 4, 5, 5, 6, 7, 7, 8, 9, 9],
            # MuseTalk's and LatentSync's published rule: the turning frame (9) twice
            "published": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 8, 7, 6, 5]}[mode] == want


def test_cut_off_and_silence_keep_the_video_s_length(sstack, clips, tmp_path):
    _, info, frames = run_ok(sstack, tmp_path, clips["numbered"], clips["tone"], sync_mode="cut_off")
    assert [frame_number(f) for f in frames] == list(range(N))  # the audio (15 frames) is cut to the video
    assert_audio_covers(info, N)
    status, info, frames = run_ok(sstack, tmp_path, clips["numbered"], clips["short"], sync_mode="silence")
    assert [frame_number(f) for f in frames] == list(range(N))
    assert_audio_covers(info, N)  # 0.2 s of audio padded with silence to the 0.4 s video
    assert status["metrics"]["audio_fit"] == "padded" and status["metrics"]["sync_mode"] == "silence"


def test_sync_mode_composes_with_edits(sstack, clips, tmp_path):
    """Edits make the clip (10 - 2 removed + 3 added = 11 frames), the mode lays it over the audio's 15."""
    status, info, frames = run_ok(sstack, tmp_path, clips["numbered"], clips["tone"], sync_mode="loop",
                                  edit_removal_ranges=[3, 4], edit_removal_bridge_durations=[0],
                                  edit_addition_start_frames=[8], edit_addition_durations=[3])
    assert info["frames"] == AUDIO_FRAMES and status["metrics"]["generated_frames"] == 3
    clip = [0, 1, 2, 5, 6, 7, None, None, None, 8, 9]
    got = [frame_number(f) for f in frames]
    for j, k in enumerate(sync_order(len(clip), AUDIO_FRAMES, "loop")):
        if clip[k] is not None:  # a generated frame shows its anchor's background, repainted around the mouth
            assert got[j] == clip[k], (j, got)


@pytest.mark.parametrize("mode", ["loop", "bounce", "remap"])
def test_sync_mode_on_a_still_image(sstack, clips, tmp_path, mode):
    status, info, frames = run_ok(sstack, tmp_path, clips["still"], clips["tone"], sync_mode=mode)
    assert info["frames"] == AUDIO_FRAMES and status["metrics"]["source_frames"] == 1
    assert all(frame_number(f) == 0 for f in frames)
    assert_audio_covers(info, AUDIO_FRAMES)


def test_audio_longer_than_max_num_frames_is_a_typed_error_on_sync_mode(sstack, clips):
    request_id = submit(sstack, clips["numbered"], clips["long"], sync_mode="loop")
    status = finished(sstack, request_id)
    assert status["error_type"] == "invalid_input", status
    body = httpx.get(f"{sstack.base_url}/pipio/lipsync/requests/{request_id}", headers=AUTH)
    assert body.status_code == 422 and body.json()["detail"][0]["loc"] == ["body", "sync_mode"], body.text


def test_new_fields_are_checked_at_submit(sstack, clips):
    url = f"{sstack.base_url}/pipio/lipsync"
    body = {"video": "https://example.com/v.mp4", "audio": "https://example.com/a.wav"}
    cases = [({"sync_mode": "stretch"}, "sync_mode"), ({"speaker": "loudest"}, "speaker"),
             ({"speaker": {"frame": 200, "x": 1, "y": 1}}, "speaker"),  # beyond num_frames (100)
             ({"speaker": {"frame": 0, "x": -3, "y": 1}}, "speaker"),
             ({"speaker": {"boxes": [{"frame": 0, "box": [50, 10, 40, 30]}]}}, "speaker")]
    for extra, field in cases:
        r = httpx.post(url, json={**body, **extra}, headers=AUTH)
        assert r.status_code == 422, (extra, r.text)
        assert [d["loc"] for d in r.json()["detail"]] == [["body", field]], (extra, r.text)
    r = httpx.post(url, json={**body, "sync_mode": "Published"}, headers=AUTH)  # the preset's value is lower case
    assert r.status_code == 422 and "'published'" in r.json()["detail"][0]["msg"], r.text


# --- speaker ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory):
    from lipsync.testing.two_speakers import make_two_speaker_clip

    d = tmp_path_factory.mktemp("two-speakers")
    clip = make_two_speaker_clip(d)
    speech = d / "dub.wav"
    subprocess.run(["espeak-ng", "-w", str(speech), "-s", "180", "Hello there, lip sync."], check=True,
                   capture_output=True)
    return clip, speech, decode(clip.video)


def head(frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    return frame[y0:y1, x0:x1].astype(np.int16)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def assert_only(chosen: list[str], source: list[np.ndarray], out: list[np.ndarray], boxes: dict) -> None:
    """In every frame j, the face ``chosen[j]`` is repainted around the mouth (random weights: visibly, dozens of
    pixels off by more than 40) and the other is untouched: the same as the source up to the output's lossy H.264
    encode (PSNR above 36 dB, 99.9 % of its pixels within 24 and no more than a handful past 40, where the
    encoder's own error peaks on the dark mouth's edges)."""
    assert len(out) == len(source) == len(chosen)
    for j, (src, got, who) in enumerate(zip(source, out, chosen)):
        other = "B" if who == "A" else "A"
        diff = np.abs(head(got, boxes[other]) - head(src, boxes[other])).max(axis=2)
        stats = (j, who, float(np.percentile(diff, 99.9)), int((diff > 40).sum()), psnr(head(got, boxes[other]), head(src, boxes[other])))
        assert stats[2] <= 24 and stats[3] <= 5 and stats[4] > 36, stats
        repainted = np.abs(head(got, boxes[who]) - head(src, boxes[who])).max(axis=2) > 40
        assert repainted.sum() >= 20, (j, who, int(repainted.sum()))


def track_of(metrics: dict, box: tuple[int, int, int, int]) -> int:
    """The candidate track whose median face box lies inside a head's square."""
    for t in metrics["speaker"]["tracks"]:
        x0, y0, x1, y1 = t["box"]
        if box[0] <= x0 and x1 <= box[2] and box[1] <= y0 and y1 <= box[3]:
            return t["id"]
    raise AssertionError(metrics["speaker"])


def test_auto_lip_syncs_whoever_speaks_in_the_source(sstack, two, tmp_path):
    clip, speech, source = two
    status, info, out = run_ok(sstack, tmp_path, clip.video, speech, speaker="auto")
    speaker = status["metrics"]["speaker"]
    a, b = track_of(status["metrics"], clip.boxes["A"]), track_of(status["metrics"], clip.boxes["B"])
    assert speaker["mode"] == "auto" and [s["track"] for s in speaker["segments"]] == [a, b], speaker
    first, second = speaker["segments"]
    assert first["frames"][0] == 0 and second["frames"][1] == clip.num_frames - 1
    assert abs(second["frames"][0] - clip.first_half) <= round(0.5 * FPS), speaker  # within one decision window
    assert first["scores"][str(a)] > 0.5 > first["scores"][str(b)] and second["scores"][str(b)] > 0.5 > second["scores"][str(a)]
    assert any(m.startswith("speaker auto: 2 face tracks") for m in (e["message"] for e in status["logs"]))
    chosen = ["A" if j < second["frames"][0] else "B" for j in range(clip.num_frames)]
    assert_only(chosen, source, out, clip.boxes)


def test_largest_and_a_point_on_the_smaller_face(sstack, two, tmp_path):
    clip, speech, source = two
    status, _, out = run_ok(sstack, tmp_path, clip.video, speech)  # no speaker field: the largest face, as ever
    assert "speaker" not in status["metrics"]
    assert_only(["A"] * clip.num_frames, source, out, clip.boxes)
    x0, y0, x1, y1 = clip.boxes["B"]
    status, _, out = run_ok(sstack, tmp_path, clip.video, speech,
                            speaker={"frame": 5, "x": (x0 + x1) / 2, "y": (y0 + y1) / 2})
    b = track_of(status["metrics"], clip.boxes["B"])
    assert [s["track"] for s in status["metrics"]["speaker"]["segments"]] == [b]
    assert_only(["B"] * clip.num_frames, source, out, clip.boxes)


def test_boxes_select_the_face_they_cover(sstack, two, tmp_path):
    clip, speech, source = two
    x0, y0, x1, y1 = clip.boxes["B"]
    keys = [{"frame": 0, "box": [x0 + 30, y0 + 25, x1 - 35, y1 - 40]},
            {"frame": clip.num_frames - 1, "box": [x0 + 30, y0 + 25, x1 - 35, y1 - 40]}]
    status, _, out = run_ok(sstack, tmp_path, clip.video, speech, speaker={"boxes": keys})
    assert status["metrics"]["speaker"]["mode"] == "boxes"
    assert_only(["B"] * clip.num_frames, source, out, clip.boxes)


def test_a_point_on_no_face_is_a_typed_error_naming_speaker(sstack, two):
    clip, speech, _ = two
    request_id = submit(sstack, clip.video, speech, speaker={"frame": 0, "x": 172, "y": 170})
    status = finished(sstack, request_id)
    assert status["error_type"] == "invalid_input", status
    body = httpx.get(f"{sstack.base_url}/pipio/lipsync/requests/{request_id}", headers=AUTH)
    detail = body.json()["detail"][0]
    assert body.status_code == 422 and detail["loc"] == ["body", "speaker"] and "on no face" in detail["msg"], body.text


@requires_js
def test_both_fields_through_the_official_js_client(sstack, two, clips, tmp_path):
    """@fal-ai/client uploads the files and sends the extension fields as they are."""
    clip, _, source = two
    x0, y0, x1, y1 = clip.boxes["B"]
    result = run_js(sstack, {"video": clip.video, "audio": clips["tone"]}, "request",
                    request={"speaker": {"frame": 0, "x": (x0 + x1) / 2, "y": (y0 + y1) / 2}, "sync_mode": "remap"})
    path = tmp_path / "js.mp4"
    path.write_bytes(httpx.get(result["data"]["video"]["url"]).content)
    order = sync_order(clip.num_frames, AUDIO_FRAMES, "remap")
    assert probe(path)["frames"] == AUDIO_FRAMES and order[-1] > 60  # the 70 frames squeezed into 15
    assert_only(["B"] * AUDIO_FRAMES, [source[k] for k in order], decode(path), clip.boxes)


def test_auto_with_one_face_is_the_default_path(sstack, clips, tmp_path):
    """One face: nothing to choose, nothing scored, and the very same output as a request without the field."""
    status, _, auto = run_ok(sstack, tmp_path, clips["numbered"], clips["tone"], speaker="auto")
    speaker = status["metrics"]["speaker"]
    assert speaker["note"] == "one face: nothing to choose" and [s["frames"] for s in speaker["segments"]] == [[0, N - 1]]
    _, _, plain = run_ok(sstack, tmp_path, clips["numbered"], clips["tone"])
    assert all(np.array_equal(a, b) for a, b in zip(auto, plain)) and len(auto) == len(plain) == N
