"""LatentSync's modules against the published facts: the checkpoint's key list (full size, meta device), the
segment-wide GroupNorm, the configuration files, the OpenAI -> transformers whisper conversion key by key and
numerically, the per-frame audio window, the face template geometry and the mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from lipsync.model.latentsync import crop_rule
from lipsync.model.latentsync.audio import AudioFeatures, encoder_layers, log_mel, openai_to_transformers, whisper_config
from lipsync.model.latentsync.config import UNetConfig, folder_config, parse_config, variant_config
from lipsync.model.loading import WeightsLoadError, load_weights
from lipsync.model.latentsync.random_weights import SMALL_WHISPER, TINY_WHISPER, openai_whisper_state
from lipsync.model.latentsync.unet import LatentSyncUNet
from lipsync.model.latentsync.unet_blocks import ResnetBlock3D

KEYS = Path(__file__).parent / "data" / "latentsync_unet_keys.txt"


def published_keys() -> dict[str, tuple[int, ...]]:
    """The published checkpoint's tensors (names and shapes), listed from the authors' own module."""
    lines = [l.split() for l in KEYS.read_text().splitlines() if l and not l.startswith("#")]
    return {name: tuple(int(d) for d in shape.split("x")) for name, shape in lines}


@pytest.mark.parametrize("variant", ["latentsync-1.6", "latentsync-1.5"])
def test_full_size_checkpoint_loads_with_no_missing_or_unexpected_key(variant):
    config = variant_config(variant)
    with torch.device("meta"):
        unet = LatentSyncUNet(config.unet)
        state = {name: torch.empty(shape) for name, shape in published_keys().items()}
    assert len(state) == 1246
    report = load_weights(unet, state, component="LatentSync UNet", source="published key list", device="meta")
    assert report.loaded == sorted(state) and report.newly_initialized == []
    result = unet.load_state_dict(state, strict=True, assign=True)  # and torch's own strict check agrees
    assert result.missing_keys == [] and result.unexpected_keys == []
    # what the published layout holds: 13 input channels, audio-only cross-attention of width 384, motion
    # modules at every down/up level and not in the middle block, 8 heads
    assert state["conv_in.weight"].shape == (320, 13, 3, 3)
    assert state["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"].shape == (320, 384)
    assert not any(k.startswith("mid_block.motion_modules") for k in state)
    up_motion = {k.split(".")[1] for k in state if ".motion_modules." in k and k.startswith("up_blocks")}
    assert up_motion == {"0", "1", "2", "3"}
    pe = "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe"
    assert state[pe].shape == (1, 24, 320)


def test_a_wrong_checkpoint_is_refused_with_the_keys_named():
    with torch.device("meta"):
        unet = LatentSyncUNet(variant_config("latentsync-1.6").unet)
        state = {name: torch.empty(shape) for name, shape in published_keys().items()}
    state.pop("conv_out.bias")
    state["conv_in.weight"] = torch.empty(320, 49, 3, 3, device="meta")  # a stage-1 style input
    state["extra.weight"] = torch.empty(1, device="meta")
    with pytest.raises(WeightsLoadError, match=r"1 missing key\(s\): conv_out.bias") as info:
        load_weights(unet, state, component="LatentSync UNet", source="bad", device="meta")
    assert info.value.missing == ["conv_out.bias"] and info.value.unexpected == ["extra.weight"]
    assert info.value.mismatched == ["conv_in.weight (checkpoint (320, 49, 3, 3), model (320, 13, 3, 3))"]


def test_resnet_group_norm_spans_the_segments_frames():
    torch.manual_seed(0)
    block = ResnetBlock3D(32, 32, 64, groups=8, eps=1e-5).eval()
    x, temb = torch.randn(1, 32, 4, 6, 6), torch.randn(1, 64)
    with torch.no_grad():
        # what the block computes, written out: a 5-D GroupNorm (statistics over all frames)
        h = F.conv2d(F.silu(F.group_norm(x, 8, block.norm1.weight, block.norm1.bias, 1e-5)).permute(0, 2, 1, 3, 4)
                     .reshape(4, 32, 6, 6), block.conv1.weight, block.conv1.bias, padding=1)
        out = block(x, temb)
        assert torch.allclose(block.conv1(F.silu(block.norm1(x))), h.reshape(1, 4, 32, 6, 6).permute(0, 2, 1, 3, 4),
                              atol=1e-6)
        y = x.clone()
        y[:, :, 3] *= 5  # another frame changes the statistics, so frame 0's output changes
        assert not torch.allclose(block(y, temb)[:, :, 0], out[:, :, 0])


def test_configs_match_the_published_facts(tmp_path):
    for variant, res in (("latentsync-1.6", 512), ("latentsync-1.5", 256)):
        cfg = variant_config(variant)
        assert cfg.resolution == res and cfg.num_frames == 16 and cfg.inference_steps == 20
        assert cfg.guidance_scale == 1.5 and cfg.audio_feat_length == (2, 2)
        u = cfg.unet
        assert (u.in_channels, u.out_channels, u.cross_attention_dim, u.attention_head_dim) == (13, 4, 384, 8)
        assert u.block_out_channels == (320, 640, 1280, 1280) and u.norm_eps == 1e-5
        assert u.motion_module_resolutions == (1, 2, 4, 8) and not u.motion_module_mid_block
        assert not u.use_inflated_groupnorm
    # a folder's own unet_config.yaml in the published format wins; PyYAML reads `1e-5` as a string
    text = (Path(variant_config("latentsync-1.5").source).read_text()
            .replace("norm_eps: 1.0e-5", "norm_eps: 1e-5"))
    (tmp_path / "unet_config.yaml").write_text("ckpt:\n  resume_ckpt_path: x\n" + text)
    assert isinstance(yaml.safe_load(text)["model"]["norm_eps"], str)
    cfg = folder_config(tmp_path)
    assert cfg.variant == "latentsync-1.5" and cfg.resolution == 256 and cfg.unet.norm_eps == 1e-5
    with pytest.raises(ValueError, match="unsupported model fields"):
        UNetConfig.from_dict({"not_a_field": 1})
    with pytest.raises(ValueError, match="use_linear_projection"):
        parse_config({"model": {"use_linear_projection": True}}, variant=None, source="x")


def test_scheduler_config_gives_the_published_timesteps():
    from diffusers import DDIMScheduler

    from lipsync.model.latentsync.config import scheduler_config

    s = DDIMScheduler.from_config(scheduler_config())
    s.set_timesteps(20)
    assert s.timesteps.tolist() == list(range(951, 0, -50))
    assert s.config.beta_schedule == "scaled_linear" and not s.config.clip_sample and not s.config.set_alpha_to_one


# ------------------------------------------------------------------------------------------ whisper
def _openai_encoder_forward(state: dict, dims: dict, mel: torch.Tensor,
                            dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """OpenAI whisper's encoder, written from its published definition, returning every block's output. ``dtype``
    fp16 is its ``transcribe(fp16=True)`` on a GPU: the mel and each weight cast to fp16; LayerNorm and the
    attention softmax in fp32, the fp32 positional embedding added, the sum cast back."""
    h, d = dims["n_audio_head"], dims["n_audio_state"]

    def w(key):
        return None if key not in state else state[key].to(dtype)

    def ln(v, key):
        return F.layer_norm(v.float(), (d,), state[key + ".weight"], state[key + ".bias"]).to(v.dtype)

    x = F.gelu(F.conv1d(mel[None].to(dtype), w("encoder.conv1.weight"), w("encoder.conv1.bias"), padding=1))
    x = F.gelu(F.conv1d(x, w("encoder.conv2.weight"), w("encoder.conv2.bias"), stride=2, padding=1))
    x = (x.permute(0, 2, 1) + state["encoder.positional_embedding"]).to(dtype)
    outs = [x]
    for i in range(dims["n_audio_layer"]):
        p = f"encoder.blocks.{i}."

        def lin(name, v):
            return F.linear(v, w(p + name + ".weight"), w(p + name + ".bias"))

        y = ln(x, p + "attn_ln")
        q, k, v = (lin(n, y).view(1, -1, h, d // h).permute(0, 2, 1, 3)
                   for n in ("attn.query", "attn.key", "attn.value"))
        scale = (d // h) ** -0.25
        att = torch.softmax(((q * scale) @ (k * scale).transpose(-1, -2)).float(), dim=-1).to(dtype)
        x = x + lin("attn.out", (att @ v).permute(0, 2, 1, 3).flatten(2))
        y = ln(x, p + "mlp_ln")
        x = x + lin("mlp.2", F.gelu(lin("mlp.0", y)))
        outs.append(x)
    return outs


def test_whisper_conversion_key_by_key_against_transformers():
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    g = torch.Generator().manual_seed(0)
    for dims in (TINY_WHISPER, SMALL_WHISPER):
        source = openai_whisper_state(dims, g, decoder=dims is SMALL_WHISPER)
        converted = openai_to_transformers(source)
        encoder = WhisperEncoder(whisper_config(dims))
        want = encoder.state_dict()
        assert list(sorted(converted)) == list(sorted(want))
        for key, value in converted.items():
            assert value.shape == want[key].shape, key
        # each transformers tensor is exactly one OpenAI encoder tensor, and every OpenAI encoder tensor is used
        sources = {k: v for k, v in source.items() if k.startswith("encoder.")}
        assert len(sources) == len(converted)
        used = {id(v) for v in converted.values()}
        assert used == {id(v) for v in sources.values()}
    assert converted["layers.1.self_attn.k_proj.weight"] is source["encoder.blocks.1.attn.key.weight"]
    assert converted["embed_positions.weight"] is source["encoder.positional_embedding"]
    assert converted["layer_norm.bias"] is source["encoder.ln_post.bias"]
    assert "layers.0.self_attn.k_proj.bias" not in converted  # whisper's key projection has no bias


def test_whisper_features_are_the_published_layers():
    """transformers' encoder with our weights gives OpenAI's states: after the positional embedding and after
    each block, the last one before ln_post."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    dims = SMALL_WHISPER
    state = openai_whisper_state(dims, torch.Generator().manual_seed(1), decoder=False)
    encoder = WhisperEncoder(whisper_config(dims)).eval()
    encoder.load_state_dict(openai_to_transformers(state), strict=True)
    mel = torch.randn(80, 3000)
    got = encoder_layers(encoder, mel)
    want = torch.stack(_openai_encoder_forward(state, dims, mel), dim=2)[0]
    assert got.shape == (1500, dims["n_audio_layer"] + 1, dims["n_audio_state"])
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_whisper_in_fp16_as_the_authors_run_it(tmp_path):
    """dtype fp16 (a GPU's default): the engine's whisper runs in fp16 with OpenAI's fp32 LayerNorms and
    positional sum; its features are within a bound of the authors' fp16 encoder (OpenAI's, re-told above in fp16)
    and of fp32. Other dtypes keep whisper in fp32."""
    from lipsync.model.latentsync.audio import load_whisper_encoder

    dims = SMALL_WHISPER
    state = openai_whisper_state(dims, torch.Generator().manual_seed(2), decoder=False)
    torch.save({"dims": dims, "model_state_dict": state}, tmp_path / "tiny.pt")
    half = load_whisper_encoder(tmp_path / "tiny.pt", dtype=torch.float16)
    assert half.conv1.weight.dtype == half.layers[0].fc1.weight.dtype == torch.float16
    assert half.layers[0].self_attn_layer_norm.weight.dtype == half.embed_positions.weight.dtype == torch.float32
    mel = torch.randn(80, 3000, generator=torch.Generator().manual_seed(3)).clamp(-1, 1)
    got = encoder_layers(half, mel)
    assert got.dtype == torch.float16 and torch.isfinite(got).all()
    authors = torch.stack(_openai_encoder_forward(state, dims, mel, torch.float16), dim=2)[0]
    full = encoder_layers(load_whisper_encoder(tmp_path / "tiny.pt"), mel)
    scale = full.abs().amax().item()
    to_authors = (got.float() - authors.float()).abs()
    to_full = (got.float() - full).abs()
    assert to_authors.amax() <= 0.01 * scale and to_authors.mean() <= 1e-3 * scale, (to_authors.amax(), scale)
    assert to_full.amax() <= 0.01 * scale and to_full.mean() <= 1e-3 * scale, (to_full.amax(), scale)
    with pytest.raises(ValueError):
        load_whisper_encoder(tmp_path / "tiny.pt", dtype=torch.bfloat16)


