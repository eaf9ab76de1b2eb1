"""Every input rule of reference/input-schema.md, sent through HTTP: a 422 that names the field, and
nothing queued."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import ALICE

OK_VIDEO = "https://example.com/face.mp4"
OK_AUDIO = "https://example.com/speech.wav"
LONG = "x" * 2001

CASES = [
    # (case id, fields to send on top of a valid body, field the 422 must name)
    ("video-missing", {"video": None}, "video"),
    ("video-ftp", {"video": "ftp://example.com/a.mp4"}, "video"),
    ("video-file-path", {"video": "/etc/passwd"}, "video"),
    ("video-object-no-url", {"video": {"file_name": "a.mp4"}}, "video"),
    ("video-internal-scheme", {"video": "storage://results/x/output.mp4"}, "video"),
    ("video-bad-data-uri", {"video": "data:video/mp4;base64,@@not-base64@@"}, "video"),
    ("video-empty-data-uri", {"video": "data:video/mp4;base64,"}, "video"),
    ("audio-missing", {"audio": None}, "audio"),
    ("audio-bad-scheme", {"audio": {"url": "file:///tmp/a.wav"}}, "audio"),
    ("prompt-too-long", {"custom_prompt": LONG}, "custom_prompt"),
    ("frame-rate-zero", {"frame_rate": 0}, "frame_rate"),
    ("frame-rate-negative", {"frame_rate": -2}, "frame_rate"),
    ("frame-rate-too-high", {"frame_rate": 121}, "frame_rate"),
    ("height-zero", {"height": 0}, "height"),
    ("height-huge", {"height": 9000}, "height"),
    ("width-zero", {"width": 0}, "width"),
    ("num-frames-zero", {"num_frames": 0}, "num_frames"),
    ("num-frames-over-max", {"num_frames": 10_001}, "num_frames"),
    ("num-frames-not-int", {"num_frames": "ten"}, "num_frames"),
    ("vae-chunk-not-8n1", {"vae_chunk_size": 10}, "vae_chunk_size"),
    ("vae-chunk-one", {"vae_chunk_size": 1}, "vae_chunk_size"),
    ("vae-overlap-negative", {"vae_overlap_window_width": -1}, "vae_overlap_window_width"),
    ("vae-overlap-not-below-chunk", {"vae_chunk_size": 17, "vae_overlap_window_width": 17}, "vae_overlap_window_width"),
    ("frame-block-zero", {"frame_block_width": 0}, "frame_block_width"),
    ("ff-splits-zero", {"feed_forward_num_splits": 0}, "feed_forward_num_splits"),
    ("face-id-below", {"face_id_cond_strength": -2}, "face_id_cond_strength"),
    ("face-id-above", {"face_id_cond_strength": 17}, "face_id_cond_strength"),
    ("appearance-zero", {"appearance_cond_strength": 0}, "appearance_cond_strength"),
    ("appearance-above", {"appearance_cond_strength": 17}, "appearance_cond_strength"),
    ("addition-negative-start", {"edit_addition_start_frames": [-1], "edit_addition_durations": [3]}, "edit_addition_start_frames"),
    ("addition-start-past-input", {"edit_addition_start_frames": [100], "edit_addition_durations": [3]}, "edit_addition_start_frames"),
    ("addition-zero-duration", {"edit_addition_start_frames": [3], "edit_addition_durations": [0]}, "edit_addition_durations"),
    ("addition-length-mismatch", {"edit_addition_start_frames": [3, 9], "edit_addition_durations": [2]}, "edit_addition_durations"),
    ("removal-odd-length", {"edit_removal_ranges": [1, 3, 5], "edit_removal_bridge_durations": [0]}, "edit_removal_ranges"),
    ("removal-end-before-start", {"edit_removal_ranges": [5, 3], "edit_removal_bridge_durations": [0]}, "edit_removal_ranges"),
    ("removal-overlap", {"edit_removal_ranges": [1, 4, 4, 6], "edit_removal_bridge_durations": [0, 0]}, "edit_removal_ranges"),
    ("removal-unsorted", {"edit_removal_ranges": [6, 8, 1, 2], "edit_removal_bridge_durations": [0, 0]}, "edit_removal_ranges"),
    ("removal-past-input", {"edit_removal_ranges": [10, 100], "edit_removal_bridge_durations": [0]}, "edit_removal_ranges"),
    ("removal-bridge-mismatch", {"edit_removal_ranges": [1, 3], "edit_removal_bridge_durations": []}, "edit_removal_bridge_durations"),
    ("removal-negative-bridge", {"edit_removal_ranges": [1, 3], "edit_removal_bridge_durations": [-1]}, "edit_removal_bridge_durations"),
    ("seed-over-int64", {"seed": 2**63}, "seed"),
    ("seed-not-int", {"seed": "abc"}, "seed"),
]


def _queued(stack) -> tuple[int, int]:
    r = stack.redis
    return r.llen("rq:queue:lipsync"), r.zcard("lipsync:queued")


def _submit(stack, body, **params) -> httpx.Response:
    return httpx.post(f"{stack.base_url}/pipio/lipsync", json=body, params=params, headers={"Authorization": f"Key {ALICE}"})


@pytest.mark.parametrize("fields,field", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_value_is_422_naming_the_field(stack, fields, field):
    body = {"video": OK_VIDEO, "audio": OK_AUDIO} | fields
    body = {k: v for k, v in body.items() if v is not None}
    before = _queued(stack)
    response = _submit(stack, body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail
    assert ["body", field] in [d["loc"][:2] for d in detail], detail
    assert all(d["msg"] and d["type"] for d in detail)
    assert _queued(stack) == before


def test_defaults_and_edge_values_are_accepted(stack):
    body = {
        "video": {"url": OK_VIDEO, "content_type": "video/mp4", "file_name": "a.mp4", "file_size": 10},
        "audio": OK_AUDIO,
        "height": -3, "width": 640, "frame_rate": 120, "vae_chunk_size": 9, "vae_overlap_window_width": 0,
        "face_id_cond_strength": 16, "appearance_cond_strength": 16, "seed": -(2**63),
        "edit_addition_start_frames": [0, 97], "edit_addition_durations": [1, 5],
        "edit_removal_ranges": [2, 2, 98, 99], "edit_removal_bridge_durations": [0, 3],
    }
    response = _submit(stack, body)
    assert response.status_code == 200, response.text
    httpx.put(response.json()["cancel_url"], headers={"Authorization": f"Key {ALICE}"})


def test_body_not_json(stack):
    response = httpx.post(
        f"{stack.base_url}/pipio/lipsync", content=b"{not json", headers={"Authorization": f"Key {ALICE}"}
    )
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body"]


def test_body_not_an_object(stack):
    response = _submit(stack, [1, 2, 3])
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body"]


def test_bad_webhook_url(stack):
    response = _submit(stack, {"video": OK_VIDEO, "audio": OK_AUDIO}, fal_webhook="ftp://example.com/hook")
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", "fal_webhook"]


def test_tampered_upload_url(stack, media):
    auth = {"Authorization": f"Key {ALICE}"}
    init = httpx.post(f"{stack.base_url}/storage/upload/initiate", json={"file_name": "a.mp4"}, headers=auth).json()
    assert httpx.put(init["upload_url"], content=media["video"].read_bytes()).status_code == 200
    expires, signature, key = init["file_url"].split("/files/", 1)[1].split("/", 2)
    tampered = init["file_url"].replace(signature, signature[::-1])
    response = _submit(stack, {"video": tampered, "audio": OK_AUDIO})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "video"]


def test_unknown_app_is_404(stack):
    response = httpx.post(f"{stack.base_url}/someone/else", json={}, headers={"Authorization": f"Key {ALICE}"})
    assert response.status_code == 404 and response.json()["error_type"] == "not_found"


def test_unknown_endpoint_of_a_known_app_is_404(stack):
    response = httpx.post(f"{stack.base_url}/pipio/lipsync/extra", json={}, headers={"Authorization": f"Key {ALICE}"})
    assert response.status_code == 404 and response.json()["error_type"] == "not_found"
