"""What would silently spoil a trained checkpoint (issue 13), each now placed right or refused loudly:
reference-token time relative to the frame block, the tokenizer saved and checked against the text encoder,
the face-ID embedder's width checked at load and at call, and ``pipeline_config.json`` required."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch
from transformers import ByT5Tokenizer

from lipsync.model.engine import EngineOptions
from lipsync.model.pipio.config import load_config
from lipsync.model.pipio.engine import FaceIdEmbedderMismatch, load_engine
from lipsync.model.pipio.layout import LAYOUTS
from lipsync.model.pipio.pipeline import LipSyncPipeline


def _block_inputs(pipe: LipSyncPipeline, clip: dict, **kwargs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(video_coords, reference_coords) the transformer receives per block call (observed with a hook)."""
    seen = []

    def hook(module, args):
        _, _, _, video_coords, _, conditioning = args[:6]
        seen.append((video_coords.clone(), conditioning.reference_coords.clone()))

    handle = pipe.transformer.register_forward_pre_hook(hook)
    try:
        pipe(**clip, num_inference_steps=1, guidance_scale=1.0, appearance_cond_strength=2, **kwargs)
    finally:
        handle.remove()
    return seen


def test_reference_time_is_relative_to_each_block(tiny_pipe, make_clip):
    # 49 frames = 7 latent frames; width 16 -> blocks of 2 latent frames at several positions in the clip
    seen = _block_inputs(tiny_pipe, make_clip(49), frame_block_width=16)
    assert len(seen) >= 3
    gaps, starts = [], []
    for video_coords, reference_coords in seen:
        block_start = float(video_coords[0, 0].min())
        starts.append(block_start)
        gaps.append(torch.unique(reference_coords[0, 0] - block_start).tolist())
    assert len(set(starts)) == len(starts) and max(starts) > 1.0  # later blocks start well into the clip
    want = tiny_pipe.config.reference_time_seconds
    assert all(g == pytest.approx([want]) for g in gaps), gaps  # the same distance for every block


def test_reference_time_does_not_depend_on_the_block_position(tiny_pipe, make_clip):
    # the last block of a long clip sees its references exactly as the first block of a short one does
    short = _block_inputs(tiny_pipe, make_clip(17))
    long = _block_inputs(tiny_pipe, make_clip(49), frame_block_width=16)
    rel = lambda v, r: r[0] - torch.cat([v[0, :1].min().view(1), v.new_zeros(2)])[:, None]  # noqa: E731
    assert torch.allclose(rel(*short[0]), rel(*long[-1]))


def test_save_pretrained_writes_the_tokenizer_and_loading_checks_it(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "w")
    assert (tmp_path / "w" / "tokenizer" / "tokenizer_config.json").is_file()
    loaded = LipSyncPipeline.from_pretrained(tmp_path / "w")
    assert loaded.tokenizer("a b").input_ids == tiny_pipe.tokenizer("a b").input_ids

    # a tokenizer whose vocabulary is not the text encoder's (259 ids) is refused, naming it
    shutil.rmtree(tmp_path / "w" / "tokenizer")
    ByT5Tokenizer(extra_ids=200).save_pretrained(tmp_path / "w" / "tokenizer")
    with pytest.raises(ValueError, match=r"tokenizer \(ByT5Tokenizer .*459 tokens.*vocab_size is 259"):
        LipSyncPipeline.from_pretrained(tmp_path / "w")


def test_a_text_encoder_not_sized_for_bytes_needs_its_tokenizer(tmp_path):
    config = load_config("tiny")
    config = dataclasses.replace(config, text_encoder={**config.text_encoder, "vocab_size": 32128})
    LipSyncPipeline.from_config(config).save_pretrained(tmp_path / "w")
    shutil.rmtree(tmp_path / "w" / "tokenizer")  # e.g. a T5 checkpoint copied without its tokenizer
    with pytest.raises(ValueError, match="259 tokens but the text encoder's vocab_size is 32128"):
        LipSyncPipeline.from_pretrained(tmp_path / "w")


def test_a_folder_without_pipeline_config_is_refused(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "w")
    (tmp_path / "w" / "pipeline_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="pipeline_config.json is missing"):
        LipSyncPipeline.from_pretrained(tmp_path / "w")
    # explicit settings (training from stock LTX-Video weights) are the way around it
    pipe = LipSyncPipeline.from_pretrained(tmp_path / "w", pipeline_config=tiny_pipe.config)
    assert pipe.config == tiny_pipe.config


def test_a_checkpoint_trained_with_another_face_id_embedder_fails_at_load(tmp_path):
    config = load_config("tiny")
    config = dataclasses.replace(config, transformer={**config.transformer, "id_embed_dim": 512})  # ArcFace
    LipSyncPipeline.from_config(config).save_pretrained(tmp_path / "w")
    with pytest.raises(FaceIdEmbedderMismatch, match="face-ID embedder mismatch.*512-d.*dlib-resnet-128.*128-d"):
        load_engine(tmp_path / "w", LAYOUTS[0], EngineOptions(device="cpu", dtype="fp32"))


def test_a_wrong_face_id_embedding_fails_at_call(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "w")
    engine = load_engine(tmp_path / "w", LAYOUTS[0], EngineOptions(device="cpu", dtype="fp32"))
    assert engine._identity(np.zeros(128, np.float32)) is not None
    with pytest.raises(FaceIdEmbedderMismatch, match="wants 128-d.*gives 512-d"):
        engine._identity(np.zeros(512, np.float32))
