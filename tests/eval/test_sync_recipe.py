"""Our vectorised SyncNet procedure equals the published one computed step by step (joonson/syncnet_python
``SyncNetInstance.evaluate``, ``calc_pdist``, ``run_pipeline.crop_video``), restated here as plain loops."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import python_speech_features
import torch
from scipy import signal

from lipsync.evaluation import sync_features as sf
from lipsync.evaluation.sync_crop import crop_frame, crop_params, landmark_boxes, longest_face_run
from lipsync.evaluation.sync_metrics import sync_result
from lipsync.evaluation.syncnet import NotEnoughFrames, SyncScorer, mfcc_windows, video_windows
from lipsync.media.faces import FaceTrack
from tests.eval.weights_files import write_syncnet_v2


def test_mfcc_windows_are_the_reference_slices():
    rng = np.random.default_rng(0)
    audio = rng.uniform(-0.5, 0.5, 16000 * 2).astype(np.float32)
    pcm = np.clip(np.round(audio.astype(np.float64) * 32768), -32768, 32767).astype(np.int16)
    mfcc = np.stack([np.array(i) for i in zip(*python_speech_features.mfcc(pcm, 16000))])  # (13, M) as there
    cct = mfcc[None, None]
    frames = 50
    count = min(frames, len(audio) // 640) - 5
    assert sf.num_windows(frames, len(audio)) == count == 45
    ours = sf.audio_windows(sf.mfcc(audio), count)
    for v in range(count):
        np.testing.assert_allclose(ours[v], cct[0, :, :, v * 4 : v * 4 + 20], rtol=1e-5, atol=1e-4)


def test_distances_lse_and_offset_match_the_reference_loop():
    gen = torch.Generator().manual_seed(0)
    video, audio = torch.randn(40, 32, generator=gen), torch.randn(40, 32, generator=gen)
    audio[3:] = video[:-3] * 0.1 + audio[3:] * 0.01  # video i matches audio i + 3: the picture leads
    vshift = 15
    padded = torch.nn.functional.pad(audio, (0, 0, vshift, vshift))
    dists = [torch.nn.functional.pairwise_distance(video[[i], :].repeat(2 * vshift + 1, 1), padded[i : i + 2 * vshift + 1, :])
             for i in range(len(video))]
    mdist = torch.mean(torch.stack(dists, 1), 1)
    minval, minidx = torch.min(mdist, 0)
    fdist = np.stack([d[minidx].numpy() for d in dists])
    fconf = torch.median(mdist).numpy() - fdist
    r = sync_result(video, audio, vshift)
    assert r.offset == int(vshift - minidx) == -3
    assert r.lse_d == pytest.approx(float(minval)) and r.lse_c == pytest.approx(float(torch.median(mdist) - minval))
    np.testing.assert_allclose(r.mean_dist, mdist.numpy(), rtol=1e-6)
    np.testing.assert_allclose(r.frame_conf, fconf, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.frame_conf_smoothed, signal.medfilt(fconf, kernel_size=9), rtol=1e-5, atol=1e-6)


def _track(landmarks: np.ndarray, size=(320, 240)) -> FaceTrack:
    t = len(landmarks)
    return FaceTrack(present=np.ones(t, bool), detected=np.ones(t, bool), landmarks=landmarks.astype(np.float32),
                     alignment=np.zeros((t, 4), np.float32), frame_size=size, analyzer="test")


def test_crop_follows_the_reference_rule():
    rng = np.random.default_rng(1)
    base = rng.uniform(100, 180, (68, 2))
    landmarks = base[None] + rng.normal(0, 2, (30, 1, 2))
    frames = rng.integers(0, 255, (30, 240, 320, 3), dtype=np.uint8)
    boxes = landmark_boxes(landmarks)
    dets = {"s": [max(b[3] - b[1], b[2] - b[0]) / 2 for b in boxes], "y": [(b[1] + b[3]) / 2 for b in boxes],
            "x": [(b[0] + b[2]) / 2 for b in boxes]}
    dets = {k: signal.medfilt(v, kernel_size=13) for k, v in dets.items()}
    params = crop_params(_track(landmarks), 0, 30)
    np.testing.assert_allclose(params, np.stack([dets["x"], dets["y"], dets["s"]], 1), rtol=1e-5)
    import cv2

    for fidx in (0, 17):
        cs, bs = 0.4, dets["s"][fidx]
        bsi = int(bs * (1 + 2 * cs))
        frame = np.pad(frames[fidx], ((bsi, bsi), (bsi, bsi), (0, 0)), "constant", constant_values=(110, 110))
        my, mx = dets["y"][fidx] + bsi, dets["x"][fidx] + bsi
        face = frame[int(my - bs) : int(my + bs * (1 + 2 * cs)), int(mx - bs * (1 + cs)) : int(mx + bs * (1 + cs))]
        np.testing.assert_array_equal(crop_frame(frames[fidx], *params[fidx], 224), cv2.resize(face, (224, 224)))


def test_face_runs_and_resampling():
    t = _track(np.zeros((10, 68, 2)))
    present = np.array([1, 1, 0, 1, 1, 1, 1, 0, 1, 1], bool)
    assert longest_face_run(FaceTrack(present, present, t.landmarks, t.alignment, t.frame_size, "x")) == (3, 7)
    np.testing.assert_array_equal(sf.resample_indices(10, Fraction(50)), [0, 2, 4, 6, 8])
    np.testing.assert_array_equal(sf.resample_indices(6, Fraction(30000, 1001))[:5], [0, 1, 2, 3, 4])


@pytest.fixture(scope="module")
def v2_scorer(tmp_path_factory):
    return SyncScorer(write_syncnet_v2(tmp_path_factory.mktemp("w") / "syncnet_v2.model"), min_frames=10)


def test_full_network_on_a_real_face_clip(v2_scorer, media_clip):
    """Random weights give noise figures; what holds: shapes, the range of the offset, determinism."""
    frames, audio = media_clip
    a = v2_scorer.score(frames, audio, 25)
    b = v2_scorer.score(frames, audio, 25)
    assert a.summary() == b.summary()
    assert a.num_windows == len(frames) - 5 and -15 <= a.offset <= 15 and a.mean_dist.shape == (31,)
    assert np.isfinite(a.lse_d) and a.lse_c >= 0
    with pytest.raises(NotEnoughFrames, match="at least 10"):
        v2_scorer.score(frames[:8], audio, 25)


def test_window_helpers_are_the_reference_slices_and_keep_gradients():
    crops = torch.rand(9, 16, 16, 3, requires_grad=True)
    windows = video_windows(crops * 255)
    im = (crops * 255).detach()[..., [2, 1, 0]].permute(3, 0, 1, 2)[None]  # the reference's (1, 3, T, H, W) of BGR
    assert windows.shape == (5, 3, 5, 16, 16)
    for v in range(5):
        torch.testing.assert_close(windows[v].detach(), im[0, :, v : v + 5])
    windows.sum().backward()
    assert crops.grad is not None and crops.grad.abs().sum() > 0
    assert mfcc_windows(np.zeros(16000, np.float32), 3).shape == (3, 1, 13, 20)
