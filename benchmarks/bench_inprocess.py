"""In-process dispatch throughput: emit -> memory transport -> dispatcher -> handler.

    python benchmarks/bench_inprocess.py [-n 20000] [--reps 3]

Measured in the same run:
  floor      a plain loop doing ``model_dump_json`` then ``model_validate_json`` on the
             same events (the cost no framework can avoid);
  dispytch   ``EventEmitter.emit`` of each event through the memory transport to an
             ``EventDispatcher`` whose handler takes one ``Event[T]`` and one cached
             dependency (at-least-once: every message acknowledged after the handler);
  faststream the shared baseline's TestBroker and direct-consume figures (subprocess).
Prints a table and one JSON line with the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Annotated, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import load_workload, run_baseline
from dispytch import Dependency, Event, EventBase, EventDispatcher, EventEmitter
from dispytch.memory import MemoryBroker, MemoryConsumer, MemoryEventRoute, MemoryProducer

common = load_workload()
Model = common.Event


class BenchEvent(EventBase, Model):  # type: ignore[misc, valid-type]
    """The shared workload's event, given a route (same fields, same JSON)."""

    __route__ = MemoryEventRoute(topic="bench.events")


def floor(events: list[Any]) -> float:
    mvj = Model.model_validate_json
    t0 = time.perf_counter()
    for ev in events:
        mvj(ev.model_dump_json())
    return len(events) / (time.perf_counter() - t0)


class Service:
    def __init__(self) -> None:
        self.count = 0


_service = Service()


async def get_service() -> Service:
    return _service


async def dispytch_run(events: list[Any], max_in_flight: int) -> float:
    broker = MemoryBroker(f"bench-{time.time_ns()}")
    n = len(events)
    done = asyncio.Event()
    _service.count = 0
    dispatcher = EventDispatcher(MemoryConsumer(broker), max_in_flight=max_in_flight)

    @dispatcher.handler(topic="bench.events")
    async def handle(event: Event[Model], svc: Annotated[Service, Dependency(get_service)]) -> None:
        svc.count += 1
        if svc.count >= n:
            done.set()

    emitter = EventEmitter(MemoryProducer(broker))
    async with emitter, dispatcher:
        t0 = time.perf_counter()
        for i, ev in enumerate(events):
            await emitter.emit(ev)
            # let the consumer run alongside the producer, as a real service would
            if i % 256 == 0 and broker.pending("default") > 1000:
                await asyncio.sleep(0)
        await asyncio.wait_for(done.wait(), 120)
        dt = time.perf_counter() - t0
    assert dispatcher.stats["handled"] == n, dispatcher.stats
    return n / dt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("-n", type=int, default=20_000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--max-in-flight", type=int, default=64)
    p.add_argument("--no-faststream", action="store_true")
    args = p.parse_args()
    base = common.make_events(args.n)
    events = [BenchEvent.model_validate(e.model_dump()) for e in base]
    floors, ours, ours_seq = [], [], []
    for _ in range(args.reps):
        gc.collect()
        floors.append(floor(events))
        gc.collect()
        ours.append(asyncio.run(dispytch_run(events, args.max_in_flight)))
        gc.collect()
        ours_seq.append(asyncio.run(dispytch_run(events, 1)))
    result: dict[str, Any] = {
        "bench": "inprocess",
        "n": args.n,
        "reps": args.reps,
        "floor_dump_validate_msgs_s": round(statistics.median(floors)),
        "dispytch_msgs_s": round(statistics.median(ours)),
        "dispytch_sequential_msgs_s": round(statistics.median(ours_seq)),
    }
    result["ratio_vs_floor"] = round(
        result["dispytch_msgs_s"] / result["floor_dump_validate_msgs_s"], 3
    )
    result["ratio_sequential_vs_floor"] = round(
        result["dispytch_sequential_msgs_s"] / result["floor_dump_validate_msgs_s"], 3
    )
    if not args.no_faststream:
        fs = run_baseline("inprocess.py", "--broker", "kafka", "-n", str(args.n))
        tb = fs.get("testbroker_kafka", {}).get("msgs_s")
        direct = fs.get("fs_consume_direct_kafka", {}).get("msgs_s")
        result["faststream_testbroker_msgs_s"] = tb
        result["faststream_consume_direct_msgs_s"] = direct
        if tb:
            result["ratio_vs_faststream_testbroker"] = round(result["dispytch_msgs_s"] / tb, 2)
        if direct:
            result["ratio_vs_faststream_direct"] = round(result["dispytch_msgs_s"] / direct, 2)
    for k, v in result.items():
        print(f"{k:>36}: {v}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
