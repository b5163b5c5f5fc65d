"""dispytch.fastapi with FastAPI's TestClient and a real uvicorn on loopback."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from dispytch import EventEmitter
from dispytch.fastapi import Dispytch, Emitter, dependency, lifespan
from dispytch.testing import Kit, memory
from fastapi import FastAPI
from fastapi.testclient import TestClient

from . import seed_example, service


def eventually(pred: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
async def kit() -> AsyncIterator[Kit]:
    # The app's loop runs in the TestClient's (or uvicorn's) thread: the kit only swaps
    # the clients and records; the app's lifespan starts them there, in real time.
    service.welcomed.clear()
    async with memory(service.emitter, service.dispatcher, start=False, clock=False) as k:
        yield k


def test_a_post_emits_an_event_a_dispatcher_handles(kit: Kit) -> None:
    with TestClient(service.make_app(run_dispatcher=True)) as client:
        r = client.post("/signups", json={"email": "ada@example.com"})
        assert r.status_code == 202
        eventually(lambda: service.welcomed, "the handler")
    assert service.welcomed == ["ada@example.com"]
    kit.assert_emitted(service.UserSignedUp, email="ada@example.com", request_key=None)
    kit.assert_nothing_else_emitted()


def test_no_dispatcher_runs_in_the_web_process_unless_asked(kit: Kit) -> None:
    with TestClient(service.make_app()) as client:
        assert client.post("/signups", json={"email": "bob@example.com"}).status_code == 202
        assert not service.dispatcher.running
    kit.assert_emitted(service.UserSignedUp, email="bob@example.com")
    assert service.welcomed == []
    # The event waits on the broker for a worker.
    assert kit.broker.parked == 1


class Counting:
    """A component counting its start and stop calls."""

    def __init__(self) -> None:
        self.starts = 0
        self.stops = 0

    async def start(self) -> None:
        self.starts += 1

    async def stop(self) -> None:
        self.stops += 1


#: How any other part plugs in: a component in the lifespan, a dependency.
Things = dependency("things", Counting)


class CountingEmitter(EventEmitter):
    starts = 0
    stops = 0

    async def start(self) -> None:
        type(self).starts += 1
        await super().start()

    async def stop(self) -> None:
        type(self).stops += 1
        await super().stop()


async def test_lifespan_starts_and_stops_each_once() -> None:
    emitter = CountingEmitter.from_url("memory://fastapi-counting")
    bus = Counting()
    app = FastAPI(lifespan=lifespan(emitter, components={"things": bus}))
    seen: list[Any] = []

    @app.get("/things")
    async def get_things(b: Things) -> dict[str, bool]:
        seen.append(b)
        return {"ok": True}

    async with memory(emitter, start=False, clock=False):
        with TestClient(app) as client:
            assert client.get("/things").json() == {"ok": True}
            assert client.get("/things").json() == {"ok": True}
        # (Counted before the kit's own exit, which stops what is still started.)
        assert (CountingEmitter.starts, CountingEmitter.stops) == (1, 1)
    assert (bus.starts, bus.stops) == (1, 1)
    assert seen == [bus, bus]


def test_the_apps_own_lifespan_runs_inside(kit: Kit) -> None:
    order: list[str] = []

    @contextlib.asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        order.append(f"own start, emitter running: {service.emitter.producer._running}")
        yield {"db": "connection"}
        order.append(f"own stop, emitter running: {service.emitter.producer._running}")

    app = FastAPI(lifespan=lifespan(service.emitter, wrap=own))
    with TestClient(app):
        pass
    assert order == ["own start, emitter running: True", "own stop, emitter running: True"]


def test_idempotency_key(kit: Kit) -> None:
    with TestClient(service.make_app()) as client:
        r = client.post(
            "/signups", json={"email": "k@example.com"}, headers={"Idempotency-Key": "op-1"}
        )
        assert r.json()["key"] == "op-1"
        assert client.put("/orders/7", headers={"Idempotency-Key": "run-7"}).json() == {
            "order": 7,
            "run_id": "run-7",
        }
        missing = client.put("/orders/7")
        assert missing.status_code == 400
        assert "needs an Idempotency-Key header" in missing.json()["detail"]
        long = client.put("/orders/7", headers={"Idempotency-Key": "x" * 256})
        assert long.status_code == 400 and "1 to 255 characters" in long.json()["detail"]
        spaced = client.put("/orders/7", headers={"Idempotency-Key": "a b"})
        assert spaced.status_code == 400 and "printable ASCII" in spaced.json()["detail"]
    kit.assert_emitted(service.UserSignedUp, email="k@example.com", request_key="op-1")


def test_a_missing_lifespan_is_explained() -> None:
    app = FastAPI()

    @app.get("/emit")
    async def emit(emitter: Emitter) -> None: ...

    with (
        TestClient(app, raise_server_exceptions=True) as client,
        pytest.raises(RuntimeError) as info,
    ):
        client.get("/emit")
    assert "No emitter in the app's lifespan state" in str(info.value)
    assert "lifespan=dispytch.fastapi.lifespan(emitter)" in str(info.value)


def test_bad_lifespan_arguments() -> None:
    with pytest.raises(TypeError, match="EventDispatcher objects"):
        lifespan(dispatchers=[service.emitter])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="EventEmitter objects"):
        lifespan(service.dispatcher)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reserved name"):
        lifespan(components={"dispytch_emitter": object()})
    with pytest.raises(ValueError, match="reserved name"):
        lifespan(components={"dispytch_jobs": object()})
    with pytest.raises(TypeError, match="wraps the app's own lifespan"):
        Dispytch(FastAPI(), service.emitter, wrap=None)


async def test_the_seed_example() -> None:
    seed_example.published.clear()
    async with memory(seed_example.emitter, seed_example.dispatcher, start=False, clock=False) as k:
        with TestClient(seed_example.app) as client:
            assert client.get("/").json() == {"answer": 42}
            eventually(lambda: seed_example.published, "publish to run")
        k.assert_emitted(seed_example.Publish, url="https://httpstat.us/200")
    assert seed_example.published == [("https://httpstat.us/200", {"hello": "world"})]


# -- a real server ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        eventually(lambda: server.started, "uvicorn to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)
        assert not thread.is_alive()


def _post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, json.loads(resp.read())


def test_uvicorn_on_loopback(kit: Kit) -> None:
    with serving(service.make_app(run_dispatcher=True)) as base:
        status, body = _post(f"{base}/signups", {"email": "grace@example.com"})
        assert status == 202 and body["accepted"] == "grace@example.com"
        eventually(lambda: service.welcomed, "the handler")
    assert service.welcomed == ["grace@example.com"]
    assert not service.dispatcher.running  # stopped by the lifespan on shutdown
    kit.assert_emitted(service.UserSignedUp, email="grace@example.com")


def test_uvicorn_without_dispatcher(kit: Kit) -> None:
    with serving(service.make_app()) as base:
        status, _ = _post(f"{base}/signups", {"email": "h@example.com"})
        assert status == 202
        assert not service.dispatcher.running
    assert service.welcomed == []
    kit.assert_emitted(service.UserSignedUp, email="h@example.com")
