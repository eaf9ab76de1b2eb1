"""The prompt through umT5 as the authors' ``T5EncoderModel`` does: whitespace cleaned, tokenized to 512 with
padding and the end token, encoded with the attention mask, cut to the prompt's tokens, zero-padded back to
``text_len`` (the transformer attends to all 512 rows, as theirs). Encodings are cached per prompt."""

from __future__ import annotations

import html
import re
from collections import OrderedDict

import torch


def clean(text: str) -> str:
    """``whitespace_clean(basic_clean(text))`` without ftfy's mojibake repair (not a dependency here)."""
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class PromptEncoder:
    CACHE = 8

    def __init__(self, t5, tokenizer, text_len: int, *, device: str, placement: str = "device"):
        self.t5, self.tokenizer, self.text_len = t5, tokenizer, text_len
        self.device = device
        self.placement = placement
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        if t5 is not None:
            t5.to(device if placement == "device" else "cpu")

    @torch.no_grad()
    def __call__(self, prompt: str) -> torch.Tensor:
        """(1, text_len, dim) on the CPU, float32."""
        hit = self._cache.pop(prompt, None)
        if hit is None:
            if self.t5 is None:
                raise LookupError("the text encoder was dropped after start-up (LIPSYNC_TEXT_ENCODER=drop)")
            ids = self.tokenizer([clean(prompt)], padding="max_length", truncation=True, max_length=self.text_len,
                                 add_special_tokens=True, return_tensors="pt")
            where = next(self.t5.parameters()).device
            states = self.t5(input_ids=ids.input_ids.to(where),
                             attention_mask=ids.attention_mask.to(where)).last_hidden_state.float().cpu()
            length = int(ids.attention_mask.sum())
            hit = torch.zeros(1, self.text_len, states.shape[-1])
            hit[:, :length] = states[:, :length]
        self._cache[prompt] = hit
        while len(self._cache) > self.CACHE:
            self._cache.popitem(last=False)
        return hit

    def drop(self, *keep: str) -> None:
        """Encode ``keep`` now, then free the encoder (``LIPSYNC_TEXT_ENCODER=drop``)."""
        for prompt in keep:
            self(prompt)
        self.t5 = None
