"""Self-checks for the exercises of notebook 15 (beyond CRUD: events and async ORM features).

* 15.1 ``app_engine(url) -> AsyncEngine``: on SQLite, notebook 01's transaction recipe and
  ``PRAGMA foreign_keys=ON`` on every new connection; on PostgreSQL, a plain engine.
* 15.2 ``save_sensors(session, rows)``: one ``INSERT ... ON CONFLICT (code) DO UPDATE`` for all
  rows, returning the saved ``Sensor`` objects with their new names.
* 15.3 ``reading_batches(engine, size)``: an async generator streaming ``(id, value)`` rows
  through ``AsyncConnection.stream()`` with ``yield_per=size``, giving its connection back
  when it ends or is closed early.

15.1 builds its engines on a private SQLite file (on either backend), calls the learner's
listeners for a PostgreSQL URL with stand-in objects to see what they would send there, and
on PostgreSQL also runs a transaction on the notebook's database. 15.2 and 15.3 use rows of
their own (codes ``X-...``) in the notebook's tables and remove them again.
"""

from __future__ import annotations

import asyncio
import inspect
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from sqlalchemy import Column, ForeignKey, Integer, MetaData, Table, delete, event, insert, select, text
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio.exc import AsyncMethodRequired
from sqlalchemy.util import greenlet_spawn

from helpers.exercises.base import Verdict, check, correct, wrong

__all__ = ["check_app_engine", "check_reading_batches", "check_save_sensors"]

TIME_LIMIT = 10.0  # seconds for the learner's code in one check
ASYNC_EVENTS = "asynchronous events are not implemented"
#: Where 15.1 pretends a PostgreSQL server is, on SQLite: nothing listens there, nothing connects.
NOWHERE = "postgresql+asyncpg://check:check@127.0.0.1:9/check"


@contextmanager
def statements_of(engine: AsyncEngine) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Record (SQL with whitespace collapsed, execution options) of each statement ``engine`` sends."""
    sent: list[tuple[str, dict[str, Any]]] = []

    def record(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        options = dict(context.execution_options) if context is not None else {}
        sent.append((" ".join(statement.split()), options))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


def _verb(sql: str) -> str:
    return sql.split(" ", 1)[0].upper()


# 15.1 ------------------------------------------------------------------------------------------

AppEngine = Callable[[URL], Any]


class _StandIn:
    """Stands in for a DBAPI connection, cursor or Connection: records every SQL string it is given."""

    def __init__(self, sent: list[str]) -> None:
        self._sent = sent

    def __getattr__(self, name: str) -> _StandIn:
        return _StandIn(self._sent)

    def __call__(self, *args: Any, **kwargs: Any) -> _StandIn:
        self._sent += [arg for arg in args if isinstance(arg, str)]
        return _StandIn(self._sent)


def _learners_listeners(collection: Any) -> list[Callable[..., Any]]:
    """The listeners in an event collection that SQLAlchemy did not register itself."""
    return [fn for fn in collection if not str(getattr(fn, "__module__", "")).startswith("sqlalchemy")]


def simulated_sql(engine: AsyncEngine) -> list[str]:
    """The SQL the learner's listeners would send for a new connection and a new transaction.

    Nothing connects: each listener is called with stand-ins that record the SQL given to them.
    """
    sent: list[str] = []
    sync = engine.sync_engine
    calls = [
        (sync.pool.dispatch.first_connect, 2),
        (sync.pool.dispatch.connect, 2),
        (sync.pool.dispatch.checkout, 3),
        (sync.dispatch.engine_connect, 1),
        (sync.dispatch.begin, 1),
    ]
    for collection, arity in calls:
        for listener in _learners_listeners(collection):
            with suppress(Exception):  # a listener that needs a real connection shows nothing here
                listener(*(_StandIn(sent) for _ in range(arity)))
    return sent


def _build(app_engine: AppEngine, url: URL) -> AsyncEngine | Verdict:
    """Call the learner's factory; a verdict when what it did or returned is already wrong."""
    try:
        engine = app_engine(url)
    except NotImplementedError as exc:
        if ASYNC_EVENTS in str(exc):
            return wrong(
                "15.1",
                "event.listen() on the AsyncEngine raises NotImplementedError ('asynchronous events are "
                "not implemented'): attach the listeners to engine.sync_engine.",
            )
        raise
    if inspect.isawaitable(engine):
        with suppress(Exception):
            engine.close()  # type: ignore[attr-defined]
        return wrong(
            "15.1",
            "app_engine returned a coroutine: make it a plain def. create_async_engine() is not "
            "awaited, and an application builds its engine once, at start-up.",
        )
    if not isinstance(engine, AsyncEngine):
        return wrong("15.1", f"return the AsyncEngine you made (create_async_engine(url)), not {engine!r}.")
    if engine.url.database != url.database or engine.url.get_backend_name() != url.get_backend_name():
        return wrong("15.1", "build the engine for the url passed to app_engine.")
    return engine


