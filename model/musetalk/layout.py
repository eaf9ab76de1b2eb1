"""MuseTalk's published weights layout (its README's ``models/`` folder): torch-free."""

from model.weights import WeightFile, WeightsLayout

_MUSETALK = "MuseTalk weights: see the TMElyralab/MuseTalk README (commercial use allowed)"
_VAE = "sd-vae-ft-mse: MIT (stabilityai)"
_WHISPER = "whisper-tiny: Apache-2.0 (openai)"

_SHARED = (
    WeightFile("sd-vae/config.json", "stabilityai/sd-vae-ft-mse", "config.json", _VAE),
    WeightFile("sd-vae/diffusion_pytorch_model.bin", "stabilityai/sd-vae-ft-mse", "diffusion_pytorch_model.bin", _VAE,
               alternatives=("sd-vae/diffusion_pytorch_model.safetensors",)),
    WeightFile("whisper/config.json", "openai/whisper-tiny", "config.json", _WHISPER),
    WeightFile("whisper/pytorch_model.bin", "openai/whisper-tiny", "pytorch_model.bin", _WHISPER,
               alternatives=("whisper/model.safetensors",)),
    WeightFile("whisper/preprocessor_config.json", "openai/whisper-tiny", "preprocessor_config.json", _WHISPER),
)

LAYOUTS = (
    WeightsLayout(
        engine="musetalk", variant="musetalk-1.5", markers=("musetalkV15/unet.pth",),
        files=(WeightFile("musetalkV15/musetalk.json", "TMElyralab/MuseTalk", "musetalkV15/musetalk.json", _MUSETALK),
               WeightFile("musetalkV15/unet.pth", "TMElyralab/MuseTalk", "musetalkV15/unet.pth", _MUSETALK),
               *_SHARED),
    ),
    WeightsLayout(
        engine="musetalk", variant="musetalk-1.0", markers=("musetalk/pytorch_model.bin",),
        files=(WeightFile("musetalk/musetalk.json", "TMElyralab/MuseTalk", "musetalk/musetalk.json", _MUSETALK),
               WeightFile("musetalk/pytorch_model.bin", "TMElyralab/MuseTalk", "musetalk/pytorch_model.bin", _MUSETALK),
               *_SHARED),
    ),
)
