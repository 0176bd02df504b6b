"""Experiments over many runs: sweeps, their reports, comparisons and the Ray engine."""
