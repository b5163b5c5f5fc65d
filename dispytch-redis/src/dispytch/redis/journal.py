"""The durable-functions journal in Redis (``redis://`` / ``rediss://`` store URLs).

Same semantics as core's SQLite store (:mod:`dispytch.durable.store`), kept under a key
prefix (default ``dispytch:``)::

    {prefix}run:{id}        hash: the run's row (function, args, status, lease...)
    {prefix}steps:{id}      hash: position -> function NUL args_hash NUL status NUL
                            created NUL outcome
    {prefix}children:{id}   hash: position NUL index -> status NUL outcome
    {prefix}slots:{id}      hash: position -> children of that slot done so far
    {prefix}runs            sorted set: run ids by creation time (list_runs)
    {prefix}fn:{function}   sorted set: that function's run ids by creation time
    {prefix}ids             sorted set, all scores 0: run ids in byte order, so a run's
                            descendants (ids under ``<id>/``) are one ZRANGEBYLEX
    {prefix}leases:{fn}     sorted set: runs of a function by lease expiry (the
                            concurrency limit counts the live ones)
    {prefix}done            Pub/Sub channel: ids of runs that reached a final status

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
supported (a script writes a run's hash, its indexes and its function's lease set).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from dispytch.backoff import Backoff
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
from redis.asyncio.client import PubSub
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

__all__ = ["RedisJournalOptions", "RedisJournalStore"]

log = logging.getLogger("dispytch.redis")

_SEP = "\x00"
#: Runs read per page of :meth:`RedisJournalStore.list_runs` when filtering by status.
_LIST_PAGE = 500

# -- the scripts ---------------------------------------------------------------------
# Times are the server's: TIME is allowed in scripts (effects replication, Redis >= 5).
# Every script that touches a run takes the key prefix as ARGV[1]: a run's lease entry
# lives in a key named after its function ({prefix}leases:{function}), which only the
# run's hash knows (so the journal is for a single server, not Redis Cluster).
_HEAD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local n = string.format('%.6f', now)
local function fmt(x) return string.format('%.6f', x) end
local function final(s)
  return s == 'succeeded' or s == 'failed' or s == 'dead' or s == 'cancelled'
end
local function retryable(s) return s == 'failed' or s == 'dead' or s == 'cancelled' end
local P = ARGV[1]
"""

# KEYS: run, runs, ids, fn index. ARGV: prefix, id, function, args, args_hash,
# [parent id, position, index, count] -> {1, now} when created, else {0, HGETALL run}
_CREATE = (
    _HEAD
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, redis.call('HGETALL', KEYS[1])}
end
redis.call('HSET', KEYS[1], 'id', ARGV[2], 'function', ARGV[3], 'args', ARGV[4],
  'args_hash', ARGV[5], 'status', 'pending', 'attempts', 0, 'due', 0, 'lease_token', 0,
  'lease_until', 0, 'created', n, 'updated', n)
if #ARGV > 5 then
  redis.call('HSET', KEYS[1], 'parent_id', ARGV[6], 'parent_position', ARGV[7],
    'parent_index', ARGV[8], 'parent_count', ARGV[9])
end
redis.call('ZADD', KEYS[2], now, ARGV[2])
redis.call('ZADD', KEYS[3], 0, ARGV[2])
redis.call('ZADD', KEYS[4], now, ARGV[2])
return {1, n}
"""
)

# KEYS: run, steps, children. -> {run, steps, children} (flat HGETALL lists)
_LOAD = """
return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2]),
  redis.call('HGETALL', KEYS[3])}
"""

# KEYS: run. ARGV: prefix, ttl, concurrency ('' none) -> the new token, or false
_ACQUIRE = (
    _HEAD
    + """
