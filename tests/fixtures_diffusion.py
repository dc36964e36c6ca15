"""Fixtures for this model family (filled in by the issue that owns it)."""
