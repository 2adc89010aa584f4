"""Typed configuration, loaded from YAML and validated once at start.

Every error names the file, the key and what is wrong.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from bot.boundsconfig import check_default_policy, read_bounds
from bot.databaseconfig import BOT_DATABASE_ENV, read_database
from bot.engine.bounds import BoundsConfig
from bot.engine.ids import server_name
from bot.engine.policy import Policy, PolicyError, parse_duration
from bot.engine.store import Database
from bot.erasureconfig import ErasureConfig, read_erasure
from bot.errors import SetupError
from bot.noticesconfig import NoticesConfig, read_notices
from bot.policyconfig import read_on_join

DEFAULT_PREFIX = "!lethe"
DEFAULT_CAP = "7d"
PASSWORD_ENV = "LETHE_PASSWORD"
PICKLE_KEY_ENV = "LETHE_PICKLE_KEY"
# Values that must never protect a real key store.
WEAK_PICKLE_KEYS = frozenset({"", "DEFAULT_KEY", "changeme", "change-me", "pickle_key", "secret"})

_USER_ID = re.compile(r"^@[^:\s]+:[^\s]+$")
_FIXED_PHRASE = re.compile(r"^[a-z ,<>]+$")
# Keys whose values never appear in an error message.
SECRET_KEYS = frozenset({"bot.password", "e2ee.pickle_key"})



class ConfigError(SetupError, ValueError):
    """The configuration cannot be used."""


@dataclass(frozen=True)
class HomeserverConfig:
    url: str


@dataclass(frozen=True)
class BotConfig:
    user_id: str
    password: str | None = field(default=None, repr=False)
    device_name: str = "Lethe"

    @property
    def server_name(self) -> str:
        return server_name(self.user_id)


@dataclass(frozen=True)
class E2EEConfig:
    pickle_key: str = field(repr=False)
    trust: str = "tofu"  # tofu | verified


@dataclass(frozen=True)
class MetricsConfig:
    """Where `lethe run` serves Prometheus metrics and /health (loopback only)."""

    host: str
    port: int
    key: str = "metrics.listen"  # where it was configured, for error messages

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Config:
    path: Path
    homeserver: HomeserverConfig
    bot: BotConfig
    data_dir: Path
    e2ee: E2EEConfig
    invites_allow: tuple[str, ...]
    command_prefix: str
    default_cap_ms: int
    ignore_readers: tuple[str, ...]
    database: Database  # `database:`, default data_dir/lethe.db (bot/databaseconfig.py)
    workers: int = 8
    log_level: str = "INFO"
    metrics: MetricsConfig | None = None  # None: no metrics endpoint
    erasure: ErasureConfig = field(default_factory=ErasureConfig)
    delayed_redactions: bool = True  # redaction.delayed: auto (True) or off
    bounds: BoundsConfig = field(default_factory=BoundsConfig)  # policy.bounds, .rooms
    on_join: Policy | None = None  # policy.on_join: put in force where a room has none
    notices: NoticesConfig = field(default_factory=NoticesConfig)  # bot/noticesconfig.py

    @property
    def credentials_path(self) -> Path:
        return self.data_dir / "credentials.json"

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "e2ee"

    @property
    def cross_signing_path(self) -> Path:
        """The bot's private cross-signing keys, sealed under the pickle key."""
        return self.data_dir / "cross_signing.json"

    @property
    def pinned_identities_path(self) -> Path:
        """Other users' master keys as first seen (``e2ee.trust: verified``)."""
        return self.data_dir / "identities.json"


