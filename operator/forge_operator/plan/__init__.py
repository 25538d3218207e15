"""Pure functions: a resource (and what it refers to) becomes the workload it needs."""
