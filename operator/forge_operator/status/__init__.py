"""Pure functions: what was observed becomes a phase and standard conditions."""
