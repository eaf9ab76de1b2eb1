"""Every engine in fp16 and bf16 against fp32, on the CPU, on the same request (a real face clip): the generated
crops stay within a bound of the fp32 ones where the engine's blend mask is > 0, no module produces inf or
NaN, and once pasted through the blend mask (``lipsync.media.paste``) no frame pixel outside the mask changes.

Random small weights (``write_random_weights(size="small")``) make noise, not faces, and noise amplifies
rounding: the bounds below are a little above what these weights measure (mean and 99th percentile of the
absolute difference in 0..255 code values inside the mask; the maximum is reported, not bounded, as a
single pixel may land across a steep edge of the noise). An engine joins by being in ``ENGINES``; give it
its bounds in ``BOUNDS``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lipsync.media.paste import paste_face
from lipsync.model.engine import CropBatch, EngineOptions, EngineRequest, Knobs, landmarks_to_crop
from lipsync.model.weights import ENGINES, load_engine
from lipsync.testing.media import tracked_face_clip

FRAMES = 16  # one LatentSync segment
ENGINE_FRAMES = {"musetalk": 4}  # frame by frame: a few say as much as many
BOUNDS = {  # engine -> dtype -> (mean, 99th percentile) of |crop - fp32 crop| inside the blend mask; measured
    # over weight seeds 0-3 (mean, p99): pipio bf16 0.3-0.5, 2-3; fp16 0.05, 1; musetalk bf16 7-9, 32-42; fp16
    # 0.9-1.2, 4-6; latentsync bf16 0.35-0.4, 2; fp16 0.3, 1. MuseTalk's random UNet and VAE amplify rounding
    # most; bf16 keeps 8 mantissa bits to fp16's 11, so its figures are ~8x fp16's wherever rounding dominates.
    "pipio": {"bf16": (1.0, 6), "fp16": (0.25, 2)},
    "musetalk": {"bf16": (15.0, 64), "fp16": (2.5, 10)},
    "latentsync": {"bf16": (1.0, 5), "fp16": (0.75, 3)},
    # whole frames (weights seed 0: bf16 1.4, 11; fp16 0.16, 1)
    "infinitetalk": {"bf16": (3.0, 20), "fp16": (0.5, 3)},
}
OPTIONS = {"pipio": dict(face_crop_size=64)}  # the tiny config's size: fp16 3D convolutions at 512² crawl on a CPU
STEPS = 1  # diffusion steps: the rounding of one step is what every step adds


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return tracked_face_clip(tmp_path_factory.mktemp("clip") / "face.mp4", frames=FRAMES, size=(320, 240))



class NonFinite:
    """Names of the leaf modules whose output holds inf or NaN (a global forward hook, for one engine run): an
    overflow starts in a leaf (a convolution, a linear layer, a norm), and its parents would only repeat it."""

    def __init__(self):
        self.modules: list[str] = []

    def __enter__(self):
        def hook(module, args, output):
            if next(module.children(), None) is not None:
                return
            tensors = output if isinstance(output, (tuple, list)) else (output,)
            for t in tensors:
                if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel():
                    low, high = torch.aminmax(t)  # one pass; NaN propagates into both
                    if not (torch.isfinite(low) and torch.isfinite(high)):
                        self.modules.append(type(module).__name__)

        self.handle = torch.nn.modules.module.register_module_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def generate(engine_name: str, root: Path, dtype: str, clip) -> dict:
    frames, track = clip
    engine = load_engine(root, EngineOptions(device="cpu", dtype=dtype, num_inference_steps=STEPS,
                                             **OPTIONS.get(engine_name, {})), engine_name)
    n = ENGINE_FRAMES.get(engine_name, FRAMES)
    affines = engine.face_affines(track)[:n]
    crops = engine.crop(frames[:n], affines)
    landmarks = landmarks_to_crop(track.landmarks[:n], affines)
    audio = (0.2 * np.sin(np.arange(n * 640) / 16000 * 2 * np.pi * 180)).astype(np.float32)
    synthesised = np.zeros(n, bool)
    synthesised[n // 2 : n // 2 + 2] = True  # a bridge: the whole-face paths too
    request = EngineRequest(audio=audio, fps=25.0, num_frames=n, generate=synthesised, is_image=False,
                            knobs=Knobs(vae_chunk_size=17, vae_overlap_window_width=8), log=lambda message: None,
                            progress=lambda *args: None, identity=np.linspace(-0.2, 0.2, 128, dtype=np.float32))
    present = track.present[:n]
    batches = [CropBatch(s, crops[s : s + 8], present[s : s + 8], landmarks[s : s + 8])
               for s in range(0, n, 8)]
    with NonFinite() as non_finite, torch.no_grad():
        out = np.concatenate(list(engine.generate(request, batches)))
    return dict(crops=out, masks=engine.blend_masks(request, 0, landmarks), affines=affines,
                non_finite=sorted(set(non_finite.modules)), whole_frame=engine.info.whole_frame)


@pytest.fixture(scope="module")
def fp32(small_weights, clip) -> dict[str, dict]:
    return {engine: generate(engine, small_weights[engine], "fp32", clip) for engine in ENGINES}


def outside_the_mask(mask: np.ndarray, affine: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: frame pixels the paste cannot reach — the mask warped back as the paste warps it, > 0, grown by
    a pixel (the paste warps onto a sub-box, whose fixed-point sample positions may round the other way)."""
    h, w = shape
    alpha = cv2.warpAffine(mask, affine, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderValue=0.0)
    return ~cv2.dilate((alpha > 0).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("engine_name", ENGINES)
def test_low_precision_stays_near_fp32_inside_the_mask_and_changes_nothing_outside(engine_name, dtype, small_weights,
                                                                                     clip, fp32):
    reference, low = fp32[engine_name], generate(engine_name, small_weights[engine_name], dtype, clip)
    assert reference["non_finite"] == [] and low["non_finite"] == [], f"inf/NaN in {low['non_finite']}"
    np.testing.assert_array_equal(low["masks"], reference["masks"])  # masks come from landmarks, not the model
    masks = reference["masks"]
    inside = np.repeat(masks[..., None] > 0, 3, axis=-1)
    assert inside.mean() > 0.05
    diff = np.abs(low["crops"].astype(np.int16) - reference["crops"].astype(np.int16))[inside]
    mean, p99 = float(diff.mean()), float(np.percentile(diff, 99))
    print(f"{engine_name} {dtype}: |crop - fp32| inside the mask: mean {mean:.2f}, p99 {p99:.0f}, max {diff.max()}")
    mean_bound, p99_bound = BOUNDS[engine_name][dtype]
    assert mean <= mean_bound and p99 <= p99_bound, (mean, p99, diff.max())
    assert diff.mean() > 0  # the dtype really changed the computation

    if reference["whole_frame"]:  # the engine regenerates whole frames: its mask is one everywhere, no outside
        assert (masks == 1).all()
        return
    frames = clip[0]
    for k in range(len(masks)):
        outside = outside_the_mask(masks[k], reference["affines"][k], frames.shape[1:3])
        assert outside.mean() > 0.5
        for result in (reference, low):
            pasted = paste_face(frames[k], result["crops"][k], result["affines"][k], masks[k])
            np.testing.assert_array_equal(pasted[outside], frames[k][outside])
