"""End-to-end Redis throughput: raw redis.asyncio vs FastStream vs Dispytch, in one run.

    python benchmarks/bench_redis.py [-n 20000] [--reps 3] [--mode both|pubsub|streams]
    python benchmarks/bench_redis.py --mode rpc [-n 2000] [--reps 5]

Every implementation does the same work in one process and one event loop: publish N
~250-byte JSON events in non-transactional pipelines of ``--batch-size`` commands, receive
them, decode and validate each into the pydantic ``Event``. ``e2e`` = first publish ->
last message validated.

* Pub/Sub: ``PUBLISH`` to one channel; one subscriber.
* Streams: ``XADD`` to one stream; one consumer group member reading with
  ``XREADGROUP`` (``COUNT --batch-size``) and acknowledging with ``XACK`` after validation.

Implementations:

* raw        -- ``shared/bench/raw.py --broker redis-pubsub|redis-streams --publish batch``
* faststream -- ``shared/bench/faststream_bench.py --broker ... --publish batch``
  (FastStream 0.7.8, one message per handler call)
* dispytch   -- ``EventEmitter.emit_batch`` through ``RedisProducer`` /
  ``RedisStreamProducer``, an ``EventDispatcher`` over ``RedisConsumer`` /
  ``RedisStreamConsumer`` with an ``Event[T]`` handler (Streams: XACK after handling).

``--mode rpc``: request/reply. Sequential ``emitter.request`` round trips (a 3-field query,
a 3-field reply, validated both ways; 50 warm-up calls) and 100 concurrent requests to a
handler sleeping 0.2 s (wall time of the second batch), over Pub/Sub and over Streams,
beside ``shared/bench/rpc_bench.py --impl raw --broker redis`` (redis.asyncio Pub/Sub, one
reply channel per requester) with the same workloads. Ratios are of medians.

Each configuration runs in its own subprocess, interleaved ``--reps`` times; the medians
go into one JSON line on stdout (per-run lines go to stderr). Not a test: no assertions.
``--profile FILE`` (with ``--child``) writes a cProfile of the Dispytch run.
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
from dispytch import Event, EventBase, EventEmitter, QueryBase
from pydantic import BaseModel

BenchEvent: Any = None
REDIS = "redis://127.0.0.1:6379/0"
BROKERS = {"pubsub": "redis-pubsub", "streams": "redis-streams"}


# ----------------------------------------------------------------- the Dispytch run
def pipeline_producer(client: Any) -> Any:
    """A RedisProducer whose round trips go through ``client.pipeline(transaction=False)``
    (redis-py's high-level path) instead of the connection's ``send_packed_command`` /
    ``read_response``: ``--producer-path pipeline`` measures what the low-level public
    path buys."""
    from dispytch.redis import RedisProducer

    class PipelineProducer(RedisProducer):
        async def _round_trip(self, client: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            # Error replies come back as ResponseError values, as _round_trip's do.
            replies: list[Any] = await pipe.execute(raise_on_error=False)
            return replies

    return PipelineProducer(client)


async def run_dispytch(
    mode: str, n: int, batch_size: int, timeout: float, producer_path: str = "packed"
) -> dict[str, Any]:
    global BenchEvent  # the handler's annotation is resolved from module globals
    import redis.asyncio as aredis
    from dispytch.dispatcher import EventDispatcher
    from dispytch.redis import (
        RedisConsumer,
        RedisEventRoute,
        RedisEventSubscription,
        RedisProducer,
        RedisStreamConsumer,
        RedisStreamRoute,
        RedisStreamSubscription,
    )

    common = load_workload()
    name = f"dispytch-{common.run_id()}"
    streams = mode == "streams"
    route: Any = RedisStreamRoute(stream=name) if streams else RedisEventRoute(channel=name)

    class _BenchEvent(common.Event, EventBase):  # type: ignore[misc, name-defined]
        """The shared workload's Event, routed to the bench channel or stream."""

        __route__ = route

    BenchEvent = _BenchEvent
    events = [BenchEvent.model_construct(**dict(ev)) for ev in common.make_events(n)]
    st = common.State(n)

    pub = aredis.Redis.from_url(REDIS)
    sub = aredis.Redis.from_url(REDIS)
    pending = None
    try:
        producer = RedisProducer(pub) if producer_path == "packed" else pipeline_producer(pub)
        if streams:
            # The same read-ahead as the raw baseline (XREADGROUP COUNT batch_size).
            consumer: Any = RedisStreamConsumer(
                sub, group="g", batch_size=batch_size, max_unsettled=2 * batch_size
            )
            subscription: Any = RedisStreamSubscription(stream=name, group="g")
        else:
            consumer = RedisConsumer(sub.pubsub())
            subscription = RedisEventSubscription(channel=name)
        dispatcher = EventDispatcher(consumer)

        @dispatcher.handler(subscription)
        async def handle(event: Event[BenchEvent]) -> None:
            st.seen()

        emitter = EventEmitter(producer)
        async with dispatcher, emitter:
            cpu = common.CpuWindow(BROKERS[mode])
            cpu.start()
            t0 = time.perf_counter()
            for i in range(0, n, batch_size):
                await emitter.emit_batch(events[i : i + batch_size])
            t_pub = time.perf_counter()
            await common.wait_done(st, time.monotonic() + timeout)
            cpu_info = cpu.stop()
        if streams:
            pending = (await pub.xpending(name, "g"))["pending"]
            await pub.delete(name)
    finally:
        await sub.aclose()
        await pub.aclose()
    res: dict[str, Any] = common.rates(n, st.count, t0, t_pub, st.t_last)
    res.update(cpu_info)
    res["dispatcher_stats"] = dict(dispatcher.stats)
    if pending is not None:
        res["pending_after"] = pending
    return res


# ----------------------------------------------------------------- request/reply
class Reply(BaseModel):
    id: int
    ok: bool
    total: float


class Req(QueryBase[Reply]):
    id: int
    name: str
    amount: float
    sleep: float = 0.0


async def run_rpc(kind: str, n: int) -> dict[str, Any]:
    """Sequential round trips and 100 concurrent 0.2 s requests over ``kind``."""
    import uuid

    from dispytch import EventDispatcher
    from dispytch.redis import (
        RedisConsumer,
        RedisEventRoute,
        RedisEventSubscription,
        RedisProducer,
        RedisStreamConsumer,
        RedisStreamRoute,
        RedisStreamSubscription,
    )

    name = f"bench.rpc.{uuid.uuid4().hex[:8]}"
    consumer: Any
    if kind == "pubsub":
        consumer = RedisConsumer.from_url(REDIS)
        sub: Any = RedisEventSubscription(channel=name)
        route: Any = RedisEventRoute(channel=name)
    else:
        consumer = RedisStreamConsumer.from_url(
            REDIS.replace("redis://", "redis+streams://"), group="bench", ordered=False
        )
        sub = RedisStreamSubscription(stream=name, group="bench")
        route = RedisStreamRoute(stream=name)
    dispatcher = EventDispatcher(consumer, max_in_flight=128)

    @dispatcher.query(Req, subscription=sub)
    async def echo(req: Req) -> Reply:
        if req.sleep:
            await asyncio.sleep(req.sleep)
        return Reply(id=req.id, ok=True, total=req.amount * 2)

    reqs = [Req(id=i, name=f"user-{i % 1000}", amount=round(1.5 + i % 100, 2)) for i in range(n)]
    out: dict[str, Any] = {}
    producer = RedisProducer.from_url(REDIS)
    try:
        async with dispatcher, EventEmitter(producer) as emitter:
            for r in reqs[:50]:
                await emitter.request(r, route=route, timeout=10)
            lats: list[float] = []
            t0, c0 = time.perf_counter(), time.process_time()
            for r in reqs:
                t = time.perf_counter()
                rep = await emitter.request(r, route=route, timeout=10)
                lats.append(time.perf_counter() - t)
                assert rep.id == r.id
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            lats.sort()
            out.update(
                req_s=round(n / dt, 1),
                p50_ms=round(lats[len(lats) // 2] * 1e3, 3),
                cpu_us_per_req=round(cpu / n * 1e6, 1),
            )
            walls = []
            for _ in range(2):  # the first batch also opens pooled connections
                slow = [Req(id=i, name="s", amount=1.0, sleep=0.2) for i in range(100)]
                t0 = time.perf_counter()
                replies = await asyncio.gather(
                    *(emitter.request(r, route=route, timeout=60) for r in slow)
                )
                walls.append(round(time.perf_counter() - t0, 4))
                assert [r.id for r in replies] == list(range(100))
            out.update(wall_s=walls[-1], wall_s_rounds=walls)
    finally:
        if kind == "streams":
            await producer.redis.delete(name)
            await producer.redis.aclose()
    return out


def rpc_child(args: argparse.Namespace) -> None:
    kind = args.mode.removeprefix("rpc-")
    res: dict[str, Any] = {"impl": f"dispytch-{kind}"}
    try:
        res.update(asyncio.run(asyncio.wait_for(run_rpc(kind, args.n), args.timeout)))
    except Exception as exc:  # report, don't hang
        res["error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(res), flush=True)


def rpc_main(args: argparse.Namespace) -> None:
    impls = ("raw", "dispytch-pubsub", "dispytch-streams")
    runs: dict[str, list[dict[str, Any]]] = {i: [] for i in impls}
    for _ in range(args.reps):
        for impl in impls:
            if impl == "raw":
                common = ["--impl", "raw", "--broker", "redis", "-n", str(args.n)]
                seq = run_baseline("rpc_bench.py", *common, "--workload", "sequential")
                conc = run_baseline("rpc_bench.py", *common, "--workload", "concurrent")
                res = {
                    "impl": "raw",
                    "req_s": seq.get("req_s"),
                    "p50_ms": seq.get("p50_ms"),
                    "cpu_us_per_req": round(seq["client_cpu_s"] / seq["n"] * 1e6, 1)
                    if seq.get("client_cpu_s") is not None
                    else None,
                    "wall_s": conc.get("wall_s"),
                    **{
                        k: v["error"]
                        for k, v in (("error", seq), ("error_c", conc))
                        if "error" in v
                    },
                }
            else:
                cmd = [sys.executable, __file__, "--child", "--mode", f"rpc-{impl[9:]}",
                       "-n", str(args.n), "--timeout", str(args.timeout)]  # fmt: skip
                res = run_json(cmd, args.timeout + 60, f"the {impl} run")
            print(json.dumps(res), file=sys.stderr, flush=True)
            runs[impl].append(res)

    def median(impl: str, key: str) -> float | None:
        vals = [r[key] for r in runs[impl] if r.get(key) is not None]
        return round(statistics.median(vals), 4) if vals else None

    import redis

    out: dict[str, Any] = {"bench": "redis-rpc", "redis_py": redis.__version__, "n": args.n,
                           "reps": args.reps}  # fmt: skip
    for impl in impls:
        for key in ("req_s", "p50_ms", "cpu_us_per_req", "wall_s"):
            out[f"{impl}_{key}"] = median(impl, key)
        errors = [r[k] for r in runs[impl] for k in ("error", "error_c") if k in r]
        if errors:
            out[f"{impl}_errors"] = errors
    raw = out["raw_req_s"]
    for kind in ("pubsub", "streams"):
        mine = out[f"dispytch-{kind}_req_s"]
        out[f"{kind}_sequential_vs_raw"] = round(mine / raw, 3) if mine and raw else None
        pairs = [
            round(d["req_s"] / r["req_s"], 3)
            for d, r in zip(runs[f"dispytch-{kind}"], runs["raw"], strict=True)
            if d.get("req_s") and r.get("req_s")
        ]
        out[f"{kind}_sequential_vs_raw_per_rep"] = pairs
    print(json.dumps(out), flush=True)


def dispytch_child(args: argparse.Namespace) -> None:
    res: dict[str, Any] = {
        "impl": "dispytch",
        "broker": BROKERS[args.mode],
        "publish": "batch",
        "producer_path": args.producer_path,
    }
    coro = asyncio.wait_for(
        run_dispytch(args.mode, args.n, args.batch_size, args.timeout, args.producer_path),
        args.timeout + 30,
    )
    try:
        if args.profile:
            import cProfile

            prof = cProfile.Profile()
            res.update(prof.runcall(asyncio.run, coro))
            prof.dump_stats(args.profile)
        else:
            res.update(asyncio.run(coro))
    except Exception as exc:  # report, don't hang
        res["error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(res), flush=True)


def run_self(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    cmd = [
        sys.executable, __file__, "--child", "--mode", mode, "-n", str(args.n),
        "--batch-size", str(args.batch_size), "--timeout", str(args.timeout),
        "--producer-path", args.producer_path,
    ]  # fmt: skip
    return {"impl": "dispytch", **run_json(cmd, args.timeout + 60, "the Dispytch run")}


# ----------------------------------------------------------------- the comparison
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=20_000, help="events per run")
    p.add_argument("--reps", type=int, default=3, help="runs per implementation (interleaved)")
    p.add_argument(
        "--mode",
        choices=("both", "pubsub", "streams", "rpc", "rpc-pubsub", "rpc-streams"),
        default="both",
        help="rpc: request/reply beside rpc_bench.py (rpc-*: one child run)",
    )
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--timeout", type=float, default=180.0)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--profile", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--producer-path",
        choices=("packed", "pipeline"),
        default="packed",
        help="packed: what RedisProducer does (hiredis-packed commands on a pooled "
        "connection); pipeline: the same through redis-py's pipeline(transaction=False)",
    )
    args = p.parse_args()
    if args.child and args.mode.startswith("rpc-"):
        rpc_child(args)
        return
    if args.child:
        dispytch_child(args)
        return
    if args.mode == "rpc":
        rpc_main(args)
        return

    modes = ("pubsub", "streams") if args.mode == "both" else (args.mode,)
    impls = ("raw", "faststream", "dispytch")
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {(m, i): [] for m in modes for i in impls}
    for _ in range(args.reps):
        for mode in modes:
            common_args = ["--broker", BROKERS[mode], "-n", str(args.n), "--batch-size",
                           str(args.batch_size), "--timeout", str(args.timeout),
                           "--publish", "batch"]  # fmt: skip
            for impl in impls:
                if impl == "raw":
                    res = run_baseline("raw.py", *common_args)
                elif impl == "faststream":
                    res = run_baseline("faststream_bench.py", *common_args)
                else:
                    res = run_self(args, mode)
                print(json.dumps(res), file=sys.stderr, flush=True)
                runs[(mode, impl)].append(res)

    def median(mode: str, impl: str, key: str, digits: int = 1) -> float | None:
        vals = [r[key] for r in runs[(mode, impl)] if r.get(key) is not None and "error" not in r]
        return round(statistics.median(vals), digits) if vals else None

    import hiredis
    import redis

    out: dict[str, Any] = {
        "bench": "redis-e2e",
        "redis_py": redis.__version__,
        "hiredis": hiredis.__version__,  # the raw baseline runs in this venv: with hiredis
        "producer_path": args.producer_path,
        "n": args.n,
        "reps": args.reps,
        "publish": "batch",
        "batch_size": args.batch_size,
    }
    for mode in modes:
        for impl in impls:
            out[f"{mode}_{impl}_e2e_msgs_s"] = median(mode, impl, "e2e_msgs_s")
            out[f"{mode}_{impl}_client_cpu_s"] = median(mode, impl, "client_cpu_s", 3)
            errors = [r["error"] for r in runs[(mode, impl)] if "error" in r]
            if errors:
                out[f"{mode}_{impl}_errors"] = errors
        raw, fs, dp = (out[f"{mode}_{i}_e2e_msgs_s"] for i in impls)
        out[f"{mode}_dispytch_vs_raw"] = round(dp / raw, 3) if dp and raw else None
        out[f"{mode}_dispytch_vs_faststream"] = round(dp / fs, 3) if dp and fs else None
        out[f"{mode}_faststream_vs_raw"] = round(fs / raw, 3) if fs and raw else None
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
