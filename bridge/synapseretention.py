"""The ``retention:`` section of Synapse's homeserver.yaml that matches the bridge's
default policy (`lethe bridge retention-config`): Synapse then purges from its own
database, server-wide, what the bridge redacts. Pure: text only.

``bridge.default_policy`` applies to rooms with no policy in their state, and no bot
is there to write ``m.room.retention`` into them: Synapse's ``default_policy`` is the
server-wide form of the same rule.
"""

from __future__ import annotations

from bot.engine.policy import Mode, Policy, format_duration

# Synapse's units (synapse/config/_base.py parse_duration): one number and one suffix.
_SYNAPSE_UNITS = (("w", 7 * 24 * 3600_000), ("d", 24 * 3600_000), ("h", 3600_000),
                  ("m", 60_000), ("s", 1000))
MIN_INTERVAL_MS = 60_000
MAX_INTERVAL_MS = 24 * 3600_000


class NothingToMirror(ValueError):
    """The bridge's default policy is off."""


def synapse_duration(ms: int) -> str:
    """``ms`` as Synapse reads a duration: the largest unit that divides it exactly."""
    for suffix, size in _SYNAPSE_UNITS:
        if ms % size == 0:
            return f"{ms // size}{suffix}"
    return str(ms)  # a bare number: milliseconds


def default_interval(max_lifetime_ms: int) -> int:
    """How often the purge job runs by default: a tenth of the lifetime (so an expired
    event stays at most about 10% longer), in whole minutes, from 1 minute to 1 day."""
    tenth = max_lifetime_ms // 10 // 60_000 * 60_000
    return min(max(tenth, MIN_INTERVAL_MS), MAX_INTERVAL_MS)


def retention_section(policy: Policy, interval_ms: int | None = None) -> str:
    """The YAML to add to homeserver.yaml, with comments saying what it does."""
    lifetime = policy.max_lifetime_ms
    if lifetime is None:
        raise NothingToMirror(
            "bridge.default_policy is off: there is no default policy to give Synapse "
            "(rooms that opt in get m.room.retention from `!lethe retention on` or "
            "`lethe policy set ROOM ... --retention`)")
    interval = default_interval(lifetime) if interval_ms is None else interval_ms
    what = (f"after-send {format_duration(lifetime)}" if policy.mode is Mode.AFTER_SEND
            else f"after-read with cap {format_duration(lifetime)} (the reading rule has "
                 "no equivalent in Synapse: the cap is what it gets)")
    return "\n".join((
        "# Synapse's own retention (MSC1763), matching bridge.default_policy:",
        f"# {what}. Add to homeserver.yaml and restart Synapse.",
        "#",
        "# What Synapse then does, unlike Lethe (docs/guarantees.md):",
        "# - it purges from its database (not only redacts) the messages older than",
        "#   max_lifetime, in EVERY room on this server with no m.room.retention of its",
        "#   own: rooms bridge.rooms leaves out, and rooms whose Lethe policy is off or",
        "#   longer, too; a room keeps its own lifetime with m.room.retention",
        "#   (`!lethe retention on`, `lethe policy set ROOM ... --retention`);",
        "# - it reaches back: messages sent before this was configured go too;",
        "# - it hides messages older than max_lifetime from clients at once, and purges",
        "#   them at the next purge job (every interval, not on time);",
        "# - it never purges state events, nor the newest event past max_lifetime.",
        "retention:",
        "  enabled: true",
        "  default_policy:",
        f"    max_lifetime: {synapse_duration(lifetime)}",
        "  purge_jobs:",
        f"    - interval: {synapse_duration(interval)}",
        "",
    ))
