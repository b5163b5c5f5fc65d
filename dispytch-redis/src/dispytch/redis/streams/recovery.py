"""Recovery of Redis stream entries: where to look for "why was my entry redelivered".

Every ``claim_interval`` the keeper:

* finds streams matching pattern subscriptions (``SCAN ... TYPE stream``, every
  ``discover_interval``); a name that is not valid UTF-8 is skipped with a WARNING
  (once per name) instead of stopping discovery;
* resets the idle time of entries this consumer still holds (``XCLAIM ... JUSTID``), so
  live members are not robbed however long a handler runs; entries nacked with a delay
  longer than ``min_idle_time`` are held the same way until their delay is nearly over;
* takes over entries idle longer than ``min_idle_time`` (``XAUTOCLAIM``), those of a
  member that died and those handed back, and delivers them again with
  ``Message.attempt`` from Redis's delivery counter (``XPENDING``); an entry delivered
  more than ``max_deliveries`` times is given up instead (dead-letter stream).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dispytch.redis.streams.reader import entry_fields, to_messages
from dispytch.redis.streams.settle import Token, hand_back

if TYPE_CHECKING:
    from dispytch.redis.streams.consumer import RedisStreamConsumer

log = logging.getLogger("dispytch.redis")


class Keeper:
    """The recovery loop of one :class:`RedisStreamConsumer`."""

    def __init__(self, consumer: RedisStreamConsumer) -> None:
        self.c = consumer
        self._next_discovery = 0.0
        self._bad_names: set[bytes] = set()
        #: Entries nacked with a long delay: token -> when to let them be reclaimed.
        self.delayed: dict[Token, float] = {}

    async def run(self) -> None:
        c = self.c
        while c._running:
            if c._patterns and time.monotonic() >= self._next_discovery:
                self._next_discovery = time.monotonic() + c.discover_interval
                await c._guard(self.discover("0"))
                c._spawn_readers()
            await c._guard(self.refresh())
            for (stream, group), member in list(c._targets.items()):
                if not c._running:
                    return
                if stream in c._paused:
                    continue
                await c._guard(self.autoclaim(stream, group, member))
            pause = c.claim_interval
            if c._patterns:
                pause = min(pause, max(0.0, self._next_discovery - time.monotonic()))
            try:
                await asyncio.wait_for(c._poke.wait(), pause)
            except TimeoutError:
                pass
            c._poke.clear()

    def stream_name(self, raw: bytes | str) -> str | None:
        """A stream name as text, or ``None`` (with one WARNING) when not valid UTF-8."""
        if isinstance(raw, str):
            return raw
        try:
            return raw.decode()
        except UnicodeDecodeError:
            if raw not in self._bad_names:
                if len(self._bad_names) < 10_000:
                    self._bad_names.add(raw)
                log.warning(
                    "Skipping Redis stream %r: its name is not valid UTF-8, so Dispytch "
                    "cannot route it. Rename the stream (RENAME) to read it.",
                    raw.decode("utf-8", "replace"),
                )
            return None

    async def discover(self, start_id: str) -> None:
        """Find streams matching the pattern subscriptions (``SCAN ... TYPE stream``)."""
        c = self.c
        for pattern, group, member in c._patterns:
            async for raw in c._r.scan_iter(match=pattern.glob, count=1000, _type="stream"):
                name = self.stream_name(raw)
                if name is None or (name, group) in c._targets or pattern.match(name) is None:
                    continue
                await c._create_group(name, group, start_id)
                if c._add_target(name, group, member):
                    log.info("Reading Redis stream %r (matches %r).", name, pattern.pattern)

    async def refresh(self) -> None:
        """Reset the idle time of entries we still hold (``XCLAIM ... JUSTID``)."""
        c = self.c
        now = time.monotonic()
        threshold = now - c.min_idle_time / 2
        stale: list[Token] = []
        for token, since in c._inflight.items():
            if since <= threshold:
                stale.append(token)
                c._inflight[token] = now
        release: list[tuple[Token, float]] = []
        for token, due in list(self.delayed.items()):
            if due - now <= c.min_idle_time:
                # From now on the idle time alone keeps it until its delay is over.
                del self.delayed[token]
                release.append((token, due))
            else:
                stale.append(token)
        if stale:
            await hand_back(c._r, stale, 0)
        for token, due in release:
            remaining = max(0.0, due - now)
            await hand_back(c._r, [token], int((c.min_idle_time - remaining) * 1000))

    async def autoclaim(self, stream: str, group: str, member: str) -> None:
        c = self.c
        min_idle_ms = int(c.min_idle_time * 1000)
        start: bytes | str = "0-0"
        for _ in range(100):  # bounded work per pass
            if not c._running:
                return
            count = c._reserve(recovery=True)
            if count == 0:
                return
            try:
                result = await c._r.xautoclaim(
                    stream, group, member, min_idle_ms, start_id=start, count=count
                )
                start, entries = result[0], result[1]
                fresh = [
                    (i, f)
                    for i, f in entries
                    if (stream, group, i, member) not in c._inflight
                    and (stream, group, i, member) not in self.delayed
                ]
                if fresh:
                    await self.deliver_reclaimed(stream, group, member, fresh)
            finally:
                c._release(count)
            if start in (b"0-0", "0-0"):
                return

    async def deliver_reclaimed(
        self, stream: str, group: str, member: str, entries: Sequence[Any]
    ) -> None:
        """Deliver reclaimed entries with their delivery counts, or give them up."""
        c = self.c
        ids = [e[0] for e in entries]
        rows = await c._r.xpending_range(
            stream,
            group,
            min=ids[0],
            max=ids[-1],
            count=len(ids) + len(c._inflight) + 16,
            consumername=member,
        )
        counts = {row["message_id"]: int(row["times_delivered"]) for row in rows}
        deliver = []
        limit = c.max_deliveries
        for entry in entries:
            entry_id, raw = entry[0], entry[1]
            count = counts.get(entry_id, 1)
            if limit is not None and raw is not None and count > limit:
                token = (stream, group, entry_id, member)
                await c._give_up_raw(
                    token,
                    entry_fields(raw) or {},
                    count,
                    "MaxDeliveriesExceeded",
                    f"delivered {count - 1} times without being acknowledged "
                    f"(max_deliveries={limit})",
                )
                continue
            deliver.append((entry_id, raw))
        if deliver:
            log.info(
                "Recovered %d pending entr%s of Redis stream %r (group %r).",
                len(deliver),
                "y" if len(deliver) == 1 else "ies",
                stream,
                group,
            )
            c._deliver(to_messages(c, stream, group, member, deliver, counts))

    async def read_own_pending(self, group: str, member: str, streams: list[str]) -> None:
        """Entries this member name left pending before a restart (fixed names only)."""
        c = self.c
        for stream in streams:
            last: Any = "0"
            while c._running:
                count = c._reserve(recovery=True)
                if count == 0:
                    await c._wait_room()
                    continue
                try:
                    response = await c._r.xreadgroup(group, member, {stream: last}, count=count)
                    entries: list[Any]
                    if isinstance(response, dict):  # RESP3
                        entries = next(iter(response.values()), [[]])[0] if response else []
                    else:
                        entries = response[0][1] if response else []
                    if not entries:
                        break
                    last = entries[-1][0]
                    mine = [e for e in entries if (stream, group, e[0], member) not in c._inflight]
                    if mine:
                        await self.deliver_reclaimed(stream, group, member, mine)
                finally:
                    c._release(count)

    async def forget_member(self) -> None:
        """Delete our generated member name from each group if it holds nothing."""
        c = self.c
        for (stream, group), member in c._targets.items():
            info = await c._r.xpending(stream, group)
            holders = set()
            for holder in info.get("consumers") or ():
                name = holder["name"]
                holders.add(name.decode("utf-8", "replace") if isinstance(name, bytes) else name)
            if member not in holders:
                await c._r.xgroup_delconsumer(stream, group, member)
