"""The journal-store SPI and its SQLite implementation (stdlib ``sqlite3``, WAL).

A store keeps one row per run (function, arguments, status, attempt count, next due time,
lease and fencing token, outcome), one row per finished step (position, function name,
argument hash, outcome) and, for ``gather``, one row per finished child in its parent's
slot. Every write that matters is conditional: first write wins, and writes by a worker
whose fencing token is stale raise :class:`~dispytch.durable.errors.LeaseLostError`.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable
from urllib.parse import unquote, urlsplit

from dispytch.durable.errors import LeaseLostError
from dispytch.errors import ConfigError

__all__ = [
    "FINAL_STATUSES",
    "RETRYABLE_STATUSES",
    "STATUSES",
    "ChildOutcome",
    "CompletionFeed",
    "Journal",
    "JournalStore",
    "NewRun",
    "RunRecord",
    "SQLiteJournalStore",
    "StepRecord",
]

T = TypeVar("T")

#: A run in one of these is over: its outcome is stored and changes only by an operator's
#: retry (``retry_run``).
FINAL_STATUSES = frozenset({"succeeded", "failed", "dead", "cancelled"})

#: The final statuses ``retry_run`` starts over from.
RETRYABLE_STATUSES = frozenset({"failed", "dead", "cancelled"})

#: Every status a run can have. ``pending``: waiting for a worker; ``running``: a worker
#: took its lease (``lease_until`` tells whether it is still alive); ``waiting``: on
#: ``gather``/``any``/``race`` children; ``sleeping``: until ``due`` (a durable sleep);
#: ``retrying``: until ``due`` (backoff); ``limited``: over its function's concurrency
#: limit; then the final ones.
STATUSES = frozenset(
    {"pending", "running", "waiting", "sleeping", "retrying", "limited", *FINAL_STATUSES}
)


@dataclass(frozen=True)
class NewRun:
    """A run to create.

    ``parent`` is ``(parent run id, slot position, index, number of children)`` for a
    child of ``gather``.
    """

    id: str
    function: str
    args: str
    args_hash: str
    parent: tuple[str, str, int, int] | None = None


@dataclass(frozen=True)
class RunRecord:
    """A run as stored.

    ``status`` is one of :data:`STATUSES`. ``outcome`` is the result's JSON text
    (succeeded) or the error's (failed, dead, cancelled). ``attempts`` counts failed
    attempts so far; ``due`` is when a retrying or sleeping run may go on; ``created`` and
    ``updated`` are epoch seconds. A child of ``gather``/``any``/``race`` has an id
    ``<parent id>/<slot>.<index>``, so a run's descendants are the ids under ``<id>/``.
    """

    id: str
    function: str
    args: str
    args_hash: str
    status: str
    attempts: int
    due: float
    lease_token: int
    lease_until: float
    outcome: str | None
    parent: tuple[str, str, int, int] | None
    created: float
    updated: float

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


@dataclass(frozen=True)
class StepRecord:
    """A journalled step: ``ok`` with its result's JSON text, ``error`` with the error's,
    or ``waiting`` (a ``gather`` slot whose children run; ``outcome`` is their number).

    ``created`` is when the store journalled it (epoch seconds; set by the store, 0.0 on a
    record not stored yet, and not part of equality).
    """

    position: str
    function: str
    args_hash: str
    status: str
    outcome: str
    created: float = field(default=0.0, compare=False)


@dataclass(frozen=True)
class ChildOutcome:
    """A finished child in its parent's slot: ``ok`` or ``error`` and the JSON text."""

    status: str
    outcome: str


@dataclass
class Journal:
    """Everything a worker needs to resume a run, read at once."""

    run: RunRecord
    steps: dict[str, StepRecord] = field(default_factory=dict)
    children: dict[str, dict[int, ChildOutcome]] = field(default_factory=dict)


