"""The Avro serializers, registered through Dispytch's ``dispytch_serializers`` hook.

Discovery imports this module; fastavro is imported only when a serializer is built.
"""

from __future__ import annotations

from typing import Any

from dispytch.plugins import SerializerSpec, hookimpl

AVRO_CONTENT_TYPE = "application/avro"
CONFLUENT_AVRO_CONTENT_TYPE = "application/vnd.confluent.avro"


def _avro() -> Any:
    from dispytch.avro.serializer import AvroSerializer

    return AvroSerializer()


def _confluent() -> Any:
    from dispytch.avro.serializer import ConfluentAvroSerializer

    return ConfluentAvroSerializer()


@hookimpl
def dispytch_serializers() -> list[SerializerSpec]:
    """Avro single-object encoding and the Confluent wire format."""
    return [
        SerializerSpec(
            name="avro",
            content_type=AVRO_CONTENT_TYPE,
            factory=_avro,
            description="Avro single-object encoding (fingerprint in the payload), fastavro",
        ),
        SerializerSpec(
            name="avro-confluent",
            content_type=CONFLUENT_AVRO_CONTENT_TYPE,
            factory=_confluent,
            description="Avro in Confluent's wire format (schema id in the payload), fastavro",
        ),
    ]
