"""Benchmark 5: sync ingest, the bot against a bare matrix-nio client.

A local Synapse (rate limits raised), an encrypted room with alice (sender), the
real LetheBot (policy after-send 1d, so every message is tracked) and "bare", a
matrix-nio client with its own device. Each round: the bot and the bare client
are stopped, alice sends N Megolm-encrypted messages, then each catches up from
its stored sync token, one after the other (the order alternates by round):

- bare client: a new nio AsyncClient on its key store (restore_login loads the
  store and its sync token), one /sync with a timeline limit of 100 (the most
  Synapse gives), then /messages pages of 100 back over the rest; nio decrypts
  every event of both. Timed from constructing the client until every one of
  the N events is decrypted.
- bot: LetheBot started on its data directory, exactly as `lethe run` restarts
  (restore login, open lethe.db and the key store, one full-state /sync from the
  stored token, page /messages back over the gap, store it all in one
  transaction). Timed from constructing the bot until its engine tracks all N.

Run: python -m bench.bench_sync_ingest [--events 1000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from nio import (
    AsyncClient,
    AsyncClientConfig,
    RoomMessagesResponse,
    RoomMessageText,
    SyncResponse,
)

from bench.common import (
    BotRoom,
    Timer,
    bot_room,
    local_synapse,
    quiet_logging,
    save,
    send_encrypted,
    set_policy,
    table,
)
from bot.devtools.localsynapse import LocalSynapse
from bot.devtools.people import Person, eventually
from bot.engine.policy import Policy
from bot.front.bot import LetheBot

DAY_MS = 24 * 3600 * 1000
# Synapse serves at most 100 timeline events per room in a sync, whatever the filter
# says; /messages pages of the same size keep the two clients' requests alike.
PAGE = 100


async def bare_catch_up(hs: LocalSynapse, person: Person, room_id: str,
                        ids: set[str]) -> tuple[float, int]:
    """Seconds until a fresh nio client on ``person``'s store has decrypted ``ids``,
    and how many /messages pages it needed after its /sync."""
    old = person.client
    with Timer() as t:
        client = AsyncClient(hs.base_url, person.user_id, device_id=old.device_id,
                             store_path=old.store_path,
                             config=AsyncClientConfig(encryption_enabled=True,
                                                      store_sync_tokens=True))
        client.restore_login(person.user_id, old.device_id, person.token)
        try:
            resp = await client.sync(timeout=0, since=client.loaded_sync_token,
                                     sync_filter={"room": {"timeline": {"limit": PAGE}}})
            assert isinstance(resp, SyncResponse), resp
            timeline = resp.rooms.join[room_id].timeline
            decrypted = {e.event_id for e in timeline.events if isinstance(e, RoomMessageText)}
            pages, token = 0, timeline.prev_batch
            while timeline.limited and not ids <= decrypted and token:
                page = await client.room_messages(room_id, token, limit=PAGE)
                assert isinstance(page, RoomMessagesResponse), page
                decrypted.update(e.event_id for e in page.chunk
                                 if isinstance(e, RoomMessageText))
                pages, token = pages + 1, page.end
        finally:
            await client.close()
    if not ids <= decrypted:
        raise RuntimeError(f"bare client: {len(ids - decrypted)} of {len(ids)} events not "
                           "decrypted")
    return t.seconds, pages


async def bot_catch_up(room: BotRoom, ids: set[str]) -> float:
    """Seconds until a restarted bot tracks ``ids``. Started as BotHandle.start does,
    but woken by the bot's own "sync persisted" event rather than by polling."""
    handle = room.bot
    with Timer() as t:
        bot = LetheBot(handle.config)
        handle.bot, handle.stop_event = bot, asyncio.Event()
        handle.task = asyncio.create_task(bot.run_until(handle.stop_event))
        while True:
            synced = asyncio.ensure_future(bot.synced.wait())
            done, _ = await asyncio.wait([synced, handle.task], timeout=120,
                                         return_when=asyncio.FIRST_COMPLETED)
            synced.cancel()
            if not done:
                raise TimeoutError("the restarted bot did not track every event in 120 s")
            if handle.task.done():
                handle.task.result()  # raises what stopped the bot
                raise RuntimeError("the bot stopped")
            if await room.engine.tracked(ids) == ids:
                break
    return t.seconds


