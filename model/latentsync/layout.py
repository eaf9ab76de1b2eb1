"""LatentSync's published weights layout (the ByteDance/LatentSync-1.6 / -1.5 checkpoint repos): torch-free."""

from model.weights import WeightFile, WeightsLayout

_LS = "LatentSync weights: openrail++ (ByteDance; check the model card)"
_VAE = "sd-vae-ft-mse: MIT (stabilityai)"

LAYOUTS = (
    WeightsLayout(
        engine="latentsync", variant="latentsync-1.6", markers=("latentsync_unet.pt",),
        files=(WeightFile("latentsync_unet.pt", "ByteDance/LatentSync-1.6", "latentsync_unet.pt", _LS),
               WeightFile("whisper/tiny.pt", "ByteDance/LatentSync-1.6", "whisper/tiny.pt",
                          "whisper: MIT (OpenAI)"),
               WeightFile("sd-vae/config.json", "stabilityai/sd-vae-ft-mse", "config.json", _VAE),
               WeightFile("sd-vae/diffusion_pytorch_model.safetensors", "stabilityai/sd-vae-ft-mse",
                          "diffusion_pytorch_model.safetensors", _VAE,
                          alternatives=("sd-vae/diffusion_pytorch_model.bin",))),
    ),
)
