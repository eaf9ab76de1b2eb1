"""Our key maps between the authors' checkpoint formats and the modules we run (torch-free).

Each map is a list of (authors' pattern, our pattern) pairs with ``{i}`` / ``{j}`` standing for indices, applied
in order, so it runs both ways: ``to_ours`` when loading, ``to_authors`` when writing random weights in the
published format. A key no pair matches maps to None (the caller names it as unexpected).

- Transformer (``wan/modules/multitalk_model.py`` → diffusers ``WanTransformer3DModel`` under ``wan.`` + our audio
  modules). The authors' block norms run norm1 (self-attention), norm3 (the cross-attention's, with weights),
  norm2 (feed-forward); diffusers numbers them in that order (norm1, norm2, norm3).
- VAE (``wan/modules/vae.py`` ``WanVAE_`` → diffusers ``AutoencoderKLWan``): the decoder's flat ``upsamples`` list
  becomes up blocks of ``num_res_blocks + 1`` resnets and one upsampler.
- umT5 (``wan/modules/t5.py`` ``T5Encoder`` → transformers ``UMT5EncoderModel``): the gate of the gated GELU is
  ``wi_0``, the linear half ``wi_1``.
- CLIP (``wan/modules/clip.py`` ``VisionTransformer`` → transformers ``CLIPVisionModel``): the fused ``to_qkv`` is
  split into q/k/v (not a rename: ``loading.clip_state``).
"""

from __future__ import annotations

import re
from collections.abc import Callable

Pairs = list[tuple[str, str]]

TRANSFORMER: Pairs = [
    ("patch_embedding.{p}", "wan.patch_embedding.{p}"),
    ("text_embedding.0.{p}", "wan.condition_embedder.text_embedder.linear_1.{p}"),
    ("text_embedding.2.{p}", "wan.condition_embedder.text_embedder.linear_2.{p}"),
    ("time_embedding.0.{p}", "wan.condition_embedder.time_embedder.linear_1.{p}"),
    ("time_embedding.2.{p}", "wan.condition_embedder.time_embedder.linear_2.{p}"),
    ("time_projection.1.{p}", "wan.condition_embedder.time_proj.{p}"),
    ("img_emb.proj.0.{p}", "wan.condition_embedder.image_embedder.norm1.{p}"),
    ("img_emb.proj.1.{p}", "wan.condition_embedder.image_embedder.ff.net.0.proj.{p}"),
    ("img_emb.proj.3.{p}", "wan.condition_embedder.image_embedder.ff.net.2.{p}"),
    ("img_emb.proj.4.{p}", "wan.condition_embedder.image_embedder.norm2.{p}"),
    ("head.head.{p}", "wan.proj_out.{p}"),
    ("head.modulation", "wan.scale_shift_table"),
    ("blocks.{i}.modulation", "wan.blocks.{i}.scale_shift_table"),
    ("blocks.{i}.self_attn.q.{p}", "wan.blocks.{i}.attn1.to_q.{p}"),
    ("blocks.{i}.self_attn.k.{p}", "wan.blocks.{i}.attn1.to_k.{p}"),
    ("blocks.{i}.self_attn.v.{p}", "wan.blocks.{i}.attn1.to_v.{p}"),
    ("blocks.{i}.self_attn.o.{p}", "wan.blocks.{i}.attn1.to_out.0.{p}"),
    ("blocks.{i}.self_attn.norm_q.{p}", "wan.blocks.{i}.attn1.norm_q.{p}"),
    ("blocks.{i}.self_attn.norm_k.{p}", "wan.blocks.{i}.attn1.norm_k.{p}"),
    ("blocks.{i}.cross_attn.q.{p}", "wan.blocks.{i}.attn2.to_q.{p}"),
    ("blocks.{i}.cross_attn.k.{p}", "wan.blocks.{i}.attn2.to_k.{p}"),
    ("blocks.{i}.cross_attn.v.{p}", "wan.blocks.{i}.attn2.to_v.{p}"),
    ("blocks.{i}.cross_attn.o.{p}", "wan.blocks.{i}.attn2.to_out.0.{p}"),
    ("blocks.{i}.cross_attn.k_img.{p}", "wan.blocks.{i}.attn2.add_k_proj.{p}"),
    ("blocks.{i}.cross_attn.v_img.{p}", "wan.blocks.{i}.attn2.add_v_proj.{p}"),
    ("blocks.{i}.cross_attn.norm_q.{p}", "wan.blocks.{i}.attn2.norm_q.{p}"),
    ("blocks.{i}.cross_attn.norm_k.{p}", "wan.blocks.{i}.attn2.norm_k.{p}"),
    ("blocks.{i}.cross_attn.norm_k_img.{p}", "wan.blocks.{i}.attn2.norm_added_k.{p}"),
    ("blocks.{i}.norm3.{p}", "wan.blocks.{i}.norm2.{p}"),
    ("blocks.{i}.ffn.0.{p}", "wan.blocks.{i}.ffn.net.0.proj.{p}"),
    ("blocks.{i}.ffn.2.{p}", "wan.blocks.{i}.ffn.net.2.{p}"),
    ("blocks.{i}.audio_cross_attn.{p}", "audio_attn.{i}.{p}"),
    ("blocks.{i}.norm_x.{p}", "audio_norm.{i}.{p}"),
    ("audio_proj.{p}", "audio_proj.{p}"),
]