def _parent_and_child() -> tuple[MetaData, Table, Table]:
    metadata = MetaData()
    parent = Table("parent", metadata, Column("id", Integer, primary_key=True))
    child = Table(
        "child",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("parent_id", ForeignKey("parent.id")),
    )
    return metadata, parent, child


async def _sqlite_verdict(engine: AsyncEngine) -> Verdict | None:
    metadata, parent, child = _parent_and_child()
    with statements_of(engine) as sent:
        try:
            async with engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
            async with engine.connect() as first, engine.connect() as second:
                flags = [await conn.scalar(text("PRAGMA foreign_keys")) for conn in (first, second)]
            sent.clear()
            async with engine.begin() as conn:
                await conn.execute(insert(parent).values(id=1))
            begins = [sql for sql, _ in sent if _verb(sql) == "BEGIN"]
            try:
                async with engine.begin() as conn:
                    await conn.execute(insert(child).values(id=1, parent_id=999))
                orphan_stored = True
            except IntegrityError:
                orphan_stored = False
        except InvalidRequestError as exc:
            if "already initialized a SQLAlchemy Transaction" not in str(exc):
                raise
            return wrong(
                "15.1",
                "engine.begin() failed: a listener ran SQL through the Connection before your code "
                "did ('engine_connect' or similar), which starts a transaction by itself. Use the "
                "'connect' event and the DBAPI connection's cursor().",
            )
        except DBAPIError as exc:
            if "within a transaction" not in str(exc):
                raise
            return wrong(
                "15.1",
                "SQLite said 'cannot start a transaction within a transaction': BEGIN is sent twice, so "
                "the recipe is applied twice. Apply it once, to an engine made with "
                "create_async_engine(url).",
            )
        pragmas_sent = [sql for sql, _ in sent if sql.upper().startswith("PRAGMA FOREIGN_KEYS")]
    if flags[0] and not flags[1]:
        return wrong(
            "15.1",
            "the first connection enforces foreign keys, the second does not: 'first_connect' runs once "
            "per engine. Use the 'connect' event, which runs for every new connection.",
        )
    if orphan_stored or not all(flags):
        if pragmas_sent:
            return wrong(
                "15.1",
                "your PRAGMA foreign_keys=ON is sent inside a transaction (after BEGIN), where SQLite "
                "ignores it. Send it from a 'connect' listener, through dbapi_connection.cursor(), "
                "before any transaction begins.",
            )
        return wrong(
            "15.1",
            "a new connection still has foreign keys off, and a row with a missing parent was stored. "
            "Add a 'connect' listener on engine.sync_engine that runs PRAGMA foreign_keys=ON.",
        )
    if not begins:
        return wrong(
            "15.1",
            "foreign keys are enforced, but no BEGIN is sent when a transaction starts: add notebook "
            "01's recipe too (isolation_level = None on 'connect', BEGIN on 'begin'), or "
            "helpers.database.sqlite_transactions(engine).",
        )
    return None


