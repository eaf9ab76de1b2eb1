"""LatentSync's published weights layout (the ByteDance/LatentSync-1.6 and -1.5 checkpoint repos, as their README's
``huggingface-cli download`` lines and ``scripts/inference.py`` use them, plus stabilityai/sd-vae-ft-mse): torch-free.

Both versions have the same files and the same UNet architecture; they differ in resolution (512 vs 256). A folder
is 1.6 unless its own ``unet_config.yaml`` (published ``configs/unet/*.yaml`` format) says otherwise: its
``data.resolution`` (256 -> 1.5) and ``model:`` section win.
"""

from lipsync.model.weights import WeightFile, WeightsLayout

_LS = "LatentSync weights: openrail++ (ByteDance; check the model card)"
_VAE = "sd-vae-ft-mse: MIT (stabilityai)"


def _files(repo: str, config: str, config_required: bool) -> tuple[WeightFile, ...]:
    return (
        WeightFile("latentsync_unet.pt", repo, "latentsync_unet.pt", _LS),
        WeightFile("whisper/tiny.pt", repo, "whisper/tiny.pt", "whisper: MIT (OpenAI)"),
        WeightFile("sd-vae/config.json", "stabilityai/sd-vae-ft-mse", "config.json", _VAE),
        WeightFile("sd-vae/diffusion_pytorch_model.safetensors", "stabilityai/sd-vae-ft-mse",
                   "diffusion_pytorch_model.safetensors", _VAE, alternatives=("sd-vae/diffusion_pytorch_model.bin",)),
        WeightFile("unet_config.yaml", "", f"copy lipsync/model/latentsync/configs/{config}", "ours (published facts)",
                   required=config_required),
    )


LAYOUTS = (
    WeightsLayout(engine="latentsync", variant="latentsync-1.6", markers=("latentsync_unet.pt",),
                  files=_files("ByteDance/LatentSync-1.6", "latentsync-1.6.yaml", False),
                  notes="512x512; a folder's unet_config.yaml (published format) overrides our configuration"),
    WeightsLayout(engine="latentsync", variant="latentsync-1.5", markers=("latentsync_unet.pt",),
                  files=_files("ByteDance/LatentSync-1.5", "latentsync-1.5.yaml", True),
                  notes="256x256: the folder needs unet_config.yaml with data.resolution 256 (our 1.5 file)"),
)
