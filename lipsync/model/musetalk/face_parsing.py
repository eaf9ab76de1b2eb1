"""MuseTalk's face parsing: the BiSeNet face parser and the published "jaw" blend region, our own module.

The published inference (TMElyralab/MuseTalk at 0a89dec: ``musetalk/utils/face_parsing``, ``blending.py``
``get_image(..., mode="jaw")``, ``scripts/inference.py`` with cheek widths 90) runs, per output frame:

1. the 1.5x square around the face box (``get_crop_box``: centre ``(x1 + x2) // 2``, half side
   ``int(max(w, h) // 2 * 1.5)``), cut from the RGB frame (zeros outside it, as PIL's ``crop``);
2. resized to 512² (PIL bilinear), ``/ 255``, normalised with the ImageNet mean and std;
3. BiSeNet (ResNet-18 context path, attention refinement, feature fusion; 19 classes), its main output's
   argmax over classes;
4. "jaw" mode: the skin (class 1) dilated with a cone kernel (rows 10-32 of 33, widening downwards: the skin
   grows past the jaw line), eroded twice with a 35x3 ellipse in the cheeks (outside the centre band of
   +-90 columns), the nose (class 10) left out, the lips and mouth (11, 12, 13) added; 255 where kept;
5. back to the square's size (PIL's default resampling for an 8-bit mask: bicubic), kept only inside the box
   and below the square's middle row, blurred with a Gaussian of ``int(0.05 * side // 2 * 2) + 1`` px.

The frame is then blended with the square (generated face inside the box, the frame elsewhere) through that
mask, so only its part inside the box matters: :func:`jaw_blend_mask` returns it in crop coordinates.

The network's module names are the published checkpoint's (``79999_iter.pth``: ``cp.resnet.*``, ``cp.arm16``,
``cp.arm32``, ``cp.conv_head16/32``, ``cp.conv_avg``, ``ffm``, ``conv_out``, ``conv_out16``, ``conv_out32``);
``resnet18-5c106cde.pth`` is torchvision's ImageNet ResNet-18, which the authors load into the backbone before
the parser's checkpoint overwrites every value: it is read and checked here, its values not used.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lipsync.model.loading import WeightsLoadError

PARSER_FILE = "face-parse-bisent/79999_iter.pth"
RESNET_FILE = "face-parse-bisent/resnet18-5c106cde.pth"
N_CLASSES = 19
SIDE = 512
EXPAND = 1.5
CHEEK_WIDTH = 90  # scripts/inference.py --left_cheek_width / --right_cheek_width
SKIN, NOSE, MOUTH = 1, 10, (11, 12, 13)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------------------ network
class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, ks: int = 3, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, ks, 1, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        r = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu((x if self.downsample is None else self.downsample(x)) + r)


class ResNet18(nn.Module):
    """ResNet-18 without its classifier; returns the 1/8, 1/16 and 1/32 features."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        chans = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]
        for i, (cin, cout, stride) in enumerate(chans, 1):
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout)))

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        f8 = self.layer2(self.layer1(x))
        f16 = self.layer3(f8)
        return f8, f16, self.layer4(f16)


class AttentionRefinement(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x):
        feat = self.conv(x)
        return feat * torch.sigmoid(self.bn_atten(self.conv_atten(feat.mean((2, 3), keepdim=True))))


class ContextPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet = ResNet18()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, ks=1, padding=0)

    def forward(self, x):
        f8, f16, f32 = self.resnet(x)
        avg = self.conv_avg(f32.mean((2, 3), keepdim=True))  # nearest upsampling of a 1x1 map: a broadcast
        up32 = self.conv_head32(F.interpolate(self.arm32(f32) + avg, f16.shape[2:], mode="nearest"))
        up16 = self.conv_head16(F.interpolate(self.arm16(f16) + up32, f8.shape[2:], mode="nearest"))
        return f8, up16, up32


class FeatureFusion(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, ks=1, padding=0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, a, b):
        feat = self.convblk(torch.cat([a, b], 1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(feat.mean((2, 3), keepdim=True)))))
        return feat * atten + feat


class ParsingHead(nn.Module):
    def __init__(self, cin: int, mid: int, n_classes: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, mid)
        self.conv_out = nn.Conv2d(mid, n_classes, 1, bias=False)

    def forward(self, x):
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """The published face parser's network; ``forward`` returns the main output's logits at the input size (the
    two auxiliary heads, trained with it, are kept for the checkpoint's keys and not run: inference uses
    output 0 only)."""

    def __init__(self, n_classes: int = N_CLASSES):
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = ParsingHead(256, 256, n_classes)
        self.conv_out16 = ParsingHead(128, 64, n_classes)
        self.conv_out32 = ParsingHead(128, 64, n_classes)

    def forward(self, x):
        f8, cp8, _ = self.cp(x)
        out = self.conv_out(self.ffm(f8, cp8))
        return F.interpolate(out, x.shape[2:], mode="bilinear", align_corners=True)


# ------------------------------------------------------------------------------------------------ loading
def _strict(module: nn.Module, state: dict, component: str, source: str, ignore=()) -> None:
    """Load ``state`` into ``module``: every missing / unexpected / mis-shaped key raises ``WeightsLoadError``.
    BatchNorm's ``num_batches_tracked`` counters (not used in eval) may be absent, as in older torch files."""
    own = module.state_dict()
    state = {k: v for k, v in state.items() if not any(k.startswith(p) for p in ignore)}
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                  if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        raise WeightsLoadError(component, source, missing, unexpected, mismatched)
    module.load_state_dict({**own, **state}, strict=True)


