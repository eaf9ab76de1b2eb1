"""Every engine, read and run as a GPU runs it, without a GPU: the whole request path (load, crop rule, crops,
generate, blend masks) on a fake CUDA device (torch's FakeTensorMode) and on the ``meta`` device, in bf16 and
fp16 (``lipsync.testing.emulated_gpu``). Both refuse to mix a device tensor with a non-scalar CPU one, as CUDA
does: the suite's CPU runs never could catch that.

An engine joins by being in ``lipsync.model.weights.ENGINES`` with a ``random_weights.py``: nothing to add here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lipsync.model.engine import CropBatch, EngineOptions, EngineRequest, Knobs, landmarks_to_crop
from lipsync.model.weights import ENGINES, load_engine
from lipsync.testing.emulated_gpu import emulated_cuda, emulated_meta
from lipsync.testing.media import tracked_face_clip

FRAMES = 20


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A real face (the astronaut, panning) decoded and tracked once, outside any emulation."""
    return tracked_face_clip(tmp_path_factory.mktemp("clip") / "face.mp4", frames=FRAMES, size=(320, 240))



def run_request(engine_name: str, root: Path, device: str, dtype: str, frames: np.ndarray, track,
                knobs: Knobs = Knobs(vae_chunk_size=17, vae_overlap_window_width=8)) -> tuple[list, np.ndarray]:
    engine = load_engine(root, EngineOptions(device=device, dtype=dtype, num_inference_steps=2), engine_name)
    affines = engine.face_affines(track)
    crops = engine.crop(frames, affines)
    landmarks = landmarks_to_crop(track.landmarks, affines)
    audio = (0.2 * np.sin(np.arange(int(FRAMES / 25 * 16000)) / 16000 * 2 * np.pi * 180)).astype(np.float32)
    generate = np.zeros(FRAMES, bool)
    generate[8:10] = True  # a bridge: synthesised frames take the other paths
    request = EngineRequest(audio=audio, fps=25.0, num_frames=FRAMES, generate=generate, is_image=False, knobs=knobs,
                            log=lambda message: None, progress=lambda *args: None,
                            identity=np.full(128, 0.1, np.float32))
    batches = [CropBatch(s, crops[s:s + 8], track.present[s:s + 8], landmarks[s:s + 8]) for s in range(0, FRAMES, 8)]
    with torch.no_grad():
        chunks = list(engine.generate(request, batches))
    masks = engine.blend_masks(request, 0, landmarks)
    # a whole-frame engine's crops have its generation size for this clip's aspect ratio (not square)
    return chunks, masks, crops.shape[1:3] if engine.info.whole_frame else (engine.info.crop_size,) * 2


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("device", ["cuda", "meta"])
@pytest.mark.parametrize("engine_name", ENGINES)
def test_the_request_path_runs_on_an_emulated_gpu(engine_name, device, dtype, small_weights, clip):
    frames, track = clip
    emulation = emulated_cuda() if device == "cuda" else emulated_meta()
    with emulation as ledger:
        chunks, masks, size = run_request(engine_name, small_weights[engine_name], device, dtype, frames, track)
    assert sum(len(c) for c in chunks) == FRAMES
    # uint8, or float32 pixel units where the engine hands its float output to the paste (engine.py, 3.)
    assert all(c.dtype in (np.uint8, np.float32) and c.shape[1:] == (*size, 3) for c in chunks)
    assert masks.shape == (FRAMES, *size) and masks.dtype == np.float32
    assert ledger.peak_bytes > 0  # the model really lived on the emulated device


def test_the_emulated_device_refuses_what_cuda_refuses():
    """The emulation is only worth its checks: a CPU tensor mixed with a device one raises on both devices,
    a 0-dim CPU tensor does not (CUDA allows it), and device memory is counted."""
    for emulation, device in ((emulated_cuda, "cuda"), (emulated_meta, "meta")):
        with emulation() as ledger, torch.no_grad():
            x = torch.ones(4, 3).to(device, torch.bfloat16)
            assert x.device.type == device and x.dtype == torch.bfloat16
            with pytest.raises(RuntimeError):
                x * torch.ones(4, 3, dtype=torch.bfloat16)
            assert (x * torch.tensor(2.0, dtype=torch.bfloat16)).device.type == device
            assert x[1:, None, 0].shape == (3, 1)
            big = torch.empty(1 << 20, device=device)
            assert ledger.live_bytes >= 4 << 20 and ledger.peak_bytes >= 4 << 20
            del big
            assert ledger.live_bytes < 4 << 20
            with pytest.raises((RuntimeError, TypeError)):
                x.numpy()  # CUDA wants the copy to the host first
            host = x.float().cpu().numpy()
            assert host.shape == (4, 3) and not host.any()  # the data never existed: zeros on the host
    with emulated_cuda(free_bytes=24 << 30, capability=(7, 5)):
        assert torch.cuda.is_available() and not torch.cuda.is_bf16_supported()
        assert torch.cuda.mem_get_info()[0] == 24 << 30
    assert not torch.cuda.is_available()
