"""`lethe rooms show`'s line on the pinned policy notice (bot/front/pinning.py): the
room's state, the bot's holds and its last problem, as `!lethe status` says it."""

from __future__ import annotations

from bot.cli.roomstate import RoomState
from bot.engine.store import StoreBackend
from bot.matrix.api import MatrixHttp
from bot.matrix.pins import PIN_PROBLEMS_KEY, load_problems, pin_summary, read_pins


async def pinned_notice(http: MatrixHttp, store: StoreBackend | None, state: RoomState,
                        bot_user_id: str) -> str:
    held: set[str] = set()
    problem = None
    if store is not None:
        held = {found.event_id for found in await store.held(state.room_id)}
        problem = load_problems(await store.get_meta(PIN_PROBLEMS_KEY)).get(state.room_id)
    return pin_summary(state.policy.active, await read_pins(http, state.room_id), held,
                       problem, state.power, bot_user_id)
