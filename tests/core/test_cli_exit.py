"""``dispytch run`` exits non-zero when the dispatcher ended because its consumer failed."""

from __future__ import annotations

import logging
import textwrap
import uuid
from pathlib import Path

import pytest
from dispytch.cli import main

APP = """
from dispytch import EventDispatcher
from dispytch.errors import ConsumerClosedError
from dispytch.memory import MemoryBroker, MemoryConsumer


class Closing(MemoryConsumer):
    async def listen(self):
        raise ConsumerClosedError("the broker cancelled this consumer")
        yield  # an async generator


class Ending(MemoryConsumer):
    async def listen(self):
        return
        yield


closing = EventDispatcher(Closing(MemoryBroker("cli-closing")), stop_timeout=1)
ending = EventDispatcher(Ending(MemoryBroker("cli-ending")), stop_timeout=1)


@closing.handler(topic="t")
@ending.handler(topic="t")
async def handle() -> None: ...
"""


@pytest.fixture
def app(tmp_path: Path) -> str:
    name = f"cli_app_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(APP))
    return name


def test_run_exits_1_when_the_consumer_failed(
    app: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        code = main(["run", f"{app}:closing", "--app-dir", str(tmp_path)])
    assert code == 1
    assert "stopped because its consumer failed: ConsumerClosedError" in caplog.text
    assert "the broker cancelled this consumer" in caplog.text


def test_run_exits_0_when_the_consumer_simply_ended(
    app: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        code = main(["run", f"{app}:ending", "--app-dir", str(tmp_path)])
    assert code == 0
    assert "stopped on its own" in caplog.text
