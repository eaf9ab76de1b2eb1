"""StableSyncNet's score equals LatentSync's own inputs computed directly (syncnet_dataset.py: the lower half
of [-1, 1] crops, 16 frames on channels; mel window int(80 · i / 25) … + ceil(frames / 5 · 16)) through the network."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lipsync.evaluation.stable_scorer import StableSyncScorer, wav2lip_mel
from lipsync.evaluation.stable_syncnet import load_stable_syncnet
from tests.eval.weights_files import write_stable_syncnet


def test_in_place_similarity_is_latentsyncs_cosine(tmp_path):
    path, cfg = write_stable_syncnet(tmp_path / "stable_syncnet.pt", tmp_path / "syncnet.yaml", seed=2)
    net = load_stable_syncnet(path, cfg)  # tiny config: 4 frames of 64 px crops
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 255, (20, 64, 64, 3), dtype=np.uint8)
    audio = rng.standard_normal(20 * 640).astype(np.float32) * 0.1
    scorer = StableSyncScorer(net, vshift=2, stride=4)
    result = scorer.score_crops(crops, audio)
    mel = torch.from_numpy(wav2lip_mel(audio))
    sims = []
    for i in range(0, 20 - 4 + 1, 4):
        pixels = torch.from_numpy(crops[i : i + 4]).permute(0, 3, 1, 2).float() / 255.0
        pixels = (pixels - 0.5) / 0.5  # LatentSync's Normalize([0.5], [0.5])
        frames = pixels.reshape(1, -1, 64, 64)[:, :, 32:, :]  # "b (f c) h w", lower half
        start = int(80.0 * (i / 25.0))
        window = mel[:, start : start + 13]  # LatentSync's mel_window_length: ceil(4 / 5 * 16)
        if window.shape[1] < 13:
            continue
        with torch.no_grad():
            v, a = net(frames, window[None, None])
        sims.append(float(F.cosine_similarity(v, a)))
    assert result.num_windows == 5 and result.offsets.tolist() == [2, 1, 0, -1, -2]
    assert len(sims) == 5 and abs(result.sim_at_zero - np.mean(sims)) < 1e-5
    assert -2 <= result.offset <= 2 and result.best_sim >= result.sim_at_zero
