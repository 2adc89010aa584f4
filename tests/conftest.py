"""Fixtures: one real Synapse on loopback for the session, fresh people and a fresh bot
per test (so tests do not see each other's rooms)."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bot.devtools.localpostgres import LocalPostgres, postgres_available
from bot.devtools.localsynapse import LocalSynapse, synapse_available
from bot.engine.store import Database
from tests.harness import BotHandle, Person, unique, write_bot_config

# Every fixture that starts a homeserver (here and in test modules: add a new one
# here). A test that uses one, directly or through another fixture, is marked
# `synapse`: `make test-unit` (-m "not synapse") leaves it out.
HOMESERVER_FIXTURES = frozenset({
    "synapse", "federation", "bridge_server", "outage_hs", "limited_hs", "retention_hs",
    "censoring_hs", "delayed_hs", "delayed_bridge_server",
})


# The store's backends: a test that takes the ``backend`` fixture runs on each.
BACKENDS = ("sqlite", "postgresql")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept, dropped = [], []
    for item in items:
        if HOMESERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.synapse)
        callspec = getattr(item, "callspec", None)
        on_postgres = callspec is not None and callspec.params.get("backend") == "postgresql"
        # A test of what only SQLite has (its file, its planner) runs there only.
        (dropped if on_postgres and item.get_closest_marker("sqlite_only") else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """One PostgreSQL server for the session (the machine's own binaries); each test
    takes a schema of its own in its database (``pg_database``)."""
    if not postgres_available():
        pytest.fail("PostgreSQL's server binaries (initdb, pg_ctl) are needed for the "
                    "PostgreSQL store tests: apt-get install postgresql")
    pg = LocalPostgres()
    pg.start()
    pg.create("lethe_tests")
    yield pg
    pg.stop()
    shutil.rmtree(pg.workdir, ignore_errors=True)


_SCHEMAS = itertools.count(1)


def pg_database(pg: LocalPostgres) -> Database:
    """A fresh, empty place for one store: a new schema, named in the URL."""
    name = f"t{next(_SCHEMAS)}"
    pg.psql(f"CREATE SCHEMA {name}", "lethe_tests")
    return Database.postgresql(f"{pg.url('lethe_tests')}?search_path={name}")


@pytest.fixture
def make_database(request: pytest.FixtureRequest, backend: str, tmp_path: Path):
    """Factory: the store's place for a file name (the same name: the same place), on
    the test's backend."""
    made: dict[Path, Database] = {}

    def make(path: Path | None = None) -> Database:
        path = path or tmp_path / "data" / "lethe.db"
        if path not in made:
            made[path] = (Database.sqlite(path) if backend == "sqlite"
                          else pg_database(request.getfixturevalue("postgres")))
        return made[path]

    return make


@pytest.fixture
def database(make_database) -> Database:
    return make_database()


@pytest.fixture(scope="session")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSynapse]:
    if not synapse_available():
        pytest.fail("matrix-synapse is not installed: pip install -e '.[test]'")
    hs = LocalSynapse(tmp_path_factory.mktemp("synapse"))
    hs.start()
    yield hs
    hs.stop()


@pytest.fixture(scope="session")
def delayed_hs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSynapse]:
    """A Synapse offering delayed redactions (delayed events, MSC4140, and redactions
    through /send, MSC4169), as tests/test_delayed.py needs it: delays of at most 30 s,
    at most 3 delayed events held per account."""
    if not synapse_available():
        pytest.fail("matrix-synapse is not installed: pip install -e '.[test]'")
    from bot.devtools.synapseconfig import delayed_redactions

    hs = LocalSynapse(tmp_path_factory.mktemp("delayed-synapse"),
                      extra_config=delayed_redactions("30s", per_user=3))
    hs.start()
    yield hs
    hs.stop()


@pytest.fixture
async def people(synapse: LocalSynapse, tmp_path: Path) -> AsyncIterator[PeopleFactory]:
    made: list[Person] = []

    async def make(name: str) -> Person:
        person = Person(synapse, unique(name), tmp_path / "people" / name)
        await person.start()
        made.append(person)
        return person

    yield make
    for person in made:
        await person.close()


PeopleFactory = "Callable[[str], Awaitable[Person]]"


@pytest.fixture
async def lethe(synapse: LocalSynapse, tmp_path: Path) -> AsyncIterator[BotHandle]:
    """A configured bot, not yet started (tests start and stop it)."""
    handle = BotHandle(write_bot_config(synapse, tmp_path / "bot"))
    yield handle
    await handle.stop()


@pytest.fixture
async def element_people(
    synapse: LocalSynapse, tmp_path: Path
) -> AsyncIterator[ElementPeopleFactory]:
    """Element Web's own SDK as people: ``await element_people("alice")`` registers a fresh
    user and starts a matrix-js-sdk client for it, set up as Element Web does (Rust crypto,
    cross-signed, threads on; ``isolation="all"`` for AllDevicesIsolationMode). See
    tests/interop/element.py. Fails when `make test` has not installed tests/interop."""
    import asyncio

    from tests.interop.element import ElementClient, interop_missing, start_element_user

    missing = interop_missing()
    if missing:
        pytest.fail(missing)
    made: list[ElementClient] = []

    async def make(name: str, *, isolation: str = "signed") -> ElementClient:
        client = await start_element_user(
            synapse, name, tmp_path / "element", isolation=isolation)  # type: ignore[arg-type]
        made.append(client)
        return client

    yield make
    await asyncio.gather(*(client.close() for client in made))


ElementPeopleFactory = "Callable[..., Awaitable[ElementClient]]"


@pytest.fixture(scope="session")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    """Two Synapses that federate over loopback only (bot.devtools.localfederation):
    ``federation[0]`` and ``federation[1]``, each a LocalSynapse named ``127.0.0.1:PORT``
    (users ``@name:127.0.0.1:PORT``), with a TLS federation listener, unverified
    self-signed certificates, and ``federation_domain_whitelist`` naming only the two.

    A wrong clock on a server: ``with federation[1].clock_offset(-60_000): ...`` makes it
    stamp ``origin_server_ts`` and receipt ``ts`` 60 s slow inside the block (effective
    from the next timestamp, no restart; a sitecustomize shifts Synapse's Clock.time_msec in that
    process only). Restore it (the context manager does) so other tests see true clocks."""
    if not synapse_available():
        pytest.fail("matrix-synapse is not installed: pip install -e '.[test]'")
    from bot.devtools.localfederation import LocalFederation

    fed = LocalFederation(tmp_path_factory.mktemp("federation"), 2)
    fed.start()
    yield fed
    fed.stop()


LocalFederation = "bot.devtools.localfederation.LocalFederation"
