"""Deterministic orchestration: no I/O, no clocks, no randomness outside the workflow APIs."""
