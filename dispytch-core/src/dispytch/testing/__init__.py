"""Test utilities: the testing kit for services (:func:`memory`), and the transport
conformance suite third parties can run.

Implement :class:`TransportHarness` for your transport (once per construction mode, see
:data:`~dispytch.testing.harness.Mode`) and subclass
:class:`dispytch.testing.conformance.TransportConformance` in a pytest module with a
``harness`` fixture returning it; :mod:`dispytch.testing.conformance` says how to run it.
Needs core's ``testing`` extra: ``pip install 'dispytch-core[testing]'`` (pytest,
pytest-asyncio, hypothesis).
"""

from __future__ import annotations

from dispytch.testing.clock import VirtualClock
from dispytch.testing.harness import Lane, MemoryHarness, Mode, TransportHarness
from dispytch.testing.kit import Emitted, Kit, Match, memory
from dispytch.testing.probe import ConsumerProbe, probe

__all__ = [
    "ConsumerProbe",
    "Emitted",
    "Kit",
    "Lane",
    "Match",
    "MemoryHarness",
    "Mode",
    "TransportHarness",
    "VirtualClock",
    "memory",
    "probe",
]
