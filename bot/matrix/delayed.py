"""Delayed events (MSC4140) and redactions through ``/send`` (MSC4169) as the
homeserver speaks them: whether it offers both (``/versions``), what its answers to
scheduling one mean, and its list of them. No I/O: bot/matrix/transport.py sends."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from bot.engine.delayed import ArmOutcome, ArmReply, Listed, Support
from bot.matrix.api import HttpReply

# The unstable feature flags Synapse advertises in /versions for the two.
DELAYED_EVENTS_FEATURE = "org.matrix.msc4140"
REDACT_BY_SEND_FEATURE = "com.beeper.msc4169"

HOW_TO_OFFER = ("Synapse offers both with max_event_delay_duration (e.g. 7d) and "
                "experimental_features: {msc4169_enabled: true} in homeserver.yaml")

# Synapse: "The requested delay (Nms) exceeds the allowed maximum (Mms)".
_MAXIMUM = re.compile(r"maximum \((\d+)\s*ms\)")


def support_from_versions(body: Mapping[str, Any]) -> Support:
    """Whether ``/versions`` advertises delayed events and redactions through /send."""
    features = body.get("unstable_features")
    features = features if isinstance(features, Mapping) else {}
    missing = [name for flag, name in (
        (DELAYED_EVENTS_FEATURE, "delayed events (MSC4140)"),
        (REDACT_BY_SEND_FEATURE, "redactions sent through /send (MSC4169)"),
    ) if features.get(flag) is not True]
    if not missing:
        return Support(True)
    return Support(False, f"the homeserver does not offer {' nor '.join(missing)}; "
                          f"{HOW_TO_OFFER}")


def arm_reply(reply: HttpReply) -> ArmReply:
    """Classify the answer to scheduling a delayed redaction."""
    error = str(reply.body.get("error", ""))
    detail = f"HTTP {reply.status} {reply.errcode}".strip()
    if reply.ok:
        delay_id = reply.body.get("delay_id")
        if isinstance(delay_id, str) and delay_id:
            return ArmReply(ArmOutcome.ARMED, delay_id=delay_id)
        # A 200 without a delay id: the homeserver sent the redaction at once, ignoring
        # the delay. Never again.
        return ArmReply(ArmOutcome.UNSUPPORTED,
                        detail="the homeserver ignored the delay of a delayed event")
    if reply.errcode.endswith("DELAY_TOO_LARGE"):
        found = _MAXIMUM.search(error)
        return ArmReply(ArmOutcome.TOO_LONG, max_delay_ms=int(found.group(1)) if found else None,
                        detail=detail)
    if reply.status == 429 or reply.errcode == "M_LIMIT_EXCEEDED":
        full = "delayed events" in error  # Synapse: "The maximum number of delayed events..."
        return ArmReply(ArmOutcome.FULL if full else ArmOutcome.RATE_LIMITED,
                        retry_after_ms=reply.retry_after_ms, detail=detail)
    if reply.errcode == "M_UNRECOGNIZED" or (reply.status == 403 and "delayed" in error.lower()):
        return ArmReply(ArmOutcome.UNSUPPORTED,
                        detail=f"the homeserver refused delayed events ({detail})")
    if reply.status >= 500:
        return ArmReply(ArmOutcome.TRANSIENT, detail=detail)
    return ArmReply(ArmOutcome.REFUSED, detail=detail)


def listed(body: Mapping[str, Any]) -> list[Listed]:
    """The delayed redactions among an account's delayed events (malformed entries
    and other events are passed over)."""
    found: list[Listed] = []
    items = body.get("delayed_events")
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, Mapping) or item.get("type") != "m.room.redaction":
            continue
        if item.get("status") not in (None, "scheduled"):
            continue  # a later form of the MSC lists finalised ones too
        content = item.get("content")
        content = content if isinstance(content, Mapping) else {}
        delay_id, room_id = item.get("delay_id"), item.get("room_id")
        target = content.get("redacts")
        if not all(isinstance(v, str) and v for v in (delay_id, room_id, target)):
            continue
        reason = content.get("reason")
        since = _int(item.get("delayed_since_ts", item.get("running_since")))
        delay = _int(item.get("delay_ms", item.get("delay")))
        found.append(Listed(str(delay_id), str(room_id), str(target),
                            reason if isinstance(reason, str) else None,
                            since + delay if since is not None and delay is not None else None))
    return found


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
