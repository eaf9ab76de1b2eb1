"""The InfiniteTalk transformer: diffusers' stock ``WanTransformer3DModel`` (Wan2.1-I2V-14B, under ``wan``) with
the audio path written here — the audio projection (``AudioProjection``) and, in every block, a layer-normed
cross-attention from the video tokens of each latent frame to that frame's audio tokens (``AudioCrossAttention``),
added between the text/image cross-attention and the feed-forward, as ``wan/modules/multitalk_model.py`` does.

Our ``forward`` is the stock one with that one insertion: it calls the stock submodules (patch embedding,
condition embedder, each block's norms, ``attn1``, ``attn2``, ``ffn``, modulation tables, output head) with the
stock formulas, including the regions the authors keep in fp32 (modulation, norms, gated residuals, the time
embedding with its float64 sinusoid, the output head). Single speaker only:
the authors' two-speaker path (RoPE over speaker classes from the reference attention map) is not implemented.
The RoPE tables are computed here, outside the module tree, so that the model can be built on ``meta`` and
loaded without a random initialisation (diffusers keeps them as non-persistent buffers).
"""

from __future__ import annotations

import torch
from diffusers.models.normalization import FP32LayerNorm
from torch import nn

from lipsync.model.infinitetalk.config import TransformerConfig


class AudioProjection(nn.Module):
    """``AudioProjModel``: per latent frame, the wav2vec2 windows (first latent: 1 frame x 5; later latents: 4
    frames, the first/last half-windows and the middle frames' centres = 8 rows) → 32 tokens of ``output_dim``."""

    def __init__(self, c: TransformerConfig):
        super().__init__()
        per_row = c.audio_layers * c.audio_channels
        self.context_tokens, self.output_dim = c.context_tokens, c.output_dim
        self.proj1 = nn.Linear(c.audio_window * per_row, c.intermediate_dim)
        self.proj1_vf = nn.Linear((c.audio_window + c.vae_scale - 1) * per_row, c.intermediate_dim)
        self.proj2 = nn.Linear(c.intermediate_dim, c.intermediate_dim)
        self.proj3 = nn.Linear(c.intermediate_dim, c.context_tokens * c.output_dim)
        self.norm = FP32LayerNorm(c.output_dim, eps=1e-5) if c.norm_output_audio else nn.Identity()

    def forward(self, first: torch.Tensor, later: torch.Tensor) -> torch.Tensor:
        """first (B, 1, 5, L, C), later (B, n, 8, L, C) → (B, 1 + n, tokens, output_dim)."""
        b = first.shape[0]
        a = torch.relu(self.proj1(first.flatten(2)))
        v = torch.relu(self.proj1_vf(later.flatten(2)))
        x = torch.relu(self.proj2(torch.cat([a, v], dim=1)))
        x = self.proj3(x).unflatten(-1, (self.context_tokens, self.output_dim))
        return self.norm(x).reshape(b, -1, self.context_tokens, self.output_dim)


class AudioCrossAttention(nn.Module):
    """``SingleStreamAttention`` with one speaker: queries of one latent frame's tokens, keys/values from its
    audio tokens (no q/k norm, biases on q and kv)."""

    def __init__(self, dim: int, audio_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(audio_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, audio: torch.Tensor, frames: int) -> torch.Tensor:
        """x (B, F·S, D) video tokens; audio (B, F, M, A) → (B, F·S, D)."""
        b, n, d = x.shape
        h = self.num_heads
        x = x.reshape(b * frames, n // frames, d)
        q = self.q_linear(x).unflatten(-1, (h, -1)).transpose(1, 2)
        kv = self.kv_linear(audio.flatten(0, 1)).unflatten(-1, (2, h, -1))
        k, v = kv.unbind(2)
        out = nn.functional.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2))
        out = self.proj(out.transpose(1, 2).flatten(2))
        return out.reshape(b, n, d)


