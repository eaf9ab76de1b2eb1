"""Acceptance 1: SyncNet and StableSyncNet load from files in exactly the published formats (random weights
here), strictly, with errors that name the keys."""

from __future__ import annotations

import pytest
import torch

from lipsync.evaluation.stable_syncnet import SYNCNET_16_PIXEL_ATTN, StableSyncNet, StableSyncNetConfig, load_stable_syncnet
from lipsync.evaluation.syncnet_v2 import SyncNetV2, load_syncnet_v2
from lipsync.evaluation.weights import WeightsError
from lipsync.model.loading import WeightsLoadError
from tests.eval.weights_files import TINY_STABLE_YAML, randomise, write_stable_syncnet, write_syncnet_v2

# The `model:` section of LatentSync's published configs/syncnet/syncnet_16_pixel_attn.yaml.
PUBLISHED_PIXEL_ATTN_YAML = """\
model:
  audio_encoder: # input (1, 80, 52)
    in_channels: 1
    block_out_channels: [32, 64, 128, 256, 512, 1024, 2048]
    downsample_factors: [[2, 1], 2, 2, 1, 2, 2, [2, 3]]
    attn_blocks: [0, 0, 0, 1, 1, 0, 0]
    dropout: 0.0
  visual_encoder: # input (48, 128, 256)
    in_channels: 48
    block_out_channels: [64, 128, 256, 256, 512, 1024, 2048, 2048]
    downsample_factors: [[1, 2], 2, 2, 2, 2, 2, 2, 2]
    attn_blocks: [0, 0, 0, 0, 1, 1, 0, 0]
    dropout: 0.0
data:
  num_frames: 16
  resolution: 256
  lower_half: true
"""


@pytest.fixture(scope="module")
def syncnet_file(tmp_path_factory):
    return write_syncnet_v2(tmp_path_factory.mktemp("w") / "syncnet_v2.model", seed=3)


def test_syncnet_v2_loads_the_legacy_state_dict(syncnet_file):
    with open(syncnet_file, "rb") as fh:
        assert not fh.read(4).startswith(b"PK")  # the pre-zip serialisation, like the published file
    model = load_syncnet_v2(syncnet_file)
    expected = torch.load(syncnet_file, weights_only=True)
    assert not model.training
    for key, value in expected.items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)
    with torch.no_grad():  # the published shapes: 224 px 5-frame windows and 13 x 20 MFCC windows -> 1024-d
        assert model.forward_lip(torch.rand(2, 3, 5, 224, 224) * 255).shape == (2, 1024)
        assert model.forward_aud(torch.randn(2, 1, 13, 20)).shape == (2, 1024)


def test_syncnet_v2_also_takes_num_batches_tracked(tmp_path):
    load_syncnet_v2(write_syncnet_v2(tmp_path / "s.model", with_num_batches_tracked=True))


def _save(path, state):
    torch.save(state, path, _use_new_zipfile_serialization=False)
    return path


def test_syncnet_v2_errors_name_the_keys(tmp_path, syncnet_file):
    state = torch.load(syncnet_file, weights_only=True)
    missing = {k: v for k, v in state.items() if k != "netfclip.3.weight"}
    with pytest.raises(WeightsLoadError, match=r"1 missing key\(s\): netfclip\.3\.weight"):
        load_syncnet_v2(_save(tmp_path / "missing.model", missing))
    with pytest.raises(WeightsLoadError, match=r"1 unexpected key\(s\): __S__\.extra"):
        load_syncnet_v2(_save(tmp_path / "extra.model", {**state, "__S__.extra": torch.zeros(1)}))
    wrong = {**state, "netcnnlip.0.weight": torch.zeros(96, 1, 5, 7, 7)}  # a grey-input net is not this one
    with pytest.raises(WeightsLoadError, match=r"shape mismatch\(es\): netcnnlip\.0\.weight \(checkpoint \(96, 1, 5, 7, 7\), model \(96, 3, 5, 7, 7\)\)"):
        load_syncnet_v2(_save(tmp_path / "shape.model", wrong))
    (tmp_path / "junk.model").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a tensors-only PyTorch checkpoint"):
        load_syncnet_v2(tmp_path / "junk.model")
    with pytest.raises(WeightsError, match="no such weights file"):
        load_syncnet_v2(tmp_path / "absent.model")


