"""The bridge's side of the mirror into ``m.room.retention`` (bot/matrix/retention.py):
in a room whose state opts in (``mirror_retention`` in ``chat.lethe.policy``), after
each change of its policy, through the bridge's masquerade path.

It writes as the member who set the policy when that member is local (the bridge acts
as its server's users, and this is what they asked for by opting in), else as the
bridge's own bot where it is joined; where neither may send the event, it says so in
the log and the policy stands. A Lethe bot that enforces the room (``bridge.defer_to``)
keeps the mirror itself. "Lethe's own" ``m.room.retention`` (the only one a withdrawn
mirror empties, or first sight corrects) is one the bridge wrote, by its event id, kept
in the database's meta table, or one its bot sent.
"""

from __future__ import annotations

import json
import logging

from bot.engine.engine import Engine
from bot.engine.model import PolicyChange
from bot.engine.policy import BEEPER_EVENT_TYPE, POLICY_EVENT_TYPE, resolve_policy
from bot.matrix.api import MatrixHttp
from bot.matrix.retention import Mirror, Outcome, RetentionEvent, keep_mirror
from bridge.config import BridgeConfig
from bridge.rooms import RoomReader, RoomView

log = logging.getLogger(__name__)

MIRRORS_META = "bridge_retention_mirrors"  # meta: room -> the m.room.retention it wrote


class BridgeMirror:
    def __init__(self, config: BridgeConfig, engine: Engine, http: MatrixHttp,
                 reader: RoomReader, written: dict[str, str]) -> None:
        self._config = config
        self._engine = engine
        self._http = http
        self._reader = reader
        self._written = written  # room -> event id of the m.room.retention it wrote

    async def policy_changed(self, view: RoomView, change: PolicyChange) -> Mirror | None:
        """Keep the room's mirror in step after ``change`` (None: nothing to do)."""
        row = await self._engine.room(view.room_id)
        policy = row.policy if row is not None else change.policy
        if not view.watched or self._reader.deferred_to(view) is not None:
            return None
        if not policy.mirror_retention and (change.initial or view.room_id not in self._written):
            return None  # nothing of the bridge's to withdraw: no request at all
        writer = self._writer(view, change)
        if writer is None:
            log.warning("%s: cannot mirror the policy into m.room.retention: it was set by "
                        "%s, not a user of this server, and the bridge's bot %s is not in "
                        "the room; the policy itself is in force", view.room_id,
                        change.sender or "nobody", self._config.user_id)
            return None
        params = {} if writer == self._config.user_id else {"user_id": writer}
        done = await keep_mirror(self._http, view.room_id, policy, writer,
                                 view.power_source.power, changed=not change.initial,
                                 is_own=lambda event: self._own(view.room_id, event), **params)
        if done.outcome in (Outcome.WRITTEN, Outcome.WITHDRAWN) and done.found.event_id:
            self._written[view.room_id] = done.found.event_id
            await self._engine.set_meta(MIRRORS_META, json.dumps(self._written))
        problem = done.problem()
        if problem is not None:
            log.warning("%s: %s", view.room_id, problem)
        else:
            log.info("m.room.retention in %s: %s", view.room_id, done.outcome.value)
        return done

    def _own(self, room_id: str, event: RetentionEvent) -> bool:
        return event.sender == self._config.user_id or (
            event.event_id is not None and event.event_id == self._written.get(room_id))

    def _writer(self, view: RoomView, change: PolicyChange) -> str | None:
        sender = change.sender
        if change.initial or not sender:  # first sight: whoever set the policy in force
            state = resolve_policy(view.policies.get(POLICY_EVENT_TYPE),
                                   view.policies.get(BEEPER_EVENT_TYPE))
            sender = state.sender if state is not None else ""
        if sender and self._config.is_local(sender):
            return sender
        return self._config.user_id if view.bot_joined else None
