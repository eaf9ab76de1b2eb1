"""Benchmark the lip-sync pipeline over video lengths: seconds per output second and peak memory.

    python scripts/bench_model.py                                   # tiny, CPU, 50 100 200 400 frames
    python scripts/bench_model.py --config base --device cuda --dtype bf16 --size 512 --frames 100 200

Each length runs in a fresh subprocess so that its peak memory is its own: on CPU the peak resident set size
(``ru_maxrss``) and the growth during the call above the loaded-model baseline; on CUDA
``torch.cuda.max_memory_allocated``. Weights are random (``--weights DIR`` loads real ones): speed and memory do
not depend on their values. The check ``peak(400) <= 1.3 * peak(100)`` is printed when both lengths ran.
On CUDA it also prints an estimate of model FLOP utilisation (transformer matmul FLOPs / time / peak FLOPs).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lipsync.model.devices import TORCH_DTYPES, resolve_dtype, torch_dtype  # noqa: E402

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}  # dense bf16/fp16


def synthetic_inputs(num_frames: int, size: int, fps: float, seed: int = 0) -> dict:
    """A moving random texture with a mouth box, a few generated frames, and a chirp as audio."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    frames = np.stack([np.roll(base, i, axis=1) for i in range(num_frames)])
    mask = np.zeros((num_frames, size, size), np.float32)
    mask[:, size // 2 : size * 7 // 8, size // 4 : size * 3 // 4] = 1.0
    generate = np.zeros(num_frames, bool)
    generate[num_frames // 3 : num_frames // 3 + 4] = True
    seconds = num_frames / fps
    t = np.arange(int(seconds * 16000)) / 16000
    audio = (0.1 * np.sin(2 * np.pi * (200 + 100 * t) * t)).astype(np.float32)
    return dict(frames=frames, mouth_mask=mask, generate=generate, audio=audio, fps=fps,
                face_id_embedding=None)


def transformer_flops(pipe, num_latent: int, tokens_per_frame: int, blocks, steps: int, batch: int) -> float:
    """Matmul FLOPs of the transformer for the whole call (2 * params * tokens + attention scores)."""
    cfg = pipe.transformer.config
    inner = cfg.num_attention_heads * cfg.attention_head_dim
    per_layer_params = sum(p.numel() for p in pipe.transformer.transformer_blocks[0].parameters() if p.ndim == 2)
    refs = min(pipe.config.max_reference_frames, 1) * tokens_per_frame
    total = 0.0
    for block in blocks:
        s = (block.end - block.start) * tokens_per_frame + refs
        total += cfg.num_layers * (2 * per_layer_params * s + 4 * s * s * inner)
    return total * steps * batch


def run_one(args: argparse.Namespace, num_frames: int) -> dict:
    import torch

    from lipsync.model.pipio.frame_blocks import plan_frame_blocks
    from lipsync.model.pipio.pipeline import LipSyncPipeline

    dtype = torch_dtype(resolve_dtype(args.dtype, args.device, prefer="bf16"))  # auto: what a worker runs
    if args.weights:
        pipe = LipSyncPipeline.from_pretrained(args.weights, device=args.device, dtype=dtype)
    else:
        pipe = LipSyncPipeline.from_config(args.config, device=args.device, dtype=dtype)
    if args.compile:  # regional torch.compile of the repeated transformer block
        pipe.transformer.compile_repeated_blocks(dynamic=True)
    inputs = synthetic_inputs(num_frames, args.size, args.fps)
    knobs = dict(vae_chunk_size=args.vae_chunk_size, vae_overlap_window_width=args.vae_overlap,
                 frame_block_width=args.frame_block_width, feed_forward_num_splits=args.ff_splits, seed=0,
                 num_inference_steps=args.steps)
    cuda = args.device.startswith("cuda")
    if args.warmup:  # first-call costs (allocator, kernels) out of the timing
        pipe(**synthetic_inputs(9, args.size, args.fps), **{**knobs, "num_inference_steps": 1})
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    baseline_gpu = torch.cuda.memory_allocated() / 2**20 if cuda else 0.0
    seconds = float("inf")
    for _ in range(args.repeat):  # the minimum over repeats: robust to other load on a shared machine
        start = time.perf_counter()
        out = pipe(**inputs, **knobs)
        if cuda:
            torch.cuda.synchronize()
        seconds = min(seconds, time.perf_counter() - start)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = dict(frames=num_frames, seconds=seconds, sec_per_output_sec=seconds / (num_frames / args.fps),
                  peak_rss_mib=peak_rss, call_rss_growth_mib=peak_rss - baseline_rss,
                  blocks=out.num_frame_blocks, device=args.device)
    if cuda:
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["gpu_growth_mib"] = result["peak_gpu_mib"] - baseline_gpu
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
        steps = args.steps or pipe.config.num_inference_steps
        latent_frames = (num_frames - 1 + 7) // 8 + 1
        tokens = (args.size // 32) ** 2
        blocks = plan_frame_blocks(latent_frames, args.frame_block_width)
        batch = 2 if pipe.config.guidance_scale > 1 else 1
        flops = transformer_flops(pipe, latent_frames, tokens, blocks, steps, batch)
        result.update(gpu=name, transformer_tflop=flops / 1e12,
                      mfu=(flops / seconds / (peak * 1e12)) if peak else None)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--weights", default=None, help="load a weights directory instead of random init")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=[*sorted(TORCH_DTYPES), "auto"], default="auto",
                        help="auto: what a worker runs (bf16 on a GPU, fp32 on a CPU)")
    parser.add_argument("--frames", type=int, nargs="+", default=[50, 100, 200, 400])
    parser.add_argument("--size", type=int, default=64, help="square face-crop working size (multiple of 32)")
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the config's)")
    parser.add_argument("--vae-chunk-size", type=int, default=65)
    parser.add_argument("--vae-overlap", type=int, default=16)
    parser.add_argument("--frame-block-width", type=int, default=136)
    parser.add_argument("--ff-splits", type=int, default=2)
    parser.add_argument("--warmup", action="store_true", help="one short untimed call first")
    parser.add_argument("--repeat", type=int, default=1, help="timed calls per length; the minimum is reported")
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks (GPU)")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args(argv)

    if args.one is not None:
        print(json.dumps(run_one(args, args.one)))
        return 0

    child_args = [a for a in (argv if argv is not None else sys.argv[1:])]
    results = []
    for n in args.frames:
        proc = subprocess.run([sys.executable, __file__, *child_args, "--one", str(n)], capture_output=True,
                              text=True, cwd=ROOT)
        if proc.returncode:
            sys.stderr.write(proc.stderr)
            return proc.returncode
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(r)
        line = (f"frames {r['frames']:4d}  blocks {r['blocks']:3d}  {r['seconds']:8.2f} s  "
                f"{r['sec_per_output_sec']:7.3f} s/output-s  peak RSS {r['peak_rss_mib']:8.1f} MiB  "
                f"(+{r['call_rss_growth_mib']:.1f} MiB during the call)")
        if "peak_gpu_mib" in r:
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
            line += f"  peak GPU {r['peak_gpu_mib']:.0f} MiB (+{r['gpu_growth_mib']:.0f})  MFU~{mfu}  {r['gpu']}"
        print(line, flush=True)
    by_frames = {r["frames"]: r for r in results}
    if 100 in by_frames and 400 in by_frames:
        key = "peak_gpu_mib" if "peak_gpu_mib" in by_frames[100] else "peak_rss_mib"
        ratio = by_frames[400][key] / by_frames[100][key]
        print(f"{key}: peak(400) / peak(100) = {ratio:.3f}  ({'OK' if ratio <= 1.3 else 'FAIL'}: must be <= 1.3)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
