"""Pure functions: a planned workload becomes Kubernetes manifests (plain dicts)."""
