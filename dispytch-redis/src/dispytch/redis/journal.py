"""The durable-functions journal in Redis (``redis://`` / ``rediss://`` store URLs).

Same semantics as core's SQLite store (:mod:`dispytch.durable.store`), kept in three
hashes per run under a key prefix (default ``dispytch:``)::

    {prefix}run:{id}       the run's row: function, args, status, attempts, due, lease...
    {prefix}steps:{id}     position -> function NUL args_hash NUL status NUL outcome
    {prefix}children:{id}  position NUL index -> status NUL outcome
    {prefix}slots:{id}     position -> children of that slot done so far
    {prefix}runs           sorted set of run ids by creation time (for listing)

Every verb is one round trip: reads are plain ``HGETALL`` (or one script for the three
hashes of :meth:`RedisJournalStore.load`, one snapshot), every conditional write is one
Lua script (``EVALSHA`` through redis-py's ``register_script``) that checks the fencing
token and writes atomically. Leases use the server's clock (``TIME``), so workers on
several machines agree on when one expired.

Redis keeps data in memory: a journal is only durable when the server writes an
append-only file. :meth:`RedisJournalStore.open` refuses a server without AOF
(``appendonly no``; RDB ``save`` snapshots alone lose every write since the last snapshot,
which would re-run finished steps after a server crash) or one that evicts keys
(``maxmemory-policy allkeys-*``), unless ``allow_volatile=True``. Redis Cluster is not
supported (a run's keys and the index are written in one script).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from dispytch.durable.errors import LeaseLostError
from dispytch.durable.store import (
    FINAL_STATUSES,
    ChildOutcome,
    Journal,
    NewRun,
    RunRecord,
    StepRecord,
)
from dispytch.errors import ConfigError
from dispytch.options import TransportOptions
from dispytch.redis._client import check_async_client, where
from pydantic import Field

import redis.asyncio as aredis
from redis.commands.core import AsyncScript

__all__ = ["RedisJournalOptions", "RedisJournalStore"]

_SEP = "\x00"

# -- the scripts ---------------------------------------------------------------------
# Times are the server's: TIME is allowed in scripts (effects replication, Redis >= 5).
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function fmt(x) return string.format('%.6f', x) end
local function final(s) return s == 'succeeded' or s == 'failed' or s == 'dead' end
"""

# KEYS: run, index. ARGV: id, function, args, args_hash, [parent id, position, index, count]
# -> {1, now} when created, else {0, HGETALL run}
_CREATE = (
    _NOW
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, redis.call('HGETALL', KEYS[1])}
end
local n = fmt(now)
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'function', ARGV[2], 'args', ARGV[3],
  'args_hash', ARGV[4], 'status', 'pending', 'attempts', 0, 'due', 0, 'lease_token', 0,
  'lease_until', 0, 'created', n, 'updated', n)
if #ARGV > 4 then
  redis.call('HSET', KEYS[1], 'parent_id', ARGV[5], 'parent_position', ARGV[6],
    'parent_index', ARGV[7], 'parent_count', ARGV[8])
end
redis.call('ZADD', KEYS[2], now, ARGV[1])
return {1, n}
"""
)

# KEYS: run, steps, children. -> {run, steps, children} (flat HGETALL lists)
_LOAD = """
return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2]),
  redis.call('HGETALL', KEYS[3])}
"""

# KEYS: run. ARGV: ttl -> the new token, or false
_ACQUIRE = (
    _NOW
    + """
local h = redis.call('HMGET', KEYS[1], 'lease_until', 'status')
if not h[2] or final(h[2]) or tonumber(h[1]) >= now then return false end
local token = redis.call('HINCRBY', KEYS[1], 'lease_token', 1)
redis.call('HSET', KEYS[1], 'lease_until', fmt(now + tonumber(ARGV[1])), 'updated', fmt(now))
return token
"""
)

# KEYS: run. ARGV: token, ttl -> 1 renewed, 0 not the holder
_RENEW = (
    _NOW
    + """
local h = redis.call('HMGET', KEYS[1], 'lease_token', 'lease_until')
if h[1] ~= ARGV[1] or tonumber(h[2]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'lease_until', fmt(now + tonumber(ARGV[2])))
return 1
"""
)

# KEYS: run. ARGV: token, status ('' keeps it)
_RELEASE = (
    _NOW
    + """
