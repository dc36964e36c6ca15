"""Tiny random models built locally from configs (no downloads) for tests, the demo and benchmarks.

They exercise the same ``from_pretrained`` loading code users run on real weights.
"""
