"""The Protobuf serializer, registered through Dispytch's ``dispytch_serializers`` hook.

Discovery imports this module; the protobuf runtime is imported only when the serializer
is built.
"""

from __future__ import annotations

from typing import Any

from dispytch.plugins import SerializerSpec, hookimpl

PROTOBUF_CONTENT_TYPE = "application/x-protobuf"


def _protobuf() -> Any:
    from dispytch.protobuf.serializer import ProtobufSerializer

    return ProtobufSerializer()


@hookimpl
def dispytch_serializers() -> list[SerializerSpec]:
    """Protobuf binary, events mapped to the message class named by ``__protobuf__``."""
    return [
        SerializerSpec(
            name="protobuf",
            content_type=PROTOBUF_CONTENT_TYPE,
            factory=_protobuf,
            description="Protocol Buffers binary via the event's __protobuf__ message class",
        )
    ]
