"""Orders come in, get charged, and an invoice goes out."""

from __future__ import annotations

import os

from dispytch import (
    Event,
    EventBase,
    EventDispatcher,
    EventEmitter,
    Retry,
    TopicRoute,
    TopicSubscription,
)

BROKER = os.environ.get("SHOP_BROKER_URL", "memory://shop")


class OrderPlaced(EventBase):
    __route__ = TopicRoute(topic="orders")
    __event_type__ = "order_placed"
    order_id: int
    amount: int


class InvoiceIssued(EventBase):
    __route__ = TopicRoute(topic="invoices")
    __event_type__ = "invoice_issued"
    order_id: int
    amount: int


class Billing:
    def __init__(self) -> None:
        self.charged: list[int] = []

    async def charge(self, order_id: int, amount: int) -> None:
        self.charged.append(order_id)


BILLING = Billing()
emitter = EventEmitter.from_url(BROKER)
dispatcher = EventDispatcher.from_url(BROKER)


@dispatcher.handler(TopicSubscription(topic="orders"), middlewares=[Retry(attempts=3, delay=120.0)])
async def on_order(event: Event[OrderPlaced]) -> None:
    await BILLING.charge(event.body.order_id, event.body.amount)
    await emitter.emit(InvoiceIssued(order_id=event.body.order_id, amount=event.body.amount))
