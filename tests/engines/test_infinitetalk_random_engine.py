"""InfiniteTalk's random engine built on the device (``random_weights.random_engine``: what ``scripts/gpu_check.py``
runs at the published size on a GPU, no files): here the small config on the emulated CUDA device, in bf16, one
chunk through ``generate`` with every tensor where a GPU run puts it; 4 steps without guidance are one transformer
call a step; the logs say random weights."""

from __future__ import annotations

import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lipsync.model.engine import CropBatch, EngineOptions, EngineRequest, Knobs  # noqa: E402
from lipsync.model.infinitetalk import crop_rule  # noqa: E402
from lipsync.model.infinitetalk.config import SMALL  # noqa: E402
from lipsync.model.infinitetalk.random_weights import random_engine  # noqa: E402
from lipsync.testing.emulated_gpu import emulated_cuda  # noqa: E402


def test_random_engine_on_the_emulated_gpu_one_pass_a_step(caplog):
    n = 5
    t = np.arange(int(n / 25 * 16000)) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    logs: list[str] = []
    with caplog.at_level(logging.WARNING), emulated_cuda():
        engine = random_engine(EngineOptions(device="cuda", dtype="bf16"), SMALL)
        sampler = engine.sampler
        assert {p.device.type for p in sampler.transformer.parameters()} == {"cuda"}
        assert {p.dtype for p in sampler.transformer.parameters()} == {torch.bfloat16}
        assert {p.dtype for p in sampler.vae.parameters()} == {torch.float32}  # fp32, as the authors
        assert {p.dtype for p in sampler.clip.parameters()} == {torch.bfloat16}
        calls = []
        forward = sampler.transformer.forward
        sampler.transformer.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
        h, w = crop_rule.size(1080, 1920, engine.table)
        crops = np.random.default_rng(0).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
        request = EngineRequest(audio=audio, fps=25.0, num_frames=n, generate=np.zeros(n, bool), is_image=False,
                                knobs=Knobs(frame_block_width=n), log=logs.append, progress=lambda *a: None)
        out = list(engine.generate(request, [CropBatch(0, crops, np.ones(n, bool), np.zeros((n, 68, 2), np.float32))]))
    assert sum(len(o) for o in out) == n and out[0].shape[1:] == (h, w, 3)
    assert len(calls) == 4  # 4 steps, text and audio scales 1: the conditional prediction alone
    assert engine.info.weights == "random:custom" and engine.info.random_weights_warning
    assert "random weights" in caplog.text
    assert any("4 steps" in line and "text guidance 1, audio guidance 1" in line for line in logs)


def test_encoder_outputs_through_a_cache_give_the_same_frames_over_two_chunks():
    """``encoder_cache_key``: what each chunk computes from its reference frame alone goes through
    ``request.encoded`` (CLIP tokens, the condition latent; the first chunk's motion latent), never the later
    chunks' motion latents (generated frames); filled then reused, the frames are the uncached ones bit for bit."""
    n = 13  # two 9-frame chunks (5 motion frames), one step: the cost is Python ops, not widths
    t = np.arange(int(n / 25 * 16000)) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    engine = random_engine(EngineOptions(device="cpu", dtype="fp32"), SMALL, steps=1)
    h, w = crop_rule.size(1080, 1920, engine.table)
    crops = np.random.default_rng(1).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    assert engine.encoder_cache_key(None) == {"encoder": "infinitetalk-clip-vae", "dtype": "fp32", "table": "tiny"}

    def run(encoded=None) -> np.ndarray:
        request = EngineRequest(audio=audio, fps=25.0, num_frames=n, generate=np.zeros(n, bool), is_image=False,
                                knobs=Knobs(frame_block_width=9, vae_overlap_window_width=5), log=lambda m: None, progress=lambda *a: None, encoded=encoded)
        batches = [CropBatch(s, crops[s:s + 8], np.ones(len(crops[s:s + 8]), bool),
                             np.zeros((len(crops[s:s + 8]), 68, 2), np.float32)) for s in range(0, n, 8)]
        return np.concatenate(list(engine.generate(request, batches)))

    plain = run()
    kept: dict[str, np.ndarray] = {}
    computed: list[str] = []

    def fill(name, compute):
        computed.append(name)
        value = compute()
        kept[name] = value.detach().float().numpy().copy()
        return value

    assert np.array_equal(run(fill), plain)
    assert sorted(kept) == ["chunk/0/9/clip", "chunk/0/9/condition", "chunk/0/9/motion",
                            "chunk/4/9/clip", "chunk/4/9/condition"]
    reused: list[str] = []

    def reuse(name, compute):
        reused.append(name)
        return kept[name].copy()

    assert np.array_equal(run(reuse), plain) and sorted(reused) == sorted(kept)
