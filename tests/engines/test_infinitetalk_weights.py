"""InfiniteTalk's files, keys and small parts: the random weights are in the published layout with the authors' key
names; loading is strict and names bad keys; the full-size modules load the authors' full-size key lists on the
``meta`` device with nothing missing, unexpected or mis-shaped; loudness, Lab colour, buckets and the audio rate.

``tests/engines/data/infinitetalk_authors_keys.json.gz``: the state-dict keys and shapes of the authors' own modules
at the published sizes (``WanModel`` with the InfiniteTalk audio adapter as built from the 480P ``config.json``,
``WanVAE_`` as ``Wan2.1_VAE.pth`` is loaded, ``umt5_xxl`` encoder, ``clip_xlm_roberta_vit_h_14``), dumped once on the
meta device outside this repository from MeiGen-AI/InfiniteTalk at commit 0107cd9.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lipsync.model import weights as engine_weights
from lipsync.model.infinitetalk import audio, colour, crop_rule, keymaps, layout, loading
from lipsync.model.infinitetalk.config import PUBLISHED, TransformerConfig, bucket
from lipsync.model.loading import WeightsLoadError, load_weights

AUTHORS = json.loads(gzip.open(Path(__file__).parent / "data" / "infinitetalk_authors_keys.json.gz", "rt").read())


def patterns(keys) -> set[str]:
    return {re.sub(r"\.\d+\.", ".N.", re.sub(r"\.\d+\.", ".N.", k)) for k in keys}


@pytest.fixture(scope="module")
def root(small_weights) -> Path:
    return small_weights["infinitetalk"]


def test_random_weights_are_in_the_published_layout_with_the_authors_key_names(root):
    check = engine_weights.detect(root)
    assert check.layout.variant == "infinitetalk-480p" and check.ok, check.report()
    assert not [f.path for f in check.missing if f.required]
    wan = root / layout.WAN_480
    transformer = {}
    for shard in layout.SHARDS:
        transformer.update(load_file(str(wan / shard)))
    single = load_file(str(root / layout.SINGLE))
    assert set(single) == {k for k in AUTHORS["transformer"] if re.match(r"(blocks\.\d+\.(audio_cross_attn|norm_x)|audio_proj)\.", k)
                           and (k.startswith("audio_proj") or int(k.split(".")[1]) < 2)}
    assert patterns({**transformer, **single}) == patterns(AUTHORS["transformer"])
    for name, file in (("vae", layout.VAE_FILE), ("t5", layout.T5_FILE), ("clip", layout.CLIP_FILE)):
        state = torch.load(wan / file, weights_only=True)
        assert patterns(state) <= patterns(AUTHORS[name]), name
        absent = patterns(AUTHORS[name]) - patterns(state)  # the CLIP text tower (unused) is a token stand-in
        assert all(k.startswith("textual.") for k in absent) if name == "clip" else not absent, (name, absent)
    assert torch.load(wan / layout.T5_FILE, weights_only=True)["norm.weight"].dtype == torch.bfloat16
    assert json.loads((wan / "config.json").read_text())["model_type"] == "i2v"


def test_loading_is_strict_and_names_every_bad_key(root, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(root, bad)
    single = load_file(str(bad / layout.SINGLE))
    single.pop("blocks.1.audio_cross_attn.proj.bias")
    single["blocks.1.audio_cross_attn.extra.weight"] = torch.zeros(1)
    single["audio_proj.proj2.weight"] = torch.zeros(3, 3)
    save_file(single, str(bad / layout.SINGLE))
    cfg = loading.transformer_config(bad / layout.WAN_480, bad / layout.SINGLE,
                                     json.loads((bad / layout.WAV2VEC / "config.json").read_text()))
    with pytest.raises(WeightsLoadError) as err:
        loading.load_transformer(bad / layout.WAN_480, bad / layout.SINGLE, cfg)
    e = err.value
    # every bad key, as the files name them
    assert e.missing == ["blocks.1.audio_cross_attn.proj.bias"] and e.unexpected == ["blocks.1.audio_cross_attn.extra.weight"]
    assert e.mismatched == ["audio_proj.proj2.weight (checkpoint (3, 3), model (32, 32))"]


def test_wav2vec_loads_the_hub_bin_and_the_readme_safetensors_alike_and_strictly(root, tmp_path):
    """``pytorch_model.bin`` (main: a ``Wav2Vec2ForPreTraining`` save) and ``model.safetensors`` (the README's
    ``refs/pr/1``, the same tensors) load to the same model; a missing, extra or mis-shaped key is named."""
    src = root / layout.WAV2VEC
    hub = torch.load(src / "pytorch_model.bin", weights_only=True)
    assert "wav2vec2.encoder.pos_conv_embed.conv.weight_g" in hub and "project_q.weight" in hub
    assert json.loads((src / "config.json").read_text())["architectures"] == ["Wav2Vec2ForPreTraining"]
    converted = tmp_path / "pr1"
    converted.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy(src / name, converted / name)
    save_file({k: v.contiguous() for k, v in hub.items()}, str(converted / "model.safetensors"))
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 8000)).astype(np.float32))
    a, b = (loading.load_wav2vec(f)(x).last_hidden_state for f in (src, converted))
    assert torch.equal(a, b)

    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    state = dict(hub)
    state.pop("wav2vec2.encoder.layers.0.attention.k_proj.bias")
    state["wav2vec2.encoder.extra.weight"] = torch.zeros(1)
    state["wav2vec2.feature_projection.projection.weight"] = torch.zeros(3, 3)
    torch.save(state, bad / "pytorch_model.bin")
    with pytest.raises(WeightsLoadError) as err:
        loading.load_wav2vec(bad)
    e = err.value
    assert e.missing == ["encoder.layers.0.attention.k_proj.bias"] and e.unexpected == ["encoder.extra.weight"]
    assert e.mismatched and e.mismatched[0].startswith("feature_projection.projection.weight (checkpoint (3, 3)")


def meta_state(name: str) -> dict[str, torch.Tensor]:
    return {k: torch.empty(shape, device="meta") for k, shape in AUTHORS[name].items()}


def test_full_size_modules_load_the_authors_keys_on_meta():
    """Acceptance 3: 0 missing, 0 unexpected, 0 mis-shaped — through the strict loader, on the meta device."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining, Wav2Vec2Model

    from lipsync.model.infinitetalk import random_weights
    from lipsync.model.infinitetalk.transformer import InfiniteTalkTransformer

    state = meta_state("transformer")
    cfg = TransformerConfig(image_dim=state["img_emb.proj.0.weight"].shape[0])
    with torch.device("meta"):
        model = InfiniteTalkTransformer(cfg)
    report = load_weights(model, state, component="transformer", source="authors", device="meta",
                          rename=keymaps.mapper(keymaps.TRANSFORMER))
    assert not report.ignored and len(report.loaded) == len(state) == 1633
    total = sum(p.numel() for p in model.parameters())
    assert total == 18_882_046_784  # Wan2.1-I2V-14B (16.4 B) + the audio adapter (2.5 B)

    vae_state = meta_state("vae")
    vcfg = loading.vae_config(vae_state)
    assert (vcfg.base_dim, vcfg.z_dim, vcfg.num_res_blocks) == (96, 16, 2)
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        vae = AutoencoderKLWan(**vcfg.diffusers_kwargs())
    report = load_weights(vae, vae_state, component="vae", source="authors", device="meta",
                          rename=keymaps.mapper(keymaps.vae_pairs(2)))
    assert not report.ignored and len(report.loaded) == len(vae_state)

    t5_state = meta_state("t5")
    tcfg = loading.t5_config(t5_state)
    assert tcfg == PUBLISHED.t5
    with torch.device("meta"):
        t5 = loading.umt5(tcfg)
    report = load_weights(t5, t5_state, component="t5", source="authors", device="meta",
                          rename=keymaps.mapper(keymaps.T5))
    assert not report.ignored and len(report.loaded) == len(t5_state)

    clip_state = meta_state("clip")
    ccfg = loading.clip_config(clip_state)
    assert ccfg == PUBLISHED.clip
    split, ignored = loading.clip_state(clip_state, ccfg.num_layers)
    with torch.device("meta"):
        clip = loading.clip_vision(ccfg)
    del clip.embeddings._buffers["position_ids"]
    report = load_weights(clip, split, component="clip", source="authors", device="meta",
                          rename=keymaps.mapper(keymaps.CLIP))
    assert not report.ignored
    assert all(k.startswith(("textual.", "log_scale", "visual.head", "visual.transformer.31.")) for k in ignored)

    # chinese-wav2vec2-base: the hub's config.json (the fields that shape its keys) and its pytorch_model.bin's keys,
    # a transformers 4.16 save of Wav2Vec2ForPreTraining (``wav2vec2.`` prefix, weight norm as weight_g/weight_v)
    hub_config = {"architectures": ["Wav2Vec2ForPreTraining"], "hidden_size": 768, "num_hidden_layers": 12,
                  "num_attention_heads": 12, "intermediate_size": 3072, "conv_dim": [512] * 7,
                  "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_stride": [5, 2, 2, 2, 2, 2, 2], "conv_bias": False,
                  "feat_extract_norm": "group", "do_stable_layer_norm": False, "num_conv_pos_embeddings": 128,
                  "num_conv_pos_embedding_groups": 16, "num_codevector_groups": 2, "num_codevectors_per_group": 320,
                  "codevector_dim": 256, "proj_codevector_dim": 256, "mask_time_prob": 0.05, "vocab_size": 32}
    w2v = Wav2Vec2Config(**hub_config)
    with torch.device("meta"):
        hub = {random_weights.wav2vec_hub_key(k): v for k, v in Wav2Vec2ForPreTraining(w2v).state_dict().items()}
        wav2vec = Wav2Vec2Model(w2v)
    assert "wav2vec2.encoder.pos_conv_embed.conv.weight_g" in hub and "quantizer.codevectors" in hub
    report = load_weights(wav2vec, hub, component="wav2vec2", source="hub", device="meta", rename=keymaps.wav2vec)
    assert len(report.loaded) == len(wav2vec.state_dict()) == 211
    assert sorted(report.ignored) == sorted(k for k in hub if not k.startswith("wav2vec2."))  # the heads only
    assert sum(p.numel() for p in wav2vec.parameters()) == 94_371_712  # wav2vec2 base ("95 M") without its heads
    assert AUTHORS["transformer"]["audio_proj.proj1.weight"] == [512, 5 * w2v.num_hidden_layers * w2v.hidden_size]


