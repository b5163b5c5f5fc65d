"""Test utilities: the testing kit for services (:func:`memory`), and the transport
conformance suite third parties can run.

Import :class:`TransportHarness`, implement it for your transport, and subclass
:class:`dispytch.testing.conformance.TransportConformance` in a pytest module with a
``harness`` fixture returning it. Needs ``pytest`` and ``pytest-asyncio``.
"""

from __future__ import annotations

from dispytch.testing.clock import VirtualClock
from dispytch.testing.harness import MemoryHarness, TransportHarness
from dispytch.testing.kit import Emitted, Kit, Match, memory

__all__ = ["Emitted", "Kit", "Match", "MemoryHarness", "TransportHarness", "VirtualClock", "memory"]
