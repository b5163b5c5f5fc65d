"""Where writer schemas are found: the :class:`SchemaRegistry` interface and two of them.

A message carries a reference to its writer's schema, never the schema: the 8-byte
CRC-64-AVRO fingerprint (single-object encoding) or a registry id (Confluent wire
format). A consumer resolves that reference here and reads the payload with the writer's
schema against its own, the Avro way.

- :class:`InMemorySchemaRegistry`: one process (tests, a producer and consumer in one
  service). The default unless ``DISPYTCH_AVRO_REGISTRY`` names a directory.
- :class:`DirectorySchemaRegistry`: a directory that every producer and consumer can read
  (a shared volume, a directory baked into the image). Writes are atomic (write to a
  temporary file, then ``os.link``/``os.replace``), so several processes may register at
  once.

An HTTP client of a Confluent-compatible registry fits the same interface
(``register`` = ``POST /subjects/{subject}/versions``, ``lookup(id)`` =
``GET /schemas/ids/{id}``); none is shipped.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from dispytch.avro.schema import canonical_form

#: Names the default registry's directory for processes configured from the environment.
REGISTRY_ENV = "DISPYTCH_AVRO_REGISTRY"


@dataclass(frozen=True)
class RegisteredSchema:
    """A schema a registry knows.

    Attributes:
        id: The registry's id for it (the Confluent wire format's 4-byte id).
        fingerprint: CRC-64-AVRO of its Parsing Canonical Form, 8 bytes little-endian
            (what single-object encoding carries).
        schema: The schema as JSON data, with its defaults (which resolution needs).
    """

    id: int
    fingerprint: bytes
    schema: dict[str, Any] = field(compare=False)


@runtime_checkable
class SchemaRegistry(Protocol):
    """Stores writer schemas and finds them again by id or fingerprint.

    Implementations are called once per schema and per process on each side (the
    serializers cache what they get), so they may do I/O; they must be thread-safe.
    """

    def register(
        self, schema: Mapping[str, Any], *, subject: str | None = None
    ) -> RegisteredSchema:
        """Store ``schema`` (idempotent: the same schema keeps its id) and say its id.

        ``subject`` is the record's full name (Confluent's record-name strategy); a
        registry that has no subjects ignores it.
        """
        ...

    def lookup(self, ref: int | bytes) -> RegisteredSchema | None:
        """The schema with that id (``int``) or fingerprint (8 ``bytes``), or None."""
        ...


class InMemorySchemaRegistry:
    """A registry in this process's memory: ids count from 1."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[int, RegisteredSchema] = {}
        self._by_fp: dict[bytes, RegisteredSchema] = {}

    def register(
        self, schema: Mapping[str, Any], *, subject: str | None = None
    ) -> RegisteredSchema:
        _, _, fp = canonical_form(schema)
        with self._lock:
            found = self._by_fp.get(fp)
            if found is None:
                found = RegisteredSchema(len(self._by_id) + 1, fp, _copy(schema))
                self._by_id[found.id] = self._by_fp[fp] = found
            return found

    def lookup(self, ref: int | bytes) -> RegisteredSchema | None:
        with self._lock:
            return self._by_id.get(ref) if isinstance(ref, int) else self._by_fp.get(ref)

    def __repr__(self) -> str:
        return f"InMemorySchemaRegistry({len(self._by_id)} schemas)"


