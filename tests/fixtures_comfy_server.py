"""Fixtures for this area (filled in by the issue that owns it)."""
