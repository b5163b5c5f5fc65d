"""``dispytch run`` arguments of the multi-process mode: clear errors, --reload, restarts
given up. The memory transport only: no broker."""

from __future__ import annotations

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