def test_loudness_follows_bs1770_and_normalises_to_minus_23():
    t48 = np.arange(3 * 48000) / 48000  # BS.1770: a full-scale 997 Hz sine reads -3.01 LUFS (at 48 kHz)
    assert audio.integrated_loudness(np.sin(2 * np.pi * 997 * t48), rate=48000) == pytest.approx(-3.01, abs=0.05)
    t = np.arange(3 * 16000) / 16000
    sine = np.sin(2 * np.pi * 997 * t).astype(np.float32)
    out, said = audio.loudness_normalised(0.1 * sine)
    assert audio.integrated_loudness(out) == pytest.approx(-23.0, abs=0.01) and "-23" in said
    assert audio.loudness_normalised(np.zeros(16000, np.float32))[1].startswith("silent")
    assert audio.loudness_normalised(sine[:3000])[1].startswith("audio shorter")


@pytest.mark.parametrize("fps", [24.0, 25.0, 30.0, 60.0])
def test_one_audio_row_per_output_frame_at_any_rate(root, fps):
    wav2vec = loading.load_wav2vec(root / layout.WAV2VEC)
    frames = int(2 * fps)
    emb = audio.embedding(wav2vec, np.random.default_rng(0).standard_normal(32000).astype(np.float32), frames)
    assert emb.shape == (frames, 2, 16)
    win = audio.windows(emb, frames - 3, 9)
    assert win.shape == (9, 5, 2, 16) and torch.equal(win[-1, -1], emb[-1])  # clamped at the end
    if fps == 25.0:
        assert frames == int(32000 / 16000 * 25)  # the authors' row count (video_length = seconds x 25)
    longer = audio.extended(emb, frames + 4)
    assert len(longer) == frames + 7 and torch.equal(longer[frames], emb[-1])  # the time reversal


