"""Times Lethe itself bounds: when a message counts as sent and a receipt as read.

No remote clock decides a deadline alone. origin_server_ts and a receipt's ts are
stamped by whichever server the sender is on, so Lethe bounds them by what it saw
itself: "now" (its clock when a batch is stored) and the time it stored the previous
batch of the same stream (SEEN_KEY, kept with the batch).

- A message counts as sent at origin_ts, but never after Lethe had it, and never more
  than MAX_SKEW_MS before the previous batch: it was not in that one, so it reached
  the homeserver after it, give or take a clock's skew. After downtime, the previous
  batch is from before it, so what was sent meanwhile keeps its own time and is
  redacted at once if overdue. A backlog can come in several batches (a homeserver
  pushes an appservice its queue 100 events at a time): a batch whose newest message
  is older than the skew is a backlog one, and the time it stands for is that newest
  message's, never going back, so the next batch of the backlog keeps its own times.
- A receipt from a user of Lethe's own homeserver (which stamped it) counts at its ts,
  within the same window without the skew; one from another server counts when Lethe
  learned of it: a remote clock never makes anything read earlier.
"""

from __future__ import annotations

MAX_SKEW_MS = 60_000
SEEN_KEY = "seen_ms"


def sent_time(origin_ts: int, now_ms: int, previous_ms: int | None) -> int:
    """When a message counts as sent (see MAX_SKEW_MS)."""
    earliest = origin_ts if previous_ms is None else previous_ms - MAX_SKEW_MS
    return min(max(origin_ts, earliest), now_ms)


def read_time(ts: int | None, local: bool, now_ms: int, previous_ms: int | None) -> int:
    """When a receipt counts as read (see MAX_SKEW_MS)."""
    if ts is None or not local:
        return now_ms
    return min(ts if previous_ms is None else max(ts, previous_ms), now_ms)


def seen_time(now_ms: int, newest_sent: int | None, previous_ms: int | None) -> int:
    """The time a stored batch stands for, for the next batch's bounds (see MAX_SKEW_MS)."""
    if newest_sent is None or newest_sent >= now_ms - MAX_SKEW_MS:
        return now_ms  # a live batch
    return newest_sent if previous_ms is None else max(previous_ms, newest_sent)
