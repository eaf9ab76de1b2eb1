"""Random MuseTalk weights in exactly the published layout (TMElyralab/MuseTalk README's ``models/`` folder).

``write_random_weights(root)`` writes what ``download_weights.sh`` lays out, with the published file names and
formats: ``musetalkV15/musetalk.json`` (UNet2DConditionModel kwargs) + ``musetalkV15/unet.pth`` (a torch state
dict), ``sd-vae/config.json`` + ``diffusion_pytorch_model.bin`` (a torch state dict with the pre-0.14 diffusers
attention names the hub's sd-vae-ft-mse file has), ``whisper/config.json`` + ``pytorch_model.bin`` (a full
``WhisperForConditionalGeneration`` state dict, ``model.`` prefix) + ``preprocessor_config.json``.

``size="small"`` keeps every network tiny for tests (a 2-level UNet, an 8×-downsampling VAE with 8–16
channels, a 4-layer whisper with d_model 384 — the UNet's cross_attention_dim); ``size="published"`` gives the
published network sizes (SD-1.x UNet, sd-vae-ft-mse, whisper-tiny) for benchmarks. The same pattern serves other
engines: configs as dicts, networks built by the stock classes, ``save_*`` writing the published formats.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

SMALL_UNET = dict(
    act_fn="silu", attention_head_dim=8, block_out_channels=[32, 64], center_input_sample=False,
    cross_attention_dim=384, down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"], downsample_padding=1,
    flip_sin_to_cos=True, freq_shift=0, in_channels=8, layers_per_block=1, mid_block_scale_factor=1,
    norm_eps=1e-05, norm_num_groups=32, out_channels=4, sample_size=32,
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
)
PUBLISHED_UNET = dict(
    SMALL_UNET, block_out_channels=[320, 640, 1280, 1280], layers_per_block=2, sample_size=64,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
)
SMALL_VAE = dict(
    act_fn="silu", block_out_channels=[8, 16, 16, 16], down_block_types=["DownEncoderBlock2D"] * 4, in_channels=3,
    latent_channels=4, layers_per_block=1, norm_num_groups=8, out_channels=3, sample_size=256,
    up_block_types=["UpDecoderBlock2D"] * 4, scaling_factor=0.18215,
)
PUBLISHED_VAE = dict(SMALL_VAE, block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32)
SMALL_WHISPER = dict(
    d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=256, decoder_layers=1,
    decoder_attention_heads=6, decoder_ffn_dim=256, num_mel_bins=80, max_source_positions=1500, vocab_size=64,
    max_target_positions=32, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3,
    suppress_tokens=[], begin_suppress_tokens=[],
)
PUBLISHED_WHISPER = dict(  # openai/whisper-tiny
    SMALL_WHISPER, encoder_ffn_dim=1536, decoder_layers=4, decoder_ffn_dim=1536, vocab_size=51865,
    max_target_positions=448, pad_token_id=50257, bos_token_id=50257, eos_token_id=50257,
    decoder_start_token_id=50258,
)
CONFIGS = {"small": (SMALL_UNET, SMALL_VAE, SMALL_WHISPER), "published": (PUBLISHED_UNET, PUBLISHED_VAE,
                                                                        PUBLISHED_WHISPER)}

_NEW_TO_OLD = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def build_networks(size: str = "small", seed: int = 0):
    """(unet, vae, whisper) random stock modules. The UNet's zero-initialised ``conv_out`` is re-drawn, and its
    audio cross-attention values and output made loud, so that the output depends on the image and the audio
    and a test exercises something."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    unet_cfg, vae_cfg, whisper_cfg = CONFIGS[size]
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_cfg)
    torch.nn.init.normal_(unet.conv_out.weight, std=0.02)
    for name, param in unet.named_parameters():  # default init leaves the audio a faint voice in the residual
        if ".attn2.to_v." in name or ".attn2.to_out.0.weight" in name:
            torch.nn.init.normal_(param, std=0.5 if size == "small" else 0.05)
    vae = AutoencoderKL(**vae_cfg)
    whisper = WhisperForConditionalGeneration(WhisperConfig(**whisper_cfg))
    return unet.eval(), vae.eval(), whisper.eval()


