"""LatentSync at the published network sizes (random weights): UNet and VAE call times, memory against 18 GB.

Rows:

1. **UNet**: one call of the full 1.6 UNet (1.27 B parameters) with audio guidance (batch 2 x F frames) at 512²
   (64² latents), timed after a warm-up on a GPU (on a CPU a call takes minutes: the first is timed); per output
   frame one request costs ``steps`` such calls / F.
2. **VAE**: sd-vae-ft-mse decode at 512² for F frames (time, activation peak).
3. **memory**: peak memory of those calls for F = 1 and F = 2 frames; activations grow linearly in frames, so the
   slope predicts a 16-frame segment. On CUDA it is ``torch.cuda.max_memory_allocated``; on CPU the process's
   peak RSS growth (fp32), halved for the fp16 prediction — compared with the published 18 GB for 1.6.

Engine alone and end to end (720p, 1080p) are ``scripts/bench_engines.py``'s rows: ``latentsync_folder`` below is
the writer its ``ENGINES`` table registers.

    .venv/bin/python scripts/bench_latentsync.py                                  # CPU, fp32, F = 1, 2
    .venv/bin/python scripts/bench_latentsync.py --device cuda --dtype fp16 --frames 8 16
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PUBLISHED_VRAM_GB = 18.0


def latentsync_folder(root: Path) -> Path:
    """Random LatentSync 1.6 weights at the published sizes in the published layout (for bench_engines)."""
    from lipsync.model.latentsync.random_weights import write_published_weights

    return write_published_weights(root)


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def unet_rows(device: str, dtype_name: str, frames: tuple[int, ...]) -> None:
    import torch

    from lipsync.model.devices import torch_dtype

    from lipsync.model.latentsync.config import variant_config
    from lipsync.model.latentsync.unet import LatentSyncUNet

    dtype = torch_dtype(dtype_name)
    cfg = variant_config("latentsync-1.6")
    unet = LatentSyncUNet(cfg.unet).to(device=device, dtype=dtype).eval()
    params = sum(p.numel() for p in unet.parameters())
    weights_gb = params * torch.finfo(dtype).bits / 8 / 1e9
    print(f"UNet 1.6: {params / 1e9:.3f} B parameters, {weights_gb:.2f} GB in {dtype_name}", flush=True)
    h = cfg.latent_size
    peaks = {}
    cuda = device.startswith("cuda")
    rss_loaded = _rss_gb()
    for f in sorted(frames):
        x = torch.randn(2, 13, f, h, h, device=device, dtype=dtype)
        audio = torch.randn(2 * f, 50, 384, device=device, dtype=dtype)
        with torch.no_grad():
            if cuda:  # warm-up on GPU (kernels, allocator); on CPU a call is minutes, the first one is timed
                unet(x, 951, audio)
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            unet(x, 951, audio)
            if cuda:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
        # CPU: the process's peak RSS above the loaded model (monotonic, so the frame counts go in rising order)
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if cuda else max(0.0, _rss_gb() - rss_loaded)
        peaks[f] = peak
        print(f"  UNet call, guidance batch 2 x {f} frames at {cfg.resolution}²: {dt:.2f} s "
              f"-> {20 * dt / f:.1f} s per output frame at 20 steps; activation peak {peak:.2f} GB "
              f"({'CUDA allocated' if cuda else 'peak RSS above the loaded model, fp32'})", flush=True)
    if len(peaks) >= 2:
        (f1, p1), (f2, p2) = sorted(peaks.items())[:2]
        slope = (p2 - p1) / (f2 - f1)
        act16 = p1 + slope * (16 - f1)
        scale = 0.5 if not cuda and dtype == torch.float32 else 1.0
        fp16_weights = params * 2 / 2**30
        predicted = fp16_weights + 0.2 + act16 * scale  # + VAE and whisper (~0.2 GB fp16)
        print(f"  predicted peak for one 16-frame segment in fp16: {predicted:.1f} GB (UNet weights "
              f"{fp16_weights:.1f} + VAE/whisper 0.2 + activations {act16 * scale:.1f}); published: "
              f"{PUBLISHED_VRAM_GB:g} GB", flush=True)


def vae_rows(device: str, dtype_name: str, frames: tuple[int, ...]) -> None:
    """sd-vae-ft-mse decode at 512² (the whole segment goes in one call when vae_chunk_size >= 16)."""
    import torch

    from lipsync.model.devices import torch_dtype
    from diffusers import AutoencoderKL

    from lipsync.model.latentsync.random_weights import SD_VAE_FT_MSE

    dtype = torch_dtype(dtype_name)
    cuda = device.startswith("cuda")
    vae = AutoencoderKL(**SD_VAE_FT_MSE).to(device=device, dtype=dtype).eval()
    rss_loaded = _rss_gb()
    peaks = {}
    for f in sorted(frames):
        z = torch.randn(f, 4, 64, 64, device=device, dtype=dtype)
        with torch.no_grad():
            if cuda:
                vae.decode(z)
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            vae.decode(z)
            if cuda:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
        peaks[f] = (torch.cuda.max_memory_allocated() - base) / 2**30 if cuda else max(0.0, _rss_gb() - rss_loaded)
        print(f"  VAE decode of {f} frame(s) at 512²: {dt:.2f} s, activation peak {peaks[f]:.2f} GB", flush=True)
    if len(peaks) >= 2:
        (f1, p1), (f2, p2) = sorted(peaks.items())[:2]
        act16 = p1 + (p2 - p1) / (f2 - f1) * (16 - f1)
        scale = 0.5 if not cuda and dtype == torch.float32 else 1.0
        print(f"  predicted VAE decode of a 16-frame segment in fp16: {act16 * scale:.1f} GB of activations "
              f"(lower with vae_chunk_size 9: one 9-frame batch)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto", help="auto: what a worker runs (fp16 on a GPU, fp32 on a CPU)")
    ap.add_argument("--frames", type=int, nargs="+", default=[1, 2], help="frames per UNet / VAE call timed")
    ap.add_argument("--parts", nargs="+", default=["unet", "vae"], choices=["unet", "vae"])
    args = ap.parse_args()
    from lipsync.model.devices import resolve_dtype

    args.dtype = resolve_dtype(args.dtype, args.device, prefer="fp16")  # LatentSync's authors run fp16
    if "unet" in args.parts:
        unet_rows(args.device, args.dtype, tuple(args.frames))
    if "vae" in args.parts:
        vae_rows(args.device, args.dtype, tuple(args.frames))


if __name__ == "__main__":
    main()
