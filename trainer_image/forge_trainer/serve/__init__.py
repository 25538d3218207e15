"""OpenAI-compatible HTTP server for trained models."""
