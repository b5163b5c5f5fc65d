"""Dispytch Avro serializers (fastavro): schema-on-write as a plugin.

``serializer="avro"`` writes Avro single-object encoding (``application/avro``);
``serializer="avro-confluent"`` writes Confluent's wire format
(``application/vnd.confluent.avro``). The schema is derived from the event class (or
given as ``__avro_schema__``); its reference travels in the payload and consumers resolve
writer against reader schema, so producers and consumers evolve independently.

Importing this package does not import fastavro; building a serializer does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dispytch.avro.registry import (
    REGISTRY_ENV,
    DirectorySchemaRegistry,
    InMemorySchemaRegistry,
    RegisteredSchema,
    SchemaRegistry,
    default_registry,
    set_default_registry,
)
from dispytch.avro.schema import AvroSchemaError, rabin_fingerprint, schema_for

if TYPE_CHECKING:
    from dispytch.avro.serializer import (
        AVRO_CONTENT_TYPE,
        CONFLUENT_AVRO_CONTENT_TYPE,
        AvroSerializer,
        ConfluentAvroSerializer,
        IncompatibleSchemaError,
        UnknownSchemaError,
    )

__all__ = [
    "AVRO_CONTENT_TYPE",
    "CONFLUENT_AVRO_CONTENT_TYPE",
    "REGISTRY_ENV",
    "AvroSchemaError",
    "AvroSerializer",
    "ConfluentAvroSerializer",
    "DirectorySchemaRegistry",
    "IncompatibleSchemaError",
    "InMemorySchemaRegistry",
    "RegisteredSchema",
    "SchemaRegistry",
    "UnknownSchemaError",
    "default_registry",
    "rabin_fingerprint",
    "schema_for",
    "set_default_registry",
]

_LAZY = {
    "AVRO_CONTENT_TYPE",
    "CONFLUENT_AVRO_CONTENT_TYPE",
    "AvroSerializer",
    "ConfluentAvroSerializer",
    "IncompatibleSchemaError",
    "UnknownSchemaError",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from dispytch.avro import serializer

        return getattr(serializer, name)
    raise AttributeError(f"module 'dispytch.avro' has no attribute {name!r}")
