"""Weights: random weights round trip through the real loading path; bad checkpoints name their keys;
stock diffusers LTX-Video checkpoints load into the lip-sync model."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLLTXVideo, LTXVideoTransformer3DModel
from safetensors.torch import load_file, save_file

from lipsync.model.pipio.config import load_config
from lipsync.model.loading import WeightsLoadError
from lipsync.model.pipio.loading import load_transformer, load_vae
from lipsync.model.pipio.pipeline import LipSyncPipeline

ROOT = Path(__file__).resolve().parents[2]
FAST = dict(vae_chunk_size=9, vae_overlap_window_width=0, frame_block_width=136)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("weights") / "tiny"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "write_random_weights.py"), "--config", "tiny",
                    "--out", str(out), "--seed", "3"], check=True, cwd=ROOT, capture_output=True)
    return out


def test_written_random_weights_load_and_give_the_same_output(weights_dir, make_clip):
    written = LipSyncPipeline.from_config("tiny", init_seed=3)
    loaded = LipSyncPipeline.from_pretrained(weights_dir)
    for report in loaded.load_reports:
        assert report.loaded and not report.newly_initialized
    inputs = make_clip(17, generate=slice(3, 5))
    embedding = np.ones(128, np.float32)
    a = written(**inputs, face_id_embedding=embedding, **FAST).frames
    b = loaded(**inputs, face_id_embedding=embedding, **FAST).frames
    assert np.array_equal(a, b)
    other = LipSyncPipeline.from_config("tiny", init_seed=4)(**inputs, face_id_embedding=embedding, **FAST).frames
    assert not np.array_equal(a, other)  # the loaded weights, not the defaults, made the output


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_missing_and_unexpected_keys_are_all_named(weights_dir, tmp_path):
    broken = _copy(weights_dir, tmp_path / "broken")
    path = broken / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    del state["transformer_blocks.1.attn_audio.to_q.weight"]
    del state["proj_out.bias"]
    state["made_up.weight"] = torch.zeros(1)
    save_file(state, str(path))
    with pytest.raises(WeightsLoadError) as info:
        LipSyncPipeline.from_pretrained(broken)
    err = info.value
    assert err.missing == ["proj_out.bias", "transformer_blocks.1.attn_audio.to_q.weight"]
    assert err.unexpected == ["made_up.weight"]
    for key in err.missing + err.unexpected:
        assert key in str(err)


def test_shape_mismatch_is_named(weights_dir, tmp_path):
    broken = _copy(weights_dir, tmp_path / "broken")
    path = broken / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    state["latents_mean"] = torch.zeros(3)
    save_file(state, str(path))
    with pytest.raises(WeightsLoadError, match=r"latents_mean \(checkpoint \(3,\), model \(8,\)\)"):
        LipSyncPipeline.from_pretrained(broken)


def test_unknown_config_key_is_an_error(weights_dir, tmp_path):
    broken = _copy(weights_dir, tmp_path / "broken")
    config_path = broken / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["num_lipsync_heads"] = 3
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="num_lipsync_heads"):
        LipSyncPipeline.from_pretrained(broken)


def _lipsync_sizes() -> dict:
    """The tiny preset's lip-sync-only transformer arguments (what a stock LTX config does not have)."""
    stock = set(inspect.signature(LTXVideoTransformer3DModel.__init__).parameters)
    return {k: v for k, v in load_config("tiny").transformer.items() if k not in stock}


def test_stock_ltx_checkpoints_load_into_the_lipsync_model(tmp_path):
    tiny = load_config("tiny")
    stock_kwargs = {k: v for k, v in tiny.transformer.items() if k not in _lipsync_sizes()}
    torch.manual_seed(0)
    stock = LTXVideoTransformer3DModel(**stock_kwargs)
    stock.save_pretrained(tmp_path / "transformer")  # diffusers' own layout: config.json + safetensors
    stock_vae = AutoencoderKLLTXVideo(**tiny.vae)
    stock_vae.save_pretrained(tmp_path / "vae")

    # Without permission, the lip-sync modules are reported as missing keys (an error naming them).
    with pytest.raises(WeightsLoadError, match="attn_audio"):
        load_transformer(tmp_path / "transformer", overrides=_lipsync_sizes())

    model, report = load_transformer(tmp_path / "transformer", overrides=_lipsync_sizes(),
                                     allow_new_lipsync_modules=True)
    stock_state, ours = stock.state_dict(), model.state_dict()
    assert sorted(report.loaded) == sorted(stock_state)  # every stock key landed ...
    for key, value in stock_state.items():
        assert torch.equal(ours[key], value), key  # ... in its place
    new = set(ours) - set(stock_state)
    assert set(report.newly_initialized) == new and new
    assert all(any(p in key for p in model.new_module_prefixes()) for key in new)

    vae, vae_report = load_vae(tmp_path / "vae")
    assert not vae_report.newly_initialized
    assert all(torch.equal(vae.state_dict()[k], v) for k, v in stock_vae.state_dict().items())


def test_stock_behaviour_is_kept_when_gates_start_at_zero(tmp_path):
    """With ``zero_init_gates`` (the base preset) the new branches are no-ops at load: the lip-sync model
    computes exactly what the stock transformer computes, so fine-tuning starts from LTX-Video itself."""
    from lipsync.model.pipio.transformer_lipsync import LipSyncConditioning

    sizes = {**_lipsync_sizes(), "zero_init_gates": True}
    stock_kwargs = {k: v for k, v in load_config("tiny").transformer.items() if k not in _lipsync_sizes()}
    torch.manual_seed(0)
    stock = LTXVideoTransformer3DModel(**stock_kwargs).eval()
    stock.save_pretrained(tmp_path / "t")
    model, _ = load_transformer(tmp_path / "t", overrides=sizes, allow_new_lipsync_modules=True)
    model.eval()
    frames, h, w = 3, 2, 2
    hidden = torch.randn(1, frames * h * w, 8)
    text = torch.randn(1, 5, 32)
    mask = torch.ones(1, 5)
    t = torch.tensor([500.0])
    coords = torch.stack(torch.meshgrid(torch.arange(frames) * 8 / 25.0, torch.arange(h) * 32.0,
                                        torch.arange(w) * 32.0, indexing="ij")).flatten(1)[None].float()
    with torch.no_grad():
        expected = stock(hidden, text, t, mask, video_coords=coords).sample
        conditioning = LipSyncConditioning(text=text, text_mask=mask,
                                           audio=torch.randn(1, frames, sizes["audio_steps_per_frame"],
                                                             sizes["audio_num_layers"], sizes["audio_dim"]))
        got = model(hidden, torch.randn(1, frames * h * w, 9), t, coords, frames, conditioning)
    assert torch.allclose(got, expected, atol=1e-5)
