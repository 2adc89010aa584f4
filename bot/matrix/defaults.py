"""A person's own defaults for new chats, one for direct chats and one for groups, as
Signal and WhatsApp have them: stored in the account data of the bot (or the bridge's
bot) they set them with, one event type per person (``chat.lethe.default.<user id>``),
so they survive losing Lethe's database. Only policies are stored, never content.

And which default a new room gets: the room's own state first (whoever reads this
has checked it holds no policy), then the defaults of the people who brought it
about, in order (the inviter's, then the room creator's), then the server's
(``policy.on_join``). A person's default of ``off`` is a choice too: nothing is put
in force, not even the server's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from bot.engine.policy import POLICY_STATE_TYPES, Policy, PolicyError, policy_from_state
from bot.errors import HomeserverError
from bot.matrix.api import HomeserverUnavailable, MatrixHttp
from bot.matrix.events import is_id

DEFAULTS_TYPE_PREFIX = "chat.lethe.default."
MAX_SHOWN_PROBLEM = 120


class RoomKind(StrEnum):
    DM = "dm"  # a direct chat: the invite carried is_direct
    GROUP = "group"  # anything else


class DefaultsUnavailable(HomeserverError):
    """The stored defaults could not be read or written (the homeserver's answer)."""


def defaults_type(user_id: str) -> str:
    """The account data type that holds ``user_id``'s defaults."""
    return DEFAULTS_TYPE_PREFIX + user_id


@dataclass(frozen=True)
class UserDefaults:
    """One person's defaults; None: no default of that kind. ``problems``: parts of the
    stored content that could not be read (left out, named for the person)."""

    dm: Policy | None = None
    group: Policy | None = None
    problems: tuple[str, ...] = ()

    def get(self, kind: RoomKind) -> Policy | None:
        return self.dm if kind is RoomKind.DM else self.group

    def with_default(self, kind: RoomKind, policy: Policy | None) -> UserDefaults:
        """These defaults with ``kind`` set to ``policy`` (None: cleared); what could
        not be read is dropped, as the write replaces the whole content."""
        changed = replace(self, dm=policy) if kind is RoomKind.DM else \
            replace(self, group=policy)
        return replace(changed, problems=())

    @property
    def empty(self) -> bool:
        return self.dm is None and self.group is None

    def to_content(self) -> dict[str, Any]:
        """The account data content: each kind's policy as Lethe's state event has it."""
        content: dict[str, Any] = {}
        for kind in RoomKind:
            policy = self.get(kind)
            if policy is not None:
                content[kind.value] = policy.to_state()
        return content


def parse_defaults(content: object) -> UserDefaults:
    """Stored content read part by part, never raising: a malformed part is left out
    and named in ``problems``, so one bad part does not lose the other."""
    if not isinstance(content, Mapping):
        return UserDefaults(problems=("the stored defaults are not a JSON object",))
    found: dict[RoomKind, Policy] = {}
    problems = []
    for kind in RoomKind:
        raw = content.get(kind.value)
        if raw is None:
            continue
        try:
            found[kind] = policy_from_state(raw)
        except PolicyError as exc:
            problems.append(f"the stored {kind.value} default is unreadable "
                            f"({str(exc)[:MAX_SHOWN_PROBLEM]})")
    return UserDefaults(found.get(RoomKind.DM), found.get(RoomKind.GROUP), tuple(problems))


async def read_defaults(http: MatrixHttp, owner: str, user_id: str,
                        **params: str) -> UserDefaults:
    """``user_id``'s defaults in ``owner``'s account data (empty when none are stored);
    DefaultsUnavailable when the homeserver does not say."""
    try:
        reply = await http.get_account_data(owner, defaults_type(user_id), **params)
    except HomeserverUnavailable as exc:
        raise DefaultsUnavailable(f"reading the defaults of {user_id}: {exc}") from None
    if reply.status == 404:
        return UserDefaults()
    if not reply.ok:
        raise DefaultsUnavailable(f"reading the defaults of {user_id}: HTTP {reply.status} "
                                  f"{reply.errcode}".rstrip())
    return parse_defaults(reply.body)


async def write_defaults(http: MatrixHttp, owner: str, user_id: str,
                         defaults: UserDefaults, **params: str) -> None:
    """Store ``defaults`` (all of them: the content is replaced); empty content when
    none are left, since account data cannot be deleted everywhere."""
    try:
        reply = await http.put_account_data(owner, defaults_type(user_id),
                                            defaults.to_content(), **params)
    except HomeserverUnavailable as exc:
        raise DefaultsUnavailable(f"storing the defaults of {user_id}: {exc}") from None
    if not reply.ok:
        raise DefaultsUnavailable(f"storing the defaults of {user_id}: HTTP {reply.status} "
                                  f"{reply.errcode}".rstrip())


async def state_has_policy(http: MatrixHttp, room_id: str) -> bool:
    """Whether the room's current state holds either policy event, asked right before a
    default is written: a member may have set one since the bot last synced. Unsure
    (no answer) counts as yes: a default never overwrites what someone may have set."""
    for event_type in POLICY_STATE_TYPES:
        try:
            reply = await http.get_state(room_id, event_type)
        except HomeserverUnavailable:
            return True
        if reply.status != 404:
            return True
    return False


def kind_of_invite(member_content: object) -> RoomKind:
    """A direct chat when the invite's ``m.room.member`` content says ``is_direct``
    (clients set it when they create a direct chat); a group otherwise."""
    is_direct = isinstance(member_content, Mapping) and member_content.get("is_direct") is True
    return RoomKind.DM if is_direct else RoomKind.GROUP


@dataclass(frozen=True)
class Chosen:
    """The default a new room gets: ``policy`` (None: none, by someone's choice of off)
    and whose it is (``user_id``; None: the server's ``policy.on_join``)."""

    policy: Policy | None
    user_id: str | None
    kind: RoomKind


def choose_default(kind: RoomKind, people: Sequence[tuple[str, UserDefaults]],
                   on_join: Policy | None) -> Chosen | None:
    """The first of ``people`` (in order of precedence) with a default of ``kind``, else
    the server's ``on_join``; None when there is none at all. A person's ``off`` stops
    the search: their chats start without a policy."""
    for user_id, defaults in people:
        policy = defaults.get(kind)
        if policy is not None:
            return Chosen(policy if policy.active else None, user_id, kind)
    return Chosen(on_join, None, kind) if on_join is not None else None


def valid_user_id(text: str) -> bool:
    return is_id(text, "@") and not any(c.isspace() for c in text)

