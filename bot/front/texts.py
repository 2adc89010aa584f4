"""Every text the bot sends into a room, in one place: replies to commands, notices
of policy and power changes, and `!lethe status`. (Malformed commands are answered
with the parse error, bot/front/commands.py.) Pure: no I/O, no content of anyone's
messages."""

from __future__ import annotations

from bot.engine.delayed import DelayedStatus
from bot.engine.engine import RoomStatus
from bot.engine.media import describe_media
from bot.engine.model import InvalidPolicy, PolicyChange
from bot.engine.msgtimer import Expiry
from bot.engine.policy import Policy, format_duration
from bot.engine.power import PowerState, describe_level
from bot.front.commands import EXPIRE_USAGE
from bot.front.untracked import UntrackedSpan, when
from bot.matrix.defaults import Chosen, RoomKind, UserDefaults
from bot.matrix.expiry import Refusal
from bot.matrix.retention import Mirror, Outcome


def usage(prefix: str) -> str:
    return (
        f"{prefix} help: this text\n"
        f"{prefix} status: the policy, whether I can enforce it, and what is pending\n"
        f"{prefix} off: keep messages\n"
        f"{prefix} after-send DUR: redact each message DUR after it was sent\n"
        f"{prefix} after-read DUR [cap DUR] [readers all|any]: redact DUR after every "
        f"member (or any member) has read it, and at the latest cap after sending\n"
        f"{prefix} retention on|off: also publish the policy as m.room.retention, by which "
        "the homeserver (where its retention feature is on) purges expired messages from "
        "its database; it reaches back to older messages too. Also an option of the "
        f"commands above, e.g. {prefix} after-send 1d retention on\n"
        f"{prefix} expire DUR, sent as a reply to your message: it (and the command) "
        "disappears DUR from now, if that is sooner; moderators may do it to anybody's\n"
        f"{prefix} default [dm|group POLICY]: your own default for new direct chats or "
        f"groups you invite me into, e.g. {prefix} default dm after-send 1d (POLICY: off, "
        f"after-send DUR or after-read DUR ...); {prefix} default clear [dm|group]. Only in "
        "a direct chat with me\n"
        "Durations: 30s, 5m, 1h30m, 2d, 1w. Only members who may send both policy state "
        "events (room settings) may change the policy."
    )


def hello(prefix: str, policy: Policy) -> str:
    """When the bot meets a room."""
    p = prefix
    return (f"Lethe is here to make messages disappear. Policy: {policy.describe()}. "
            f"Set one with `{p} after-send 1d` or `{p} after-read 1h`; `{p} help` for more.")


def cannot_redact_others(power: PowerState, bot_user_id: str) -> str:
    level = describe_level(power.level(bot_user_id))
    return (f"I cannot redact other people's messages here: my power level is {level} "
            f"and redacting needs {power.redact}. Give me power level {power.redact} "
            "(moderator) so the policy can be enforced; until then expired messages "
            "stay and I keep them scheduled.")


CAN_REDACT_OTHERS_AGAIN = ("I can redact messages here again; the policy is enforced, "
                           "including what came due meanwhile.")


def policy_changed(sender: str | None, policy: Policy) -> str:
    return f"{sender} changed the retention policy: {policy.describe()}"


def operator_changed_policy(policy: Policy) -> str:
    """A change made with the bot's account elsewhere (`lethe policy set|clear`)."""
    return f"The bot's operator changed the retention policy: {policy.describe()}"


# --- a person's defaults (bot/front/defaults.py) -------------------------------------

_KIND_NAMES = {RoomKind.DM: "new direct chats", RoomKind.GROUP: "new groups"}


def default_needs_direct_chat(sender: str) -> str:
    return (f"{sender}: defaults are personal: send it in a direct chat with me (a room "
            "with only you and me). Nothing was changed.")


DEFAULTS_UNAVAILABLE = ("I could not read or store the defaults just now (the homeserver "
                        "did not answer); nothing was changed, please try again.")


DEFAULTS_UNREADABLE_ON_JOIN = ("Default not put in force: I could not read the defaults of "
                               "the people who brought me here (the homeserver did not "
                               "answer). Nothing was changed; set the policy with a command.")


def _default_line(kind: RoomKind, policy: Policy | None) -> str:
    said = "none" if policy is None else policy.describe()
    return f"Your default for {_KIND_NAMES[kind]}: {said}"


