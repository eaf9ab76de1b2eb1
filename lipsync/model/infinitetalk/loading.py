"""Loading InfiniteTalk's published files strictly into the modules we run, straight in the target dtype.

- transformer: the seven ``diffusion_pytorch_model-0000k-of-00007.safetensors`` shards and
  ``InfiniteTalk/single/infinitetalk.safetensors`` read lazily as one checkpoint (the InfiniteTalk file wins a key
  both hold, as the authors' merged ``load_state_dict``), renamed by ``keymaps.TRANSFORMER`` onto an
  ``InfiniteTalkTransformer`` built on ``meta`` and filled tensor by tensor (``lipsync.model.loading``): no fp32
  transient, no second copy in host memory;
- ``Wan2.1_VAE.pth``, ``models_t5_umt5-xxl-enc-bf16.pth``, ``models_clip_…vit-huge-14.pth``: ``torch.load`` with
  ``mmap`` and ``weights_only``, renamed onto diffusers' ``AutoencoderKLWan``, transformers' ``UMT5EncoderModel``
  and ``CLIPVisionModel``; their sizes are read from the tensors' shapes (the authors hard-code them);
- ``chinese-wav2vec2-base/``: its ``config.json`` builds transformers' ``Wav2Vec2Model`` on meta, filled from
  ``pytorch_model.bin`` (memory-mapped) or ``model.safetensors`` through ``keymaps.wav2vec`` (the pre-training
  heads the hub file also holds are ignored, the weight norm renamed).

Every missing, unexpected or mis-shaped key raises ``lipsync.model.loading.WeightsLoadError`` naming all of them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from lipsync.model.infinitetalk import keymaps, layout
from lipsync.model.infinitetalk.config import CLIPConfig, T5Config, TransformerConfig, VAEConfig
from lipsync.model.loading import LazyCheckpoint, WeightsLoadError, load_weights

CLIP_IGNORED = ("textual.", "log_scale", "visual.head")
"""The CLIP file's text tower, logit scale and projection head: the authors load them and never use them
(``CLIPModel.visual`` runs the vision tower's blocks but the last)."""


class MergedCheckpoint(LazyCheckpoint):
    """Several safetensors files read lazily as one; a later file's key replaces an earlier one's."""

    def __init__(self, paths: list[Path], rename=None):
        self._where, self._shapes, self._sizes, self.ignored = {}, {}, {}, []
        for path in paths:
            part = LazyCheckpoint(path, rename)
            self._where.update(part._where)
            self._shapes.update(part._shapes)
            self._sizes.update(part._sizes)
            self.ignored += part.ignored


def shard_paths(wan_dir: Path) -> list[Path]:
    """The transformer shards: those the folder's index names, else the seven published names."""
    index = wan_dir / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        names = list(layout.SHARDS)
    return [wan_dir / n for n in names]


def transformer_config(wan_dir: Path, single: Path, wav2vec_config: dict) -> TransformerConfig:
    """``config.json`` + the image width from ``img_emb`` + the audio rows from wav2vec2's config, checked
    against the adapter's first projection."""
    base = TransformerConfig.from_file(wan_dir / "config.json")
    ckpt = MergedCheckpoint([*shard_paths(wan_dir), single])
    image_dim = ckpt.shape("img_emb.proj.0.weight")[0]
    cfg = TransformerConfig(**{**base.__dict__, "image_dim": image_dim,
                               "audio_layers": wav2vec_config["num_hidden_layers"],
                               "audio_channels": wav2vec_config["hidden_size"]})
    want = cfg.audio_window * cfg.audio_layers * cfg.audio_channels
    got = ckpt.shape("audio_proj.proj1.weight")[1]
    if got != want:
        raise WeightsLoadError("InfiniteTalk audio projection", str(single), [], [],
                               [f"audio_proj.proj1.weight (checkpoint input {got}, wav2vec2 gives {cfg.audio_window} "
                                f"x {cfg.audio_layers} layers x {cfg.audio_channels} = {want})"])
    return cfg


def load_transformer(wan_dir: Path, single: Path, config: TransformerConfig, *, device: str = "cpu",
                     dtype: torch.dtype = torch.float32):
    from lipsync.model.infinitetalk.transformer import InfiniteTalkTransformer

    ckpt = MergedCheckpoint([*shard_paths(wan_dir), single], rename=keymaps.mapper(keymaps.TRANSFORMER))
    with torch.device("meta"):
        model = InfiniteTalkTransformer(config)
    source = f"{wan_dir} + {single}"
    _raise_unmatched(ckpt.ignored, "InfiniteTalk transformer", source)
    try:
        load_weights(model, ckpt, component="InfiniteTalk transformer", source=source, device=device, dtype=dtype)
    except WeightsLoadError as exc:  # name the keys as the files spell them
        raise in_authors_names(exc, keymaps.TRANSFORMER) from None
    return model.eval().requires_grad_(False)


def in_authors_names(exc: WeightsLoadError, pairs) -> WeightsLoadError:
    back = keymaps.mapper(pairs, reverse=True)

    def name(key: str) -> str:
        head, sep, tail = key.partition(" ")
        return (back(head) or head) + sep + tail

    return WeightsLoadError(exc.component, exc.source, [name(k) for k in exc.missing],
                            [name(k) for k in exc.unexpected], [name(k) for k in exc.mismatched])


def read_pth(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(state, dict):
        raise WeightsLoadError(str(path.name), str(path), [], [f"<a {type(state).__name__}, not a state dict>"], [])
    return state


def vae_config(state: dict) -> VAEConfig:
    base = state["encoder.conv1.weight"].shape[0]
    z = state["conv2.weight"].shape[0]
    levels = 4
    blocks = len({int(m.group(1)) for k in state if (m := re.match(r"encoder\.downsamples\.(\d+)\.residual", k))})
    return VAEConfig(base_dim=base, z_dim=z, num_res_blocks=blocks // levels)


def load_vae(path: Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32):
    from diffusers import AutoencoderKLWan

    state = read_pth(path)
    cfg = vae_config(state)
    with torch.device("meta"):
        vae = AutoencoderKLWan(**cfg.diffusers_kwargs())
    rename = keymaps.mapper(keymaps.vae_pairs(cfg.num_res_blocks))
    load_weights(vae, state, component="Wan VAE", source=str(path), rename=rename, device=device, dtype=dtype)
    return vae.eval().requires_grad_(False)


def t5_config(state: dict) -> T5Config:
    vocab, dim = state["token_embedding.weight"].shape
    layers = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    buckets, heads = state["blocks.0.pos_embedding.embedding.weight"].shape
    return T5Config(vocab_size=vocab, dim=dim, dim_ffn=state["blocks.0.ffn.fc1.weight"].shape[0], num_heads=heads,
                    num_layers=layers, num_buckets=buckets)


def umt5(cfg: T5Config):
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(
        vocab_size=cfg.vocab_size, d_model=cfg.dim, d_kv=cfg.dim // cfg.num_heads, d_ff=cfg.dim_ffn,
        num_layers=cfg.num_layers, num_heads=cfg.num_heads, relative_attention_num_buckets=cfg.num_buckets,
        relative_attention_max_distance=128, feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6,
        dropout_rate=0.0, tie_word_embeddings=False, is_encoder_decoder=False, use_cache=False))


def load_t5(path: Path, *, device: str = "cpu", dtype: torch.dtype = torch.bfloat16):
    state = read_pth(path)
    cfg = t5_config(state)
    with torch.device("meta"):
        model = umt5(cfg)
    load_weights(model, state, component="umT5 encoder", source=str(path), rename=keymaps.mapper(keymaps.T5),
                 device=device, dtype=dtype)
    return model.eval().requires_grad_(False)


def clip_config(state: dict) -> CLIPConfig:
    dim, _, patch, _ = state["visual.patch_embedding.weight"].shape
    tokens = state["visual.pos_embedding"].shape[1]
    layers = len({k.split(".")[2] for k in state if k.startswith("visual.transformer.")})
    mlp = state["visual.transformer.0.mlp.0.weight"].shape[0] // dim
    heads = dim // 80 if dim % 80 == 0 else max(1, dim // 16)  # ViT-H/14: 16 heads of 80; small test towers: 16 wide
    return CLIPConfig(image_size=int(round((tokens - 1) ** 0.5)) * patch, patch_size=patch, dim=dim, num_heads=heads,
                      num_layers=layers, mlp_ratio=mlp)


def clip_vision(cfg: CLIPConfig):
    """The tower up to its penultimate block (the authors' ``use_31_block``): its last hidden state is theirs."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    return CLIPVisionModel(CLIPVisionConfig(
        hidden_size=cfg.dim, intermediate_size=cfg.dim * cfg.mlp_ratio, num_hidden_layers=cfg.num_layers - 1,
        num_attention_heads=cfg.num_heads, image_size=cfg.image_size, patch_size=cfg.patch_size, hidden_act="gelu",
        layer_norm_eps=1e-5))


def clip_state(state: dict, layers: int) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The authors' CLIP keys in split form (views, no copies): ``to_qkv`` → q, k, v; the class and position
    embeddings without their batch axes. Returns the state and the keys deliberately left out."""
    out, ignored = {}, []
    last = f"visual.transformer.{layers - 1}."
    for key, value in state.items():
        if key.startswith(CLIP_IGNORED) or key.startswith(last):
            ignored.append(key)
        elif ".attn.to_qkv." in key:
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[key.replace(".to_qkv.", f".{name}.")] = part
        elif key in ("visual.cls_embedding", "visual.pos_embedding"):
            out[key] = value.reshape(value.shape[-2:]) if key.endswith("pos_embedding") else value.reshape(-1)
        else:
            out[key] = value
    return out, ignored


def load_clip(path: Path, *, device: str = "cpu", dtype: torch.dtype = torch.float16):
    state = read_pth(path)
    cfg = clip_config(state)
    split, ignored = clip_state(state, cfg.num_layers)
    with torch.device("meta"):
        model = clip_vision(cfg)
    positions = model.embeddings.num_positions
    del model.embeddings._buffers["position_ids"]  # non-persistent, computed at init: made again below
    report = load_weights(model, split, component="CLIP vision tower", source=str(path),
                          rename=keymaps.mapper(keymaps.CLIP), device=device, dtype=dtype)
    report.ignored += ignored
    model.embeddings.register_buffer("position_ids", torch.arange(positions, device=device)[None], persistent=False)
    model.image_size = cfg.image_size
    return model.eval().requires_grad_(False)


WAV2VEC_FILES = ("pytorch_model.bin", "model.safetensors")
"""The hub's main branch holds ``pytorch_model.bin``; the README fetches ``model.safetensors`` from ``refs/pr/1``."""


def wav2vec_file(folder: Path) -> Path:
    for name in WAV2VEC_FILES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder}: none of {', '.join(WAV2VEC_FILES)}")


def wav2vec_state(path: Path):
    """The checkpoint's tensors without reading them: safetensors lazily, the ``.bin`` memory-mapped."""
    if path.suffix == ".safetensors":
        return LazyCheckpoint(path, keymaps.wav2vec)
    return torch.load(path, map_location="cpu", mmap=True, weights_only=True)


def load_wav2vec(folder: Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """``config.json`` + the weights, strictly (through ``keymaps.wav2vec``), built on meta and filled in ``dtype``
    on ``device`` as every other part (``from_pretrained`` would also accept a file it fills only in part)."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    config = Wav2Vec2Config.from_pretrained(folder)
    path = wav2vec_file(folder)
    with torch.device("meta"):
        model = Wav2Vec2Model(config)
    load_weights(model, wav2vec_state(path), component="wav2vec2", source=str(path), rename=keymaps.wav2vec,
                 device=device, dtype=dtype)
    return model.eval().requires_grad_(False)


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _raise_unmatched(ignored: list[str], component: str, source: str) -> None:
    if ignored:
        raise WeightsLoadError(component, source, [], sorted(ignored), [])
