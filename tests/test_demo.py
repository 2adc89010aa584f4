"""`make demo` (lethe demo), the README's first command, runs to its end against the
Synapse it starts itself, and says what it shows."""

from __future__ import annotations

import pytest

from bot.devtools.demo import run_demo

pytestmark = pytest.mark.synapse  # it starts its own homeserver


async def test_the_demo_shows_every_step() -> None:
    lines: list[str] = []
    await run_demo(echo=lines.append)
    text = "\n".join(lines)
    for step in ("is pinned at the top of the room", "4 s later it is still there",
                 "its own timer shortened the room's rule",
                 "the message and the command redacted",
                 "redacted by the homeserver itself", "counted that redaction once",
                 "stopped Synapse and removed the temporary directory"):
        assert step in text, f"the demo did not show: {step}"