def test_lab_colour_transfer():
    assert np.allclose(colour.rgb_to_lab(np.ones(3)), [100, 0, 0], atol=0.01)  # skimage: (100, -0.0025, 0.0047)
    assert np.allclose(colour.rgb_to_lab(np.array([1.0, 0, 0])), [53.24, 80.09, 67.20], atol=0.05)  # sRGB red
    rgb = np.random.default_rng(1).random((8, 8, 3))
    assert np.allclose(colour.lab_to_rgb(colour.rgb_to_lab(rgb)), rgb, atol=1e-6)
    ref = np.full((4, 4, 3), 0.2)
    ref[0, 0] = -0.4
    out = colour.match_colours(np.random.default_rng(2).random((2, 4, 4, 3)) * 2 - 1, ref, 1.0)
    lab_out, lab_ref = colour.rgb_to_lab((out[0] + 1) / 2), colour.rgb_to_lab((ref + 1) / 2)
    assert np.allclose(lab_out.reshape(-1, 3).mean(0), lab_ref.reshape(-1, 3).mean(0), atol=1.5)


def test_buckets_and_the_whole_frame_crop():
    assert bucket(1080, 1920, "480p") == (448, 896) and bucket(1920, 1080, "480p") == (832, 448)
    assert bucket(1080, 1920, "720p") == (704, 1280) and bucket(512, 512, "480p") == (640, 640)
    a = crop_rule.affine(1080, 1920, "480p")  # the whole frame onto the bucket: pixel edges onto pixel edges
    assert np.allclose(a[:, :2] @ [-0.5, -0.5] + a[:, 2], [-0.5, -0.5])
    assert np.allclose(a[:, :2] @ [1919.5, 1079.5] + a[:, 2], [895.5, 447.5])
    frame = np.zeros((120, 160, 3), np.uint8)
    frame[:, 80:] = 255
    crop = crop_rule.crop_frame(frame, "tiny")
    assert crop.shape == (32, 48, 3) and crop[:, :23].max() == 0 and crop[:, 25:].min() == 255


