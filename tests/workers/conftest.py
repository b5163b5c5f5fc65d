"""Fixtures of the ``dispytch run --workers`` tests: brokers, and a supervised run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .. import tansu

kafka_bootstrap = tansu.kafka_bootstrap  # tests/tansu.py

HERE = Path(__file__).parent
AMQP_URL = os.environ.get("DISPYTCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
REDIS_URL = os.environ.get("DISPYTCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def eventually(pred: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """Poll ``pred`` (bounded) until it returns something true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Supervised:
    """``dispytch run worker_app:make --workers N`` as a child, its log collected."""

    def __init__(self, out: Path, env: dict[str, str], workers: int, stop_timeout: float):
        self.out = out
        self.stop_timeout = stop_timeout
        cmd = [
            sys.executable,
            "-m",
            "dispytch.cli",
            "run",
            "worker_app:make",
            "--workers",
            str(workers),
            "--app-dir",
            str(HERE),
            "--stop-timeout",
            str(stop_timeout),
            "--log-level",
            "info",
        ]
        self.proc = subprocess.Popen(
            cmd, env={**os.environ, **env}, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def log(self) -> str:
        return "".join(self.lines)

    def started(self) -> list[tuple[int, int]]:
        """(worker index, pid) of every worker start, in order."""
        return [
            (int(i), int(p))
            for i, p in re.findall(r"Worker (\d+) started \(pid (\d+)\)", self.log())
        ]

    def running(self) -> set[int]:
        """Pids of workers whose dispatcher is running."""
        return {
            int(p) for p in re.findall(r"\[worker \d+ pid (\d+)\].*Running worker_app", self.log())
        }

    def handled(self) -> dict[int, list[int]]:
        """Job numbers handled, per worker pid."""
        found: dict[int, list[int]] = {}
        for path in self.out.glob("*.log"):
            text = path.read_text()
            found[int(path.stem)] = [int(x) for x in text.splitlines() if x.strip()]
        return found

    def counts(self) -> Counter[int]:
        return Counter(n for ns in self.handled().values() for n in ns)

    def terminate(self) -> float:
        """SIGTERM the parent; the seconds until it exited."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(self.stop_timeout + 30)
        return time.monotonic() - t0

    def kill_all(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for _, pid in self.started():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._reader.join(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def supervise(tmp_path: Path) -> Iterator[Callable[..., Supervised]]:
    runs: list[Supervised] = []

    def start(env: dict[str, str], workers: int = 3, stop_timeout: float = 5.0) -> Supervised:
        out = tmp_path / f"out{len(runs)}"
        out.mkdir()
        run = Supervised(out, {**env, "WORKERS_OUT": str(out)}, workers, stop_timeout)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.kill_all()
