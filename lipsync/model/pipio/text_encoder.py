"""Prompt encoding with transformers' T5 encoder (LTX-Video uses T5-v1.1-XXL, 4096-d, 128 tokens).

No tokenizer file can be downloaded here, so a model directory without ``tokenizer/`` uses the byte-level
``ByT5Tokenizer`` (no vocabulary file: 256 bytes + pad/eos/unk = 259 ids), which is what the tiny preset is
sized for. A real T5-XXL checkpoint directory brings its own ``tokenizer/``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, ByT5Tokenizer, PreTrainedTokenizerBase, T5Config, T5EncoderModel

BYTE_VOCAB_SIZE = 259


def build_text_encoder(config: dict) -> T5EncoderModel:
    return T5EncoderModel(T5Config(**config)).eval()


def build_tokenizer(directory: str | Path | None = None) -> PreTrainedTokenizerBase:
    if directory is not None and Path(directory).is_dir():
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    return ByT5Tokenizer(extra_ids=0)


def check_tokenizer(tokenizer: PreTrainedTokenizerBase, encoder: T5EncoderModel, source: str) -> None:
    """Refuse a tokenizer whose vocabulary does not match the text encoder's embedding (a byte-level tokenizer
    in front of T5-XXL would run, silently, on meaningless ids). T5 pads its embedding to a multiple of 128,
    so ``len(tokenizer) <= vocab_size < len(tokenizer) + 128`` is a match."""
    size, vocab = len(tokenizer), encoder.config.vocab_size
    if not size <= vocab < size + 128:
        raise ValueError(f"tokenizer ({type(tokenizer).__name__} from {source}) has {size} tokens but the text "
                         f"encoder's vocab_size is {vocab}: they do not belong together (a T5 checkpoint needs "
                         f"its own tokenizer/ folder)")


@torch.no_grad()
def encode_prompt(tokenizer: PreTrainedTokenizerBase, encoder: T5EncoderModel, prompt: str,
                  max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """prompt -> (1, max_tokens, d_model) hidden states and (1, max_tokens) attention mask (1 = real token)."""
    tokens = tokenizer([prompt], padding="max_length", max_length=max_tokens, truncation=True,
                       add_special_tokens=True, return_tensors="pt")
    param = next(encoder.parameters())
    ids = tokens.input_ids.to(param.device)
    if int(ids.max()) >= encoder.config.vocab_size:
        raise ValueError(f"tokenizer id {int(ids.max())} >= text encoder vocab_size {encoder.config.vocab_size}")
    mask = tokens.attention_mask.to(param.device)
    hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    return hidden, mask
