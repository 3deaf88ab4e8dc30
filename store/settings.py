"""The ``store:`` section of node.yaml: where the index database lives."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class StoreSettings(BaseModel):
    """Persistence settings. The content store always lives under ``node.data_dir``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    database_url: str | None = Field(
        default=None,
        description=(
            "SQLAlchemy URL of the index database. Empty: SQLite at <data_dir>/courier.db. "
            "Must not hold a password: use database_url_env or database_url_file for that."
        ),
    )
    database_url_env: str | None = Field(
        default=None, description="Name of an environment variable holding the URL."
    )
    database_url_file: str | None = Field(
        default=None, description="Path of a file holding the URL (e.g. a Docker/K8s secret)."
    )
    busy_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="How long a write waits for a locked database before giving up (seconds).",
    )
    pool_size: int = Field(default=8, ge=1, le=100, description="PostgreSQL connection pool.")
    unmatched_retention_days: int = Field(
        default=30,
        ge=1,
        le=3650,
        description=(
            "A study held because it matched no pending request is purged (files deleted, "
            "the purge recorded) this many days after the decision. A discard rule's own "
            "retention_days wins for the studies it discards."
        ),
    )
    retention_days: int = Field(
        default=30,
        ge=0,
        le=3650,
        description=(
            "Days. The received instances of a study are purged (files deleted, rows "
            "removed, the purge recorded and audited) this long after the last request "
            "using it ended (expired or cancelled); a study an open request still uses is "
            "kept. 0: at the first sweep after the end. Default 30."
        ),
    )

    @field_validator("database_url")
    @classmethod
    def _no_password(cls, url: str | None) -> str | None:
        netloc = (url or "").split("://", 1)[-1].split("/", 1)[0]
        if "@" in netloc and ":" in netloc.split("@", 1)[0]:
            # Never echo the URL back: it holds the password.
            raise ValueError(
                "database_url holds a password: put the URL in an environment variable "
                "(database_url_env) or a file (database_url_file) instead"
            )
        return url

    @model_validator(mode="after")
    def _one_source(self) -> StoreSettings:
        given = [
            k for k in ("database_url", "database_url_env", "database_url_file") if getattr(self, k)
        ]
        if len(given) > 1:
            raise ValueError(f"give only one of {', '.join(given)}")
        return self
