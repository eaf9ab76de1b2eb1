"""MuseTalk's blend region with the published face parsing (BiSeNet, "jaw" mode) when ``face-parse-bisent/`` is
in the weights folder, and the landmark region without it. Random parser weights in the published files; the
"jaw" region re-told here in a few lines (ours, following musetalk/utils/face_parsing ``mode="jaw"`` and
blending.py ``get_image``) on the same parser output."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from lipsync.model.engine import CropBatch, EngineOptions, EngineRequest, Knobs
from lipsync.model.loading import WeightsLoadError
from lipsync.model.musetalk import face_parsing as fp
from lipsync.model.musetalk.crop_rule import BoxRule, affine_box, box_affines, lower_face_masks
from lipsync.model.musetalk.random_weights import write_random_face_parsing
from lipsync.model.weights import load_engine

N = 2


@pytest.fixture(scope="module")
def parsing_dir(musetalk_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("parsing") / "musetalk"
    shutil.copytree(musetalk_dir, root)
    return write_random_face_parsing(root)


@pytest.fixture(scope="module")
def face():
    from lipsync.media.faces import DlibFaceAnalyzer

    frame = np.ascontiguousarray(skimage.data.astronaut())
    lm = DlibFaceAnalyzer().detect(frame)[0].landmarks
    frames = np.stack([np.roll(frame, 3 * i, axis=1) for i in range(N)])
    lms = np.stack([lm + [3 * i, 0] for i in range(N)])
    affines = box_affines(lms, (frame.shape[1], frame.shape[0]), BoxRule(smooth_window=1))
    crop_lms = np.stack([(lms[i] @ affines[i][:, :2].T) + affines[i][:, 2] for i in range(N)]).astype(np.float32)
    return frames, affines, crop_lms


def _masks(engine, frames, affines, crop_lms) -> np.ndarray:
    audio = np.zeros(int(N / 25 * 16000), np.float32)
    request = EngineRequest(audio=audio, fps=25.0, num_frames=N, generate=np.zeros(N, bool), is_image=False,
                            knobs=Knobs(), log=lambda s: None, progress=lambda *a: None)
    batches = (CropBatch(j, engine.crop(frames[j:j + 1], affines[j:j + 1]), np.ones(1, bool), crop_lms[j:j + 1])
               for j in range(N))
    assert sum(len(c) for c in engine.generate(request, batches)) == N
    return engine.blend_masks(request, 0, crop_lms)


def _published_jaw(labels: np.ndarray, frame: np.ndarray, box) -> np.ndarray:
    """The published steps after the parser's argmax, re-told (crop coordinates at the end)."""
    kernel = np.zeros((33, 33), np.uint8)
    for row in range(21):
        if row >= 10:
            w = 2 * (row - 10) + 1
            kernel[row, 16 - w // 2:16 + w // 2 + 1] = 1
    kernel[21:33, 16 - 10:16 + 10 + 1] = 1
    cheeks = np.zeros((512, 512), np.uint8)
    cv2.rectangle(cheeks, (0, 0), (256 - 90, 512), 255, -1)
    cv2.rectangle(cheeks, (256 + 90, 0), (512, 512), 255, -1)
    parsing = labels.copy()
    skin = (np.isin(parsing, [1]) * 255).astype(np.uint8)
    dilated = cv2.dilate(skin, kernel, iterations=1)
    eroded = cv2.erode(dilated, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (35, 3)), iterations=2)
    region = cv2.bitwise_or(cv2.bitwise_and(eroded, cheeks), cv2.bitwise_and(dilated, ~cheeks))
    parsing[(region == 255) & ~np.isin(parsing, [10])] = 255
    parsing[np.isin(parsing, [11, 12, 13])] = 255
    parsing[parsing != 255] = 0
    x, y, x1, y1 = box
    xc, yc, s = (x + x1) // 2, (y + y1) // 2, int(max(x1 - x, y1 - y) // 2 * 1.5)
    xs, ys = xc - s, yc - s
    seg = Image.fromarray(parsing.astype(np.uint8)).resize((2 * s, 2 * s))
    small = seg.crop((x - xs, y - ys, x1 - xs, y1 - ys))
    mask = Image.new("L", (2 * s, 2 * s), 0)
    mask.paste(small, (x - xs, y - ys, x1 - xs, y1 - ys))
    top = int(2 * s * 0.5)
    kept = Image.new("L", (2 * s, 2 * s), 0)
    kept.paste(mask.crop((0, top, 2 * s, 2 * s)), (0, top))
    k = int(0.05 * 2 * s // 2 * 2) + 1
    blurred = cv2.GaussianBlur(np.array(kept), (k, k), 0)
    inside = blurred[y - ys:y1 - ys, x - xs:x1 - xs]
    return cv2.resize(inside, (256, 256), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255


def test_random_parser_weights_in_the_published_files_load_strictly(parsing_dir, tmp_path):
    state = torch.load(parsing_dir / fp.PARSER_FILE, weights_only=True)
    assert {"cp.resnet.conv1.weight", "cp.resnet.layer2.0.downsample.0.weight", "cp.arm16.conv_atten.weight",
            "cp.arm32.bn_atten.running_var", "cp.conv_avg.conv.weight", "ffm.convblk.conv.weight", "ffm.conv2.weight",
            "conv_out.conv_out.weight", "conv_out16.conv.bn.weight", "conv_out32.conv_out.weight"} <= set(state)
    assert state["conv_out.conv_out.weight"].shape == (19, 256, 1, 1)
    net = fp.load_parser(parsing_dir)  # raises on any missing / unexpected / mis-shaped key
    own = net.state_dict()
    assert set(own) == set(state)
    assert all(torch.equal(own[k], state[k]) for k in state)
    assert "fc.weight" in torch.load(parsing_dir / fp.RESNET_FILE, weights_only=True)

    bad = tmp_path / "bad"
    shutil.copytree(parsing_dir / "face-parse-bisent", bad / "face-parse-bisent")
    broken = dict(state)
    broken["ffm.extra.weight"] = broken.pop("ffm.conv1.weight")
    torch.save(broken, bad / fp.PARSER_FILE)
    with pytest.raises(WeightsLoadError) as err:
        fp.load_parser(bad)
    assert err.value.missing == ["ffm.conv1.weight"] and err.value.unexpected == ["ffm.extra.weight"]


def test_engine_blends_the_published_jaw_region_with_parsing(parsing_dir, face):
    frames, affines, crop_lms = face
    engine = load_engine(parsing_dir, EngineOptions(), None)
    assert engine.parser is not None
    assert not engine.info.crops_reusable  # the worker crops every frame: the parser sees it (no cached crops)
    masks = _masks(engine, frames, affines, crop_lms)
    for i in range(N):
        box = affine_box(affines[i])
        xc, yc = (box[0] + box[2]) // 2, (box[1] + box[3]) // 2
        s = int(max(box[2] - box[0], box[3] - box[1]) // 2 * 1.5)
        square = np.asarray(Image.fromarray(frames[i]).crop((xc - s, yc - s, xc + s, yc + s)))
        labels = fp.parse(engine.parser, square)
        assert np.isin(labels, [1]).mean() > 0.05  # the parser's classes decide the region (skin present)
        expected = _published_jaw(labels, frames[i], box)
        np.testing.assert_array_equal(masks[i], expected)
        assert masks[i].max() == 1.0 and masks[i][:100].max() == 0.0  # rows above the box's middle: none
    assert not np.allclose(masks, lower_face_masks(crop_lms, 256), atol=0.05)


def test_engine_keeps_the_landmark_region_without_parsing(musetalk_dir, face):
    frames, affines, crop_lms = face
    engine = load_engine(musetalk_dir, EngineOptions(), None)
    assert engine.parser is None and engine.info.crops_reusable
    np.testing.assert_array_equal(_masks(engine, frames, affines, crop_lms), lower_face_masks(crop_lms, 256))
