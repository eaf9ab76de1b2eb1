"""Memory caps and out-of-memory handling on the emulated GPU (``lipsync.testing.emulated_gpu``: a fake CUDA
device whose allocations past its free memory raise CUDA's out-of-memory error).

Knobs that scale memory (``frame_block_width``, ``vae_chunk_size``) are capped per request from the memory
free at that moment and the engine's measured cost per item, and the cap is logged; an out-of-memory error
(another process took memory after the request sized its batches) is retried once at half the batch, then
ends the request with ``device_out_of_memory``, and the worker's next request completes.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch

from lipsync.contract.errors import DeviceOutOfMemory
from lipsync.model.devices import typed_out_of_memory
from lipsync.model.engine import CropBatch, EngineOptions, EngineRequest, Knobs
from lipsync.model.weights import load_engine
from lipsync.testing.emulated_gpu import emulated_cuda

MiB = 1 << 20



def _request(n: int, size: int, knobs: Knobs, logs: list[str]) -> tuple[EngineRequest, list[CropBatch]]:
    rng = np.random.default_rng(n)
    crops = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    audio = (0.1 * np.sin(np.arange(int(n / 25 * 16000)) / 16000 * 2 * np.pi * 150)).astype(np.float32)
    request = EngineRequest(audio=audio, fps=25.0, num_frames=n, generate=np.zeros(n, bool), is_image=False,
                            knobs=knobs, log=logs.append, progress=lambda *a: None)
    landmarks = np.full((n, 68, 2), size / 2, np.float32)
    return request, [CropBatch(s, crops[s:s + 16], np.ones(len(crops[s:s + 16]), bool), landmarks[s:s + 16])
                     for s in range(0, n, 16)]


def _frames(engine, request, batches) -> int:
    """As the worker runs an engine: its chunks, an out-of-memory anywhere in them typed."""
    with torch.no_grad():
        return sum(len(c) for c in typed_out_of_memory(engine.generate(request, batches), what=engine.info.name))


def test_musetalk_caps_bind_and_an_out_of_memory_is_halved_then_typed(small_weights):
    big = Knobs(frame_block_width=10_000, vae_chunk_size=1025)
    with emulated_cuda(free_bytes=2048 * MiB) as ledger:
        engine = load_engine(small_weights["musetalk"], EngineOptions(device="cuda", dtype="auto"), "musetalk")
        assert engine.info.dtype == "fp16"  # the authors' inference dtype, on a GPU with bf16 too
        per_frame = engine.group_bytes_per_frame
        assert per_frame > 0 and engine.vae_bytes_per_frame > 0
        weights = ledger.live_bytes
        # the card as a request finds it: beside the weights, room for about 12 frames of a UNet batch
        ledger.free_at_start = weights + int(12 * (per_frame + engine.vae_bytes_per_frame) / 0.8)
        ledger.reset_peak()
        logs: list[str] = []
        request, batches = _request(48, 256, big, logs)
        assert _frames(engine, request, batches) == 48
        unet_batch, vae_batch = request.metrics["unet_batch"], request.metrics["vae_batch"]
        assert 6 <= unet_batch <= 12 and vae_batch == unet_batch, request.metrics
        assert any("frame_block_width): 10000 asked, " in line for line in logs), logs
        assert any("vae_chunk_size): 1025 asked, " in line for line in logs), logs
        assert ledger.peak_bytes <= ledger.free_at_start
        used = ledger.peak_bytes - weights

        # another process takes memory after the request was sized: half the batch still fits
        ledger.reset_peak()
        request, batches = _request(unet_batch // 2, 256, big, [])
        assert _frames(engine, request, batches) == unet_batch // 2
        used_half = ledger.peak_bytes - weights
        assert used_half < used
        logs.clear()
        request, batches = _request(unet_batch, 256, big, logs)
        ledger.limit_bytes = weights + (used_half + used) // 2
        assert _frames(engine, request, batches) == unet_batch
        assert any(f"retrying as {unet_batch // 2} + " in line for line in logs), logs

        # nothing fits any more: a typed error, and the next request (memory back) completes
        ledger.limit_bytes = weights + 1
        request, batches = _request(8, 256, big, logs)
        with pytest.raises(DeviceOutOfMemory):
            _frames(engine, request, batches)
        ledger.limit_bytes = None
        request, batches = _request(8, 256, big, [])
        assert _frames(engine, request, batches) == 8



def test_latentsync_segments_per_call_fit_the_memory_free_at_the_request(small_weights):
    from lipsync.model.latentsync.config import variant_config
    from lipsync.model.latentsync.engine import segments_limit

    assert segments_limit(variant_config("latentsync-1.6"), guided=True) == 7  # 2 x 7 x 64² < 65,536
    with emulated_cuda(free_bytes=4096 * MiB) as ledger:
        engine = load_engine(small_weights["latentsync"], EngineOptions(device="cuda", dtype="auto", num_inference_steps=2),
                             "latentsync")
        assert engine.info.dtype == "fp16" and engine.segment_bytes > 0
        weights = ledger.live_bytes
        ledger.free_at_start = weights + int(2.5 * engine.segment_bytes / 0.8)  # room for two segments a call
        ledger.reset_peak()
        logs: list[str] = []
        request, batches = _request(64, engine.info.crop_size, Knobs(frame_block_width=10_000, vae_chunk_size=1025),
                                    logs)
        assert _frames(engine, request, batches) == 64
        assert request.metrics["segments_per_call"] == 2
        assert any("frame_block_width): 625 asked, 2 used" in line for line in logs), logs
        assert ledger.peak_bytes <= ledger.free_at_start


def test_pipio_vae_chunk_fits_the_memory_free_at_the_request(small_weights):
    root = small_weights["pipio"]
    with emulated_cuda(free_bytes=8192 * MiB) as ledger:
        engine = load_engine(root, EngineOptions(device="cuda", dtype="auto", num_inference_steps=1,
                                                 face_crop_size=128), "pipio")
        assert engine.info.dtype == "bf16" and engine.vae_bytes_per_latent_frame > 0
        weights, per_latent = ledger.live_bytes, engine.vae_bytes_per_latent_frame
        knobs = Knobs(vae_chunk_size=1025, vae_overlap_window_width=16)
        request, batches = _request(81, 128, Knobs(vae_chunk_size=17, vae_overlap_window_width=0), [])
        request.identity = np.full(128, 0.1, np.float32)
        ledger.reset_peak()
        assert _frames(engine, request, batches) == 81
        rest = ledger.peak_bytes - weights  # the request with a 2-latent-frame VAE chunk
        ledger.free_at_start = weights + int((rest + 4 * per_latent) / 0.8)  # room for a few more latent frames
        logs: list[str] = []
        request, batches = _request(81, 128, knobs, logs)
        request.identity = np.full(128, 0.1, np.float32)
        ledger.reset_peak()
        assert _frames(engine, request, batches) == 81
        used = request.metrics["vae_chunk_size_used"]
        assert 9 <= used < 1025 and (used - 1) % 8 == 0
        assert any(f"vae_chunk_size 1025 -> {used}" in line for line in logs), logs
        assert ledger.peak_bytes <= ledger.free_at_start


def test_pipio_frame_block_fits_the_memory_free_at_the_request(small_weights):
    """``frame_block_width`` 10000 is one block over the whole clip: on a card with room for a few latent frames
    of the transformer's step beside the weights, the block is cut to what fits (logged) and the peak stays
    under the card's free memory."""
    with emulated_cuda(free_bytes=8192 * MiB) as ledger:
        engine = load_engine(small_weights["pipio"], EngineOptions(device="cuda", dtype="auto", num_inference_steps=1,
                                                                   face_crop_size=128), "pipio")
        per_latent = engine.block_bytes_per_latent_frame
        assert per_latent > 0
        weights = ledger.live_bytes
        small = Knobs(vae_chunk_size=17, vae_overlap_window_width=0, frame_block_width=16)
        request, batches = _request(81, 128, small, [])  # 11 latent frames, blocks of 2
        request.identity = np.full(128, 0.1, np.float32)
        ledger.reset_peak()
        assert _frames(engine, request, batches) == 81
        rest = ledger.peak_bytes - weights
        ledger.free_at_start = weights + int((rest + 3 * per_latent) / 0.8)
        logs: list[str] = []
        request, batches = _request(81, 128, Knobs(vae_chunk_size=17, vae_overlap_window_width=0,
                                                   frame_block_width=10_000), logs)
        request.identity = np.full(128, 0.1, np.float32)
        ledger.reset_peak()
        assert _frames(engine, request, batches) == 81
        used = request.metrics["frame_block_width_used"]
        assert 8 <= used < 88 and used % 8 == 0, request.metrics
        assert request.metrics["num_frame_blocks"] > 1
        assert any(f"frame_block_width 10000 -> {used}" in line for line in logs), logs
        assert ledger.peak_bytes <= ledger.free_at_start
