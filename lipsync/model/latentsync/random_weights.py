"""Random LatentSync weights written in exactly the published layout (tests, benchmarks): ``latentsync_unet.pt``
({global_step, state_dict}, the real key names), ``whisper/tiny.pt`` (OpenAI format: dims + model_state_dict,
decoder included), ``sd-vae/`` (diffusers AutoencoderKL), and ``unet_config.yaml`` (published format).

The published model starts ``conv_in``, ``conv_out`` and the motion modules' output projections at zero; here
they are re-randomised so a test exercises every layer. ``small`` keeps the published block structure (four
levels, cross-attention down/up blocks, motion modules at every resolution, 16-frame segments) at small widths.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from lipsync.model.latentsync.config import CONFIG_DIR

SMALL_MODEL = {"block_out_channels": [32, 32, 32, 32], "cross_attention_dim": 32}
SMALL_WHISPER = {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 64, "n_audio_head": 2, "n_audio_layer": 2,
                 "n_vocab": 64, "n_text_ctx": 16, "n_text_state": 64, "n_text_head": 2, "n_text_layer": 1}
TINY_WHISPER = {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 384, "n_audio_head": 6, "n_audio_layer": 4,
                "n_vocab": 51865, "n_text_ctx": 448, "n_text_state": 384, "n_text_head": 6, "n_text_layer": 4}
"""The published whisper tiny's dims (OpenAI)."""


def openai_whisper_state(dims: dict, generator: torch.Generator, *, decoder: bool = True) -> dict[str, torch.Tensor]:
    """A random state dict with OpenAI whisper's key names and shapes for ``dims``."""
    def rnd(*shape):
        return torch.randn(*shape, generator=generator) * 0.05

    def attn(prefix, d):
        return {f"{prefix}.query.weight": rnd(d, d), f"{prefix}.query.bias": rnd(d), f"{prefix}.key.weight": rnd(d, d),
                f"{prefix}.value.weight": rnd(d, d), f"{prefix}.value.bias": rnd(d), f"{prefix}.out.weight": rnd(d, d),
                f"{prefix}.out.bias": rnd(d)}

    def ln(prefix, d):
        return {f"{prefix}.weight": 1 + rnd(d), f"{prefix}.bias": rnd(d)}

    def block(prefix, d, cross):
        out = {**attn(f"{prefix}.attn", d), **ln(f"{prefix}.attn_ln", d)}
        if cross:
            out.update({**attn(f"{prefix}.cross_attn", d), **ln(f"{prefix}.cross_attn_ln", d)})
        out.update({f"{prefix}.mlp.0.weight": rnd(4 * d, d), f"{prefix}.mlp.0.bias": rnd(4 * d),
                    f"{prefix}.mlp.2.weight": rnd(d, 4 * d), f"{prefix}.mlp.2.bias": rnd(d),
                    **ln(f"{prefix}.mlp_ln", d)})
        return out

    d = dims["n_audio_state"]
    state = {"encoder.conv1.weight": rnd(d, dims["n_mels"], 3), "encoder.conv1.bias": rnd(d),
             "encoder.conv2.weight": rnd(d, d, 3), "encoder.conv2.bias": rnd(d),
             "encoder.positional_embedding": _sinusoids(dims["n_audio_ctx"], d)}
    for i in range(dims["n_audio_layer"]):
        state.update(block(f"encoder.blocks.{i}", d, False))
    state.update(ln("encoder.ln_post", d))
    if decoder:
        t = dims["n_text_state"]
        state.update({"decoder.token_embedding.weight": rnd(dims["n_vocab"], t),
                      "decoder.positional_embedding": rnd(dims["n_text_ctx"], t)})
        for i in range(dims["n_text_layer"]):
            state.update(block(f"decoder.blocks.{i}", t, True))
        state.update(ln("decoder.ln", t))
    return state


def _sinusoids(length: int, channels: int) -> torch.Tensor:
    scale = torch.log(torch.tensor(10000.0)) / (channels // 2 - 1)
    inv = torch.exp(-scale * torch.arange(channels // 2))
    t = torch.arange(length)[:, None] * inv[None]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1)


def small_config(resolution: int = 64) -> dict:
    """The published 1.6 configuration (our file) at small widths and ``resolution``; published format."""
    data = yaml.safe_load((CONFIG_DIR / "latentsync-1.6.yaml").read_text())
    data["model"].update(SMALL_MODEL)
    data["data"]["resolution"] = resolution
    return data


def write_random_weights(root: Path, config: dict | None = None, *, seed: int = 0,
                         whisper_dims: dict | None = None, vae_channels: tuple[int, ...] = (32, 32, 32, 32)) -> Path:
    from diffusers import AutoencoderKL

    from lipsync.model.latentsync.config import parse_config
    from lipsync.model.latentsync.unet import LatentSyncUNet

    config = config or small_config()
    parsed = parse_config(config, variant=None, source="random")
    whisper_dims = whisper_dims or dict(SMALL_WHISPER, n_audio_state=parsed.unet.cross_attention_dim,
                                        n_text_state=parsed.unet.cross_attention_dim)
    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    unet = LatentSyncUNet(parsed.unet)
    with torch.no_grad():
        for name, p in unet.named_parameters():  # re-randomise the zero-initialised layers
            if name.startswith(("conv_in.", "conv_out.")) or "temporal_transformer.proj_out" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    torch.save({"global_step": 0, "state_dict": unet.state_dict()}, root / "latentsync_unet.pt")
    (root / "whisper").mkdir(exist_ok=True)
    torch.save({"dims": whisper_dims, "model_state_dict": openai_whisper_state(whisper_dims, g)},
               root / "whisper" / "tiny.pt")
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=vae_channels,
                        down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
                        up_block_types=("UpDecoderBlock2D",) * len(vae_channels), layers_per_block=1,
                        norm_num_groups=min(32, min(vae_channels)), sample_size=parsed.resolution,
                        scaling_factor=0.18215)
    vae.save_pretrained(root / "sd-vae", safe_serialization=True)
    (root / "unet_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


SD_VAE_FT_MSE = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": (128, 256, 512, 512),
                 "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
                 "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 256, "scaling_factor": 0.18215}
"""stabilityai/sd-vae-ft-mse's config.json (the fields that shape the network)."""


def write_published_weights(root: Path, variant: str = "latentsync-1.6", *, seed: int = 0) -> Path:
    """Random weights at the published network sizes (the full UNet, whisper tiny, sd-vae-ft-mse) in the
    published layout, for benchmarks; about 5 GB on disk (fp32, as the published checkpoint)."""
    from diffusers import AutoencoderKL

    from lipsync.model.latentsync.config import variant_config
    from lipsync.model.latentsync.unet import LatentSyncUNet

    cfg = variant_config(variant)
    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    unet = LatentSyncUNet(cfg.unet)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if name.startswith(("conv_in.", "conv_out.")) or "temporal_transformer.proj_out" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    torch.save({"global_step": 0, "state_dict": unet.state_dict()}, root / "latentsync_unet.pt")
    del unet
    (root / "whisper").mkdir(exist_ok=True)
    torch.save({"dims": TINY_WHISPER, "model_state_dict": openai_whisper_state(TINY_WHISPER, g)},
               root / "whisper" / "tiny.pt")
    AutoencoderKL(**SD_VAE_FT_MSE).save_pretrained(root / "sd-vae", safe_serialization=True)
    (root / "unet_config.yaml").write_text((CONFIG_DIR / f"{variant}.yaml").read_text())
    return root
