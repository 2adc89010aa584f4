"""The one slow test: Synapse's own cleanup erases what Lethe redacted, and `lethe
audit --erasure` sees it happen. With ``redaction_retention_period: 1s`` Synapse
still prunes originals only when its censor job runs, every 5 minutes from its
start, so this takes about 5 minutes (a deadline of 7).

Found on the way: the job rewrites the database row but not Synapse's in-memory
event cache, so the homeserver serves the original (to an admin's fetch_event) until
the event leaves the cache or Synapse restarts; the audit says so (held)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bot.devtools.localsynapse import LocalSynapse, synapse_available
from tests.cli_harness import lethe_cli
from tests.erasure_harness import admin_token_file, stored_event, with_erasure
from tests.harness import all_redacted, bot_room, eventually

CENSOR_EVERY_S = 300  # synapse/storage/databases/main/censor_events.py
DEADLINE_S = CENSOR_EVERY_S + 120


@pytest.fixture(scope="module")
def censoring_hs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSynapse]:
    if not synapse_available():
        pytest.fail("matrix-synapse is not installed: pip install -e '.[test]'")
    hs = LocalSynapse(tmp_path_factory.mktemp("censoring"),
                      extra_config={"redaction_retention_period": "1s"})
    hs.start()
    hs.started_at = time.monotonic()  # type: ignore[attr-defined]
    yield hs
    hs.stop()


@pytest.fixture(scope="module")
def synapse(censoring_hs: LocalSynapse) -> LocalSynapse:
    """This module's homeserver in place of the session's (for `people` and `lethe`)."""
    return censoring_hs


async def test_audit_sees_synapse_erase_the_originals(people, lethe, synapse, tmp_path) -> None:
    alice, (bob,), room = await bot_room(people, lethe, "bob", policy="after-send 1s")
    sent = [await alice.send(room, "held, then erased"), await bob.send(room, "me too")]
    await eventually(all_redacted(alice, room, *sent), 30, what="both expired by Lethe")
    token, token_path = admin_token_file(synapse, tmp_path / "secrets")
    with_erasure(lethe.config.path, admin_token_file=token_path)

    async def audit() -> tuple[int, dict[str, Any]]:
        result = await lethe_cli(lethe.config, "audit", room, "--erasure", "--max-held", "0s",
                                 "--json")
        return result.exit_code, json.loads(result.stdout)

    async def in_ledger() -> bool:
        return set(sent) <= {e["event_id"] for e in (await audit())[1]["held_events"]}

    await eventually(in_ledger, 20, interval=0.5, what="held originals in the ledger")
    code, held = await audit()
    assert code == 1 and held["held"] >= 2 and held["erased"] == 0
    for event_id in sent:
        status, event = await stored_event(synapse, token, event_id)
        assert status == 200 and event["content"]  # the ciphertext, until the job runs

    # Synapse prunes the originals in its database when the job runs...
    started = synapse.started_at  # type: ignore[attr-defined]
    left = DEADLINE_S - (time.monotonic() - started)
    await eventually(lambda: _censored(synapse, sent), left, interval=5,
                     what="Synapse's censor job pruning the originals in its database")
    censored_after = time.monotonic() - started
    # ...but serves them on from its in-memory event cache (the job does not invalidate
    # it), and the audit reports what the homeserver serves.
    code, cached = await audit()
    assert code == 1 and set(sent) <= {e["event_id"] for e in cached["held_events"]}

    # After a restart (or once they drop out of the cache), they are erased everywhere.
    await lethe.stop()
    await asyncio.to_thread(synapse.restart)
    code, report = await audit()
    assert code == 0 and report["clean"] is True, report
    assert report["erased"] == report["checked"] >= 2 and report["held"] == 0
    assert report["purged"] == 0
    for event_id in sent:
        status, event = await stored_event(synapse, token, event_id)
        assert status == 200 and not event["content"]  # stored as redaction leaves it
    print(f"\nSynapse pruned the originals {censored_after:.0f} s after it started")

    doctor = json.loads((await lethe_cli(lethe.config, "doctor", "--json")).stdout)
    measured = [c["detail"] for c in doctor["checks"] if c["name"] == "erasure"][-1]
    assert "erased already: the server prunes them within" in measured, measured


def _censored(hs: LocalSynapse, event_ids: list[str]) -> bool:
    """Whether Synapse has pruned these events' originals in its database (its own
    bookkeeping, read-only: what the admin API cannot tell apart from its cache)."""
    marks = ",".join("?" * len(event_ids))
    with sqlite3.connect(f"file:{hs.workdir / 'homeserver.db'}?mode=ro", uri=True) as db:
        row = db.execute(f"SELECT count(*) FROM redactions WHERE have_censored "
                         f"AND redacts IN ({marks})", event_ids).fetchone()
    return int(row[0]) >= len(event_ids)
