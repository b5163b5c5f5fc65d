"""The schema registries: in-memory and directory-based (atomic, several processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dispytch.avro import (
    REGISTRY_ENV,
    DirectorySchemaRegistry,
    InMemorySchemaRegistry,
    SchemaRegistry,
    default_registry,
    rabin_fingerprint,
    set_default_registry,
)


def schema(name: str, *fields: str) -> dict[str, object]:
    return {
        "type": "record",
        "name": name,
        "fields": [{"name": f, "type": "long", "default": 0} for f in fields],
    }


@pytest.fixture(params=["memory", "directory"])
def reg(request: pytest.FixtureRequest, tmp_path: Path) -> SchemaRegistry:
    if request.param == "memory":
        return InMemorySchemaRegistry()
    return DirectorySchemaRegistry(tmp_path / "registry")


def test_register_is_idempotent_and_lookup_finds_by_id_and_fingerprint(
    reg: SchemaRegistry,
) -> None:
    assert isinstance(reg, SchemaRegistry)
    a = reg.register(schema("A", "x"))
    b = reg.register(schema("B", "x"))
    again = reg.register(schema("A", "x"))
    assert a.id != b.id and again.id == a.id and again.fingerprint == a.fingerprint
    assert len(a.fingerprint) == 8
    assert reg.lookup(a.id) == a and reg.lookup(a.fingerprint) == a
    assert reg.lookup(a.id).schema == schema("A", "x")  # type: ignore[union-attr]
    assert reg.lookup(999) is None and reg.lookup(b"\x00" * 8) is None
    # Defaults and docs are kept (resolution needs the writer's full schema); they do not
    # change the fingerprint, which is of the Parsing Canonical Form.
    with_doc = {**schema("A", "x"), "doc": "documented"}
    assert reg.register(with_doc).fingerprint == a.fingerprint


def test_fingerprint_is_fastavros_crc64_avro() -> None:
    import fastavro.schema

    parsed = fastavro.schema.parse_schema(schema("A", "x", "y"))
    canonical = fastavro.schema.to_parsing_canonical_form(parsed)
    assert rabin_fingerprint(canonical.encode()).hex() == fastavro.schema.fingerprint(
        canonical, "CRC-64-AVRO"
    )
    # The Avro specification's value for the empty input is the Rabin seed itself.
    assert rabin_fingerprint(b"") == (0xC15D213AA4D7A795).to_bytes(8, "little")


def test_directory_layout_is_plain_files(tmp_path: Path) -> None:
    reg = DirectorySchemaRegistry(tmp_path)
    got = reg.register(schema("A", "x"))
    fp_hex = got.fingerprint.hex()
    assert (tmp_path / "ids" / str(got.id)).read_text() == fp_hex
    assert json.loads((tmp_path / "schemas" / f"{fp_hex}.avsc").read_text()) == schema("A", "x")
    assert not [p for p in tmp_path.rglob(".tmp-*")]  # temporaries cleaned up
    # Another process (a new registry over the same directory) sees it.
    other = DirectorySchemaRegistry(tmp_path)
    assert other.lookup(got.id) == got
    assert other.lookup(got.fingerprint) == got
    assert other.register(schema("A", "x")).id == got.id


def test_directory_registry_sees_schemas_added_later_by_others(tmp_path: Path) -> None:
    reader = DirectorySchemaRegistry(tmp_path)
    fp = DirectorySchemaRegistry(tmp_path).register(schema("Late", "x")).fingerprint
    assert reader.lookup(fp) is not None  # not cached as missing


REGISTER = """
import json, sys
from dispytch.avro import DirectorySchemaRegistry
reg = DirectorySchemaRegistry(sys.argv[1])
out = {}
for i in range(8):
    s = {"type": "record", "name": f"S{i}", "fields": [{"name": "x", "type": "long"}]}
    out[f"S{i}"] = reg.register(s).id
print(json.dumps(out))
"""


def test_processes_registering_at_once_never_share_an_id(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", REGISTER, str(root)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        results.append(json.loads(out))
    fresh = DirectorySchemaRegistry(root)
    for name in results[0]:
        want = {"type": "record", "name": name, "fields": [{"name": "x", "type": "long"}]}
        canonical = fresh.register(want)
        for r in results:
            # Whatever id a process was given names that very schema...
            assert fresh.lookup(r[name]).fingerprint == canonical.fingerprint  # type: ignore[union-attr]
    # ...and an id never names two schemas: one fingerprint per id file.
    ids = {p.name: p.read_text() for p in (root / "ids").iterdir()}
    by_fp: dict[str, set[str]] = {}
    for ident, fp in ids.items():
        by_fp.setdefault(fp, set()).add(ident)
    assert len(by_fp) == 8
    assert not [p for p in root.rglob(".tmp-*")]


def test_default_registry_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(REGISTRY_ENV, str(tmp_path / "env-registry"))
    set_default_registry(None)
    reg = default_registry()
    assert isinstance(reg, DirectorySchemaRegistry) and reg.root == tmp_path / "env-registry"
    monkeypatch.delenv(REGISTRY_ENV)
    set_default_registry(None)
    assert isinstance(default_registry(), InMemorySchemaRegistry)
    assert os.environ.get(REGISTRY_ENV) is None


PRODUCE = """
import sys
from dispytch import EventBase
from dispytch.avro import ConfluentAvroSerializer, DirectorySchemaRegistry, AvroSerializer

class Reading(EventBase):
    sensor: str
    value: float
    unit: str = "C"

reg = DirectorySchemaRegistry(sys.argv[1])
for s in (AvroSerializer(reg), ConfluentAvroSerializer(reg)):
    print(s.encode(Reading(sensor="t1", value=21.5, unit="F")).hex())
"""


def test_a_consumer_process_decodes_what_a_producer_process_registered(tmp_path: Path) -> None:
    from dispytch import EventBase
    from dispytch.avro import AvroSerializer, ConfluentAvroSerializer

    class Reading(EventBase):  # the consumer's older version: no unit
        sensor: str
        value: float

    out = subprocess.run(
        [sys.executable, "-c", PRODUCE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    single, confluent = (bytes.fromhex(line) for line in out.stdout.split())
    reg = DirectorySchemaRegistry(tmp_path)  # this process's own view of the directory
    assert AvroSerializer(reg).decoder(Reading)(single) == Reading(sensor="t1", value=21.5)
    assert ConfluentAvroSerializer(reg).decoder(Reading)(confluent) == Reading(
        sensor="t1", value=21.5
    )
