"""Durable functions in a FastAPI app: dispatched from sync and async endpoints, a worker
beside the app in its lifespan (only when asked with ``lifespan()``), the Idempotency-Key
header as the run id; the seed's dispatch-py example as written. httpx's ASGI transport with
the lifespan run (``asgi.serve_asgi``), FastAPI's TestClient, and a real uvicorn."""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from dispytch.durable import Durable, IdempotencyConflictError
from dispytch.fastapi import Dispytch, Jobs, lifespan
from fastapi import FastAPI
from fastapi.testclient import TestClient

from . import durable_service
from .asgi import serve_asgi
from .test_fastapi import serving

HERE = Path(__file__).parent


async def until(pred: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def eventually(pred: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Sink:
    """An HTTP server on loopback recording each POST (path, body)."""

    url: str
    received: list[tuple[str, bytes]] = field(default_factory=list)


@pytest.fixture
def sink() -> Iterator[Sink]:
    received: list[tuple[str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            received.append((self.path, body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Sink(f"http://127.0.0.1:{server.server_address[1]}/200", received)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def seed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sink: Sink) -> Iterator[ModuleType]:
    """seed_durable_example.py imported fresh, configured from the environment."""
    tag = uuid.uuid4().hex[:12]
    monkeypatch.setenv("DISPYTCH_DURABLE_TRANSPORT", f"memory://seed-durable-{tag}")
    monkeypatch.setenv("DISPYTCH_DURABLE_STORE", f"sqlite:///{tmp_path / 'journal.sqlite3'}")
    monkeypatch.setenv("SEED_PUBLISH_URL", sink.url)
    spec = importlib.util.spec_from_file_location(
        f"seed_durable_{tag}", HERE / "seed_durable_example.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    assert not module.dispytch.durable.running  # the lifespan stopped the worker


@pytest.fixture
def urls(tmp_path: Path) -> tuple[str, str]:
    return f"memory://fastapi-durable-{uuid.uuid4().hex}", f"sqlite:///{tmp_path / 'j.db'}"


@pytest.fixture(autouse=True)
def _clear_effects() -> None:
    durable_service.effects.clear()


# -- the seed's example ----------------------------------------------------------------


async def test_the_seed_example_with_httpx(seed: ModuleType, sink: Sink) -> None:
    async with serve_asgi(seed.app) as client:
        assert seed.dispytch.durable.running  # the worker runs beside the app
        r = await client.get("/")
        assert r.status_code == 200 and r.json() == {"answer": 42}
        await until(lambda: sink.received, "publish to post")
        r = await client.get("/")
        await until(lambda: len(sink.received) == 2, "the second publish")
    assert sink.received == [("/200", b"hello=world")] * 2


def test_the_seed_example_with_testclient(seed: ModuleType, sink: Sink) -> None:
    with TestClient(seed.app) as client:
        assert client.get("/").json() == {"answer": 42}
        eventually(lambda: sink.received, "publish to post")
    assert sink.received == [("/200", b"hello=world")]


def test_the_seed_example_on_uvicorn(seed: ModuleType, sink: Sink) -> None:
    with serving(seed.app) as base:
        with urllib.request.urlopen(f"{base}/", timeout=10) as resp:
            assert resp.read() == b'{"answer":42}'
        eventually(lambda: sink.received, "publish to post")
    assert sink.received == [("/200", b"hello=world")]


# -- dispatching from endpoints --------------------------------------------------------


async def _status(client: Any, run_id: str, wanted: str) -> dict[str, Any]:
    async def poll() -> dict[str, Any] | None:
        body: dict[str, Any] = (await client.get(f"/runs/{run_id}")).json()
        return body if body["status"] == wanted else None

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        got = await poll()
        if got is not None:
            return got
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} not {wanted} within 20 s")


async def test_the_idempotency_key_is_the_run_id(urls: tuple[str, str]) -> None:
    app, _ = durable_service.make_app(*urls)
    async with serve_asgi(app) as client:
        body = {"amount": "9.90"}
        key = {"Idempotency-Key": "o7"}
        first = await client.post("/orders/7/checkout", json=body, headers=key)
        assert first.status_code == 202 and first.json() == {"run": "o7"}
        done = await _status(client, "o7", "succeeded")
        assert done["outcome"] == '["reservation-7","9.90"]' and done["attempts"] == 0
        again = await client.post("/orders/7/checkout", json=body, headers=key)
        assert again.status_code == 202 and again.json() == {"run": "o7"}
        other = await client.post(
            "/orders/7/checkout", json={"amount": "1.00"}, headers={"Idempotency-Key": "o7"}
        )
        assert other.status_code == 409
        assert "Run 'o7' exists for shop.checkout with other arguments" in other.json()["detail"]
        missing = await client.post("/orders/7/checkout", json=body)
        assert missing.status_code == 400
    assert durable_service.effects == [("reserve", 7), ("charge", 7)]  # one execution


async def test_an_endpoint_awaits_the_result(urls: tuple[str, str]) -> None:
    app, _ = durable_service.make_app(*urls)
    async with serve_asgi(app) as client:
        r = await client.post("/orders/3/checkout-now", json={"amount": "2.50"})
        assert r.json() == {"reservation": "reservation-3", "charged": "2.50"}


async def test_a_sync_endpoint_dispatches_through_the_apps_loop(urls: tuple[str, str]) -> None:
    app, dispytch = durable_service.make_app(*urls)
    async with serve_asgi(app) as client:
        r = await client.post("/orders/5/checkout-sync", json={"amount": "1"})
        assert r.status_code == 202
        run_id = r.json()["run"]
        await _status(client, run_id, "succeeded")
    assert durable_service.effects == [("reserve", 5), ("charge", 5)]
    assert not dispytch.durable.running


async def test_a_dispatch_left_unawaited_still_happens(urls: tuple[str, str]) -> None:
    app, _ = durable_service.make_app(*urls, workers=False)
    async with serve_asgi(app) as client:
        assert (await client.post("/ping")).status_code == 202
    # The app (which runs no worker) is gone; the run waits on the broker for a worker.
    worker = durable_service.make_durable(*urls)
    durable_service.define(worker)
    async with worker:
        await until(lambda: ("ping", 0) in durable_service.effects, "a worker to run it")
    assert durable_service.effects == [("ping", 0)]


async def test_no_worker_in_the_web_process_unless_asked(urls: tuple[str, str]) -> None:
    app, dispytch = durable_service.make_app(*urls, workers=False)
    async with serve_asgi(app) as client:
        assert not dispytch.durable.running
        r = await client.post(
            "/orders/9/checkout", json={"amount": "3"}, headers={"Idempotency-Key": "o9"}
        )
        assert r.status_code == 202
        await asyncio.sleep(0.3)
        assert (await client.get("/runs/o9")).json()["status"] == "pending"
        assert durable_service.effects == []
        # A worker elsewhere (here: another Durable on the same broker and journal).
        worker = durable_service.make_durable(*urls)
        durable_service.define(worker)
        async with worker:
            done = await _status(client, "o9", "succeeded")
    assert done["outcome"] == '["reservation-9","3"]'
    assert durable_service.effects == [("reserve", 9), ("charge", 9)]


async def test_lifespan_connects_a_durable_and_runs_a_worker_only_when_asked(
    urls: tuple[str, str],
) -> None:
    for workers in (False, True):
        durable = durable_service.make_durable(*urls)
        fns = durable_service.define(durable)
        app = FastAPI(lifespan=lifespan(durable=durable, durable_workers=workers))
        seen: list[Durable] = []

        @app.post("/notify")
        async def notify(jobs: Jobs) -> dict[str, str]:
            seen.append(jobs)
            handle = await fns.notify.dispatch("hi")
            return {"run": handle.id}

        async with serve_asgi(app) as client:
            assert durable.running is workers
            run_id = (await client.post("/notify")).json()["run"]
            record = await durable.handle(run_id, fns.notify).status()
            if workers:
                await durable.handle(run_id, fns.notify).result(timeout=20)
            else:
                assert record.status == "pending"
        assert seen == [durable]
        assert not durable.running


def test_bad_durable_arguments() -> None:
    with pytest.raises(TypeError, match=r"lifespan\(durable=...\) takes a dispytch.durable"):
        lifespan(durable=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs durable="):
        lifespan(durable_workers=True)


async def test_a_sync_dispatch_outside_the_app_is_explained(urls: tuple[str, str]) -> None:
    app = FastAPI()
    dispytch = Dispytch(app, durable=durable_service.make_durable(*urls))
    fns = durable_service.define(dispytch)
    with pytest.raises(RuntimeError, match="called from a thread while the app is not running"):
        await asyncio.to_thread(fns.notify.dispatch, "x")
    await dispytch.durable.stop()


def test_dispytch_without_durable_functions_opens_no_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    app = FastAPI()
    Dispytch(app)
    with TestClient(app) as client:
        assert client.get("/nothing").status_code == 404
    assert list(tmp_path.iterdir()) == []  # no .dispytch/journal.sqlite3


async def test_app_functions_awaited_inside_a_durable_function_are_steps(
    urls: tuple[str, str],
) -> None:
    app, dispytch = durable_service.make_app(*urls)
    async with serve_asgi(app):
        checkout = dispytch.durable.functions["shop.checkout"]
        handle = await dispytch.dispatch(checkout(1, Decimal(4)))
        assert await handle.result(timeout=20) == ("reservation-1", Decimal(4))
        journal = await dispytch.durable.store.load(handle.id)
        assert journal is not None
        assert [(p, s.function) for p, s in sorted(journal.steps.items())] == [
            ("1", "shop.reserve"),
            ("2", "shop.charge"),
        ]


async def test_an_unawaited_dispatch_that_fails_is_logged(
    urls: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    app, dispytch = durable_service.make_app(*urls, workers=False)
    notify = dispytch.durable.functions["shop.notify"]
    async with serve_asgi(app):
        await dispytch.dispatch(notify("a"), id="n1")
        dispytch.dispatch(notify("b"), id="n1")  # the same id, other arguments; not awaited

        def logged() -> list[str]:
            return [r.getMessage() for r in caplog.records if r.name == "dispytch.fastapi"]

        await until(logged, "the failure to be logged")
    assert logged() == [
        "Dispatching shop.notify (run n1) failed and nobody awaited it: "
        "IdempotencyConflictError: Run 'n1' exists for shop.notify with other arguments.\n"
        "Use a new id for a different call (an id names one call exactly)."
    ]
    with pytest.raises(IdempotencyConflictError, match="exists for shop.notify"):
        await dispytch.dispatch(notify("c"), id="n1")  # awaited: raised, not logged
    assert len(logged()) == 1
    await dispytch.durable.stop()
