"""Resolve what a resource refers to, the same way on a cluster and under `forge run`: pure functions
over a `Lookup` (the operator's Kopf indexes, or the local runner's records)."""
