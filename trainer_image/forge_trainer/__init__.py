"""Forge's workloads: the code that runs inside pods (and, unchanged, on one machine)."""
