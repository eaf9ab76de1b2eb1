"""MuseTalk's published weights layout: torch-free.

File names and sources as TMElyralab/MuseTalk's ``download_weights.sh`` and README (``models/`` folder) publish
them (checked at commit 0a89dec): the MuseTalk UNet from the hub repo ``TMElyralab/MuseTalk``, the VAE from
``stabilityai/sd-vae-ft-mse``, whisper-tiny from ``openai/whisper-tiny``. The face-parsing BiSeNet files
(``face-parse-bisent/``) are optional: the published script takes them from Google Drive and pytorch.org, not
from the hub, so ``lipsync weights fetch`` does not download them; with both in the folder the blend mask is
the published BiSeNet "jaw" region (``face_parsing.py``), without them it is derived from the landmarks
(lipsync/model/README.md). DWPose and SyncNet, which the authors also download, are not
used at inference by us (our landmarks are dlib's 68 points) and are not listed.
"""

from lipsync.model.weights import WeightFile, WeightsLayout

MUSETALK_REPO = "TMElyralab/MuseTalk"
_MUSETALK = ("MuseTalk weights: README 'available for any purpose, even commercially' (hub card tag "
             "creativeml-openrail-m); code MIT")
_VAE = "MIT (stabilityai/sd-vae-ft-mse model card)"
_WHISPER = "Apache-2.0 (openai/whisper-tiny model card)"
_BISENET = "MIT (zllrunning/face-parsing.PyTorch)"
_RESNET = "BSD-3-Clause (torchvision)"

_SHARED = (
    WeightFile("sd-vae/config.json", "stabilityai/sd-vae-ft-mse", "config.json", _VAE),
    WeightFile("sd-vae/diffusion_pytorch_model.bin", "stabilityai/sd-vae-ft-mse", "diffusion_pytorch_model.bin", _VAE,
               alternatives=("sd-vae/diffusion_pytorch_model.safetensors",)),
    WeightFile("whisper/config.json", "openai/whisper-tiny", "config.json", _WHISPER),
    WeightFile("whisper/pytorch_model.bin", "openai/whisper-tiny", "pytorch_model.bin", _WHISPER,
               alternatives=("whisper/model.safetensors",)),
    WeightFile("whisper/preprocessor_config.json", "openai/whisper-tiny", "preprocessor_config.json", _WHISPER),
    WeightFile("face-parse-bisent/79999_iter.pth", "",
               "https://drive.google.com/file/d/154JgKpzCPW82qINcVieuPH3fZ2e0P812", _BISENET, required=False),
    WeightFile("face-parse-bisent/resnet18-5c106cde.pth", "",
               "https://download.pytorch.org/models/resnet18-5c106cde.pth", _RESNET, required=False),
)

LAYOUTS = (
    WeightsLayout(
        engine="musetalk", variant="musetalk-1.5", markers=("musetalkV15/unet.pth",),
        files=(WeightFile("musetalkV15/musetalk.json", MUSETALK_REPO, "musetalkV15/musetalk.json", _MUSETALK),
               WeightFile("musetalkV15/unet.pth", MUSETALK_REPO, "musetalkV15/unet.pth", _MUSETALK),
               *_SHARED),
        notes="MuseTalk 1.5: UNet state dict musetalkV15/unet.pth, bbox_shift 0, extra_margin 10 px",
    ),
    WeightsLayout(
        engine="musetalk", variant="musetalk-1.0", markers=("musetalk/pytorch_model.bin",),
        files=(WeightFile("musetalk/musetalk.json", MUSETALK_REPO, "musetalk/musetalk.json", _MUSETALK),
               WeightFile("musetalk/pytorch_model.bin", MUSETALK_REPO, "musetalk/pytorch_model.bin", _MUSETALK),
               *_SHARED),
        notes="MuseTalk 1.0: UNet state dict musetalk/pytorch_model.bin, bbox_shift 0, no extra margin",
    ),
)
