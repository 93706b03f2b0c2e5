#!/usr/bin/env python3
"""A fast Kazoo-style responder for the query benchmark (a separate process).

For every request consumed from ``--queue`` it publishes a reply to the direct exchange
``targeted`` with routing key = the request's ``Server-ID``; the reply body echoes the request's
``Msg-ID`` (that is how Kazoo services answer and how the daemon correlates replies).

Two implementations, same behaviour:

* ``--impl asyncio``: our own ``kazoo_amqp.amqp.protocol`` client (no confirms, broker auto-ack;
  replies written in one ``write`` per loop iteration);
* ``--impl pika``: pika ``BlockingConnection``, single thread, like the C harness's responder.

Prints ``READY`` when consuming; on SIGTERM/SIGINT, after ``--max-seconds`` or once
``--max-messages`` were answered, prints one JSON line (counts, first/last request time on the
monotonic clock, own CPU seconds) and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _lib as L

TARGETED = "targeted"
_dumps = json.JSONEncoder(separators=(",", ":")).encode
_loads = json.loads


def build_reply(req: dict) -> bytes:
    return _dumps({
        "Event-Category": "bench", "Event-Name": "query_resp", "Msg-ID": req.get("Msg-ID"),
        "Call-ID": req.get("Call-ID"), "Result": "ok", "App-Name": "kzbench-responder",
        "App-Version": "1.0.0", "Node": "responder@bench.local",
        "Server-ID": "responder@bench.local-targeted",
    }).encode()


class Stats:
    def __init__(self) -> None:
        self.requests = 0
        self.replies = 0
        self.bad = 0
        self.first: float | None = None
        self.last: float | None = None
        self.cpu0 = time.process_time()

    def as_dict(self) -> dict:
        return {"requests": self.requests, "replies": self.replies, "bad": self.bad,
                "first": self.first, "last": self.last, "cpu_s": time.process_time() - self.cpu0}


def run_pika(a: argparse.Namespace) -> Stats:
    import pika

    conn = L.pika_conn()
    ch = conn.channel()
    props = pika.BasicProperties(content_type="application/json")
    st = Stats()
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    signal.signal(signal.SIGINT, lambda *_: stop.update(flag=True))

    def on_msg(_ch, _method, _props, body: bytes) -> None:  # type: ignore[no-untyped-def]
        now = time.monotonic()
        if st.first is None:
            st.first = now
        st.last = now
        st.requests += 1
        try:
            req = _loads(body)
            sid = req["Server-ID"]
        except Exception:
            st.bad += 1
            return
        ch.basic_publish(TARGETED, sid, build_reply(req), props)
        st.replies += 1
        if a.max_messages and st.replies >= a.max_messages:
            stop["flag"] = True

    ch.basic_qos(prefetch_count=0)
    ch.basic_consume(a.queue, on_msg, auto_ack=True)
    print("READY", flush=True)
    deadline = time.monotonic() + a.max_seconds
    while not stop["flag"] and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.2)
    conn.close()
    return st


async def run_asyncio(a: argparse.Namespace) -> Stats:
    from kazoo_amqp.amqp.channel import Delivery
    from kazoo_amqp.amqp.connection import Connection

    conn = await Connection.connect(host=L.AMQP_HOST, port=L.AMQP_PORT, user=L.AMQP_USER,
                                    password=L.AMQP_PASSWORD, name="kzbench responder")
    ch = await conn.channel()
    st = Stats()
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    publish = ch.publish
    mono = time.monotonic

    def on_delivery(d: Delivery) -> None:
        now = mono()
        if st.first is None:
            st.first = now
        st.last = now
        st.requests += 1
        try:
            req = _loads(d.body)
            sid = req["Server-ID"]
        except Exception:
            st.bad += 1
            return
        publish(TARGETED, sid, build_reply(req))
        st.replies += 1
        if a.max_messages and st.replies >= a.max_messages:
            done.set()

    await ch.basic_consume(a.queue, on_delivery, no_ack=True)
    print("READY", flush=True)
    try:
        await asyncio.wait_for(done.wait(), a.max_seconds)
    except TimeoutError:
        pass
    await conn.close()
    return st


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impl", choices=("asyncio", "pika"), default="asyncio")
    ap.add_argument("--queue", required=True)
    ap.add_argument("--max-seconds", type=float, default=900.0)
    ap.add_argument("--max-messages", type=int, default=0)
    a = ap.parse_args()
    st = run_pika(a) if a.impl == "pika" else asyncio.run(run_asyncio(a))
    print(json.dumps(st.as_dict() | {"impl": a.impl}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