local h = redis.call('HMGET', KEYS[1], 'lease_token', 'status')
if h[1] ~= ARGV[1] or final(h[2]) then return 0 end
redis.call('HSET', KEYS[1], 'lease_until', 0, 'updated', fmt(now))
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'status', ARGV[2]) end
return 1
"""
)

# The fence of a write: {-1, current token} when ARGV[1] does not hold the lease.
_FENCE = """
local h = redis.call('HMGET', KEYS[1], 'lease_token', 'lease_until', 'status')
if h[1] ~= ARGV[1] then return {-1, h[1] or false} end
"""

# KEYS: run, steps. ARGV: token, position, value -> {1} written, {0} taken, {-1, current}
_PUT_STEP = (
    _FENCE
    + """
if tonumber(h[2]) == 0 then return {-1, 'released'} end
return {redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3])}
"""
)

# KEYS: run. ARGV: token, attempts, due -> {1}, {-1, current}
_SET_RETRY = (
    _NOW
    + _FENCE
    + """
if tonumber(h[2]) == 0 then return {-1, 'released'} end
redis.call('HSET', KEYS[1], 'attempts', ARGV[2], 'due', ARGV[3], 'status', 'retrying',
  'lease_until', 0, 'updated', fmt(now))
return {1}
"""
)

# KEYS: run. ARGV: token, status, outcome, channel ('' none)
# -> {1} completed, {0} final already, {-1, current}
_COMPLETE = (
    _NOW
    + _FENCE
    + """
if final(h[3]) then return {0} end
if tonumber(h[2]) == 0 then return {-1, 'released'} end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'outcome', ARGV[3], 'lease_until', 0,
  'updated', fmt(now))
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[2]) end
return {1}
"""
)

# KEYS: children, slots. ARGV: field, value, position -> {written, done in the slot}
_COMPLETE_CHILD = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  return {1, redis.call('HINCRBY', KEYS[2], ARGV[3], 1)}
end
return {0, tonumber(redis.call('HGET', KEYS[2], ARGV[3]) or '0')}
"""


class RedisJournalOptions(TransportOptions):
    """Options of the Redis journal store, from the URL query or keyword arguments."""

    prefix: str = Field(
        "dispytch:", min_length=1, description="Prefix of every key the journal writes."
    )
    allow_volatile: bool = Field(
        False,
        description="Open even when the server keeps no append-only file or evicts keys "
        "(the journal, and with it exactly-once steps, is lost when the server restarts).",
    )


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: list[Any]) -> dict[str, str]:
    it = iter(flat)
    return {_s(k): _s(v) for k, v in zip(it, it, strict=True)}


def _record(row: Mapping[str, str]) -> RunRecord:
    parent_id = row.get("parent_id")
    parent = (
        None
        if parent_id is None
        else (parent_id, row["parent_position"], int(row["parent_index"]), int(row["parent_count"]))
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
        outcome=row.get("outcome"),
        parent=parent,
        created=float(row["created"]),
        updated=float(row["updated"]),
    )


