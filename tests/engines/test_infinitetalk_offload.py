"""InfiniteTalk's model offload (``LIPSYNC_OFFLOAD``): the transformer's blocks in host memory, each moved to the
device as it runs by diffusers' group offloading. Offloaded, the engine computes the same latents bit for bit;
``auto`` offloads exactly when the published weights and a chunk's working memory exceed the card's free memory.
(The copies and the side stream themselves need a real GPU: ``scripts/gpu_check.py`` runs a capped card with it.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lipsync.model.engine import EngineOptions
from lipsync.model.infinitetalk.config import PUBLISHED, SMALL
from lipsync.model.infinitetalk.engine import offload_plan
from lipsync.model.weights import load_engine
from lipsync.testing.emulated_gpu import GiB, emulated_cuda
from tests.engines.test_infinitetalk_recipe import run


@pytest.fixture(scope="module")
def weights(small_weights):
    return small_weights["infinitetalk"]


def test_offloaded_blocks_give_the_same_output_bit_for_bit(weights):
    options = dict(device="cpu", dtype="fp32", num_inference_steps=2)
    plain = load_engine(weights, EngineOptions(**options, offload="none"), "infinitetalk")
    moved = load_engine(weights, EngineOptions(**options, offload="blocks"), "infinitetalk")
    assert not plain.sampler.transformer.offloaded and moved.sampler.transformer.offloaded
    steps = moved.sampler.transformer.blocks.steps
    assert all(getattr(step, "_diffusers_hook", None) is not None for step in steps)  # one group per block
    assert getattr(plain.sampler.transformer.blocks.steps[0], "_diffusers_hook", None) is None
    a, latents_a, _, _ = run(plain, 24, seed=3)
    b, latents_b, _, _ = run(moved, 24, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(latents_a, latents_b, strict=True))
    assert np.array_equal(a, b)


@pytest.mark.parametrize(("free_gib", "text_encoder", "table", "offload"), [
    (80, "cpu", "480p", False),      # 37.8 GB of weights + 8 GiB: an H100 holds it
    (80, "device", "720p", False),   # + umT5 (11.4 GB) + 14 GiB
    (48, "device", "480p", True),    # a 48 GB card with umT5 on it
    (48, "cpu", "480p", False),
    (24, "cpu", "480p", True),       # a 24 GB card: never without offload
])
def test_auto_offloads_when_the_card_is_smaller_than_the_model(free_gib, text_encoder, table, offload):
    t5_bytes = int(5.68e9) * 2 if text_encoder == "device" else 0
    with emulated_cuda(free_bytes=free_gib * GiB, total_bytes=max(free_gib, 80) * GiB):
        got, why = offload_plan(EngineOptions(device="cuda", text_encoder=text_encoder), PUBLISHED.transformer,
                                torch.bfloat16, table, t5_bytes)
    assert got is offload and why.startswith("auto:") and f"{free_gib:.1f} GiB free" in why


def test_offload_setting_is_obeyed_and_auto_keeps_a_cpu_run_whole():
    assert offload_plan(EngineOptions(device="cpu"), SMALL.transformer, torch.float32, "480p") == (
        False, "auto: cpu is not a GPU")
    assert offload_plan(EngineOptions(device="cuda", offload="none"), PUBLISHED.transformer, torch.bfloat16,
                        "480p")[0] is False
    assert offload_plan(EngineOptions(device="cpu", offload="blocks"), SMALL.transformer, torch.float32,
                        "480p")[0] is True


def test_the_gpu_checks_engine_built_without_files_offloads_too():
    """``random_engine`` (the GPU check's InfiniteTalk, made without files) with ``offload="blocks"``: made in host
    memory, its blocks hooked, and it generates."""
    from lipsync.model.infinitetalk.random_weights import random_engine

    engine = random_engine(EngineOptions(device="cpu", dtype="fp32", offload="blocks"), SMALL, steps=1)
    assert engine.sampler.transformer.offloaded
    out, _, _, _ = run(engine, 9, seed=1)
    assert out.shape[0] == 9 and out.std() > 0
