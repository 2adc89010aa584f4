"""Confirming a redaction by its echo: everything about the redactions the event
stream (sync, or an appservice push) shows, in one place.

Lethe's own redaction coming back to a SENT row (its id is the one the homeserver
returned) is proof the homeserver stored it: unless echoes are distrusted, the row
is done and returned for counting. While a worker still holds the row (IN_FLIGHT),
the echo is kept here for that worker to find once it has recorded the redaction
as sent. A row Lethe has sent a redaction for is kept otherwise: its fetch (at
``check_at``, or first thing on the retry) decides, and counts it. Anybody else's
redaction makes a row moot, unless its sender is on another server than the
event's sender: a homeserver applies such a redaction only if its sender has
power, which the event stream does not show, so Lethe keeps the event and redacts
it when due. Only Lethe's own expiry takes the target's edits, reactions and poll
responses along: a redaction by somebody else (a sender deleting their own poll,
say) never makes other people's events due.

A delayed redaction the homeserver held for the row (bot/engine/delayed.py) that
comes back (``fired_by``) is confirmed the same way, whoever holds the row but a
worker: it is Lethe's, sent by the homeserver on its behalf.

Which redactions wait for their echo at all is decided here too (``wait_for``): the
first in each room and every ``SPOT_CHECK_EVERY``-th are fetched anyway, and one
fetch that finds content after a 200 stops trusting echoes for the rest of the run.
"""

from __future__ import annotations

from collections import OrderedDict
from enum import Enum
from typing import Protocol

from bot.engine.ids import server_name
from bot.engine.model import Delay, DelayState, DueEvent, EventStatus, Fired, RedactionTarget

# Besides the first in each room, every this-many-th echo-confirmed redaction is
# fetched as well, to notice a homeserver whose 200s and echoes do not redact.
SPOT_CHECK_EVERY = 20
# An echo without a delay id is a delayed redaction's only if it comes no earlier
# than this before its time.
ECHO_SLACK_MS = 1_000
# Echoes that arrive before the worker recorded its redaction as sent: a worker
# finds its echo within a moment, so this bound is only against leaks.
_ECHO_MEMORY = 10_000


class Echo(Enum):
    """What a redaction seen in the event stream did to a tracked row (besides
    confirming one of ours, which returns the row as a ``DueEvent``)."""

    HELD = "held"  # a worker holds the row: the echo is for it to find
    FORGOTTEN = "forgotten"  # somebody else redacted it: the row is dropped
    KEPT = "kept"  # Lethe still fetches or redacts it itself


class EchoWrites(Protocol):
    """What applying an echo needs of the store's transaction (``TransactionOps``)."""

    async def redaction_target(self, room_id: str, event_id: str) -> RedactionTarget | None: ...
    async def finish_redacted(self, room_id: str, event_id: str, now_ms: int, *,
                              fired: bool = False) -> bool: ...
    async def forget(self, room_id: str, event_id: str) -> None: ...


def fired_by(delay: Delay, sender: str | None, echo_delay_id: str | None, now_ms: int) -> bool:
    """Whether a redaction seen in the event stream is the delayed redaction ``delay``:
    sent by the account it was scheduled as, and either showing its delay id (the
    homeserver shows it to that account) or coming no earlier than its time (somebody
    redacting their own message before then is not it; a delay is relative, so the
    clocks' offset cancels out)."""
    if delay.state not in (DelayState.ARMING, DelayState.ARMED) or sender != delay.by:
        return False
    if echo_delay_id is not None:
        return delay.delay_id is None or echo_delay_id == delay.delay_id
    return delay.at is not None and now_ms >= delay.at - ECHO_SLACK_MS


class EchoConfirmation:
    def __init__(self, trusted: bool) -> None:
        # False once a fetch found content after a 200: then no echo confirms anything.
        self.trusted = trusted
        # Echoes that arrived while a worker held their event: target -> redaction id.
        self._held: OrderedDict[str, str] = OrderedDict()
        self._accepted = 0
        self._spot_checked_rooms: set[str] = set()

    # --- the ingestor's part: a redaction in the event stream ------------------

    async def seen(
        self, tx: EchoWrites, room_id: str, target: str, redaction_id: str | None,
        sender: str | None, now_ms: int, *, delay_id: str | None = None,
    ) -> Echo | DueEvent | Fired | None:
        """The event stream shows a redaction of ``target`` (by ``sender``, with the
        redaction's own id ``redaction_id``, sent from the delayed event ``delay_id``
        where the homeserver says so): apply it to the tracked row, if any. A
        ``DueEvent`` is Lethe's own redaction, confirmed, a ``Fired`` the homeserver's
        delayed redaction on Lethe's behalf: its row is gone, to be counted by the
        caller."""
        row = await tx.redaction_target(room_id, target)
        if row is None:
            return None
        delay = row.due.delay
        if delay is not None and fired_by(delay, sender, delay_id, now_ms):
            if row.status is EventStatus.IN_FLIGHT:
                return Echo.HELD  # the worker cancels first, finds it gone and fetches
            await tx.finish_redacted(room_id, target, now_ms, fired=True)
            return Fired(row.due, now_ms)
        if row.status is EventStatus.IN_FLIGHT:
            if redaction_id is not None:
                self._hold(target, redaction_id)
            return Echo.HELD
        if (row.status is EventStatus.SENT and self.trusted and redaction_id is not None
                and redaction_id == row.redaction_id):
            await tx.finish_redacted(room_id, target, now_ms)
            return row.due
        if row.status is EventStatus.SENT or row.due.txn_id is not None:
            return Echo.KEPT
        if sender is not None and server_name(sender) != server_name(row.due.sender):
            return Echo.KEPT
        await tx.forget(room_id, target)
        return Echo.FORGOTTEN

    def _hold(self, target: str, redaction_id: str) -> None:
        self._held[target] = redaction_id
        if len(self._held) > _ECHO_MEMORY:
            self._held.popitem(last=False)

    # --- the redactor's part: wait for the echo, or fetch -----------------------

    def wait_for(self, room_id: str, redaction_id: str | None, attempts: int) -> bool:
        """Whether the echo of a redaction the homeserver just accepted (creating
        ``redaction_id``) may confirm it, or it must be fetched now."""
        if not self.trusted or redaction_id is None or attempts > 0:
            return False  # a retry is fetched: its echo did not come, or it failed before
        self._accepted += 1
        if room_id not in self._spot_checked_rooms:
            self._spot_checked_rooms.add(room_id)
            return False
        return self._accepted % SPOT_CHECK_EVERY != 0

    def distrust(self) -> bool:
        """A fetch found content after a 200: no echo confirms anything any more.
        Returns whether echoes were trusted until now."""
        was, self.trusted = self.trusted, False
        return was

    # --- the scheduler's part: the worker lets go of the row ---------------------

    def came_while_held(self, event_id: str, redaction_id: str) -> bool:
        """The worker recorded ``redaction_id`` as sent: whether its echo came while
        the worker held the event (the row is then done)."""
        return self._held.pop(event_id, None) == redaction_id

    def released(self, event_id: str) -> None:
        """The worker let go of the event other than as sent: an echo it held is moot."""
        self._held.pop(event_id, None)