class RedisJournalStore:
    """A journal in Redis hashes, shared by every process that talks to the server.

    Args:
        client: A ``redis.asyncio.Redis`` (yours: never closed by the store), or a URL
            (``redis://host:6379/0``; the store makes and closes its client).
        prefix: Prefix of every key (default ``dispytch:``); several journals can share a
            server under different prefixes.
        allow_volatile: Open even when the server keeps no append-only file (``appendonly
            no``) or evicts keys (``maxmemory-policy allkeys-*``). Off by default: a
            journal lost in a server restart re-runs finished steps.
        notify: Publish each run's final status on ``{prefix}done:{id}`` (one ``PUBLISH``
            inside the completing script; no cost when nobody listens).

    Raises:
        TypeError: ``client`` is the synchronous ``redis.Redis`` or not a client at all.
        ValueError: ``client`` decodes responses (``decode_responses=True``).
    """

    def __init__(
        self,
        client: aredis.Redis | str,
        *,
        prefix: str = "dispytch:",
        allow_volatile: bool = False,
        notify: bool = True,
    ) -> None:
        if isinstance(client, str):
            self._client: aredis.Redis = aredis.Redis.from_url(client, decode_responses=False)
            self._owns_client = True
        else:
            self._client = check_async_client(client, "RedisJournalStore")
            self._owns_client = False
        if not prefix:
            raise ConfigError("prefix must not be empty.\nUse e.g. prefix='dispytch:'.")
        self.prefix = prefix
        self.allow_volatile = allow_volatile
        self.notify = notify
        self._opened = False
        c = self._client
        self._create: AsyncScript = c.register_script(_CREATE)
        self._load: AsyncScript = c.register_script(_LOAD)
        self._acquire: AsyncScript = c.register_script(_ACQUIRE)
        self._renew: AsyncScript = c.register_script(_RENEW)
        self._release: AsyncScript = c.register_script(_RELEASE)
        self._put_step: AsyncScript = c.register_script(_PUT_STEP)
        self._set_retry: AsyncScript = c.register_script(_SET_RETRY)
        self._complete: AsyncScript = c.register_script(_COMPLETE)
        self._complete_child: AsyncScript = c.register_script(_COMPLETE_CHILD)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisJournalStore:
        """``redis://host:6379/0?prefix=jobs:&allow_volatile=false`` (``rediss://`` for TLS).

        Query parameters that are no store option go to redis-py (``?socket_timeout=5``);
        keyword arguments win over the query.

        Raises:
            ConfigError: Not a Redis URL, or an invalid option.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(
                f"Not a Redis URL: {url!r}.\n"
                "Use redis://host:6379/0 (or rediss:// for TLS) for a Redis journal."
            )
        known = set(RedisJournalOptions.names())
        ours: dict[str, str] = {}
        rest: list[tuple[str, str]] = []
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name in known:
                ours[name] = value
            else:
                rest.append((name, value))
        options = RedisJournalOptions.parse(ours, **kwargs)
        client_url = urlunsplit(parts._replace(query=urlencode(rest), fragment=""))
        return cls(
            client_url,
            prefix=options.prefix,
            allow_volatile=options.allow_volatile,
        )

    def __repr__(self) -> str:
        return f"RedisJournalStore({where(self._client)}, prefix={self.prefix!r})"

    @property
    def client(self) -> aredis.Redis:
        """The redis.asyncio client the store talks through."""
        return self._client

    # -- keys ------------------------------------------------------------------------
    def _key(self, kind: str, run_id: str) -> str:
        return f"{self.prefix}{kind}:{run_id}"

    def done_channel(self, run_id: str) -> str:
        """The Pub/Sub channel a run's final status is published on (``notify=True``)."""
        return f"{self.prefix}done:{run_id}"

    # -- lifecycle -------------------------------------------------------------------
    async def open(self) -> None:
        """Check the server answers and keeps its data (see ``allow_volatile``).

        Raises:
            ConfigError: The server keeps no append-only file or evicts keys, or its
                persistence cannot be read, and ``allow_volatile`` is off.
        """
        if self._opened:
            return
        if not self.allow_volatile:
            await self._check_durable()
        else:
            await self._client.ping()
        self._opened = True

    async def _check_durable(self) -> None:
        host = where(self._client)
        try:
            info = await self._client.info("persistence")
            memory = await self._client.info("memory")
        except aredis.ResponseError as exc:
            raise ConfigError(
                f"The Redis journal at {host} cannot read the server's persistence settings "
                f"(INFO refused: {exc}).\nAllow INFO for this user, or pass "
                "allow_volatile=true if you know the server writes an append-only file."
            ) from exc
        if str(info.get("aof_enabled", "0")) != "1":
            raise ConfigError(
                f"The Redis server at {host} keeps no append-only file (appendonly no): a "
                "restart would lose the journal and re-run finished steps (RDB snapshots "
                "alone lose every write since the last one).\nTurn AOF on (CONFIG SET "
                "appendonly yes, and in redis.conf), or pass allow_volatile=true "
                "(?allow_volatile=true in the store URL) for a journal you can lose."
            )
        policy = _s(memory.get("maxmemory_policy", "noeviction"))
        if policy.startswith("allkeys-"):
            raise ConfigError(
                f"The Redis server at {host} evicts keys under memory pressure "
                f"(maxmemory-policy {policy}): journal entries could vanish.\nUse "
                "maxmemory-policy noeviction (or volatile-*), or pass allow_volatile=true."
            )

    async def close(self) -> None:
        """Close the client when the store made it (a client you passed stays open)."""
        self._opened = False
        if self._owns_client:
            await self._client.aclose()

    # -- the verbs -------------------------------------------------------------------
    async def create_run(self, run: NewRun) -> tuple[RunRecord, bool]:
        args: list[Any] = [run.id, run.function, run.args, run.args_hash]
        if run.parent is not None:
            args.extend(run.parent)
        created, rest = await self._create(
            keys=[self._key("run", run.id), f"{self.prefix}runs"], args=args
        )
        if not created:
            return _record(_pairs(rest)), False
        now = float(rest)
        record = RunRecord(
            id=run.id,
            function=run.function,
            args=run.args,
            args_hash=run.args_hash,
            status="pending",
            attempts=0,
            due=0.0,
            lease_token=0,
            lease_until=0.0,
            outcome=None,
            parent=run.parent,
            created=now,
            updated=now,
        )
        return record, True

    async def get_run(self, run_id: str) -> RunRecord | None:
        row = await self._client.hgetall(self._key("run", run_id))
        return _record({_s(k): _s(v) for k, v in row.items()}) if row else None

    async def load(self, run_id: str) -> Journal | None:
        run, steps, children = await self._load(
            keys=[
                self._key("run", run_id),
                self._key("steps", run_id),
                self._key("children", run_id),
            ]
        )
        if not run:
            return None
        journal = Journal(_record(_pairs(run)))
        for position, value in _pairs(steps).items():
            function, args_hash, status, outcome = value.split(_SEP, 3)
            journal.steps[position] = StepRecord(position, function, args_hash, status, outcome)
        for slot, value in _pairs(children).items():
            position, index = slot.rsplit(_SEP, 1)
            status, outcome = value.split(_SEP, 1)
            journal.children.setdefault(position, {})[int(index)] = ChildOutcome(status, outcome)
        return journal

    async def acquire(self, run_id: str, ttl: float) -> int | None:
        token = await self._acquire(keys=[self._key("run", run_id)], args=[repr(float(ttl))])
        return None if token is None else int(token)

    async def renew(self, run_id: str, token: int, ttl: float) -> bool:
        done = await self._renew(keys=[self._key("run", run_id)], args=[token, repr(float(ttl))])
        return bool(done)

    async def release(self, run_id: str, token: int, status: str | None = None) -> None:
        await self._release(keys=[self._key("run", run_id)], args=[token, status or ""])

    @staticmethod
    def _lost(run_id: str, token: int, current: Any) -> LeaseLostError:
        now = "gone" if current is None else _s(current)
        return LeaseLostError(
            f"Run {run_id}: the lease of token {token} was taken over (now {now}); "
            "this worker's write is refused."
        )

    async def put_step(self, run_id: str, token: int, step: StepRecord) -> bool:
        for name, text in (("function", step.function), ("args_hash", step.args_hash)):
            if _SEP in text:
                raise ValueError(f"A step's {name} may not contain NUL: {text!r}.")
        value = _SEP.join((step.function, step.args_hash, step.status, step.outcome))
        out = await self._put_step(
            keys=[self._key("run", run_id), self._key("steps", run_id)],
            args=[token, step.position, value],
        )
        if out[0] == -1:
            raise self._lost(run_id, token, out[1] if len(out) > 1 else None)
        return bool(out[0])

    async def set_retry(self, run_id: str, token: int, attempts: int, due: float) -> None:
        out = await self._set_retry(
            keys=[self._key("run", run_id)], args=[token, attempts, repr(float(due))]
        )
        if out[0] == -1:
            raise self._lost(run_id, token, out[1] if len(out) > 1 else None)

    async def complete(self, run_id: str, token: int, status: str, outcome: str) -> bool:
        if status not in FINAL_STATUSES:
            raise ValueError(f"complete() takes a final status, not {status!r}.")
        channel = self.done_channel(run_id) if self.notify else ""
        out = await self._complete(
            keys=[self._key("run", run_id)], args=[token, status, outcome, channel]
        )
        if out[0] == -1:
            raise self._lost(run_id, token, out[1] if len(out) > 1 else None)
        return bool(out[0])

    async def complete_child(
        self, parent_id: str, position: str, index: int, child: ChildOutcome
    ) -> tuple[bool, int]:
        written, done = await self._complete_child(
            keys=[self._key("children", parent_id), self._key("slots", parent_id)],
            args=[f"{position}{_SEP}{index}", f"{child.status}{_SEP}{child.outcome}", position],
        )
        return bool(written), int(done)
