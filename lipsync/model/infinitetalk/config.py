"""InfiniteTalk's numbers: the network sizes (the folder's ``config.json`` in the authors' format, plus what the
authors hard-code and we read from the checkpoints' shapes), the resolution buckets and the sampling recipe.

Sources (MeiGen-AI/InfiniteTalk, read at commit 0107cd9): ``wan/configs/wan_multitalk_14B.py``,
``wan/modules/multitalk_model.py`` (``WanModel`` defaults: audio window 5, adapter width 512, 32 audio tokens of
768, VAE time stride 4), ``wan/utils/multitalk_utils.py`` (``ASPECT_RATIO_627`` / ``ASPECT_RATIO_960``),
``generate_infinitetalk.py`` (40 steps, shift 7 at 480p and 11 at 720p, text guidance 5, audio guidance 4,
81-frame chunks, 9 motion frames, colour correction 1.0, seed 42).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

BUCKETS: dict[str, dict[float, tuple[int, int]]] = {
    "480p": {0.26: (320, 1216), 0.38: (384, 1024), 0.50: (448, 896), 0.67: (512, 768), 0.82: (576, 704),
             1.00: (640, 640), 1.22: (704, 576), 1.50: (768, 512), 1.86: (832, 448), 2.00: (896, 448),
             2.50: (960, 384), 2.83: (1088, 384), 3.60: (1152, 320), 3.80: (1216, 320), 4.00: (1280, 320)},
    "720p": {0.22: (448, 2048), 0.29: (512, 1792), 0.36: (576, 1600), 0.45: (640, 1408), 0.55: (704, 1280),
             0.63: (768, 1216), 0.76: (832, 1088), 0.88: (896, 1024), 1.00: (960, 960), 1.14: (1024, 896),
             1.31: (1088, 832), 1.50: (1152, 768), 1.58: (1216, 768), 1.82: (1280, 704), 1.91: (1344, 704),
             2.20: (1408, 640), 2.30: (1472, 640), 2.67: (1536, 576), 2.89: (1664, 576), 3.62: (1856, 512),
             3.75: (1920, 512)},
    "tiny": {0.75: (32, 48), 1.00: (32, 32), 1.33: (48, 32)},
}
"""(height, width) per height/width ratio: ``ASPECT_RATIO_627`` (480p) and ``ASPECT_RATIO_960`` (720p); ``tiny``
is ours, for CPU tests (multiples of 16: VAE stride 8 x patch 2)."""

SHIFT = {"480p": 7.0, "720p": 11.0, "tiny": 7.0}

NEGATIVE_PROMPT = ("bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, "
                   "static, overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, "
                   "extra fingers, poorly drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, "
                   "fused fingers, still picture, messy background, three legs, many people in the background, "
                   "walking backwards")
"""``multitalk_14B.sample_neg_prompt``: the negative prompt when none is given."""

DEFAULT_PROMPT = "A person is talking, looking at the camera, natural head movements and expressions."
"""Ours: the prompt when the request has no custom prompt (the authors' examples each carry one)."""


def bucket(height: int, width: int, table: str) -> tuple[int, int]:
    """The authors' rule: the bucket whose ratio is closest to height / width (the first of a tie)."""
    ratio = height / width
    key = min(BUCKETS[table], key=lambda r: abs(r - ratio))
    return BUCKETS[table][key]


@dataclass(frozen=True)
class TransformerConfig:
    """``config.json`` of the Wan folder (authors' ``WanModel`` keywords) + widths read from the checkpoint."""

    dim: int = 5120
    ffn_dim: int = 13824
    num_heads: int = 40
    num_layers: int = 40
    in_dim: int = 36
    out_dim: int = 16
    text_len: int = 512
    text_dim: int = 4096
    freq_dim: int = 256
    eps: float = 1e-6
    image_dim: int = 1280
    """``MLPProj(1280, dim)`` in the authors' code; read from ``img_emb.proj.0.weight`` here."""
    audio_window: int = 5
    intermediate_dim: int = 512
    output_dim: int = 768
    context_tokens: int = 32
    vae_scale: int = 4
    norm_output_audio: bool = True
    audio_layers: int = 12
    """wav2vec2 hidden states stacked per audio frame (``AudioProjModel(blocks=12)``)."""
    audio_channels: int = 768

    @classmethod
    def from_file(cls, path: Path) -> "TransformerConfig":
        data = json.loads(Path(path).read_text())
        if data.get("model_type", "i2v") != "i2v":
            raise ValueError(f"{path}: model_type {data['model_type']!r}; InfiniteTalk needs the i2v model")
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    def to_file_dict(self) -> dict:
        """The authors' config.json fields (only those their ``WanModel`` takes)."""
        keys = ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "text_len", "text_dim", "freq_dim",
                "eps", "audio_window", "intermediate_dim", "output_dim", "context_tokens", "vae_scale",
                "norm_output_audio")
        return {"_class_name": "WanModel", "model_type": "i2v", **{k: getattr(self, k) for k in keys}}

    def diffusers_kwargs(self) -> dict:
        """``WanTransformer3DModel`` keywords for the same network (diffusers' I2V-14B conversion config)."""
        return dict(patch_size=(1, 2, 2), num_attention_heads=self.num_heads,
                    attention_head_dim=self.dim // self.num_heads, in_channels=self.in_dim,
                    out_channels=self.out_dim, text_dim=self.text_dim, freq_dim=self.freq_dim, ffn_dim=self.ffn_dim,
                    num_layers=self.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=self.eps,
                    image_dim=self.image_dim, added_kv_proj_dim=self.dim)