APPLIES_TO_BOT = ("rooms you create and invite me into, or invite me into, whose settings "
                  "have no policy yet")
APPLIES_TO_BRIDGE = "rooms you create on this server whose settings have no policy yet"


def defaults_shown(defaults: UserDefaults, on_join: Policy | None, prefix: str,
                   applies_to: str) -> str:
    lines = [_default_line(kind, defaults.get(kind)) for kind in RoomKind]
    lines += [f"Note: {problem}; set it again" for problem in defaults.problems]
    lines.append("Without one: " + (f"this server's default on join, {on_join.describe()}"
                                    if on_join is not None else "no policy"))
    lines.append(f"They apply to {applies_to}. Change: {prefix} default dm|group POLICY; "
                 f"remove: {prefix} default clear [dm|group]")
    return "\n".join(lines)


def defaults_changed(defaults: UserDefaults, dropped: tuple[str, ...]) -> str:
    lines = ["Saved. " + _default_line(RoomKind.DM, defaults.dm),
             _default_line(RoomKind.GROUP, defaults.group)]
    lines += [f"Dropped: {problem}" for problem in dropped]
    return "\n".join(lines)


def bridge_usage(prefix: str) -> str:
    """The bridge's bot, in a direct chat: it keeps only people's defaults."""
    return (f"I apply your own default to the rooms you create on this server.\n"
            f"{prefix} default: show yours\n"
            f"{prefix} default dm|group POLICY: set it for new direct chats or groups, e.g. "
            f"{prefix} default dm after-send 1d (POLICY: off, after-send DUR or after-read "
            f"DUR [cap DUR] [readers all|any])\n"
            f"{prefix} default clear [dm|group]: remove it")


def bridge_only_defaults(sender: str, prefix: str) -> str:
    return (f"{sender}: here I keep only your defaults for new chats ({prefix} help); a "
            "room's own policy is set in its settings or with the Lethe bot.")


def _whose(chosen: Chosen) -> str:
    kind = _KIND_NAMES[chosen.kind]
    if chosen.user_id is None:
        return "this server's default for rooms I join without a policy (policy.on_join)"
    return f"the default {chosen.user_id} set for {kind}"


def default_applied(chosen: Chosen) -> str:
    assert chosen.policy is not None
    return f"Retention policy set to {chosen.policy.describe()}: {_whose(chosen)}"


def default_not_applied(chosen: Chosen, needed: int) -> str:
    assert chosen.policy is not None
    return (f"Default not put in force: {_whose(chosen)} is {chosen.policy.describe()}, but "
            f"I may not change room settings here (I need power level {needed}). Nothing "
            "was changed; give me the power and set the policy with a command.")


def invalid_policy(bad: InvalidPolicy) -> str:
    return (f"Ignoring the {bad.event_type} state event from {bad.sender}: {bad.reason}. "
            "The policy is unchanged.")


def command_error(sender: str, error: Exception) -> str:
    return f"{sender}: {error}"


def sender_may_not_change_policy(sender: str, needed: int, power: PowerState) -> str:
    return (f"{sender}: you may not change the retention policy here: that needs "
            f"power level {needed}, you have {describe_level(power.level(sender))}. "
            "Nothing was changed.")


def bot_may_not_change_policy(needed: int) -> str:
    return f"I may not change room settings here (I need power level {needed}). " \
        "Nothing was changed."


def with_mirror(text: str | None, policy: Policy, mirror: Mirror | None, *,
                announce: bool = True) -> str | None:
    """``text`` with what the mirror into m.room.retention did, where that is news:
    a problem always; with ``announce`` (a change, not first sight) what it now says."""
    notes = [] if text is None else [text if text.endswith(".") else text + "."]
    problem = mirror.problem() if mirror is not None else None
    if problem is not None:
        notes.append(f"Mirror: {problem}.")
    elif mirror is not None and announce and mirror.outcome is Outcome.WITHDRAWN:
        notes.append("The mirror in m.room.retention is withdrawn (emptied).")
    elif announce and policy.mirror_retention and policy.max_lifetime_ms is not None:
        notes.append(reaches_back(policy.max_lifetime_ms))
    if len(notes) == 1 and text is not None:
        return text  # nothing to add: the text as it was
    return " ".join(notes) or None


