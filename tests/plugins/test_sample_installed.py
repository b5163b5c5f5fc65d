"""The third-party proof: with core and the sample distribution installed from wheels
(and nothing else of Dispytch), the sample is discovered through its entry point.

Runs only when ``dispytch-sample-transport`` is installed; the nox session builds it as
a wheel, installs core plus that wheel only, and runs this module.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest
from dispytch import Event, EventBase, EventDispatcher, EventEmitter
from dispytch.plugins import load_failures, plugin_infos, transport_for_url

try:
    SAMPLE_VERSION = importlib.metadata.version("dispytch-sample-transport")
except importlib.metadata.PackageNotFoundError:
    pytest.skip(
        "dispytch-sample-transport is not installed (pip install tests/plugins/sample_plugin)",
        allow_module_level=True,
    )

from dispytch_sample import SampleEventRoute, SampleEventSubscription  # noqa: E402

DISPYTCH = str(Path(sys.executable).with_name("dispytch"))
TIMEOUT = 10.0


class Shipped(EventBase):
    __route__ = SampleEventRoute(topic="orders.{order_id}.shipped")
    order_id: int
    carrier: str


def test_discovered_through_its_entry_point():
    info = {i.name: i for i in plugin_infos()}["sample"]
    assert (info.distribution, info.version, info.entry_point) == (
        "dispytch-sample-transport",
        SAMPLE_VERSION,
        "dispytch_sample.plugin",
    )
    assert [f for f in load_failures() if f.name == "sample"] == []
    assert transport_for_url("sample:///tmp/x").name == "sample"


def test_dispytch_plugins_lists_it():
    text = subprocess.run(
        [DISPYTCH, "plugins"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert f"sample: dispytch-sample-transport {SAMPLE_VERSION}\n" in text
    assert "  entry point: dispytch_sample.plugin\n" in text
    assert "  transport sample (sample://) - one file per message in a spool directory" in text
    assert "  serializer json-gzip (application/json+gzip) - gzip-compressed JSON\n" in text
    assert "  middlewares: sample-audit\n" in text

    report = json.loads(
        subprocess.run(
            [DISPYTCH, "plugins", "--json"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    )
    sample = {p["name"]: p for p in report["plugins"]}["sample"]
    assert sample["distribution"] == "dispytch-sample-transport"
    assert [t["schemes"] for t in sample["transports"]] == [["sample"]]
    assert [s["name"] for s in sample["serializers"]] == ["json-gzip"]
    assert [m["name"] for m in sample["middlewares"]] == ["sample-audit"]


async def test_emit_and_dispatch_end_to_end_with_its_middleware_by_name(tmp_path):
    url = f"sample://{tmp_path / 'spool'}?poll=0.01"
    audit = tmp_path / "audit.log"
    got: list[tuple[int, str, int]] = []
    done = asyncio.Event()
    dispatcher = EventDispatcher.from_url(
        url, group="shipping", middlewares=[("sample-audit", {"path": str(audit)})]
    )

    @dispatcher.handler(
        SampleEventSubscription(topic="orders.{order_id}.shipped"),
        middlewares=[("retry", {"attempts": 2, "delay": 0})],
    )
    async def on_shipped(event: Event[Shipped], order_id: int):
        got.append((order_id, event.body.carrier, event.attempt))
        if len(got) == 3:
            done.set()

    async with EventEmitter.from_url(url, serializer="json-gzip") as emitter, dispatcher:
        for i in range(3):
            await emitter.emit(Shipped(order_id=i, carrier="ups"))
        await asyncio.wait_for(done.wait(), TIMEOUT)
    assert sorted(got) == [(0, "ups", 1), (1, "ups", 1), (2, "ups", 1)]
    lines = sorted(line.split("\t")[:2] for line in audit.read_text().splitlines())
    assert lines == [["ok", f"orders.{i}.shipped"] for i in range(3)]
