"""The builtin serving runtime: an OpenAI-compatible HTTP server for trained models.

    server.py       `forge-trainer serve`: options, background loading, uvicorn
    app.py          the HTTP API (completions, chat completions, models, health, metrics) and its limits
    auth.py         the API key: Bearer tokens compared in constant time; probes stay open
    protocol.py     OpenAI request bodies (every field range-checked) and the error object
    engine.py       continuous batching over the model, with a KV cache per running sequence
    sampling.py     greedy / temperature / top-p choice of the next token, per-request seeds
    text_stream.py  token ids to text as they arrive, stop strings
    loading.py      fetch, verify and load a Hugging Face export (+ LoRA merge)
    model_files.py  fetching a model directory from the store, checked by `model.files.model_dir_digest`
    lora.py         merging a PEFT-format LoRA adapter into the weights
    metrics.py      the runtime's Prometheus metrics
"""
