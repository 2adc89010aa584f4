"""The ``meta`` key-value table and the appservice transaction ids the bridge committed."""

from __future__ import annotations

from bot.engine.store.conn import Connection

# How long a committed appservice transaction id is remembered. A homeserver re-sends
# only transactions it has no answer for, so old ids are dropped after a while.
APPSERVICE_TXN_KEEP_MS = 7 * 24 * 3600 * 1000


async def get_meta(conn: Connection, key: str) -> str | None:
    async with conn.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cur:
        row = await cur.fetchone()
    return None if row is None else str(row[0])


async def set_meta(conn: Connection, key: str, value: str) -> None:
    await conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


async def appservice_txn_done(conn: Connection, txn_id: str) -> bool:
    async with conn.execute("SELECT 1 FROM appservice_txns WHERE txn_id = ?", (txn_id,)) as cur:
        return await cur.fetchone() is not None


async def record_appservice_txn(conn: Connection, txn_id: str, now_ms: int) -> None:
    await conn.execute(
        "INSERT INTO appservice_txns (txn_id, done_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
        (txn_id, now_ms),
    )
    await conn.execute(
        "DELETE FROM appservice_txns WHERE done_at < ?", (now_ms - APPSERVICE_TXN_KEEP_MS,)
    )
