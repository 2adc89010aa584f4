"""The bot's side of a room's policy conversation, for the action worker
(bot/front/actions.py): `!lethe status`, a policy set by command and announced,
a change made by state announced, and the m.room.retention mirror kept in step.
After each policy notice, the rule is made visible (bot/front/pinning.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.engine.policy import Mode, Policy
from bot.engine.power import PowerState
from bot.front import texts
from bot.front.pinning import ShowPolicy, Visibility
from bot.front.reader import CommandRequest
from bot.front.untracked import UNTRACKED_KEY, UntrackedSpan
from bot.matrix.policy_state import (
    OWN_WRITES_KEY,
    PolicyWriteFailed,
    missing_policy_power,
    write_policy,
)
from bot.matrix.retention import Mirror, keep_mirror, mirror_status, read_retention

if TYPE_CHECKING:
    from bot.front.actions import Action
    from bot.front.bot import LetheBot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PolicyChanged:
    """The room's policy changed by ``sender``'s state events ``event_ids``, or was
    first seen (``initial``; ``greet``: say hello). From the bot's own account it is
    this process's command (announced when made) or `lethe policy set|clear`."""

    room_id: str
    policy: Policy
    sender: str
    initial: bool = False
    greet: bool = False
    event_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Defaults:  # a room just met: a default into its state if it has none (defaults.py)
    room_id: str



class PolicyConversation:
    """Mixed into ActionWorker, which provides ``notice`` and ``put``."""

    _bot: LetheBot
    visible: Visibility

    async def notice(self, room_id: str, text: str) -> str | None:
        raise NotImplementedError

    def put(self, action: Action) -> None:
        raise NotImplementedError

    async def _status(self, room_id: str) -> None:
        bot = self._bot
        assert bot.engine is not None and bot.http is not None
        status = await bot.engine.status(room_id)
        untracked = UntrackedSpan.from_json(await bot.engine.get_meta(UNTRACKED_KEY + room_id))
        power, me = bot.power(room_id), bot.config.bot.user_id
        mirror = None
        if status is not None:
            found = await read_retention(bot.http, room_id)
            mirror = (f"unknown: could not read m.room.retention ({found})"
                      if isinstance(found, str) else
                      mirror_status(status.policy, found, power, me))
        text = texts.status_text(status, power, me, untracked, mirror,
                                 await bot.engine.delayed_status(),
                                 await bot.defaults.status_note(room_id))
        if status is not None:
            text += "\n" + await self.visible.status(room_id, status.policy)
        await self.notice(room_id, text)

    async def mirror(self, room_id: str, policy: Policy, *, changed: bool) -> Mirror | None:
        """Keep the room's m.room.retention in step with ``policy`` (bot/matrix/
        retention.py says when it writes); None when there is nothing to look at."""
        bot = self._bot
        assert bot.http is not None
        if not policy.mirror_retention and not changed:
            return None
        result = await keep_mirror(bot.http, room_id, policy, bot.config.bot.user_id,
                                   bot.power(room_id), changed=changed)
        log.log(logging.INFO if result.ok else logging.WARNING, "m.room.retention in %s: %s",
                room_id, result.problem() or result.outcome.value)
        return result

    async def _set_policy(self, request: CommandRequest, policy: Policy) -> None:
        bot = self._bot
        assert bot.http is not None and bot.engine is not None
        room_id, sender = request.room_id, request.sender
        power: PowerState = bot.power(room_id)
        me = bot.config.bot.user_id
        missing = missing_policy_power(power, sender)
        if missing is not None:
            log.info("refused a policy change in %s by %s (no power)", room_id, sender)
            await self.notice(room_id, texts.sender_may_not_change_policy(
                sender, missing.needed, power))
            return
        missing = missing_policy_power(power, me)
        if missing is not None:
            await self.notice(room_id, texts.bot_may_not_change_policy(missing.needed))
            return
        outside = bot.config.bounds.for_room(room_id).check(policy)  # bot/engine/bounds.py
        if outside is not None:
            log.info("refused a policy change in %s by %s: %s", room_id, sender, outside)
            await self.notice(room_id, texts.outside_bounds(sender, outside))
            return
        if await self.put_policy(room_id, policy, texts.policy_changed(sender, policy)):
            log.info("policy in %s set to %s by %s", room_id, policy.mode.value, sender)

    async def put_policy(self, room_id: str, policy: Policy, text: str) -> bool:
        """Write ``policy`` into the room's state (the caller checked the bot's power)
        and announce it with ``text``; whether it was written."""
        bot = self._bot
        assert bot.http is not None and bot.engine is not None
        power, me = bot.power(room_id), bot.config.bot.user_id
        try:
            # Remembered before the sync that brings them back can be handled.
            written = await write_policy(bot.http, room_id, policy)
        except PolicyWriteFailed as exc:
            log.warning("could not write the policy in %s: %s", room_id, exc)
            await self.notice(room_id, texts.POLICY_WRITE_FAILED)
            return False
        bot.own_writes.add(written, policy)
        await bot.engine.set_meta(OWN_WRITES_KEY, bot.own_writes.to_json())
        if policy.mode is not Mode.OFF and not power.can_redact_others(me):
            text += " " + texts.cannot_redact_others(power, me)
        mirror = await self.mirror(room_id, policy, changed=True)
        notice_id = await self.notice(room_id, texts.with_mirror(text, policy, mirror) or text)
        self.put(ShowPolicy(room_id, policy, notice_id))  # pinned etc. next
        return True

    async def _policy_changed(self, change: PolicyChanged) -> None:
        """Announce a change made by state (a member's client, or `lethe policy` with the
        bot's account), or greet a room met, and keep the mirror in step. Runs on the
        action worker after any command that wrote state, so the ids of this process's
        own writes are known by then."""
        own = not change.initial and change.sender == self._bot.config.bot.user_id
        if own and any(event_id in self._bot.own_writes for event_id in change.event_ids):
            return  # a command of this process: announced and mirrored when it was made
        # What is in force now: a later change may be stored already, and a stale one
        # must not win the mirror.
        assert self._bot.engine is not None
        row = await self._bot.engine.room(change.room_id)
        mirror = await self.mirror(change.room_id, row.policy if row else change.policy,
                                   changed=not change.initial)
        if change.initial:
            text = (texts.hello(self._bot.config.command_prefix, change.policy)
                    if change.greet else None)
            if change.greet:  # after the hello: a default where the state has no policy
                self.put(Defaults(change.room_id))
        elif own:
            log.info("policy in %s set to %s from the bot's account (lethe policy)",
                     change.room_id, change.policy.mode.value)
            text = texts.operator_changed_policy(change.policy)
        else:
            text = texts.policy_changed(change.sender, change.policy)
        text = texts.with_mirror(text, change.policy, mirror, announce=not change.initial)
        notice_id = await self.notice(change.room_id, text) if text is not None else None
        self.put(ShowPolicy(change.room_id, change.policy, notice_id))
