"""No pickle: values by annotations, errors as records, revived only when registered."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from dispytch.durable import Durable, FunctionCodec, RunFailedError, UnencodableError
from pydantic import BaseModel


class Point(BaseModel):
    x: int
    y: int


class Shape(BaseModel):
    name: str
    points: list[Point]
    when: dt.datetime


class Unregistered(Exception):
    pass


class Registered(Exception):
    pass


Echoed = tuple[tuple[int, str], dt.datetime, dt.datetime, Decimal, int, Shape, dict[int, str]]
NAIVE = dt.datetime(2026, 12, 4, 10, 30, 0, 123456)
AWARE = dt.datetime(2026, 12, 4, 10, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))


async def test_values_come_back_as_their_types(durable: Durable) -> None:
    @durable.function
    async def echo(
        pair: tuple[int, str],
        naive: dt.datetime,
        aware: dt.datetime,
        money: Decimal,
        big: int,
        shape: Shape,
        mapping: dict[int, str],
    ) -> Echoed:
        return pair, naive, aware, money, big, shape, mapping

    @durable.function
    async def outer() -> Echoed:
        value = await echo(*ARGS)  # a step: its value is decoded by echo's annotation
        assert isinstance(value[0], tuple) and isinstance(value[3], Decimal)
        return value

    shape = Shape(name="tri", points=[Point(x=1, y=2)], when=AWARE)
    ARGS = ((1, "a"), NAIVE, AWARE, Decimal("1.10"), 2**70, shape, {1: "one"})
    async with durable:
        got = await (await echo.dispatch(*ARGS)).result(timeout=10)
        nested = await (await outer.dispatch()).result(timeout=10)
    for value in (got, nested):
        assert value[0] == (1, "a") and isinstance(value[0], tuple)
        assert value[1] == NAIVE and value[1].tzinfo is None
        assert value[2] == AWARE and value[2].utcoffset() == dt.timedelta(hours=2)
        assert value[3] == Decimal("1.10") and isinstance(value[3], Decimal)
        assert value[4] == 2**70 and isinstance(value[4], int)
        assert value[5] == shape and isinstance(value[5], Shape)
        assert value[6] == {1: "one"}


async def test_an_unencodable_argument_fails_at_dispatch(durable: Durable) -> None:
    @durable.function
    async def takes_int(x: int) -> int:
        return x

    @durable.function
    async def takes_anything(x):  # type: ignore[no-untyped-def]
        return x

    with pytest.raises(UnencodableError, match="argument 'x'"):
        takes_int("not a number")  # type: ignore[arg-type]
    with pytest.raises(UnencodableError, match="argument 'x'"):
        await takes_anything.dispatch(object())
    with pytest.raises(TypeError, match="takes_int"):
        takes_int(1, 2)  # type: ignore[call-arg]
    assert await durable.store.get_run("nothing") is None  # nothing was created


async def test_an_unencodable_result_fails_the_run(durable: Durable) -> None:
    @durable.function
    async def bad() -> int:
        return "nope"  # type: ignore[return-value]

    async with durable:
        handle = await bad.dispatch()
        with pytest.raises(RunFailedError) as info:
            await handle.result(timeout=10)
    assert info.value.type == "UnencodableError"
    assert (await handle.status()).attempts == 0  # permanent: not retried


async def test_errors_are_records_revived_only_when_registered(durable: Durable) -> None:
    @durable.function
    async def fails_unregistered() -> None:
        raise Unregistered("the reason")

    @durable.function
    async def fails_registered() -> None:
        raise Registered("known")

    durable.register_error(Registered)
    async with durable:
        with pytest.raises(RunFailedError) as info:
            await (await fails_unregistered.dispatch()).result(timeout=10)
        with pytest.raises(Registered, match="known") as revived:
            await (await fails_registered.dispatch()).result(timeout=10)
    err = info.value
    assert err.type == "Unregistered" and err.message == "the reason"
    assert "raise Unregistered" in err.traceback and not err.retryable
    assert isinstance(revived.value.__cause__, RunFailedError)


def test_codec_round_trip_and_hash() -> None:
    def f(a: tuple[int, ...], *rest: Decimal, key: dt.date, **extra: int) -> None: ...

    codec = FunctionCodec(f, "f")
    args, kwargs, text, digest = codec.encode_args(
        ((1, 2), Decimal("3.5")), {"key": dt.date(2026, 1, 2), "z": 1}
    )
    again = codec.encode_args(((1, 2), Decimal("3.5")), {"z": 1, "key": dt.date(2026, 1, 2)})
    assert digest == again[3] and text == again[2]  # keyword order does not matter
    assert codec.decode_args(text) == (
        ((1, 2), Decimal("3.5")),
        {"key": dt.date(2026, 1, 2), "z": 1},
    )
    assert codec.encode_args(((1, 3),), {"key": dt.date(2026, 1, 2)})[3] != digest
    assert FunctionCodec(f, "g").hash_of(text) != digest  # the name is part of the hash
