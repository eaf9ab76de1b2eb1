"""InfiniteTalk's published weights layout, as its README's download commands lay it out (torch-free).

    weights/Wan2.1-I2V-14B-480P/   hub Wan-AI/Wan2.1-I2V-14B-480P (or -720P: 720p buckets)
        config.json, diffusion_pytorch_model-0000{1..7}-of-00007.safetensors (+ .index.json),
        Wan2.1_VAE.pth, models_t5_umt5-xxl-enc-bf16.pth, google/umt5-xxl/ (tokenizer),
        models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth, xlm-roberta-large/ (tokenizer, loaded and unused
        by the authors; not needed here)
    weights/chinese-wav2vec2-base/ hub TencentGameMate/chinese-wav2vec2-base: config.json, preprocessor_config.json,
        pytorch_model.bin (main) or model.safetensors (the README fetches it from refs/pr/1)
    weights/InfiniteTalk/single/infinitetalk.safetensors   hub MeiGen-AI/InfiniteTalk (audio adapter weights)
    weights/InfiniteTalk/multi/infinitetalk.safetensors    (two speakers: detected and named, not used)

The file names are the authors' (``wan/configs/wan_multitalk_14B.py``, ``wan/multitalk.py`` hard-codes the seven
shard names, ``generate_infinitetalk.py``); the folder names are the README's.
"""

from lipsync.model.weights import WeightFile, WeightsLayout

WAN_480 = "Wan2.1-I2V-14B-480P"
WAN_720 = "Wan2.1-I2V-14B-720P"
WAV2VEC = "chinese-wav2vec2-base"
SINGLE = "InfiniteTalk/single/infinitetalk.safetensors"
MULTI = "InfiniteTalk/multi/infinitetalk.safetensors"
SHARDS = tuple(f"diffusion_pytorch_model-{i:05d}-of-00007.safetensors" for i in range(1, 8))
VAE_FILE = "Wan2.1_VAE.pth"
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
T5_TOKENIZER = "google/umt5-xxl"
CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
CLIP_TOKENIZER = "xlm-roberta-large"

_WAN = "Wan2.1: Apache-2.0 (Wan-AI)"
_IT = "InfiniteTalk: Apache-2.0 (MeiGen-AI)"
_W2V = "chinese-wav2vec2-base: MIT (TencentGameMate)"


def _wan_files(folder: str) -> tuple[WeightFile, ...]:
    repo = f"Wan-AI/{folder}"
    files = [WeightFile(f"{folder}/config.json", repo, "config.json", _WAN),
             WeightFile(f"{folder}/diffusion_pytorch_model.safetensors.index.json", repo,
                        "diffusion_pytorch_model.safetensors.index.json", _WAN, required=False)]
    files += [WeightFile(f"{folder}/{s}", repo, s, _WAN) for s in SHARDS]
    files += [WeightFile(f"{folder}/{VAE_FILE}", repo, VAE_FILE, _WAN),
              WeightFile(f"{folder}/{T5_FILE}", repo, T5_FILE, _WAN),
              WeightFile(f"{folder}/{T5_TOKENIZER}/tokenizer_config.json", repo,
                         f"{T5_TOKENIZER}/tokenizer_config.json", _WAN),
              WeightFile(f"{folder}/{T5_TOKENIZER}/tokenizer.json", repo, f"{T5_TOKENIZER}/tokenizer.json", _WAN,
                         alternatives=(f"{folder}/{T5_TOKENIZER}/spiece.model",)),
              WeightFile(f"{folder}/{T5_TOKENIZER}/special_tokens_map.json", repo,
                         f"{T5_TOKENIZER}/special_tokens_map.json", _WAN, required=False),
              WeightFile(f"{folder}/{CLIP_FILE}", repo, CLIP_FILE, _WAN),
              WeightFile(f"{folder}/{CLIP_TOKENIZER}/tokenizer.json", repo, f"{CLIP_TOKENIZER}/tokenizer.json", _WAN,
                         required=False)]
    return tuple(files)


_COMMON = (
    WeightFile(f"{WAV2VEC}/config.json", "TencentGameMate/chinese-wav2vec2-base", "config.json", _W2V),
    WeightFile(f"{WAV2VEC}/preprocessor_config.json", "TencentGameMate/chinese-wav2vec2-base",
               "preprocessor_config.json", _W2V),
    WeightFile(f"{WAV2VEC}/pytorch_model.bin", "TencentGameMate/chinese-wav2vec2-base", "pytorch_model.bin", _W2V,
               alternatives=(f"{WAV2VEC}/model.safetensors",)),  # the README's model.safetensors is on refs/pr/1
    WeightFile(SINGLE, "MeiGen-AI/InfiniteTalk", "single/infinitetalk.safetensors", _IT),
    WeightFile(MULTI, "", "MeiGen-AI/InfiniteTalk multi/infinitetalk.safetensors (two speakers; not fetched, not used)",
               _IT, required=False),
)

LAYOUTS = (
    WeightsLayout(engine="infinitetalk", variant="infinitetalk-480p", markers=(f"{WAN_480}/{VAE_FILE}",),
                  files=_wan_files(WAN_480) + _COMMON,
                  notes="480p buckets (shift 7); about 77 GB on disk (the 14B transformer in fp32 shards)"),
    WeightsLayout(engine="infinitetalk", variant="infinitetalk-720p", markers=(f"{WAN_720}/{VAE_FILE}",),
                  files=_wan_files(WAN_720) + _COMMON,
                  notes="720p buckets (shift 11): Wan2.1-I2V-14B-720P instead of -480P"),
)


def wan_folder(variant: str) -> str:
    return WAN_720 if variant.endswith("720p") else WAN_480