def reaches_back(lifetime_ms: int) -> str:
    return ("Where the homeserver enables its retention feature, it hides and then purges "
            f"from its database every message here older than "
            f"{format_duration(lifetime_ms)}, those sent before this policy too.")


def outside_bounds(sender: str, problem: str) -> str:
    """A command asking for a policy outside the operator's bounds (bot/engine/bounds.py)."""
    return f"{sender}: not allowed on this server: {problem}. Nothing was changed."


def enforced_at_bound(change: PolicyChange) -> str:
    """Room state set a policy outside the operator's bounds: what is enforced instead."""
    who = f"{change.sender}'s" if change.sender else "The room's"
    return (f"{who} policy is outside the bounds this server's operator set ({change.bound}). "
            f"Enforced instead: {change.policy.describe()}.")


POLICY_WRITE_FAILED = "Could not write the policy to the room state; please try again."


def status_text(status: RoomStatus | None, power: PowerState, bot_user_id: str,
                untracked: UntrackedSpan | None = None, mirror: str | None = None,
                delayed: DelayedStatus | None = None, default_note: str | None = None) -> str:
    """`!lethe status`: the policy, whether it can be enforced, and what is pending."""
    if status is None:
        return "I have not seen this room's state yet; try again in a moment."
    enforcement = status.enforcement
    shown = enforcement.describe() if enforcement else status.policy.describe()
    lines = [f"Policy: {shown}"]
    if status.policy_sender:
        lines[0] += f", set by {status.policy_sender}"
    level = power.level(bot_user_id)
    if power.can_redact_others(bot_user_id):
        lines.append(f"Enforcement: yes (my power level {describe_level(level)}, "
                     f"redacting needs {power.redact})")
    else:
        lines.append(f"Enforcement: NO, I cannot redact other people's messages: my power level "
                     f"is {describe_level(level)}, redacting needs {power.redact}")
    pending = f"Pending: {status.pending} message(s)"
    if status.next_due is not None:
        pending += f", next due {when(status.next_due)}"
    lines.append(pending)
    lines.append(f"Redacted so far: {status.redacted}" +
                 (f"; unconfirmed failures: {status.failed}" if status.failed else ""))
    lines.append(f"Files: {describe_media(status.media)}")
    if untracked is not None:
        lines.append(f"Not tracked: {untracked.describe()}")
    if mirror is not None:
        lines.append(f"Mirror in m.room.retention: {mirror}")
    if delayed is not None:
        lines.append(while_stopped(delayed, status.armed))
    if default_note is not None:
        lines.append(default_note)
    return "\n".join(lines)


def while_stopped(delayed: DelayedStatus, armed: int) -> str:
    """Whether the homeserver redacts here on time even while Lethe is stopped."""
    if delayed.in_use:
        return (f"While I am stopped: the homeserver itself redacts on time the {armed} "
                "message(s) here it holds a delayed redaction of")
    return (f"While I am stopped: nothing is redacted until I am back; delayed redactions "
            f"are not in use: {delayed.reason}")


_EXPIRE_REFUSALS = {
    Refusal.NO_REPLY: "send it as a reply to the message that is to disappear: {usage}",
    Refusal.NOT_FOUND: "I cannot find the message you replied to in this room",
    Refusal.GONE: "the message you replied to is already gone",
    Refusal.NOT_A_MESSAGE: "that is not a message (room settings do not expire)",
    Refusal.NOT_YOURS: "you may only shorten the life of your own messages here; "
                       "moderators (who may redact others' messages) may do it for anybody's",
    Refusal.UNREACHABLE: "I could not ask the homeserver about that message; try again later",
}


def expire_refused(sender: str, refusal: Refusal, prefix: str) -> str:
    reason = _EXPIRE_REFUSALS[refusal].format(usage=EXPIRE_USAGE.format(prefix=prefix))
    return f"{sender}: {reason}. Nothing was changed."


def expire_done(sender: str, result: Expiry, due_ms: int) -> str:
    if result is Expiry.EARLIER:
        return (f"{sender}: that message is already due to disappear by {when(due_ms)} "
                "or sooner; its deadline stays.")
    if result is Expiry.GOING:
        return f"{sender}: that message is already being removed."
    return f"{sender}: that message and your command will disappear at {when(due_ms)}."
