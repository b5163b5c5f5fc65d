"""``pytest -p dispytch_pytest --dispytch-conformance=URL`` against real brokers (here
because the nox ``workers`` session installs every transport)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

AMQP_URL = os.environ.get("DISPYTCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
REDIS_URL = os.environ.get("DISPYTCH_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.mark.broker
@pytest.mark.parametrize(
    ("module", "url"),
    [
        ("dispytch.rabbitmq", AMQP_URL),
        ("dispytch.redis", REDIS_URL.replace("redis://", "redis+streams://", 1)),
    ],
)
def test_conformance_through_the_plugin(module: str, url: str, tmp_path: Path) -> None:
    pytest.importorskip(module)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "dispytch_pytest",
            "-p",
            "no:cacheprovider",
            f"--dispytch-conformance={url}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert re.search(r"\d+ passed", result.stdout)
