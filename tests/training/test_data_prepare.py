"""``lipsync data prepare`` on real clips made here: astronaut faces with espeak-ng speech in two identity
folders, one clip without a face (scikit-image's coffee), one truncated file; killed mid-way and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from tests.media.media_testkit import face_frame, need_tool, write_raw_video
from lipsync.testing.media import make_speech
from lipsync.training.shards import from_wds, list_shards, read_shard

FRAMES, FPS = 20, 25


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_tool("espeak-ng")
    root = tmp_path_factory.mktemp("clips")
    speech = make_speech(root / "speech.wav", "Lip sync training data.")
    faces = np.stack([face_frame(i) for i in range(FRAMES)])
    for person, shift in (("alice", 0), ("bob", 6)):
        (root / person).mkdir()
        for k in range(2):
            frames = np.roll(faces, shift + 3 * k, axis=2)
            write_raw_video(root / person / f"take{k}.mp4", frames, FPS, "-c:v", "libx264", "-pix_fmt", "yuv420p",
                            "-c:a", "aac", "-shortest", audio=speech)
    coffee = cv2.resize(skimage.data.coffee(), (faces.shape[2], faces.shape[1]))
    (root / "other").mkdir()
    write_raw_video(root / "other" / "noface.mp4", np.stack([coffee] * FRAMES), FPS, "-c:v", "libx264",
                    "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", audio=speech)
    whole = (root / "alice" / "take0.mp4").read_bytes()
    (root / "other" / "truncated.mp4").write_bytes(whole[: len(whole) // 3])
    return root


def _prepare_cmd(src: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "lipsync.cli", "data", "prepare", str(src), str(out), "--size", "64",
            "--clips-per-shard", "1", "--val-fraction", "0.5", "--identity", "parent", "--workers", "1",
            "--no-progress"]


def test_prepare_writes_shards_skips_bad_clips_and_resumes_after_a_kill(clip_folder, tmp_path):
    out = tmp_path / "shards"
    # 1. killed as soon as the first shard is whole
    proc = subprocess.Popen(_prepare_cmd(clip_folder, out), start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while not list(out.glob("*/shard-*.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = {p: p.stat().st_mtime_ns for p in out.glob("*/shard-*.tar")}
    reports = list(out.glob("*/shard-*.json"))
    assert reports, "no shard was finished before the kill"
    assert not (out / "summary.json").exists() and len(reports) < 6  # it really was stopped mid-way

    # 2. resumed: finished shards are not redone, the rest are written, bad clips reported
    done = subprocess.run(_prepare_cmd(clip_folder, out), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert {p: p.stat().st_mtime_ns for p in first} == first
    summary = json.loads((out / "summary.json").read_text())
    assert summary["shards_already_done"] >= len(reports)
    assert summary["clips"] == 4 and summary["frames"] == 4 * FRAMES
    skipped = {Path(s["file"]).name: s["reason"] for s in summary["skipped"]}
    assert set(skipped) == {"noface.mp4", "truncated.mp4"}
    assert "no usable face" in skipped["noface.mp4"]
    assert "Truncated" in skipped["truncated.mp4"] or "truncated" in skipped["truncated.mp4"]
    assert "skipped 2 clips" in done.stdout and "noface.mp4" in done.stdout

    # 3. the split is by identity (folder): nobody on both sides
    plan = json.loads((out / "plan.json").read_text())
    sides = {split: {Path(c).parent.name for shard in shards for c in shard} for split, shards in plan["shards"].items()}
    assert not (sides["train"] & sides["val"]) and sides["train"] | sides["val"] == {"alice", "bob", "other"}

    # 4. the samples: crops, masks, landmarks, audio and face-ID at the working size
    records = [r for split in ("train", "val") for shard in list_shards(out, split) for r in read_shard(shard)]
    assert len(records) == 4
    sample = from_wds(records[0])
    assert sample.crops.shape == (FRAMES, 64, 64, 3) and sample.crops.dtype == np.uint8
    assert sample.mouth.shape == (FRAMES, 64, 64) and sample.mouth.max() == 255
    assert sample.present.all() and np.isfinite(sample.landmarks).all()
    assert sample.audio.dtype == np.float32 and abs(len(sample.audio) - 16000 * FRAMES / FPS) <= 1
    assert sample.faceid.shape == (128,) and abs(np.linalg.norm(sample.faceid) - 1) < 1e-4
    assert sample.meta["fps"] == FPS and sample.meta["identity"].endswith(("alice", "bob"))
    # the mouth mask sits in the lower half of the crop, between the mouth landmarks
    rows = np.flatnonzero(sample.mouth[0].max(axis=1) > 0)
    assert rows.min() > 64 * 0.5 and sample.landmarks[0, 48:68, 1].mean() == pytest.approx(rows.mean(), abs=4)
