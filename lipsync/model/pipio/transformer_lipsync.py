"""The lip-sync diffusion transformer: diffusers' LTX-Video DiT plus audio, face-ID and inpainting conditioning.

Every module of the stock ``LTXVideoTransformer3DModel`` keeps its name and shape here (``proj_in``,
``time_embed``, ``caption_projection``, ``transformer_blocks.N.{norm1,attn1,norm2,attn2,ff,scale_shift_table}``,
``norm_out``, ``proj_out``, ``scale_shift_table``), so a stock LTX-Video checkpoint loads key for key. The lip-sync
modules are new names only:

- ``cond_proj_in``: masked-video latents + latent mouth mask -> model width, *added* to ``proj_in``'s output.
  (Equivalent to widening ``proj_in`` to 2C+1 inputs with a zero-initialised slice, but it keeps ``proj_in``'s
  stock shape, so the stock weight loads unchanged.)
- ``audio_projection`` and per block ``attn_audio`` + ``audio_gate``: audio cross-attention, local in time
  (a latent frame's tokens attend only to that frame's audio tokens, whose window already spans neighbouring
  video frames), gated by ``tanh(gate)``.
- ``id_projection`` and per block ``attn_id`` + ``id_gate``: IP-Adapter-style decoupled identity cross-attention,
  added with the runtime scale ``face_id_cond_strength / 8``.

Appearance references are clean tokens appended to the video tokens (per-token timestep 0, RoPE time outside
the clip) with a key logit bias ``log(strength / n_references)`` in self-attention, which equals repeating each
reference key ``strength / n`` times in the softmax.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import PixArtAlphaTextProjection
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import AdaLayerNormSingle, RMSNorm
from diffusers.models.transformers.transformer_ltx import (
    LTXAttention,
    LTXVideoRotaryPosEmbed,
    LTXVideoTransformerBlock,
)

from lipsync.model.pipio.reference_attention import ReferenceBiasAttnProcessor

# Names of the modules that a stock LTX-Video checkpoint does not have (see ``new_module_prefixes``).
LIPSYNC_MODULES = ("cond_proj_in", "audio_projection", "id_projection", "attn_audio", "audio_gate", "attn_id",
                   "id_gate")


@dataclass
class LipSyncConditioning:
    """Per-call conditioning shared by all blocks of one forward pass (all already on the model's device).

    Attributes:
        text: (B, L_text, caption_channels) T5 hidden states.
        text_mask: (B, L_text) 1 for real tokens, 0 for padding.
        audio: (B, F, audio_steps_per_frame, audio_num_layers, audio_dim) encoder features per latent frame of the
            block (zeros = null audio, used for classifier-free guidance).
        id_embeds: (B, id_embed_dim) identity embedding or None (branch skipped).
        id_scale: multiplier of the identity branch (``face_id_cond_strength / 8``); 0 skips it.
        references: (B, S_ref, C) clean appearance reference latent tokens, or None.
        reference_coords: (B, 3, S_ref) their RoPE coordinates (time in seconds, y/x in pixels).
        reference_bias: logit bias added to reference keys in self-attention (``log(strength / n)``).
    """

    text: torch.Tensor
    text_mask: torch.Tensor
    audio: torch.Tensor
    id_embeds: torch.Tensor | None = None
    id_scale: float = 0.0
    references: torch.Tensor | None = None
    reference_coords: torch.Tensor | None = None
    reference_bias: float = 0.0


class LipSyncAudioProjection(nn.Module):
    """Whisper hidden states of one latent frame's window -> ``audio_tokens_per_frame`` tokens of model width.

    Layers are mixed with learned softmax weights (LatentSync/MuseTalk use all hidden states); consecutive time
    steps are grouped into tokens so each token keeps its place in the window.
    """

    def __init__(self, audio_dim: int, num_layers: int, steps_per_frame: int, tokens_per_frame: int, dim: int):
        super().__init__()
        if steps_per_frame % tokens_per_frame:
            raise ValueError(
                f"audio_steps_per_frame ({steps_per_frame}) must be a multiple of "
                f"audio_tokens_per_frame ({tokens_per_frame})"
            )
        self.tokens_per_frame = tokens_per_frame
        self.layer_logits = nn.Parameter(torch.zeros(num_layers))
        group = steps_per_frame // tokens_per_frame
        self.proj = nn.Sequential(nn.Linear(group * audio_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.pos_embed = nn.Parameter(torch.randn(tokens_per_frame, dim) / dim**0.5)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # features: (B, F, steps, layers, audio_dim) -> (B, F, tokens, dim)
        weights = self.layer_logits.softmax(0).to(features.dtype)
        mixed = torch.einsum("bfsld,l->bfsd", features, weights)
        b, f, s, d = mixed.shape
        grouped = mixed.reshape(b, f, self.tokens_per_frame, (s // self.tokens_per_frame) * d)
        return self.proj(grouped) + self.pos_embed.to(features.dtype)


class LipSyncIdProjection(nn.Module):
    """Face-ID embedding (ArcFace 512-d or dlib 128-d) -> ``num_tokens`` identity tokens (IP-Adapter-FaceID style)."""

    def __init__(self, embed_dim: int, num_tokens: int, dim: int):
        super().__init__()
        self.num_tokens = num_tokens
        self.proj = nn.Sequential(nn.Linear(embed_dim, dim * 2), nn.GELU(approximate="tanh"),
                                  nn.Linear(dim * 2, dim * num_tokens))
        self.norm = nn.LayerNorm(dim)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(embeds).reshape(embeds.shape[0], self.num_tokens, -1)
        return self.norm(tokens)


class LipSyncTransformerBlock(LTXVideoTransformerBlock):
    """``LTXVideoTransformerBlock`` + audio and identity cross-attention + split feed-forward.

    Order: AdaLN self-attention (video + reference tokens, RoPE, reference-key bias) -> text cross-attention
    (stock, ungated) -> audio cross-attention (video tokens, per latent frame, tanh-gated) -> identity
    cross-attention (video tokens, scaled) -> AdaLN feed-forward, run over ``ff_num_splits`` token chunks.
    """

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, cross_attention_dim: int,
                 qk_norm: str = "rms_norm_across_heads", activation_fn: str = "gelu-approximate",
                 attention_bias: bool = True, attention_out_bias: bool = True, eps: float = 1e-6,
                 elementwise_affine: bool = False, zero_init_gates: bool = True):
        super().__init__(dim, num_attention_heads, attention_head_dim, cross_attention_dim, qk_norm, activation_fn,
                         attention_bias, attention_out_bias, eps, elementwise_affine)
        attn_kwargs = dict(query_dim=dim, heads=num_attention_heads, kv_heads=num_attention_heads,
                           dim_head=attention_head_dim, bias=attention_bias, cross_attention_dim=dim,
                           out_bias=attention_out_bias, qk_norm=qk_norm)
        self.attn1.set_processor(ReferenceBiasAttnProcessor())  # the reference bias without a mask: flash SDPA
        self.norm_audio = RMSNorm(dim, eps=eps, elementwise_affine=False)
        self.attn_audio = LTXAttention(**attn_kwargs)
        self.norm_id = RMSNorm(dim, eps=eps, elementwise_affine=False)
        self.attn_id = LTXAttention(**attn_kwargs)
        # Zero gates keep a stock LTX checkpoint's behaviour exactly at the start of fine-tuning
        # (Flamingo/ControlNet trick); the tiny random preset uses 1 so every path is exercised by tests.
        gate_init = 0.0 if zero_init_gates else 1.0
        self.audio_gate = nn.Parameter(torch.full((dim,), gate_init))
        self.id_gate = nn.Parameter(torch.full((dim,), gate_init))

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, temb: torch.Tensor,
                image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
                encoder_attention_mask: torch.Tensor | None = None, *, audio_tokens: torch.Tensor,
                num_video_tokens: int, num_frames: int, id_tokens: torch.Tensor | None = None,
                id_scale: float = 0.0, reference_bias: tuple[int, float | torch.Tensor] | None = None,
                ff_num_splits: int = 1) -> torch.Tensor:
        hidden_states, ff_input, gate_mlp = self.attend(
            hidden_states, encoder_hidden_states, temb, image_rotary_emb, encoder_attention_mask,
            audio_tokens=audio_tokens, num_video_tokens=num_video_tokens, num_frames=num_frames,
            id_tokens=id_tokens, id_scale=id_scale, reference_bias=reference_bias)
        # The feed-forward is per token, so splitting the sequence gives the same result with ~1/k of the
        # 4x-wide hidden activation alive at once (tensor_split: no divisibility constraint). The split loop
        # stays outside ``attend`` so that ``torch.compile`` (pipio/engine.py) sees no split count: each
        # chunk goes through ``self.ff``, compiled on its own, and a new count never recompiles.
        chunks = [chunk for chunk in ff_input.tensor_split(ff_num_splits, dim=1) if chunk.shape[1]]
        ff_out = torch.cat([self.ff(chunk) for chunk in chunks], dim=1)
        return hidden_states + ff_out * gate_mlp

    def attend(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, temb: torch.Tensor,
               image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
               encoder_attention_mask: torch.Tensor | None = None, *, audio_tokens: torch.Tensor,
               num_video_tokens: int, num_frames: int, id_tokens: torch.Tensor | None = None,
               id_scale: float = 0.0, reference_bias: tuple[int, float | torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Everything before the feed-forward: (hidden states, the feed-forward's normalised input, its gate)."""
        batch_size = hidden_states.size(0)
        ada = self.scale_shift_table[None, None].to(temb.device) + temb.reshape(batch_size, temb.size(1), 6, -1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = ada.unbind(dim=2)

        norm_hidden_states = self.norm1(hidden_states) * (1 + scale_msa) + shift_msa
        attn_out = self.attn1(norm_hidden_states, None, image_rotary_emb=image_rotary_emb,
                              reference_bias=reference_bias)
        hidden_states = hidden_states + attn_out * gate_msa
        hidden_states = hidden_states + self.attn2(hidden_states, encoder_hidden_states,
                                                   attention_mask=encoder_attention_mask)

        # Audio and identity act on the clip's tokens only; reference tokens are frozen context.
        video, refs = hidden_states[:, :num_video_tokens], hidden_states[:, num_video_tokens:]
        # (B, F*HW, D) -> (B*F, HW, D): each latent frame attends to its own audio tokens (B*F, N_a, D).
        per_frame = self.norm_audio(video).reshape(batch_size * num_frames, -1, video.size(-1))
        audio = self.attn_audio(per_frame, audio_tokens.flatten(0, 1)).reshape_as(video)
        video = video + torch.tanh(self.audio_gate) * audio
        if id_tokens is not None and id_scale != 0.0:
            video = video + id_scale * torch.tanh(self.id_gate) * self.attn_id(self.norm_id(video), id_tokens)
        hidden_states = torch.cat([video, refs], dim=1)

        return hidden_states, self.norm2(hidden_states) * (1 + scale_mlp) + shift_mlp, gate_mlp


class LipSyncTransformer3DModel(ModelMixin, ConfigMixin):
    r"""LTX-Video DiT with lip-sync conditioning. Stock ``LTXVideoTransformer3DModel`` arguments keep their
    names and defaults (LTX-Video 2B); the rest configure the new modules.

    Args:
        in_channels / out_channels / patch_size / patch_size_t / num_attention_heads / attention_head_dim /
        cross_attention_dim / num_layers / activation_fn / qk_norm / norm_elementwise_affine / norm_eps /
        caption_channels / attention_bias / attention_out_bias: as ``LTXVideoTransformer3DModel``.
        audio_dim (`int`, 384): width of the audio encoder's hidden states (whisper-tiny: 384).
        audio_num_layers (`int`, 5): hidden states used (embeddings + encoder layers; whisper-tiny: 1 + 4).
        audio_steps_per_frame (`int`, 32): feature steps resampled over each latent frame's audio window.
        audio_tokens_per_frame (`int`, 16): audio tokens per latent frame.
        id_embed_dim (`int`, 512): face-ID embedding width (ArcFace 512, dlib 128).
        num_id_tokens (`int`, 4): identity tokens.
        zero_init_gates (`bool`, True): new branches start as no-ops (fine-tuning from LTX-Video).
    """

    _supports_gradient_checkpointing = True  # per block (training: ``enable_gradient_checkpointing()``)
    _skip_layerwise_casting_patterns = ["norm"]
    # Regional torch.compile: ``model.compile_repeated_blocks()`` compiles one block and reuses it for all.
    _repeated_blocks = ["LipSyncTransformerBlock"]

    @register_to_config
    def __init__(self, in_channels: int = 128, out_channels: int = 128, patch_size: int = 1, patch_size_t: int = 1,
                 num_attention_heads: int = 32, attention_head_dim: int = 64, cross_attention_dim: int = 2048,
                 num_layers: int = 28, activation_fn: str = "gelu-approximate", qk_norm: str = "rms_norm_across_heads",
                 norm_elementwise_affine: bool = False, norm_eps: float = 1e-6, caption_channels: int = 4096,
                 attention_bias: bool = True, attention_out_bias: bool = True, audio_dim: int = 384,
                 audio_num_layers: int = 5, audio_steps_per_frame: int = 32, audio_tokens_per_frame: int = 16,
                 id_embed_dim: int = 512, num_id_tokens: int = 4, zero_init_gates: bool = True) -> None:
        super().__init__()
        if patch_size != 1 or patch_size_t != 1:
            # LTX-Video ships patch 1 (the VAE already patchifies); token packing here assumes it.
            raise ValueError(f"only patch_size=1 and patch_size_t=1 are supported, got {patch_size}, {patch_size_t}")
        out_channels = out_channels or in_channels
        inner_dim = num_attention_heads * attention_head_dim

        # --- stock LTX-Video modules (same names and shapes) ---
        self.proj_in = nn.Linear(in_channels, inner_dim)
        self.scale_shift_table = nn.Parameter(torch.randn(2, inner_dim) / inner_dim**0.5)
        self.time_embed = AdaLayerNormSingle(inner_dim, use_additional_conditions=False)
        self.caption_projection = PixArtAlphaTextProjection(in_features=caption_channels, hidden_size=inner_dim)
        self.rope = LTXVideoRotaryPosEmbed(dim=inner_dim, base_num_frames=20, base_height=2048, base_width=2048,
                                           patch_size=patch_size, patch_size_t=patch_size_t, theta=10000.0)
        self.transformer_blocks = nn.ModuleList([
            LipSyncTransformerBlock(inner_dim, num_attention_heads, attention_head_dim, cross_attention_dim, qk_norm,
                                    activation_fn, attention_bias, attention_out_bias, norm_eps,
                                    norm_elementwise_affine, zero_init_gates)
            for _ in range(num_layers)
        ])
        self.norm_out = nn.LayerNorm(inner_dim, eps=1e-6, elementwise_affine=False)
        self.proj_out = nn.Linear(inner_dim, out_channels)

        # --- lip-sync modules ---
        self.gradient_checkpointing = False
        self.cond_proj_in = nn.Linear(in_channels + 1, inner_dim)
        if zero_init_gates:
            nn.init.zeros_(self.cond_proj_in.weight)
            nn.init.zeros_(self.cond_proj_in.bias)
        self.audio_projection = LipSyncAudioProjection(audio_dim, audio_num_layers, audio_steps_per_frame,
                                                       audio_tokens_per_frame, inner_dim)
        self.id_projection = LipSyncIdProjection(id_embed_dim, num_id_tokens, inner_dim)

    @staticmethod
    def new_module_prefixes() -> tuple[str, ...]:
        """Parameter-name fragments that exist here but not in a stock LTX-Video checkpoint."""
        return LIPSYNC_MODULES

    def forward(self, hidden_states: torch.Tensor, cond_states: torch.Tensor, timestep: torch.Tensor,
                video_coords: torch.Tensor, num_frames: int, conditioning: LipSyncConditioning,
                ff_num_splits: int = 1) -> torch.Tensor:
        """Predict the flow-matching velocity of one block of video latents.

        Args:
            hidden_states: (B, F*H*W, C) noisy latent tokens, frame-major then row then column.
            cond_states: (B, F*H*W, C+1) masked-video latents and the latent mouth mask (1 = regenerate).
            timestep: (B,) timestep in [0, 1000] of the video tokens (reference tokens always get 0).
            video_coords: (B, 3, F*H*W) RoPE coordinates: time in seconds, y and x in pixels.
            num_frames: F, latent frames in this block.
            conditioning: text, audio (for these F frames), identity and references.
            ff_num_splits: number of token chunks for every feed-forward.

        Returns:
            (B, F*H*W, out_channels) velocity for the video tokens.
        """
        batch_size, num_video_tokens, _ = hidden_states.shape
        x = self.proj_in(hidden_states) + self.cond_proj_in(cond_states)
        coords = video_coords
        timesteps = timestep.reshape(batch_size, 1).expand(batch_size, num_video_tokens)
        reference_bias = None  # (first reference token, logit bias on the reference keys)
        if conditioning.references is not None:
            refs = conditioning.references
            x = torch.cat([x, self.proj_in(refs)], dim=1)
            coords = torch.cat([video_coords, conditioning.reference_coords], dim=2)
            # Clean conditioning tokens carry timestep 0 (LTXConditionPipeline's per-token timestep).
            timesteps = torch.cat([timesteps, timesteps.new_zeros(batch_size, refs.shape[1])], dim=1)
            if conditioning.reference_bias != 0.0:
                # A tensor, not a float: torch.compile's backends specialise a float used this way, so every
                # strength / reference count recompiled. fp64 keeps the exact value the float had.
                bias = torch.full((), float(conditioning.reference_bias), dtype=torch.float64, device=x.device)
                reference_bias = (num_video_tokens, bias)

        image_rotary_emb = self.rope(x, video_coords=coords)
        text_bias = (1 - conditioning.text_mask.to(x.dtype)) * -10000.0  # as LTX: padded text tokens masked out
        text = self.caption_projection(conditioning.text)
        temb, embedded_timestep = self.time_embed(timesteps.flatten(), batch_size=batch_size, hidden_dtype=x.dtype)
        temb = temb.view(batch_size, -1, temb.size(-1))
        embedded_timestep = embedded_timestep.view(batch_size, -1, embedded_timestep.size(-1))
        audio_tokens = self.audio_projection(conditioning.audio.to(x.dtype))
        id_tokens = None
        if conditioning.id_embeds is not None and conditioning.id_scale != 0.0:
            id_tokens = self.id_projection(conditioning.id_embeds.to(x.dtype))

        for block in self.transformer_blocks:
            kwargs = dict(audio_tokens=audio_tokens, num_video_tokens=num_video_tokens, num_frames=num_frames,
                          id_tokens=id_tokens, id_scale=conditioning.id_scale,
                          reference_bias=reference_bias, ff_num_splits=ff_num_splits)
            if torch.is_grad_enabled() and self.gradient_checkpointing:  # recompute the block in backward
                x = self._gradient_checkpointing_func(functools.partial(block, **kwargs), x, text, temb,
                                                      image_rotary_emb, text_bias.unsqueeze(1))
            else:
                x = block(x, text, temb, image_rotary_emb, text_bias.unsqueeze(1), **kwargs)

        x, embedded_timestep = x[:, :num_video_tokens], embedded_timestep[:, :num_video_tokens]
        shift, scale = (self.scale_shift_table[None, None] + embedded_timestep[:, :, None]).unbind(dim=2)
        x = self.norm_out(x) * (1 + scale) + shift
        return self.proj_out(x)


def reference_logit_bias(strength: int, num_references: int) -> float:
    """``log(strength / n)``: adding log(m) to a key's logit equals repeating that key m times in the softmax."""
    return math.log(strength / num_references) if num_references > 0 else 0.0
