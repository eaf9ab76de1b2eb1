"""Random InfiniteTalk weights written in exactly the published layout and formats (tests, smoke runs):

- ``Wan2.1-I2V-14B-480P/config.json`` (the authors' ``WanModel`` fields), the seven
  ``diffusion_pytorch_model-0000k-of-00007.safetensors`` shards with their index (the Wan keys) and
  ``InfiniteTalk/single/infinitetalk.safetensors`` (the audio keys), all in the authors' key names;
- ``Wan2.1_VAE.pth``, ``models_t5_umt5-xxl-enc-bf16.pth`` (bf16), ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth``
  (fp16, with a token text tower, logit scale and head as the published file has them): ``torch.save`` state
  dicts in the authors' names;
- ``google/umt5-xxl/``: a small unigram tokenizer made here (``tokenizer.json`` + configs; pad 0, end 1, unk 2);
- ``chinese-wav2vec2-base/``: a small ``Wav2Vec2ForPreTraining`` saved as the hub holds it (``config.json``,
  ``preprocessor_config.json``, ``pytorch_model.bin``).

The networks are ``config.SMALL`` (the published structures at small widths); the tests check the published
sizes on the ``meta`` device (``tests/engines/test_infinitetalk_weights.py``). ``write_published_weights`` writes
the published sizes in bf16 (about 50 GB), tensor by tensor, for GPU checks (``scripts/gpu_check.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import torch

from lipsync.model.infinitetalk import keymaps, layout
from lipsync.model.infinitetalk.config import SMALL, InfiniteTalkConfig
from lipsync.model.loading import LazyCheckpoint

AUDIO_KEYS = (".audio_cross_attn.", ".norm_x.", "audio_proj.")

TOKENS = ["<pad>", "</s>", "<unk>"] + [f"\u2581{w}" for w in (
    "a", "person", "is", "talking", "looking", "at", "the", "camera", "natural", "head", "movements", "and",
    "expressions", "bright", "tones", "static", "blurred", "details", "worst", "quality", "low", "ugly", "a", "man",
    "woman", "speaks", "smiles", "in", "of", "to")] + list("abcdefghijklmnopqrstuvwxyz,.")


def write_tokenizer(folder: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    tokens = list(dict.fromkeys(TOKENS))[:vocab_size]
    vocab = [(t, 0.0 if i < 3 else -float(i)) for i, t in enumerate(tokens)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    special = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "T5TokenizerFast", "model_max_length": 512, "extra_ids": 0, **special}))


def _randomise(module: torch.nn.Module, g: torch.Generator) -> None:
    """Every parameter random (zero-initialised outputs and biases too), so a test exercises every weight."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "norm3.weight", "gamma")) or \
                    "layer_norm" in name or "layernorm" in name or "norm_" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[1] if p.ndim > 1 else p.shape[0]
                p.copy_(torch.randn(p.shape, generator=g) / max(1.0, fan_in) ** 0.5)


def _authors(state: dict[str, torch.Tensor], pairs) -> dict[str, torch.Tensor]:
    rename = keymaps.mapper(pairs, reverse=True)
    out = {}
    for key, value in state.items():
        new = rename(key)
        if new is not None:
            out[new] = value.detach().clone().contiguous()
    return out


def write_transformer(wan: Path, root: Path, config: InfiniteTalkConfig, g: torch.Generator) -> None:
    from safetensors.torch import save_file

    from lipsync.model.infinitetalk.transformer import InfiniteTalkTransformer

    model = InfiniteTalkTransformer(config.transformer)
    _randomise(model, g)
    state = _authors(model.state_dict(), keymaps.TRANSFORMER)
    audio = {k: v for k, v in state.items() if any(a in k for a in AUDIO_KEYS)}
    base = [k for k in state if k not in audio]
    weight_map = {}
    for n, shard in enumerate(layout.SHARDS):
        part = {k: state[k] for k in base[n::len(layout.SHARDS)]}
        save_file(part, str(wan / shard))
        weight_map.update({k: shard for k in part})
    (wan / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
         "weight_map": weight_map}, indent=1))
    (wan / "config.json").write_text(json.dumps(config.transformer.to_file_dict(), indent=1))
    (root / layout.SINGLE).parent.mkdir(parents=True, exist_ok=True)
    save_file(audio, str(root / layout.SINGLE))


