"""Weights folders: detection (pipio, MuseTalk 1.5 and 1.0), start-up errors that name the missing file or the
wrong key, and ``lipsync weights check`` / ``fetch`` on the real CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lipsync.contract.settings import Settings
from lipsync.model.loading import WeightsLoadError
from lipsync.model.weights import WeightsFolderError, detect
from lipsync.model.musetalk.random_weights import write_random_weights

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pipio_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pipio") / "weights"
    subprocess.run([sys.executable, "scripts/write_random_weights.py", "--config", "tiny", "--out", str(out)],
                   check=True, capture_output=True, cwd=ROOT)
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _start_worker_pipeline(weights: Path, **settings):
    from lipsync.worker.orchestration import load_lipsync_pipeline

    return load_lipsync_pipeline(Settings(weights_dir=weights, device="cpu", dtype="fp32", **settings))


def test_each_folder_is_detected(pipio_dir, musetalk_dir, tmp_path):
    assert detect(pipio_dir).layout.variant == "pipio"
    check = detect(musetalk_dir)
    assert check.layout.variant == "musetalk-1.5" and check.ok
    assert [f.path for f in check.missing] == ["face-parse-bisent/79999_iter.pth",
                                               "face-parse-bisent/resnet18-5c106cde.pth"]  # optional
    v10 = write_random_weights(tmp_path / "v10", version="1.0")
    assert detect(v10).layout.variant == "musetalk-1.0"
    loaded = _start_worker_pipeline(musetalk_dir)
    assert loaded.info.name == "musetalk-1.5" and loaded.info.random_weights_warning is None
    assert loaded.info.crop_size == 256 and not loaded.info.needs_identity


def test_a_missing_file_is_a_startup_error_naming_it(musetalk_dir, tmp_path):
    broken = _copy(musetalk_dir, tmp_path / "broken")
    (broken / "whisper" / "preprocessor_config.json").unlink()
    with pytest.raises(WeightsFolderError, match=r"musetalk-1\.5 but is missing 1 file\(s\): "
                                                 r"whisper/preprocessor_config\.json \(from openai/whisper-tiny/"):
        _start_worker_pipeline(broken)


def test_a_wrong_key_is_a_startup_error_naming_it(musetalk_dir, tmp_path):
    broken = _copy(musetalk_dir, tmp_path / "broken")
    path = broken / "musetalkV15" / "unet.pth"
    state = torch.load(path, weights_only=True)
    state["conv_in.weights"] = state.pop("conv_in.weight")  # a renamed key
    state["conv_out.bias"] = torch.zeros(5)  # a mis-shaped one
    torch.save(state, path)
    with pytest.raises(WeightsLoadError) as err:
        _start_worker_pipeline(broken)
    text = str(err.value)
    assert "MuseTalk UNet" in text and str(path) in text
    assert "missing key(s): conv_in.weight" in text and "unexpected key(s): conv_in.weights" in text
    assert "conv_out.bias (checkpoint (5,), model (4,))" in text
    # the VAE and whisper are strict too
    vae = broken / "sd-vae" / "diffusion_pytorch_model.bin"
    torch.save(torch.load(musetalk_dir / "musetalkV15" / "unet.pth", weights_only=True), path)
    state = torch.load(vae, weights_only=True)
    del state["decoder.conv_out.bias"]
    torch.save(state, vae)
    with pytest.raises(WeightsLoadError, match=r"(?s)VAE \(sd-vae\).*missing key\(s\): decoder\.conv_out\.bias"):
        _start_worker_pipeline(broken)


def test_a_pickle_with_code_is_refused(musetalk_dir, tmp_path):
    broken = _copy(musetalk_dir, tmp_path / "broken")
    torch.save({"state_dict": torch.load(broken / "musetalkV15/unet.pth", weights_only=True), "note": object()},
               broken / "musetalkV15/unet.pth")
    with pytest.raises(Exception, match="weights_only|Unsupported|object"):  # torch.load(weights_only=True)
        _start_worker_pipeline(broken)


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lipsync", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_weights_check_on_each_folder(pipio_dir, musetalk_dir, tmp_path):
    out = _cli("weights", "check", str(musetalk_dir))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"engine: musetalk-1.5 (musetalk) in {musetalk_dir}"
    size = (musetalk_dir / "musetalkV15" / "unet.pth").stat().st_size
    assert any(line.split()[:2] == ["ok", "musetalkV15/unet.pth"] and f"{size:,} bytes" in line for line in lines)
    assert any(line.split()[:2] == ["optional", "face-parse-bisent/79999_iter.pth"] for line in lines)
    assert lines[-1] == "ok"
    out = _cli("weights", "check", str(pipio_dir))
    assert out.returncode == 0 and out.stdout.startswith("engine: pipio (pipio)"), out
    broken = _copy(musetalk_dir, tmp_path / "broken")
    (broken / "sd-vae" / "diffusion_pytorch_model.bin").unlink()
    out = _cli("weights", "check", str(broken))
    assert out.returncode == 1
    assert any(line.split()[:2] == ["MISSING", "sd-vae/diffusion_pytorch_model.bin"]
               and "stabilityai/sd-vae-ft-mse/diffusion_pytorch_model.bin" in line for line in out.stdout.splitlines())
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    out = _cli("weights", "check", str(tmp_path / "other"))
    assert out.returncode == 2 and "holds no engine's weights" in out.stderr and "musetalkV15/unet.pth" in out.stderr


def test_weights_fetch_without_internet_is_a_clear_error(tmp_path):
    out = _cli("weights", "fetch", "musetalk", str(tmp_path / "w"),
               env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert out.returncode == 2
    assert "could not reach the Hugging Face Hub to download TMElyralab/MuseTalk/musetalkV15/musetalk.json" in out.stderr
    assert "Traceback" not in out.stderr
