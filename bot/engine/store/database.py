"""Where the store lives, as the config's ``database:`` says: a SQLite file
(``sqlite:///path``, or a plain path) or a PostgreSQL database (``postgresql://…``).

The URL may carry a password: ``shown`` is the form for messages and logs, with the
password replaced, and every error this package raises about a PostgreSQL database
names it by ``shown`` only."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit


class Backend(Enum):
    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


class DatabaseUrlError(ValueError):
    """The text names no database Lethe can use (the message never holds a password)."""


_POSTGRES_SCHEMES = ("postgresql", "postgres")


@dataclass(frozen=True)
class Database:
    backend: Backend
    path: Path | None = None  # SQLite's file
    url: str = field(default="", repr=False)  # PostgreSQL's, with its password
    shown: str = ""

    @classmethod
    def sqlite(cls, path: Path) -> Database:
        return cls(Backend.SQLITE, path=Path(path), shown=str(path))

    @classmethod
    def parse(cls, text: str, base: Path) -> Database:
        """``text`` from a config or the command line; relative SQLite paths are taken
        from ``base`` (the data directory)."""
        text = text.strip()
        if not text:
            raise DatabaseUrlError("is empty")
        scheme = text.split(":", 1)[0].lower() if "://" in text else ""
        if scheme == "sqlite":
            # sqlite:///relative/or/absolute: what follows the third slash is the path,
            # as SQLAlchemy and mautrix read it (sqlite:////abs for an absolute one
            # there; one more slash is accepted too).
            rest = text.split("://", 1)[1]
            if not rest.startswith("/"):
                raise DatabaseUrlError("a SQLite URL is sqlite:///path (three slashes)")
            path = Path(unquote(rest[1:]))
            if not str(path) or str(path) == ".":
                raise DatabaseUrlError("names no file")
            return cls.sqlite(path if path.is_absolute() else base / path)
        if scheme in _POSTGRES_SCHEMES:
            return cls.postgresql(text)
        if scheme:
            raise DatabaseUrlError(
                f"unknown kind of database {scheme!r}: use sqlite:///path or postgresql://…")
        path = Path(text).expanduser()
        return cls.sqlite(path if path.is_absolute() else base / path)

    @classmethod
    def postgresql(cls, url: str) -> Database:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 (raises on a malformed port)
        except ValueError:
            raise DatabaseUrlError("is not a valid postgresql:// URL") from None
        if not parts.path.strip("/") and not parts.hostname:
            raise DatabaseUrlError("a PostgreSQL URL names a host or a database: "
                                   "postgresql://user:password@host:5432/dbname")
        return cls(Backend.POSTGRESQL, url=url, shown=_masked(parts))

    @property
    def is_sqlite(self) -> bool:
        return self.backend is Backend.SQLITE

    @property
    def absent(self) -> bool:
        """Known not to exist yet: a SQLite file not made (a PostgreSQL database is only
        known by connecting)."""
        return self.path is not None and not self.path.exists()

    @property
    def password(self) -> str | None:
        """In the URL's user part, or a ``password=`` query parameter (libpq's)."""
        if not self.url:
            return None
        parts = urlsplit(self.url)
        given = dict(parse_qsl(parts.query)).get("password")
        return parts.password or given

    def scrub(self, text: str) -> str:
        """``text`` (an error from a driver, say) with the password replaced."""
        secret = self.password
        if secret:
            for form in {secret, unquote(secret)}:
                text = text.replace(form, "***")
        return text.replace(self.url, self.shown) if self.url else text

    def __str__(self) -> str:
        return self.shown


def _masked(parts: SplitResult) -> str:
    netloc = parts.netloc
    if parts.password is not None:
        user = parts.username or ""
        host = netloc.rsplit("@", 1)[1]
        netloc = f"{user}:***@{host}"
    query = "&".join(p if not p.lower().startswith("password=") else "password=***"
                     for p in parts.query.split("&")) if parts.query else ""
    return parts._replace(netloc=netloc, query=query).geturl()
