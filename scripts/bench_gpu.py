"""GPU benchmark of the pipio model against its speed anchor, the stock diffusers ``LTXPipeline``, in one run.

Both at the same latent token count and steps with guidance (random weights: speed and memory do not depend on
their values): ours on ``frames`` face crops of ``size``² (plus its appearance reference tokens), the stock
LTX-Video transformer of the same width and depth on ``frames`` (rounded to 8n+1) of ``size``². Prints per
model: seconds, seconds per output second, peak GPU memory, transformer FLOPs and MFU, then ours / stock.
The issue's target: ours <= 1.3x the stock time, for about 21 % more FLOPs.

    .venv/bin/python scripts/bench_gpu.py                          # base config, 512², 100 frames, 30 steps, cuda
    .venv/bin/python scripts/bench_gpu.py --compile                # the transformer blocks torch.compile'd first
    .venv/bin/python scripts/bench_gpu.py --predict                # no GPU: FLOP counts and predicted seconds
    .venv/bin/python scripts/bench_gpu.py --config tiny --device cpu --frames 9 --steps 1 --size 64   # smoke test
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lipsync.model.devices import torch_dtype  # noqa: E402
from lipsync.model.pipio.config import load_config  # noqa: E402

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}  # dense bf16
OURS_ONLY = ("audio_dim", "audio_num_layers", "audio_steps_per_frame", "audio_tokens_per_frame", "id_embed_dim",
             "num_id_tokens", "zero_init_gates")
PROMPT_TOKENS = 128


def latent_shape(frames: int, size: int, vae: dict) -> tuple[int, int, int]:
    """(padded pixel frames 8n+1, latent frames, tokens per latent frame)."""
    rt, rs = vae.get("temporal_compression_ratio", 8), vae.get("spatial_compression_ratio", 32)
    padded = (frames - 1 + rt - 1) // rt * rt + 1
    return padded, (padded - 1) // rt + 1, (size // rs) ** 2


def block_flops(block: torch.nn.Module, tokens: int, inner: int, text_tokens: int,
                extra: dict[str, tuple[int, int]]) -> float:
    """Matmul FLOPs of one transformer block on ``tokens`` tokens: 2 * weights * the tokens each weight sees
    (a cross-attention's K/V projections see its context tokens), plus attention scores and mixing.
    ``extra``: parameter-name prefix of another cross-attention -> (its K/V tokens, keys each query sees)."""
    total = 0.0
    for name, p in block.named_parameters():
        if p.ndim != 2:
            continue
        seen = tokens
        kv = ".to_k." in name or ".to_v." in name
        context = next((c for key, c in extra.items() if name.startswith(key)), None)
        if name.startswith("attn2.") and kv:
            seen = text_tokens
        elif context is not None and kv:
            seen = context[0]
        total += 2.0 * p.numel() * seen
    total += 4.0 * tokens * tokens * inner  # self-attention QK^T and AV
    total += 4.0 * tokens * text_tokens * inner  # text cross-attention
    for _, keys in extra.values():
        total += 4.0 * tokens * keys * inner
    return total


def count_flops(config_name: str, frames: int, size: int, steps: int, guidance: bool) -> dict[str, float]:
    """Transformer FLOPs of a whole call for ours and for the stock LTX transformer (built on meta: no memory)."""
    from diffusers import LTXVideoTransformer3DModel

    from lipsync.model.pipio.transformer_lipsync import LipSyncTransformer3DModel

    cfg = load_config(config_name)
    _, num_latent, per_frame = latent_shape(frames, size, cfg.vae)
    tokens = num_latent * per_frame
    with torch.device("meta"):
        ours = LipSyncTransformer3DModel(**cfg.transformer)
        stock = LTXVideoTransformer3DModel(**{k: v for k, v in cfg.transformer.items() if k not in OURS_ONLY})
    t = cfg.transformer
    inner = t["num_attention_heads"] * t["attention_head_dim"]
    batch = 2 if guidance else 1
    refs = min(1, cfg.pipeline.max_reference_frames) * per_frame  # appearance_cond_strength 1: one reference
    # ours: each latent frame attends to its own audio tokens (local), all tokens to the identity tokens
    audio, ids = t.get("audio_tokens_per_frame", 16), t.get("num_id_tokens", 4)
    ours_extra = {"attn_audio.": (num_latent * audio, audio), "attn_id.": (ids, ids)}
    ours_block = block_flops(ours.transformer_blocks[0], tokens + refs, inner, PROMPT_TOKENS, ours_extra)
    stock_block = block_flops(stock.transformer_blocks[0], tokens, inner, PROMPT_TOKENS, {})
    n = t["num_layers"]
    return {"tokens": tokens, "ours_tokens": tokens + refs, "ours": ours_block * n * steps * batch,
            "stock": stock_block * n * steps * batch,
            "ours_params": sum(p.numel() for p in ours.parameters()),
            "stock_params": sum(p.numel() for p in stock.parameters())}


def peak_tflops(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def run_ours(args, dtype) -> tuple[float, float]:
    from lipsync.model.pipio.engine import compile_blocks
    from lipsync.model.pipio.pipeline import LipSyncPipeline
    from scripts.bench_model import synthetic_inputs

    pipe = LipSyncPipeline.from_config(args.config, init_seed=0, device=args.device, dtype=dtype)
    pipe.place_text_encoder("drop")  # as a serving worker with a constant prompt: T5 freed after start-up
    if args.compile:
        compile_blocks(pipe)
    inputs = synthetic_inputs(args.frames, args.size, 25.0)
    inputs["generate"][:] = False
    kwargs = dict(num_inference_steps=args.steps, guidance_scale=args.guidance, seed=0)
    pipe(**{**inputs, "frames": inputs["frames"][:9], "mouth_mask": inputs["mouth_mask"][:9],
            "generate": inputs["generate"][:9]}, num_inference_steps=1, guidance_scale=args.guidance)  # warm-up
    return _timed(lambda: pipe(**inputs, **kwargs), args.device)


def run_stock(args, dtype) -> tuple[float, float]:
    from diffusers import (AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline,
                           LTXVideoTransformer3DModel)

    cfg = load_config(args.config)
    with torch.device(args.device):
        transformer = LTXVideoTransformer3DModel(**{k: v for k, v in cfg.transformer.items() if k not in OURS_ONLY})
        vae = AutoencoderKLLTXVideo(**cfg.vae)
    transformer.to(dtype=dtype)
    vae.to(dtype=dtype)
    if args.compile:
        for block in transformer.transformer_blocks:
            block.compile(dynamic=True)
    pipe = LTXPipeline(FlowMatchEulerDiscreteScheduler(**cfg.scheduler), vae, None, None, transformer)
    caption = cfg.transformer["caption_channels"]
    embeds = torch.randn(1, PROMPT_TOKENS, caption, device=args.device, dtype=dtype)
    mask = torch.ones(1, PROMPT_TOKENS, device=args.device, dtype=torch.long)
    padded, _, _ = latent_shape(args.frames, args.size, cfg.vae)
    call = dict(prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt_embeds=torch.zeros_like(embeds),
                negative_prompt_attention_mask=mask, height=args.size, width=args.size,
                guidance_scale=args.guidance, output_type="np")
    pipe(**call, num_frames=9, num_inference_steps=1)  # warm-up
    return _timed(lambda: pipe(**call, num_frames=padded, num_inference_steps=args.steps), args.device)


def _timed(fn, device: str) -> tuple[float, float]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    with torch.no_grad():
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return time.perf_counter() - started, torch.cuda.max_memory_allocated() / 2**30
    return time.perf_counter() - started, float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="base")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--predict", action="store_true", help="print FLOP counts and predictions only (no GPU)")
    parser.add_argument("--assume-mfu", type=float, default=0.35, help="MFU assumed for --predict")
    parser.add_argument("--assume-tflops", type=float, default=989.0,
                        help="peak bf16 TFLOP/s for --predict (H100/H200)")
    args = parser.parse_args()
    flops = count_flops(args.config, args.frames, args.size, args.steps, args.guidance > 1.0)
    seconds_out = args.frames / 25.0
    print(f"{args.config}: {args.frames} frames of {args.size}² ({flops['tokens']} latent tokens; ours "
          f"{flops['ours_tokens']} with the reference), {args.steps} steps, guidance {args.guidance}")
    print(f"  transformer parameters: ours {flops['ours_params'] / 1e9:.2f} B, "
          f"stock LTX {flops['stock_params'] / 1e9:.2f} B")
    print(f"  transformer FLOPs per call: ours {flops['ours'] / 1e15:.1f} PFLOP, stock {flops['stock'] / 1e15:.1f} "
          f"PFLOP (ours / stock = {flops['ours'] / flops['stock']:.2f})")
    if args.predict:
        rate = args.assume_mfu * args.assume_tflops * 1e12
        for name in ("ours", "stock"):
            s = flops[name] / rate
            print(f"  PREDICTION {name:5s}: {s:6.1f} s = {s / seconds_out:.2f} s per output second at "
                  f"{args.assume_mfu:.0%} MFU of {args.assume_tflops:g} TFLOP/s (transformer only)")
        return
    dtype = torch_dtype(args.dtype)
    peak = peak_tflops(args.device)
    results = {}
    for name, runner in (("ours", run_ours), ("stock", run_stock)):
        seconds, memory = runner(args, dtype)
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        results[name] = seconds
        mfu = f", MFU {flops[name] / seconds / (peak * 1e12):.1%}" if peak else ""
        print(f"  {name:5s}: {seconds:7.2f} s = {seconds / seconds_out:.2f} s per output second, peak GPU memory "
              f"{memory:.1f} GiB{mfu}", flush=True)
    print(f"  ours / stock time: {results['ours'] / results['stock']:.2f}x (target <= 1.3x)")


if __name__ == "__main__":
    main()