_RES = [("residual.0.gamma", "norm1.gamma"), ("residual.2.{p}", "conv1.{p}"), ("residual.3.gamma", "norm2.gamma"),
        ("residual.6.{p}", "conv2.{p}"), ("shortcut.{p}", "conv_shortcut.{p}")]


def vae_pairs(num_res_blocks: int, levels: int = 4) -> Pairs:
    pairs: Pairs = [("conv1.{p}", "quant_conv.{p}"), ("conv2.{p}", "post_quant_conv.{p}")]
    for part in ("encoder", "decoder"):
        pairs += [(f"{part}.conv1.{{p}}", f"{part}.conv_in.{{p}}"),
                  (f"{part}.head.0.gamma", f"{part}.norm_out.gamma"), (f"{part}.head.2.{{p}}", f"{part}.conv_out.{{p}}"),
                  (f"{part}.middle.1.{{p}}", f"{part}.mid_block.attentions.0.{{p}}")]
        for k, n in ((0, 0), (2, 1)):
            pairs += [(f"{part}.middle.{k}.{a}", f"{part}.mid_block.resnets.{n}.{b}") for a, b in _RES]
    pairs += [(f"encoder.downsamples.{{i}}.{a}", f"encoder.down_blocks.{{i}}.{b}") for a, b in _RES]
    pairs += [("encoder.downsamples.{i}.resample.{p}", "encoder.down_blocks.{i}.resample.{p}"),
              ("encoder.downsamples.{i}.time_conv.{p}", "encoder.down_blocks.{i}.time_conv.{p}")]
    per_level = num_res_blocks + 2  # resnets, then the upsampler (none after the last level)
    for level in range(levels):
        for j in range(num_res_blocks + 1):
            flat = level * per_level + j
            pairs += [(f"decoder.upsamples.{flat}.{a}", f"decoder.up_blocks.{level}.resnets.{j}.{b}") for a, b in _RES]
        if level < levels - 1:
            flat = level * per_level + num_res_blocks + 1
            for sub in ("resample", "time_conv"):
                pairs.append((f"decoder.upsamples.{flat}.{sub}.{{p}}", f"decoder.up_blocks.{level}.upsamplers.0.{sub}.{{p}}"))
    return pairs


