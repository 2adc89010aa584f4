"""The store's one error, whatever the backend."""

from __future__ import annotations

from bot.errors import SetupError


class StoreError(SetupError, RuntimeError):
    """The database cannot be used; the message names the file and the problem."""
