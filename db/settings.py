"""Service settings from the environment (prefix ``GRADSTORE_``), shared by API and workers."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRADSTORE_", extra="ignore")

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Field(Path(".gradstore/data"), description="Artifact root.")
    database_url: str = Field("", description="SQLAlchemy URL; SQLite in data_dir if empty.")
    api_keys: str = Field("", description="Comma-separated bearer tokens; empty = no auth.")
    max_upload_bytes: int = Field(1 << 30, description="Largest dataset upload accepted.")
    max_inline_examples: int = Field(100_000, description="Most examples in a JSON upload.")
    max_targets: int = Field(1024, description="Most target examples in one select.")
    engine_cache_size: int = Field(2, description="Loaded datastores kept in memory.")
    device: str | None = Field(None, description="Torch device for queries and workers.")
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads per process for torch (default: the cores this process may "
        "use, divided by the processes of `gradstore serve` that share them), since more "
        "threads than cores only contend.",
    )
    lease_seconds: float = Field(120.0, description="A worker's claim on a unit lasts this long.")
    heartbeat_seconds: float = Field(15.0, description="How often a live worker renews it.")
    poll_seconds: float = Field(1.0, description="How often an idle worker looks for work.")
    max_attempts: int = Field(3, description="Attempts of a unit before its build fails.")
    model_roots: str = Field(
        "",
        description="Directories (separated by ':') that model.path and warmup_from must "
        "resolve inside, symlinks followed; required in production. Empty: any directory.",
    )
    verify_interval_seconds: float = Field(
        7 * 24 * 3600.0,
        ge=0,
        description="Re-read every byte of each ready datastore this often (a worker does it "
        "in the background); 0: only after the build and when asked.",
    )
    retry_after_seconds: int = Field(5, ge=1, description="Retry-After of a 503 answer.")
    database_connect_timeout: int = Field(
        5, ge=1, description="Seconds to wait for a database connection before a 503."
    )
    log_format: Literal["json", "text"] = Field("json", description="Log lines as JSON or text.")
    log_level: str = Field("INFO", description="Level of the service's and workers' logs.")

    @model_validator(mode="after")
    def _defaults(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'gradstore.db').resolve()}"
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError(
                f"GRADSTORE_HEARTBEAT_SECONDS ({self.heartbeat_seconds}) must be shorter than "
                f"GRADSTORE_LEASE_SECONDS ({self.lease_seconds}), or live workers lose leases"
            )
        if self.environment == "production" and not self.keys:
            raise ValueError("GRADSTORE_API_KEYS must be set in production")
        if self.environment == "production" and not self.roots:
            raise ValueError(
                "GRADSTORE_MODEL_ROOTS must be set in production: the directories model "
                "paths may name (e.g. /models)"
            )
        for root in self.roots:
            if not root.is_absolute():
                raise ValueError(f"GRADSTORE_MODEL_ROOTS entries must be absolute: {root}")
        return self

    @property
    def roots(self) -> list[Path]:
        """The model roots with their symlinks resolved, as the paths they are compared to."""
        parts = [p.strip() for p in self.model_roots.split(os.pathsep) if p.strip()]
        return [Path(os.path.realpath(p)) if Path(p).is_absolute() else Path(p) for p in parts]

    @property
    def keys(self) -> set[str]:
        return {k.strip() for k in self.api_keys.split(",") if k.strip()}

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def datastores_dir(self) -> Path:
        return self.data_dir / "datastores"


@lru_cache
def get_settings() -> Settings:
    return Settings()


def apply_torch_threads(settings: Settings, processes: int = 1) -> None:
    """torch's CPU threads here: as configured, else this host's cores over ``processes``."""
    from gradstore.threads import threads_per_process, use_threads

    use_threads(settings.torch_threads or threads_per_process(processes))
