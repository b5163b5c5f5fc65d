"""Interoperability: plain fastavro programs (no Dispytch: the code a team in another
service or language writes from the Avro specification) read what Dispytch emits and
write what Dispytch handles, in both framings, through the directory registry's files."""

from __future__ import annotations

import datetime as dt
import io
import json
from decimal import Decimal
from pathlib import Path

import fastavro
import fastavro.schema
import pytest
from dispytch import Event, EventBase
from dispytch.avro import DirectorySchemaRegistry, set_default_registry
from pydantic import Field

from .conftest import Kit

# The schema a team without Dispytch keeps in its repository (an .avsc file).
ORDER_AVSC = {
    "type": "record",
    "name": "Order",
    "fields": [
        {"name": "order_id", "type": "long"},
        {"name": "customer", "type": "string"},
        {
            "name": "total",
            "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2},
        },
        {"name": "placed_at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "items", "type": {"type": "array", "items": "string"}},
        {"name": "note", "type": ["null", "string"], "default": None},
    ],
}


class Order(EventBase):
    __topic__ = "orders"
    order_id: int
    customer: str
    total: Decimal = Field(max_digits=10, decimal_places=2)
    placed_at: dt.datetime
    items: list[str]
    note: str | None = None


ORDER = Order(
    order_id=42,
    customer="ada",
    total=Decimal("99.95"),
    placed_at=dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC),
    items=["book", "pen"],
)


def plain_fingerprint(schema: dict[str, object]) -> bytes:
    """CRC-64-AVRO of the canonical form, as fastavro computes it (hex, little-endian)."""
    parsed = fastavro.schema.parse_schema(schema)
    canonical = fastavro.schema.to_parsing_canonical_form(parsed)
    return bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))


def plain_read(schema: dict[str, object], body: bytes) -> dict[str, object]:
    return fastavro.schemaless_reader(io.BytesIO(body), fastavro.parse_schema(schema))  # type: ignore[return-value]


def plain_write(schema: dict[str, object], datum: dict[str, object]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), datum)
    return buf.getvalue()


@pytest.fixture
def shared_dir(tmp_path: Path) -> Path:
    root = tmp_path / "registry"
    set_default_registry(DirectorySchemaRegistry(root))
    return root


async def test_plain_fastavro_reads_single_object_encoding(kit: Kit, shared_dir: Path) -> None:
    emitter = await kit.emitter("avro")
    payload = emitter.build(ORDER).payload
    assert payload[:2] == b"\xc3\x01"
    assert payload[2:10] == plain_fingerprint(ORDER_AVSC)  # Dispytch derived the same schema
    datum = plain_read(ORDER_AVSC, payload[10:])
    assert datum == {
        "order_id": 42,
        "customer": "ada",
        "total": Decimal("99.95"),
        "placed_at": dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC),
        "items": ["book", "pen"],
        "note": None,
    }
    # The writer schema is in the directory for readers that do not have it.
    fp_hex = payload[2:10].hex()
    stored = json.loads((shared_dir / "schemas" / f"{fp_hex}.avsc").read_text())
    assert plain_fingerprint(stored) == payload[2:10]


async def test_plain_fastavro_reads_the_confluent_wire_format(kit: Kit, shared_dir: Path) -> None:
    emitter = await kit.emitter("avro-confluent")
    payload = emitter.build(ORDER).payload
    assert payload[0] == 0
    schema_id = int.from_bytes(payload[1:5], "big")
    # A plain program resolves the id through the directory's files.
    fp_hex = (shared_dir / "ids" / str(schema_id)).read_text()
    writer = json.loads((shared_dir / "schemas" / f"{fp_hex}.avsc").read_text())
    assert plain_read(writer, payload[5:])["order_id"] == 42
    assert plain_read(ORDER_AVSC, payload[5:])["total"] == Decimal("99.95")


# A newer version of the other team's schema: one field more, with a default.
ORDER_V2_AVSC = {
    **ORDER_AVSC,
    "fields": [*ORDER_AVSC["fields"], {"name": "channel", "type": "string", "default": "web"}],  # type: ignore[list-item]
}
DATUM = {
    "order_id": 7,
    "customer": "bob",
    "total": Decimal("1.50"),
    "placed_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    "items": [],
    "note": "gift",
    "channel": "app",
}


async def handled(kit: Kit, publish: list[tuple[bytes, str]]) -> list[Order]:
    d = kit.dispatcher()
    got: list[Order] = []

    @d.handler(topic="orders")
    async def on(event: Event[Order]) -> None:
        got.append(event.body)

    await d.start()
    for payload, content_type in publish:
        kit.broker.publish("orders", payload, {"dispytch-content-type": content_type}, None)
    await kit.until(lambda: len(got) + len(kit.broker.rejected) == len(publish), "all settled")
    assert kit.broker.rejected == []
    return got


EXPECTED = Order(
    order_id=7,
    customer="bob",
    total=Decimal("1.50"),
    placed_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    items=[],
    note="gift",
)


async def test_dispytch_handles_single_object_encoding_written_by_plain_fastavro(
    kit: Kit, shared_dir: Path
) -> None:
    # The plain producer puts its schema where the consumers look (the directory layout
    # is documented: schemas/<fingerprint hex>.avsc) and writes C3 01 + fingerprint + body.
    fp = plain_fingerprint(ORDER_V2_AVSC)
    (shared_dir / "schemas" / f"{fp.hex()}.avsc").write_text(json.dumps(ORDER_V2_AVSC))
    payload = b"\xc3\x01" + fp + plain_write(ORDER_V2_AVSC, DATUM)
    # ...and one written with exactly the reader's schema needs no registry entry at all.
    same = b"\xc3\x01" + plain_fingerprint(ORDER_AVSC) + plain_write(ORDER_AVSC, DATUM)
    got = await handled(kit, [(payload, "application/avro"), (same, "application/avro")])
    assert got == [EXPECTED, EXPECTED]


async def test_dispytch_handles_the_confluent_wire_format_written_by_plain_fastavro(
    kit: Kit, shared_dir: Path
) -> None:
    fp = plain_fingerprint(ORDER_V2_AVSC)
    (shared_dir / "schemas" / f"{fp.hex()}.avsc").write_text(json.dumps(ORDER_V2_AVSC))
    (shared_dir / "ids" / "17").write_text(fp.hex())
    payload = b"\x00" + (17).to_bytes(4, "big") + plain_write(ORDER_V2_AVSC, DATUM)
    got = await handled(kit, [(payload, "application/vnd.confluent.avro")])
    assert got == [EXPECTED]
