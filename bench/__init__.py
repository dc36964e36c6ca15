"""Benchmarks run by ``emofeedback2 bench``: scripts that print figures, never timed tests."""
