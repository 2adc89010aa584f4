"""The echo component on its own (bot/engine/echoes.py): what a redaction seen in the
event stream does to a tracked row, which redactions wait for their echo, and the
echoes held for a worker. No database: a fake transaction records what it is told.
test_echo.py checks the same rules through the whole engine."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from bot.engine.echoes import SPOT_CHECK_EVERY, Echo, EchoConfirmation
from bot.engine.model import DueEvent, EventStatus, RedactionTarget

ROOM = "!r:x"
ALICE = "@alice:x"
OURS = "$redaction-ours"


@dataclass
class FakeTx:
    """The two writes an echo may cause, and the row it reads."""

    row: RedactionTarget | None
    finished: list[str] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)

    async def redaction_target(self, room_id: str, event_id: str) -> RedactionTarget | None:
        return self.row

    async def finish_redacted(self, room_id: str, event_id: str, now_ms: int) -> bool:
        self.finished.append(event_id)
        return True

    async def forget(self, room_id: str, event_id: str) -> None:
        self.forgotten.append(event_id)


def _row(status: EventStatus, redaction_id: str | None = None,
         txn_id: str | None = None) -> RedactionTarget:
    return RedactionTarget(status, redaction_id, DueEvent("$m", ROOM, ALICE, 1000, txn_id, 0))


async def _seen(echoes: EchoConfirmation, tx: FakeTx, redaction_id: str | None = OURS,
                sender: str | None = "@bot:x") -> Echo | DueEvent | None:
    return await echoes.seen(tx, ROOM, "$m", redaction_id, sender, 5000)


async def test_an_untracked_target_is_nothing_to_do() -> None:
    assert await _seen(EchoConfirmation(True), FakeTx(None)) is None


async def test_our_echo_on_a_sent_row_confirms_it_and_returns_it_for_counting() -> None:
    tx = FakeTx(_row(EventStatus.SENT, OURS, "lethe.t"))
    seen = await _seen(EchoConfirmation(True), tx)
    assert isinstance(seen, DueEvent) and seen.deadline == 1000
    assert tx.finished == ["$m"] and tx.forgotten == []


@pytest.mark.parametrize("trusted, redaction_id", [(False, OURS), (True, "$somebody-else")])
async def test_a_sent_row_is_kept_unless_our_trusted_echo_comes(
    trusted: bool, redaction_id: str
) -> None:
    tx = FakeTx(_row(EventStatus.SENT, OURS, "lethe.t"))
    assert await _seen(EchoConfirmation(trusted), tx, redaction_id) is Echo.KEPT
    assert tx.finished == tx.forgotten == []


async def test_an_echo_for_a_row_a_worker_holds_waits_for_that_worker() -> None:
    echoes = EchoConfirmation(True)
    tx = FakeTx(_row(EventStatus.IN_FLIGHT))
    assert await _seen(echoes, tx) is Echo.HELD
    assert not echoes.came_while_held("$m", "$another")  # taken, and not ours
    assert await _seen(echoes, tx) is Echo.HELD
    assert echoes.came_while_held("$m", OURS)
    assert not echoes.came_while_held("$m", OURS), "found once"
    assert await _seen(echoes, tx) is Echo.HELD
    echoes.released("$m")
    assert not echoes.came_while_held("$m", OURS), "a worker that let go drops it"
    assert tx.finished == tx.forgotten == []


async def test_a_row_lethe_began_to_redact_is_kept_for_its_fetch() -> None:
    tx = FakeTx(_row(EventStatus.WAITING, None, "lethe.t"))
    assert await _seen(EchoConfirmation(True), tx, "$unknown") is Echo.KEPT


async def test_somebody_elses_redaction_from_the_senders_server_drops_the_row() -> None:
    tx = FakeTx(_row(EventStatus.WAITING))
    assert await _seen(EchoConfirmation(True), tx, "$r", "@mod:x") is Echo.FORGOTTEN
    assert tx.forgotten == ["$m"] and tx.finished == []


async def test_a_redaction_from_another_server_keeps_the_row() -> None:
    """The event stream does not show whether its sender had the power to redact."""
    tx = FakeTx(_row(EventStatus.PARKED))
    assert await _seen(EchoConfirmation(True), tx, "$r", "@mod:elsewhere") is Echo.KEPT
    assert tx.forgotten == []


def test_the_first_in_each_room_and_every_nth_are_fetched() -> None:
    echoes = EchoConfirmation(True)
    waits = [echoes.wait_for(ROOM, f"$r{i}", 0) for i in range(2 * SPOT_CHECK_EVERY)]
    fetched = [i for i, wait in enumerate(waits) if not wait]
    assert fetched == [0, SPOT_CHECK_EVERY - 1, 2 * SPOT_CHECK_EVERY - 1]
    assert not echoes.wait_for("!other:x", "$r", 0), "the first in another room"


def test_retries_unknown_ids_and_distrust_are_fetched() -> None:
    echoes = EchoConfirmation(True)
    echoes.wait_for(ROOM, "$r0", 0)  # the room's spot check
    assert echoes.wait_for(ROOM, "$r1", 0)
    assert not echoes.wait_for(ROOM, "$r2", 1), "a retry"
    assert not echoes.wait_for(ROOM, None, 0), "no redaction id to wait for"
    assert echoes.distrust() and not echoes.distrust(), "says when it changed"
    assert not echoes.wait_for(ROOM, "$r3", 0)
    assert not EchoConfirmation(False).wait_for(ROOM, "$r", 0)
