"""Self-attention with a logit bias on the reference keys that keeps the fused (flash) SDPA kernels.

The appearance references enter self-attention with a key logit bias ``b = log(strength / n)`` (see
``transformer_lipsync``). Passed as a float ``attn_mask``, any bias rules out PyTorch's flash kernel (it takes
no mask) and makes the memory-efficient one read a mask. The same logits come without a mask: append one
feature to every query (the constant 1) and to every key (``b * sqrt(d)`` on reference keys, 0 elsewhere), and
keep the scale at ``1 / sqrt(d)`` of the real head size. Then

    q'.k' / sqrt(d) = q.k / sqrt(d) + 1 * (b * sqrt(d)) / sqrt(d) = q.k / sqrt(d) + b   on a reference key.

The extra feature is padded with zeros to a multiple of 8 (what the fused kernels want), and the values get
the same zero padding, sliced off after: +8 of 64 head dimensions, +12.5 % of the attention's FLOPs, against a
masked kernel. Everything else is ``LTXVideoAttnProcessor``'s computation, in the same order.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_ltx import LTXVideoAttnProcessor, apply_rotary_emb

PAD = 8


class ReferenceBiasAttnProcessor(LTXVideoAttnProcessor):
    """``LTXVideoAttnProcessor`` with ``reference_bias=(first_reference_token, bias)``: that bias added to the
    logits of the keys from that token on, without an attention mask (module docstring). ``bias``: a float, or
    a 0-dim tensor (what the transformer passes: torch.compile then takes it as an input, no recompile per
    value); a tensor is never compared with zero here (no host sync): the caller passes None for no bias."""

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb: torch.Tensor | None = None,
                 reference_bias: tuple[int, float | torch.Tensor] | None = None) -> torch.Tensor:
        if reference_bias is None or attention_mask is not None or (
                not isinstance(reference_bias[1], torch.Tensor) and reference_bias[1] == 0.0):
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        start, bias = reference_bias
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query = attn.norm_q(attn.to_q(hidden_states))
        key = attn.norm_k(attn.to_k(context))
        value = attn.to_v(context)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb)
            key = apply_rotary_emb(key, image_rotary_emb)
        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        head_dim = query.shape[-1]

        extra_q = query.new_zeros(*query.shape[:-1], PAD)
        extra_q[..., 0] = 1.0
        extra_k = key.new_zeros(*key.shape[:-1], PAD)
        extra_k[:, start:, :, 0] = bias * math.sqrt(head_dim)
        out = dispatch_attention_fn(
            torch.cat([query, extra_q], -1), torch.cat([key, extra_k], -1), F.pad(value, (0, PAD)),
            attn_mask=None, dropout_p=0.0, is_causal=False, scale=1.0 / math.sqrt(head_dim),
            backend=self._attention_backend, parallel_config=self._parallel_config,
        )[..., :head_dim]
        out = out.flatten(2, 3).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out))