local h = redis.call('HMGET', KEYS[1], 'lease_until', 'status', 'function', 'id')
if not h[2] or final(h[2]) or tonumber(h[1]) >= now then return false end
local leases = P .. 'leases:' .. h[3]
if ARGV[3] ~= '' then
  -- live leases of the function's other runs (this one's, if listed, has expired)
  if redis.call('ZCOUNT', leases, now, '+inf') >= tonumber(ARGV[3]) then
    if h[2] ~= 'limited' then
      redis.call('HSET', KEYS[1], 'status', 'limited', 'updated', n)
    end
    return false
  end
end
local token = redis.call('HINCRBY', KEYS[1], 'lease_token', 1)
local lease_until = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'lease_until', fmt(lease_until), 'status', 'running', 'updated', n)
redis.call('ZADD', leases, lease_until, h[4])
return token
"""
)

# KEYS: run. ARGV: prefix, token, ttl -> 1 renewed, 0 not the holder
_RENEW = (
    _HEAD
    + """
local h = redis.call('HMGET', KEYS[1], 'lease_token', 'lease_until', 'function', 'id')
if h[1] ~= ARGV[2] or tonumber(h[2]) == 0 then return 0 end
local lease_until = now + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'lease_until', fmt(lease_until))
redis.call('ZADD', P .. 'leases:' .. h[3], lease_until, h[4])
return 1
"""
)

# KEYS: run. ARGV: prefix, token, status, due ('' keeps it)
_RELEASE = (
    _HEAD
    + """
local h = redis.call('HMGET', KEYS[1], 'lease_token', 'status', 'function', 'id')
if h[1] ~= ARGV[2] or final(h[2]) then return 0 end
redis.call('HSET', KEYS[1], 'lease_until', 0, 'status', ARGV[3], 'updated', n)
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'due', ARGV[4]) end
redis.call('ZREM', P .. 'leases:' .. h[3], h[4])
return 1
"""
)

# The fence of a write: {-1, current token} when ARGV[2] does not hold the lease.
_FENCE = """
local h = redis.call('HMGET', KEYS[1], 'lease_token', 'lease_until', 'status', 'function',
  'id')
if h[1] ~= ARGV[2] then return {-1, h[1] or false} end
"""

# KEYS: run, steps. ARGV: prefix, token, position, function, args_hash, status, outcome
# -> {1} written, {0} taken, {-1, current}
_PUT_STEP = (
    _HEAD
    + _FENCE
    + """
if tonumber(h[2]) == 0 then return {-1, 'released'} end
local value = ARGV[4] .. '\\0' .. ARGV[5] .. '\\0' .. ARGV[6] .. '\\0' .. n .. '\\0' .. ARGV[7]
return {redis.call('HSETNX', KEYS[2], ARGV[3], value)}
"""
)

# KEYS: run. ARGV: prefix, token, attempts, due -> {1}, {-1, current}
_SET_RETRY = (
    _HEAD
    + _FENCE
    + """
if tonumber(h[2]) == 0 then return {-1, 'released'} end
redis.call('HSET', KEYS[1], 'attempts', ARGV[3], 'due', ARGV[4], 'status', 'retrying',
  'lease_until', 0, 'updated', n)
redis.call('ZREM', P .. 'leases:' .. h[4], h[5])
return {1}
"""
)

# KEYS: run. ARGV: prefix, token, status, outcome, notify ('1' or '')
# -> {1} completed, {0} final already, {-1, current}
_COMPLETE = (
    _HEAD
    + _FENCE
    + """
if final(h[3]) then return {0} end
if tonumber(h[2]) == 0 then return {-1, 'released'} end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'outcome', ARGV[4], 'lease_until', 0,
  'updated', n)
redis.call('ZREM', P .. 'leases:' .. h[4], h[5])
if ARGV[5] ~= '' then redis.call('PUBLISH', P .. 'done', h[5]) end
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

# The run and its descendants: ids under "<id>/" in the lexicographic index.
_SUBTREE = """
local ids = {ARGV[2]}
for _, d in ipairs(redis.call('ZRANGEBYLEX', KEYS[2], '[' .. ARGV[2] .. '/',
    '(' .. ARGV[2] .. '0')) do
  ids[#ids + 1] = d
end
"""

