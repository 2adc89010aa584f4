"""The bridge's configuration: its own ``bridge`` section of the Lethe YAML config, plus
the settings it shares with the bot (``homeserver.url``, ``data_dir``,
``policy.default_cap``, ``readers.ignore``, ``commands.prefix``, ``redaction.workers``
and ``.delayed``, ``logging.level``, ``erasure``, ``policy.bounds`` and
``policy.rooms``: the bounds bind both fronts),
read with the bot's reader so both name keys and problems the same way.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.boundsconfig import check_default_policy, read_bounds
from bot.config import ConfigReader, MetricsConfig, read_config_file
from bot.databaseconfig import BRIDGE_DATABASE_ENV, read_database
from bot.engine.bounds import BoundsConfig
from bot.engine.ids import localpart, server_name
from bot.engine.policy import Policy
from bot.engine.store import Database
from bot.erasureconfig import ErasureConfig
from bot.policyconfig import policy_setting

DEFAULT_ID = "lethe"
DEFAULT_PORT = 29331
DEFAULT_REGISTRATION = "lethe-registration.yaml"
DEFAULT_DATABASE = "bridge.db"


@dataclass(frozen=True)
class RoomFilter:
    """Which rooms the bridge enforces: a room is in when its ID or one of its aliases
    matches an ``include`` glob and none matches an ``exclude`` glob."""

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    def allows(self, room_id: str, aliases: Iterable[str] = ()) -> bool:
        names = (room_id, *aliases)

        def matches(globs: tuple[str, ...]) -> bool:
            return any(fnmatch.fnmatchcase(n, g) for n in names for g in globs)

        return matches(self.include) and not matches(self.exclude)


@dataclass(frozen=True)
class BridgeConfig:
    path: Path
    homeserver_url: str
    user_id: str  # the bridge's own bot user (the registration's sender_localpart)
    appservice_id: str
    registration_path: Path
    host: str
    port: int
    database: Database  # bridge.database (bot/databaseconfig.py)
    data_dir: Path
    default_policy: Policy
    rooms: RoomFilter
    defer_to: tuple[str, ...]  # user-ID globs of Lethe bots that own the rooms they are in
    default_cap_ms: int
    ignore_readers: tuple[str, ...]
    workers: int
    log_level: str
    metrics: MetricsConfig | None = None  # None: no metrics endpoint
    erasure: ErasureConfig = field(default_factory=ErasureConfig)
    delayed_redactions: bool = True  # redaction.delayed: auto (True) or off
    bounds: BoundsConfig = field(default_factory=BoundsConfig)  # policy.bounds, .rooms
    command_prefix: str = "!lethe"  # commands.prefix: `!lethe default` to the bridge's bot

    @property
    def server_name(self) -> str:
        return server_name(self.user_id)

    @property
    def localpart(self) -> str:
        return localpart(self.user_id)

    def is_local(self, user_id: str) -> bool:
        return server_name(user_id) == self.server_name

    def defers_to(self, user_id: str) -> bool:
        return any(fnmatch.fnmatchcase(user_id, glob) for glob in self.defer_to)


def load_bridge_config(path: Path | str, env: dict[str, str] | None = None) -> BridgeConfig:
    env = dict(os.environ) if env is None else env
    path = Path(path)
    r = read_config_file(path)
    homeserver_url = r.homeserver_url()
    data_dir = r.data_dir()
    default_cap_ms = r.default_cap_ms()

    bridge = r.section("bridge", required=True)
    user_id = r.user_id(bridge, "bridge.user_id")
    appservice_id = r.string(bridge, "bridge.id", default=DEFAULT_ID) or DEFAULT_ID

    registration = r.string(bridge, "bridge.registration", default=DEFAULT_REGISTRATION)
    assert registration is not None
    registration_path = _relative_to(path.parent, registration)
    database = read_database(r, bridge, "bridge.database", "database", data_dir,
                             DEFAULT_DATABASE, env, BRIDGE_DATABASE_ENV)

    listen = _subsection(r, bridge, "bridge.listen")
    host = r.string(listen, "bridge.listen.host", default="127.0.0.1") or "127.0.0.1"
    port = listen.get("port", DEFAULT_PORT)
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise r.fail("bridge.listen.port", f"must be a TCP port from 1 to 65535, not {port!r}")

    rooms = _subsection(r, bridge, "bridge.rooms")
    room_globs = "room ID or alias globs like '#*:example.org'"
    room_filter = RoomFilter(
        r.globs(rooms, "bridge.rooms.include", ("*",), room_globs),
        r.globs(rooms, "bridge.rooms.exclude", (), room_globs),
    )

    bounds = read_bounds(r, default_cap_ms)
    default_policy = _default_policy(r, bridge, default_cap_ms)
    check_default_policy(r, bounds, default_policy, "bridge.default_policy")
    return BridgeConfig(
        path=path,
        homeserver_url=homeserver_url,
        user_id=user_id,
        appservice_id=appservice_id,
        registration_path=registration_path,
        host=host,
        port=port,
        database=database,
        data_dir=data_dir,
        default_policy=default_policy,
        rooms=room_filter,
        defer_to=r.globs(bridge, "bridge.defer_to", ()),
        default_cap_ms=default_cap_ms,
        ignore_readers=r.ignore_readers(),
        workers=r.workers(),
        log_level=r.log_level(),
        metrics=r.metrics(_subsection(r, bridge, "bridge.metrics"), "bridge.metrics.listen"),
        erasure=r.erasure(env),
        delayed_redactions=r.delayed_redactions(),
        bounds=bounds,
        command_prefix=r.command_prefix(),
    )


def run_lock_path(config: BridgeConfig) -> Path:
    """The bridge's run lock: next to its SQLite database, so a bot and a bridge may share
    a data_dir; in data_dir for a PostgreSQL one."""
    if config.database.path is not None:
        return config.database.path.with_suffix(".lock")
    return config.data_dir / "bridge.lock"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _relative_to(base: Path, raw: str) -> Path:
    candidate = Path(raw).expanduser()
    return candidate if candidate.is_absolute() else (base / candidate).resolve()


def _subsection(r: ConfigReader, section: dict[str, Any], key: str) -> dict[str, Any]:
    value = section.get(key.rsplit(".", 1)[-1])
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise r.fail(key, f"must be a mapping, not {type(value).__name__}")
    return value


def _default_policy(r: ConfigReader, bridge: dict[str, Any], default_cap_ms: int) -> Policy:
    return policy_setting(r, bridge, "bridge.default_policy", default_cap_ms) or Policy.off()
