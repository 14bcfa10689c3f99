"""The local backend (the embedded default)."""

from juliarun.backends.local.backend import LocalBackend

__all__ = ["LocalBackend"]
