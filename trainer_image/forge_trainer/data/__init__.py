"""The data pipeline: raw corpus -> clean, deduplicated, tokenized shards."""