def _read(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a flat state dict of tensors")
    return state


def has_parser(root: Path) -> bool:
    return (root / PARSER_FILE).is_file() and (root / RESNET_FILE).is_file()


def load_parser(root: Path) -> BiSeNet:
    """The BiSeNet from the published folder: the ResNet-18 file into the backbone (its ``fc`` left out, as the
    authors do), then the parser's checkpoint over the whole network, both strictly."""
    net = BiSeNet()
    _strict(net.cp.resnet, _read(root / RESNET_FILE), "face parsing ResNet-18", str(root / RESNET_FILE),
            ignore=("fc.",))
    _strict(net, _read(root / PARSER_FILE), "face parsing BiSeNet", str(root / PARSER_FILE))
    return net.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------ jaw region
def cone_kernel() -> np.ndarray:
    """The published 33x33 dilation kernel: rows 10-20 a cone widening by 2 a row, rows 21-32 21 wide."""
    kernel = np.zeros((33, 33), np.uint8)
    for row in range(10, 21):
        half = row - 10
        kernel[row, 16 - half:16 + half + 1] = 1
    kernel[21:, 6:27] = 1
    return kernel


def cheek_mask(width: int = CHEEK_WIDTH) -> np.ndarray:
    """255 in the cheek columns (0..256-width and 256+width..511, inclusive, as cv2.rectangle fills)."""
    mask = np.zeros((SIDE, SIDE), np.uint8)
    mask[:, :SIDE // 2 - width + 1] = 255
    mask[:, SIDE // 2 + width:] = 255
    return mask


def jaw_region(labels: np.ndarray, width: int = CHEEK_WIDTH) -> np.ndarray:
    """(512, 512) class labels → uint8 0/255: the published "jaw" mode."""
    skin = (labels == SKIN).astype(np.uint8) * 255
    grown = cv2.dilate(skin, cone_kernel())
    eroded = cv2.erode(grown, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (35, 3)), iterations=2)
    cheeks = cheek_mask(width) > 0
    region = np.where(cheeks, eroded, grown)
    keep = ((region == 255) & (labels != NOSE)) | np.isin(labels, MOUTH)
    return keep.astype(np.uint8) * 255


def square_box(box) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = (int(v) for v in box)
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    s = int(max(x2 - x1, y2 - y1) // 2 * EXPAND)
    return cx - s, cy - s, cx + s, cy + s


def cut(frame: np.ndarray, square) -> np.ndarray:
    """The square of an (H, W, 3) frame, zeros outside the frame (as PIL's ``crop``)."""
    xs, ys, xe, ye = square
    h, w = frame.shape[:2]
    out = np.zeros((ye - ys, xe - xs, 3), np.uint8)
    a, b, c, d = max(xs, 0), max(ys, 0), min(xe, w), min(ye, h)
    if c > a and d > b:
        out[b - ys:d - ys, a - xs:c - xs] = frame[b:d, a:c]
    return out


@torch.no_grad()
def parse(net: BiSeNet, square: np.ndarray, device="cpu") -> np.ndarray:
    """(side, side, 3) RGB uint8 → (512, 512) int64 class labels (PIL bilinear to 512², /255, ImageNet
    normalisation, argmax of the main output)."""
    from PIL import Image

    small = np.asarray(Image.fromarray(square).resize((SIDE, SIDE), Image.BILINEAR))
    x = torch.from_numpy(small.copy()).permute(2, 0, 1).float().div(255)
    x = (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    dtype = next(net.parameters()).dtype
    out = net(x[None].to(device, dtype))[0].float().cpu().numpy()
    return out.argmax(0)


def square_mask(region: np.ndarray, square, box) -> np.ndarray:
    """The published ``get_image`` steps after parsing: (512²) 0/255 region → (side, side) uint8 blend mask of
    the square: resized back (bicubic), kept inside the box and below the middle row, blurred."""
    from PIL import Image

    xs, ys, xe, _ = square
    side = xe - xs
    full = np.asarray(Image.fromarray(region).resize((side, side), Image.BICUBIC))
    x1, y1, x2, y2 = (int(v) for v in box)
    mask = np.zeros((side, side), np.uint8)
    # PIL crop+paste of the box: parts outside the square are dropped
    a, b, c, d = max(x1 - xs, 0), max(y1 - ys, 0), min(x2 - xs, side), min(y2 - ys, side)
    mask[b:d, a:c] = full[b:d, a:c]
    mask[: side // 2] = 0
    k = int(0.05 * side // 2 * 2) + 1
    return cv2.GaussianBlur(mask, (k, k), 0)


def jaw_blend_mask(net: BiSeNet, frame: np.ndarray, box, size: int, device="cpu") -> np.ndarray:
    """(size, size) float32 blend mask in crop coordinates for the integer face ``box`` [x1, y1, x2, y2] of an
    RGB frame: the published square mask's part inside the box, resized to the crop (bilinear), / 255."""
    sq = square_box(box)
    mask = square_mask(jaw_region(parse(net, cut(frame, sq), device)), sq, box)
    x1, y1, x2, y2 = (int(v) for v in box)
    xs, ys = sq[:2]
    inside = np.zeros((y2 - y1, x2 - x1), np.uint8)
    side = mask.shape[0]
    a, b, c, d = max(x1 - xs, 0), max(y1 - ys, 0), min(x2 - xs, side), min(y2 - ys, side)
    inside[b - (y1 - ys):d - (y1 - ys), a - (x1 - xs):c - (x1 - xs)] = mask[b:d, a:c]
    return cv2.resize(inside, (size, size), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