async def one_round(room: BotRoom, hs: LocalSynapse, bare: Person, n: int,
                    bare_first: bool) -> dict[str, float]:
    """Both stopped and caught up: alice sends ``n``, then each catches up, timed."""
    alice = room.people[0]
    with Timer() as sending:
        ids = set(await send_encrypted(alice, room.room_id, n))
    print(f"  sent {n} encrypted messages in {sending.seconds:.1f} s "
          f"({n / sending.seconds:.0f}/s)", flush=True)
    result: dict[str, float] = {}
    for who in ("bare", "bot") if bare_first else ("bot", "bare"):
        if who == "bare":
            result["bare_s"], result["bare_pages"] = await bare_catch_up(
                hs, bare, room.room_id, ids)
        else:
            result["bot_s"] = await bot_catch_up(room, ids)
            await room.bot.stop()
    return result


async def main(n: int, rounds: int) -> dict[str, object]:
    quiet_logging()
    results = []
    with local_synapse() as hs, tempfile.TemporaryDirectory(prefix="lethe-bench-") as tmp:
        room = await bot_room(hs, Path(tmp), ["alice", "bare"])
        try:
            alice, bare = room.people
            await set_policy(room, Policy.after_send(DAY_MS))
            # Keys shared with both devices, everything so far seen by both; then stop.
            seen: set[str] = set()
            bare.client.add_event_callback(
                lambda _room, event: seen.add(event.event_id), RoomMessageText)  # type: ignore[arg-type]
            warm = await alice.send(room.room_id, "bench: warm-up")
            await eventually(lambda: warm in seen, 30, what="the bare client decrypting")
            await eventually(lambda: _tracked(room, warm), 30, what="the bot tracking")
            await bare.close()
            await room.bot.stop()
            for r in range(rounds):
                print(f"round {r + 1}:", flush=True)
                results.append(await one_round(room, hs, bare, n, bare_first=r % 2 == 0))
        finally:
            await room.close()
    bare_rate = n * len(results) / sum(r["bare_s"] for r in results)
    bot_rate = n * len(results) / sum(r["bot_s"] for r in results)
    ratio = bot_rate / bare_rate
    rows = [[f"round {i + 1} ({'bare' if i % 2 == 0 else 'bot'} first)", n / r["bare_s"],
             n / r["bot_s"], f"{r['bare_s'] / r['bot_s']:.2f}", ""]
            for i, r in enumerate(results)]
    rows.append(["all rounds", bare_rate, bot_rate, f"{ratio:.2f}",
                 "ok" if ratio >= 0.8 else "MISSED"])
    print()
    print(table(f"Sync ingest (events/s) catching up on {n:,} encrypted messages from a stored "
                "sync token; same-script ratio, goal >= 0.8",
                ["", "bare nio client (sync + decrypt)", "Lethe bot (tracked)", "ratio", ""],
                rows))
    pages = ", ".join(str(int(r["bare_pages"])) for r in results)
    print(f"\nbare: a fresh nio client on its store, one /sync (timeline limit {PAGE}, the most "
          f"Synapse serves) from its stored token, then /messages pages of {PAGE} back "
          f"({pages} per round); nio decrypts every event.\n"
          "bot: LetheBot restarted on its data directory; one full-state /sync from the token "
          "in lethe.db (timeline limit 100, events which nio decrypts), then /messages pages "
          "of 100 "
          "back to the last event it stored, tracked without decrypting; all stored in one "
          "transaction.")
    return {"events": n, "rounds": results, "bare_per_s": bare_rate, "bot_per_s": bot_rate,
            "ratio": ratio}


async def _tracked(room: BotRoom, event_id: str) -> bool:
    return await room.engine.tracked([event_id]) == {event_id}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    result = asyncio.run(main(args.events, args.rounds))
    print(f"\nwrote {save('sync_ingest', result)}")
