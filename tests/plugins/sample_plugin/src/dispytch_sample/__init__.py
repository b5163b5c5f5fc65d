"""A sample third-party Dispytch plugin: a spool-directory transport and friends.

The route classes are imported eagerly (they are plain dataclasses); the producer and
consumer are imported on first attribute access, the way a plugin over a real broker
library keeps that library out of plugin discovery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dispytch_sample.routes import SampleEventRoute, SampleEventSubscription

if TYPE_CHECKING:
    from dispytch_sample.middleware import Audit
    from dispytch_sample.serializer import GzipJsonSerializer
    from dispytch_sample.transport import SpoolConsumer, SpoolProducer

__all__ = [
    "Audit",
    "GzipJsonSerializer",
    "SampleEventRoute",
    "SampleEventSubscription",
    "SpoolConsumer",
    "SpoolProducer",
]

_LAZY = {
    "SpoolProducer": "dispytch_sample.transport",
    "SpoolConsumer": "dispytch_sample.transport",
    "GzipJsonSerializer": "dispytch_sample.serializer",
    "Audit": "dispytch_sample.middleware",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dispytch_sample' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
