"""Raw throughput of our AMQP client (kazoo_amqp.amqp) against the local RabbitMQ, beside pika and
aiormq.

Not a test: a bounded script (message count and a per-phase time limit) that prints a table.

    .venv/bin/python bench/amqp_raw.py                      # 100k messages of 524 bytes
    .venv/bin/python bench/amqp_raw.py --count 20000 --rounds 3

Phases, each on a fresh non-durable queue filled before the consume phases:

* publish with confirms, pipelined (at most ``--window`` unconfirmed), 524-byte JSON bodies;
* consume with no_ack;
* consume with an ack per message (acks coalesced into one write per loop iteration), prefetch;
* query round trip: publish a request, an echo consumer (on a second connection, standing in for
  the remote service) publishes it to a reply queue, our reply consumer resolves the waiter;
  ``--trips`` sequential trips, median and p99 in milliseconds;
* the same two consumes with pika's BlockingConnection, and publish + both consumes with aiormq
  (the asyncio client on pamqp that aio-pika uses), in the same run, so the ratios mean something
  on a noisy machine. aiormq and pika are bench-only dependencies (``pip install .[bench]``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kazoo_amqp.amqp.channel import Channel, Delivery
from kazoo_amqp.amqp.connection import Connection

if TYPE_CHECKING:
    import aiormq.abc


def make_body(size: int) -> bytes:
    head = b'{"Event-Category":"bench","Event-Name":"raw","Msg-ID":"'
    tail = b'","Pad":"'
    body = head + uuid.uuid4().hex.encode() + tail
    return body + b"x" * max(0, size - len(body) - 2) + b'"}'


async def connect(args: argparse.Namespace) -> Connection:
    return await Connection.connect(
        host=args.host, port=args.port, user=args.user, password=args.password, name="bench"
    )


async def publish(
    ch: Channel, queue: str, body: bytes, count: int, window: int, limit: float
) -> float:
    """Publish ``count`` messages with confirms; returns msg/s (confirmed)."""
    outstanding: collections.deque[asyncio.Future[None]] = collections.deque()
    t0 = time.perf_counter()
    deadline = t0 + limit
    sent = 0
    for sent in range(1, count + 1):  # noqa: B007 - sent is read after the loop
        fut = ch.publish("", queue, body)
        assert fut is not None
        outstanding.append(fut)
        if len(outstanding) >= window:
            await outstanding.popleft()
            if time.perf_counter() > deadline:
                break
    for fut in outstanding:
        await fut
    return sent / (time.perf_counter() - t0)


async def consume(
    conn: Connection, queue: str, count: int, *, no_ack: bool, prefetch: int, limit: float
) -> float:
    ch = await conn.channel()
    if not no_ack:
        await ch.basic_qos(prefetch)
    done = asyncio.get_running_loop().create_future()
    got = 0

    def on_delivery(d: Delivery) -> None:
        nonlocal got
        got += 1
        if not no_ack:
            d.channel.ack(d.delivery_tag)
        if got == count and not done.done():
            done.set_result(None)

    t0 = time.perf_counter()
    tag = await ch.basic_consume(queue, on_delivery, no_ack=no_ack)
    try:
        await asyncio.wait_for(done, limit)
    except TimeoutError:
        pass
    elapsed = time.perf_counter() - t0
    await ch.basic_cancel(tag)
    await ch.close()
    return got / elapsed


async def query_round_trips(args: argparse.Namespace, body: bytes) -> list[float]:
    """Sequential request -> echo -> reply trips; returns the latencies in seconds."""
    service = await connect(args)
    client = await connect(args)
    try:
        svc = await service.channel()
        requests, _, _ = await svc.queue_declare("", exclusive=True)

        def echo(d: Delivery) -> None:
            svc.publish("", "reply-" + requests, d.body, correlation_id=d.correlation_id)

        await svc.basic_consume(requests, echo, no_ack=True)
        ch = await client.channel()
        await ch.queue_declare("reply-" + requests, exclusive=True)
        waiter: asyncio.Future[None] | None = None

        def on_reply(d: Delivery) -> None:
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

        await ch.basic_consume("reply-" + requests, on_reply, no_ack=True)
        loop = asyncio.get_running_loop()
        latencies = []
        for i in range(args.trips):
            waiter = loop.create_future()
            t0 = time.perf_counter()
            ch.publish("", requests, body, correlation_id=str(i), reply_to="reply-" + requests)
            await asyncio.wait_for(waiter, 5)
            latencies.append(time.perf_counter() - t0)
        return latencies
    finally:
        await client.close()
        await service.close()


def pika_consume(args: argparse.Namespace, queue: str, count: int, *, no_ack: bool) -> float:
    import pika

    params = pika.ConnectionParameters(
        host=args.host, port=args.port, credentials=pika.PlainCredentials(args.user, args.password)
    )
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    if not no_ack:
        ch.basic_qos(prefetch_count=args.prefetch)
    got = 0
    t0 = time.perf_counter()
    deadline = t0 + args.limit

    def on_message(chan, method, _props, _body) -> None:  # type: ignore[no-untyped-def]
        nonlocal got
        got += 1
        if not no_ack:
            chan.basic_ack(method.delivery_tag)
        if got >= count or (got % 1000 == 0 and time.perf_counter() > deadline):
            chan.stop_consuming()

    ch.basic_consume(queue, on_message, auto_ack=no_ack)
    ch.start_consuming()
    elapsed = time.perf_counter() - t0
    conn.close()
    return got / elapsed


def _aiormq_url(args: argparse.Namespace) -> str:
    return f"amqp://{args.user}:{args.password}@{args.host}:{args.port}/"


async def aiormq_fill(args: argparse.Namespace, queue: str, body: bytes) -> float:
    """aiormq: the same pipelined publish with confirms (a task per publish, as aiormq needs)."""
    import aiormq
    from pamqp import commands as spec

    conn = await aiormq.connect(_aiormq_url(args))
    try:
        ch = await conn.channel()  # publisher confirms on
        await ch.queue_declare(queue)
        await ch.queue_purge(queue)
        props = spec.Basic.Properties(content_type="application/json")
        outstanding: collections.deque[asyncio.Future[object]] = collections.deque()
        t0 = time.perf_counter()
        deadline = t0 + args.limit
        sent = 0
        for sent in range(1, args.count + 1):  # noqa: B007 - sent is read after the loop
            outstanding.append(
                asyncio.ensure_future(ch.basic_publish(body, routing_key=queue, properties=props))
            )
            if len(outstanding) >= args.window:
                await outstanding.popleft()
                if time.perf_counter() > deadline:
                    break
        await asyncio.gather(*outstanding)
        return sent / (time.perf_counter() - t0)
    finally:
        await conn.close()


async def aiormq_consume(args: argparse.Namespace, queue: str, *, no_ack: bool) -> float:
    import aiormq

    conn = await aiormq.connect(_aiormq_url(args))
    try:
        ch = await conn.channel(publisher_confirms=False)
        if not no_ack:
            await ch.basic_qos(prefetch_count=args.prefetch)
        done = asyncio.get_running_loop().create_future()
        got = 0

        async def on_message(msg: aiormq.abc.DeliveredMessage) -> None:
            nonlocal got
            got += 1
            if not no_ack:
                await msg.channel.basic_ack(msg.delivery.delivery_tag)  # type: ignore[union-attr]
            if got == args.count and not done.done():
                done.set_result(None)

        t0 = time.perf_counter()
        await ch.basic_consume(queue, on_message, no_ack=no_ack)
        try:
            await asyncio.wait_for(done, args.limit)
        except TimeoutError:
            pass
        return got / (time.perf_counter() - t0)
    finally:
        await conn.close()


async def fill(args: argparse.Namespace, queue: str, body: bytes) -> float:
    conn = await connect(args)
    try:
        ch = await conn.channel(confirms=True)
        await ch.queue_declare(queue)
        await ch.queue_purge(queue)
        return await publish(ch, queue, body, args.count, args.window, args.limit)
    finally:
        await conn.close()


async def drop(args: argparse.Namespace, queue: str) -> None:
    conn = await connect(args)
    try:
        ch = await conn.channel()
        await ch.queue_delete(queue)
    finally:
        await conn.close()


async def ours_consume(args: argparse.Namespace, queue: str, *, no_ack: bool) -> float:
    conn = await connect(args)
    try:
        return await consume(
            conn, queue, args.count, no_ack=no_ack, prefetch=args.prefetch, limit=args.limit
        )
    finally:
        await conn.close()


def run_round(
    args: argparse.Namespace, results: dict[str, list[float]], latency: dict[str, list[float]]
) -> None:
    body = make_body(args.size)
    queue = f"bench-raw-{uuid.uuid4().hex[:8]}"
    run: Callable[..., float] = asyncio.run
    try:
        results["ours: publish + confirms"].append(run(fill(args, queue, body)))
        results["ours: consume no_ack"].append(run(ours_consume(args, queue, no_ack=True)))
        results["ours: publish + confirms"].append(run(fill(args, queue, body)))
        results["ours: consume ack each"].append(run(ours_consume(args, queue, no_ack=False)))
        trips = sorted(run(query_round_trips(args, body)))
        latency["query round trip p50"].append(trips[len(trips) // 2] * 1000)
        latency["query round trip p99"].append(trips[int(len(trips) * 0.99)] * 1000)
        if not args.no_aiormq:
            results["aiormq: publish + confirms"].append(run(aiormq_fill(args, queue, body)))
            results["aiormq: consume no_ack"].append(
                run(aiormq_consume(args, queue, no_ack=True))
            )
            results["aiormq: publish + confirms"].append(run(aiormq_fill(args, queue, body)))
            results["aiormq: consume ack each"].append(
                run(aiormq_consume(args, queue, no_ack=False))
            )
        if not args.no_pika:
            run(fill(args, queue, body))
            results["pika: consume no_ack"].append(
                pika_consume(args, queue, args.count, no_ack=True)
            )
            run(fill(args, queue, body))
            results["pika: consume ack each"].append(
                pika_consume(args, queue, args.count, no_ack=False)
            )
    finally:
        run(drop(args, queue))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5672)
    parser.add_argument("--user", default="guest")
    parser.add_argument("--password", default="guest")
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=524)
    parser.add_argument("--window", type=int, default=1000, help="unconfirmed publishes in flight")
    parser.add_argument("--prefetch", type=int, default=1000)
    parser.add_argument("--limit", type=float, default=30.0, help="seconds per phase at most")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--trips", type=int, default=2000, help="query round trips")
    parser.add_argument("--no-pika", action="store_true")
    parser.add_argument("--no-aiormq", action="store_true")
    args = parser.parse_args()

    results: dict[str, list[float]] = collections.defaultdict(list)
    latency: dict[str, list[float]] = collections.defaultdict(list)
    t0 = time.perf_counter()
    for _ in range(args.rounds):
        run_round(args, results, latency)
    print(
        f"\n{args.count} messages x {args.size} bytes, window {args.window}, "
        f"prefetch {args.prefetch}, {args.rounds} round(s), {time.perf_counter() - t0:.0f} s"
    )
    print(f"{'phase':<34} {'median':>9}  runs")
    for name, values in results.items():
        runs = " ".join(f"{v:,.0f}" for v in values)
        print(f"{name + ' (msg/s)':<34} {statistics.median(values):>9,.0f}  {runs}")
    for name, values in latency.items():
        runs = " ".join(f"{v:.2f}" for v in values)
        print(f"{name + ' (ms)':<34} {statistics.median(values):>9.2f}  {runs}")
    for other in ("pika", "aiormq"):
        for phase in ("publish + confirms", "consume no_ack", "consume ack each"):
            if results.get(f"{other}: {phase}"):
                ours = statistics.median(results[f"ours: {phase}"])
                theirs = statistics.median(results[f"{other}: {phase}"])
                print(f"ours / {other} {phase}: {ours / theirs:.2f}")



if __name__ == "__main__":
    main()
