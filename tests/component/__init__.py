"""Component tier: training and servers run in this process (seconds per test)."""