# KEYS: run, ids. ARGV: prefix, id -> 1 retried, 0 missing or not retryable
_RETRY = (
    _HEAD
    + """
if not retryable(redis.call('HGET', KEYS[1], 'status')) then return 0 end
"""
    + _SUBTREE
    + """
for _, id in ipairs(ids) do
  local key = P .. 'run:' .. id
  if retryable(redis.call('HGET', key, 'status')) then
    redis.call('HSET', key, 'status', 'pending', 'attempts', 0, 'due', 0, 'lease_until', 0,
      'updated', n)
    redis.call('HDEL', key, 'outcome')
    local steps = P .. 'steps:' .. id
    local all = redis.call('HGETALL', steps)
    for i = 1, #all, 2 do
      -- function NUL args_hash NUL status NUL created NUL outcome
      local a = string.find(all[i + 1], '\\0', 1, true)
      local b = string.find(all[i + 1], '\\0', a + 1, true)
      local c = string.find(all[i + 1], '\\0', b + 1, true)
      if string.sub(all[i + 1], b + 1, c - 1) == 'error' then
        redis.call('HDEL', steps, all[i])
      end
    end
    local children = P .. 'children:' .. id
    all = redis.call('HGETALL', children)
    for i = 1, #all, 2 do
      -- position NUL index -> status NUL outcome
      local a = string.find(all[i + 1], '\\0', 1, true)
      if string.sub(all[i + 1], 1, a - 1) == 'error' then
        redis.call('HDEL', children, all[i])
        local p = string.find(all[i], '\\0', 1, true)
        redis.call('HINCRBY', P .. 'slots:' .. id, string.sub(all[i], 1, p - 1), -1)
      end
    end
  end
end
return 1
"""
)

