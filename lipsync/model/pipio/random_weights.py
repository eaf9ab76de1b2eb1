"""Random pipio weights in our published layout (``LipSyncPipeline.save_pretrained``): for tests of the real
loading path, benchmarks, and a first GPU smoke run of the ``base`` sizes before trained weights exist. The
``base`` config writes about 9 GB in fp32, mostly the T5-XXL encoder; bf16 halves it."""

from __future__ import annotations

from pathlib import Path

import torch

SIZES = {"small": "tiny", "published": "base"}
"""``lipsync weights random pipio --size``: the model config each size writes."""


def write_random_weights(root: Path, config: str | Path = "tiny", *, seed: int = 0,
                         dtype: torch.dtype = torch.float32) -> Path:
    """Write a randomly initialised ``config`` (``tiny``, ``base`` or a JSON path) under ``root``; returns ``root``."""
    from lipsync.model.pipio.pipeline import LipSyncPipeline

    LipSyncPipeline.from_config(config, init_seed=seed, dtype=dtype).save_pretrained(root)
    return root