def legacy_vae_state(vae) -> dict[str, torch.Tensor]:
    """The VAE's state dict with the attention names sd-vae-ft-mse's ``.bin`` uses (query/key/value/proj_attn)."""
    out = {}
    for key, value in vae.state_dict().items():
        for new, old in _NEW_TO_OLD.items():
            marker = f".{new}."
            if ".attentions." in key and marker in key:
                key = key.replace(marker, f".{old}.")
                break
        out[key] = value.clone()
    return out


def write_random_weights(root: Path, *, size: str = "small", seed: int = 0, version: str = "1.5") -> Path:
    """Write random weights in the published layout under ``root``; returns ``root``."""
    from transformers import WhisperFeatureExtractor

    unet, vae, whisper = build_networks(size, seed)
    unet_dir, unet_file = ("musetalkV15", "unet.pth") if version == "1.5" else ("musetalk", "pytorch_model.bin")
    (root / unet_dir).mkdir(parents=True, exist_ok=True)
    (root / unet_dir / "musetalk.json").write_text(json.dumps(CONFIGS[size][0], indent=2))
    torch.save(unet.state_dict(), root / unet_dir / unet_file)
    (root / "sd-vae").mkdir(exist_ok=True)
    vae_config = {"_class_name": "AutoencoderKL", "_diffusers_version": "0.4.2", **CONFIGS[size][1]}
    (root / "sd-vae" / "config.json").write_text(json.dumps(vae_config, indent=2))
    torch.save(legacy_vae_state(vae), root / "sd-vae" / "diffusion_pytorch_model.bin")
    (root / "whisper").mkdir(exist_ok=True)
    whisper.config.to_json_file(root / "whisper" / "config.json")
    torch.save({k: v.clone() for k, v in whisper.state_dict().items()}, root / "whisper" / "pytorch_model.bin")
    WhisperFeatureExtractor(feature_size=80).save_pretrained(root / "whisper")
    return root


def write_random_face_parsing(root: Path, *, seed: int = 0) -> Path:
    """Random face-parsing weights in the published files (``face-parse-bisent/79999_iter.pth``: the BiSeNet's
    state dict, every key and shape of the published checkpoint; ``resnet18-5c106cde.pth``: a torchvision
    ResNet-18 state dict with its ``fc``). Opt-in (``write_random_weights`` does not write them). The
    BatchNorm statistics are drawn too, so that the argmax is not one class everywhere."""
    from lipsync.model.musetalk.face_parsing import PARSER_FILE, RESNET_FILE, BiSeNet

    torch.manual_seed(seed)
    net = BiSeNet()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.normal_(module.running_mean, std=0.1)
            torch.nn.init.uniform_(module.running_var, 0.5, 1.5)
    head = net.conv_out.conv_out.weight  # (19, 256, 1, 1): rows of zero sum, so no class wins everywhere
    with torch.no_grad():
        head.normal_(std=0.5).sub_(head.mean(1, keepdim=True))
        head[[1, 15, 10, 9, 12, 17]] = head[[15, 1, 9, 10, 17, 12]].clone()  # seed 0's common classes → skin, nose, lips
    (root / PARSER_FILE).parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.clone() for k, v in net.state_dict().items()}, root / PARSER_FILE)
    resnet = {k: v.clone() for k, v in net.cp.resnet.state_dict().items() if not k.endswith("num_batches_tracked")}
    resnet.update({"fc.weight": torch.randn(1000, 512) * 0.01, "fc.bias": torch.zeros(1000)})
    torch.save(resnet, root / RESNET_FILE)
    return root
