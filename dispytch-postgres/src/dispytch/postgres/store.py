"""The durable-functions journal in PostgreSQL, through asyncpg.

Same tables and semantics as core's SQLite store (see :mod:`dispytch.durable.store`).
Leases use the server's clock (``clock_timestamp()``), so workers on several machines
agree on when one expired. One statement per verb: resuming a run is one statement (the
run with its steps and children aggregated as JSON, one snapshot, and the lease taken in
the same statement: :meth:`PostgresJournalStore.load_and_acquire`); a step is the fencing check
(the run's row locked ``FOR SHARE``, so a concurrent takeover waits for it) and the
first-write-wins insert in one round trip; a completion or a retry is one UPDATE whose
WHERE holds the fence (a second read only when it changed nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
from dispytch.durable.errors import LeaseLostError
from dispytch.durable.store import (
    ChildOutcome,
    Journal,
    NewRun,
    RunRecord,
    StepRecord,
)
from dispytch.errors import ConfigError

__all__ = ["PostgresJournalStore"]

log = logging.getLogger("dispytch.postgres")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS {p}runs (
    id TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    args TEXT NOT NULL,
    args_hash TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due DOUBLE PRECISION NOT NULL DEFAULT 0,
    lease_token BIGINT NOT NULL DEFAULT 0,
    lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
    outcome TEXT,
    parent_id TEXT,
    parent_position TEXT,
    parent_index INTEGER,
    parent_count INTEGER,
    created DOUBLE PRECISION NOT NULL,
    updated DOUBLE PRECISION NOT NULL,
    watched BOOLEAN NOT NULL DEFAULT false
);
ALTER TABLE {p}runs ADD COLUMN IF NOT EXISTS watched BOOLEAN NOT NULL DEFAULT false;
CREATE TABLE IF NOT EXISTS {p}steps (
    run_id TEXT NOT NULL,
    position TEXT NOT NULL,
    function TEXT NOT NULL,
    args_hash TEXT NOT NULL,
    status TEXT NOT NULL,
    outcome TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, position)
);
ALTER TABLE {p}steps ADD COLUMN IF NOT EXISTS created DOUBLE PRECISION NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS {p}children (
    run_id TEXT NOT NULL,
    position TEXT NOT NULL,
    idx INTEGER NOT NULL,
    status TEXT NOT NULL,
    outcome TEXT NOT NULL,
    PRIMARY KEY (run_id, position, idx)
);
CREATE INDEX IF NOT EXISTS {p}runs_created ON {p}runs (created);
CREATE INDEX IF NOT EXISTS {p}runs_leased ON {p}runs (function) WHERE lease_until > 0;
"""

_COLUMNS = (
    "id, function, args, args_hash, status, attempts, due, lease_token, lease_until, "
    "outcome, parent_id, parent_position, parent_index, parent_count, created, updated"
)
_NOW = "extract(epoch from clock_timestamp())"
_FINAL = "('succeeded', 'failed', 'dead', 'cancelled')"
_RETRYABLE = "('failed', 'dead', 'cancelled')"
# A run and its descendants (ids under "<id>/"): $1 is the id.
_SUBTREE = "(id = $1 OR starts_with(id, $1 || '/'))"


