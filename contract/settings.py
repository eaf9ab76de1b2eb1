"""Configuration shared by the API and the workers: environment variables prefixed ``LIPSYNC_``.

Every field here is listed in README's configuration table; keep the two in step.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import import_module
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_APP_ID = "pipio/lipsync"


class AppConfig(BaseModel):
    """One model served behind the queue API. A second model is one more entry in ``LIPSYNC_APPS``."""

    queue: str
    input_model: str = "contract.schema:LipsyncInput"
    output_model: str = "contract.schema:LipsyncOutput"

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

    # --- inputs -----------------------------------------------------------------------------------------
    allow_private_urls: bool = Field(
        default=False, description="Let input and webhook URLs reach loopback/private addresses (tests, LANs)."
    )
    max_input_bytes: int = 512 * 1024 * 1024
    max_request_bytes: int = 64 * 1024 * 1024
    download_timeout_s: float = 60.0
    max_num_frames: int = 10_000
    max_prompt_chars: int = 2_000

    # --- lifetimes --------------------------------------------------------------------------------------
    queued_ttl_s: int = 24 * 3600
    result_ttl_s: int = 7 * 24 * 3600
    url_ttl_s: int = 7 * 24 * 3600
    sync_timeout_s: float = 3600.0

    # --- webhooks ---------------------------------------------------------------------------------------
    webhook_timeout_s: float = 15.0
    webhook_max_attempts: int = 10
    webhook_backoff_s: float = 2.0
    webhook_signing_key: str | None = Field(
        default=None, description="Base64 Ed25519 private key for webhook signatures; default: a key file in storage_dir."
    )

    def app(self, app_id: str) -> AppConfig | None:
        return self.apps.get(app_id)


@lru_cache
def get_settings() -> Settings:
    return Settings()
