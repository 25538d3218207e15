"""The operator's own settings, read once from the environment (the Helm chart sets them)."""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import BaseModel, Field

from forge_trainer.config import StoreConfig

DEFAULT_TRAINER_IMAGE = "ghcr.io/forge-ai/forge-trainer:0.1.0"


class OperatorSettings(BaseModel):
    """Settings of one operator installation."""

    trainer_image: str = DEFAULT_TRAINER_IMAGE
    """Image of the workloads (prepare, train, builtin serving)."""
    image_pull_policy: str = "IfNotPresent"
    """Pull policy of workload images."""
    store_endpoint: str | None = None
    """S3 endpoint host[:port] of the company's object store."""
    store_secure: bool = True
    """Use HTTPS for the object store."""
    store_region: str | None = None
    """S3 region, if needed."""
    store_bucket: str = "forge"
    """Bucket that holds everything Forge produces."""
    credentials_secret: str = "forge-store-credentials"
    """Secret (in each resource's namespace) with accessKey/secretKey that workloads use by default."""
    reconcile_interval: Annotated[float, Field(gt=0)] = 10.0
    """Seconds between reconciles of a resource that is not settled."""
    metrics_port: int = 8080
    """Port of the operator's /metrics endpoint (0 disables)."""
    api_connections: Annotated[int, Field(ge=4, le=512)] = 32
    """Most concurrent connections to the API server (watches + Kopf's patches; the handlers' own calls
    share another pool of 16). Each open TLS connection costs ~0.3 MB, so a burst must not open
    hundreds."""

    @property
    def store(self) -> StoreConfig:
        """The object-store connection workloads and the operator use (no credentials)."""
        return StoreConfig(endpoint=self.store_endpoint, secure=self.store_secure, region=self.store_region)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> OperatorSettings:
        """Settings from FORGE_* environment variables; unset ones keep their defaults."""
        env = dict(os.environ if env is None else env)
        values: dict[str, object] = {}
        for name in cls.model_fields:
            key = f"FORGE_{name.upper()}"
            if key in env:
                values[name] = env[key]
        if "FORGE_S3_ENDPOINT" in env and "store_endpoint" not in values:
            values["store_endpoint"] = env["FORGE_S3_ENDPOINT"]
        return cls.model_validate(values)
