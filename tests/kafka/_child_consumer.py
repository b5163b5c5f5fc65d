"""A consumer process for the crash and scale-out tests (run as a script, not collected).

    python _child_consumer.py BOOTSTRAP TOPIC GROUP OUT_FILE [DELAY_S]

Handles ``item`` events with an EventDispatcher over a KafkaConsumer; appends one line
per handled event (``n``) to OUT_FILE, flushed before the event is acknowledged, so
the file is the ground truth of what was handled even if the process is killed. Writes
``READY`` once its dispatcher started (it holds partitions). Stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from dispytch.dispatcher import EventDispatcher
from dispytch.event import Event, EventBase
from dispytch.kafka import KafkaConsumer, KafkaEventSubscription


class Item(EventBase):
    __event_type__ = "item"
    n: int


async def main(bootstrap: str, topic: str, group: str, out: str, delay: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    consumer = KafkaConsumer.from_url(
        f"kafka://{bootstrap}",
        group_id=group,
        commit_interval=0.05,
        session_timeout_ms=3000,
        heartbeat_interval_ms=500,
    )
    dispatcher = EventDispatcher(consumer)
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    @dispatcher.handler(KafkaEventSubscription(topic=topic))
    async def on_item(event: Event[Item]) -> None:
        if delay:
            await asyncio.sleep(delay)
        os.write(fd, f"{event.body.n}\n".encode())

    await dispatcher.start()
    os.write(fd, b"READY\n")
    await stop.wait()
    await dispatcher.stop(timeout=10)
    os.close(fd)


if __name__ == "__main__":
    bootstrap, topic, group, out = sys.argv[1:5]
    delay = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    asyncio.run(main(bootstrap, topic, group, out, delay))
