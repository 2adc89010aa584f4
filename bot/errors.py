"""The domain's expected failures: one base class, four kinds.

An expected failure carries a message for a person and no traceback. The kind says
what the person has to look at; the CLI's edge (bot/cli/main.py, with the table
``EXIT_CODES`` in bot/cli/common.py) maps each kind to its exit code, the only place
that knows exit codes of failures. Library code raises
these (or its own subclasses of them) and never a click exception.
"""

from __future__ import annotations


class LetheError(Exception):
    """An expected failure; ``str(error)`` is the whole message for a person."""


class CheckFailed(LetheError):
    """A check failed, or the room refused (e.g. the bot lacks the power)."""


class UsageError(LetheError):
    """Malformed or contradictory arguments, or an unknown room."""


class SetupError(LetheError):
    """The local setup cannot be used: the config, the database, a data file, or a
    second instance running on the same data."""


class HomeserverError(LetheError):
    """The homeserver is unreachable, failed a request, or refused the login."""
