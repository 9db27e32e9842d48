"""Faust's Kafka transport with the consumer's fetch wait taken from our settings.

Faust builds the worker's aiokafka consumer with ``fetch_max_wait_ms=1500``
and offers no setting for it. The broker holds a fetch until it has data for
one of the partitions asked for, or until that wait is up; and aiokafka keeps
one fetch in flight per broker, which leaves out the partitions whose records
are still waiting in its buffer. Working off a backlog, the buffered
partitions are the busy ones: the fetch then asks only for partitions at their
end (the thin purchase topic, say), the broker waits the whole 1.5 s, and the
busy partitions, drained by then, cannot be fetched again until it returns.
Live, the same wait is where most of an event's time to its score went.

:class:`LeadpulseApp` is a ``faust.App`` whose transport builds the consumer
with ``fetch_max_wait_ms`` of its own (``consumer_fetch_max_wait_ms`` in
:class:`~streams.settings.Settings`). Everything else is Faust's.

>>> app = LeadpulseApp("doc", broker="kafka://127.0.0.1:9092", fetch_max_wait_ms=100)
>>> type(app.transport).__name__, app.fetch_max_wait_ms
('Transport', 100)
"""

from __future__ import annotations

from typing import Any, ClassVar

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TransportT

__all__ = ["DEFAULT_FETCH_MAX_WAIT_MS", "LeadpulseApp"]

DEFAULT_FETCH_MAX_WAIT_MS = 1500  # what Faust passes to aiokafka


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Read by AIOKafkaConsumer.start() when it builds its fetcher, which has not happened yet.
        consumer._fetch_max_wait_ms = getattr(self.app, "fetch_max_wait_ms", DEFAULT_FETCH_MAX_WAIT_MS)
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> Any:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport, whose worker consumer waits ``app.fetch_max_wait_ms`` per fetch."""

    Consumer: ClassVar[Any] = _Consumer


class LeadpulseApp(faust.App):
    """A ``faust.App`` whose consumer's fetch wait is ``fetch_max_wait_ms`` (Faust fixes 1,500)."""

    def __init__(self, *args: Any, fetch_max_wait_ms: int = DEFAULT_FETCH_MAX_WAIT_MS, **kwargs: Any) -> None:
        self.fetch_max_wait_ms = fetch_max_wait_ms
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> TransportT:
        return Transport(self.conf.broker_consumer, self)