class DirectorySchemaRegistry:
    """Schemas as files in a directory, shared by every process that can read it.

    Layout (plain files, so a program without Dispytch can read and write it)::

        <root>/schemas/<fingerprint hex>.avsc   the schema's JSON, with its defaults
        <root>/ids/<id>                         the fingerprint hex that id stands for

    ``<fingerprint hex>`` is the 8 bytes of CRC-64-AVRO as single-object encoding puts
    them on the wire (little-endian), as 16 lower-case hex digits. An id is claimed by
    creating ``ids/<id>`` with ``os.link`` (fails if it exists), so two processes never
    get one id for two schemas. Two processes registering the same new schema at the
    same instant may each claim an id; both ids then name that schema (either decodes),
    and registries opened later return the smallest. Files are never rewritten or
    deleted.

    Args:
        root: The directory (created if missing).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._schemas = self.root / "schemas"
        self._ids = self.root / "ids"
        self._schemas.mkdir(parents=True, exist_ok=True)
        self._ids.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._by_id: dict[int, RegisteredSchema] = {}
        self._by_fp: dict[bytes, RegisteredSchema] = {}

    def register(
        self, schema: Mapping[str, Any], *, subject: str | None = None
    ) -> RegisteredSchema:
        _, _, fp = canonical_form(schema)
        with self._lock:
            found = self._by_fp.get(fp)
            if found is not None:
                return found
            path = self._schemas / f"{fp.hex()}.avsc"
            if not path.exists():
                self._write(path, json.dumps(schema, sort_keys=True).encode(), replace=True)
            ident = self._id_of(fp)
            if ident is None:
                self._claim_id(fp)
                ident = self._id_of(fp)
                assert ident is not None
            found = RegisteredSchema(ident, fp, _copy(schema))
            self._by_fp[fp] = found
            self._by_id.setdefault(ident, found)
            return found

    def lookup(self, ref: int | bytes) -> RegisteredSchema | None:
        with self._lock:
            found = self._by_id.get(ref) if isinstance(ref, int) else self._by_fp.get(ref)
            if found is not None:
                return found
            if isinstance(ref, int):
                try:
                    fp = bytes.fromhex((self._ids / str(ref)).read_text().strip())
                except (FileNotFoundError, ValueError):
                    return None
                ident: int | None = ref
            else:
                fp = ref
                ident = None
            try:
                schema = json.loads((self._schemas / f"{fp.hex()}.avsc").read_text())
            except FileNotFoundError:
                return None
            if ident is None:
                ident = self._id_of(fp)
            found = RegisteredSchema(ident if ident is not None else 0, fp, schema)
            # Only what has an id is cached by id; a schema written without one (by a
            # plain program using fingerprints only) gets one on register().
            if ident is not None:
                self._by_id[ident] = found
                self._by_fp.setdefault(fp, found)
            return found

    def _id_of(self, fp: bytes) -> int | None:
        want = fp.hex()
        best: int | None = None
        for entry in os.scandir(self._ids):
            if not entry.name.isdigit():
                continue
            try:
                with open(entry.path) as f:
                    if f.read().strip() == want:
                        n = int(entry.name)
                        best = n if best is None else min(best, n)
            except FileNotFoundError:  # pragma: no cover - files are never deleted
                continue
        return best

    def _claim_id(self, fp: bytes) -> int:
        taken = [int(e.name) for e in os.scandir(self._ids) if e.name.isdigit()]
        n = max(taken, default=0) + 1
        for _ in range(10_000):
            try:
                self._write(self._ids / str(n), fp.hex().encode(), replace=False)
                return n
            except FileExistsError:
                n += 1
        raise RuntimeError(f"Could not claim a schema id in {self._ids}.")  # pragma: no cover

    def _write(self, path: Path, data: bytes, *, replace: bool) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if replace:
                os.replace(tmp, path)
            else:
                os.link(tmp, path)  # atomic, and fails if the id is taken
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def __repr__(self) -> str:
        return f"DirectorySchemaRegistry({str(self.root)!r})"


def _copy(schema: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(schema))  # type: ignore[no-any-return]


_default: SchemaRegistry | None = None
_default_lock = threading.Lock()
#: Bumped whenever the default registry changes, so serializers drop what they cached
#: from the previous one (registrations, id lookups).
generation = 0


def default_registry() -> SchemaRegistry:
    """The registry serializers use when given none.

    A :class:`DirectorySchemaRegistry` at ``$DISPYTCH_AVRO_REGISTRY`` when that is set
    (so ``dispytch run`` processes share one without code), else one in-memory registry
    for the process.
    """
    global _default
    with _default_lock:
        if _default is None:
            path = os.environ.get(REGISTRY_ENV)
            _default = DirectorySchemaRegistry(path) if path else InMemorySchemaRegistry()
        return _default


def set_default_registry(registry: SchemaRegistry | None) -> None:
    """Replace the process's default registry (None: back to the environment's choice).

    The serializers built by the plugin host (``serializer="avro"`` and the consuming
    side's decoders) use the default registry, so this is how a service configures them.
    """
    global _default, generation
    with _default_lock:
        _default = registry
        generation += 1