def _run(row: Any) -> RunRecord:
    parent = (
        None
        if row["parent_id"] is None
        else (row["parent_id"], row["parent_position"], row["parent_index"], row["parent_count"])
    )
    return RunRecord(
        id=row["id"],
        function=row["function"],
        args=row["args"],
        args_hash=row["args_hash"],
        status=row["status"],
        attempts=int(row["attempts"]),
        due=float(row["due"]),
        lease_token=int(row["lease_token"]),
        lease_until=float(row["lease_until"]),
        outcome=row["outcome"],
        parent=parent,
        created=float(row["created"]),
        updated=float(row["updated"]),
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset between two uses of a connection: nothing to send.

    asyncpg's default sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``
    on every release, one more round trip per statement. This store leaves no session
    state behind (no LISTEN, no SET, no cursors; its advisory locks are transaction-scoped),
    and asyncpg still rolls back a transaction left open before calling this.
    """


class PostgresJournalStore:
    """A journal in PostgreSQL tables (``dispytch_runs``, ``_steps``, ``_children``).

    Args:
        dsn: A libpq-style URL (``postgresql://user@host:5432/db``).
        table_prefix: Prefix of the three tables (default ``dispytch_``).
        min_size: Connections the pool keeps open.
        max_size: Connections the pool opens at most.
        notify: Send a notice (``NOTIFY <prefix>runs_done``) when a *watched* run
            (:meth:`watch_run`: a process waits for its result) reaches a final status,
            in the same statement, so ``await call.result()`` in any process is pushed
            the completion (:meth:`watch_completions`) instead of reading the run again
            and again. ``False``: no notices; waiters poll with backoff.
    """

    def __init__(
        self,
        dsn: str,
        *,
        table_prefix: str = "dispytch_",
        min_size: int = 1,
        max_size: int = 10,
        notify: bool = True,
    ) -> None:
        if not table_prefix.replace("_", "").isalnum() or not table_prefix[0].isalpha():
            raise ConfigError(
                f"table_prefix={table_prefix!r} is not a plain SQL name prefix.\n"
                "Use letters, digits and underscores, starting with a letter."
            )
        self.dsn = dsn
        self.prefix = table_prefix.lower()
        self.min_size = min_size
        self.max_size = max_size
        self.notify = notify
        self.channel = f"{self.prefix}runs_done"
        self._pool: asyncpg.Pool | None = None

    @classmethod
    def from_url(cls, url: str) -> PostgresJournalStore:
        """``postgresql://user@host/db?table_prefix=p_&min_size=1&max_size=10``; other
        query parameters go to asyncpg."""
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        kwargs: dict[str, Any] = {}
        if "table_prefix" in query:
            kwargs["table_prefix"] = query.pop("table_prefix")
        if "notify" in query:
            flag = query.pop("notify").lower()
            if flag not in {"true", "false", "1", "0", "yes", "no"}:
                raise ConfigError(f"notify={flag!r} in {url!r}: write notify=true or notify=false.")
            kwargs["notify"] = flag in {"true", "1", "yes"}
        for name in ("min_size", "max_size"):
            if name in query:
                try:
                    kwargs[name] = int(query.pop(name))
                except ValueError:
                    raise ConfigError(
                        f"{name}={query.get(name)!r} in {url!r} is not a whole number.\n"
                        f"Write e.g. {name}=4."
                    ) from None
        dsn = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(query)))
        return cls(dsn, **kwargs)

    def __repr__(self) -> str:
        parts = urlsplit(self.dsn)
        host = parts.hostname or ""
        return f"PostgresJournalStore({host}{parts.path!s}, prefix={self.prefix!r})"

    def _sql(self, text: str) -> str:
        return text.replace("{p}", self.prefix)

    async def open(self) -> None:
        if self._pool is not None:
            return
        pool = await asyncpg.create_pool(
            self.dsn, min_size=self.min_size, max_size=self.max_size, reset=_keep_session
        )
        async with pool.acquire() as conn, conn.transaction():
            # Concurrent CREATE TABLE IF NOT EXISTS can collide: one at a time.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self.prefix)
            await conn.execute(self._sql(_SCHEMA))
        if self._pool is not None:  # opened concurrently meanwhile
            await pool.close()
            return
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("The PostgreSQL journal store is not open; call open() first.")
        return self._pool

    async def _ensure(self) -> asyncpg.Pool:
        if self._pool is None:
            await self.open()
        return self.pool

    async def create_run(self, run: NewRun) -> tuple[RunRecord, bool]:
        pool = await self._ensure()
        parent = run.parent or (None, None, None, None)
        row = await pool.fetchrow(
            self._sql(
                f"INSERT INTO {{p}}runs ({_COLUMNS}) VALUES ($1, $2, $3, $4, 'pending', 0, 0, "
                f"0, 0, NULL, $5, $6, $7, $8, {_NOW}, {_NOW}) ON CONFLICT (id) DO NOTHING "
                f"RETURNING {_COLUMNS}"
            ),
            run.id, run.function, run.args, run.args_hash, *parent,
        )  # fmt: skip
        if row is not None:
            return _run(row), True
        existing = await self.get_run(run.id)
        assert existing is not None
        return existing, False

    async def get_run(self, run_id: str) -> RunRecord | None:
        pool = await self._ensure()
        row = await pool.fetchrow(
            self._sql(f"SELECT {_COLUMNS} FROM {{p}}runs WHERE id = $1"), run_id
        )
        return None if row is None else _run(row)

    async def load(self, run_id: str) -> Journal | None:
        """The run, its steps and its children in one statement (one snapshot)."""
        pool = await self._ensure()
        row = await pool.fetchrow(
            self._sql(
                f"SELECT {_COLUMNS}, "
                "(SELECT coalesce(json_agg(json_build_array(position, function, args_hash, "
                "status, outcome, created)), '[]') FROM {p}steps WHERE run_id = $1) "
                "AS steps_json, "
                "(SELECT coalesce(json_agg(json_build_array(position, idx, status, outcome)), "
                "'[]') FROM {p}children WHERE run_id = $1) AS children_json "
                "FROM {p}runs WHERE id = $1"
            ),
            run_id,
        )
        return None if row is None else self._journal(row)

    @staticmethod
    def _journal(row: Any) -> Journal:
        journal = Journal(_run(row))
        for position, function, args_hash, status, outcome, at in json.loads(row["steps_json"]):
            journal.steps[position] = StepRecord(
                position, function, args_hash, status, outcome, float(at)
            )
        for position, idx, status, outcome in json.loads(row["children_json"]):
            journal.children.setdefault(position, {})[int(idx)] = ChildOutcome(status, outcome)
        return journal

    async def load_and_acquire(
        self, run_id: str, ttl: float, now: float
    ) -> tuple[Journal | None, int | None]:
        """:meth:`load` and :meth:`acquire` (no concurrency limit) in one statement: the
        journal (as it was before the lease was taken) and the new fencing token, or None
        when the run is final, not due yet (``due`` above ``now``, the caller's clock, as
        the engine compares it) or leased by another worker. The engine uses it when a
        store has it and the run's function has no concurrency limit."""
        pool = await self._ensure()
        row = await pool.fetchrow(
            self._sql(
                "WITH acq AS (UPDATE {p}runs SET lease_token = lease_token + 1, "
                f"lease_until = {_NOW} + $2, status = 'running', updated = {_NOW} "
                f"WHERE id = $1 AND lease_until < {_NOW} AND status NOT IN {_FINAL} "
                f"AND due <= $3 RETURNING lease_token) SELECT {_COLUMNS}, "
                "(SELECT lease_token FROM acq) AS acquired, "
                "(SELECT coalesce(json_agg(json_build_array(position, function, args_hash, "
                "status, outcome, created)), '[]') FROM {p}steps WHERE run_id = $1) "
                "AS steps_json, "
                "(SELECT coalesce(json_agg(json_build_array(position, idx, status, outcome)), "
                "'[]') FROM {p}children WHERE run_id = $1) AS children_json "
                "FROM {p}runs WHERE id = $1"
            ),
            run_id,
            ttl,
            now,
        )
        if row is None:
            return None, None
        token = row["acquired"]
        return self._journal(row), None if token is None else int(token)

    _ACQUIRE = (
        f"UPDATE {{p}}runs SET lease_token = lease_token + 1, lease_until = {_NOW} + $2, "
        f"status = 'running', updated = {_NOW} WHERE id = $1 AND lease_until < {_NOW} "
        f"AND status NOT IN {_FINAL} RETURNING lease_token"
    )

    async def acquire(
        self, run_id: str, ttl: float, *, concurrency: int | None = None
    ) -> int | None:
        pool = await self._ensure()
        if concurrency is None:
            token = await pool.fetchval(self._sql(self._ACQUIRE), run_id, ttl)
            return None if token is None else int(token)
        async with pool.acquire() as conn, conn.transaction():
            function = await conn.fetchval(
                self._sql("SELECT function FROM {p}runs WHERE id = $1"), run_id
            )
            if function is None:
                return None
            # One taker per function at a time (every process), so count-then-take is
            # atomic: the lock is the transaction's, released at its commit.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1))", f"{self.prefix}limit/{function}"
            )
            busy = await conn.fetchval(
                self._sql(
                    "SELECT count(*) FROM {p}runs WHERE lease_until > 0 AND function = $1 "
                    f"AND lease_until >= {_NOW} AND id <> $2"
                ),
                function,
                run_id,
            )
            if int(busy) >= concurrency:
                await conn.execute(
                    self._sql(
                        f"UPDATE {{p}}runs SET status = 'limited', updated = {_NOW} "
                        f"WHERE id = $1 AND lease_until < {_NOW} AND status NOT IN {_FINAL} "
                        "AND status <> 'limited'"
                    ),
                    run_id,
                )
                return None
            token = await conn.fetchval(self._sql(self._ACQUIRE), run_id, ttl)
            return None if token is None else int(token)

    async def renew(self, run_id: str, token: int, ttl: float) -> bool:
        pool = await self._ensure()
        done = await pool.fetchval(
            self._sql(
                f"UPDATE {{p}}runs SET lease_until = {_NOW} + $3 WHERE id = $1 "
                "AND lease_token = $2 AND lease_until > 0 RETURNING 1"
            ),
            run_id,
            token,
            ttl,
        )
        return done is not None

    async def release(
        self, run_id: str, token: int, status: str | None = None, *, due: float | None = None
    ) -> None:
        pool = await self._ensure()
        await pool.execute(
            self._sql(
                "UPDATE {p}runs SET lease_until = 0, status = $3, due = COALESCE($4, due), "
                f"updated = {_NOW} WHERE id = $1 AND lease_token = $2 "
                f"AND status NOT IN {_FINAL}"
            ),
            run_id,
            token,
            status or "pending",
            due,
        )

    @staticmethod
    def _lost(run_id: str, token: int, current: Any) -> LeaseLostError:
        return LeaseLostError(
            f"Run {run_id}: the lease of token {token} was taken over (now {current}); "
            "this worker's write is refused."
        )

    async def put_step(self, run_id: str, token: int, step: StepRecord) -> bool:
        pool = await self._ensure()
        row = await pool.fetchrow(
            self._sql(
                "WITH ok AS (SELECT id FROM {p}runs WHERE id = $1 AND lease_token = $2 "
                "AND lease_until > 0 FOR SHARE), "
                "ins AS (INSERT INTO {p}steps (run_id, position, function, args_hash, status, "
                f"outcome, created) SELECT id, $3, $4, $5, $6, $7, {_NOW} FROM ok "
                "ON CONFLICT DO NOTHING RETURNING 1) "
                "SELECT (SELECT count(*) FROM ok) AS fenced, (SELECT count(*) FROM ins) AS n"
            ),
            run_id, token, step.position, step.function, step.args_hash, step.status,
            step.outcome,
        )  # fmt: skip
        assert row is not None
        if not row["fenced"]:
            raise self._lost(run_id, token, "another token")
        return bool(row["n"])

    async def _fenced_update(self, run_id: str, token: int, sql: str, *args: Any) -> bool:
        """One UPDATE whose WHERE holds the fence; when it changed nothing, one read says
        whether the lease was lost (raise) or the run was final already (False)."""
        pool = await self._ensure()
        done = await pool.fetchval(self._sql(sql), run_id, token, *args)
        if done is not None:
            return True
        row = await pool.fetchrow(
            self._sql("SELECT lease_token, lease_until, status FROM {p}runs WHERE id = $1"),
            run_id,
        )
        if row is None or int(row["lease_token"]) != token:
            raise self._lost(run_id, token, None if row is None else row["lease_token"])
        if row["status"] in ("succeeded", "failed", "dead", "cancelled"):
            return False
        raise self._lost(run_id, token, "released")

    async def set_retry(self, run_id: str, token: int, attempts: int, due: float) -> None:
        await self._fenced_update(
            run_id,
            token,
            "UPDATE {p}runs SET attempts = $3, due = $4, status = 'retrying', lease_until = 0, "
            f"updated = {_NOW} WHERE id = $1 AND lease_token = $2 AND lease_until > 0 "
            "RETURNING 1",
            attempts,
            due,
        )

    async def complete(self, run_id: str, token: int, status: str, outcome: str) -> bool:
        if status not in ("succeeded", "failed", "dead", "cancelled"):
            raise ValueError(f"complete() takes a final status, not {status!r}.")
        update = (
            "UPDATE {p}runs SET status = $3, outcome = $4, lease_until = 0, "
            f"updated = {_NOW} WHERE id = $1 AND lease_token = $2 AND lease_until > 0 "
            f"AND status NOT IN {_FINAL} RETURNING id, watched"
        )
        if self.notify:  # a watched run's notice goes out with this statement's commit
            sql = (
                f"WITH u AS ({update}), n AS (SELECT pg_notify('{self.channel}', id) FROM u "
                "WHERE watched) SELECT 1, (SELECT count(*) FROM n) FROM u"
            )
        else:
            sql = update.replace("RETURNING id, watched", "RETURNING 1")
        return await self._fenced_update(run_id, token, sql, status, outcome)

    async def complete_child(
        self, parent_id: str, position: str, index: int, child: ChildOutcome
    ) -> tuple[bool, int]:
        pool = await self._ensure()
        async with pool.acquire() as conn, conn.transaction():
            inserted = await conn.fetchval(
                self._sql(
                    "INSERT INTO {p}children (run_id, position, idx, status, outcome) "
                    "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING 1"
                ),
                parent_id, position, index, child.status, child.outcome,
            )  # fmt: skip
            # Serialise the count per slot: the last two completions must not both see N-1.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1))", f"{parent_id}/{position}"
            )
            count = await conn.fetchval(
                self._sql("SELECT count(*) FROM {p}children WHERE run_id = $1 AND position = $2"),
                parent_id,
                position,
            )
            return inserted is not None, int(count)

    # -- operations -----------------------------------------------------------------
    async def list_runs(
        self,
        *,
        status: Collection[str] | None = None,
        function: str | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        pool = await self._ensure()
        where: list[str] = []
        params: list[Any] = []
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            if not statuses:
                return []
            params.append(statuses)
            where.append(f"status = ANY(${len(params)}::text[])")
        if function is not None:
            params.append(function)
            where.append(f"function = ${len(params)}")
        params.append(max(0, int(limit)))
        sql = f"SELECT {_COLUMNS} FROM {{p}}runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY created DESC, id LIMIT ${len(params)}"
        return [_run(row) for row in await pool.fetch(self._sql(sql), *params)]

    async def retry_run(self, run_id: str) -> bool:
        pool = await self._ensure()
        async with pool.acquire() as conn, conn.transaction():
            status = await conn.fetchval(
                self._sql("SELECT status FROM {p}runs WHERE id = $1 FOR UPDATE"), run_id
            )
            if status not in ("failed", "dead", "cancelled"):
                return False
            ids = await conn.fetch(
                self._sql(
                    "UPDATE {p}runs SET status = 'pending', attempts = 0, due = 0, "
                    f"outcome = NULL, lease_until = 0, updated = {_NOW} "
                    f"WHERE {_SUBTREE} AND status IN {_RETRYABLE} RETURNING id"
                ),
                run_id,
            )
            reset = [r["id"] for r in ids]
            await conn.execute(
                self._sql(
                    "DELETE FROM {p}steps WHERE run_id = ANY($1::text[]) AND status = 'error'"
                ),
                reset,
            )
            await conn.execute(
                self._sql(
                    "DELETE FROM {p}children WHERE run_id = ANY($1::text[]) AND status = 'error'"
                ),
                reset,
            )
            return True

    async def cancel_run(self, run_id: str, outcome: str) -> list[str]:
        pool = await self._ensure()
        async with pool.acquire() as conn, conn.transaction():
            status = await conn.fetchval(
                self._sql("SELECT status FROM {p}runs WHERE id = $1 FOR UPDATE"), run_id
            )
            if status is None or status in ("succeeded", "failed", "dead", "cancelled"):
                return []
            rows = await conn.fetch(
                self._sql(
                    "UPDATE {p}runs SET status = 'cancelled', outcome = $2, "
                    f"lease_token = lease_token + 1, lease_until = 0, updated = {_NOW} "
                    f"WHERE {_SUBTREE} AND status NOT IN {_FINAL} RETURNING id"
                ),
                run_id,
                outcome,
            )
            ids = sorted(r["id"] for r in rows)
            if self.notify:
                await conn.execute(
                    self._sql(
                        "SELECT pg_notify($1, id) FROM {p}runs "
                        "WHERE id = ANY($2::text[]) AND watched"
                    ),
                    self.channel,
                    ids,
                )
            return ids

    async def watch_run(self, run_id: str) -> None:
        """The run's completion is notified from now on (``watched``)."""
        pool = await self._ensure()
        await pool.execute(
            self._sql("UPDATE {p}runs SET watched = true WHERE id = $1 AND NOT watched"), run_id
        )

    # -- pushed completions -----------------------------------------------------------
    async def watch_completions(
        self, callback: Callable[[str | None], None]
    ) -> Callable[[], Awaitable[None]]:
        """``LISTEN <prefix>runs_done`` on a connection of its own: ``callback(run_id)``
        for each watched run finished or cancelled (in any process), ``callback(None)``
        after the connection was lost and listens again (notices meanwhile may be missed:
        waiters read again).
        Returns ``stop()``. With ``notify=False`` nothing is ever sent: the callback is
        called only on reconnects."""
        loop = asyncio.get_running_loop()
        stopped = asyncio.Event()
        lost = asyncio.Event()

        def on_notice(_conn: Any, _pid: int, _channel: str, payload: object) -> None:
            callback(str(payload))

        def on_lost(_conn: Any) -> None:
            loop.call_soon_threadsafe(lost.set)

        async def listen() -> asyncpg.Connection:
            conn = await asyncpg.connect(self.dsn)
            conn.add_termination_listener(on_lost)
            await conn.add_listener(self.channel, on_notice)
            return conn

        conn = await listen()

        async def keep() -> None:
            nonlocal conn
            delay = 0.1
            while not stopped.is_set():
                await lost.wait()
                if stopped.is_set():
                    return
                lost.clear()
                log.warning("The completion feed's connection was lost; listening again.")
                while not stopped.is_set():
                    try:
                        conn = await listen()
                        break
                    except (OSError, asyncpg.PostgresError) as exc:
                        log.warning("Listening again failed (%s); next try in %.1f s.", exc, delay)
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 5.0)
                delay = 0.1
                callback(None)  # notices may have been missed meanwhile

        keeper = loop.create_task(keep(), name=f"dispytch-postgres-feed-{self.prefix}")

        async def stop() -> None:
            stopped.set()
            lost.set()
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await keeper
            with contextlib.suppress(Exception):
                await conn.close(timeout=5)

        return stop
