"""Configuration shared by the API and the workers: environment variables prefixed ``LIPSYNC_``.

The one place the environment is read: every other module takes what it needs as an argument. Every field
here is listed in README's configuration table; keep the two in step. A bad value fails at start (pydantic's
error names the variable and the allowed values).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import import_module
from pathlib import Path
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_APP_ID = "pipio/lipsync"

EngineName = Literal["pipio", "musetalk", "latentsync", "infinitetalk"]
"""The engines a worker can run (``lipsync.model.weights.ENGINES`` is this list, in detection order)."""


class DType(StrEnum):
    """Model dtype names; ``auto`` is bf16 on CUDA, fp32 on a CPU (``lipsync.model.devices``)."""

    AUTO = "auto"
    BF16 = "bf16"
    FP16 = "fp16"
    FP32 = "fp32"

    @classmethod
    def _missing_(cls, value: object) -> "DType | None":
        aliases = {"bfloat16": cls.BF16, "float16": cls.FP16, "half": cls.FP16, "float32": cls.FP32, "float": cls.FP32}
        return aliases.get(str(value).lower())


DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?|mps)$"
"""auto (cuda if available, else cpu), cpu, cuda, cuda:N or mps."""


class AppConfig(BaseModel):
    """One model served behind the queue API. A second model is one more entry in ``LIPSYNC_APPS``."""

    queue: str
    input_model: str = "lipsync.contract.schema:LipsyncInput"
    output_model: str = "lipsync.contract.schema:LipsyncOutput"

    def load_input_model(self) -> type[BaseModel]:
        return _import(self.input_model)

    def load_output_model(self) -> type[BaseModel]:
        return _import(self.output_model)


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(import_module(module), attr)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LIPSYNC_", extra="ignore")

    # --- wiring -----------------------------------------------------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    storage_dir: Path = Path("./data/storage")
    public_url: str | None = Field(
        default=None, description="Base URL put into status_url etc.; default: the request's own base URL."
    )
    apps: dict[str, AppConfig] = {DEFAULT_APP_ID: AppConfig(queue="lipsync")}
    proxy_path: str = Field(default="/api/fal/proxy", description="Where the JS client's proxyUrl points.")
    cors_origins: str = Field(
        default="", description="Comma-separated browser origins allowed by CORS (`*`: any); empty: CORS off."
    )

    # --- auth -------------------------------------------------------------------------------------------
    api_keys: str = Field(default="", description="Comma-separated `secret` or `id:secret` entries.")
    api_keys_file: Path | None = Field(default=None, description="File with one `secret` or `id:secret` a line.")
    signing_secret: str | None = Field(
        default=None, description="HMAC key for signed URLs and upload tokens; default: a key file in storage_dir."
    )

    # --- worker -----------------------------------------------------------------------------------------
    pipeline: str = Field(default="lipsync", description="Pipeline a worker loads: a registered name or module:attr.")
    job_timeout_s: int = 3600
    heartbeat_interval_s: float = 2.0
    heartbeat_ttl_s: float = 10.0
    reaper_interval_s: float = 3.0
    max_runner_retries: int = Field(
        default=10, ge=0, description="Times a request whose worker died is queued again (hosted: 10); X-Fal-No-Retry opts out."
    )
    max_worker_deaths: int = Field(
        default=2, ge=0, description="A request whose workers died running it this many times (killed, OOM) ends "
        "poison_request instead of being queued again; 0: only max_runner_retries bounds it."
    )

    # --- inputs -----------------------------------------------------------------------------------------
    allow_private_urls: bool = Field(
        default=False, description="Let input and webhook URLs reach loopback/private addresses (tests, LANs)."
    )
    max_input_bytes: int = 512 * 1024 * 1024
    max_request_bytes: int = 64 * 1024 * 1024
    download_timeout_s: float = Field(
        default=60.0, gt=0, description="One deadline per input download: DNS, connect, headers, redirects and body."
    )
    body_idle_timeout_s: float = Field(
        default=30.0, gt=0, description="A request body that sends nothing for this long is refused (408)."
    )
    max_num_frames: int = 10_000
    max_prompt_chars: int = 2_000

    # --- lifetimes --------------------------------------------------------------------------------------
    queued_ttl_s: int = 24 * 3600
    result_ttl_s: int = 7 * 24 * 3600
    url_ttl_s: int = 7 * 24 * 3600
    sync_timeout_s: float = 3600.0
    upload_ttl_s: int = 8 * 24 * 3600
    retention_interval_s: float = 60.0

    # --- admission (0 = off) --------------------------------------------------------------------------
    rate_limit_per_minute: int = Field(default=0, description="Submits a key may make per minute.")
    max_inflight_per_key: int = Field(default=0, description="Unfinished requests a key may have at once.")

    # --- webhooks ---------------------------------------------------------------------------------------
    webhook_timeout_s: float = Field(
        default=15.0, gt=0, description="One deadline per webhook attempt: connect, send and the whole reply."
    )
    webhook_max_attempts: int = 10
    webhook_backoff_s: float = 2.0
    webhook_signing_key: str | None = Field(
        default=None, description="Base64 Ed25519 private key for webhook signatures; default: a key file in storage_dir."
    )

    # --- object storage (LIPSYNC_STORAGE_BACKEND=s3: an S3-compatible bucket instead of storage_dir) ---------
    storage_backend: Literal["filesystem", "s3"] = Field(
        default="filesystem", description="Where inputs and results live: filesystem or s3."
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3 endpoint the API and workers use (e.g. http://minio:9000); default: AWS."
    )
    s3_public_endpoint_url: str | None = Field(
        default=None, description="Endpoint put into presigned URLs users fetch; default: s3_endpoint_url."
    )
    s3_bucket: str | None = Field(default=None, description="Bucket holding uploads, inputs and results.")
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = Field(default=None, description="Default: boto3's chain (AWS_* env, roles).")
    s3_secret_access_key: str | None = None
    s3_prefix: str = Field(default="", description="Key prefix inside the bucket (e.g. lipsync/).")
    s3_create_bucket: bool = Field(default=False, description="Create the bucket at start when it is missing.")

    # --- lip-sync model (the `lipsync` pipeline) -------------------------------------------------------------
    weights_dir: Path | None = Field(
        default=None,
        description="Model weights folder: a MuseTalk or LatentSync folder in its published layout, or ours "
        "(LipSyncPipeline.save_pretrained); the engine is detected from the files (`lipsync weights check DIR`). "
        "Unset, or an existing empty folder: pipio with random weights of random_weights_config, and every "
        "result's logs say the output is not a trained model's.",
    )
    engine: EngineName | None = Field(
        default=None, description="Engine to run (pipio | musetalk | latentsync | infinitetalk); default: detected from weights_dir."
    )
    random_weights_config: str = Field(
        default="tiny", description="Model config (tiny | base | a JSON path) built with random weights when no weights."
    )
    device: str = Field(default="auto", pattern=DEVICE_PATTERN,
                        description="Torch device of the model: auto (cuda if available, else cpu), cpu, cuda, cuda:N, mps.")
    dtype: DType = Field(default=DType.AUTO, description="Model dtype: auto (bf16 on cuda, fp32 on cpu), bf16, fp16, fp32.")
    num_inference_steps: int | None = Field(default=None, ge=1, description="Denoising steps; default: the model's.")
    guidance_scale: float | None = Field(default=None, ge=1.0, description="Audio CFG scale; default: the model's.")
    face_crop_size: int = Field(
        default=0, ge=0, description="Face-crop working size (multiple of 32); 0: 64 for random tiny weights, else 512."
    )
    compile: bool = Field(
        default=False, description="torch.compile the model's repeated blocks at worker start, warmed up before the "
        "first job (GPU workers; minutes of start-up, then faster steps).")
    text_encoder: Literal["device", "cpu", "drop"] = Field(
        default="device", description="Where the prompt encoder (T5) lives: device "
        "(with the model), cpu (host memory; encodes a new prompt there), drop (the default prompt is encoded at "
        "start, then T5 is freed; custom prompts are refused). Prompt embeddings are cached in every case.")
    offload: Literal["auto", "none", "blocks"] = Field(
        default="auto", description="Model offload, InfiniteTalk: blocks keeps the transformer's blocks in host "
        "memory and streams each to the GPU as it runs (a 14B model on a 16-24 GB card; one host-to-device copy "
        "of the blocks per step, overlapped with compute); none keeps every weight on the GPU; auto offloads when "
        "the weights and a chunk's working memory would not fit the GPU's free memory. Other engines fit any "
        "card they run on: ignored.")
    deep_cache: bool = Field(
        default=True, description="LatentSync: DeepCache as its authors' published inference runs it (the UNet "
        "whole on every third denoising step, its shallow branch in between: 7 of 20 steps whole); false runs "
        "every step whole (slower, not the published result).")
    paste_colour_match: bool = Field(
        default=False, description="Paste-back: shift each generated face's colour so its mean along the blend "
        "mask's seam equals the frame's (hides a tone or exposure drift of the model; changes every pasted pixel "
        "by that shift). Off: the authors' paste-back, no colour transfer.")
    paste_antialias: bool = Field(
        default=False, description="Paste-back: blur a generated face that is shrunk more than 1.25x into the "
        "frame before warping it (no aliasing of detail finer than a frame pixel; ours). Off: the authors' "
        "bilinear resize without it.")

    # --- media and process knobs ----------------------------------------------------------------------------
    stage_threads: bool = Field(
        default=True, description="Run the request's stages (decode, track, engine, paste, encode) in their own threads; "
        "false runs them inline (profiling, debugging).")
    nvenc: bool = Field(
        default=True, description="Encode with h264_nvenc when FFmpeg has it and an NVIDIA GPU is visible; false: libx264.")
    cache_dir: Path | None = Field(
        default=None, description="Folder of the worker's video-side cache (probe, face track, crops, encoder outputs "
        "of a video, reused by later requests with the same video); default: lipsync-cache in the system's temporary "
        "folder. Workers on one host may share it.")
    cache_bytes: int = Field(
        default=0, ge=0, description="Byte budget of the video-side cache (least recently used entries go first); "
        "0 turns the cache off.")
    insightface_root: Path | None = Field(
        default=None, description="Folder holding insightface's models/buffalo_l: faces and identity use it when present "
        "and the package imports; otherwise dlib.")

    @field_validator("insightface_root", "weights_dir", "api_keys_file", "cache_dir", mode="before")
    @classmethod
    def _empty_path_is_none(cls, value: Any) -> Any:
        return None if value == "" else value  # `VAR=` means unset, not the current folder

    def app(self, app_id: str) -> AppConfig | None:
        return self.apps.get(app_id)


@lru_cache
def get_settings() -> Settings:
    return Settings()


def describe_errors(exc: ValidationError) -> str:
    """A settings error as the user wrote it: one line per variable, with what is allowed."""
    lines = []
    for err in exc.errors():
        name = "LIPSYNC_" + "_".join(str(p) for p in err["loc"][:1]).upper()
        lines.append(f"{name}={err.get('input')!r}: {err['msg']}")
    return "\n".join(lines)
