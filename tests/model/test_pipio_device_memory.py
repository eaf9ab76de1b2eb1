"""pipio on a GPU's terms, checked on the emulated device (``lipsync.testing.emulated_gpu``): the random-weights
``base`` model is built in its dtype with no fp32 transient, and T5 keeps ``wo`` in fp32 under fp16 (T5-XXL's
feed-forward output overflows fp16, as transformers' own loading knows)."""

from __future__ import annotations

import torch

from lipsync.model.pipio.pipeline import LipSyncPipeline
from lipsync.testing.emulated_gpu import emulated_cuda


def _wo(pipe: LipSyncPipeline) -> torch.Tensor:
    return pipe.text_encoder.encoder.block[0].layer[1].DenseReluDense.wo.weight


def test_random_base_is_built_in_its_dtype_without_an_fp32_transient():
    with emulated_cuda() as ledger, torch.no_grad():
        pipe = LipSyncPipeline.from_config("base", device="cuda", dtype=torch.bfloat16)
        held = ledger.live_bytes
    assert pipe.transformer.dtype == torch.bfloat16 and pipe.text_encoder.dtype == torch.bfloat16
    assert 15 << 30 < held < 18 << 30  # ~16.6 GiB of bf16 weights
    assert ledger.peak_bytes < 1.05 * held  # was ~26 GiB: T5-XXL was built in fp32 first


def test_t5_keeps_wo_in_fp32_under_fp16(tmp_path):
    built = LipSyncPipeline.from_config("tiny", dtype=torch.float16)
    assert _wo(built).dtype == torch.float32 and built.text_encoder.shared.weight.dtype == torch.float16
    LipSyncPipeline.from_config("tiny").save_pretrained(tmp_path / "tiny")
    loaded = LipSyncPipeline.from_pretrained(tmp_path / "tiny", dtype=torch.float16)
    assert _wo(loaded).dtype == torch.float32
    hidden, _ = loaded.prompt_embedding("a talking head")
    assert hidden.dtype == torch.float16 and torch.isfinite(hidden).all()
    assert _wo(LipSyncPipeline.from_pretrained(tmp_path / "tiny", dtype=torch.bfloat16)).dtype == torch.bfloat16