def test_syncnet_v2_refuses_a_pickled_module(tmp_path):
    torch.save(SyncNetV2(), tmp_path / "module.model")  # code, not tensors: never unpickled
    with pytest.raises(WeightsError, match="not a tensors-only"):
        load_syncnet_v2(tmp_path / "module.model")


def test_published_stable_syncnet_config_builds_the_published_network(tmp_path):
    (tmp_path / "syncnet_16_pixel_attn.yaml").write_text(PUBLISHED_PIXEL_ATTN_YAML)
    config = StableSyncNetConfig.from_yaml(tmp_path / "syncnet_16_pixel_attn.yaml")
    assert config == SYNCNET_16_PIXEL_ATTN
    with torch.device("meta"):  # 401 M parameters: shapes only, no memory
        model = StableSyncNet(config)
        vision, audio = model(torch.zeros(1, 48, 128, 256), torch.zeros(1, 1, 80, 52))
    assert vision.shape == audio.shape == (1, 2048)
    keys = model.state_dict()
    assert tuple(keys["visual_encoder.down_blocks.5.attn.to_q.weight"].shape) == (512, 512)  # attention after block 4
    assert tuple(keys["audio_encoder.down_blocks.4.ff.net.0.proj.weight"].shape) == (2048, 256)  # GEGLU
    assert round(sum(v.numel() for v in model.parameters()) / 1e6) == 401


def test_stable_syncnet_loads_the_trainer_checkpoint(tmp_path):
    path, cfg = write_stable_syncnet(tmp_path / "stable_syncnet.pt", tmp_path / "syncnet.yaml", seed=1)
    model = load_stable_syncnet(path, cfg)
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert set(model.state_dict()) == set(saved)
    with torch.no_grad():
        v, a = model(torch.randn(2, 12, 32, 64), torch.randn(2, 1, 80, 13))
    torch.testing.assert_close(v.norm(dim=1), torch.ones(2))
    assert v.shape == a.shape == (2, 64)


def test_stable_syncnet_errors_name_the_keys(tmp_path):
    path, cfg = write_stable_syncnet(tmp_path / "stable_syncnet.pt", tmp_path / "syncnet.yaml")
    state = torch.load(path, weights_only=True)["state_dict"]
    torch.save(state, tmp_path / "bare.pt")
    with pytest.raises(WeightsError, match=r"expected LatentSync's \{'state_dict': …\} checkpoint"):
        load_stable_syncnet(tmp_path / "bare.pt", cfg)
    del state["audio_encoder.norm_out.weight"]
    torch.save({"state_dict": state}, tmp_path / "missing.pt")
    with pytest.raises(WeightsLoadError, match=r"1 missing key\(s\): audio_encoder\.norm_out\.weight"):
        load_stable_syncnet(tmp_path / "missing.pt", cfg)
    (tmp_path / "frames8.yaml").write_text(TINY_STABLE_YAML.replace("in_channels: 12", "in_channels: 24"))
    with pytest.raises(WeightsLoadError, match=r"shape mismatch\(es\): visual_encoder\.conv_in\.weight \(checkpoint \(32, 12, 3, 3\), model \(32, 24, 3, 3\)\)"):
        load_stable_syncnet(path, tmp_path / "frames8.yaml")  # 4-frame weights against an 8-frame config
    (tmp_path / "bad.yaml").write_text(TINY_STABLE_YAML.replace("  audio_encoder:", "  audio_encoderr:"))
    with pytest.raises(WeightsError, match=r"unknown model keys \['audio_encoderr'\]"):
        load_stable_syncnet(path, tmp_path / "bad.yaml")


def test_random_weights_are_seeded():
    a, b = randomise(SyncNetV2(), 5), randomise(SyncNetV2(), 5)
    assert all(torch.equal(a[k], b[k]) for k in a)
