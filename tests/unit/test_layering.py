"""The tree's shape, checked: the store is the only place with SQL, nothing outside
it reaches into its modules, nothing outside the engine reaches past its door,
statuses never appear in SQL as bare numbers, and no module grows past 400 lines."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "bot" / "engine"
STORE = ENGINE / "store"

_SQL = re.compile(r"\b(SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM)\b")
_DRIVER = re.compile(r"^\s*(import|from)\s+(aiosqlite|sqlite3)\b", re.M)
_STORE_INSIDE = re.compile(r"bot\.engine\.store\.\w+|from bot\.engine\.store import \w+ as")
# A status compared with a number written into the SQL, rather than sql.WAITING & co.
# An engine's insides, reached from outside it (its door is bot/engine/engine.py).
_PAST_THE_DOOR = re.compile(r"(?<!bot\.)engine\.(_\w+|store|scheduler|clock|redactor|ingestor)\b")
_BARE_STATUS = re.compile(r"status\s*(?:=|!=|<>|IN\s*\()\s*\d")


def _python(*roots: Path) -> list[Path]:
    return [p for root in roots for p in sorted(root.rglob("*.py"))]


def test_sql_and_the_driver_stay_in_the_store() -> None:
    for path in _python(ROOT / "bot", ROOT / "bridge"):
        if STORE in path.parents:
            continue
        text = path.read_text()
        assert not _SQL.search(text), f"{path}: SQL outside the store"
        assert not _DRIVER.search(text), f"{path}: imports the database driver"


def test_nothing_outside_the_store_imports_its_modules() -> None:
    for path in _python(ROOT / "bot", ROOT / "bridge"):
        if STORE in path.parents:
            continue
        assert not _STORE_INSIDE.search(path.read_text()), f"{path}: reaches into the store"


def test_statuses_are_never_bare_numbers_in_sql() -> None:
    for path in _python(STORE):
        assert not _BARE_STATUS.search(path.read_text()), f"{path}: a bare status number"


def test_the_fronts_the_cli_and_the_metrics_use_the_engine_s_door() -> None:
    for path in _python(ROOT / "bot", ROOT / "bridge"):
        if ENGINE in path.parents:
            continue
        found = _PAST_THE_DOOR.search(path.read_text())
        assert found is None, f"{path}: {found and found.group(0)}"


def test_no_module_passes_400_lines() -> None:
    for path in _python(ROOT / "bot", ROOT / "bridge"):
        lines = len(path.read_text().splitlines())
        assert lines <= 400, f"{path}: {lines} lines"
