"""Test utilities, including the transport conformance suite third parties can run.

Import :class:`TransportHarness`, implement it for your transport, and subclass
:class:`dispytch.testing.conformance.TransportConformance` in a pytest module with a
``harness`` fixture returning it. Needs ``pytest`` and ``pytest-asyncio``.
"""

from __future__ import annotations

from dispytch.testing.harness import MemoryHarness, TransportHarness

__all__ = ["MemoryHarness", "TransportHarness"]
