"""A transport over a spool directory: ``sample:///var/spool/events``.

One file per message, so any process on the machine can publish and consume, and a
message survives a crash of either side. Layout under the spool directory::

    _groups/<group>/<hash>.json   the route patterns each consumer group subscribed to
    <topic>/tmp/                  files being written (then linked into place)
    <topic>/_parked/new/          published while no consumer group existed yet
    <topic>/<group>/new/          ready for the group's consumers
    <topic>/<group>/cur/          claimed by a consumer: "<file>~<owner>"
    <topic>/<group>/rejected/     given up on (nack without requeue)

Semantics (at-least-once):

- Every consumer group gets each message (the producer hard-links the file into every
  group's ``new/``); consumers of one group compete for it. Groups are durable: once a
  consumer of a group has started, the group's patterns are registered under
  ``_groups/`` and it receives every later message on a matching topic, whether or not
  one of its consumers is running. What was published to a topic no group had
  subscribed to yet is parked and goes to the first group that subscribes to it.
- A consumer claims a file by renaming it into ``cur/`` (atomic: exactly one consumer
  wins). ``ack`` deletes it. ``nack(requeue=True)`` puts it back into ``new/`` with its
  attempt count raised. ``nack(requeue=False)`` moves it into ``rejected/`` (this
  transport's dead-letter folder). ``close`` gives back every file still claimed, and a
  starting consumer gives back the claims of consumer processes that no longer run.
- Files are handled in publish order within a topic; ``ordered=True`` also makes the
  dispatcher handle a topic's messages one after another.

File format: one JSON line (``headers``, ``key`` in base64, ``attempt``), then the
payload bytes unchanged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from dispytch.errors import EmitError, NotStartedError
from dispytch.patterns import RoutePattern
from dispytch.routes import EventSubscription
from dispytch.transport import Capabilities, Message, OutgoingMessage

log = logging.getLogger("dispytch_sample")

_PARKED = "_parked"
_REGISTRY = "_groups"
_RESERVED = {"tmp", _PARKED}
_seq = itertools.count()


def capabilities(*, ordered: bool) -> Capabilities:
    """What a spool consumer offers: redelivery of what was not acknowledged (a file
    given back), ``nack(requeue=True)``, and with ``ordered=True`` one lane per topic. It
    cannot pause a lane, delay a requeue, extend a claim or answer requests."""
    return Capabilities(
        delivery="at-least-once",
        ordered_lanes=ordered,
        requeue=True,
        delayed_requeue=False,
        pause_lanes=False,
        lease_extension=False,
        request_reply=False,
    )


def spool_dir_from_url(url: str) -> tuple[Path, dict[str, str]]:
    """The spool directory and the query options of a ``sample://`` URL.

    ``sample:///abs/dir`` is an absolute path, ``sample://rel/dir`` a relative one.

    Raises:
        ValueError: When the URL names no directory.
    """
    parts = urlsplit(url)
    path = unquote(parts.netloc + parts.path)
    if not path:
        raise ValueError(
            f"{url!r} names no spool directory. Write sample:///absolute/path or "
            "sample://relative/path."
        )
    return Path(path), dict(parse_qsl(parts.query))


def _check_topic(topic: object) -> str:
    if not isinstance(topic, str) or not topic:
        raise EmitError(
            f"The sample transport publishes to topics; got {topic!r}. "
            "Use SampleEventRoute(topic=...) or TopicRoute(topic=...)."
        )
    if "/" in topic or "\\" in topic or topic.startswith((".", "_")) or topic in _RESERVED:
        raise EmitError(
            f"Topic {topic!r} cannot be a directory name here: no slashes, no leading "
            "'.' or '_', and not 'tmp'."
        )
    return topic


def _encode(headers: dict[str, str], key: bytes | None, attempt: int, payload: bytes) -> bytes:
    meta = {
        "headers": headers,
        "key": base64.b64encode(key).decode() if key is not None else None,
        "attempt": attempt,
    }
    return json.dumps(meta, separators=(",", ":")).encode() + b"\n" + payload


def _decode(data: bytes) -> tuple[dict[str, str], bytes | None, int, bytes]:
    head, sep, payload = data.partition(b"\n")
    if not sep:
        raise ValueError("no header line")
    meta = json.loads(head)
    key = base64.b64decode(meta["key"]) if meta.get("key") is not None else None
    return dict(meta.get("headers") or {}), key, int(meta.get("attempt", 1)), payload


def _write_atomic(path: Path, data: bytes, *, fsync: bool) -> None:
    """Write ``data`` so that ``path`` appears complete or not at all."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def _groups(topic_dir: Path) -> list[Path]:
    try:
        entries = list(os.scandir(topic_dir))
    except FileNotFoundError:
        return []
    return [
        Path(e.path)
        for e in entries
        if e.is_dir() and e.name not in _RESERVED and not e.name.startswith(".")
    ]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SpoolProducer:
    """Publishes messages as files into a spool directory.

    Args:
        directory: The spool directory (created on start).
        fsync: Flush every file to disk before ``send`` returns (survives a power loss,
            costs a disk flush per message).
    """

    def __init__(self, directory: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.directory = Path(directory)
        self.fsync = fsync
        self._running = False
        self._registry_cache: tuple[Any, list[tuple[str, list[RoutePattern]]]] | None = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SpoolProducer:
        """Build a producer for ``sample:///dir[?fsync=1]``."""
        directory, query = spool_dir_from_url(url)
        if "fsync" in query:
            options.setdefault("fsync", query["fsync"] not in ("0", "false", ""))
        return cls(directory, **options)

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._running = True

    async def stop(self) -> None:
        self._running = False

    async def send(self, message: OutgoingMessage) -> None:
        if not self._running:
            raise NotStartedError(
                "The sample producer is not started. Call `await emitter.start()` or use "
                "`async with emitter:` before emitting."
            )
        topic = _check_topic(getattr(message.route, "topic", None))
        try:
            self._publish(topic, message)
        except OSError as exc:
            raise EmitError(
                f"Could not write to the spool directory {self.directory}: {exc}"
            ) from exc

    def _publish(self, topic: str, message: OutgoingMessage) -> None:
        topic_dir = self.directory / topic
        tmp_dir = topic_dir / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(_seq):09d}.msg"
        tmp = tmp_dir / name
        _write_atomic(
            tmp, _encode(message.headers, message.key, 1, message.payload), fsync=self.fsync
        )
        try:
            groups = {g.name for g in _groups(topic_dir)}
            groups.update(
                group
                for group, patterns in self._registry()
                if any(p.match(topic) is not None for p in patterns)
            )
            targets = [topic_dir / g / "new" for g in sorted(groups)]
            targets = targets or [topic_dir / _PARKED / "new"]
            for target in targets:
                target.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(tmp, target / name)
                except OSError:  # file systems without hard links
                    _write_atomic(target / name, tmp.read_bytes(), fsync=self.fsync)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _registry(self) -> list[tuple[str, list[RoutePattern]]]:
        """The registered groups and their patterns (re-read when the registry changes)."""
        root = self.directory / _REGISTRY
        try:
            group_dirs = [e for e in os.scandir(root) if e.is_dir()]
            stamp = tuple(sorted((e.name, e.stat().st_mtime_ns) for e in group_dirs))
        except FileNotFoundError:
            return []
        if self._registry_cache is not None and self._registry_cache[0] == stamp:
            return self._registry_cache[1]
        table: list[tuple[str, list[RoutePattern]]] = []
        for entry in group_dirs:
            patterns: list[RoutePattern] = []
            for file in Path(entry.path).glob("*.json"):
                with contextlib.suppress(OSError, ValueError):
                    patterns.extend(RoutePattern(p) for p in json.loads(file.read_text()))
            table.append((entry.name, patterns))
        self._registry_cache = (stamp, table)
        return table

    async def send_batch(self, messages: Sequence[OutgoingMessage]) -> None:
        first: BaseException | None = None
        for message in messages:
            try:
                await self.send(message)
            except Exception as exc:
                first = first or exc
        if first is not None:
            raise first