@dataclass(frozen=True)
class VAEConfig:
    """``WanVAE_`` (the authors hard-code dim 96, z 16, [1, 2, 4, 4], 2 blocks); read from the checkpoint here."""

    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2

    def diffusers_kwargs(self) -> dict:
        return dict(base_dim=self.base_dim, z_dim=self.z_dim, dim_mult=list(self.dim_mult),
                    num_res_blocks=self.num_res_blocks, attn_scales=[], temperal_downsample=[False, True, True])


@dataclass(frozen=True)
class T5Config:
    """umT5-XXL encoder (``umt5_xxl``: vocab 256384, 4096 wide, 10240 FF, 64 heads, 24 layers, 32 buckets)."""

    vocab_size: int = 256384
    dim: int = 4096
    dim_ffn: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32


@dataclass(frozen=True)
class CLIPConfig:
    """The vision tower of ``clip_xlm_roberta_vit_h_14`` (224 px, patch 14, 1280 wide, 16 heads, 32 layers)."""

    image_size: int = 224
    patch_size: int = 14
    dim: int = 1280
    num_heads: int = 16
    num_layers: int = 32
    mlp_ratio: int = 4


@dataclass(frozen=True)
class SamplingConfig:
    """The recipe's knobs, defaults as ``generate_infinitetalk.py``."""

    table: str = "480p"
    frame_num: int = 81
    motion_frame: int = 9
    steps: int = 40
    shift: float | None = None
    """None: ``SHIFT[table]``."""
    text_guidance: float = 5.0
    audio_guidance: float = 4.0
    colour_correction: float = 1.0
    num_train_timesteps: int = 1000

    @property
    def sample_shift(self) -> float:
        return SHIFT[self.table] if self.shift is None else self.shift

    def with_(self, **changes) -> "SamplingConfig":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


@dataclass(frozen=True)
class InfiniteTalkConfig:
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    t5: T5Config = field(default_factory=T5Config)
    clip: CLIPConfig = field(default_factory=CLIPConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def as_dict(self) -> dict:
        return asdict(self)


PUBLISHED = InfiniteTalkConfig()

SMALL = InfiniteTalkConfig(
    transformer=TransformerConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, text_dim=32, freq_dim=32,
                                  image_dim=32, intermediate_dim=32, output_dim=16, context_tokens=4,
                                  audio_layers=2, audio_channels=16),
    vae=VAEConfig(base_dim=8, z_dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=1),
    t5=T5Config(vocab_size=64, dim=32, dim_ffn=64, num_heads=2, num_layers=2, num_buckets=32),
    clip=CLIPConfig(image_size=28, patch_size=14, dim=32, num_heads=2, num_layers=3, mlp_ratio=2),
    sampling=SamplingConfig(table="tiny", frame_num=21, motion_frame=5, steps=2),
)
"""CPU tests: every published structure (40 → 2 blocks, the 4-level causal VAE, T5 with per-layer position
buckets, a 3-layer CLIP tower), small widths; 21-frame chunks with 5 motion frames (2 latents): a test's
request costs a Python op count that grows with the chunks and frames, not with the widths."""
