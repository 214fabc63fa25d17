"""Errors a task raises while loading models and reading requests (here, so nothing in tasks/ imports a stage)."""
from __future__ import annotations

from dataclasses import dataclass


class ModelLoadError(ValueError):
    """The base model cannot be loaded; the message says which path and what to do."""


class InputError(ValueError):
    """A request's inputs cannot be used; ``status`` is the HTTP status to answer with (4xx)."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class InputLimits:
    max_items: int = 32
    """Most inputs in one request."""
    max_text_chars: int = 10_000
    """Longest text accepted, in characters (texts are truncated to the model's max_length tokens anyway)."""
    max_new_tokens: int = 256
    """Most tokens one generation request may ask for (``/v1/generate``)."""
