"""The pytest plugin under its ``dispytch.testing`` name: ``-p dispytch.testing.pytest_plugin``.

The same plugin as :mod:`dispytch_pytest` (see there). Prefer ``-p dispytch_pytest``: this
name imports the ``dispytch`` package on load (pydantic and the core, some 200 ms), where
``dispytch_pytest`` imports nothing until a fixture is used. Load one of the two, not both.
"""

from __future__ import annotations

from dispytch_pytest import (
    dispytch_clock,
    dispytch_kit,
    dispytch_memory,
    dispytch_targets,
    pytest_addoption,
    pytest_configure,
)

__all__ = [
    "dispytch_clock",
    "dispytch_kit",
    "dispytch_memory",
    "dispytch_targets",
    "pytest_addoption",
    "pytest_configure",
]
