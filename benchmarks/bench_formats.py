"""Payload formats: encode+decode events/s of Avro and Protobuf against JSON, in one run.

    python benchmarks/bench_formats.py [-n 20000] [--reps 5]

The shared 6-field event (``shared/bench/common.py``: str, int, float, nested model,
list[str], datetime), given a route, an Avro record name and a Protobuf message class
(generated from a .proto at run time with grpcio-tools, like the tests). For each format
the serializer Dispytch uses is timed on the same pre-built events: ``encode`` of each,
then its decoder (bytes -> validated model, what a handler receives) on each payload.
Best of ``--reps``. Prints a table and one JSON line with the ratios to JSON.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("-n", type=int, default=20_000)
    p.add_argument("--reps", type=int, default=5)
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
    print(
        json.dumps(
            {"bench": "formats", "n": args.n, "python": sys.version.split()[0], "results": results}
        )
    )


if __name__ == "__main__":
    main()
