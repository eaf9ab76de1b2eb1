"""``accelerate launch`` of ``lipsync train`` with two CPU processes (gloo, DDP) on the tiny config: steps,
checkpoints, an exact resume (the loss trajectory of an interrupted + resumed run equals the uninterrupted
one), TensorBoard logs and a validation render; the checkpoint then serves through the real stack (redis, API,
worker with ``LIPSYNC_WEIGHTS_DIR``) and the official Python client."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import fal_client
import httpx
import numpy as np
import pytest

from lipsync.client import point_fal_client
from tests.conftest import ALICE
from lipsync.testing.media import make_face_video, make_speech, probe
from lipsync.testing.stack import make_stack, wait_until

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def synthetic_module():
    spec = importlib.util.spec_from_file_location("train_synthetic", ROOT / "scripts" / "train_synthetic.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_synthetic"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ts = synthetic_module()
    root = tmp_path_factory.mktemp("train-data")
    clips, _ = ts.make_clips(5, 0, root)
    ts.write_shards(clips[:2], root / "data" / "train" / "a")
    ts.write_shards(clips[2:4], root / "data" / "train" / "b")
    for part in ("a", "b"):  # two train shards: one per process
        (root / "data" / "train" / part / "shard-000000.tar").rename(root / "data" / "train" / f"shard-{part}.tar")
    ts.write_shards(clips[4:], root / "data" / "val")
    return root / "data"


def launch(config: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lipsync.cli", "train",
           str(config), "--output-dir", str(out), *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done


def losses(out: Path) -> list[tuple[int, float, float]]:
    return [(r["step"], r["loss"], r["lr"]) for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())]


def test_two_process_training_resumes_exactly_and_its_checkpoint_serves(shards, tmp_path):
    config = tmp_path / "train.json"
    config.write_text(json.dumps({
        "data": str(shards), "output_dir": "unused", "init": {"model": "tiny"}, "max_steps": 4,
        "optim": {"lr": 1e-3, "warmup_steps": 1, "lr_scheduler": "cosine"},
        "objective": {"frame_block_width": 16, "vae_chunk_size": 17, "vae_overlap_window_width": 8},
        "ema": {"enabled": True, "decay": 0.9}, "checkpoint_every": 2, "keep_checkpoints": 2,
        "validation": {"every": 4, "clips": 1, "render_frames": 17, "num_inference_steps": 1}}))
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    first = launch(config, whole)
    assert "2 processes (DistributedType.MULTI_CPU)" in first.stderr
    launch(config, parts, "--stop-at", "2")
    assert [s for s, _, _ in losses(parts)] == [1, 2]
    resumed = launch(config, parts, "--resume", "latest")
    assert "resumed from" in resumed.stderr and "at step 2" in resumed.stderr

    # the same trajectory: losses and learning rates of steps 1..4, bit for bit
    assert losses(parts) == losses(whole) and len(losses(whole)) == 4
    assert losses(whole)[-1][2] == pytest.approx(0.0, abs=1e-12)  # the cosine schedule reached its end
    assert list((whole / "logs").rglob("events.out.tfevents.*"))  # TensorBoard
    assert (whole / "validation" / "step-00000004.mp4").stat().st_size > 0
    checkpoint = parts / "checkpoints" / "step-00000004"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state == {"step": 4, "samples_per_process": 4, "processes": 2}
    pipeline = checkpoint / "pipeline"
    for name in ("model_index.json", "pipeline_config.json", "tokenizer/tokenizer_config.json",
                 "transformer/diffusion_pytorch_model.safetensors", "vae/config.json", "scheduler/scheduler_config.json"):
        assert (pipeline / name).is_file(), name

    # the checkpoint serves: worker with LIPSYNC_WEIGHTS_DIR, official client
    video = make_face_video(tmp_path / "face.mp4", frames=17, size=(160, 128))
    speech = make_speech(tmp_path / "speech.wav", "Trained checkpoint.")
    stack = make_stack(tmp_path / "stack", pipeline="lipsync", weights_dir=str(pipeline), num_inference_steps="2",
                       face_crop_size="64")
    try:
        stack.start_api()
        stack.start_worker("trained-w1")
        point_fal_client(stack.base_url)
        client = fal_client.SyncClient(key=ALICE)
        handle = client.submit("pipio/lipsync", {"video": client.upload_file(video),
                                                 "audio": client.upload_file(speech)})
        auth = {"Authorization": f"Key {ALICE}"}

        def done():
            status = httpx.get(handle.status_url, params={"logs": 1}, headers=auth).json()
            return status if status["status"] == "COMPLETED" else None

        status = wait_until(done, 120, "the request to finish", interval=0.3)
        assert status.get("error") is None, (status, stack.logs())
        metrics = status["metrics"]
        assert metrics["engine"] == "pipio" and metrics["model"] == "pipeline" and metrics["random_weights"] is False
        assert not any("NOT A TRAINED MODEL" in e["message"] for e in status["logs"])
        out = client.result("pipio/lipsync", handle.request_id)["video"]
        path = tmp_path / "out.mp4"
        path.write_bytes(httpx.get(out["url"]).content)
        assert probe(path)["frames"] == 17
    finally:
        stack.stop()
    assert np.isfinite([loss for _, loss, _ in losses(whole)]).all()