T5: Pairs = [
    ("token_embedding.weight", "shared.weight"),
    ("blocks.{i}.norm1.weight", "encoder.block.{i}.layer.0.layer_norm.weight"),
    ("blocks.{i}.attn.q.weight", "encoder.block.{i}.layer.0.SelfAttention.q.weight"),
    ("blocks.{i}.attn.k.weight", "encoder.block.{i}.layer.0.SelfAttention.k.weight"),
    ("blocks.{i}.attn.v.weight", "encoder.block.{i}.layer.0.SelfAttention.v.weight"),
    ("blocks.{i}.attn.o.weight", "encoder.block.{i}.layer.0.SelfAttention.o.weight"),
    ("blocks.{i}.pos_embedding.embedding.weight", "encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight"),
    ("blocks.{i}.norm2.weight", "encoder.block.{i}.layer.1.layer_norm.weight"),
    ("blocks.{i}.ffn.gate.0.weight", "encoder.block.{i}.layer.1.DenseReluDense.wi_0.weight"),
    ("blocks.{i}.ffn.fc1.weight", "encoder.block.{i}.layer.1.DenseReluDense.wi_1.weight"),
    ("blocks.{i}.ffn.fc2.weight", "encoder.block.{i}.layer.1.DenseReluDense.wo.weight"),
    ("norm.weight", "encoder.final_layer_norm.weight"),
]

CLIP: Pairs = [  # after loading.clip_state split the fused projections
    ("visual.patch_embedding.weight", "embeddings.patch_embedding.weight"),
    ("visual.cls_embedding", "embeddings.class_embedding"),
    ("visual.pos_embedding", "embeddings.position_embedding.weight"),
    ("visual.pre_norm.{p}", "pre_layrnorm.{p}"),
    ("visual.transformer.{i}.norm1.{p}", "encoder.layers.{i}.layer_norm1.{p}"),
    ("visual.transformer.{i}.norm2.{p}", "encoder.layers.{i}.layer_norm2.{p}"),
    ("visual.transformer.{i}.attn.q.{p}", "encoder.layers.{i}.self_attn.q_proj.{p}"),
    ("visual.transformer.{i}.attn.k.{p}", "encoder.layers.{i}.self_attn.k_proj.{p}"),
    ("visual.transformer.{i}.attn.v.{p}", "encoder.layers.{i}.self_attn.v_proj.{p}"),
    ("visual.transformer.{i}.attn.proj.{p}", "encoder.layers.{i}.self_attn.out_proj.{p}"),
    ("visual.transformer.{i}.mlp.0.{p}", "encoder.layers.{i}.mlp.fc1.{p}"),
    ("visual.transformer.{i}.mlp.2.{p}", "encoder.layers.{i}.mlp.fc2.{p}"),
    ("visual.post_norm.{p}", "post_layernorm.{p}"),
]


def _compile(pairs: Pairs, reverse: bool) -> list[tuple[re.Pattern, str]]:
    out = []
    for authors, ours in pairs:
        src, dst = (ours, authors) if reverse else (authors, ours)
        pattern = re.escape(src).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{j\}", r"(?P<j>\d+)")
        pattern = pattern.replace(r"\{p\}", r"(?P<p>[A-Za-z_0-9.]+)")
        out.append((re.compile(f"^{pattern}$"), dst))
    return out


def mapper(pairs: Pairs, *, reverse: bool = False) -> Callable[[str], str | None]:
    """A function from the authors' key to ours (``reverse``: ours to the authors'), None where no pair matches."""
    table = _compile(pairs, reverse)

    def rename(key: str) -> str | None:
        for pattern, template in table:
            m = pattern.match(key)
            if m:
                return template.format(**m.groupdict())
        return None

    return rename


WAV2VEC_HEADS = ("quantizer.", "project_q.", "project_hid.", "lm_head.", "dropout_features.")
"""chinese-wav2vec2-base's file is a ``Wav2Vec2ForPreTraining`` save: its pre-training heads are not used."""


def wav2vec(key: str) -> str | None:
    """chinese-wav2vec2-base's key (``wav2vec2.``-prefixed, weight norm as ``weight_g``/``weight_v``: transformers
    4.16's save of ``Wav2Vec2ForPreTraining``) -> ``Wav2Vec2Model``'s (weight norm as a parametrization); None for
    the pre-training heads. Keys already in ``Wav2Vec2Model``'s form (a ``save_pretrained`` of the bare model)
    map to themselves."""
    if key.startswith(WAV2VEC_HEADS):
        return None
    key = key.removeprefix("wav2vec2.")
    if key.endswith(".weight_g"):
        return key.removesuffix(".weight_g") + ".parametrizations.weight.original0"
    if key.endswith(".weight_v"):
        return key.removesuffix(".weight_v") + ".parametrizations.weight.original1"
    return key