@runtime_checkable
class JournalStore(Protocol):
    """What a journal store implements (see the conformance suite in
    :mod:`dispytch.testing.journal`). Times are epoch seconds (``time.time()``)."""

    async def open(self) -> None:
        """Connect and create the schema when missing (idempotent)."""

    async def close(self) -> None:
        """Disconnect (idempotent)."""

    async def create_run(self, run: NewRun) -> tuple[RunRecord, bool]:
        """Create the run, or return the existing one of that id: ``(record, created)``."""

    async def get_run(self, run_id: str) -> RunRecord | None:
        """The run's row alone (status and outcome), or None."""

    async def load(self, run_id: str) -> Journal | None:
        """The run with its steps and children, in one read, or None."""

    async def acquire(
        self, run_id: str, ttl: float, *, concurrency: int | None = None
    ) -> int | None:
        """Take the run's lease when free or expired and the run not final: status
        ``running`` and the new fencing token, else None.

        With ``concurrency``, only while fewer than that many *other* runs of the same
        function hold an unexpired lease (counted and taken atomically, across every
        process of the store): that is the cluster-wide concurrency limit.
        """

    async def renew(self, run_id: str, token: int, ttl: float) -> bool:
        """Extend the lease if ``token`` still holds it."""

    async def release(
        self, run_id: str, token: int, status: str | None = None, *, due: float | None = None
    ) -> None:
        """Give the lease up if ``token`` holds it and the run is not final: status
        ``status`` (default ``pending``), and ``due`` when given (a durable sleep)."""

    async def put_step(self, run_id: str, token: int, step: StepRecord) -> bool:
        """Journal a step (first write wins: False when the position was taken).

        Raises:
            LeaseLostError: ``token`` no longer holds the run's lease.
        """

    async def set_retry(self, run_id: str, token: int, attempts: int, due: float) -> None:
        """Journal the attempt count and the next due time, and give the lease up.

        Called before the delayed redelivery, so a crash does not reset the budget.

        Raises:
            LeaseLostError: ``token`` no longer holds the run's lease.
        """

    async def complete(self, run_id: str, token: int, status: str, outcome: str) -> bool:
        """Store the run's final status and outcome (first completion wins).

        Raises:
            LeaseLostError: ``token`` no longer holds the run's lease.
        """

    async def complete_child(
        self, parent_id: str, position: str, index: int, child: ChildOutcome
    ) -> tuple[bool, int]:
        """Record a child's outcome in its parent's slot (first write wins).

        Returns:
            Whether this write recorded it, and how many children of the slot are done.
        """

    # -- operations -----------------------------------------------------------------
    async def list_runs(
        self,
        *,
        status: Collection[str] | None = None,
        function: str | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        """Runs, newest first (``created`` descending, then ``id``), at most ``limit``;
        only those whose status is in ``status`` and whose function is ``function`` when
        given."""

    async def retry_run(self, run_id: str) -> bool:
        """Start a run over from a final status in :data:`RETRYABLE_STATUSES`.

        The run and each of its descendants (ids under ``<run_id>/``) in such a status go
        back to ``pending`` with ``attempts`` 0, ``due`` 0 and no outcome; their ``error``
        steps and ``error`` children are deleted (so the failed step runs again); ``ok``
        steps are kept (never redone). False when the run is missing or not retryable.
        """

    async def cancel_run(self, run_id: str, outcome: str) -> list[str]:
        """Cancel the run and each of its non-final descendants (ids under
        ``<run_id>/``): status ``cancelled``, ``outcome`` stored, lease fenced (the token
        moves on, so a running worker's next write raises
        :class:`~dispytch.durable.errors.LeaseLostError`).

        Returns:
            The ids cancelled (empty when the run is missing or final).
        """


@runtime_checkable
class CompletionFeed(Protocol):
    """Optional: a store that pushes completions (PostgreSQL's LISTEN/NOTIFY).

    A Durable whose store implements it waits for results on the feed instead of reading
    the run again and again.
    """

    async def watch_completions(
        self, callback: Callable[[str | None], None]
    ) -> Callable[[], Awaitable[None]]:
        """Call ``callback(run_id)`` on this loop when a *watched* run of the store reaches
        a final status in any process, ``callback(None)`` when notices may have been
        missed (the feed reconnected: every waiter reads again). Returns an async
        ``stop()``.
        """

    async def watch_run(self, run_id: str) -> None:
        """Mark the run as waited for: its completion (or cancellation) is notified from
        now on. Runs nobody watches send no notice (a notice costs the store a
        serialising lock per commit). A store may notify every run and make this a no-op.
        """


_SCHEMA = """
CREATE TABLE IF NOT EXISTS dispytch_runs (
    id TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    args TEXT NOT NULL,
    args_hash TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due REAL NOT NULL DEFAULT 0,
    lease_token INTEGER NOT NULL DEFAULT 0,
    lease_until REAL NOT NULL DEFAULT 0,
    outcome TEXT,
    parent_id TEXT,
    parent_position TEXT,
    parent_index INTEGER,
    parent_count INTEGER,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dispytch_steps (
    run_id TEXT NOT NULL,
    position TEXT NOT NULL,
    function TEXT NOT NULL,
    args_hash TEXT NOT NULL,
    status TEXT NOT NULL,
    outcome TEXT NOT NULL,
    created REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, position)
);
CREATE TABLE IF NOT EXISTS dispytch_children (
    run_id TEXT NOT NULL,
    position TEXT NOT NULL,
    idx INTEGER NOT NULL,
    status TEXT NOT NULL,
    outcome TEXT NOT NULL,
    PRIMARY KEY (run_id, position, idx)
);
CREATE INDEX IF NOT EXISTS dispytch_runs_created ON dispytch_runs (created);
CREATE INDEX IF NOT EXISTS dispytch_runs_leased ON dispytch_runs (function)
    WHERE lease_until > 0;
"""

_FINAL = "('succeeded', 'failed', 'dead', 'cancelled')"
_RETRYABLE = "('failed', 'dead', 'cancelled')"


def _subtree(run_id: str) -> tuple[str, str, str]:
    """``(id, low, high)``: the run's id and the bounds of its descendants' ids
    (``low <= id < high``, byte order: ``"0"`` follows ``"/"``)."""
    return run_id, run_id + "/", run_id + "0"


_RUN_COLUMNS = (
    "id, function, args, args_hash, status, attempts, due, lease_token, lease_until, "
    "outcome, parent_id, parent_position, parent_index, parent_count, created, updated"
)


def _run(row: tuple[Any, ...]) -> RunRecord:
    parent = None if row[10] is None else (row[10], row[11], int(row[12]), int(row[13]))
    return RunRecord(
        id=row[0],
        function=row[1],
        args=row[2],
        args_hash=row[3],
        status=row[4],
        attempts=int(row[5]),
        due=float(row[6]),
        lease_token=int(row[7]),
        lease_until=float(row[8]),
        outcome=row[9],
        parent=parent,
        created=float(row[14]),
        updated=float(row[15]),
    )


class SQLiteJournalStore:
    """A journal in a SQLite file (WAL), shared by every process that opens the file.

    All SQL runs on one thread of this store's own, so the event loop never waits on disk.
    Writes take SQLite's write lock up front (``BEGIN IMMEDIATE``), which makes each
    conditional write atomic across processes too.

    Args:
        path: The database file (created with its folder when missing).
        synchronous: SQLite's ``synchronous`` pragma; ``NORMAL`` is durable against a
            process crash in WAL mode, ``FULL`` also against power loss.
    """

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "NORMAL") -> None:
        if synchronous.upper() not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ConfigError(
                f"synchronous={synchronous!r} is not a SQLite synchronous mode.\n"
                "Use NORMAL (the default) or FULL."
            )
        self.path = os.fspath(path)
        self.synchronous = synchronous.upper()
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> SQLiteJournalStore:
        """``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``."""
        parts = urlsplit(url)
        path = unquote(parts.path)
        if parts.netloc:
            raise ConfigError(
                f"{url!r} names a host; a SQLite journal is a file.\n"
                "Write sqlite:///relative.db or sqlite:////absolute/path.db."
            )
        path = path[1:] if path.startswith("/") else path
        if not path:
            raise ConfigError(f"{url!r} names no file.\nWrite sqlite:///journal.db.")
        options = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
        unknown = set(options) - {"synchronous"}
        if unknown:
            raise ConfigError(
                f"Unknown SQLite journal option(s): {', '.join(sorted(unknown))}.\n"
                "The one option is synchronous=NORMAL|FULL."
            )
        return cls(path, synchronous=options.get("synchronous", "NORMAL"))

    def __repr__(self) -> str:
        return f"SQLiteJournalStore({self.path!r})"

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None or self._conn is None:
            await self.open()
        assert self._executor is not None and self._conn is not None
        conn = self._conn
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, conn)

    async def open(self) -> None:
        if self._conn is not None:
            return
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dispytch-journal")

        def connect() -> sqlite3.Connection:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.executescript(_SCHEMA)  # CREATE ... IF NOT EXISTS: safe to race
            columns = {row[1] for row in conn.execute("PRAGMA table_info(dispytch_steps)")}
            if "created" not in columns:  # a journal of an earlier version
                try:
                    conn.execute(
                        "ALTER TABLE dispytch_steps ADD COLUMN created REAL NOT NULL DEFAULT 0"
                    )
                except sqlite3.OperationalError as exc:  # another process added it
                    if "duplicate column" not in str(exc):
                        raise
            return conn

        loop = asyncio.get_running_loop()
        conn = await loop.run_in_executor(executor, connect)
        if self._conn is not None:  # opened concurrently meanwhile
            await loop.run_in_executor(executor, conn.close)
            executor.shutdown(wait=False)
            return
        self._executor, self._conn = executor, conn

    async def close(self) -> None:
        conn, executor = self._conn, self._executor
        self._conn = self._executor = None
        if conn is not None and executor is not None:
            await asyncio.get_running_loop().run_in_executor(executor, conn.close)
            executor.shutdown(wait=True)

    # -- the verbs ------------------------------------------------------------------
    async def create_run(self, run: NewRun) -> tuple[RunRecord, bool]:
        def tx(conn: sqlite3.Connection) -> tuple[RunRecord, bool]:
            now = time.time()
            parent = run.parent or (None, None, None, None)
            cur = conn.execute(
                f"INSERT INTO dispytch_runs ({_RUN_COLUMNS}) "
                "VALUES (?, ?, ?, ?, 'pending', 0, 0, 0, 0, NULL, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO NOTHING",
                (run.id, run.function, run.args, run.args_hash, *parent, now, now),
            )
            created = cur.rowcount == 1
            row = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM dispytch_runs WHERE id = ?", (run.id,)
            ).fetchone()
            return _run(row), created

        return await self._call(tx)

    async def get_run(self, run_id: str) -> RunRecord | None:
        def q(conn: sqlite3.Connection) -> RunRecord | None:
            row = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM dispytch_runs WHERE id = ?", (run_id,)
            ).fetchone()
            return None if row is None else _run(row)

        return await self._call(q)

    async def load(self, run_id: str) -> Journal | None:
        def q(conn: sqlite3.Connection) -> Journal | None:
            conn.execute("BEGIN")  # one snapshot for the three reads
            try:
                row = conn.execute(
                    f"SELECT {_RUN_COLUMNS} FROM dispytch_runs WHERE id = ?", (run_id,)
                ).fetchone()
                if row is None:
                    return None
                journal = Journal(_run(row))
                for pos, fn, h, status, outcome, at in conn.execute(
                    "SELECT position, function, args_hash, status, outcome, created "
                    "FROM dispytch_steps WHERE run_id = ?",
                    (run_id,),
                ):
                    journal.steps[pos] = StepRecord(pos, fn, h, status, outcome, float(at))
                for pos, idx, status, outcome in conn.execute(
                    "SELECT position, idx, status, outcome FROM dispytch_children WHERE run_id = ?",
                    (run_id,),
                ):
                    journal.children.setdefault(pos, {})[int(idx)] = ChildOutcome(status, outcome)
                return journal
            finally:
                conn.execute("COMMIT")

        return await self._call(q)

    async def acquire(
        self, run_id: str, ttl: float, *, concurrency: int | None = None
    ) -> int | None:
        def tx(conn: sqlite3.Connection) -> int | None:
            now = time.time()
            if concurrency is not None:
                # Under BEGIN IMMEDIATE: the count and the take are one atomic step for
                # every process on the file.
                (busy,) = conn.execute(
                    "SELECT COUNT(*) FROM dispytch_runs WHERE lease_until > 0 AND function = "
                    "(SELECT function FROM dispytch_runs WHERE id = ?) AND lease_until >= ? "
                    "AND id <> ?",
                    (run_id, now, run_id),
                ).fetchone()
                if int(busy) >= concurrency:
                    conn.execute(
                        "UPDATE dispytch_runs SET status = 'limited', updated = ? WHERE id = ? "
                        f"AND lease_until < ? AND status NOT IN {_FINAL} "
                        "AND status <> 'limited'",
                        (now, run_id, now),
                    )
                    return None
            row = conn.execute(
                "UPDATE dispytch_runs SET lease_token = lease_token + 1, lease_until = ?, "
                "status = 'running', updated = ? WHERE id = ? AND lease_until < ? "
                f"AND status NOT IN {_FINAL} RETURNING lease_token",
                (now + ttl, now, run_id, now),
            ).fetchone()
            return None if row is None else int(row[0])

        if concurrency is not None:
            return await self._call(self._write(tx))
        return await self._call(tx)

    async def renew(self, run_id: str, token: int, ttl: float) -> bool:
        def tx(conn: sqlite3.Connection) -> bool:
            now = time.time()
            cur = conn.execute(
                "UPDATE dispytch_runs SET lease_until = ? WHERE id = ? AND lease_token = ? "
                "AND lease_until > 0",
                (now + ttl, run_id, token),
            )
            return cur.rowcount == 1

        return await self._call(tx)

    async def release(
        self, run_id: str, token: int, status: str | None = None, *, due: float | None = None
    ) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE dispytch_runs SET lease_until = 0, status = ?, due = COALESCE(?, due), "
                "updated = ? WHERE id = ? AND lease_token = ? "
                f"AND status NOT IN {_FINAL}",
                (status or "pending", due, time.time(), run_id, token),
            )

        await self._call(tx)

    @staticmethod
    def _fenced(conn: sqlite3.Connection, run_id: str, token: int) -> None:
        """Inside a write transaction: raise unless ``token`` holds the lease."""
        row = conn.execute(
            "SELECT lease_token, lease_until FROM dispytch_runs WHERE id = ?", (run_id,)
        ).fetchone()
        if row is None or int(row[0]) != token or float(row[1]) == 0:
            raise LeaseLostError(
                f"Run {run_id}: the lease of token {token} was taken over "
                f"(now {None if row is None else row[0]}); this worker's write is refused."
            )

    def _write(self, body: Callable[[sqlite3.Connection], T]) -> Callable[[sqlite3.Connection], T]:
        def tx(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                out = body(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return out

        return tx

    async def put_step(self, run_id: str, token: int, step: StepRecord) -> bool:
        def body(conn: sqlite3.Connection) -> bool:
            self._fenced(conn, run_id, token)
            cur = conn.execute(
                "INSERT INTO dispytch_steps (run_id, position, function, args_hash, status, "
                "outcome, created) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (
                    run_id,
                    step.position,
                    step.function,
                    step.args_hash,
                    step.status,
                    step.outcome,
                    time.time(),
                ),
            )
            return cur.rowcount == 1

        return await self._call(self._write(body))

    async def set_retry(self, run_id: str, token: int, attempts: int, due: float) -> None:
        def body(conn: sqlite3.Connection) -> None:
            self._fenced(conn, run_id, token)
            conn.execute(
                "UPDATE dispytch_runs SET attempts = ?, due = ?, status = 'retrying', "
                "lease_until = 0, updated = ? WHERE id = ?",
                (attempts, due, time.time(), run_id),
            )

        await self._call(self._write(body))

    async def complete(self, run_id: str, token: int, status: str, outcome: str) -> bool:
        if status not in FINAL_STATUSES:
            raise ValueError(f"complete() takes a final status, not {status!r}.")

        def body(conn: sqlite3.Connection) -> bool:
            self._fenced(conn, run_id, token)
            cur = conn.execute(
                "UPDATE dispytch_runs SET status = ?, outcome = ?, lease_until = 0, "
                f"updated = ? WHERE id = ? AND status NOT IN {_FINAL}",
                (status, outcome, time.time(), run_id),
            )
            return cur.rowcount == 1

        return await self._call(self._write(body))

    async def complete_child(
        self, parent_id: str, position: str, index: int, child: ChildOutcome
    ) -> tuple[bool, int]:
        def body(conn: sqlite3.Connection) -> tuple[bool, int]:
            cur = conn.execute(
                "INSERT INTO dispytch_children (run_id, position, idx, status, outcome) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (parent_id, position, index, child.status, child.outcome),
            )
            (count,) = conn.execute(
                "SELECT COUNT(*) FROM dispytch_children WHERE run_id = ? AND position = ?",
                (parent_id, position),
            ).fetchone()
            return cur.rowcount == 1, int(count)

        return await self._call(self._write(body))

    # -- operations -----------------------------------------------------------------
    async def list_runs(
        self,
        *,
        status: Collection[str] | None = None,
        function: str | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        where: list[str] = []
        params: list[Any] = []
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            if not statuses:
                return []
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            params.extend(statuses)
        if function is not None:
            where.append("function = ?")
            params.append(function)
        sql = f"SELECT {_RUN_COLUMNS} FROM dispytch_runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created DESC, id LIMIT ?"
        params.append(max(0, int(limit)))

        def q(conn: sqlite3.Connection) -> list[RunRecord]:
            return [_run(row) for row in conn.execute(sql, params)]

        return await self._call(q)

    async def retry_run(self, run_id: str) -> bool:

        def body(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT status FROM dispytch_runs WHERE id = ?", (run_id,)
            ).fetchone()
            if row is None or row[0] not in RETRYABLE_STATUSES:
                return False
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM dispytch_runs WHERE (id = ? OR (id >= ? AND id < ?)) "
                    f"AND status IN {_RETRYABLE}",
                    _subtree(run_id),
                )
            ]
            now = time.time()
            for rid in ids:
                conn.execute(
                    "UPDATE dispytch_runs SET status = 'pending', attempts = 0, due = 0, "
                    "outcome = NULL, lease_until = 0, updated = ? WHERE id = ?",
                    (now, rid),
                )
                conn.execute(
                    "DELETE FROM dispytch_steps WHERE run_id = ? AND status = 'error'", (rid,)
                )
                conn.execute(
                    "DELETE FROM dispytch_children WHERE run_id = ? AND status = 'error'", (rid,)
                )
            return True

        return await self._call(self._write(body))

    async def cancel_run(self, run_id: str, outcome: str) -> list[str]:

        def body(conn: sqlite3.Connection) -> list[str]:
            row = conn.execute(
                "SELECT status FROM dispytch_runs WHERE id = ?", (run_id,)
            ).fetchone()
            if row is None or row[0] in FINAL_STATUSES:
                return []
            rows = conn.execute(
                "UPDATE dispytch_runs SET status = 'cancelled', outcome = ?, "
                "lease_token = lease_token + 1, lease_until = 0, updated = ? "
                "WHERE (id = ? OR (id >= ? AND id < ?)) "
                f"AND status NOT IN {_FINAL} RETURNING id",
                (outcome, time.time(), *_subtree(run_id)),
            ).fetchall()
            return sorted(r[0] for r in rows)

        return await self._call(self._write(body))