# KEYS: run, ids. ARGV: prefix, id, outcome, notify -> the ids cancelled
_CANCEL = (
    _HEAD
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or final(status) then return {} end
"""
    + _SUBTREE
    + """
local out = {}
for _, id in ipairs(ids) do
  local key = P .. 'run:' .. id
  local h = redis.call('HMGET', key, 'status', 'function')
  if h[1] and not final(h[1]) then
    redis.call('HINCRBY', key, 'lease_token', 1)
    redis.call('HSET', key, 'status', 'cancelled', 'outcome', ARGV[3], 'lease_until', 0,
      'updated', n)
    redis.call('ZREM', P .. 'leases:' .. h[2], id)
    if ARGV[4] ~= '' then redis.call('PUBLISH', P .. 'done', id) end
    out[#out + 1] = id
  end
end
return out
"""
)


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
    notify: bool = Field(
        True, description="Publish the ids of finished runs on {prefix}done (the feed)."
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
        notify: Publish the id of each run that reaches a final status on
            ``{prefix}done`` (one ``PUBLISH`` inside the completing script), which
            :meth:`watch_completions` listens to.

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
        if not prefix:
            raise ConfigError("prefix must not be empty.\nUse e.g. prefix='dispytch:'.")
        if isinstance(client, str):
            self._client: aredis.Redis = aredis.Redis.from_url(client, decode_responses=False)
            self._owns_client = True
        else:
            self._client = check_async_client(client, "RedisJournalStore")
            self._owns_client = False
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
        self._retry: AsyncScript = c.register_script(_RETRY)
        self._cancel: AsyncScript = c.register_script(_CANCEL)

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
            notify=options.notify,
        )

    def __repr__(self) -> str:
        return f"RedisJournalStore({where(self._client)}, prefix={self.prefix!r})"

    @property
    def client(self) -> aredis.Redis:
        """The redis.asyncio client the store talks through."""
        return self._client

    @property
    def done_channel(self) -> str:
        """The Pub/Sub channel the ids of finished runs are published on (``notify``)."""
        return f"{self.prefix}done"

    # -- keys ------------------------------------------------------------------------
    def _key(self, kind: str, run_id: str) -> str:
        return f"{self.prefix}{kind}:{run_id}"

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
        p = self.prefix
        args: list[Any] = [p, run.id, run.function, run.args, run.args_hash]
        if run.parent is not None:
            args.extend(run.parent)
        created, rest = await self._create(
            keys=[self._key("run", run.id), f"{p}runs", f"{p}ids", self._key("fn", run.function)],
            args=args,
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
            function, args_hash, status, created, outcome = value.split(_SEP, 4)
            journal.steps[position] = StepRecord(
                position, function, args_hash, status, outcome, float(created)
            )
        for slot, value in _pairs(children).items():
            position, index = slot.split(_SEP, 1)
            status, outcome = value.split(_SEP, 1)
            journal.children.setdefault(position, {})[int(index)] = ChildOutcome(status, outcome)
        return journal

    async def acquire(
        self, run_id: str, ttl: float, *, concurrency: int | None = None
    ) -> int | None:
        limit = "" if concurrency is None else int(concurrency)
        token = await self._acquire(
            keys=[self._key("run", run_id)], args=[self.prefix, repr(float(ttl)), limit]
        )
        return None if token is None else int(token)

    async def renew(self, run_id: str, token: int, ttl: float) -> bool:
        done = await self._renew(
            keys=[self._key("run", run_id)], args=[self.prefix, token, repr(float(ttl))]
        )
        return bool(done)

    async def release(
        self, run_id: str, token: int, status: str | None = None, *, due: float | None = None
    ) -> None:
        await self._release(
            keys=[self._key("run", run_id)],
            args=[self.prefix, token, status or "pending", "" if due is None else repr(due)],
        )

    @staticmethod
    def _lost(run_id: str, token: int, current: Any) -> LeaseLostError:
        now = "gone" if current is None else _s(current)
        return LeaseLostError(
            f"Run {run_id}: the lease of token {token} was taken over (now {now}); "
            "this worker's write is refused."
        )

    async def put_step(self, run_id: str, token: int, step: StepRecord) -> bool:
        for name, text in (
            ("function", step.function),
            ("args_hash", step.args_hash),
            ("status", step.status),
        ):
            if _SEP in text:
                raise ValueError(f"A step's {name} may not contain NUL: {text!r}.")
        out = await self._put_step(
            keys=[self._key("run", run_id), self._key("steps", run_id)],
            args=[
                self.prefix,
                token,
                step.position,
                step.function,
                step.args_hash,
                step.status,
                step.outcome,
            ],
        )
        if out[0] == -1:
            raise self._lost(run_id, token, out[1] if len(out) > 1 else None)
        return bool(out[0])

    async def set_retry(self, run_id: str, token: int, attempts: int, due: float) -> None:
        out = await self._set_retry(
            keys=[self._key("run", run_id)],
            args=[self.prefix, token, attempts, repr(float(due))],
        )
        if out[0] == -1:
            raise self._lost(run_id, token, out[1] if len(out) > 1 else None)

    async def complete(self, run_id: str, token: int, status: str, outcome: str) -> bool:
        if status not in FINAL_STATUSES:
            raise ValueError(f"complete() takes a final status, not {status!r}.")
        out = await self._complete(
            keys=[self._key("run", run_id)],
            args=[self.prefix, token, status, outcome, "1" if self.notify else ""],
        )
        if out[0] == -1:
            raise self._lost(run_id, token, out[1] if len(out) > 1 else None)
        return bool(out[0])

    async def complete_child(
        self, parent_id: str, position: str, index: int, child: ChildOutcome
    ) -> tuple[bool, int]:
        if _SEP in position or _SEP in child.status:
            raise ValueError(f"A child's position and status may not contain NUL: {position!r}.")
        written, done = await self._complete_child(
            keys=[self._key("children", parent_id), self._key("slots", parent_id)],
            args=[f"{position}{_SEP}{index}", f"{child.status}{_SEP}{child.outcome}", position],
        )
        return bool(written), int(done)

    # -- operations ------------------------------------------------------------------
    async def list_runs(
        self,
        *,
        status: Collection[str] | None = None,
        function: str | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        """Runs newest first, read from the creation index (``{prefix}runs``, or the
        function's own, ``{prefix}fn:{function}``) a page at a time; a status filter is
        applied to each page (so a rare status costs a walk of the index)."""
        wanted = None if status is None else ({status} if isinstance(status, str) else set(status))
        limit = max(0, int(limit))
        if (wanted is not None and not wanted) or limit == 0:
            return []
        index = f"{self.prefix}runs" if function is None else self._key("fn", function)
        page = limit if wanted is None else max(limit, _LIST_PAGE)
        out: list[RunRecord] = []
        start = 0
        while len(out) < limit:
            ids = await self._client.zrevrange(index, start, start + page - 1)
            if not ids:
                break
            start += len(ids)
            async with self._client.pipeline(transaction=False) as pipe:
                for rid in ids:
                    pipe.hgetall(self._key("run", _s(rid)))
                rows = await pipe.execute()
            for row in rows:
                if not row:
                    continue  # deleted by hand: the index outlived it
                record = _record({_s(k): _s(v) for k, v in row.items()})
                if wanted is None or record.status in wanted:
                    out.append(record)
        out.sort(key=lambda r: (-r.created, r.id))
        return out[:limit]

    async def retry_run(self, run_id: str) -> bool:
        done = await self._retry(
            keys=[self._key("run", run_id), f"{self.prefix}ids"], args=[self.prefix, run_id]
        )
        return bool(done)

    async def cancel_run(self, run_id: str, outcome: str) -> list[str]:
        ids = await self._cancel(
            keys=[self._key("run", run_id), f"{self.prefix}ids"],
            args=[self.prefix, run_id, outcome, "1" if self.notify else ""],
        )
        return sorted(_s(i) for i in ids)

    # -- the completion feed ---------------------------------------------------------
    async def watch_completions(
        self, callback: Callable[[str | None], None]
    ) -> Callable[[], Awaitable[None]]:
        """Call ``callback(run_id)`` when a run of this journal reaches a final status in
        any process (``notify=True`` there), ``callback(None)`` after the subscription
        was re-established (notices published meanwhile are lost: read again).

        One ``SUBSCRIBE`` to :attr:`done_channel` on a connection of its own from the
        client's pool; redis-py reconnects and resubscribes it. Returns ``stop()``.

        Raises:
            RedisError: The subscription could not be made.
        """
        ps = self._client.pubsub()
        try:
            await ps.subscribe(self.done_channel)
            async with asyncio.timeout(10.0):
                while True:
                    confirm = await ps.get_message(timeout=1.0)
                    if confirm is not None and confirm["type"] == "subscribe":
                        break
        except BaseException:
            await ps.aclose()
            raise
        task = asyncio.get_running_loop().create_task(
            self._watch(ps, callback), name="dispytch-redis-journal-feed"
        )

        async def stop() -> None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await ps.aclose()

        return stop

    async def _watch(self, ps: PubSub, callback: Callable[[str | None], None]) -> None:
        backoff = Backoff(initial=0.1, cap=5.0, jitter=0.2)
        while True:
            try:
                msg = await ps.get_message(timeout=None)
            except (RedisError, OSError) as exc:
                delay = backoff.next()
                log.warning(
                    "The Redis journal's completion feed failed (%s: %s); resubscribing in %.1fs.",
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            if msg is None:
                continue
            kind = msg.get("type")
            try:
                if kind == "message":
                    callback(_s(msg["data"]))
                elif kind == "subscribe":  # redis-py resubscribed after a reconnect
                    callback(None)
            except Exception:
                log.exception("A completion callback of the Redis journal failed.")
