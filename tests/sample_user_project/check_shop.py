"""The user's tests of their service, with Dispytch's pytest plugin."""

from __future__ import annotations

import asyncio

import pytest
from shop.service import BILLING, InvoiceIssued, OrderPlaced, dispatcher, emitter


@pytest.fixture
def dispytch_targets():
    return [emitter, dispatcher]


async def test_an_order_is_invoiced(dispytch_kit):
    await dispytch_kit.emit(OrderPlaced(order_id=1, amount=5))
    await dispytch_kit.idle()
    dispytch_kit.assert_emitted(InvoiceIssued, order_id=1, amount=5)
    dispytch_kit.assert_nothing_else_emitted()


async def test_a_flaky_charge_is_retried(dispytch_kit):
    fault = dispytch_kit.faults.fail(BILLING, "charge", times=2)
    await dispytch_kit.emit(OrderPlaced(order_id=2, amount=7))
    await dispytch_kit.idle()  # two 120 s retry delays: virtual time
    dispytch_kit.assert_emitted(InvoiceIssued, order_id=2, times=1)
    assert fault.raised == 2


@pytest.mark.dispytch(clock=False)
async def test_the_marker_configures_the_kit(dispytch_kit):
    assert dispytch_kit.clock is None


async def test_the_memory_factory(dispytch_memory):
    async with dispytch_memory(emitter, dispatcher) as kit:
        await kit.emit(OrderPlaced(order_id=3, amount=1))
        await kit.idle()
        kit.assert_emitted(InvoiceIssued, order_id=3)


async def test_the_clock_fixture(dispytch_clock):
    await asyncio.sleep(3600)
    assert dispytch_clock.jumped >= 3599
