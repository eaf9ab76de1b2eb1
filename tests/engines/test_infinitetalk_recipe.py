"""InfiniteTalk's recipe computed step by step here, on stock modules loaded separately from the random weights in
the published layout (diffusers' ``WanTransformer3DModel`` and ``AutoencoderKLWan``, transformers' ``UMT5EncoderModel``,
``CLIPVisionModel``, ``Wav2Vec2Model``; the audio adapter as the authors' formulas on the raw tensors of
``infinitetalk.safetensors``), against the engine's latents: one chunk, and two chunks carrying motion frames.
Then the seed reproduces the output bit for bit, and the audio changes it. Formulas from MeiGen-AI/InfiniteTalk
``wan/multitalk.py``, ``wan/modules/multitalk_model.py``, ``wan/modules/attention.py``, ``generate_infinitetalk.py``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lipsync.model.engine import CropBatch, EngineOptions, EngineRequest, Knobs
from lipsync.model.infinitetalk import keymaps, layout
from lipsync.model.infinitetalk.audio import loudness_normalised
from lipsync.model.infinitetalk.colour import match_colours
from lipsync.model.infinitetalk.config import DEFAULT_PROMPT, NEGATIVE_PROMPT, SMALL
from lipsync.model.weights import load_engine

H0, W0 = 60, 80  # 4:3 frames → the tiny table's (32, 48) bucket


def frames_of(n: int, seed: int = 0) -> np.ndarray:
    """Smooth moving colour fields (not noise: the crop's resampling is part of what runs)."""
    y, x = np.mgrid[0:H0, 0:W0] / 40.0
    out = [np.stack([np.sin(x * 3 + t * 0.3 + seed), np.cos(y * 2 - t * 0.2), np.sin((x + y) * 2 + t * 0.1)], -1)
           for t in range(n)]
    return ((np.stack(out) + 1) * 127.5).astype(np.uint8)


def speech(n: int, fps: float = 25.0, pitch: float = 180.0) -> np.ndarray:
    t = np.arange(int(round(n / fps * 16000))) / 16000
    return (0.3 * np.sin(2 * np.pi * pitch * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)


@pytest.fixture(scope="module")
def weights(small_weights):
    return small_weights["infinitetalk"]


@pytest.fixture(scope="module")
def engine(weights):
    return load_engine(weights, EngineOptions(device="cpu", dtype="fp32", num_inference_steps=2), "infinitetalk")


def run(engine, n: int, *, audio=None, seed: int = 42, prompt=None):
    crops = engine.crop(frames_of(n), np.zeros((n, 2, 3)))
    request = EngineRequest(audio=speech(n) if audio is None else audio, fps=25.0, num_frames=n,
                            generate=np.zeros(n, bool), is_image=False, knobs=Knobs(seed=seed, prompt=prompt),
                            log=lambda m: None, progress=lambda *a: None)
    batches = [CropBatch(s, crops[s:s + 4], np.ones(len(crops[s:s + 4]), bool), np.zeros((len(crops[s:s + 4]), 68, 2)))
               for s in range(0, n, 4)]
    engine.sampler.trace = []
    with torch.no_grad():
        out = np.concatenate(list(engine.generate(request, batches)))
    latents, engine.sampler.trace = engine.sampler.trace, None
    return out, latents, crops, request


# ----------------------------------------------------------------------------------------------- the reference
class Stock:
    """The stock modules, loaded here from the published files (state dicts renamed by our key maps)."""

    def __init__(self, root):
        from diffusers import AutoencoderKLWan, WanTransformer3DModel
        from transformers import AutoTokenizer, Wav2Vec2Model

        from lipsync.model.infinitetalk import loading

        wan_dir = root / layout.WAN_480
        cfg = SMALL.transformer
        state = {}
        for shard in layout.SHARDS:
            state.update(load_file(str(wan_dir / shard)))
        self.audio = load_file(str(root / layout.SINGLE))  # the adapter: raw tensors, the authors' names
        rename = keymaps.mapper(keymaps.TRANSFORMER)
        self.wan = WanTransformer3DModel(**cfg.diffusers_kwargs()).eval()
        self.wan.load_state_dict({rename(k)[len("wan."):]: v for k, v in state.items()}, strict=True)
        vae_state = torch.load(wan_dir / layout.VAE_FILE, weights_only=True)
        vrename = keymaps.mapper(keymaps.vae_pairs(SMALL.vae.num_res_blocks))
        self.vae = AutoencoderKLWan(**SMALL.vae.diffusers_kwargs()).eval()
        self.vae.load_state_dict({vrename(k): v for k, v in vae_state.items()}, strict=True)
        t5_state = torch.load(wan_dir / layout.T5_FILE, weights_only=True)
        self.t5 = loading.umt5(SMALL.t5).eval()
        trename = keymaps.mapper(keymaps.T5)
        missing, unexpected = self.t5.load_state_dict({trename(k): v.float() for k, v in t5_state.items()},
                                                      strict=False)
        assert unexpected == [] and set(missing) <= {"encoder.embed_tokens.weight"}  # tied to ``shared``
        self.tokenizer = AutoTokenizer.from_pretrained(wan_dir / layout.T5_TOKENIZER)
        clip_state = torch.load(wan_dir / layout.CLIP_FILE, weights_only=True)
        split, _ = loading.clip_state(clip_state, SMALL.clip.num_layers)
        self.clip = loading.clip_vision(SMALL.clip).eval()
        crename = keymaps.mapper(keymaps.CLIP)
        self.clip.load_state_dict({crename(k): v.float() for k, v in split.items()}, strict=True)
        self.wav2vec = Wav2Vec2Model.from_pretrained(root / layout.WAV2VEC).eval()
        self.mean = torch.tensor(self.vae.config.latents_mean).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(self.vae.config.latents_std).view(1, -1, 1, 1, 1)

    # the authors' T5EncoderModel: tokens to 512, encoded with the mask, cut to the prompt, zero-padded
    def text(self, prompt: str) -> torch.Tensor:
        ids = self.tokenizer([" ".join(prompt.split())], padding="max_length", truncation=True, max_length=512,
                             add_special_tokens=True, return_tensors="pt")
        states = self.t5(input_ids=ids.input_ids, attention_mask=ids.attention_mask).last_hidden_state
        n = int(ids.attention_mask.sum())
        return torch.cat([states[:, :n], states.new_zeros(1, 512 - n, states.shape[-1])], dim=1)

    # get_embedding: conv features interpolated to one row per frame, every layer's output, (T, layers, C)
    def audio_embedding(self, wav: np.ndarray, frames: int) -> torch.Tensor:
        x = (wav - wav.mean()) / np.sqrt(wav.var() + 1e-7)
        feats = self.wav2vec.feature_extractor(torch.from_numpy(x.astype(np.float32))[None])
        feats = torch.nn.functional.interpolate(feats, size=frames, align_corners=True, mode="linear")
        hidden, _ = self.wav2vec.feature_projection(feats.transpose(1, 2))
        outs = []
        hooks = [layer.register_forward_hook(lambda m, i, o: outs.append(o[0] if isinstance(o, tuple) else o))
                 for layer in self.wav2vec.encoder.layers]
        self.wav2vec.encoder(hidden)
        for h in hooks:
            h.remove()
        return torch.stack(outs, dim=0)[:, 0].permute(1, 0, 2)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return (self.vae.encode(video).latent_dist.mode() - self.mean) / self.std

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent * self.std + self.mean).sample.clamp(-1, 1)

    def clip_tokens(self, image: torch.Tensor) -> torch.Tensor:  # CLIPModel.visual(use_31_block=True)
        x = torch.nn.functional.interpolate(image, size=(28, 28), mode="bicubic", align_corners=False) * 0.5 + 0.5
        x = (x - torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)) / \
            torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
        return self.clip(pixel_values=x).last_hidden_state

    # WanModel.forward with the audio adapter (multitalk_model.py), on the stock Wan submodules
    def model(self, x, t, context, clip_fea, audio):
        from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

        w, a, cfg = self.wan, self.audio, SMALL.transformer
        _, _, f, hh, ww = x.shape
        rope = WanRotaryPosEmbed(cfg.dim // cfg.num_heads, (1, 2, 2), 1024)(x)
        h = w.patch_embedding(x).flatten(2).transpose(1, 2)
        # sinusoidal_embedding_1d in float64, then time_embedding / time_projection (fp32 under autocast)
        ce, half = w.condition_embedder, w.condition_embedder.timesteps_proj.num_channels // 2
        phase = torch.outer(t.double(), torch.pow(10000, -torch.arange(half).to(torch.float64).div(half)))
        temb = ce.time_embedder(torch.cat([torch.cos(phase), torch.sin(phase)], dim=1).float())
        e0, ctx, ctx_img = ce.time_proj(torch.nn.functional.silu(temb)), ce.text_embedder(context), ce.image_embedder(clip_fea)
        e0 = e0.unflatten(1, (6, -1))
        ctx = torch.cat([ctx_img, ctx], dim=1)
        # the audio windows regrouped: frame 0's five rows; per later latent 4 frames → rows 0-2, 2, 2, 2-4
        lin = lambda v, name: torch.nn.functional.linear(v, a[f"{name}.weight"], a[f"{name}.bias"])  # noqa: E731
        first = audio[:, :1]
        later = audio[:, 1:].reshape(1, -1, 4, *audio.shape[2:])
        later = torch.cat([later[:, :, 0, :3], later[:, :, 1:3, 2], later[:, :, 3, 2:]], dim=2)
        p = torch.relu(torch.cat([lin(first.flatten(2), "audio_proj.proj1"), lin(later.flatten(2), "audio_proj.proj1_vf")], 1))
        p = lin(torch.relu(lin(p, "audio_proj.proj2")), "audio_proj.proj3").reshape(1, f, cfg.context_tokens, -1)
        tokens = torch.nn.functional.layer_norm(p, (p.shape[-1],), a["audio_proj.norm.weight"], a["audio_proj.norm.bias"])
        for i, block in enumerate(w.blocks):
            e = (block.scale_shift_table + e0).chunk(6, dim=1)
            h = h + block.attn1(block.norm1(h) * (1 + e[1]) + e[0], None, None, rope) * e[2]
            h = h + block.attn2(block.norm2(h), ctx, None, None)
            # SingleStreamAttention, one speaker: each latent frame's tokens attend to its audio tokens
            n = torch.nn.functional.layer_norm(h, (h.shape[-1],), a[f"blocks.{i}.norm_x.weight"],
                                               a[f"blocks.{i}.norm_x.bias"], eps=1e-6)
            q = lin(n, f"blocks.{i}.audio_cross_attn.q_linear").reshape(f, -1, cfg.num_heads, cfg.dim // cfg.num_heads)
            kv = lin(tokens[0], f"blocks.{i}.audio_cross_attn.kv_linear").reshape(f, -1, 2, cfg.num_heads, cfg.dim // cfg.num_heads)
            k, v = kv[:, :, 0], kv[:, :, 1]
            # softmax(q k^T / sqrt(d)) v (xformers' memory_efficient_attention in theirs; torch's fused kernel here)
            o = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                                 v.transpose(1, 2)).transpose(1, 2).reshape(1, -1, cfg.dim)
            h = h + lin(o, f"blocks.{i}.audio_cross_attn.proj")
            h = h + block.ffn(block.norm3(h) * (1 + e[4]) + e[3]) * e[5]
        shift, scale = (w.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
        out = w.proj_out(w.norm_out(h) * (1 + scale) + shift)
        out = out.reshape(1, f, hh // 2, ww // 2, 1, 2, 2, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return out.reshape(1, -1, f, hh, ww)


def recipe(stock: Stock, crops: np.ndarray, wav: np.ndarray, n: int, seed: int,
           text_guidance: float = 5.0) -> list[torch.Tensor]:
    """generate_infinitetalk, streaming, one speaker, on the bucket-sized frames: the latents of every chunk."""
    s = SMALL.sampling
    F, M, steps, shift = s.frame_num, s.motion_frame, 2, s.sample_shift
    wav, _ = loudness_normalised(wav)
    emb = stock.audio_embedding(wav, n)
    context, context_null = stock.text(DEFAULT_PROMPT), stock.text(NEGATIVE_PROMPT)
    g = torch.Generator().manual_seed(seed)
    t = torch.from_numpy(np.append(np.linspace(1000, 1, steps, dtype=np.float32), np.float32(0))) / 1000
    ts = shift * t / (1 + (shift - 1) * t) * 1000
    pixels = lambda a: torch.from_numpy(a).float().div(255).sub(0.5).mul(2).permute(3, 0, 1, 2)[None]  # noqa: E731
    start, out, cond_frame, colour_ref = 0, [], None, None
    while True:
        cond = pixels(crops[start:start + 1])  # the chunk's first source frame
        if colour_ref is None:
            colour_ref = cond[0, :, 0].permute(1, 2, 0).numpy()
        idx = (torch.arange(start, start + F)[:, None] + torch.arange(-2, 3)[None]).clamp(0, len(emb) - 1)
        audio = emb[idx][None]
        clip_fea = stock.clip_tokens(cond[:, :, 0])
        y = stock.encode(torch.cat([cond, torch.zeros(1, 3, F - 1, *cond.shape[3:])], dim=2))
        msk = torch.zeros(1, 4, *y.shape[2:])
        msk[:, :, 0] = 1
        y = torch.cat([msk, y], dim=1)
        motion = stock.encode(cond if cond_frame is None else cond_frame)
        m = 1 + (1 if cond_frame is None else M - 1) // 4
        latent = torch.randn(16, *y.shape[2:], generator=g)[None]
        if cond_frame is not None:
            torch.randn(motion.shape[1:], generator=g)  # add_noise of the motion frames, overwritten
        for i in range(steps):
            latent[:, :, :m] = motion
            x = torch.cat([latent, y], dim=1)
            c = stock.model(x, ts[i:i + 1], context, clip_fea, audio)
            if math.isclose(text_guidance, 1.0):  # two passes: the prompt kept, the audio dropped
                na = stock.model(x, ts[i:i + 1], context, clip_fea, torch.zeros_like(audio))
                pred = -(na + s.audio_guidance * (c - na))
            else:
                nt = stock.model(x, ts[i:i + 1], context_null, clip_fea, audio)
                un = stock.model(x, ts[i:i + 1], context_null, clip_fea, torch.zeros_like(audio))
                pred = -(un + text_guidance * (c - nt) + s.audio_guidance * (nt - un))
            latent = latent + pred * ((ts[i] - ts[i + 1]) / 1000)
            if cond_frame is not None:
                torch.randn(motion.shape[1:], generator=g)
            latent[:, :, :m] = motion
        out.append(latent)
        video = stock.decode(latent)
        video = torch.from_numpy(match_colours(video[0].permute(1, 2, 3, 0).numpy(), colour_ref, 1.0))
        video = video.permute(3, 0, 1, 2)[None]
        if start + F >= n:
            return out
        cond_frame = video[:, :, -M:]
        start += F - M
        if start + F >= len(emb):
            miss = start + F - len(emb) + 3
            emb = torch.cat([emb, emb[-miss:].flip(0)])


@pytest.fixture(scope="module")
def stock(weights):
    return Stock(weights)


@pytest.fixture(scope="module")
def two_chunks(engine):
    """24 frames: chunk 0 (frames 0-20, the one-chunk case: its reference is frame 0, its motion latent the
    reference's) and chunk 1 (frames 16-36, 5 motion frames = 2 latents from chunk 0's decoded, corrected end; its
    audio windows past frame 23 read the time-reversed tail)."""
    return run(engine, 24, seed=7)


def test_the_engine_computes_the_authors_recipe_for_one_and_two_chunks(two_chunks, stock):
    out, latents, crops, request = two_chunks
    with torch.no_grad():
        expected = recipe(stock, crops, request.audio, 24, seed=7)
    assert len(latents) == len(expected) == 2 and out.shape == (24, 32, 48, 3)
    for got, want in zip(latents, expected):
        assert got.shape == want.shape == (1, 16, 6, 4, 6)
        assert want.abs().mean() > 0.1  # not a degenerate comparison
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not torch.equal(latents[1][:, :, 2:], expected[0][:, :, 2:])


def test_the_seed_reproduces_the_output_and_the_audio_changes_it(two_chunks, engine):
    a = two_chunks[0]
    again, _, _, _ = run(engine, 24, seed=7)
    assert np.array_equal(a, again)  # bit for bit on a CPU
    other_audio, _, _, _ = run(engine, 21, seed=7, audio=speech(21, pitch=440.0))
    assert np.abs(a[:21].astype(int) - other_audio.astype(int)).mean() > 1  # same seed, other audio


def test_text_guidance_one_is_the_authors_two_pass_form(engine, stock):
    sampling = engine.sampler.sampling
    engine.sampler.sampling = sampling.with_(text_guidance=1.0)
    try:
        _, latents, crops, request = run(engine, 21, seed=9)
    finally:
        engine.sampler.sampling = sampling
    with torch.no_grad():
        expected = recipe(stock, crops, request.audio, 21, seed=9, text_guidance=1.0)
    assert len(latents) == len(expected) == 1
    torch.testing.assert_close(latents[0], expected[0], rtol=0, atol=0)


def test_bf16_keeps_the_authors_fp32_regions():
    """The authors build the model in bf16 and run the time embedding (a float64 sinusoid) and the output head under
    ``autocast(float32)``: fp32 arithmetic on the bf16 weights. Ours equals that to the bit; diffusers' stock
    embedder (fp32 sinusoid, bf16 projection) does not."""
    from lipsync.model.devices import cast_module
    from lipsync.model.infinitetalk.transformer import InfiniteTalkTransformer

    torch.manual_seed(0)
    model = cast_module(InfiniteTalkTransformer(SMALL.transformer).eval(), torch.bfloat16)
    ce, wan = model.wan.condition_embedder, model.wan
    up = lambda lin, x: torch.nn.functional.linear(x, lin.weight.float(), lin.bias.float())  # noqa: E731  (autocast fp32)
    t = torch.tensor([999.4, 3.7])
    half = ce.timesteps_proj.num_channels // 2
    phase = torch.outer(t.double(), torch.pow(10000, -torch.arange(half).double().div(half)))
    sin = torch.cat([torch.cos(phase), torch.sin(phase)], dim=1).float()
    temb_want = up(ce.time_embedder.linear_2, torch.nn.functional.silu(up(ce.time_embedder.linear_1, sin)))
    with torch.no_grad():
        temb, tproj = model.time_embedding(t)
        torch.testing.assert_close(temb, temb_want, rtol=0, atol=0)
        torch.testing.assert_close(tproj, up(ce.time_proj, torch.nn.functional.silu(temb_want)), rtol=0, atol=0)
        assert temb.dtype == tproj.dtype == torch.float32
        stock_temb, stock_proj, _, _ = ce(t, torch.zeros(2, 4, SMALL.transformer.text_dim, dtype=torch.bfloat16))
        assert stock_proj.dtype == torch.bfloat16 and (stock_proj.float() - tproj).abs().max() > 1e-4

        x = torch.randn(2, 6, SMALL.transformer.dim).to(torch.bfloat16)
        out = model.head(x, temb)
        shift, scale = (wan.scale_shift_table.float() + temb[:, None]).chunk(2, dim=1)
        want = up(wan.proj_out, wan.norm_out(x.float()) * (1 + scale) + shift)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, want, rtol=0, atol=0)