def _postgresql_verdict(sent: list[str]) -> Verdict | None:
    if any("PRAGMA" in sql.upper() for sql in sent):
        return wrong(
            "15.1",
            "on PostgreSQL your engine would send PRAGMA, which PostgreSQL rejects as a syntax error: "
            "register the SQLite listeners only when engine.dialect.name == 'sqlite'.",
        )
    if any(_verb(sql) == "BEGIN" for sql in sent):
        return wrong(
            "15.1",
            "on PostgreSQL your engine would send BEGIN itself: the recipe is for SQLite's driver only "
            "(asyncpg and psycopg begin their transactions). Apply it when engine.dialect.name == 'sqlite'.",
        )
    return None


async def _on_postgresql(app_engine: AppEngine, url: URL) -> Verdict | None:
    """Run the learner's engine against the notebook's PostgreSQL database."""
    built = _build(app_engine, url)
    if isinstance(built, Verdict):
        return built
    try:
        with statements_of(built) as sent:
            try:
                async with built.begin() as conn:
                    await conn.execute(text("SELECT 1"))
            except DBAPIError as exc:
                if "PRAGMA" not in str(exc):
                    raise
                return _postgresql_verdict(["PRAGMA"])
        return _postgresql_verdict([sql for sql, _ in sent])
    finally:
        await built.dispose()


async def _pretending_postgresql(app_engine: AppEngine) -> Verdict | None:
    """Build an engine for a PostgreSQL URL (never connected) and try its listeners."""
    built = _build(app_engine, make_url(NOWHERE))
    if isinstance(built, Verdict):
        return built
    try:
        return _postgresql_verdict(simulated_sql(built))
    finally:
        await built.dispose()


@check("15.1")
async def check_app_engine(app_engine: AppEngine, url: URL | str) -> Verdict:
    """Try the learner's factory on a private SQLite file, then for PostgreSQL (pretended, and live
    when ``url`` is PostgreSQL)."""
    url = make_url(url)
    with tempfile.TemporaryDirectory(prefix="nb15-check-") as folder:
        built = _build(app_engine, URL.create("sqlite+aiosqlite", database=str(Path(folder) / "check.db")))
        if isinstance(built, Verdict):
            return built
        try:
            async with asyncio.timeout(TIME_LIMIT):
                verdict = await _sqlite_verdict(built)
        finally:
            await built.dispose()
    if verdict is not None:
        return verdict
    verdict = await _pretending_postgresql(app_engine)  # what the listeners would send there
    if verdict is None and url.get_backend_name() == "postgresql":
        verdict = await _on_postgresql(app_engine, url)  # and what the engine does there
    if verdict is not None:
        return verdict
    return correct(
        "15.1",
        "every new SQLite connection enforces foreign keys, SQLAlchemy sends BEGIN, and PostgreSQL "
        "gets a plain engine.",
    )


# 15.2 ------------------------------------------------------------------------------------------

SaveSensors = Callable[[AsyncSession, list[dict[str, str]]], Awaitable[Any]]
SEEDED = {"X-1": "old one", "X-2": "old two"}
INCOMING = [
    {"code": "X-1", "name": "new one"},
    {"code": "X-2", "name": "new two"},
    {"code": "X-3", "name": "new three"},
]


async def _remove_check_sensors(Session: async_sessionmaker[AsyncSession], sensor_class: Any) -> None:
    async with Session.begin() as session:
        await session.execute(delete(sensor_class).where(sensor_class.code.like("X-%")))


async def _saved(Session: async_sessionmaker[AsyncSession], sensor_class: Any) -> dict[str, tuple[int, str]]:
    """{code: (id, name)} of the check's sensors, read in a new session."""
    async with Session() as session:
        rows = await session.execute(
            select(sensor_class.code, sensor_class.id, sensor_class.name).where(sensor_class.code.like("X-%"))
        )
        return {code: (id_, name) for code, id_, name in rows}