def audio_rows(windows: torch.Tensor, vae_scale: int, audio_window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' regrouping of per-frame windows (B, F, 5, L, C), F = 4n + 1, into the adapter's inputs:
    frame 0's window, and per later latent its 4 frames' rows — first frame: window rows 0..2, middle frames:
    the centre row, last frame: rows 2..4 (``WanModel.forward``)."""
    first = windows[:, :1]
    later = windows[:, 1:].unflatten(1, (-1, vae_scale))
    mid = audio_window // 2
    parts = [later[:, :, :1, : mid + 1], later[:, :, 1:-1, mid : mid + 1], later[:, :, -1:, mid:]]
    later = torch.cat([p.flatten(2, 3) for p in parts], dim=2)
    return first, later


class BlockStep(nn.Module):
    """One stock Wan block with InfiniteTalk's audio cross-attention inserted after its text/image
    cross-attention: the unit model offload moves to the device and back."""

    def __init__(self, block: nn.Module, norm: nn.Module, attn: AudioCrossAttention):
        super().__init__()
        self.block, self.norm, self.attn = block, norm, attn

    def forward(self, x, tproj, context, audio, rotary, frames: int) -> torch.Tensor:
        block = self.block
        shift, scale, gate, c_shift, c_scale, c_gate = (block.scale_shift_table + tproj.float()).chunk(6, dim=1)
        y = (block.norm1(x.float()) * (1 + scale) + shift).type_as(x)
        x = (x.float() + block.attn1(y, None, None, rotary) * gate).type_as(x)
        x = x + block.attn2(block.norm2(x.float()).type_as(x), context, None, None)
        x = x + self.attn(self.norm(x), audio, frames)
        y = (block.norm3(x.float()) * (1 + c_scale) + c_shift).type_as(x)
        return (x.float() + block.ffn(y).float() * c_gate).type_as(x)


class Blocks(nn.Module):
    """The blocks in order. Not a child of the transformer (its state-dict names stay the checkpoint's): a view
    of the same modules, which diffusers' group offloading hooks per ``BlockStep``."""

    def __init__(self, steps: list[BlockStep]):
        super().__init__()
        self.steps = nn.ModuleList(steps)

    def forward(self, x, tproj, context, audio, rotary, frames: int) -> torch.Tensor:
        for step in self.steps:
            x = step(x, tproj, context, audio, rotary, frames)
        return x


class InfiniteTalkTransformer(nn.Module):
    """``wan`` (stock) + ``audio_proj`` + ``audio_norm[i]`` / ``audio_attn[i]`` per block."""

    _keep_in_fp32_modules = ["norm1", "norm2", "norm3", "norm_out", "audio_norm"]
    """Kept in fp32 when the rest is fp16 (``lipsync.model.devices.cast_module``), as diffusers keeps them. The time
    embedding and the output head are computed in fp32 from the run dtype's weights (``time_embedding``, ``head``),
    as the authors' model, built in the run dtype, computes them under ``autocast(float32)``."""

    def __init__(self, config: TransformerConfig):
        from diffusers import WanTransformer3DModel

        super().__init__()
        self.config = config
        self.wan = WanTransformer3DModel(**config.diffusers_kwargs())
        del self.wan.rope  # non-persistent tables: computed in ``rotary`` instead
        self.audio_proj = AudioProjection(config)
        self.audio_norm = nn.ModuleList(FP32LayerNorm(config.dim, eps=config.eps) for _ in range(config.num_layers))
        self.audio_attn = nn.ModuleList(AudioCrossAttention(config.dim, config.output_dim, config.num_heads)
                                        for _ in range(config.num_layers))
        object.__setattr__(self, "_rope_cache", {})
        object.__setattr__(self, "blocks", Blocks([BlockStep(b, n, a) for b, n, a in
                                                   zip(self.wan.blocks, self.audio_norm, self.audio_attn)]))
        self.offloaded = False

    def offload_blocks(self, device: str | torch.device) -> None:
        """Model offload, for a card smaller than the model: the blocks' weights (98 % of them) stay in host
        memory and each block comes to ``device`` as it runs, the next one copied on a side stream meanwhile
        (diffusers' group offloading, block level, from pinned memory); the embedders, the audio projection
        and the head live on ``device``. Costs one host-to-device copy of the blocks per transformer call."""
        from diffusers.hooks import apply_group_offloading

        cuda = torch.device(device).type == "cuda" and _streams_work()
        self.to("cpu")
        apply_group_offloading(self.blocks, onload_device=torch.device(device), offload_device=torch.device("cpu"),
                               offload_type="block_level", num_blocks_per_group=1, use_stream=cuda,
                               record_stream=cuda, non_blocking=cuda)
        wan = self.wan
        for module in (wan.patch_embedding, wan.condition_embedder, wan.norm_out, wan.proj_out, self.audio_proj):
            module.to(device)
        wan.scale_shift_table.data = wan.scale_shift_table.data.to(device)
        self.offloaded = True

    def rotary(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """diffusers' ``WanRotaryPosEmbed`` tables for this latent shape, made on the CPU once and cached."""
        from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

        key = (tuple(hidden_states.shape[2:]), hidden_states.device)
        if key not in self._rope_cache:
            c = self.config
            with torch.device("cpu"):
                rope = WanRotaryPosEmbed(c.dim // c.num_heads, (1, 2, 2), 1024)
                cos, sin = rope(torch.empty((1, 1, *hidden_states.shape[2:]), device="meta"))
            self._rope_cache.clear()
            self._rope_cache[key] = (cos.to(hidden_states.device), sin.to(hidden_states.device))
        return self._rope_cache[key]

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, image: torch.Tensor,
                audio_windows: torch.Tensor) -> torch.Tensor:
        """Velocity-sign prediction (the authors negate it in the sampler).

        latents (B, 36, F, h, w) = [noisy 16 | mask 4 | condition 16]; timestep (B,); text (B, 512, text_dim)
        zero-padded umT5 states; image (B, N, image_dim) CLIP tokens; audio_windows (B, 4F-3, 5, L, C) per frame.
        """
        wan, c = self.wan, self.config
        b, _, f, h, w = latents.shape
        rotary = self.rotary(latents)
        x = wan.patch_embedding(latents.to(wan.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2).contiguous()
        temb, tproj = self.time_embedding(timestep)
        tproj = tproj.unflatten(1, (6, -1))
        embed = wan.condition_embedder
        context = torch.cat([embed.image_embedder(image), embed.text_embedder(text)], dim=1)
        first, later = audio_rows(audio_windows.to(x.dtype), c.vae_scale, c.audio_window)
        audio = self.audio_proj(first, later)  # (B, F, tokens, output_dim)
        x = self.blocks(x, tproj, context, audio, rotary, f)
        x = self.head(x, temb)
        x = x.reshape(b, f, h // 2, w // 2, 1, 2, 2, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def time_embedding(self, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(temb, the six modulations) in fp32, as the authors' ``sinusoidal_embedding_1d`` (float64) and
        ``time_embedding`` / ``time_projection`` under ``autocast(float32)``: the stock modules' weights upcast.
        (diffusers' ``Timesteps`` makes the sinusoid in fp32: at t near 1000 its phases are off by ~1e-4 rad.)"""
        embed = self.wan.condition_embedder
        half = embed.timesteps_proj.num_channels // 2
        position = timestep.to(torch.float64)
        phases = torch.outer(position, torch.pow(10000, -torch.arange(half, dtype=torch.float64,
                                                                       device=position.device).div(half)))
        x = torch.cat([torch.cos(phases), torch.sin(phases)], dim=1).float()
        mlp = embed.time_embedder
        temb = _linear32(torch.nn.functional.silu(_linear32(x, mlp.linear_1)), mlp.linear_2)
        return temb, _linear32(torch.nn.functional.silu(temb), embed.time_proj)

    def head(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """The output head in fp32 (the authors' ``Head`` under ``autocast(float32)``): modulated norm, then the
        projection with its weights upcast."""
        wan = self.wan
        shift, scale = (wan.scale_shift_table.float() + temb.unsqueeze(1)).chunk(2, dim=1)
        return _linear32(wan.norm_out(x.float()) * (1 + scale) + shift, wan.proj_out)


def _streams_work() -> bool:
    """A CUDA stream can be made (not on an emulated device: there the copies are synchronous)."""
    try:
        torch.cuda.Stream()
    except RuntimeError:
        return False
    return True


def _linear32(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """``linear`` computed in fp32 whatever its weights' dtype (what autocast(float32) does to a bf16 Linear)."""
    return nn.functional.linear(x.float(), linear.weight.float(), linear.bias.float())
