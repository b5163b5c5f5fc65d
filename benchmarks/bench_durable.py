"""Durable functions against DBOS Transact (``shared/bench/dbos_bench.py``) in the same run,
on the same PostgreSQL.

    python benchmarks/bench_durable.py [sequential] [concurrent] [start_latency]
        [--db postgres,sqlite] [-n 300] [--concurrent-n 1000] [--latency-n 50] [--reps 3]

The workflow is DBOS's: three trivial steps ``s3(s2(s1(x)))``, each a durable async
function awaited inside a durable async function (``wf``), so each is journalled.

sequential     ``await (await wf.dispatch(i)).result()`` one after another, a worker in the
               same process on the memory transport, the journal on PostgreSQL (unique table
               prefix in db ``test``, dropped afterwards) or on a SQLite file (WAL,
               ``synchronous=NORMAL``, the default); beside ``dbos_bench.py --workload
               sequential_async`` (like for like: an async workflow awaited in an event
               loop; the ratio) and ``sequential`` (sync) on the same database kind.
               Target: 3x DBOS.
concurrent     ``--concurrent-n`` runs dispatched at once, ``asyncio.gather`` of their
               results; beside ``dbos_bench.py --workload concurrent`` (asyncio.gather of
               N async workflows). Target: 5x DBOS's throughput.
start_latency  time from calling ``wf.dispatch()`` to the first step starting, with a
               worker in the same process, over Redis Streams and RabbitMQ (journal on
               each ``--db``); beside ``dbos_bench.py --workload start_latency`` (its
               queue, default 1 s polling, and 0.05 s). Target: p50 under 5 ms.

Each figure's own run and its baseline run alternate ``--reps`` times (interleaved, every
one in its own process); one JSON line per figure, with the medians, the ratio of each
interleaved pair and their median (``ratio_over_dbos``). Not a test: no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import run_baseline, run_json

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
STREAMS_URL = "redis+streams://127.0.0.1:6379/0"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
FIGURES = ("sequential", "concurrent", "start_latency")
TARGETS = {"sequential": 3.0, "concurrent": 5.0}


def expect(x: int) -> int:
    return (x + 1) * 2 - 3


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


# ------------------------------------------------------------------- one child run
def build(transport: str, store: Any, topic: str, options: dict[str, Any], **kw: Any) -> Any:
    from dispytch.durable import Durable

    durable = Durable(transport, store=store, topic=topic, consumer_options=options, **kw)
    started: dict[int, float] = {}

    @durable.function(name="bench.s1")
    async def s1(x: int) -> int:
        if x not in started:
            started[x] = time.perf_counter()
        return x + 1

    @durable.function(name="bench.s2")
    async def s2(x: int) -> int:
        return x * 2

    @durable.function(name="bench.s3")
    async def s3(x: int) -> int:
        return x - 3

    @durable.function(name="bench.wf")
    async def wf(x: int) -> int:
        return await s3(await s2(await s1(x)))

    return durable, wf, started


def make_store(db: str, tag: str) -> tuple[Any, Any]:
    """(store, async cleanup) of a scratch journal."""
    if db == "postgres":
        from dispytch.postgres import PostgresJournalStore

        prefix = f"bench_{tag}_"
        store = PostgresJournalStore(PG_URL, table_prefix=prefix)

        async def drop() -> None:
            import asyncpg

            conn = await asyncpg.connect(PG_URL)
            try:
                for t in ("runs", "steps", "children"):
                    await conn.execute(f"DROP TABLE IF EXISTS {prefix}{t}")
            finally:
                await conn.close()

        return store, drop
    from dispytch.durable.store import SQLiteJournalStore

    folder = tempfile.mkdtemp(prefix="bench-durable-")
    store = SQLiteJournalStore(os.path.join(folder, "journal.sqlite3"))

    async def remove() -> None:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)

    return store, remove


async def child_sequential(db: str, n: int, concurrent: int) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    store, cleanup = make_store(db, tag)
    durable, wf, _ = build(
        f"memory://bench-{tag}", store, f"bench.durable.{tag}", {}, max_in_flight=1024
    )
    try:
        async with durable:
            for i in range(20):  # warm-up
                assert await (await wf.dispatch(i)).result(timeout=30) == expect(i)
            gc.collect()
            if concurrent:

                async def one(i: int) -> int:
                    return await (await wf.dispatch(i)).result(timeout=120)

                await asyncio.gather(*(one(i) for i in range(50)))
                c0, t0 = cpu_s(), time.perf_counter()
                res = await asyncio.gather(*(one(i) for i in range(concurrent)))
                dt, cpu = time.perf_counter() - t0, cpu_s() - c0
                ok = sum(r == expect(i) for i, r in enumerate(res))
                return {
                    "n": concurrent,
                    "ok": ok,
                    "s": round(dt, 4),
                    "workflows_s": round(ok / dt, 1),
                    "client_cpu_ms_per_wf": round(cpu / concurrent * 1e3, 3),
                }
            lats: list[float] = []
            c0, t0 = cpu_s(), time.perf_counter()
            bad = 0
            for i in range(n):
                t = time.perf_counter()
                bad += await (await wf.dispatch(i)).result(timeout=30) != expect(i)
                lats.append(time.perf_counter() - t)
            dt, cpu = time.perf_counter() - t0, cpu_s() - c0
            out = {
                "n": n,
                "s": round(dt, 4),
                "workflows_s": round(n / dt, 1),
                "p50_ms": round(pct(lats, 0.5) * 1e3, 3),
                "p99_ms": round(pct(lats, 0.99) * 1e3, 3),
                "client_cpu_ms_per_wf": round(cpu / n * 1e3, 3),
            }
            if bad:
                out["error"] = f"{bad} wrong results"
            return out
    finally:
        await cleanup()


async def child_latency(broker: str, db: str, n: int) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    store, cleanup = make_store(db, tag)
    topic = f"bench.durable.{tag}"
    if broker == "redis-streams":
        transport, options = STREAMS_URL, {"group": f"{topic}.g"}
    else:
        transport, options = AMQP_URL, {"queue": topic, "queue_arguments": {"x-expires": 60_000}}
    durable, wf, started = build(transport, store, topic, options)
    rng = random.Random(42)
    starts: list[float] = []
    calls: list[float] = []
    try:
        async with durable:
            for i in range(-5, n):  # negative: warm-up
                await asyncio.sleep(rng.uniform(0, 0.01))
                t0 = time.perf_counter()
                handle = await wf.dispatch(i)
                t1 = time.perf_counter()
                assert await handle.result(timeout=30) == expect(i)
                if i >= 0:
                    starts.append(started[i] - t0)
                    calls.append(t1 - t0)
        return {
            "samples": len(starts),
            "p50_ms": round(pct(starts, 0.5) * 1e3, 3),
            "p99_ms": round(pct(starts, 0.99) * 1e3, 3),
            "dispatch_call_p50_ms": round(pct(calls, 0.5) * 1e3, 3),
        }
    finally:
        if broker == "redis-streams":
            import redis.asyncio as aredis

            admin = aredis.Redis.from_url("redis://127.0.0.1:6379/0")
            try:
                await admin.delete(topic)
            finally:
                await admin.aclose()
        await cleanup()


def child(args: argparse.Namespace) -> None:
    if args.child == "sequential":
        out = child_sequential(args.db, args.n, 0)
    elif args.child == "concurrent":
        out = child_sequential(args.db, 0, args.concurrent_n)
    else:
        out = child_latency(args.broker, args.db, args.latency_n)
    try:
        res = asyncio.run(asyncio.wait_for(out, args.timeout))
    except Exception as exc:
        res = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(res), flush=True)


def run_self(timeout: float, *extra: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--timeout", str(timeout), *extra]
    try:
        return run_json(cmd, timeout + 30, f"bench_durable {' '.join(extra)}")
    except subprocess.TimeoutExpired:
        return {"error": f"bench_durable {' '.join(extra)} timed out"}


def dbos(timeout: float, *extra: str) -> dict[str, Any]:
    try:
        return run_baseline("dbos_bench.py", "--timeout", str(timeout), *extra, timeout=timeout * 3)
    except subprocess.TimeoutExpired:
        return {"error": f"dbos_bench.py {' '.join(extra)} timed out"}


def med(rows: list[dict[str, Any]], key: str) -> float | None:
    xs = [r[key] for r in rows if isinstance(r.get(key), int | float)]
    return round(statistics.median(xs), 3) if xs else None


def median_of(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return round(statistics.median(vals), 3) if vals else None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def emit(line: dict[str, Any]) -> None:
    line.setdefault("python", sys.version.split()[0])
    print(json.dumps(line), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("figures", nargs="*", default=list(FIGURES))
    p.add_argument("--db", default="postgres,sqlite", help="journal databases")
    p.add_argument("-n", type=int, default=300, help="sequential runs")
    p.add_argument("--concurrent-n", type=int, default=1000)
    p.add_argument("--latency-n", type=int, default=50, help="start-latency samples")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    p.add_argument("--timeout", type=float, default=180.0, help="per child run (s)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--broker", default="redis-streams", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    t = args.timeout
    dbs = [d.strip() for d in args.db.split(",") if d.strip()]
    if "sequential" in args.figures:
        for db in dbs:
            mine: list[dict[str, Any]] = []
            base: list[dict[str, Any]] = []
            pairs: list[tuple[float | None, float | None, float | None]] = []
            for _ in range(args.reps):
                mine.append(run_self(t, "--child", "sequential", "--db", db, "-n", str(args.n)))
                rep = {
                    wl: dbos(t, "--db", db, "--workload", wl, "-n", str(args.n))
                    for wl in ("sequential_async", "sequential")
                }
                base += rep.values()
                pairs.append((
                    mine[-1].get("workflows_s"),
                    rep["sequential_async"].get("workflows_s"),
                    rep["sequential"].get("workflows_s"),
                ))  # fmt: skip
            emit({
                "bench": "durable", "figure": "sequential", "db": db, "n": args.n,
                "reps": args.reps, "dispytch_workflows_s": med(mine, "workflows_s"),
                "dispytch_p50_ms": med(mine, "p50_ms"),
                "dispytch_cpu_ms_per_wf": med(mine, "client_cpu_ms_per_wf"),
                "dbos_async_workflows_s": median_of([b for _, b, _ in pairs]),
                "dbos_sync_workflows_s": median_of([c for _, _, c in pairs]),
                "dbos_async_p50_ms": med(
                    [r for r in base if r.get("workload") == "sequential_async"], "p50_ms"
                ),
                "dbos_cpu_ms_per_wf": round(
                    (med(base, "client_cpu_s") or 0) / args.n * 1e3, 3
                ) or None,
                # Like for like: DBOS's async workflow awaited in an event loop.
                "ratio_over_dbos": median_of([ratio(a, b) for a, b, _ in pairs]),
                "ratio_per_rep": [ratio(a, b) for a, b, _ in pairs],
                "ratio_over_dbos_sync": median_of([ratio(a, c) for a, _, c in pairs]),
                "target": TARGETS["sequential"],
                "runs": mine, "errors": [r["error"] for r in mine + base if "error" in r],
            })  # fmt: skip
    if "concurrent" in args.figures:
        for db in ["postgres"] if "postgres" in dbs else dbs[:1]:
            mine, base = [], []
            n = str(args.concurrent_n)
            for _ in range(args.reps):
                mine.append(run_self(t, "--child", "concurrent", "--db", db, "--concurrent-n", n))
                base.append(dbos(t, "--db", db, "--workload", "concurrent", "-n", n))
            per_rep = [
                ratio(a.get("workflows_s"), b.get("workflows_s"))
                for a, b in zip(mine, base, strict=True)
            ]
            emit({
                "bench": "durable", "figure": "concurrent", "db": db, "n": args.concurrent_n,
                "reps": args.reps, "dispytch_workflows_s": med(mine, "workflows_s"),
                "dispytch_cpu_ms_per_wf": med(mine, "client_cpu_ms_per_wf"),
                "dbos_workflows_s": med(base, "workflows_s"),
                "dbos_cpu_ms_per_wf": round(
                    (med(base, "client_cpu_s") or 0) / args.concurrent_n * 1e3, 3
                ) or None,
                "ratio_over_dbos": median_of(per_rep), "ratio_per_rep": per_rep,
                "target": TARGETS["concurrent"],
                "runs": mine, "errors": [r["error"] for r in mine + base if "error" in r],
            })  # fmt: skip
    if "start_latency" in args.figures:
        for db in dbs:
            base = [
                dbos(t, "--db", db, "--workload", "start_latency", "--poll-intervals", poll,
                     "--latency-n", "20")
                for poll in ("1.0", "0.05")
            ]  # fmt: skip
            for broker in ("redis-streams", "rabbitmq"):
                mine = [
                    run_self(t, "--child", "start_latency", "--broker", broker, "--db", db,
                             "--latency-n", str(args.latency_n))
                    for _ in range(args.reps)
                ]  # fmt: skip
                p50 = med(mine, "p50_ms")
                emit({
                    "bench": "durable", "figure": "start_latency", "broker": broker, "db": db,
                    "samples": args.latency_n, "reps": args.reps, "dispytch_p50_ms": p50,
                    "dispytch_p99_ms": med(mine, "p99_ms"),
                    "dbos_p50_ms": {str(r.get("poll_interval_s")): r.get("p50_ms") for r in base},
                    "ratio_dbos_default_over_dispytch": ratio(base[0].get("p50_ms"), p50),
                    "ratio_dbos_50ms_poll_over_dispytch": ratio(base[1].get("p50_ms"), p50),
                    "target_p50_ms": 5.0, "meets_target": p50 is not None and p50 < 5.0,
                    "runs": mine, "errors": [r["error"] for r in mine + base if "error" in r],
                })  # fmt: skip


if __name__ == "__main__":
    main()
