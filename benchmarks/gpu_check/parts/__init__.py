"""The parts of the GPU check, one module each, run in the order `plan.PARTS` gives; each has
`run(ctx)` and records what it measures on the context."""