def _statements_verdict(sent: list[str]) -> Verdict | None:
    inserts = [sql for sql in sent if _verb(sql) == "INSERT"]
    others = [sql for sql in sent if _verb(sql) in ("SELECT", "UPDATE", "DELETE")]
    if not inserts:
        return wrong("15.2", "no INSERT reached the database: execute the upsert statement in the session.")
    if any(" OR REPLACE " in f" {sql.upper()} " for sql in inserts):
        return wrong(
            "15.2",
            "INSERT OR REPLACE deletes the old row and inserts a new one (a new id, and its readings "
            "lose their sensor): update in place with on_conflict_do_update().",
        )
    if not any("ON CONFLICT" in sql.upper() for sql in inserts):
        if others:
            return wrong(
                "15.2",
                f"you looked the codes up and then inserted or updated ({len(sent)} statements): two "
                "requests can both decide to insert the same code. Let the database decide, with one "
                "INSERT ... ON CONFLICT (code) DO UPDATE.",
            )
        return wrong("15.2", "the INSERT has no ON CONFLICT clause: build it with on_conflict_do_update().")
    if any("DO NOTHING" in sql.upper() for sql in inserts):
        return wrong(
            "15.2",
            "ON CONFLICT DO NOTHING keeps the old names: use on_conflict_do_update(index_elements=["
            "Sensor.code], set_={'name': stmt.excluded.name}).",
        )
    if len(inserts) > 1:
        return wrong(
            "15.2",
            f"you sent {len(inserts)} INSERT statements for {len(INCOMING)} rows: send all rows in one "
            "statement (insert(...).values(rows), or the rows as the parameter list).",
        )
    if others:
        return wrong(
            "15.2",
            f"besides the upsert you sent {len(others)} more statement(s) ({_verb(others[0])} ...): the "
            "database decides between insert and update by itself, so nothing needs reading first.",
        )
    return None


@check("15.2")
async def check_save_sensors(
    save_sensors: SaveSensors, Session: async_sessionmaker[AsyncSession], sensor_class: Any
) -> Verdict:
    """Seed X-1 and X-2, load X-1 into a session, then save X-1, X-2 and the new X-3 through it."""
    engine = Session.kw["bind"]
    await _remove_check_sensors(Session, sensor_class)
    try:
        async with Session.begin() as session:
            session.add_all([sensor_class(code=code, name=name) for code, name in SEEDED.items()])
        before = await _saved(Session, sensor_class)
        async with Session() as session:
            loaded = await session.scalar(select(sensor_class).where(sensor_class.code == "X-1"))
            with statements_of(engine) as sent:
                try:
                    async with asyncio.timeout(TIME_LIMIT):
                        returned = await save_sensors(session, [dict(row) for row in INCOMING])
                except AttributeError as exc:
                    if "on_conflict" not in str(exc):
                        raise
                    return wrong(
                        "15.2",
                        "sqlalchemy.insert() has no on_conflict_do_update(): it is dialect-specific. Use "
                        "sqlalchemy.dialects.postgresql.insert or sqlalchemy.dialects.sqlite.insert, "
                        "chosen by session.bind.dialect.name.",
                    )
                except IntegrityError:
                    return wrong(
                        "15.2",
                        "a plain INSERT failed on the unique code of a sensor that already exists: let "
                        "the database update it instead (on_conflict_do_update on Sensor.code).",
                    )
                except TimeoutError:
                    return wrong("15.2", f"your function was still running after {TIME_LIMIT:.0f} s.")
            statements = [sql for sql, _ in sent]
            returned_names = _returned_names(returned, sensor_class)
            loaded_name = _loaded(loaded).get("name")  # the object loaded before the call
            await session.commit()
        if (verdict := _statements_verdict(statements)) is not None:
            return verdict
        after = await _saved(Session, sensor_class)
        if after.get("X-1", (None,))[0] != before["X-1"][0]:
            return wrong("15.2", "sensor X-1 got a new id: update the existing row in place.")
        wanted = {row["code"]: row["name"] for row in INCOMING}
        names = {code: name for code, (_, name) in after.items()}
        if names != wanted:
            if len({names.get("X-1"), names.get("X-2")}) == 1:
                return wrong(
                    "15.2",
                    f"X-1 and X-2 now both hold {names.get('X-1')!r}: set_ must take each row's own "
                    "proposed value, stmt.excluded.name, not a fixed one.",
                )
            return wrong("15.2", f"after your function the sensors are {names}, expected {wanted}.")
        if isinstance(returned_names, Verdict):
            return returned_names
        if loaded_name != "new one" or returned_names.get("X-1") != "new one":
            return wrong(
                "15.2",
                "the database holds the new names, but the X-1 object this session had loaded still says "
                "'old one': RETURNING fills only new objects. Execute with "
                "execution_options={'populate_existing': True}.",
            )
        return correct(
            "15.2", "one INSERT ... ON CONFLICT DO UPDATE, ids kept, and the objects carry the new names."
        )
    finally:
        await _remove_check_sensors(Session, sensor_class)


