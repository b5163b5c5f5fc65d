"""The repository's quickstart (examples/quickstart.py) tested with the kit, as a user
would test their own service: its handlers, retry and dead letter included."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from dispytch import EventDispatcher
from dispytch.testing import memory

QUICKSTART = Path(__file__).parents[2] / "examples" / "quickstart.py"


@pytest.fixture
def quickstart() -> ModuleType:
    spec = importlib.util.spec_from_file_location("quickstart_under_test", QUICKSTART)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


async def test_quickstart_handlers(quickstart: ModuleType, capsys: pytest.CaptureFixture[str]):
    qs = quickstart
    dispatcher = EventDispatcher.from_url(qs.URL)  # built as the quickstart's main() does
    dispatcher.add_router(qs.users)
    async with memory(qs.emitter, dispatcher) as kit:
        people = [
            qs.User(id=1, email="ada@example.com", name="Ada"),
            qs.User(id=2, email="flaky@example.com", name="Grace"),
            qs.User(id=3, email="nobody@invalid", name="Nobody"),
        ]
        for person in people:
            await qs.emitter.emit(qs.UserRegistered(user_id=person.id, user=person))
        await qs.emitter.emit(qs.EmailChanged(user_id=1, new_email="ada@lovelace.dev"))
        await kit.idle()

        for person in people:
            kit.assert_emitted(qs.UserRegistered, topic=f"user.{person.id}.events", user=person)
        kit.assert_emitted(qs.EmailChanged, user_id=1, new_email="ada@lovelace.dev")
        # The invalid address failed three tries and was dead-lettered, whole.
        [dead] = kit.assert_emitted(qs.UserRegistered, topic="user.dead-letters", user_id=3)
        assert dead.user.email == "nobody@invalid"
        kit.assert_nothing_else_emitted()

    out = capsys.readouterr().out
    # The flaky address: failed once, retried, then welcomed.
    assert "user 2: Grace (try 1)" in out and "user 2: Grace (try 2)" in out
    assert "welcome sent to flaky@example.com" in out
    assert "user 3: Nobody (try 3)" in out
    assert "(try 4)" not in out
    [letter] = qs.dead
    assert letter.headers["dispytch-error-type"].endswith("ValueError")
    assert "cannot deliver to nobody@invalid" in letter.headers["dispytch-error-message"]
    assert dispatcher.stats["dead_lettered"] == 1
    assert dispatcher.stats["handled"] >= 4
