"""``dispytch jobs list | show | retry | cancel``: on a store URL and on a Durable given as
``module:attribute``, text and ``--json``, and a clear error (exit 2 for a bad source, 1 for
a refused operation) for each way it can go wrong. Runs are made by a real Durable over the
memory broker and a SQLite journal; the command reads that journal file.

Retry over a transport that reaches other processes (Redis Streams) is in
``tests/durable_brokers/test_jobs_retry.py``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from dispytch.backoff import Backoff
from dispytch.cli import main
from dispytch.durable import Durable, RunCancelledError, RunFailedError, gather


def _durable(path: Path) -> Durable:
    return Durable(
        f"memory://jobs-cli-{uuid.uuid4().hex}",
        store=f"sqlite:///{path}",
        backoff=Backoff(initial=0.01, factor=2.0, cap=0.05),
    )


def _define(durable: Durable) -> dict[str, Any]:
    @durable.function(name="jobs.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @durable.function(name="jobs.broken")
    async def broken(x: int) -> int:
        raise ValueError(f"no {x}")

    @durable.function(name="jobs.down", max_attempts=1)
    async def down() -> None:
        raise TimeoutError("upstream down")

    @durable.function(name="jobs.flow")
    async def flow(x: int) -> list[int]:
        a = await add(x, 1)
        with contextlib.suppress(ValueError, RunFailedError):
            await broken(a)
        return await gather(add(a, 1), add(a, 2))

    @durable.function(name="jobs.later")
    async def later() -> None:
        raise AssertionError("a cancelled run never runs")

    return {"add": add, "broken": broken, "down": down, "flow": flow, "later": later}


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


@pytest.fixture
def runs(journal: Path) -> dict[str, str]:
    """A succeeded flow (with a failed step and a gather), a failed, a dead and a pending
    run, in that order."""

    async def make() -> dict[str, str]:
        durable = _durable(journal)
        fns = _define(durable)
        async with durable:
            ok = await fns["flow"].dispatch(1)
            assert await ok.result(timeout=10) == [3, 4]
            bad = await fns["broken"].dispatch(7)
            with pytest.raises(RunFailedError):
                await bad.result(timeout=10)
            dead = await fns["down"].dispatch()
            with pytest.raises(RunFailedError):
                await dead.result(timeout=10)
        pending = await fns["later"].dispatch()  # no worker: it stays pending
        await durable.stop()
        return {"ok": ok.id, "bad": bad.id, "dead": dead.id, "pending": pending.id}

    return asyncio.run(make())


def jobs(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["jobs", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def as_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = jobs(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


# -- list ------------------------------------------------------------------------------


def test_list(capsys: pytest.CaptureFixture[str], journal: Path, runs: dict[str, str]) -> None:
    store = f"sqlite:///{journal}"
    code, out, err = jobs(capsys, "list", "--store", store)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == [
        "ID", "FUNCTION", "STATUS", "ATTEMPTS", "CREATED", "UPDATED", "ERROR",
    ]  # fmt: skip
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {*runs.values(), f"{runs['ok']}/3.0", f"{runs['ok']}/3.1"}
    assert lines[1].startswith(runs["pending"])  # newest first
    assert "jobs.later" in rows[runs["pending"]] and " pending " in rows[runs["pending"]]
    assert rows[runs["bad"]].rstrip().endswith("ValueError: no 7")
    assert " dead " in rows[runs["dead"]]
    assert rows[runs["dead"]].rstrip().endswith("TimeoutError: upstream down")
    assert " succeeded " in rows[runs["ok"]]

    data = as_json(capsys, "list", "--store", store)
    by_id = {r["id"]: r for r in data["runs"]}
    assert by_id[runs["ok"]]["result"] == [3, 4] and by_id[runs["ok"]]["args"] == {"x": 1}
    assert by_id[runs["bad"]]["error"]["type"] == "ValueError"
    assert by_id[runs["bad"]]["error"]["message"] == "no 7"
    assert "Traceback" in by_id[runs["bad"]]["error"]["traceback"]
    assert by_id[runs["bad"]]["error"]["retryable"] is False
    assert by_id[runs["dead"]]["error"]["retryable"] is True
    assert by_id[runs["pending"]]["status"] == "pending"
    child = by_id[f"{runs['ok']}/3.1"]
    assert child["parent"] == {"id": runs["ok"], "position": "3", "index": 1, "count": 2}
    assert child["result"] == 4

    failed = as_json(capsys, "list", "--store", store, "--status", "failed", "--status", "dead")
    assert {r["id"] for r in failed["runs"]} == {runs["bad"], runs["dead"]}
    of_flow = as_json(capsys, "list", "--store", store, "--function", "jobs.flow")
    assert [r["id"] for r in of_flow["runs"]] == [runs["ok"]]
    assert len(as_json(capsys, "list", "--store", store, "--limit", "2")["runs"]) == 2
    code, out, _ = jobs(capsys, "list", "--store", store, "--status", "cancelled")
    assert code == 0 and out == "No runs.\n"


# -- show ------------------------------------------------------------------------------


def test_show(capsys: pytest.CaptureFixture[str], journal: Path, runs: dict[str, str]) -> None:
    store = f"sqlite:///{journal}"
    code, out, _ = jobs(capsys, "show", runs["ok"], "--store", store)
    assert code == 0
    assert f"run       {runs['ok']}\n" in out
    assert "function  jobs.flow\n" in out and "status    succeeded\n" in out
    assert "result    [3,4]\n" in out
    steps = out[out.index("steps\n") :].splitlines()
    assert steps[1].split()[:3] == ["1", "jobs.add", "ok"] and steps[1].endswith(" 2")
    assert steps[2].split()[:3] == ["2", "jobs.broken", "error"]
    assert steps[2].endswith("ValueError: no 2 (retryable: no)")
    assert "| Traceback (most recent call last):" in out and "| ValueError: no 2" in out
    assert "gather" in out and "2 of 2 children done" in out
    assert "children of step 3\n" in out

    data = as_json(capsys, "show", runs["ok"], "--store", store)
    assert data["run"]["id"] == runs["ok"] and data["run"]["result"] == [3, 4]
    assert [(s["position"], s["function"], s["status"]) for s in data["steps"]] == [
        ("1", "jobs.add", "ok"),
        ("2", "jobs.broken", "error"),
        ("3", "gather", "waiting"),
    ]
    assert data["steps"][0]["result"] == 2
    assert data["steps"][1]["error"]["message"] == "no 2"
    assert data["steps"][2]["children"] == 2
    assert data["children"] == {
        "3": [{"index": 0, "status": "ok", "result": 3}, {"index": 1, "status": "ok", "result": 4}]
    }

    code, out, _ = jobs(capsys, "show", runs["bad"], "--store", store)
    assert "status    failed\n" in out and "error     ValueError: no 7 (retryable: no)" in out
    assert "steps     none journalled\n" in out
    code, out, _ = jobs(capsys, "show", runs["dead"], "--store", store)
    assert "status    dead\n" in out and "TimeoutError: upstream down (retryable: yes)" in out


# -- the source: --app, --store, the defaults ------------------------------------------


def _app_module(tmp_path: Path, journal: Path) -> str:
    name = f"jobs_app_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text(
        "from dispytch.durable import Durable\n"
        f"durable = Durable('memory://{name}', store='sqlite:///{journal}')\n"
        "def make():\n    return durable\n"
        "async def amake():\n    return durable\n"
        "class Web:\n    durable = durable\n"
        "web = Web()\n"
        "number = 3\n"
        "def wrong():\n    return 3\n"
    )
    return name


def test_the_app_given_as_module_attribute(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, journal: Path, runs: dict[str, str]
) -> None:
    name = _app_module(tmp_path, journal)
    for attr in ("durable", "make", "amake", "web"):  # a Durable, factories, a .durable
        data = as_json(capsys, "list", "--app", f"{name}:{attr}", "--app-dir", str(tmp_path))
        assert {r["id"] for r in data["runs"]} >= set(runs.values()), attr
    code, _, err = jobs(capsys, "list", "--app", f"{name}:number", "--app-dir", str(tmp_path))
    assert code == 2 and "is a int, not a dispytch.durable.Durable" in err
    code, _, err = jobs(capsys, "list", "--app", f"{name}:wrong", "--app-dir", str(tmp_path))
    assert code == 2 and "wrong() returned a int; it must return a Durable" in err
    code, _, err = jobs(capsys, "list", "--app", f"{name}:nothing", "--app-dir", str(tmp_path))
    assert code == 2 and f"Module '{name}' has no attribute 'nothing'" in err
    code, _, err = jobs(capsys, "list", "--app", "no_such_module_here:durable")
    assert code == 2 and "Could not import module 'no_such_module_here'" in err
    code, _, err = jobs(capsys, "list", "--app", "sqlite:///x.db")
    assert code == 2 and "--app takes module:attribute" in err and "--store" in err
    code, _, err = jobs(
        capsys, "list", "--app", f"{name}:durable", "--app-dir", str(tmp_path),
        "--transport", "redis+streams://127.0.0.1:6379",
    )  # fmt: skip
    assert code == 2 and "--transport and --topic go with --store" in err


def test_the_default_store(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    journal: Path,
    runs: dict[str, str],
) -> None:
    monkeypatch.setenv("DISPYTCH_DURABLE_STORE", f"sqlite:///{journal}")
    assert {r["id"] for r in as_json(capsys, "list")["runs"]} >= set(runs.values())
    monkeypatch.delenv("DISPYTCH_DURABLE_STORE")
    monkeypatch.chdir(tmp_path)
    code, _, err = jobs(capsys, "list")  # the embedded default, which this folder lacks
    assert code == 2
    assert "No journal at" in err and ".dispytch/journal.sqlite3" in err
    assert "(the default store)" in err
    assert not (tmp_path / ".dispytch").exists()  # looking created nothing
    (tmp_path / ".dispytch").mkdir()
    os.replace(journal, tmp_path / ".dispytch" / "journal.sqlite3")
    assert {r["id"] for r in as_json(capsys, "list")["runs"]} >= set(runs.values())


def test_a_bad_store_is_explained(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    code, _, err = jobs(capsys, "list", "--store", f"sqlite:///{missing}")
    assert code == 2 and f"No journal at {missing}" in err and "does not exist" in err
    assert not missing.exists()
    code, _, err = jobs(capsys, "list", "--store", "mongodb://127.0.0.1/jobs")
    assert code == 2 and "No journal store serves 'mongodb' URLs" in err
    code, _, err = jobs(capsys, "list", "--store", "jobs.db")
    assert code == 2 and "--store takes a journal store URL" in err
    code, _, err = jobs(capsys, "list", "--store", "sqlite://host/jobs.db")
    assert code == 2 and "names a host" in err
    code, _, err = jobs(capsys, "list", "--store", f"sqlite:///{tmp_path}/x.db", "--status", "x")
    assert code == 2 and "Unknown status 'x'. The statuses: cancelled, dead" in err
    assert main(["jobs"]) == 2
    assert "jobs needs a command" in capsys.readouterr().err


def test_an_unknown_run_is_refused(
    capsys: pytest.CaptureFixture[str], journal: Path, runs: dict[str, str]
) -> None:
    store = f"sqlite:///{journal}"
    for command in ("show", "retry", "cancel"):
        code, out, err = jobs(capsys, command, "missing", "--store", store)
        assert code == 1 and out == "", command
        assert err == f"dispytch: error: No run 'missing' in SQLiteJournalStore('{journal}').\n"
    code, out, _ = jobs(capsys, "show", "missing", "--store", store, "--json")
    assert code == 1 and "No run 'missing'" in json.loads(out)["error"]


# -- retry and cancel ------------------------------------------------------------------


def test_retry_over_the_memory_transport_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, journal: Path, runs: dict[str, str]
) -> None:
    store = f"sqlite:///{journal}"
    code, _, err = jobs(capsys, "retry", runs["bad"], "--store", store)
    assert code == 2
    assert "memory transport, which lives inside one process" in err and "--transport" in err
    name = _app_module(tmp_path, journal)
    app = ["--app", f"{name}:durable", "--app-dir", str(tmp_path)]
    code, _, err = jobs(capsys, "retry", runs["bad"], *app)
    assert code == 2 and "Retry it from the app's process" in err
    code, _, err = jobs(capsys, "retry", runs["ok"], "--store", store)
    assert code == 1
    assert f"Run {runs['ok']} is succeeded; only a failed, dead or cancelled run" in err
    assert as_json(capsys, "show", runs["bad"], "--store", store)["run"]["status"] == "failed"


def test_cancel_a_pending_run(
    capsys: pytest.CaptureFixture[str], journal: Path, runs: dict[str, str]
) -> None:
    store = f"sqlite:///{journal}"
    code, out, err = jobs(capsys, "cancel", runs["pending"], "--store", store, "--reason", "nope")
    assert code == 0, err
    assert out.splitlines()[:2] == ["Cancelled 1 run(s):", f"  {runs['pending']}"]
    shown = as_json(capsys, "show", runs["pending"], "--store", store)
    assert shown["run"]["status"] == "cancelled"
    assert shown["run"]["error"]["type"] == "RunCancelledError"
    assert "nope" in shown["run"]["error"]["message"]
    code, _, err = jobs(capsys, "cancel", runs["pending"], "--store", store)
    assert code == 1 and "is cancelled: it is over, nothing to cancel" in err
    code, _, err = jobs(capsys, "cancel", runs["ok"], "--store", store)
    assert code == 1 and "is succeeded: it is over" in err

    async def result() -> None:
        durable = _durable(journal)
        fns = _define(durable)
        try:
            with pytest.raises(RunCancelledError, match="nope"):
                await durable.handle(runs["pending"], fns["later"]).result(timeout=10)
        finally:
            await durable.stop()

    asyncio.run(result())


def test_the_command_in_a_process_of_its_own(journal: Path, runs: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dispytch.cli", "jobs", "show", runs["bad"], "--json",
         "--store", f"sqlite:///{journal}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["run"]["error"]["message"] == "no 7"
