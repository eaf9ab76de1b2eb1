"""Settings are the one place the environment is read: typed device, dtype and engine, a bad value stopping
the process at start with the allowed values, and one map from dtype names to torch dtypes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from pydantic import ValidationError

from lipsync.contract.settings import DType, Settings
from lipsync.model.devices import resolve_dtype, torch_dtype
from lipsync.model.weights import ENGINES
from lipsync.testing.emulated_gpu import emulated_cuda


@pytest.mark.parametrize("command", [["worker"], ["api"], ["serve", "--port", "1"]])
def test_a_bad_value_stops_the_process_at_start_naming_the_allowed_values(tmp_path, command):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIPSYNC_")}
    env.update(LIPSYNC_DTYPE="fp8", LIPSYNC_ENGINE="wav2lip", LIPSYNC_DEVICE="gpu0")
    done = subprocess.run([sys.executable, "-m", "lipsync", *command], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "LIPSYNC_DTYPE='fp8': Input should be 'auto', 'bf16', 'fp16' or 'fp32'" in done.stderr
    assert "LIPSYNC_ENGINE='wav2lip': Input should be 'pipio', 'musetalk', 'latentsync' or 'infinitetalk'" in done.stderr
    assert "LIPSYNC_DEVICE='gpu0'" in done.stderr
    assert "Traceback" not in done.stderr


def test_typed_fields_and_their_aliases(monkeypatch):
    monkeypatch.setenv("LIPSYNC_DTYPE", "bfloat16")
    monkeypatch.setenv("LIPSYNC_DEVICE", "cuda:1")
    monkeypatch.setenv("LIPSYNC_STAGE_THREADS", "0")
    monkeypatch.setenv("LIPSYNC_NVENC", "false")
    monkeypatch.setenv("LIPSYNC_INSIGHTFACE_ROOT", "/opt/insightface")
    settings = Settings()
    assert settings.dtype is DType.BF16 and f"{settings.dtype}" == "bf16"
    assert settings.device == "cuda:1"
    assert settings.stage_threads is False and settings.nvenc is False
    assert str(settings.insightface_root) == "/opt/insightface"
    assert ENGINES == ("pipio", "musetalk", "latentsync", "infinitetalk")  # the settings' Literal, in this order
    with pytest.raises(ValidationError, match="text_encoder"):
        Settings(text_encoder="gpu")


def test_one_dtype_map():
    assert torch_dtype("bf16") is torch.bfloat16 and torch_dtype(DType.FP16) is torch.float16
    assert torch_dtype("float32") is torch.float32
    assert resolve_dtype("auto", "cpu") == "fp32" and resolve_dtype("half", "cuda") == "fp16"
    with emulated_cuda(capability=(9, 0)):  # an H100: each engine's preference
        assert resolve_dtype("auto", "cuda:0") == "bf16" and resolve_dtype("auto", "cuda", prefer="fp16") == "fp16"
    with emulated_cuda(capability=(7, 5)):  # a T4: no bf16
        assert resolve_dtype("auto", "cuda") == "fp16" and resolve_dtype("bf16", "cuda") == "bf16"
    with pytest.raises(ValueError):
        torch_dtype("fp8")
