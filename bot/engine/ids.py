"""Matrix identifiers, taken apart in one place: ``@alice:example.org`` has the
localpart ``alice`` and the server name ``example.org`` (a room or event id of the
old form, ``!abc:example.org``, has a server name too). Pure: imports nothing."""

from __future__ import annotations


def server_name(matrix_id: str) -> str:
    """The server name of a user (or room) id; "" for an id without one."""
    return matrix_id.partition(":")[2]


def localpart(user_id: str) -> str:
    """The localpart of a user id, without its sigil."""
    return user_id[1:].partition(":")[0]
