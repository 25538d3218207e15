"""The S3 server every tier tests against (moto_server on loopback; the fixtures are in tests/conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass

from forge_trainer.config import StoreConfig


@dataclass
class S3Server:
    """A running moto_server and a fresh bucket in it."""

    endpoint: str
    bucket: str

    @property
    def config(self) -> StoreConfig:
        """The store settings a workload uses to reach this server."""
        return StoreConfig(endpoint=self.endpoint, secure=False)

    def uri(self, key: str = "") -> str:
        """The s3:// URI of `key` in the test bucket."""
        return f"s3://{self.bucket}/{key}".rstrip("/")