def test_lora_files_are_merged_as_the_authors_merge_them(root, tmp_path):
    from lipsync.model.infinitetalk import lora

    folder = tmp_path / "w"
    (folder / lora.FOLDER).mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    down, up = torch.randn(4, 32, generator=g), torch.randn(32, 4, generator=g)
    diff_b, diff = torch.randn(64, generator=g), torch.randn(32, 32, generator=g)
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": down,
               "diffusion_model.blocks.0.self_attn.q.lora_up.weight": up,
               "diffusion_model.blocks.0.self_attn.q.alpha": torch.tensor(4.0),  # ignored, as the authors do
               "diffusion_model.blocks.1.ffn.0.diff_b": diff_b,
               "diffusion_model.audio_proj.proj2.diff": diff}, str(folder / lora.FOLDER / "distill.safetensors"))
    (folder / lora.FOLDER / "lora.json").write_text(json.dumps({"scales": {"distill.safetensors": 0.5}, "steps": 4,
                                                                "text_guidance": 1.0, "audio_guidance": 2.0}))
    plan = lora.plan(folder)
    assert [(p.name, s) for p, s in plan.files] == [("distill.safetensors", 0.5)]
    assert (plan.steps, plan.text_guidance, plan.audio_guidance) == (4, 1.0, 2.0)
    wan = root / layout.WAN_480
    cfg = loading.transformer_config(wan, root / layout.SINGLE,
                                     json.loads((root / layout.WAV2VEC / "config.json").read_text()))
    base = loading.load_transformer(wan, root / layout.SINGLE, cfg)
    merged = loading.load_transformer(wan, root / layout.SINGLE, cfg)
    assert lora.merge(merged, plan.files[0][0], 0.5) == 3
    b, m = dict(base.named_parameters()), dict(merged.named_parameters())
    torch.testing.assert_close(m["wan.blocks.0.attn1.to_q.weight"], b["wan.blocks.0.attn1.to_q.weight"] + 0.5 * up @ down)
    torch.testing.assert_close(m["wan.blocks.1.ffn.net.0.proj.bias"], b["wan.blocks.1.ffn.net.0.proj.bias"] + 0.5 * diff_b)
    torch.testing.assert_close(m["audio_proj.proj2.weight"], b["audio_proj.proj2.weight"] + 0.5 * diff)
    assert torch.equal(m["wan.blocks.0.attn1.to_k.weight"], b["wan.blocks.0.attn1.to_k.weight"])
    save_file({"diffusion_model.blocks.9.self_attn.q.diff": diff}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(WeightsLoadError, match="blocks.9.self_attn.q.diff"):
        lora.merge(merged, tmp_path / "bad.safetensors", 1.0)
