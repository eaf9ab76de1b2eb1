"""The lip-sync transformer on its own: split feed-forward, the reference-key bias, config presets."""

from __future__ import annotations

import json

import pytest
import torch

from lipsync.model.pipio.config import load_config
from lipsync.model.pipio.frame_blocks import block_weights, plan_frame_blocks
from lipsync.model.pipio.transformer_lipsync import LipSyncConditioning, LipSyncTransformer3DModel, reference_logit_bias

FRAMES, H, W = 3, 2, 2


def _model() -> LipSyncTransformer3DModel:
    torch.manual_seed(0)
    return LipSyncTransformer3DModel(**load_config("tiny").transformer).eval()


def _coords(frames: int, time: float | None = None) -> torch.Tensor:
    t = torch.arange(frames).float() * 8 / 25.0
    grid = torch.stack(torch.meshgrid(t, torch.arange(H) * 32.0, torch.arange(W) * 32.0, indexing="ij"))
    coords = grid.flatten(1)[None].float()
    if time is not None:
        coords[:, 0] = time
    return coords


def _inputs(model: LipSyncTransformer3DModel, refs: int = 1, repeat: int = 1, bias: float = 0.0):
    torch.manual_seed(1)
    cfg = model.config
    hidden = torch.randn(1, FRAMES * H * W, cfg.in_channels)
    cond = torch.randn(1, FRAMES * H * W, cfg.in_channels + 1)
    references = torch.randn(1, refs * H * W, cfg.in_channels).repeat(1, repeat, 1)
    conditioning = LipSyncConditioning(
        text=torch.randn(1, 6, cfg.caption_channels), text_mask=torch.tensor([[1, 1, 1, 1, 0, 0]]),
        audio=torch.randn(1, FRAMES, cfg.audio_steps_per_frame, cfg.audio_num_layers, cfg.audio_dim),
        id_embeds=torch.randn(1, cfg.id_embed_dim), id_scale=1.0, references=references,
        reference_coords=_coords(1, -1.0).repeat(1, 1, refs * repeat), reference_bias=bias)
    return hidden, cond, torch.tensor([700.0]), _coords(FRAMES), FRAMES, conditioning


@torch.no_grad()
def test_feed_forward_splits_are_equal_within_float_tolerance():
    model = _model()
    args = _inputs(model)
    one = model(*args, ff_num_splits=1)
    for k in (2, 4, 7):  # 7 does not divide the 16 tokens: tensor_split has no divisibility constraint
        assert torch.allclose(model(*args, ff_num_splits=k), one, atol=1e-6, rtol=0)


@torch.no_grad()
def test_reference_bias_equals_repeating_the_reference():
    """Appearance strength s with one reference: bias log(s) == the reference present s times."""
    model = _model()
    biased = model(*_inputs(model, repeat=1, bias=reference_logit_bias(3, 1)))
    repeated = model(*_inputs(model, repeat=3, bias=0.0))
    assert torch.allclose(biased, repeated, atol=1e-5)
    plain = model(*_inputs(model, repeat=1, bias=0.0))
    assert not torch.allclose(plain, biased, atol=1e-3)


@torch.no_grad()
def test_identity_branch_is_skipped_at_zero_and_scales_otherwise():
    model = _model()
    *args, conditioning = _inputs(model)
    off = model(*args, LipSyncConditioning(**{**conditioning.__dict__, "id_scale": 0.0}))
    none = model(*args, LipSyncConditioning(**{**conditioning.__dict__, "id_embeds": None}))
    on = model(*args, conditioning)
    assert torch.equal(off, none) and not torch.allclose(off, on, atol=1e-4)


def test_frame_block_weights_sum_to_one_and_cover_the_clip():
    for frames, width in [(51, 136), (51, 24), (13, 8), (7, 9), (100, 64)]:
        blocks = plan_frame_blocks(frames, width)
        weights = block_weights(blocks, frames)
        total = torch.zeros(frames)
        for block, w in zip(blocks, weights):
            total[block.start : block.end] += w
            assert block.end - block.start == min(frames, max(1, -(-width // 8)))
        assert torch.allclose(total, torch.ones(frames), atol=1e-6)
    assert len(plan_frame_blocks(17, 136)) == 1


def test_presets_load_and_unknown_keys_are_errors(tmp_path):
    assert load_config("tiny").pipeline.num_inference_steps == 2
    data = json.loads((load_config.__globals__["CONFIG_DIR"] / "tiny.json").read_text())
    data["transformer"]["num_experts"] = 4
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="num_experts"):
        load_config(path)
    data = json.loads((load_config.__globals__["CONFIG_DIR"] / "tiny.json").read_text())
    data["pipeline"]["guidance"] = 3
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="guidance"):
        load_config(path)


def test_base_preset_builds_on_meta_with_its_documented_size():
    cfg = load_config("base")
    with torch.device("meta"):
        model = LipSyncTransformer3DModel(**cfg.transformer)
    total = sum(p.numel() for p in model.parameters())
    new = sum(p.numel() for n, p in model.named_parameters() if any(m in n for m in model.new_module_prefixes()))
    assert total - new == 1_923_385_472  # LTX-Video 2B, unchanged
    assert total == 2_903_877_765  # documented in lipsync/model/README.md
