"""Shared helpers of the benchmarks: where the reference workload lives, how to run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def shared_bench() -> Path:
    """The reference workload and baselines (``shared/bench`` beside the checkout, or
    beside a folder above it, as for a worktree)."""
    env = os.environ.get("DISPYTCH_SHARED_BENCH")
    candidates = [Path(env)] if env else []
    candidates += [REPO / "shared" / "bench", *(p / "shared" / "bench" for p in REPO.parents)]
    for c in candidates:
        if (c / "common.py").exists():
            return c
    raise SystemExit(
        "Cannot find the reference benchmarks (shared/bench beside the checkout). "
        "Set DISPYTCH_SHARED_BENCH=/path/to/shared/bench."
    )


def load_workload() -> Any:
    """Import the shared ``common`` module (the Event model and its generator)."""
    path = str(shared_bench())
    if path not in sys.path:
        sys.path.insert(0, path)
    import common  # type: ignore[import-not-found]

    return common


def run_json(cmd: list[str], timeout: float, what: str) -> dict[str, Any]:
    """Run ``cmd`` in its own process and return the last JSON line it printed."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    for line in reversed(proc.stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)  # type: ignore[no-any-return]
    return {"error": f"{what} printed no result", "stderr": proc.stderr[-2000:]}


def run_baseline(script: str, *args: str, timeout: float = 300) -> dict[str, Any]:
    """Run one of the shared baseline scripts and return its JSON line."""
    cmd = [sys.executable, str(shared_bench() / script), *args]
    return run_json(cmd, timeout, f"{script} {' '.join(args)}")