def test_audio_window_is_ten_steps_around_the_frame_clamped():
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    dims = SMALL_WHISPER
    encoder = WhisperEncoder(whisper_config(dims)).eval()
    seconds = 1.3
    audio = (0.1 * np.sin(np.arange(int(16000 * seconds)) / 7)).astype(np.float32)
    feats = AudioFeatures(encoder, audio, fps=25.0)
    mel = log_mel(audio)
    assert mel.shape == (80, int(16000 * seconds) // 160)
    assert float(mel.max() - mel.min()) <= 2.0 + 1e-6  # floored 8 (log10) below the clip's maximum, / 4
    full = encoder_layers(encoder, F.pad(mel, (0, 3000 - mel.shape[1])))[: mel.shape[1] // 2]
    assert feats.num_steps == 65
    layers = dims["n_audio_layer"] + 1
    for frame in (0, 1, 10, 32):
        centre = int(frame * 50 / 25)
        idx = [min(max(i, 0), 64) for i in range(centre - 4, centre + 6)]
        want = full[idx].reshape(10 * layers, -1)
        torch.testing.assert_close(feats.window(frame), want)
    assert feats.frames(30, 3).shape == (3, 10 * layers, dims["n_audio_state"])


# ------------------------------------------------------------------------------------------ faces
def test_alignment_puts_the_three_points_on_the_template():
    rng = np.random.default_rng(0)
    base = rng.uniform(100, 300, (68, 2))
    theta = 0.2
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    lm = base @ rot.T * 1.3 + [40, 10]
    pts = crop_rule.three_points(lm)
    # a similarity that maps the points exactly onto the template (so the fit is exact)
    size = 512
    template = crop_rule.TEMPLATE * crop_rule.template_ratio(size)
    m, _ = crop_rule.similarity(pts, template)
    mapped = pts @ m[:, :2].T + m[:, 2]
    # 3 points, 4 degrees of freedom: a least-squares fit; the centroid is exact
    np.testing.assert_allclose(mapped.mean(0), template.mean(0), atol=1e-9)
    assert crop_rule.warp_size(512) == (420, 560) and crop_rule.warp_size(256) == (210, 280)
    affines = crop_rule.align_track(np.stack([lm, lm]), np.array([True, True]), size)
    # the crop affine is the warp then the resize to 512x512 (anisotropic)
    warp = (np.linalg.inv(crop_rule.resize_affine(size)) @ np.vstack([affines[0], [0, 0, 1]]))[:2]
    first_bias = crop_rule.similarity(pts, template)[1]
    np.testing.assert_allclose(warp, np.concatenate([m[:, :2], (m[:, 2] + first_bias)[:, None]], axis=1), atol=1e-9)
    # the running offset: 0.2 previous + 0.8 current; same points -> same offset
    np.testing.assert_allclose(affines[1], affines[0], atol=1e-9)
    assert np.isnan(crop_rule.align_track(np.stack([lm]), np.array([False]), size)).all()


def test_crop_is_the_two_stage_warp():
    import cv2

    rng = np.random.default_rng(1)
    frame = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    size = 256
    warp = np.array([[0.9, 0.1, -20.0], [-0.1, 0.9, 5.0]])
    affine = (crop_rule.resize_affine(size) @ np.vstack([warp, [0, 0, 1]]))[:2]
    crop = crop_rule.crop_aligned(frame, affine, size)
    w, h = crop_rule.warp_size(size)
    stage = cv2.warpAffine(frame.astype(np.float32), warp, (w, h), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=(127, 127, 127)).astype(np.uint8)
    np.testing.assert_array_equal(crop, cv2.resize(stage, (size, size), interpolation=cv2.INTER_LANCZOS4))


def test_mouth_mask_has_the_published_shape():
    m = crop_rule.mouth_mask(256)
    repaint = m < 0.5
    assert repaint.mean() == pytest.approx(0.407, abs=0.002)  # the published mask.png: 40.7 % repainted
    rows, cols = np.nonzero(repaint)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (95, 242, 9, 247)
    assert not repaint[100, 128] and repaint[100, 40] and repaint[100, 220]  # the notch keeps the nose
    assert repaint[200, 128] and not repaint[90, 128]
    m512 = crop_rule.mouth_mask(512)
    assert m512.shape == (512, 512) and m512.dtype == np.float32 and 0 <= m512.min() and m512.max() <= 1
    r = crop_rule.restore_mask(512)
    assert r[256, 256] == pytest.approx(1.0) and r[0, 0] < 1e-3 and r[:, :5].max() < 0.01


@pytest.mark.slow
def test_gradient_checkpointing_gives_the_same_gradients():
    from lipsync.model.latentsync.random_weights import small_config

    cfg = parse_config(small_config(), variant=None, source="small").unet
    torch.manual_seed(0)
    unet = LatentSyncUNet(cfg)
    for p in (unet.conv_out.weight, unet.conv_in.weight):
        torch.nn.init.normal_(p, std=0.02)
    x, audio = torch.randn(1, 13, 2, 8, 8), torch.randn(2, 30, 32)

    def grads(checkpointing: bool):
        unet.zero_grad()
        unet.enable_gradient_checkpointing(checkpointing)
        unet(x, 500, audio).square().mean().backward()
        return {n: p.grad.clone() for n, p in unet.named_parameters() if p.grad is not None}

    plain, ckpt = grads(False), grads(True)
    assert plain.keys() == ckpt.keys() and len(plain) > 100
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], atol=1e-6, rtol=1e-4)
    assert all(b.gradient_checkpointing for b in unet.down_blocks)
