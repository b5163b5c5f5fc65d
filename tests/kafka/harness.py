"""The Kafka :class:`~dispytch.testing.TransportHarness` (shared by the Kafka tests)."""

from __future__ import annotations

from aiokafka.errors import TopicAlreadyExistsError
from dispytch.kafka import KafkaConsumer, KafkaEventRoute, KafkaEventSubscription, KafkaProducer
from dispytch.routes import EventRoute, EventSubscription
from dispytch.testing import TransportHarness

from .helpers import create_topic

#: Tansu makes a joining member wait about half the session timeout (at least 1 s) before
#: the group settles; a short session keeps the tests quick.
FAST_GROUP = {"session_timeout_ms": 3000, "heartbeat_interval_ms": 500}


class KafkaHarness(TransportHarness):
    """Kafka through Tansu: topics are created up front (as operators usually do)."""

    name = "kafka"
    at_least_once = True
    supports_keys = True
    supports_patterns = True
    redelivery_timeout = 20.0

    def __init__(self, bootstrap: str, *, partitions: int = 1) -> None:
        self.bootstrap = bootstrap
        self.url = f"kafka://{bootstrap}"
        self.partitions = partitions
        self._created: set[str] = set()

    async def prepare(self, name: str, *, group: str) -> None:
        if name in self._created:
            return
        try:
            await create_topic(self.bootstrap, name, self.partitions)
        except TopicAlreadyExistsError:
            pass
        self._created.add(name)

    def route(self, name: str) -> EventRoute:
        return KafkaEventRoute(topic=name)

    def subscription(self, name: str, *, group: str) -> EventSubscription:
        return KafkaEventSubscription(topic=name)

    def producer(self) -> KafkaProducer:
        return KafkaProducer.from_url(self.url)

    def consumer(self, *, group: str) -> KafkaConsumer:
        return KafkaConsumer.from_url(self.url, group_id=group, commit_interval=0.05, **FAST_GROUP)
