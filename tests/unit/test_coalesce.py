"""aio.WriteCoalescer: one write per loop iteration, order kept, holds nest."""

from __future__ import annotations

import asyncio

from kazoo_amqp.aio import WriteCoalescer


def coalescer() -> tuple[WriteCoalescer, list[bytes]]:
    writes: list[bytes] = []
    return WriteCoalescer(asyncio.get_running_loop(), writes.append), writes


async def test_writes_of_one_iteration_leave_in_one_call_in_order() -> None:
    c, writes = coalescer()
    c.write(b"a")
    c.write(b"b")
    c.write(b"c")
    assert writes == [] and c.queued == 3
    await asyncio.sleep(0)
    assert writes == [b"abc"] and c.queued == 0


async def test_write_now_writes_at_once_when_nothing_is_queued() -> None:
    c, writes = coalescer()
    c.write_now(b"x")
    assert writes == [b"x"]
    c.write(b"a")
    c.write_now(b"b")  # must not overtake the queued write
    assert writes == [b"x"]
    await asyncio.sleep(0)
    assert writes == [b"x", b"ab"]


async def test_hold_keeps_everything_until_the_outermost_release() -> None:
    c, writes = coalescer()
    c.hold()
    c.write_now(b"1")
    c.hold()
    c.write(b"2")
    c.release()
    await asyncio.sleep(0)  # the scheduled flush finds the coalescer held
    assert writes == []
    c.release()
    assert writes == [b"12"]


async def test_busy_writes_are_gathered_for_a_fraction_of_a_millisecond() -> None:
    writes: list[bytes] = []
    c = WriteCoalescer(asyncio.get_running_loop(), writes.append, gather_s=0.01)
    c.write(b"a", busy=True)
    await asyncio.sleep(0)
    c.write(b"b", busy=True)
    assert writes == []
    await asyncio.sleep(0.03)
    assert writes == [b"ab"]


async def test_clear_drops_what_is_queued_and_flush_writes_it_now() -> None:
    c, writes = coalescer()
    c.write(b"lost")
    c.clear()
    c.write(b"kept")
    c.flush()
    assert writes == [b"kept"]
    await asyncio.sleep(0)
    assert writes == [b"kept"]
