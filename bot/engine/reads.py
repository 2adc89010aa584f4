"""The after_read rule: when has a message been read by its required readers?

Required readers of an event are the counted members (joined, not the bot, not
ignored) who joined before it was sent, other than its sender; members who leave
are removed and so stop being required. A public ``m.read`` receipt on event E
means "read up to and including E": it covers every event at or before E's
position. An unthreaded receipt covers all threads; a threaded one only its own
(``main`` or a thread root).

Each unread after_read event counts its required readers who have not read it yet
(``readers_left``, 0 as soon as one has under ``readers any``), so a receipt costs
what it newly covers: the unread events between the reader's previous position and
its new one, never unread events times members.

The statements that apply this are the store's (store/receipts.py); what is here
needs no database.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

from bot.engine.model import ReceiptMove

MAIN_THREAD = "main"
UNTHREADED = ""


def receipt_thread(thread_id: str | None) -> str:
    """Key a receipt by its thread: '' unthreaded, 'main', or a thread root id."""
    return UNTHREADED if thread_id is None else thread_id


def plan_cover_many(
    moves: Sequence[ReceiptMove],
    users: Sequence[str],
    joined: dict[str, int],
    stored: dict[tuple[str, str], int],
    events: Sequence[Sequence[Any]],
) -> list[tuple[int, bool, int, str]]:
    """What ``cover`` does for each of ``moves`` (receipts of one batch, already
    stored), in one pass: many receipts in one batch, e.g. every member's after
    downtime, would otherwise each walk the same unread events. Costs the unread
    events they span plus moves x threads, never events x moves. Events read by this
    batch count as read at its latest read time: late by at most the batch's spread,
    never early.

    ``joined``: the movers' join positions; ``stored``: their receipt positions by
    (user, thread key) now; ``events``: the unread after_read events the moves span,
    in order, as (event_id, seq, thread key, sender, readers_any, readers_left).
    Returns (readers_left, read, read_at, event_id) for each event that changes."""
    before = dict(stored)
    for move in reversed(moves):  # the earliest move of a key holds its position before
        before[(move.user_id, move.thread)] = move.old
    by_thread: dict[str, list[int]] = {}
    for index, row in enumerate(events):
        by_thread.setdefault(row[2], []).append(index)

    def newly(user: str, thread: str) -> tuple[int, int]:
        """The positions in ``thread`` the user's receipts newly cover: (lo, hi]."""
        was = max(before.get((user, UNTHREADED), 0), before.get((user, thread), 0))
        now = max(stored.get((user, UNTHREADED), 0), stored.get((user, thread), 0))
        return max(was, joined.get(user, now)), now

    counts = [0] * len(events)
    for thread, indexes in by_thread.items():
        seqs = [events[i][1] for i in indexes]
        steps = [0] * (len(indexes) + 1)
        for user in users:
            lo, hi = newly(user, thread)
            if hi > lo:
                steps[bisect.bisect_right(seqs, lo)] += 1
                steps[bisect.bisect_right(seqs, hi)] -= 1
        running = 0
        for n, i in enumerate(indexes):
            running += steps[n]
            counts[i] = running
    read_at = max(m.read_at for m in moves)
    changes = []
    for row, count in zip(events, counts, strict=True):
        event_id, seq, thread, sender, readers_any, left = row
        if sender in joined:  # the sender is no reader of its own message
            lo, hi = newly(sender, thread)
            count -= lo < seq <= hi
        if count <= 0:
            continue
        left = 0 if readers_any else left - count
        changes.append((left, left <= 0, read_at, event_id))
    return changes
