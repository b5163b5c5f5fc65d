"""examples/durable_pipeline.py runs on the embedded default and prints what it says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "durable_pipeline.py"


def test_the_example_runs(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DISPYTCH_DURABLE_STORE": f"sqlite:///{tmp_path / 'journal.sqlite3'}",
    }
    env.pop("DISPYTCH_DURABLE_TRANSPORT", None)
    out = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.splitlines() == ["published 'HELLO DURABLE'", "[1, 4, 9, 16, 25]"]
    assert "attempt 1/5 failed (ConnectionError" in out.stderr
    assert (tmp_path / "journal.sqlite3").exists()
