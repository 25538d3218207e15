"""How the operator connects to the object store: short timeouts and few retries, because its reads run
inside reconciles. The minio defaults (300 s connect and read timeouts, 5 retries) let one unresponsive
store hold a reconcile for many minutes."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import certifi
import urllib3

from forge_trainer.config import StoreConfig
from forge_trainer.store import (
    ACCESS_KEY_ENV,
    ENDPOINT_ENV,
    SECRET_KEY_ENV,
    ObjectStore,
    S3Store,
    open_uri,
    split_uri,
)


@dataclass(frozen=True)
class StoreTimeouts:
    """Per-request limits of the operator's store client."""

    connect: float = 3.0
    """Seconds to open a TCP (and TLS) connection."""
    read: float = 5.0
    """Seconds to wait for any bytes of an answer."""
    retries: int = 1
    """Retries of a failed request (connection errors and 5xx answers), with a short backoff."""


def store_http_client(timeouts: StoreTimeouts | None = None, *, secure: bool = True,
                      maxsize: int = 16) -> urllib3.PoolManager:
    """A connection pool for the minio client with `timeouts` (default StoreTimeouts(); CA bundle as
    minio's own default)."""
    timeouts = timeouts or StoreTimeouts()
    retry = urllib3.Retry(total=timeouts.retries, connect=timeouts.retries, read=timeouts.retries,
                          backoff_factor=0.2, status_forcelist=[500, 502, 503, 504])
    return urllib3.PoolManager(timeout=urllib3.Timeout(connect=timeouts.connect, read=timeouts.read),
                               maxsize=maxsize, retries=retry, cert_reqs="CERT_REQUIRED" if secure else "CERT_NONE",
                               ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where())


def open_store(uri: str, config: StoreConfig, timeouts: StoreTimeouts | None = None) -> tuple[ObjectStore, str]:
    """The store that holds `uri` (and the key of `uri` in it), through a client with `timeouts`. An S3
    bucket's client is kept and reused: it remembers the bucket's region, which a new client asks the store
    for again before every request."""
    scheme, root, key = split_uri(uri)
    if scheme != "s3":
        return open_uri(uri, config)
    endpoint = config.endpoint or os.environ.get(ENDPOINT_ENV) or ""
    credentials = (os.environ.get(ACCESS_KEY_ENV, ""), os.environ.get(SECRET_KEY_ENV, ""))
    return _bucket(root, endpoint, config.secure, config.region, timeouts or StoreTimeouts(), credentials), key


@functools.lru_cache(maxsize=32)
def _bucket(bucket: str, endpoint: str, secure: bool, region: str | None, timeouts: StoreTimeouts,
            credentials: tuple[str, str]) -> ObjectStore:
    """One client per bucket, endpoint, timeouts and credentials (the minio client is thread-safe)."""
    config = StoreConfig(endpoint=endpoint or None, secure=secure, region=region)
    return S3Store(bucket, config, *credentials, http_client=_shared_client(timeouts, secure))


@functools.cache
def _shared_client(timeouts: StoreTimeouts, secure: bool) -> urllib3.PoolManager:
    """One pool per kind of client, shared by every read (a PoolManager is thread-safe), so reads reuse
    their connections."""
    return store_http_client(timeouts, secure=secure)


def endpoint_of(config: StoreConfig) -> str:
    """The endpoint a person would recognise (`https://host:port`), for conditions, Events and metrics."""
    endpoint = config.endpoint or os.environ.get(ENDPOINT_ENV) or ""
    if not endpoint:
        return "local directory"
    return f"{'https' if config.secure else 'http'}://{endpoint}"


def scrub(text: str) -> str:
    """`text` with the store credentials of this process blanked out: error texts go into status
    conditions, Events and logs, which many more people read than the Secret."""
    for env in (ACCESS_KEY_ENV, SECRET_KEY_ENV):
        value = os.environ.get(env, "")
        if len(value) >= 4:
            text = text.replace(value, "***")
    return text