def _loaded(obj: Any) -> dict[str, Any]:
    """The attribute values an ORM object holds now, read without any I/O."""
    return dict(sa_inspect(obj).dict) if obj is not None else {}


def _returned_names(returned: Any, sensor_class: Any) -> dict[str, Any] | Verdict:
    try:
        items = list(returned)
    except TypeError:
        return wrong("15.2", f"return the saved sensors as a list of Sensor objects, not {returned!r}.")
    if not items or not all(isinstance(item, sensor_class) for item in items):
        kinds = sorted({type(item).__name__ for item in items}) or ["nothing"]
        return wrong(
            "15.2",
            f"return Sensor objects (you returned {', '.join(kinds)}): add .returning(Sensor) and read "
            "the result with session.scalars(...).",
        )
    names = {str(_loaded(item).get("code")): _loaded(item).get("name") for item in items}
    if set(names) != {row["code"] for row in INCOMING}:
        return wrong("15.2", f"return one Sensor per row saved; you returned {sorted(map(str, names))}.")
    return names


# 15.3 ------------------------------------------------------------------------------------------

ReadingBatches = Callable[[AsyncEngine, int], Any]
SIZE = 5
EXTRA_READINGS = 12


async def _check_sensor(engine: AsyncEngine, reading_class: Any, add: bool) -> None:
    """Add (or remove) a sensor X-S with readings, so the table holds several batches."""
    readings = reading_class.__table__
    sensors = next(iter(readings.c.sensor_id.foreign_keys)).column.table
    async with engine.begin() as conn:
        found = await conn.scalar(select(sensors.c.id).where(sensors.c.code == "X-S"))
        if found is not None:
            await conn.execute(delete(readings).where(readings.c.sensor_id == found))
            await conn.execute(delete(sensors).where(sensors.c.id == found))
        if add:
            sensor_id = (
                await conn.execute(insert(sensors).values(code="X-S", name="check").returning(sensors.c.id))
            ).scalar_one()
            await conn.execute(
                insert(readings),
                [{"sensor_id": sensor_id, "value": 100 + n / 4} for n in range(EXTRA_READINGS)],
            )


async def _expected(engine: AsyncEngine, reading_class: Any) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(reading_class.id, reading_class.value).order_by(reading_class.id))
        return [tuple(row) for row in rows]


def _checked_out(engine: AsyncEngine) -> int:
    """How many of the engine's pooled connections are in use now."""
    pool: Any = engine.pool  # QueuePool and friends count them; every pool the notebooks use does
    return int(pool.checkedout())


async def _drain(batches: Any) -> list[list[Any]]:
    async with asyncio.timeout(TIME_LIMIT):
        return [list(batch) async for batch in batches]


def _as_tuples(batches: list[list[Any]]) -> list[tuple[Any, ...]] | None:
    try:
        return [tuple(row) for batch in batches for row in batch]
    except TypeError:
        return None


