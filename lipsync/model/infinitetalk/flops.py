"""FLOPs per chunk, counted (not estimated by hand): the full-size modules run on the ``meta`` device under
``torch.utils.flop_counter.FlopCounterMode``, which adds up every matmul, convolution and attention's FLOPs from
the shapes alone (no weights, no memory). Predictions for a GPU divide by an assumed sustained throughput.

    python -m lipsync.model.infinitetalk.flops      # the table in lipsync/model/README.md
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from lipsync.model.infinitetalk.config import PUBLISHED, bucket

H100_BF16_DENSE = 989e12
"""H100 SXM's dense bf16 peak (FLOP/s)."""
ASSUMED_MFU = 0.45
"""Sustained fraction of the peak assumed for the predictions (a 33k-74k-token DiT with flash attention)."""


def _count(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return float(counter.get_total_flops())


@lru_cache(maxsize=None)
def transformer_flops(height: int, width: int, frames: int = 81) -> float:
    """One forward of the 14B transformer with the audio adapter on one chunk."""
    from lipsync.model.infinitetalk.transformer import InfiniteTalkTransformer

    c = PUBLISHED.transformer
    with torch.device("meta"):
        model = InfiniteTalkTransformer(c).to(torch.bfloat16)
        t_lat = (frames - 1) // 4 + 1
        args = (torch.empty(1, c.in_dim, t_lat, height // 8, width // 8, dtype=torch.bfloat16), torch.empty(1),
                torch.empty(1, c.text_len, c.text_dim, dtype=torch.bfloat16),
                torch.empty(1, 257, c.image_dim, dtype=torch.bfloat16),
                torch.empty(1, frames, 5, c.audio_layers, c.audio_channels, dtype=torch.bfloat16))
    return _count(lambda: model(*args))


@lru_cache(maxsize=None)
def vae_flops(height: int, width: int, frames: int) -> tuple[float, float]:
    """(encode, decode) of ``frames`` frames (4n+1) with the Wan VAE."""
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        vae = AutoencoderKLWan(**PUBLISHED.vae.diffusers_kwargs())
        video = torch.empty(1, 3, frames, height, width)
        latent = torch.empty(1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)
    return _count(lambda: vae.encode(video)), _count(lambda: vae.decode(latent))


@dataclass(frozen=True)
class ChunkFlops:
    resolution: str
    size: tuple[int, int]
    steps: int
    passes: int
    transformer: float
    vae: float

    @property
    def total(self) -> float:
        return self.steps * self.passes * self.transformer + self.vae

    def predicted_seconds(self, peak: float = H100_BF16_DENSE, mfu: float = ASSUMED_MFU) -> float:
        return self.total / (peak * mfu)


def chunk_flops(resolution: str, steps: int, passes: int, *, aspect: tuple[int, int] = (1080, 1920),
                frames: int = 81, motion: int = 9) -> ChunkFlops:
    """A later chunk (the first one encodes 1 motion frame instead of ``motion``): the transformer ``steps`` x
    ``passes`` times (3 with text and audio guidance, 2 with text guidance 1, 1 without guidance), the VAE
    encoding the reference + zeros and the motion frames, and decoding the chunk. CLIP (one 224² image) and
    the audio encoder are below 0.1 % and left out."""
    h, w = bucket(*aspect, resolution)
    enc, dec = vae_flops(h, w, frames)
    motion_enc, _ = vae_flops(h, w, motion)
    return ChunkFlops(resolution, (h, w), steps, passes, transformer_flops(h, w, frames), enc + motion_enc + dec)


def table() -> list[str]:
    rows = ["| bucket (16:9 source) | mode | transformer per call | per chunk (81 frames, 72 new) | predicted H100 s per "
            "chunk | predicted s per output second (25 fps) |", "|---|---|---|---|---|---|"]
    for res in ("480p", "720p"):
        for steps, passes, mode in ((40, 3, "40 steps, text + audio guidance"), (4, 1, "4 steps, no guidance (LoRA)")):
            c = chunk_flops(res, steps, passes)
            s = c.predicted_seconds()
            rows.append(f"| {res} {c.size[1]}x{c.size[0]} | {mode} | {c.transformer / 1e12:,.0f} TFLOP | "
                        f"{c.total / 1e15:,.1f} PFLOP | {s:,.0f} | {s / (72 / 25):,.1f} |")
    return rows


if __name__ == "__main__":
    print("\n".join(table()))
