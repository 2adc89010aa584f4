"""Benchmark 3: after_read latency, from the reader's receipt to the verified redaction.

A local Synapse (rate limits raised) and the real LetheBot with two encrypted
rooms of the same people: alice (sender) and bob (the one required reader).

- after_read room, policy after-read 1s: alice sends a message; once the bot
  tracks it, bob sends a public m.read receipt on it (t0); latency = the time
  the bot's scheduler records the redaction as verified - t0 - the 1 s timer.
- after_send room, policy after-send 1s (the baseline): alice sends a message;
  latency = verified - due (origin_server_ts + 1 s), as the scheduler reports.

Both measure "decision -> verified". Messages go one at a time, alternating
between the rooms, so both see the same machine.

Run: python -m bench.bench_after_read [--messages 50] [--synapse-db sqlite|postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from bench.common import (
    BotRoom,
    RedactionLog,
    bot_room,
    local_synapse,
    quiet_logging,
    save,
    set_policy,
    spread,
    table,
)
from bench.synapsedb import add_synapse_db_option
from bot.devtools.people import eventually
from bot.engine.policy import Policy

TIMER_MS = 1000
CAP_MS = 3600_000


async def tracked(room: BotRoom, event_id: str) -> None:
    async def known() -> bool:
        return await room.engine.tracked([event_id]) == {event_id}

    await eventually(known, 30, interval=0.02, what="the bot tracking the message")


async def main(messages: int, synapse_db: str = "sqlite") -> dict[str, object]:
    quiet_logging()
    read_lat: list[float] = []
    send_lat: list[float] = []
    with local_synapse(synapse_db=synapse_db) as hs, \
            tempfile.TemporaryDirectory(prefix="lethe-bench-") as tmp:
        room = await bot_room(hs, Path(tmp), ["alice", "bob"])
        try:
            alice, bob = room.people
            read_room = room.room_id
            send_room = await room.add_room()
            verified = RedactionLog().attach(room.engine)
            await set_policy(room, Policy.after_read(TIMER_MS, CAP_MS), read_room)
            await set_policy(room, Policy.after_send(TIMER_MS), send_room)
            for i in range(messages):
                event_id = await alice.send(send_room, f"bench after-send {i}")
                (done,) = await verified.wait_for([event_id], timeout=60)
                send_lat.append(done.lag_ms / 1000)

                event_id = await alice.send(read_room, f"bench after-read {i}")
                await tracked(room, event_id)
                t0 = time.time()
                await bob.receipt(read_room, event_id)
                (done,) = await verified.wait_for([event_id], timeout=60)
                read_lat.append(done.at - t0 - TIMER_MS / 1000)
            verified.detach()
        finally:
            await room.close()

    read, send = spread(read_lat), spread(send_lat)
    rows = [
        ["after_read: receipt -> verified, minus timer", read["p50_s"], read["p99_s"],
         read["max_s"], f"{read['p99_s'] / send['p99_s']:.2f}",
         "ok" if read["p99_s"] <= 1 else "MISSED"],
        ["after_send (baseline): due -> verified", send["p50_s"], send["p99_s"], send["max_s"],
         "1.00", ""],
    ]
    print()
    print(table(f"after_read latency (s), {messages} messages each, timer {TIMER_MS // 1000}s, "
                f"encrypted rooms, Synapse on {synapse_db}; ratio = p99 / baseline p99 in this "
                "run; goal p99 <= 1 s",
                ["measure", "p50", "p99", "max", "p99 ratio", ""], rows))
    return {"messages": messages, "timer_ms": TIMER_MS, "after_read": read, "after_send": send}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50)
    add_synapse_db_option(parser)
    args = parser.parse_args()
    result = asyncio.run(main(args.messages, args.synapse_db))
    print(f"\nwrote {save('after_read', result, args.synapse_db)}")
