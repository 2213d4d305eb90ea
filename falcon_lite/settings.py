"""Process settings, read once from the environment (the only module that reads it).

`DATABASE_URL` unset means the embedded default: a SQLite file under `FALCON_LITE_DATA_DIR`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, PositiveInt
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FALCON_LITE_", extra="ignore")

    data_dir: Path = Field(default=Path(".falcon-lite"), description="Where the embedded SQLite file lives.")
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "FALCON_LITE_DATABASE_URL")
    )
    ray_address: str | None = Field(
        default=None, validation_alias=AliasChoices("RAY_ADDRESS", "FALCON_LITE_RAY_ADDRESS")
    )
    ray_namespace: str = "falcon-lite"
    api_token: str | None = None
    max_body_bytes: int = 1_000_000
    # What one request may ask of the server (each is FALCON_LITE_<NAME> in the environment).
    posterior_max_values: PositiveInt = Field(
        default=100_000, description="GET /posterior: at most this many numbers (n x dim) in one answer."
    )
    stress_max_runs: PositiveInt = Field(default=200, description="POST /stress: grid points x seeds.")
    stress_max_steps: PositiveInt = Field(default=100_000, description="POST /stress: steps of one run.")
    stress_max_total_steps: PositiveInt = Field(
        default=2_000_000, description="POST /stress: runs x steps, the job's whole work."
    )
    stress_max_jobs: PositiveInt = Field(default=2, description="Stress jobs queued or running at once.")

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'falcon-lite.db').resolve()}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
