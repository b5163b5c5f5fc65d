"""The pytest plugin, run as users run it: pytest in a subprocess on a sample project."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SAMPLE = Path(__file__).parents[1] / "sample_user_project"
BROKER_MODULES = ("aiokafka", "aio_pika", "aiormq", "redis")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    dest = tmp_path / "project"
    shutil.copytree(SAMPLE, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def run_pytest(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_fixtures_work_when_opted_in_on_the_command_line(project: Path) -> None:
    result = run_pytest(project, "-p", "dispytch_pytest", "check_shop.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 passed" in result.stdout


def test_the_dispytch_testing_name_works_too(project: Path) -> None:
    result = run_pytest(project, "-p", "dispytch.testing.pytest_plugin", "check_shop.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 passed" in result.stdout


def test_fixtures_work_when_opted_in_by_conftest(project: Path) -> None:
    (project / "conftest.py").write_text('pytest_plugins = ["dispytch_pytest"]\n')
    result = run_pytest(project, "check_shop.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 passed" in result.stdout


def test_no_disables_it(project: Path) -> None:
    # The project opts in for everyone (conftest); one run opts out with -p no:.
    (project / "conftest.py").write_text('pytest_plugins = ["dispytch_pytest"]\n')
    result = run_pytest(project, "-p", "no:dispytch_pytest", "check_shop.py")
    # Off: its marker is unknown to --strict-markers.
    assert result.returncode != 0, result.stdout + result.stderr
    assert "'dispytch' not found in `markers`" in result.stdout
    (project / "check_nomark.py").write_text("def test_x(dispytch_kit):\n    pass\n")
    result = run_pytest(project, "-p", "no:dispytch_pytest", "check_nomark.py")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "fixture 'dispytch_kit' not found" in result.stdout


def test_a_suite_without_the_plugin_is_untouched(project: Path) -> None:
    result = run_pytest(project, "plain/check_plain.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    # Not loaded, so its option does not exist either.
    result = run_pytest(project, "--dispytch-conformance=memory://", "plain/check_plain.py")
    assert result.returncode == 4
    assert "unrecognized arguments: --dispytch-conformance" in result.stderr


def test_conformance_run_on_the_memory_transport(project: Path) -> None:
    result = run_pytest(project, "-p", "dispytch_pytest", "--dispytch-conformance=memory://")
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\d+ passed", result.stdout)
    assert (
        "TestTransportConformance"
        in run_pytest(
            project, "-p", "dispytch_pytest", "--dispytch-conformance=memory://", "--co"
        ).stdout
    )


def test_a_bad_marker_option_is_a_usage_error(project: Path) -> None:
    (project / "check_bad.py").write_text(
        "import pytest\n@pytest.mark.dispytch(clok=False)\ndef test_x(dispytch_memory):\n    pass\n"
    )
    result = run_pytest(project, "-p", "dispytch_pytest", "check_bad.py")
    assert result.returncode != 0
    assert "unknown option(s) clok; it takes clock, ordered, start" in result.stdout


def test_importing_the_plugin_is_cheap() -> None:
    # Measured, not asserted against a wall-clock threshold: what -X importtime says the
    # plugin adds on top of what a pytest run has loaded already (pytest, and
    # pytest-asyncio through its entry point), and that it imports neither Dispytch nor a
    # broker library.
    code = (
        "import pytest, pytest_asyncio, sys\n"
        "import dispytch_pytest\n"
        f"bad = [m for m in {(*BROKER_MODULES, 'dispytch', 'pydantic')!r} if m in sys.modules]\n"
        "print('IMPORTED', bad)\n"
    )
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "IMPORTED []" in result.stdout
    line = next(x for x in result.stderr.splitlines() if x.rstrip().endswith("| dispytch_pytest"))
    cumulative_us = int(line.split("|")[1])
    print(f"\ndispytch_pytest import after pytest, pytest_asyncio: {cumulative_us / 1000:.2f} ms")
