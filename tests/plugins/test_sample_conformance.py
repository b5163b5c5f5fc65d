"""The sample third-party transport passes the same conformance suite as the built-ins.

Runs from the sample's source tree (no installation needed); the installed-wheel path is
covered by test_sample_installed.py.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest
from dispytch.patterns import RoutePattern
from dispytch.testing import TransportHarness
from dispytch.testing.conformance import TransportConformance
from dispytch.testing.harness import Mode

from .conftest import SAMPLE_SRC

if str(SAMPLE_SRC) not in sys.path:
    sys.path.insert(0, str(SAMPLE_SRC))

from dispytch_sample import SampleEventRoute, SampleEventSubscription  # noqa: E402
from dispytch_sample.transport import SpoolConsumer, SpoolProducer, capabilities  # noqa: E402


class SampleHarness(TransportHarness):
    """The spool transport, each case in its own temporary directory.

    ``"client"`` mode builds ``SpoolProducer(directory)`` / ``SpoolConsumer(directory,
    ...)`` (the directory is this transport's "client"), ``"url"`` mode goes through
    ``from_url`` with ``sample:///dir?group=...``. :meth:`publish_raw` writes a message
    file the way another process would, by the layout the transport documents, without
    the sample's code; :meth:`rejected` reads the groups' ``rejected/`` folders, where the
    docs say rejected messages end.
    """

    name = "sample"
    redelivery_timeout = 5.0
    # Headers travel in a JSON line: values that are not UTF-8 make the file unreadable,
    # and the consumer rejects it (logged, into rejected/).
    undecodable_headers = "reject"

    def __init__(self, mode: Mode = "client", *, ordered: bool = False) -> None:
        self.mode = mode
        self.ordered = ordered
        self.capabilities = capabilities(ordered=ordered)
        self.directory = Path(tempfile.mkdtemp(prefix="dispytch-sample-"))
        self.url = f"sample://{self.directory}"

    def route(self, name: str) -> SampleEventRoute:
        return SampleEventRoute(topic=name)

    def subscription(self, name: str, *, group: str) -> SampleEventSubscription:
        return SampleEventSubscription(topic=name)

    def producer(self) -> SpoolProducer:
        if self.mode == "url":
            return SpoolProducer.from_url(self.url)
        return SpoolProducer(self.directory)

    def consumer(self, *, group: str) -> SpoolConsumer:
        if self.mode == "url":
            ordered = "1" if self.ordered else "0"
            return SpoolConsumer.from_url(f"{self.url}?group={group}&poll=0.01&ordered={ordered}")
        return SpoolConsumer(self.directory, group=group, poll_interval=0.01, ordered=self.ordered)

    async def unstarted_producer(self) -> SpoolProducer:
        return self.producer()  # a producer over a directory is usable only once started

    async def publish_raw(
        self, name: str, payload: bytes, headers: Mapping[str, bytes] | None = None
    ) -> None:
        """Write the message file as another process would: one JSON line (``headers``,
        ``key``, ``attempt``), the payload, into ``<topic>/<group>/new/`` of every group
        there or registered for the topic (else ``<topic>/_parked/new/``), via a
        temporary file and a rename. Header values that are not UTF-8 are written as the
        raw bytes a byte-oriented JSON writer would put there (quotes, backslashes and
        control characters escaped)."""
        swaps: dict[str, bytes] = {}
        values: dict[str, str] = {}
        for key, value in (headers or {}).items():
            try:
                values[key] = value.decode()
            except UnicodeDecodeError:
                token = f"@@raw-{uuid.uuid4().hex}@@"
                swaps[token] = _json_bytes(value)
                values[key] = token
        head = json.dumps({"headers": values, "key": None, "attempt": 1}).encode()
        for token, raw in swaps.items():
            head = head.replace(token.encode(), raw)
        data = head + b"\n" + payload
        topic_dir = self.directory / name
        targets = [d / "new" for d in _group_dirs(topic_dir)]
        targets += [
            topic_dir / group / "new"
            for group in _registered(self.directory, name)
            if topic_dir / group / "new" not in targets
        ]
        file_name = f"{time.time_ns():020d}-raw-{uuid.uuid4().hex[:8]}.msg"
        for target in targets or [topic_dir / "_parked" / "new"]:
            target.mkdir(parents=True, exist_ok=True)
            tmp = target.parent / f".{file_name}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, target / file_name)

    async def rejected(self, name: str, *, group: str) -> list[bytes] | None:
        """The payloads in ``<topic>/<group>/rejected/`` of every topic ``name`` matches
        (a file's payload is what follows its first line)."""
        pattern = RoutePattern(name)
        out: list[bytes] = []
        if not self.directory.exists():
            return out
        for topic_dir in sorted(self.directory.iterdir()):
            if not topic_dir.is_dir() or pattern.match(topic_dir.name) is None:
                continue
            folder = topic_dir / group / "rejected"
            if folder.is_dir():
                for file in sorted(folder.iterdir()):
                    out.append(file.read_bytes().partition(b"\n")[2])
        return out

    async def cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _json_bytes(value: bytes) -> bytes:
    """``value`` inside a JSON string, escaped as JSON escapes but not decoded."""
    out = bytearray()
    for byte in value:
        if byte in (0x22, 0x5C):
            out += b"\\" + bytes([byte])
        elif byte < 0x20:
            out += b"\\u%04x" % byte
        else:
            out.append(byte)
    return bytes(out)


def _group_dirs(topic_dir: Path) -> list[Path]:
    """The consumer groups a topic directory holds (not ``tmp``, ``_parked``, dot files)."""
    if not topic_dir.is_dir():
        return []
    return sorted(
        d
        for d in topic_dir.iterdir()
        if d.is_dir() and d.name != "tmp" and not d.name.startswith((".", "_"))
    )


def _registered(directory: Path, topic: str) -> list[str]:
    """Groups whose registered patterns (``_groups/<group>/*.json``) match ``topic``."""
    root = directory / "_groups"
    if not root.is_dir():
        return []
    groups = []
    for group_dir in sorted(root.iterdir()):
        patterns = [p for f in group_dir.glob("*.json") for p in json.loads(f.read_text())]
        if any(RoutePattern(p).match(topic) is not None for p in patterns):
            groups.append(group_dir.name)
    return groups


class TestSampleTransport(TransportConformance):
    timeout = 10.0

    @pytest.fixture(
        params=[
            pytest.param(("client", False), id="client"),
            pytest.param(("url", False), id="url"),
            pytest.param(("client", True), id="client-ordered"),
        ]
    )
    async def harness(self, request: pytest.FixtureRequest) -> AsyncIterator[SampleHarness]:
        mode, ordered = request.param
        h = SampleHarness(mode, ordered=ordered)
        yield h
        await h.cleanup()
