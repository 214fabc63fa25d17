"""Errors a task raises while loading models and reading requests (here, so nothing in tasks/ imports a stage)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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


def check_text(text: Any, field: str, limits: InputLimits, use: str = "classify") -> None:
    """Refuse a request's ``field`` unless it is a non-empty text within ``limits.max_text_chars``."""
    if not isinstance(text, str):
        raise InputError(f"{field} is {type(text).__name__ if text is not None else 'null'}; this model takes texts (strings).")
    if not text.strip():
        raise InputError(f"{field} is an empty text; send the text to {use}.")
    if len(text) > limits.max_text_chars:
        raise InputError(f"{field} has {len(text)} characters; the limit is {limits.max_text_chars}. Shorten the text.", 413)
