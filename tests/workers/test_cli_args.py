"""``dispytch run`` arguments of the multi-process mode: clear errors, --reload, restarts
given up. The memory transport only: no broker."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from dispytch.cli import main

from .conftest import eventually

APP = textwrap.dedent(
    """
    from dispytch import Event, EventBase, EventDispatcher, TopicSubscription

    class Ping(EventBase):
        n: int

    dispatcher = EventDispatcher.from_url("memory://cli-args")

    @dispatcher.handler(TopicSubscription(topic="pings"))
    async def on_ping(event: Event[Ping]) -> None: ...

    def broken():
        raise RuntimeError("cannot build the dispatcher")
    """
)


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "cliapp.py").write_text(APP)
    return tmp_path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "--workers: must be at least 1, got 0"),
        (["--workers", "two"], "--workers: 'two' is not a whole number"),
        (["--max-restarts", "-1"], "--max-restarts: must not be negative, got -1"),
        (["--stop-timeout", "-1"], "--stop-timeout: must be a finite number of seconds"),
        (["--stop-timeout", "nan"], "--stop-timeout: must be a finite number of seconds"),
        (["--log-level", "loud"], "--log-level: invalid choice: 'loud'"),
    ],
)
def test_bad_arguments(
    args: list[str], message: str, app_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "cliapp:dispatcher", "--app-dir", str(app_dir), *args])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_app_dir_must_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope"
    assert main(["run", "cliapp:dispatcher", "--app-dir", str(missing), "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert f"--app-dir {str(missing)!r} is not a directory" in err


def test_bad_target_is_reported_once_by_the_parent(
    app_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "cliapp:dispacher", "--app-dir", str(app_dir), "--workers", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("has no attribute 'dispacher'") == 1


def test_reload_without_watchfiles_names_the_install_command(app_dir: Path) -> None:
    code = (
        "import sys; sys.modules['watchfiles'] = None\n"
        "from dispytch.cli import main\n"
        f"raise SystemExit(main(['run', 'cliapp:dispatcher', '--app-dir', {str(app_dir)!r}, "
        "'--reload']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "--reload needs the watchfiles library" in result.stderr
    assert "pip install 'dispytch-core[reload]'" in result.stderr


def _supervise(app_dir: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dispytch.cli", "run", "--app-dir", str(app_dir), *args],
        stderr=subprocess.PIPE,
        text=True,
    )


def _communicate(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise AssertionError("dispytch run did not exit:\n" + err) from None
    return err


def test_a_worker_that_keeps_dying_is_given_up(app_dir: Path) -> None:
    proc = _supervise(app_dir, "cliapp:broken", "--workers", "2", "--max-restarts", "1")
    err = _communicate(proc)
    assert proc.returncode == 1, err
    assert "died 2 times in a row" in err and "--max-restarts 1" in err
    assert "cannot build the dispatcher" in err  # each worker's own traceback is shown


def test_reload_restarts_the_workers_on_a_source_change(app_dir: Path) -> None:
    pytest.importorskip("watchfiles")
    proc = _supervise(app_dir, "cliapp:dispatcher", "--workers", "2", "--reload")
    lines: list[str] = []
    import threading

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        eventually(lambda: "".join(lines).count("Running cliapp:dispatcher") == 2, "2 running")
        time.sleep(0.5)  # let the watcher settle before the change
        (app_dir / "cliapp.py").write_text(APP + "\n# changed\n")
        eventually(lambda: "Source changed under" in "".join(lines), "the change seen")
        eventually(lambda: "".join(lines).count("Running cliapp:dispatcher") == 4, "restarted")
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        reader.join(10)
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == 0, "".join(lines)
    assert "Every worker stopped." in "".join(lines)


class _Run:
    """A supervisor started in its own process group, as a terminal starts it."""

    def __init__(self, app_dir: Path, *args: str) -> None:
        import threading

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dispytch.cli", "run", "--app-dir", str(app_dir), *args],
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def log(self) -> str:
        return "".join(self.lines)

    def pids(self) -> list[int]:
        import re

        return [int(p) for p in re.findall(r"Worker \d+ started \(pid (\d+)\)", self.log())]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.reader.join(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its dead parent's reaper) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_ctrl_c_on_the_terminal_stops_gracefully(app_dir: Path) -> None:
    run = _Run(app_dir, "cliapp:dispatcher", "--workers", "2")
    try:
        eventually(lambda: run.log().count("Running cliapp:dispatcher") == 2, "2 running")
        os.killpg(run.proc.pid, signal.SIGINT)  # what Ctrl+C does: the whole group
        run.proc.wait(60)
        log = run.log()
        assert run.proc.returncode == 0, log
        assert "again" not in log  # each worker got one signal, not two
        assert log.count("dispytch.cli: Stopped.") == 2
        assert "Every worker stopped." in log
    finally:
        run.close()


def test_workers_of_a_killed_supervisor_stop_by_themselves(app_dir: Path) -> None:
    run = _Run(app_dir, "cliapp:dispatcher", "--workers", "2")
    try:
        eventually(lambda: run.log().count("Running cliapp:dispatcher") == 2, "2 running")
        pids = run.pids()
        run.proc.kill()
        run.proc.wait(10)
        eventually(lambda: not any(_alive(p) for p in pids), "the orphaned workers to stop", 30)
        assert run.log().count("is gone: stopping gracefully") == 2
    finally:
        run.close()