class ConfigReader:
    """Walks the YAML mapping, collecting errors with their key paths."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key}: {problem}")

    def section(self, key: str, required: bool = False) -> dict[str, Any]:
        value = self.data.get(key)
        if value is None:
            if required:
                raise self.fail(key, "missing section")
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a mapping, not {type(value).__name__}")
        return value

    def string(self, section: dict[str, Any], key: str, *, default: str | None = None,
               required: bool = False) -> str | None:
        value = section.get(key.rsplit(".", 1)[-1])
        if value is None:
            if required:
                raise self.fail(key, "is required")
            return default
        if not isinstance(value, str) or not value.strip():
            # A secret written as a number is still a secret: name its type only.
            shown = type(value).__name__ if key in SECRET_KEYS else repr(value)
            raise self.fail(key, f"must be a non-empty string, not {shown}")
        return value

    def globs(self, section: dict[str, Any], key: str, default: tuple[str, ...],
              what: str = "user-ID globs like '@*:example.org'") -> tuple[str, ...]:
        value = section.get(key.rsplit(".", 1)[-1])
        if value is None:
            return default
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(key, f"must be a list of {what}")
        return tuple(value)

    def user_id(self, section: dict[str, Any], key: str) -> str:
        """A required full Matrix user ID."""
        user_id = self.string(section, key, required=True)
        assert user_id is not None
        if not _USER_ID.match(user_id):
            raise self.fail(key, f"must be a full Matrix user ID like @lethe:example.org, "
                                 f"not {user_id!r}")
        return user_id

    def duration(self, section: dict[str, Any], key: str, default: str) -> int:
        text = self.string(section, key, default=default) or default
        try:
            return parse_duration(text)
        except PolicyError as exc:
            raise self.fail(key, str(exc)) from None

    # --- settings the bot and the bridge share ----------------------------------

    def homeserver_url(self) -> str:
        hs = self.section("homeserver", required=True)
        url = self.string(hs, "homeserver.url", required=True)
        assert url is not None
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise self.fail("homeserver.url", f"must be an http(s) URL, not {url!r}")
        return url.rstrip("/")

    def data_dir(self) -> Path:
        raw = self.data.get("data_dir", "data")
        if not isinstance(raw, str) or not raw:
            raise self.fail("data_dir", "must be a directory path")
        return self.path_of(raw)

    def default_cap_ms(self) -> int:
        return self.duration(self.section("policy"), "policy.default_cap", DEFAULT_CAP)

    def command_prefix(self) -> str:
        prefix = self.string(self.section("commands"), "commands.prefix",
                             default=DEFAULT_PREFIX) or DEFAULT_PREFIX
        if any(c.isspace() for c in prefix):
            raise self.fail("commands.prefix", "must not contain spaces")
        return prefix

    def ignore_readers(self) -> tuple[str, ...]:
        return self.globs(self.section("readers"), "readers.ignore", ())

    def workers(self) -> int:
        workers = self.section("redaction").get("workers", 8)
        if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= 256:
            raise self.fail("redaction.workers",
                            f"must be a whole number from 1 to 256, not {workers!r}")
        return workers

    def delayed_redactions(self) -> bool:
        """``redaction.delayed``: auto (where the homeserver offers it) or off."""
        value: object = self.section("redaction").get("delayed", "auto")
        if value not in ("auto", "off", False):  # YAML reads a bare off as false
            raise self.fail("redaction.delayed", f"must be auto or off, not {value!r}")
        return value == "auto"

    def log_level(self) -> str:
        section = self.section("logging")
        level = (self.string(section, "logging.level", default="INFO") or "INFO").upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise self.fail("logging.level",
                            f"must be DEBUG, INFO, WARNING or ERROR, not {level!r}")
        return level

    def metrics(
        self, section: dict[str, Any] | None = None, key: str = "metrics.listen"
    ) -> MetricsConfig | None:
        """``metrics.listen: "127.0.0.1:9464"`` (the bridge: ``bridge.metrics.listen``);
        absent means off. Only loopback addresses: the endpoint has no authentication."""
        section = self.section("metrics") if section is None else section
        listen = self.string(section, key)
        if listen is None:
            return None
        host, sep, port_text = listen.strip().rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise self.fail(key, f"must be HOST:PORT like 127.0.0.1:9464, not {listen!r}")
        if host != "localhost":
            try:
                loopback = ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                raise self.fail(key, f"{host!r} is not a loopback address; the endpoint has "
                                     "no authentication, so it only listens on 127.0.0.1, ::1 "
                                     "or localhost (put a proxy in front to expose it)")
        return MetricsConfig(host, int(port_text), key)

    def erasure(self, env: dict[str, str]) -> ErasureConfig:
        return read_erasure(self, env)

    def path_of(self, raw: str) -> Path:
        """A path from the config: relative ones are relative to the config file."""
        path = Path(raw).expanduser()
        return path if path.is_absolute() else (self.path.parent / path).resolve()


def yaml_problem(exc: yaml.YAMLError) -> str:
    """Where the YAML is broken and what kind of error it is, never the text itself:
    PyYAML's own message quotes the offending lines, which may hold a password or the
    pickle key."""
    mark = getattr(exc, "problem_mark", None)
    where = ""
    if isinstance(mark, yaml.Mark):
        where = f" at line {mark.line + 1}, column {mark.column + 1}"
    problem = getattr(exc, "problem", None)
    # Only PyYAML's fixed phrases ("mapping values are not allowed here"); those that
    # quote a character or token from the file (in quotes) are left out.
    detail = (f": {problem}" if isinstance(problem, str) and _FIXED_PHRASE.match(problem)
              else "")
    return f"not valid YAML{where} ({type(exc).__name__}{detail})"


def read_config_file(path: Path) -> ConfigReader:
    """Read and parse a YAML config file; errors name the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (start from `lethe config "
                          "example`)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a YAML mapping of settings")
    _check_keys(path, data, KNOWN_KEYS, "")
    return ConfigReader(path, data)


