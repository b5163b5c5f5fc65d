"""A web service with durable functions, as a user writes it: ``Dispytch(app, durable=)``,
a checkout workflow of two steps dispatched from endpoints (the ``Idempotency-Key`` header
as the run id), a run's status read through the ``Jobs`` dependency.

:func:`define` registers the functions on a ``Dispytch`` (the web app) or on a plain
``Durable`` (a worker elsewhere): the same names either way, as every worker needs.
"""

from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from dispytch.backoff import Backoff
from dispytch.durable import Durable
from dispytch.fastapi import Dispytch, Jobs, RequiredIdempotencyKey
from fastapi import FastAPI
from pydantic import BaseModel

#: Side effects of the steps, in the order they ran: (step, order).
effects: list[tuple[str, int]] = []


class Checkout(BaseModel):
    amount: Decimal


def define(host: Dispytch | Durable) -> SimpleNamespace:
    @host.function(name="shop.reserve")
    async def reserve(order: int) -> str:
        effects.append(("reserve", order))
        return f"reservation-{order}"

    @host.function(name="shop.charge")
    def charge(order: int, amount: Decimal) -> Decimal:  # sync: runs in a worker thread
        effects.append(("charge", order))
        return amount

    @host.function(name="shop.checkout")
    async def checkout(order: int, amount: Decimal) -> tuple[str, Decimal]:
        reservation = await reserve(order)
        charged = await charge(order, amount)
        return reservation, charged

    @host.function(name="shop.notify")
    async def notify(text: str) -> None:
        effects.append((text, 0))

    return SimpleNamespace(reserve=reserve, charge=charge, checkout=checkout, notify=notify)


def make_durable(transport: str, store: str) -> Durable:
    return Durable(transport, store=store, backoff=Backoff(initial=0.01, factor=2.0, cap=0.05))


def make_app(transport: str, store: str, *, workers: bool = True) -> tuple[FastAPI, Dispytch]:
    app = FastAPI()
    dispytch = Dispytch(app, durable=make_durable(transport, store), durable_workers=workers)
    fns = define(dispytch)

    @app.post("/orders/{order}/checkout", status_code=202)
    async def post_checkout(
        order: int, body: Checkout, key: RequiredIdempotencyKey
    ) -> dict[str, str]:
        handle = await dispytch.dispatch(fns.checkout(order, body.amount), id=key)
        return {"run": handle.id}

    @app.post("/orders/{order}/checkout-now")
    async def checkout_now(order: int, body: Checkout) -> dict[str, Any]:
        handle = await fns.checkout.dispatch(order, body.amount)
        reservation, charged = await handle.result(timeout=20)
        return {"reservation": reservation, "charged": str(charged)}

    @app.post("/orders/{order}/checkout-sync", status_code=202)
    def checkout_sync(order: int, body: Checkout) -> dict[str, str]:
        return {"run": fns.checkout.dispatch(order, body.amount).id}

    @app.post("/ping", status_code=202)
    async def ping() -> dict[str, str]:
        fns.notify.dispatch("ping")  # not awaited: it still happens
        return {}

    @app.get("/runs/{run_id}")
    async def get_run(run_id: str, jobs: Jobs) -> dict[str, Any]:
        record = await jobs.handle(run_id, fns.checkout.durable_function).status()
        return {"status": record.status, "outcome": record.outcome, "attempts": record.attempts}

    return app, dispytch
