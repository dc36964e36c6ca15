"""Placeholder: filled in by the issue that owns these sub-commands."""


def register(subparsers) -> None:
    pass
