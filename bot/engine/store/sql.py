"""SQL text shared by the SQLite store's modules, built from the engine's enums in
this one place.

Statuses and modes are written into the text as literals rather than bound: a
partial index (``WHERE status = <WAITING>``) is only used by a query whose own condition
names the same constant, which a bound parameter does not.
"""

from __future__ import annotations

from bot.engine.model import DelayState, EventStatus, MediaState
from bot.engine.policy import Mode

WAITING = str(int(EventStatus.WAITING))
IN_FLIGHT = str(int(EventStatus.IN_FLIGHT))
PARKED = str(int(EventStatus.PARKED))
FAILED = str(int(EventStatus.FAILED))
SENT = str(int(EventStatus.SENT))

MEDIA_HELD = str(int(MediaState.HELD))
MEDIA_DUE = str(int(MediaState.DUE))
MEDIA_DELETED = str(int(MediaState.DELETED))
MEDIA_REMOTE = str(int(MediaState.REMOTE))
DELAY_NONE = str(int(DelayState.NONE))
DELAY_ARMING = str(int(DelayState.ARMING))
DELAY_ARMED = str(int(DelayState.ARMED))
DELAY_NEVER = str(int(DelayState.NEVER))

MODE_CODE = {Mode.OFF: 0, Mode.AFTER_SEND: 1, Mode.AFTER_READ: 2}
AFTER_SEND = str(MODE_CODE[Mode.AFTER_SEND])
AFTER_READ = str(MODE_CODE[Mode.AFTER_READ])


def read_deadline(read_at: str, due_at: str = "due_at", timer_ms: str = "timer_ms") -> str:
    """An after_read event read at ``read_at`` is due ``timer`` later, never later than
    it was already due (its cap, or earlier with a parent): ``Policy.deadline``."""
    return f"min(coalesce({due_at}, {read_at} + {timer_ms}), {read_at} + {timer_ms})"


# An event's deadline under its policy (``Policy.deadline``), from the times Lethe itself
# bounded (sent_at, read_at; see ingest). A retry moves due_at later, so the lag of a
# redaction is measured from this instead (or from due_at when that is earlier: a child
# due with its parent, or an event with no deadline of its own).
DEADLINE = f"""coalesce(CASE mode
    WHEN {AFTER_SEND} THEN sent_at + timer_ms
    WHEN {AFTER_READ} THEN min(sent_at + cap_ms, coalesce(read_at + timer_ms, sent_at + cap_ms))
    END, due_at)"""

# The columns of a DueEvent, in its field order, then its delayed redaction's
# (store/events.due_event builds it).
DUE_COLUMNS = (f"event_id, room_id, sender, min(due_at, {DEADLINE}), txn_id, attempts, "
               "delay_state, delay_id, delay_by, delay_at")

# When an event is due as listings show it (pending, next due): for one the homeserver
# holds a delayed redaction of, its time (due_at, when Lethe itself would take over,
# is a grace later).
SHOWN_DUE = (f"CASE WHEN delay_state = {DELAY_ARMED} THEN min(due_at, delay_at) "
             "ELSE due_at END")

# Delayed redactions (bot/engine/delayed.py). Each is the condition of a partial index
# of the delayed-redactions migration, which a query must repeat as is for SQLite to
# use it. UNARMED: an event that may get one, by due time (events_unarmed). DELAYED:
# one is (or may be) scheduled with the homeserver (events_delayed, by account).
# STALE: its deadline moved more than a second before the scheduled one (a receipt, or
# its parent went), so that one is to be replaced (events_stale).
UNARMED = f"status = {WAITING} AND due_at IS NOT NULL AND delay_state = {DELAY_NONE}"
DELAYED = f"delay_state IN ({DELAY_ARMING}, {DELAY_ARMED})"
STALE = f"delay_state = {DELAY_ARMED} AND due_at < delay_at - 1000"

# An event the scheduler claims once due_at passes (the partial indexes events_due and
# events_room_due have this condition).
SCHEDULED = f"status = {WAITING} AND due_at IS NOT NULL"

# An after_read event (alias ``e``) a receipt can still make due: not yet read by all
# required readers, and waiting or parked. The partial index events_unread has this
# condition (without the alias); queries must repeat it as is for SQLite to use it.
UNREAD = f"e.mode = {AFTER_READ} AND e.read_at IS NULL AND e.status IN ({WAITING}, {PARKED})"
