"""End-to-end RabbitMQ throughput: raw aio-pika vs FastStream vs Dispytch, in one run.

    python benchmarks/bench_rabbitmq.py [-n 20000] [--reps 3] [--publish batch|await]

Every implementation does the same work in one process and one event loop: publish N
~250-byte JSON events with publisher confirms (persistent, to a durable queue), consume
them with ``prefetch_count=256``, decode and validate each into the pydantic ``Event``,
and acknowledge it after validation. ``e2e`` = first publish -> last message validated.

* raw        -- ``shared/bench/raw.py --broker rabbitmq`` (aio-pika, the baseline)
* faststream -- ``shared/bench/faststream_bench.py --broker rabbitmq`` (FastStream 0.7.8)
* dispytch   -- ``EventEmitter.emit_batch`` through ``RabbitMQProducer``, an
  ``EventDispatcher`` over ``RabbitMQConsumer`` with an ``Event[T]`` handler (ack after).

``--publish batch`` (default): batches of ``--batch-size`` publishes in flight at once
(raw: ``asyncio.gather``; FastStream: ``--publish gather``; Dispytch: ``emit_batch``).
``--publish await``: one confirmed publish at a time.

Each configuration runs in its own subprocess, interleaved ``--reps`` times; the medians
go into one JSON line on stdout (per-run lines go to stderr). Not a test: no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import load_workload, run_baseline, run_json
from dispytch import Event, EventBase, EventEmitter

BenchEvent: Any = None
AMQP = "amqp://guest:guest@127.0.0.1:5672/"
PREFETCH = 256


# ----------------------------------------------------------------- the Dispytch run
async def run_dispytch(n: int, publish: str, batch_size: int, timeout: float) -> dict[str, Any]:
    global BenchEvent  # the handler's annotation is resolved from module globals
    import aio_pika
    from dispytch.dispatcher import EventDispatcher
    from dispytch.rabbitmq import (
        RabbitMQConsumer,
        RabbitMQEventRoute,
        RabbitMQEventSubscription,
        RabbitMQProducer,
    )

    common = load_workload()
    qname = f"dispytch-{common.run_id()}"

    class _BenchEvent(common.Event, EventBase):  # type: ignore[misc, name-defined]
        """The shared workload's Event, emitted to the bench queue via the default exchange."""

        __route__ = RabbitMQEventRoute(exchange="", routing_key=qname)

    BenchEvent = _BenchEvent

    events = [BenchEvent.model_construct(**dict(ev)) for ev in common.make_events(n)]
    st = common.State(n)

    conn = await aio_pika.connect_robust(AMQP)
    try:
        setup = await conn.channel()
        await setup.declare_queue(qname, durable=True)
        pub_channel = await conn.channel(publisher_confirms=True)
        sub_channel = await conn.channel()
        queue = await sub_channel.declare_queue(qname, durable=True)

        producer = RabbitMQProducer([pub_channel.default_exchange])
        consumer = RabbitMQConsumer(queue, prefetch_count=PREFETCH)
        dispatcher = EventDispatcher(consumer)

        @dispatcher.handler(RabbitMQEventSubscription(queue=qname, routing_key=qname))
        async def handle(event: Event[BenchEvent]) -> None:
            st.seen()

        emitter = EventEmitter(producer)
        async with dispatcher, emitter:
            cpu = common.CpuWindow("rabbitmq")
            cpu.start()
            t0 = time.perf_counter()
            if publish == "await":
                for ev in events:
                    await emitter.emit(ev)
            else:
                for i in range(0, n, batch_size):
                    await emitter.emit_batch(events[i : i + batch_size])
            t_pub = time.perf_counter()
            await common.wait_done(st, time.monotonic() + timeout)
            cpu_info = cpu.stop()
    finally:
        try:
            cleanup = await conn.channel()
            await cleanup.queue_delete(qname, if_unused=False, if_empty=False)
        finally:
            await conn.close()
    res: dict[str, Any] = common.rates(n, st.count, t0, t_pub, st.t_last)
    res.update(cpu_info)
    res["dispatcher_stats"] = dict(dispatcher.stats)
    return res


def dispytch_child(args: argparse.Namespace) -> None:
    res: dict[str, Any] = {"impl": "dispytch", "broker": "rabbitmq", "publish": args.publish}
    try:
        res.update(
            asyncio.run(
                asyncio.wait_for(
                    run_dispytch(args.n, args.publish, args.batch_size, args.timeout),
                    args.timeout + 30,
                )
            )
        )
    except Exception as exc:  # report, don't hang
        res["error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(res), flush=True)


def run_self(args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable, __file__, "--child", "-n", str(args.n), "--publish", args.publish,
        "--batch-size", str(args.batch_size), "--timeout", str(args.timeout),
    ]  # fmt: skip
    return {"impl": "dispytch", **run_json(cmd, args.timeout + 60, "the Dispytch run")}


# ----------------------------------------------------------------- the comparison
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=20_000, help="events per run")
    p.add_argument("--reps", type=int, default=3, help="runs per implementation (interleaved)")
    p.add_argument("--publish", choices=("batch", "await"), default="batch")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--timeout", type=float, default=180.0)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        dispytch_child(args)
        return

    common_args = ["--broker", "rabbitmq", "-n", str(args.n), "--batch-size",
                   str(args.batch_size), "--timeout", str(args.timeout)]  # fmt: skip
    fs_publish = "gather" if args.publish == "batch" else "await"
    runs: dict[str, list[dict[str, Any]]] = {"raw": [], "faststream": [], "dispytch": []}
    for _ in range(args.reps):
        for impl in runs:
            if impl == "raw":
                res = run_baseline("raw.py", *common_args, "--publish", args.publish)
            elif impl == "faststream":
                res = run_baseline("faststream_bench.py", *common_args, "--publish", fs_publish)
            else:
                res = run_self(args)
            print(json.dumps(res), file=sys.stderr, flush=True)
            runs[impl].append(res)

    def median(impl: str, key: str) -> float | None:
        vals = [r[key] for r in runs[impl] if r.get(key) is not None and "error" not in r]
        return round(statistics.median(vals), 1) if vals else None

    out: dict[str, Any] = {
        "bench": "rabbitmq-e2e",
        "n": args.n,
        "reps": args.reps,
        "publish": args.publish,
        "prefetch": PREFETCH,
        "confirms": "on",
    }
    for impl in runs:
        out[f"{impl}_e2e_msgs_s"] = median(impl, "e2e_msgs_s")
        out[f"{impl}_client_cpu_s"] = median(impl, "client_cpu_s")
        errors = [r["error"] for r in runs[impl] if "error" in r]
        if errors:
            out[f"{impl}_errors"] = errors
    raw, fs, dp = (out[f"{i}_e2e_msgs_s"] for i in ("raw", "faststream", "dispytch"))
    out["dispytch_vs_raw"] = round(dp / raw, 3) if dp and raw else None
    out["dispytch_vs_faststream"] = round(dp / fs, 3) if dp and fs else None
    out["faststream_vs_raw"] = round(fs / raw, 3) if fs and raw else None
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
