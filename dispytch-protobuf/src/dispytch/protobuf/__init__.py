"""Dispytch Protobuf serializer: schema-on-write with generated message classes.

An event stays a pydantic :class:`~dispytch.EventBase` (handlers, validation and DI work
as with JSON); ``__protobuf__`` on the class names the generated message class it is
written as. ``serializer="protobuf"`` writes ``application/x-protobuf``.

Importing this package does not import the protobuf runtime; building the serializer does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dispytch.protobuf.mapping import ProtobufMappingError, check_mapping

if TYPE_CHECKING:
    from dispytch.protobuf.serializer import PROTOBUF_CONTENT_TYPE, ProtobufSerializer

__all__ = ["PROTOBUF_CONTENT_TYPE", "ProtobufMappingError", "ProtobufSerializer", "check_mapping"]


def __getattr__(name: str) -> Any:
    if name in ("PROTOBUF_CONTENT_TYPE", "ProtobufSerializer"):
        from dispytch.protobuf import serializer

        return getattr(serializer, name)
    raise AttributeError(f"module 'dispytch.protobuf' has no attribute {name!r}")
