"""Run the real workloads the way their pods would: with the config the operator wrote into the
ConfigMap and the credentials a pod gets from its Secret (no kubelet here to run them)."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path

from minio import Minio

from tests.support.cluster import ACCESS, SECRET, Cluster

WORDS = ["operator", "cluster", "shard", "token", "corpus", "model", "train", "node", "queue", "bucket", "secret", "policy", "schedule", "gradient", "batch", "checkpoint", "metric", "replica", "service", "volume", "network", "kernel", "tensor", "vector", "the", "a", "of", "and", "to"]


def varied_doc(seed: int, words: int = 80) -> str:
    """A document unlike the others (near-dedup keeps it)."""
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words)) + "."


def upload(s3: Minio, bucket: str, key: str, text: str, content_type: str = "text/plain") -> None:
    """Put one object into the raw-data bucket."""
    data = text.encode()
    s3.put_object(bucket, key, io.BytesIO(data), len(data), content_type=content_type)


def upload_corpora(s3: Minio, bucket: str) -> None:
    """A small pretraining corpus and a small SFT conversation set."""
    for i in range(40):
        upload(s3, bucket, f"corpus/doc-{i:03d}.txt", varied_doc(i))
    chats = [json.dumps({"messages": [{"role": "user", "content": f"what is {i} plus {i}?"},
                                      {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]})
             for i in range(30)]
    upload(s3, bucket, "chats/chats.jsonl", "\n".join(chats) + "\n", "application/x-ndjson")


def run_like_the_pod(cluster: Cluster, config_map: str, command: str, endpoint: str, tmp_path: Path,
                     timeout: float = 600) -> None:
    """Run `forge-trainer <command> --config` with the ConfigMap's config, as the pod would."""
    cm = cluster.core.read_namespaced_config_map(config_map, cluster.ns)
    cfg = tmp_path / f"{config_map}.yaml"
    cfg.write_text(cm.data["config.yaml"])
    env = {**os.environ, "FORGE_S3_ACCESS_KEY": ACCESS, "FORGE_S3_SECRET_KEY": SECRET,
           "FORGE_S3_ENDPOINT": endpoint, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "forge_trainer.cli", command, "--config", str(cfg)],
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"forge-trainer {command} failed:\n{proc.stderr[-3000:]}"