def write_vae(path: Path, config: InfiniteTalkConfig, g: torch.Generator) -> None:
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan(**config.vae.diffusers_kwargs())
    _randomise(vae, g)
    torch.save(_authors(vae.state_dict(), keymaps.vae_pairs(config.vae.num_res_blocks)), path)


def write_t5(path: Path, config: InfiniteTalkConfig, g: torch.Generator) -> None:
    from lipsync.model.infinitetalk.loading import umt5

    model = umt5(config.t5)
    _randomise(model, g)
    state = _authors(model.state_dict(), keymaps.T5)
    torch.save({k: v.to(torch.bfloat16) for k, v in state.items()}, path)


def write_clip(path: Path, config: InfiniteTalkConfig, g: torch.Generator) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    c = config.clip
    model = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=c.dim, intermediate_size=c.dim * c.mlp_ratio, num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads, image_size=c.image_size, patch_size=c.patch_size, hidden_act="gelu"))
    _randomise(model, g)
    torch.save(_fused_clip(_authors(model.state_dict(), keymaps.CLIP), c, g), path)


def _fused_clip(split: dict[str, torch.Tensor], c, g: torch.Generator) -> dict[str, torch.Tensor]:
    """The authors' CLIP file from split keys: q/k/v fused into ``to_qkv``, batch axes on the class and position
    embeddings, and a token text tower, logit scale and head (present in the published file, unused)."""
    state = {}
    for key, value in split.items():
        if ".attn.q." in key:
            qkv = [split[key.replace(".attn.q.", f".attn.{n}.")] for n in "qkv"]
            state[key.replace(".attn.q.", ".attn.to_qkv.")] = torch.cat(qkv)
        elif ".attn.k." in key or ".attn.v." in key:
            continue
        elif key == "visual.cls_embedding":
            state[key] = value.reshape(1, 1, -1)
        elif key == "visual.pos_embedding":
            state[key] = value[None]
        else:
            state[key] = value
    state["visual.head"] = torch.randn(c.dim, 16, generator=g)
    state["log_scale"] = torch.tensor(2.6592)
    state["textual.token_embedding.weight"] = torch.randn(64, 16, generator=g)
    state["textual.head.0.weight"] = torch.randn(16, 16, generator=g)
    return {k: v.to(torch.float16) for k, v in state.items()}


def wav2vec_config(config: InfiniteTalkConfig, *, published: bool = False):
    """``published``: chinese-wav2vec2-base's hub ``config.json`` (the wav2vec2 base architecture: 12 x 768,
    seven 512-channel convolutions without bias, group norm, post-norm layers, a ``Wav2Vec2ForPreTraining``)."""
    from transformers import Wav2Vec2Config

    t = config.transformer
    common = dict(feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False,
                  architectures=["Wav2Vec2ForPreTraining"])
    if published:
        return Wav2Vec2Config(**common)
    return Wav2Vec2Config(hidden_size=t.audio_channels, num_hidden_layers=t.audio_layers, num_attention_heads=2,
                          intermediate_size=2 * t.audio_channels, conv_dim=(16,) * 7, num_conv_pos_embeddings=16,
                          num_conv_pos_embedding_groups=2, vocab_size=8, codevector_dim=16, proj_codevector_dim=16,
                          num_codevectors_per_group=8, **common)


def wav2vec_hub_key(key: str) -> str:
    """``Wav2Vec2ForPreTraining``'s key today -> as the hub file names it (transformers 4.16's weight norm)."""
    return key.replace(".parametrizations.weight.original0", ".weight_g").replace(
        ".parametrizations.weight.original1", ".weight_v")


def write_wav2vec(folder: Path, config: InfiniteTalkConfig, seed: int, *, published: bool = False) -> None:
    """The hub folder: ``config.json``, ``preprocessor_config.json`` and ``pytorch_model.bin``, a
    ``Wav2Vec2ForPreTraining`` state dict (``wav2vec2.``-prefixed, weight norm as ``weight_g``/``weight_v``,
    the quantizer and projection heads), as the main branch holds it."""
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2ForPreTraining

    torch.manual_seed(seed)
    cfg = wav2vec_config(config, published=published)
    model = Wav2Vec2ForPreTraining(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(folder)
    torch.save({wav2vec_hub_key(k): v.contiguous() for k, v in model.state_dict().items()}, folder / "pytorch_model.bin")
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=True).save_pretrained(folder)