# Every key the bot and the bridge read (one file serves both). A mapping names the
# keys inside a section; None takes the value as it is (its loader checks it). A
# misspelt key would otherwise be ignored silently: `polcy:` would leave the default.
KNOWN_KEYS: dict[str, Any] = {
    "homeserver": {"url": None},
    "bot": {"user_id": None, "password": None, "device_name": None},
    "data_dir": None,
    "database": None,
    "e2ee": {"pickle_key": None, "trust": None},
    "invites": {"allow": None},
    "commands": {"prefix": None},
    "policy": {"default_cap": None, "on_join": None,
               "rooms": None,  # rooms: bot/boundsconfig.py checks
               "bounds": dict.fromkeys(("min_timer", "max_timer", "min_cap", "max_cap",
                                        "allow_off"))},
    "readers": {"ignore": None},
    "redaction": {"workers": None, "delayed": None},
    "notices": {"pin": None, "room_features": None, "topic": None},
    "logging": {"level": None},
    "metrics": {"listen": None},
    "erasure": {"admin_token_file": None, "media": None, "max_held": None, "ledger": None},
    "bridge": {
        "user_id": None, "id": None, "registration": None, "database": None,
        "listen": {"host": None, "port": None}, "default_policy": None,
        "rooms": {"include": None, "exclude": None}, "defer_to": None,
        "metrics": {"listen": None},
    },
}


def _check_keys(path: Path, data: dict[Any, Any], known: dict[str, Any], where: str) -> None:
    for key, value in data.items():
        name = f"{where}{key}"
        if key not in known:
            near = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f"; did you mean {where}{near[0]}?" if near else \
                f"; known keys here: {', '.join(sorted(known))}"
            raise ConfigError(f"{path}: {name}: unknown key{hint}")
        inner = known[key]
        if isinstance(inner, dict) and isinstance(value, dict):
            _check_keys(path, value, inner, f"{name}.")


def load_config(path: Path | str, env: dict[str, str] | None = None) -> Config:
    env = dict(os.environ) if env is None else env
    path = Path(path)
    r = read_config_file(path)
    url = r.homeserver_url()

    bot = r.section("bot", required=True)
    user_id = r.user_id(bot, "bot.user_id")
    password = env.get(PASSWORD_ENV) or r.string(bot, "bot.password")
    device_name = r.string(bot, "bot.device_name", default="Lethe") or "Lethe"

    data_dir = r.data_dir()

    e2ee = r.section("e2ee")
    pickle_key = env.get(PICKLE_KEY_ENV) or r.string(e2ee, "e2ee.pickle_key")
    if not pickle_key:
        raise r.fail("e2ee.pickle_key", f"is required (or set {PICKLE_KEY_ENV}); it encrypts "
                                        "the bot's end-to-end keys on disk")
    if pickle_key in WEAK_PICKLE_KEYS or len(pickle_key) < 16:
        raise r.fail("e2ee.pickle_key", "is too weak; use at least 16 random characters "
                                        "(e.g. `openssl rand -hex 32`)")
    trust = r.string(e2ee, "e2ee.trust", default="tofu")
    if trust not in ("tofu", "verified"):
        raise r.fail("e2ee.trust", f"must be 'tofu' or 'verified', not {trust!r}")

    invites = r.section("invites")
    server = server_name(user_id)
    invites_allow = r.globs(invites, "invites.allow", (f"@*:{server}",))

    default_cap_ms = r.default_cap_ms()
    bounds = read_bounds(r, default_cap_ms)
    on_join = read_on_join(r)
    if on_join is not None:
        check_default_policy(r, bounds, on_join, "policy.on_join")
    return Config(
        path=path,
        homeserver=HomeserverConfig(url),
        bot=BotConfig(user_id, password, device_name),
        data_dir=data_dir,
        e2ee=E2EEConfig(pickle_key, trust),
        invites_allow=invites_allow,
        command_prefix=r.command_prefix(),
        default_cap_ms=default_cap_ms,
        ignore_readers=r.ignore_readers(),
        database=read_database(r, r.data, "database", "database", data_dir, "lethe.db",
                               env, BOT_DATABASE_ENV),
        workers=r.workers(),
        log_level=r.log_level(),
        metrics=r.metrics(),
        erasure=r.erasure(env),
        delayed_redactions=r.delayed_redactions(),
        bounds=bounds,
        on_join=on_join,
        notices=read_notices(r),
    )
