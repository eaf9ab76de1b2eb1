"""The weights layout of our own model (``LipSyncPipeline.save_pretrained``, ``lipsync train``): torch-free."""

from lipsync.model.weights import WeightFile, WeightsLayout

_OURS = "ours (lipsync train, or `lipsync weights random pipio DIR` for random weights)"

LAYOUTS = (
    WeightsLayout(
        engine="pipio",
        variant="pipio",
        markers=("model_index.json",),
        files=(
            WeightFile("model_index.json", "", "model_index.json", _OURS),
            WeightFile("pipeline_config.json", "", "pipeline_config.json", _OURS),
            WeightFile("transformer/config.json", "", "transformer/config.json", _OURS),
            WeightFile("transformer/diffusion_pytorch_model.safetensors", "", "transformer weights", _OURS,
                       alternatives=("transformer/diffusion_pytorch_model.safetensors.index.json",)),
            WeightFile("vae/config.json", "", "vae/config.json", "LTX-Video VAE: its licence (Lightricks)"),
            WeightFile("vae/diffusion_pytorch_model.safetensors", "", "vae weights",
                       "LTX-Video VAE: its licence (Lightricks)"),
            WeightFile("audio_encoder/config.json", "", "audio_encoder/config.json", "whisper: MIT (OpenAI)"),
            WeightFile("audio_encoder/model.safetensors", "", "audio encoder weights", "whisper: MIT (OpenAI)"),
            WeightFile("text_encoder/config.json", "", "text_encoder/config.json", "T5 v1.1: Apache-2.0 (Google)"),
            WeightFile("text_encoder/model.safetensors", "", "text encoder weights", "T5 v1.1: Apache-2.0 (Google)",
                       alternatives=("text_encoder/model.safetensors.index.json",)),
            WeightFile("scheduler/scheduler_config.json", "", "scheduler config", _OURS),
        ),
        notes="No public checkpoint exists yet: train one (docs/training.md) or run random weights.",
    ),
)
