"""The Avro serializers: single-object encoding (default) and the Confluent wire format.

Both carry the writer schema's reference inside the payload, so nothing but the
content-type header is needed to decode (the Serializer protocol is bytes in, bytes
out):

- ``application/avro`` -- Avro single-object encoding: ``C3 01``, the 8-byte
  CRC-64-AVRO fingerprint of the writer schema (little-endian), the Avro binary body.
- ``application/vnd.confluent.avro`` -- Confluent's wire format: byte ``0``, the 4-byte
  big-endian schema id the registry gave the writer schema, the Avro binary body.

The consuming side reads with the writer's schema, found by that reference, against the
handler's model (the reader schema): fields the writer added are skipped, fields it does
not have take the reader's defaults. A reference nobody registered, or writer and reader
schemas Avro cannot resolve, is a :class:`~dispytch.PayloadError`: the dispatcher rejects
(dead-letters) that message with the reason and goes on.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from dispytch.avro import registry as _registry_module
from dispytch.avro.registry import RegisteredSchema, SchemaRegistry, default_registry
from dispytch.avro.schema import AvroSchemaError, CompiledModel, compile_model
from dispytch.errors import PayloadError
from pydantic import BaseModel

T = TypeVar("T")

AVRO_CONTENT_TYPE = "application/avro"
CONFLUENT_AVRO_CONTENT_TYPE = "application/vnd.confluent.avro"
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"


class UnknownSchemaError(PayloadError):
    """The payload names a writer schema the registry does not have."""


class IncompatibleSchemaError(PayloadError):
    """Writer and reader schemas cannot be resolved (Avro's schema resolution rules)."""


class _AvroBase:
    content_type: str
    framing: str

    def __init__(self, registry: SchemaRegistry | None = None) -> None:
        import fastavro

        self._registry = registry
        self._write = fastavro.schemaless_writer
        self._read = fastavro.schemaless_reader
        self._lock = threading.Lock()
        self._writers: dict[type[Any], Callable[[Any], bytes]] = {}
        self._generation = _registry_module.generation

    @property
    def registry(self) -> SchemaRegistry:
        """The registry given, else the process default (looked up on each use, so
        ``set_default_registry`` applies to serializers already built)."""
        return self._registry if self._registry is not None else default_registry()

    def prepare(self, *models: type[BaseModel]) -> None:
        """Derive and register the schemas of these event classes now.

        Call it at emitter start to turn a model Avro cannot express (and a registry
        that is unreachable) into an error before the first event.

        Raises:
            AvroSchemaError: When a class cannot be expressed (the message names the field).
        """
        for model in models:
            self._writer(model)

    def encode(self, event: BaseModel) -> bytes:
        """The event in this framing (schema derived and registered on first use)."""
        if self._generation != _registry_module.generation and self._registry is None:
            self._writers = {}
            self._generation = _registry_module.generation
        write = self._writers.get(type(event))
        if write is None:
            write = self._writer(type(event))
        return write(event)

    def _prefix(self, compiled: CompiledModel, ref: RegisteredSchema) -> bytes:
        raise NotImplementedError

    def _writer(self, model: type[Any]) -> Callable[[Any], bytes]:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise AvroSchemaError(
                f"{model!r} is not a pydantic model; Avro events are EventBase classes.\n"
                "Emit an EventBase subclass."
            )
        with self._lock:
            found = self._writers.get(model)
            if found is not None:
                return found
            compiled = compile_model(model)
            ref = self.registry.register(compiled.schema, subject=compiled.name)
            prefix = self._prefix(compiled, ref)
            parsed = compiled.parsed
            to_avro = compiled.to_avro
            write = self._write

            def encode(event: Any) -> bytes:
                buf = io.BytesIO()
                buf.write(prefix)
                write(buf, parsed, to_avro(event))
                return buf.getvalue()

            self._writers[model] = encode
            return encode

    # -- decoding -----------------------------------------------------------------------

    def _split(self, payload: bytes) -> tuple[int | bytes, int]:
        """``(writer schema reference, offset of the body)``."""
        raise NotImplementedError

    def decoder(self, target: type[T]) -> Callable[[bytes], T]:
        """A decoder into ``target`` (its schema derived now: errors surface at dispatcher
        start). Writer schemas are looked up once per reference and cached.

        Raises:
            AvroSchemaError: When ``target`` cannot be expressed in Avro.
        """
        if not (isinstance(target, type) and issubclass(target, BaseModel)):
            raise AvroSchemaError(
                f"{target!r} is not a pydantic model; Avro decodes into EventBase classes.\n"
                "Type the handler's event as Event[YourEvent]."
            )
        reader = compile_model(target)
        validate = target.model_validate
        from_avro = reader.from_avro
        read = self._read
        own = reader.parsed
        plans: dict[int | bytes, Any] = {}
        plans_lock = threading.Lock()
        seen = [_registry_module.generation]
        follows_default = self._registry is None
        split = self._split
        framing = self.framing

        def writer_for(ref: int | bytes) -> Any:
            plan = plans.get(ref)
            if plan is not None:
                return plan
            with plans_lock:
                if ref == reader.fingerprint:
                    plans[ref] = None  # our own schema: no resolution needed
                    return None
                found = self.registry.lookup(ref)
                if found is None:
                    shown = ref.hex() if isinstance(ref, bytes) else ref
                    raise UnknownSchemaError(
                        f"{framing} payload written with schema {shown}, which registry "
                        f"{self.registry!r} does not have (reading {reader.name}).\n"
                        "Register the writer's schema there (producers do on first emit) or "
                        "point both sides at one registry."
                    )
                if found.fingerprint == reader.fingerprint:
                    plan = None
                else:
                    from dispytch.avro.schema import canonical_form

                    plan = (canonical_form(found.schema)[0], found)
                plans[ref] = plan if plan is not None else False
                return plan

        def decode(payload: bytes) -> T:
            ref, offset = split(payload)
            if follows_default and seen[0] != _registry_module.generation:
                plans.clear()  # another default registry: its ids mean other schemas
                seen[0] = _registry_module.generation
            plan = plans.get(ref) if ref in plans else writer_for(ref)
            body = io.BytesIO(payload)
            body.seek(offset)
            if not plan:
                datum = read(body, own, None)
            else:
                writer, found = plan
                try:
                    datum = read(body, writer, own)
                except Exception as exc:
                    if type(exc).__name__ == "SchemaResolutionError":
                        shown = found.fingerprint.hex()
                        raise IncompatibleSchemaError(
                            f"Writer schema {found.schema.get('name')} ({shown}, id "
                            f"{found.id}) cannot be read as {reader.name}: {exc}\n"
                            "Evolve schemas compatibly: add fields with defaults, remove "
                            "only fields that have defaults, promote types the Avro way."
                        ) from exc
                    raise
            return validate(from_avro(datum))

        return decode


class AvroSerializer(_AvroBase):
    """Avro single-object encoding (``application/avro``), the Avro specification's own
    framing: ``C3 01`` + 8-byte CRC-64-AVRO fingerprint + body.

    Fingerprints need no registry to be computed, so a consumer reading events of its own
    schema decodes without one; any other writer schema is looked up in ``registry``.

    Args:
        registry: Where writer schemas are stored and found (default: the process default,
            see :func:`~dispytch.avro.default_registry`).
    """

    content_type = AVRO_CONTENT_TYPE
    framing = "Avro single-object"

    def _prefix(self, compiled: CompiledModel, ref: RegisteredSchema) -> bytes:
        return SINGLE_OBJECT_MAGIC + compiled.fingerprint

    def _split(self, payload: bytes) -> tuple[int | bytes, int]:
        if payload[:2] != SINGLE_OBJECT_MAGIC or len(payload) < 10:
            raise PayloadError(
                f"Not Avro single-object encoding: starts {payload[:10].hex() or 'empty'} "
                "(expected c301 and an 8-byte fingerprint).\n"
                "Send application/avro payloads as C3 01 + fingerprint + body."
            )
        return payload[2:10], 10


class ConfluentAvroSerializer(_AvroBase):
    """Confluent's wire format (``application/vnd.confluent.avro``): byte 0, the 4-byte
    big-endian schema id, the Avro body; for Kafka ecosystems built on a schema registry.

    Args:
        registry: Gives the ids (default: the process default registry).
    """

    content_type = CONFLUENT_AVRO_CONTENT_TYPE
    framing = "Confluent Avro"

    def _prefix(self, compiled: CompiledModel, ref: RegisteredSchema) -> bytes:
        return CONFLUENT_MAGIC + ref.id.to_bytes(4, "big")

    def _split(self, payload: bytes) -> tuple[int | bytes, int]:
        if payload[:1] != CONFLUENT_MAGIC or len(payload) < 5:
            raise PayloadError(
                f"Not the Confluent wire format: starts {payload[:5].hex() or 'empty'} "
                "(expected magic byte 00 and a 4-byte schema id).\n"
                "Send application/vnd.confluent.avro payloads as 00 + id + body."
            )
        return int.from_bytes(payload[1:5], "big"), 5
