"""The data pipeline: raw corpus -> clean, deduplicated, tokenized shards.

    prepare.run_prepare(config)   the `forge-trainer prepare` workload (writes manifest.json last)
    shards.load_manifest / read_token_shard / iter_records / fetch_tokenizer
                                  the verified reader training uses

Inside: ingest (every source format), normalize, quality, dedup (exact + MinHash/LSH), pii, records
(sft/rl shapes), clean (the per-record chain), tokenizer (byte-level BPE), encode (cached encoding),
shard_writers (token and record shards), report (progress.json and the audit log), manifest (the contract).
"""
