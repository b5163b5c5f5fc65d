"""Commands and queries: in-process ``Bus.ask`` and request/reply over RabbitMQ, each beside
its baseline from ``shared/bench`` in the same run.

    python benchmarks/bench_cqrs.py [inprocess] [rabbitmq] [-n 20000] [--rpc-n 2000]

inprocess  ``await bus.ask(GetUser(user_id=i))`` one at a time (a pydantic query to an
           async handler returning a pydantic reply), with reply validation (the default)
           and without; ``await bus.send(...)`` of a command; beside
           ``cqrs_inprocess_bench.py`` (plain-asyncio floors: a dict lookup + await, and
           a Queue + Future round trip; the iambus rows need Python 3.13 and carry its
           import error on other versions).
rabbitmq   sequential ``emitter.request`` round trips to a dispatcher in the same process
           (publisher confirms and ``mandatory`` on, direct reply-to), and 100 concurrent
           requests to a handler sleeping 0.2 s (wall time of the second batch); beside
           ``rpc_bench.py --impl raw --broker rabbitmq`` (aio-pika, direct reply-to).
Prints one JSON line with the figures and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import run_baseline
from dispytch import Bus, CommandBase, EventDispatcher, EventEmitter, QueryBase
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


async def rabbitmq(n: int) -> dict[str, Any]:
    from dispytch.rabbitmq import (
        RabbitMQConsumer,
        RabbitMQEventRoute,
        RabbitMQEventSubscription,
        RabbitMQProducer,
    )

    queue = f"bench.cqrs.{uuid.uuid4().hex[:8]}"
    consumer = RabbitMQConsumer.from_url(
        AMQP_URL, queue=queue, queue_arguments={"x-expires": 60_000}
    )
    dispatcher = EventDispatcher(consumer, max_in_flight=128)

    @dispatcher.query(Echo, subscription=RabbitMQEventSubscription(queue=queue))
    async def echo(req: Echo) -> Reply:
        if req.sleep:
            await asyncio.sleep(req.sleep)
        return Reply(id=req.id, ok=True, total=req.amount * 2)

    route = RabbitMQEventRoute(routing_key=queue)
    reqs = [Echo(id=i, name=f"user-{i % 1000}", amount=round(1.5 + i % 100, 2)) for i in range(n)]
    out: dict[str, Any] = {}
    async with dispatcher, EventEmitter(RabbitMQProducer.from_url(AMQP_URL)) as emitter:
        for r in reqs[:50]:
            await emitter.request(r, route=route, timeout=5)
        lats: list[float] = []
        t0 = time.perf_counter()
        for r in reqs:
            t = time.perf_counter()
            rep = await emitter.request(r, route=route, timeout=5)
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
    p.add_argument("parts", nargs="*", default=["inprocess", "rabbitmq"])
    p.add_argument("-n", type=int, default=20_000, help="in-process operations per row")
    p.add_argument("--rpc-n", type=int, default=2000, help="sequential round trips over RabbitMQ")
    args = p.parse_args()
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
    if "rabbitmq" in args.parts:
        mine_r = asyncio.run(rabbitmq(args.rpc_n))
        seq = run_baseline(
            "rpc_bench.py", "--impl", "raw", "--broker", "rabbitmq", "--workload", "sequential",
            "-n", str(args.rpc_n),
        )  # fmt: skip
        conc = run_baseline(
            "rpc_bench.py", "--impl", "raw", "--broker", "rabbitmq", "--workload", "concurrent"
        )
        res["rabbitmq"] = mine_r
        res["rabbitmq_raw"] = {
            "sequential": {k: seq.get(k) for k in ("req_s", "p50_ms", "p99_ms", "error")},
            "concurrent": {k: conc.get(k) for k in ("wall_s", "wall_s_rounds", "ok", "error")},
        }
        res["ratio_rabbitmq_sequential_over_raw"] = ratio(
            mine_r["sequential"]["req_s"], seq.get("req_s")
        )
    print(json.dumps(res))


if __name__ == "__main__":
    main()