def write_random_weights(root: Path, config: InfiniteTalkConfig = SMALL, *, seed: int = 0) -> Path:
    root = Path(root)
    wan = root / layout.WAN_480
    wan.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    write_transformer(wan, root, config, g)
    write_vae(wan / layout.VAE_FILE, config, g)
    write_t5(wan / layout.T5_FILE, config, g)
    write_tokenizer(wan / layout.T5_TOKENIZER, config.t5.vocab_size)
    write_clip(wan / layout.CLIP_FILE, config, g)
    write_wav2vec(root / layout.WAV2VEC, config, seed)
    return root


def _streamed(module_factory, pairs, g: torch.Generator, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """(the authors' key, a random tensor in ``dtype``) for every tensor of a module built on ``meta``: one tensor
    in memory at a time, no model."""
    with torch.device("meta"):
        module = module_factory()
    rename = keymaps.mapper(pairs, reverse=True)
    for key, meta in module.state_dict().items():
        name = rename(key)
        if name is None:
            continue
        value = torch.randn(meta.shape, generator=g, dtype=torch.float32)
        if key.endswith(("norm1.weight", "norm2.weight", "norm3.weight", "gamma")) or "layer_norm" in key:
            value = 1 + 0.1 * value
        else:
            value = value / max(1.0, meta.shape[1] if meta.ndim > 1 else meta.shape[0]) ** 0.5
        yield name, value.to(dtype)


def published_bytes(config: InfiniteTalkConfig) -> int:
    """Bytes ``write_published_weights`` writes (bf16 transformer and umT5, fp16 CLIP, fp32 VAE), counted on meta."""
    from diffusers import AutoencoderKLWan

    from lipsync.model.infinitetalk.loading import clip_vision, umt5
    from lipsync.model.infinitetalk.transformer import InfiniteTalkTransformer

    def count(factory) -> int:
        with torch.device("meta"):
            return sum(t.numel() for t in factory().state_dict().values())

    return (2 * count(lambda: InfiniteTalkTransformer(config.transformer)) + 2 * count(lambda: umt5(config.t5))
            + 2 * count(lambda: clip_vision(config.clip)) + 4 * count(lambda: AutoencoderKLWan(**config.vae.diffusers_kwargs())))


def write_published_weights(root: Path, config: InfiniteTalkConfig | None = None, *, seed: int = 0,
                            dtype: torch.dtype = torch.bfloat16) -> Path:
    """Random weights at the published sizes in the published layout, for GPU checks: written tensor by tensor
    from meta-built modules (host memory ~ one shard), in bf16 (38 GB for the transformer, 11 GB for umT5; the
    published transformer shards are fp32, 76 GB: the loader takes either)."""
    from safetensors.torch import save_file

    from lipsync.model.infinitetalk.config import PUBLISHED
    from lipsync.model.infinitetalk.loading import clip_vision, umt5
    from lipsync.model.infinitetalk.transformer import InfiniteTalkTransformer

    import shutil

    config = config or PUBLISHED
    root = Path(root)
    need = published_bytes(config)
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if free < need + (4 << 30):
        raise OSError(f"random InfiniteTalk weights at these sizes take {need / 2**30:.1f} GiB; {root} has "
                      f"{free / 2**30:.1f} GiB free (4 GiB kept spare): not written")
    wan = root / layout.WAN_480
    wan.mkdir(parents=True, exist_ok=True)
    (root / layout.SINGLE).parent.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    audio, shard, n, weight_map = {}, {}, 0, {}
    limit = 6 << 30
    size = 0
    for name, value in _streamed(lambda: InfiniteTalkTransformer(config.transformer), keymaps.TRANSFORMER, g, dtype):
        if any(a in name for a in AUDIO_KEYS):
            audio[name] = value
            continue
        if size + value.numel() * value.element_size() > limit and n < len(layout.SHARDS) - 1:
            save_file(shard, str(wan / layout.SHARDS[n]))
            weight_map.update({k: layout.SHARDS[n] for k in shard})
            shard, size, n = {}, 0, n + 1
        shard[name] = value
        size += value.numel() * value.element_size()
    for i in range(n, len(layout.SHARDS)):  # the rest (the last shard, and empty ones for a small config)
        part = shard if i == n else {}
        save_file(part, str(wan / layout.SHARDS[i]))
        weight_map.update({k: layout.SHARDS[i] for k in part})
    (wan / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (wan / "config.json").write_text(json.dumps(config.transformer.to_file_dict(), indent=1))
    save_file(audio, str(root / layout.SINGLE))
    from diffusers import AutoencoderKLWan

    torch.save(dict(_streamed(lambda: AutoencoderKLWan(**config.vae.diffusers_kwargs()),
                              keymaps.vae_pairs(config.vae.num_res_blocks), g, torch.float32)), wan / layout.VAE_FILE)
    torch.save(dict(_streamed(lambda: umt5(config.t5), keymaps.T5, g, torch.bfloat16)), wan / layout.T5_FILE)
    write_tokenizer(wan / layout.T5_TOKENIZER, config.t5.vocab_size)
    c = config.clip
    split = dict(_streamed(lambda: clip_vision(replace(c, num_layers=c.num_layers + 1)), keymaps.CLIP, g,
                           torch.float16))
    torch.save(_fused_clip(split, c, g), wan / layout.CLIP_FILE)
    write_wav2vec(root / layout.WAV2VEC, config, seed, published=config.transformer.audio_channels == 768)
    return root


class RandomCheckpoint(LazyCheckpoint):
    """A checkpoint of random tensors with a module's own keys and shapes, made on ``device`` in ``dtype`` one
    tensor at a time as ``load_weights`` asks for them: the published sizes filled on a GPU without a file (the
    GPU check). The scale is the writers' (``_streamed``): norms 1 + 0.1·N(0, 1), the rest N(0, 1)/sqrt(fan-in)."""

    def __init__(self, module: torch.nn.Module, *, device, dtype: torch.dtype):
        self._where, self.ignored = {}, []
        self._shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        self._sizes = {k: v.numel() * v.element_size() for k, v in module.state_dict().items()}
        self.device, self.dtype = device, dtype

    def __iter__(self):
        return iter(self._shapes)

    def __len__(self) -> int:
        return len(self._shapes)

    def __getitem__(self, name: str) -> torch.Tensor:
        return next(self.tensors([name]))[1]

    def tensors(self, names):
        for name in names:
            shape = self._shapes[name]
            value = torch.randn(shape, device=self.device, dtype=self.dtype)
            if name.endswith(("norm1.weight", "norm2.weight", "norm3.weight", "gamma")) or "layer_norm" in name \
                    or "layernorm" in name:
                value.mul_(0.1).add_(1)
            elif len(shape):
                value.div_(max(1.0, shape[1] if len(shape) > 1 else shape[0]) ** 0.5)
            yield name, value


def random_engine(options, config: InfiniteTalkConfig | None = None, *, seed: int = 0, steps: int | None = 4,
                  text_guidance: float | None = 1.0, audio_guidance: float | None = 1.0):
    """An InfiniteTalk engine at the published sizes (``config.PUBLISHED``) with random weights made straight on
    ``options.device`` in the engine's dtype (the VAE in fp32, wav2vec2 in fp32, as loaded from files): no file
    is written or read but a small tokenizer, so a GPU check needs neither the 50 GB of random files nor the
    minutes to write them. The modules, dtypes and key sets are those ``load_engine`` fills from the published
    files (``lipsync.model.loading.load_weights`` on meta-built modules, the same casts). Defaults: 4 steps
    without guidance (what people run with a distillation LoRA); the engine's name and its logs say
    "random weights"."""
    import tempfile

    from diffusers import AutoencoderKLWan
    from transformers import Wav2Vec2Model

    from lipsync.model.devices import configure_backends, resolve_dtype, torch_dtype
    from lipsync.model.engine import EngineInfo
    from lipsync.model.infinitetalk.config import BUCKETS, DEFAULT_PROMPT, NEGATIVE_PROMPT, PUBLISHED
    from lipsync.model.infinitetalk.engine import InfiniteTalkEngine, log
    from lipsync.model.infinitetalk.loading import clip_vision, load_tokenizer, umt5
    from lipsync.model.infinitetalk.sampling import InfiniteTalkSampler
    from lipsync.model.infinitetalk.text import PromptEncoder
    from lipsync.model.infinitetalk.transformer import InfiniteTalkTransformer
    from lipsync.model.loading import load_weights

    config = config or PUBLISHED
    device = options.device
    dtype_name = resolve_dtype(options.dtype, device, prefer="bf16")
    dtype = torch_dtype(dtype_name)
    configure_backends(device, repeated_shapes=True)
    torch.manual_seed(seed)  # every device's generator: the same seed, the same random model

    def build(factory, component: str, module_dtype: torch.dtype, on=device):
        with torch.device("meta"):
            module = factory()
        load_weights(module, RandomCheckpoint(module, device=on, dtype=module_dtype), component=component,
                     source="random weights", device=on, dtype=module_dtype)
        return module.eval().requires_grad_(False)

    offload = options.offload == "blocks"  # the check's smaller card: made in host memory, streamed
    transformer = build(lambda: InfiniteTalkTransformer(config.transformer), "InfiniteTalk transformer", dtype,
                        on="cpu" if offload else device)
    if offload:
        transformer.offload_blocks(device)
    vae = build(lambda: AutoencoderKLWan(**config.vae.diffusers_kwargs()), "Wan VAE", torch.float32)
    with torch.device("meta"):
        clip = clip_vision(config.clip)
    positions = clip.embeddings.num_positions
    del clip.embeddings._buffers["position_ids"]  # computed at init, not a weight: made again below (as load_clip)
    load_weights(clip, RandomCheckpoint(clip, device=device, dtype=dtype), component="CLIP vision tower",
                 source="random weights", device=device, dtype=dtype)
    clip.embeddings.register_buffer("position_ids", torch.arange(positions, device=device)[None], persistent=False)
    clip.image_size = config.clip.image_size
    clip = clip.eval().requires_grad_(False)
    t5_device = device if options.text_encoder == "device" else "cpu"
    t5 = build(lambda: umt5(config.t5), "umT5 encoder", dtype, on=t5_device)
    t = config.transformer
    w2v_config = wav2vec_config(config, published=t.audio_channels == 768)
    wav2vec = Wav2Vec2Model(w2v_config).to(device).eval().requires_grad_(False)
    with tempfile.TemporaryDirectory() as folder:
        write_tokenizer(Path(folder), config.t5.vocab_size)
        tokenizer = load_tokenizer(Path(folder))
    sampling = config.sampling.with_(steps=options.num_inference_steps or steps, text_guidance=text_guidance,
                                     audio_guidance=options.guidance_scale or audio_guidance)
    prompts = PromptEncoder(t5, tokenizer, t.text_len, device=device,
                            placement="cpu" if options.text_encoder == "cpu" else "device")
    if options.text_encoder == "drop":
        prompts.drop(DEFAULT_PROMPT, NEGATIVE_PROMPT)
    sampler = InfiniteTalkSampler(transformer, vae, clip, sampling, device=device, dtype=dtype)
    side = max(max(b) for b in BUCKETS[sampling.table].values())
    warning = ("InfiniteTalk with random weights built on the device (no files): the output is noise; speed and "
               "memory are the published model's")
    size = "published" if config == PUBLISHED else "custom"
    info = EngineInfo(name=f"infinitetalk-{sampling.table}-random", crop_size=side, weights=f"random:{size}",
                      random_weights_warning=warning, dtype=dtype_name, whole_frame=True)
    log.warning("%s (%d layers x %d, %s buckets, %d steps, text guidance %g, audio guidance %g)", warning,
                t.num_layers, t.dim, sampling.table, sampling.steps, sampling.text_guidance, sampling.audio_guidance)
    return InfiniteTalkEngine(sampler, wav2vec, prompts, info, sampling, device=device)