@check("15.3")
async def check_reading_batches(
    reading_batches: ReadingBatches, engine: AsyncEngine, reading_class: Any
) -> Verdict:
    """Stream all readings in batches of 5, then stop a second stream after its first batch."""
    await _check_sensor(engine, reading_class, add=True)
    opened: list[Connection] = []
    track = opened.append  # one bound method, so that event.remove() finds it
    event.listen(engine.sync_engine, "engine_connect", track)
    try:
        expected = await _expected(engine, reading_class)
        return await _check_batches(reading_batches, engine, expected)
    finally:
        event.remove(engine.sync_engine, "engine_connect", track)
        for conn in opened:  # a connection the learner's code left open (it holds a transaction)
            if not conn.closed:
                await greenlet_spawn(conn.close)
        await _check_sensor(engine, reading_class, add=False)


async def _check_batches(
    reading_batches: ReadingBatches, engine: AsyncEngine, expected: list[tuple[Any, ...]]
) -> Verdict:
    batches_of = reading_batches(engine, SIZE)
    if not hasattr(batches_of, "__anext__"):
        if inspect.isawaitable(batches_of):
            await batches_of  # the placeholder raises NotImplementedError here: "not attempted"
        return wrong(
            "15.3",
            "reading_batches must be an async generator (async def with `yield batch` inside), so the "
            "caller gets each batch while the rest is still on the server.",
        )
    checked_out = _checked_out(engine)
    with statements_of(engine) as sent:
        try:
            batches = await _drain(batches_of)
        except AsyncMethodRequired:
            return wrong(
                "15.3",
                "conn.execute() refuses a server-side cursor (AsyncMethodRequired): open the result with "
                "`async with conn.stream(statement) as result:` instead.",
            )
        except TimeoutError:
            return wrong("15.3", f"your generator was still running after {TIME_LIMIT:.0f} s.")
    selects = [options for sql, options in sent if _verb(sql) == "SELECT"]
    if _checked_out(engine) > checked_out:
        return wrong(
            "15.3",
            "after the last batch your generator still holds a connection: open it with "
            "`async with engine.connect() as conn:` inside the generator.",
        )
    if not any(options.get("stream_results") for options in selects):
        return wrong(
            "15.3",
            "the rows were fetched all at once (a buffered execute()) before the first batch: stream "
            "them, with `async with conn.stream(...)`, so only one batch at a time is in memory.",
        )
    rows = _as_tuples(batches)
    if rows is None or any(len(row) != 2 for row in rows):
        return wrong("15.3", "yield rows of two columns: select(Reading.id, Reading.value).")
    if not any(" ORDER BY " in sql.upper() for sql, _ in sent if _verb(sql) == "SELECT"):
        return wrong(
            "15.3",
            "your SELECT has no ORDER BY, so the database may return the readings in any order: add "
            ".order_by(Reading.id).",
        )
    if rows != expected:
        if sorted(rows) == sorted(expected):
            return wrong("15.3", "you yielded every reading, but not in id order: add .order_by(Reading.id).")
        return wrong("15.3", f"you yielded {len(rows)} rows; the table holds {len(expected)} readings.")
    sizes = [len(batch) for batch in batches]
    if any(size == 0 for size in sizes) or any(size != SIZE for size in sizes[:-1]) or sizes[-1] > SIZE:
        return wrong(
            "15.3",
            f"with size={SIZE} your batches held {sizes} rows: yield result.partitions() of a stream "
            "opened with yield_per=size.",
        )
    if not any(options.get("yield_per") == SIZE for options in selects):
        return wrong(
            "15.3",
            "the batches have the right size, but the cursor was not told: set "
            "execution_options(yield_per=size), or it fetches up to 1000 rows at a time whatever "
            "partitions() regroups.",
        )
    early = reading_batches(engine, SIZE)
    await anext(early)
    await early.aclose()  # the caller stops after one batch
    if _checked_out(engine) > checked_out:
        return wrong(
            "15.3",
            "after the caller stopped early (aclose()), your generator still holds its connection: "
            "use `async with engine.connect()` and `async with conn.stream(...)` inside it, so closing "
            "the generator closes both.",
        )
    return correct(
        "15.3",
        "a server-side cursor, batches of yield_per rows, and the connection back when the caller stops.",
    )
