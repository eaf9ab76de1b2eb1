"""Chunked VAE encode/decode (vae_chunk_size / vae_overlap_window_width) against unchunked.

Stated tolerance: chunking is exact (max abs error <= 1e-5, float32) for any VAE whose temporal receptive
field stays inside one latent frame, i.e. the chunk geometry (where chunks start, which causal frame is
dropped, how overlaps are blended) introduces no error of its own. With the real LTX VAE the residual error
is the temporal context a chunk cannot see, a property of the trained weights (see lipsync/model/README.md); with
chunk >= clip length it is bit-exact.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKLLTXVideo
from diffusers.models.autoencoders.autoencoder_kl_ltx import LTXVideoCausalConv3d

from lipsync.model.pipio.autoencoder_lipsync import blend_stream, decode_chunked, encode_chunked, plan_chunks
from lipsync.model.pipio.config import load_config

NUM_FRAMES = 49  # 7 latent frames: long enough for several chunks of 9 and 17
TEMB = torch.tensor([0.05])  # the tiny VAE's decoder is timestep-conditioned, like LTX 0.9.5's


def tiny_vae(local: bool) -> AutoencoderKLLTXVideo:
    torch.manual_seed(0)
    vae = AutoencoderKLLTXVideo(**load_config("tiny").vae).eval()
    if local:
        # Keep only the temporal kernel tap aligned with the output frame (the last tap of a causal conv, the
        # centre of a symmetric one): every latent frame then depends only on its own pixel frames.
        with torch.no_grad():
            for module in vae.modules():
                if isinstance(module, LTXVideoCausalConv3d):
                    k = module.kernel_size[0]
                    tap = torch.zeros(k)
                    tap[k - 1 if module.is_causal else (k - 1) // 2] = 1.0
                    module.conv.weight.mul_(tap.view(1, 1, k, 1, 1))
    return vae


@pytest.fixture(scope="module")
def video() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(1, 3, NUM_FRAMES, 64, 64) * 2 - 1


def _encode(vae, video, chunk, overlap):
    return encode_chunked(vae, lambda s, e: video[:, :, s:e], video.shape[2], chunk, overlap)


CASES = [(9, 0), (9, 8), (17, 0), (17, 8), (17, 16), (65, 0), (65, 16), (65, 24)]


@pytest.mark.parametrize("chunk, overlap", CASES)
def test_chunked_equals_unchunked_for_a_temporally_local_vae(video, chunk, overlap):
    vae = tiny_vae(local=True)
    plan, _ = plan_chunks(NUM_FRAMES, chunk, overlap)
    with torch.no_grad():
        full = vae.encoder(video)[:, :8]
        chunked = _encode(vae, video, chunk, plan.overlap)
        assert chunked.shape == full.shape
        assert (chunked - full).abs().max() <= 1e-5
        decoded_full = vae.decoder(full, TEMB)
        decoded = torch.cat(list(decode_chunked(vae, full, chunk, plan.overlap, TEMB)), dim=2)
        assert decoded.shape == decoded_full.shape
        assert (decoded - decoded_full).abs().max() <= 1e-5


def test_chunk_at_least_the_clip_is_bit_exact_for_any_weights(video):
    vae = tiny_vae(local=False)
    with torch.no_grad():
        full = vae.encoder(video)[:, :8]
        assert torch.equal(_encode(vae, video, 65, 16), full)
        assert torch.equal(torch.cat(list(decode_chunked(vae, full, 65, 16, TEMB)), dim=2), vae.decoder(full, TEMB))


@pytest.mark.parametrize("chunk, overlap", [(9, 0), (17, 8)])
def test_chunked_shapes_and_finiteness_for_random_weights(video, chunk, overlap):
    vae = tiny_vae(local=False)
    with torch.no_grad():
        full = vae.encoder(video)[:, :8]
        chunked = _encode(vae, video, chunk, overlap)
        decoded = torch.cat(list(decode_chunked(vae, full, chunk, overlap, TEMB)), dim=2)
    assert chunked.shape == full.shape and torch.isfinite(chunked).all()
    assert decoded.shape == (1, 3, NUM_FRAMES, 64, 64) and torch.isfinite(decoded).all()


def test_overlap_frames_are_a_linear_blend_of_both_chunks():
    first = torch.zeros(1, 1, 6, 1, 1)
    second = torch.ones(1, 1, 6, 1, 1)
    out = torch.cat(list(blend_stream(iter([first, second]), overlap=4)), dim=2).flatten()
    assert out.shape == (8,)
    assert torch.allclose(out, torch.tensor([0, 0, 0.125, 0.375, 0.625, 0.875, 1, 1]))


@pytest.mark.parametrize(
    "chunk, overlap, expected, noted",
    [(65, 16, 16, False), (65, 12, 8, True), (9, 8, 0, True), (17, 16, 8, True), (65, 56, 32, True), (17, 0, 0, False)],
)
def test_overlap_is_planned_on_the_latent_grid(chunk, overlap, expected, noted):
    plan, notes = plan_chunks(129, chunk, overlap)
    assert plan.overlap == expected and bool(notes) == noted
    assert all(s % 8 == 0 for s in plan.starts) and plan.starts[-1] + chunk >= 129


@pytest.mark.parametrize("bad", [dict(chunk_size=10, overlap=0), dict(chunk_size=1, overlap=0),
                                 dict(chunk_size=17, overlap=17)])
def test_invalid_chunking_is_rejected(bad):
    with pytest.raises(ValueError):
        plan_chunks(33, **bad)
