"""A worker presumed dead (its lease expired) cannot write once another took the run over:
its late step result is refused by the fencing token, the run keeps the new worker's."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from dispytch.durable import Durable, SQLiteJournalStore


async def test_a_late_write_from_an_expired_lease_is_refused(journal_path: Path) -> None:
    def make() -> Durable:
        return Durable(
            f"memory://fence-{uuid.uuid4().hex}",  # two brokers: each worker its own tick
            store=SQLiteJournalStore(journal_path),
            lease_ttl=0.3,
        )

    zombie, rescuer = make(), make()
    stalled = asyncio.Event()
    resume_zombie = asyncio.Event()
    ran: list[str] = []

    async def no_heartbeat(run_id: str, token: int, lease: object) -> None:  # a stalled process
        return None

    zombie._heartbeat = no_heartbeat  # type: ignore[method-assign]

    def register(durable: Durable, who: str) -> None:
        @durable.function(name="fence.step")
        async def step(x: int) -> str:
            ran.append(who)
            if who == "zombie":
                stalled.set()
                await resume_zombie.wait()
            return f"{who} {x}"

        @durable.function(name="fence.flow")
        async def flow(x: int) -> str:
            return await step(x)

    register(zombie, "zombie")
    register(rescuer, "rescuer")

    async with zombie, rescuer:
        handle = await zombie.functions["fence.flow"](1).dispatch(id="fenced-run")
        await asyncio.wait_for(stalled.wait(), 10)
        for _ in range(200):  # bounded: until the zombie's lease has expired
            record = await zombie.store.get_run(handle.id)
            assert record is not None
            if record.lease_until and record.lease_until < time.time():
                break
            await asyncio.sleep(0.02)
        await rescuer._send_tick(handle.id)  # the broker's redelivery, to another worker
        result = await rescuer.handle(handle.id, rescuer.functions["fence.flow"]).result(10)
        assert result == "rescuer 1"
        resume_zombie.set()  # the zombie wakes up and tries to journal its step
        for _ in range(200):
            if zombie.dispatcher.in_flight == 0:
                break
            await asyncio.sleep(0.02)
        journal = await zombie.store.load(handle.id)
    assert ran == ["zombie", "rescuer"]
    assert journal is not None and journal.steps["1"].outcome == '"rescuer 1"'
    assert journal.run.outcome == '"rescuer 1"'