class SpoolConsumer:
    """Consumes files from a spool directory as a member of a consumer group.

    Args:
        directory: The spool directory.
        group: The consumer group: each group gets every message; members of one group
            share them.
        poll_interval: Seconds between scans when nothing is ready.
        ordered: Handle each topic's messages one after another (sets ``Message.lane``).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        group: str = "default",
        poll_interval: float = 0.02,
        ordered: bool = False,
    ) -> None:
        if not group or "/" in group or group in _RESERVED or group.startswith("."):
            raise ValueError(f"{group!r} cannot be a group name (it is a directory name).")
        self.directory = Path(directory)
        self.group = group
        self.poll_interval = poll_interval
        self.ordered = ordered
        #: What this consumer offers (read by ``dispytch.transport.capabilities_of``).
        self.capabilities = capabilities(ordered=ordered)
        self.owner = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
        self._patterns: list[RoutePattern] = []
        self._claimed: dict[Path, Path] = {}  # cur path -> its group directory
        self._known: set[Path] = set()  # group directories already created
        self._running = False
        self._wakeup: asyncio.Event | None = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SpoolConsumer:
        """Build a consumer for ``sample:///dir[?group=g&poll=0.02&ordered=1]``."""
        directory, query = spool_dir_from_url(url)
        if "group" in query:
            options.setdefault("group", query["group"])
        if "poll" in query:
            options.setdefault("poll_interval", float(query["poll"]))
        if "ordered" in query:
            options.setdefault("ordered", query["ordered"] not in ("0", "false", ""))
        return cls(directory, **options)

    def subscribe(self, subscriptions: Sequence[EventSubscription]) -> None:
        for sub in subscriptions:
            if sub.compiled not in self._patterns:
                self._patterns.append(sub.compiled)

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._register_group()
        for pattern in self._patterns:
            if pattern.is_static:  # the topic may not exist yet: receive from now on
                with contextlib.suppress(OSError):
                    (self.directory / pattern.pattern).mkdir(exist_ok=True)
        self._wakeup = asyncio.Event()
        self._running = True
        for group_dir in self._group_dirs():
            self._recover_orphans(group_dir)

    def _register_group(self) -> None:
        """Record this group's patterns, so producers deliver to it from now on."""
        patterns = sorted({p.pattern for p in self._patterns})
        if not patterns:
            return
        digest = hashlib.sha1("\n".join(patterns).encode()).hexdigest()[:16]
        group_dir = self.directory / _REGISTRY / self.group
        group_dir.mkdir(parents=True, exist_ok=True)
        target = group_dir / f"{digest}.json"
        if not target.exists():
            _write_atomic(target, json.dumps(patterns).encode(), fsync=False)

    # -- scanning ------------------------------------------------------------------------
    def _topics(self) -> list[str]:
        try:
            names = [e.name for e in os.scandir(self.directory) if e.is_dir()]
        except FileNotFoundError:
            return []
        return sorted(
            n
            for n in names
            if not n.startswith((".", "_")) and any(p.match(n) is not None for p in self._patterns)
        )

    def _group_dirs(self) -> list[Path]:
        out = []
        for topic in self._topics():
            group_dir = self.directory / topic / self.group
            if group_dir not in self._known:
                for sub in ("new", "cur", "rejected"):
                    (group_dir / sub).mkdir(parents=True, exist_ok=True)
                self._known.add(group_dir)
            self._unpark(self.directory / topic, group_dir)
            out.append(group_dir)
        return out

    @staticmethod
    def _unpark(topic_dir: Path, group_dir: Path) -> None:
        parked = topic_dir / _PARKED / "new"
        try:
            names = os.listdir(parked)
        except FileNotFoundError:
            return
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.rename(parked / name, group_dir / "new" / name)

    def _recover_orphans(self, group_dir: Path) -> None:
        """Give back claims of consumers whose process is gone (they crashed)."""
        cur = group_dir / "cur"
        for name in os.listdir(cur):
            original, _, owner = name.rpartition("~")
            pid_text = owner.partition(".")[0]
            if not original or not pid_text.isdigit():
                continue
            if int(pid_text) == os.getpid() or _pid_alive(int(pid_text)):
                continue
            log.info("Redelivering %s, claimed by the dead process %s", original, pid_text)
            self._give_back(cur / name, group_dir / "new" / original)

    def _give_back(self, claimed: Path, target: Path) -> None:
        try:
            headers, key, attempt, payload = _decode(claimed.read_bytes())
        except FileNotFoundError:
            return
        except ValueError:
            os.replace(claimed, target)  # not ours to judge; let the next reader reject it
            return
        _write_atomic(target, _encode(headers, key, attempt + 1, payload), fsync=False)
        with contextlib.suppress(FileNotFoundError):
            claimed.unlink()

    def _claim_next(self) -> Message | None:
        for group_dir in self._group_dirs():
            topic = group_dir.parent.name
            new = group_dir / "new"
            for name in sorted(n for n in os.listdir(new) if not n.startswith(".")):
                cur = group_dir / "cur" / f"{name}~{self.owner}"
                try:
                    os.rename(new / name, cur)
                except FileNotFoundError:
                    continue  # another consumer of the group claimed it first
                try:
                    headers, key, attempt, payload = _decode(cur.read_bytes())
                except (ValueError, KeyError) as exc:
                    log.error("Rejecting unreadable spool file %s: %s", cur, exc)
                    os.replace(cur, group_dir / "rejected" / name)
                    continue
                self._claimed[cur] = group_dir
                return Message(
                    payload,
                    route=topic,
                    headers=headers,
                    key=key,
                    attempt=attempt,
                    metadata={"file": name, "group": self.group, "directory": str(group_dir)},
                    lane=topic if self.ordered else None,
                    token=cur,
                )
        return None

    async def listen(self) -> AsyncIterator[Message]:
        if not self._running or self._wakeup is None:
            raise NotStartedError("The sample consumer is not started; call start() first.")
        wakeup = self._wakeup
        while self._running:
            message = self._claim_next()
            if message is not None:
                yield message
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), self.poll_interval)

    # -- settling ------------------------------------------------------------------------
    async def ack(self, message: Message) -> None:
        cur: Path = message.token
        if self._claimed.pop(cur, None) is not None:
            with contextlib.suppress(FileNotFoundError):
                cur.unlink()

    async def nack(self, message: Message, *, requeue: bool) -> None:
        """Requeue into ``new/`` (attempt + 1), or move into ``rejected/`` for good."""
        cur: Path = message.token
        group_dir = self._claimed.pop(cur, None)
        if group_dir is None:
            return
        original = cur.name.rpartition("~")[0]
        if requeue:
            self._give_back(cur, group_dir / "new" / original)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.replace(cur, group_dir / "rejected" / original)

    async def stop(self) -> None:
        self._running = False
        if self._wakeup is not None:
            self._wakeup.set()

    async def close(self) -> None:
        """Give back every file this consumer still holds, for redelivery."""
        await self.stop()
        for cur, group_dir in list(self._claimed.items()):
            del self._claimed[cur]
            self._give_back(cur, group_dir / "new" / cur.name.rpartition("~")[0])
