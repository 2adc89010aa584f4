"""The rule in the room's topic (config ``notices.topic``, off by default): a marked
suffix the bot adds, replaces and removes, never touching what members wrote before
it. Both forms of a topic are kept in step: ``topic`` and, where a client wrote one,
the rich ``m.topic`` (each text in it)."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from bot.matrix.api import MatrixHttp
from bot.matrix.statewrite import StateProblem, read_state, write_state

TOPIC_TYPE = "m.room.topic"
MARK = "⏳ Lethe: "  # the start of the bot's suffix, which it finds and replaces
SEPARATOR = " · "


def without_rule(topic: str) -> str:
    """``topic`` with the bot's suffix (from its last mark on) taken off."""
    at = topic.rfind(MARK)
    if at < 0:
        return topic
    base = topic[:at]
    return base[: -len(SEPARATOR)] if base.endswith(SEPARATOR) else base.rstrip()


def with_rule(topic: str, rule: str | None, *, as_html: bool = False) -> str:
    """``topic`` with ``rule`` as its suffix (None: the suffix removed)."""
    base = without_rule(topic)
    if rule is None:
        return base
    suffix = MARK + (html.escape(rule) if as_html else rule)
    return f"{base}{SEPARATOR}{suffix}" if base else suffix


def topic_content(content: Mapping[str, Any], rule: str | None) -> dict[str, Any]:
    """The topic event's content with the suffix set (or removed) in every form."""
    out = dict(content)
    plain = content.get("topic")
    out["topic"] = with_rule(plain if isinstance(plain, str) else "", rule)
    rich = content.get("m.topic")
    texts = rich.get("m.text") if isinstance(rich, Mapping) else None
    if isinstance(rich, Mapping) and isinstance(texts, list):
        out["m.topic"] = {**rich, "m.text": [
            {**text, "body": with_rule(text["body"], rule, as_html=text.get("mimetype")
                                       == "text/html")}
            if isinstance(text, Mapping) and isinstance(text.get("body"), str) else text
            for text in texts]}
    return out


async def keep_topic(http: MatrixHttp, room_id: str, rule: str | None) -> str | None:
    """Put ``rule`` in the topic's suffix (None: take it out), where that changes it;
    None, or why not. The caller checks the bot may send the event."""
    content = await read_state(http, room_id, TOPIC_TYPE)
    if isinstance(content, StateProblem):
        return content
    content = content or {}
    wanted = topic_content(content, rule)
    if wanted == {**content, "topic": content.get("topic", "")}:
        return None  # already so
    return await write_state(http, room_id, TOPIC_TYPE, wanted)
