"""Where workloads read and write: the object-store connection, and the layout of what they write.

One prefix per resource (`<bucket>/forge/<namespace>/<kind>/<name>/<uid>/`), chosen by the operator
and passed as `output`. Under a dataset's prefix:

    manifest.json  tokenizer.json  shards/  records/  progress.json  audit.jsonl

Under a training run's prefix:

    checkpoints/step-NNNNNNNN/  model/  adapter/  eval.json  progress.json  logs/
"""

from __future__ import annotations

from forge_trainer.config.wire import WireModel

PROGRESS_NAME = "progress.json"
"""A workload's progress (`DatasetProgress` or `TrainProgress`), written atomically; the operator reads it."""
MANIFEST_NAME = "manifest.json"
"""A dataset's manifest: its shards and their digests, written last."""
TOKENIZER_NAME = "tokenizer.json"
"""A dataset's (or an exported model's) tokenizer."""
AUDIT_NAME = "audit.jsonl"
"""A dataset's audit log (one JSON record per line)."""
SHARDS_DIR = "shards"
"""A dataset's token shards."""
RECORDS_DIR = "records"
"""A dataset's record shards (sft conversations, rl tasks)."""
CHECKPOINTS_DIR = "checkpoints"
"""A run's checkpoints, one directory per step."""
MODEL_DIR = "model"
"""A run's final model (Hugging Face format)."""
ADAPTER_DIR = "adapter"
"""A lora/qlora run's PEFT adapter."""
EVAL_NAME = "eval.json"
"""A run's evaluation metrics (what a deployment's eval gate reads)."""
LOGS_DIR = "logs"
"""A run's step log."""


class StoreConfig(WireModel):
    """Object store a workload talks to. Credentials never live here: they come from the environment
    (FORGE_S3_ACCESS_KEY / FORGE_S3_SECRET_KEY, filled from a Secret)."""

    endpoint: str | None = None
    """S3 endpoint host[:port]; unset for a local directory store."""
    secure: bool = True
    """Use HTTPS for the S3 endpoint."""
    region: str | None = None
    """S3 region, if the endpoint needs one."""
