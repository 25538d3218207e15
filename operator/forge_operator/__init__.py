"""Forge's Kubernetes operator and the `forge` command."""
