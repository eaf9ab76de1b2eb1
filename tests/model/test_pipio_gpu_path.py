"""The pipio model's serving path: loading straight into the target dtype, the cached prompt embedding."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lipsync.model.pipio.config import load_config
from lipsync.model.pipio.pipeline import LipSyncPipeline, ModelInputError

ROOT = Path(__file__).resolve().parents[2]

# Runs in a fresh process: the peak resident set of the load alone (/proc's high-water mark reset first).
MEASURE_LOAD = """
import json, sys, torch
from lipsync.model.pipio.pipeline import LipSyncPipeline

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

LipSyncPipeline.from_pretrained(sys.argv[2], dtype=torch.bfloat16)  # imports and first-use caches, not measured
open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
before = status("VmRSS:")
pipe = LipSyncPipeline.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
modules = (pipe.transformer, pipe.vae, pipe.audio_encoder, pipe.text_encoder)
print(json.dumps({"peak_delta": status("VmHWM:") - before,
                  "bytes": sum(p.numel() * p.element_size() for m in modules for p in m.parameters()),
                  "dtypes": sorted({str(p.dtype) for m in modules for p in m.parameters()})}))
"""


def test_bf16_load_on_cpu_never_holds_an_fp32_copy(tmp_path):
    # the tiny preset with a transformer of ~60 M parameters (~120 MB in bf16), so the load dominates the RSS
    config = load_config("tiny")
    config = dataclasses.replace(config, transformer={**config.transformer, "num_attention_heads": 8,
                                                      "attention_head_dim": 64, "num_layers": 12})
    folder = tmp_path / "weights"
    LipSyncPipeline.from_config(config, init_seed=0, dtype=torch.bfloat16).save_pretrained(folder)
    LipSyncPipeline.from_config("tiny", init_seed=0, dtype=torch.bfloat16).save_pretrained(tmp_path / "tiny")
    out = subprocess.run([sys.executable, "-c", MEASURE_LOAD, str(folder), str(tmp_path / "tiny")], cwd=ROOT,
                         check=True, capture_output=True, text=True).stdout
    got = json.loads(out.strip().splitlines()[-1])
    assert got["dtypes"] == ["torch.bfloat16"]
    assert got["bytes"] > 80e6
    # an fp32 materialisation first (the old path) would peak at >= 2x, plus the state dict: >= 3x
    assert got["peak_delta"] <= 1.2 * got["bytes"], got


def test_loaded_weights_equal_the_saved_ones_in_the_target_dtype(tmp_path):
    pipe = LipSyncPipeline.from_config("tiny", init_seed=3)
    pipe.save_pretrained(tmp_path / "w")
    loaded = LipSyncPipeline.from_pretrained(tmp_path / "w", dtype=torch.bfloat16)
    for ours, theirs in ((pipe.transformer, loaded.transformer), (pipe.text_encoder, loaded.text_encoder)):
        mine, got = ours.state_dict(), theirs.state_dict()
        assert mine.keys() == got.keys()
        for key in mine:
            assert got[key].dtype == torch.bfloat16
            assert torch.equal(got[key], mine[key].to(torch.bfloat16)), key


@pytest.fixture()
def counted_pipe():
    """A tiny pipeline whose real T5 counts its forward passes."""
    pipe = LipSyncPipeline.from_config("tiny", init_seed=0)
    calls = []
    pipe.text_encoder.register_forward_hook(lambda module, args, output: calls.append(1))
    return pipe, calls


def test_second_request_with_the_same_prompt_does_not_run_t5(counted_pipe, make_clip):
    pipe, calls = counted_pipe
    clip = make_clip(9)
    first = pipe(**clip, seed=1)
    assert len(calls) == 1
    second = pipe(**clip, seed=1)
    assert len(calls) == 1  # the default prompt's embedding came from the cache
    assert np.array_equal(first.frames, second.frames)  # and it is the same embedding
    pipe(**clip, seed=1, prompt="a person talking, close-up")
    assert len(calls) == 2  # a new prompt is encoded once
    pipe(**clip, seed=1, prompt="a person talking, close-up")
    assert len(calls) == 2


def test_text_encoder_on_cpu_or_dropped(counted_pipe, make_clip):
    pipe, calls = counted_pipe
    clip = make_clip(9)
    reference = pipe(**clip, seed=2).frames
    pipe.place_text_encoder("drop")
    assert pipe.text_encoder is None
    assert np.array_equal(pipe(**clip, seed=2).frames, reference)  # the default prompt stays available
    with pytest.raises(ModelInputError) as err:
        pipe(**clip, seed=2, prompt="another prompt")
    assert err.value.field == "custom_prompt"
    with pytest.raises(ValueError):
        pipe.place_text_encoder("cpu")  # a dropped encoder cannot come back without a reload


@pytest.mark.parametrize("bias", [math.log(3 / 2), math.log(1 / 4), 3.0])
def test_reference_bias_without_a_mask_equals_the_masked_attention(bias):
    """The reference-key bias through an extra query/key feature (no attn_mask: flash SDPA stays eligible on a
    GPU) gives the logits, hence the output, of the stock processor with the bias as a float mask."""
    from diffusers.models.transformers.transformer_ltx import LTXAttention, LTXVideoAttnProcessor

    from lipsync.model.pipio.reference_attention import ReferenceBiasAttnProcessor

    torch.manual_seed(0)
    attn = LTXAttention(query_dim=64, heads=4, kv_heads=4, dim_head=16, cross_attention_dim=64)
    x, start = torch.randn(2, 40, 64), 32
    rope = (torch.randn(2, 40, 64).cos(), torch.randn(2, 40, 64).sin())
    mask = torch.zeros(2, 1, 40)
    mask[:, :, start:] = bias
    with torch.no_grad():
        masked = LTXVideoAttnProcessor()(attn, x, None, mask, rope)
        ours = ReferenceBiasAttnProcessor()(attn, x, None, None, rope, reference_bias=(start, bias))
        unbiased = LTXVideoAttnProcessor()(attn, x, None, None, rope)
    torch.testing.assert_close(ours, masked, rtol=1e-5, atol=1e-6)
    assert (ours - unbiased).abs().max() > 1e-2  # the bias is not lost on the way


def test_the_blocks_self_attention_takes_no_mask():
    from lipsync.model.pipio.reference_attention import ReferenceBiasAttnProcessor

    pipe = LipSyncPipeline.from_config("tiny", init_seed=0)
    assert all(isinstance(b.attn1.processor, ReferenceBiasAttnProcessor) for b in pipe.transformer.transformer_blocks)
