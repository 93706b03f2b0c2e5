"""Events into Kamailio: the Dispatcher the manager feeds when the config has ``[kamailio]``.

Same interface as ``workers.pool.WorkerPool`` (``next_seq``, ``pick``, ``dispatch``, outcomes to
``on_done``, back-pressure to ``on_pressure``), but each delivery is POSTed to Kamailio's bridge
socket (``/kazoo/event``) and runs in a cfg route there. Rules:

* **Lanes.** ``socket_workers`` keep-alive HTTP connections, each with its own queue and up to
  ``_WINDOW`` pipelined requests in flight (Kamailio runs one connection's requests one after
  the other); ``consistent-worker`` keys pick the lane by hash (order per key), other
  deliveries go to the shortest queue. Kamailio runs the lanes in parallel processes.
* **Ack after the route.** The outcome is reported when Kamailio answered, i.e. after the route
  returned: 200 -> done (ack); 404 (no such route) -> rejected; any other status -> rejected.
  The route is chosen here by the §4.3 fallback over the cfg's routes (``kamailio.routes``,
  per-binding event_key/subkey); no candidate -> logged, counted, rejected.
* **Kamailio down.** A request that got no complete answer stays at the head of its lane, which
  reconnects with backoff and sends it again; nothing is acked meanwhile. A request Kamailio
  holds longer than ``request_timeout_ms`` counts as an attempt; after ``max_redeliveries``
  attempts it is given up (rejected).
* **Bad input.** A body that is not a JSON object, or larger than ``max_event_bytes`` once
  augmented, is logged with exchange, routing key and Msg-ID, counted and rejected.
* **mod-init.** :meth:`KamailioSink.watch_mod_init` keeps one idle connection open; each time it
  (re)connects it asks ``/kazoo/mod-init`` and hands the subscriptions to a callback, so a
  restarted Kamailio is noticed (its connections close) and asked again.
* **Resumes.** :meth:`answer_later` takes an async query's future; when it settles, the resume
  (reply route with the reply, or timeout route with an empty body) is queued for the resume
  lanes (``socket_workers`` keep-alive connections, no task per query), which POST
  ``/kazoo/resume``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

from kazoo_amqp.core import jsonc, pipe
from kazoo_amqp.core.framing import HEADER_SIZE
from kazoo_amqp.core.hashing import pick_worker
from kazoo_amqp.core.kamailio.bridge_cfg import ROUTE_SEPARATOR
from kazoo_amqp.core.kamailio.settings import BridgeSettings
from kazoo_amqp.core.message import augment_received
from kazoo_amqp.core.route_names import candidates
from kazoo_amqp.errors import BadPayload
from kazoo_amqp.kamailio_sink.http import BridgeDown, HttpConnection

log = logging.getLogger("kazoo_amqp.kamailio")

DONE, FAILED, BAD = 0, 1, 2
_CONNECT_TIMEOUT = 2.0
#: Events in flight per lane (pipelined on its connection). More than one hides the round trip
#: (two process wake-ups per event, costly on a busy machine); Kamailio still runs a lane's
#: events one after the other, so the order per consistent-worker key holds.
_WINDOW = 16
#: Connections a resume is tried on before Kamailio's watchdog is left to time it out.
_RESUME_ATTEMPTS = 3


class _Item:
    __slots__ = ("attempts", "body", "exchange", "headers", "msg_id", "routing_key", "token")

    def __init__(
        self,
        token: Any,
        body: bytes,
        headers: list[tuple[str, str]],
        exchange: str | None,
        routing_key: str | None,
        msg_id: Any,
    ) -> None:
        self.token = token
        self.body = body
        self.headers = headers
        self.exchange = exchange
        self.routing_key = routing_key
        self.msg_id = msg_id
        self.attempts = 0


class _Resume:
    __slots__ = ("attempts", "body", "headers", "resume")

    def __init__(self, headers: list[tuple[str, str]], body: bytes, resume: dict[str, Any]) -> None:
        self.headers = headers
        self.body = body
        self.resume = resume
        self.attempts = 0


class _Backoff:
    def __init__(self, low: float, high: float) -> None:
        self.low, self.high, self.delay = low, high, low

    def reset(self) -> None:
        self.delay = self.low

    async def sleep(self) -> None:
        await asyncio.sleep(self.delay * (0.5 + random.random()))
        self.delay = min(self.delay * 2, self.high)


class KamailioSink:
    """Runs events in Kamailio (see the module docstring)."""

    def __init__(
        self,
        bridge: BridgeSettings,
        *,
        on_done: Callable[[Any, int], None],
        on_pressure: Callable[[bool], None] = lambda paused: None,
        event_key: str = "Event-Category",
        event_subkey: str = "Event-Name",
        max_redeliveries: int = 2,
        reconnect_min: float = 0.1,
        reconnect_max: float = 10.0,
    ) -> None:
        self.bridge = bridge
        self.size = bridge.socket_workers
        self.on_done = on_done
        self.on_pressure = on_pressure
        self.event_key = event_key
        self.event_subkey = event_subkey
        self.max_redeliveries = max_redeliveries
        self.reconnect = (reconnect_min, reconnect_max)
        self.routes = frozenset(bridge.routes)
        self.timeout = bridge.request_timeout_ms / 1000
        self.bindings: list[tuple[str | None, str | None]] = []
        self.zones: dict[int, str] = {}
        self.high_water = 64 * self.size
        self.low_water = self.high_water // 2
        self._queues: list[collections.deque[_Item]] = [
            collections.deque() for _ in range(self.size)
        ]
        self._wakes = [asyncio.Event() for _ in range(self.size)]
        self._tasks: set[asyncio.Task[Any]] = set()
        self._resumes: asyncio.Queue[_Resume] = asyncio.Queue()
        self._seq = 0
        self._queued = 0
        self._paused = False
        self._closing = False
        self.up = False
        self.counters: dict[str, int] = {
            "dispatched": 0,
            "done": 0,
            "rejected": 0,
            "no_route": 0,
            "bad_message": 0,
            "too_large": 0,
            "timeouts": 0,
            "gave_up": 0,
            "resends": 0,
            "reconnects": 0,
            "mod_inits": 0,
            "resumes": 0,
            "resume_failed": 0,
        }

    # -- lifecycle ------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def start(self) -> None:
        for index in range(self.size):
            self._spawn(self._lane(index), f"kamailio-lane-{index}")
            self._spawn(self._resume_lane(), f"kamailio-resume-{index}")

    async def stop(self, grace: float) -> list[Any]:
        """Let the lanes finish what they hold, up to ``grace`` s; return tokens not finished."""
        deadline = time.monotonic() + grace
        while self._queued and time.monotonic() < deadline and self.up:
            await asyncio.sleep(0.02)
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        leftovers = [item.token for q in self._queues for item in q]
        for q in self._queues:
            q.clear()
        self._queued = 0
        return leftovers

    # -- the Dispatcher interface ---------------------------------------------------------
    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def pick(self, key: bytes | None = None) -> int:
        if key is not None:
            return pick_worker(key, self.size)
        return min(range(self.size), key=lambda i: len(self._queues[i]))

    def dispatch(self, index: int, seq: int, frame: bytes, token: Any) -> None:
        """Queue one pipe frame (``encode_delivery`` / ``encode_event``) on lane ``index``."""
        del seq
        self.counters["dispatched"] += 1
        item = self._item(frame, token)
        if item is None:
            return
        self._queues[index].append(item)
        self._queued += 1
        self._wakes[index].set()
        if not self._paused and self._queued >= self.high_water:
            self._paused = True
            self.on_pressure(True)

    def _finish(self, item: _Item, outcome: int) -> None:
        self.counters["done" if outcome == DONE else "rejected"] += 1
        try:
            self.on_done(item.token, outcome)
        except Exception:
            log.exception("acknowledging a delivery failed")

    def _item(self, frame: bytes, token: Any) -> _Item | None:
        msg = pipe.decode_to_worker(frame[HEADER_SIZE:])  # the frame without its length
        exchange: str | None
        routing_key: str | None
        if isinstance(msg, pipe.DeliveryFrame):
            exchange, routing_key, body = msg.exchange, msg.routing_key, msg.body
            binding = self.bindings[msg.binding] if msg.binding < len(self.bindings) else None
        elif isinstance(msg, pipe.EventFrame | pipe.NamedEventFrame):
            exchange = routing_key = None
            body, binding = msg.body, None
        else:
            return None
        try:
            doc = jsonc.loads_object(body)
        except BadPayload as exc:
            self.counters["bad_message"] += 1
            log.warning(
                "rejected a message from exchange %r routing key %r (%d bytes): %s",
                exchange,
                routing_key,
                len(body),
                exc,
            )
            self._reject(token)
            return None
        if isinstance(msg, pipe.DeliveryFrame):
            augment_received(
                doc,
                zone=self.zones.get(msg.server_id, ""),
                server_id=msg.server_id,
                now=int(time.time()),
                render=jsonc.render,
            )
            text = jsonc.dumps(doc).encode("utf-8", "surrogatepass")
        else:
            text = body  # connection events keep the C module's literal text
        msg_id = doc.get("Msg-ID")
        names: list[str] | tuple[str, ...]
        if isinstance(msg, pipe.NamedEventFrame):  # kazoo:publish-failed: no fallback
            names = [msg.route]
        else:
            bkey, bsub = binding if binding is not None else (None, None)
            names = candidates(
                doc,
                key=bkey or self.event_key,
                subkey=bsub or self.event_subkey,
                binding_key=bkey,
                binding_subkey=bsub,
            )
        # Every candidate the cfg defines, most specific first: Kamailio runs the first one
        # that exists there (a route inside an #!ifdef branch not taken is listed too).
        route = ROUTE_SEPARATOR.join(n for n in names if n in self.routes)
        if not route:
            self.counters["no_route"] += 1
            if token is None:  # a connection event or late reply: like C, only a debug line
                log.debug("no event route for %s", names[0])
                self._reject(token)
                return None
            log.warning(
                "no event route for the message from exchange %r routing key %r Msg-ID %r "
                "(tried %s); rejected",
                exchange,
                routing_key,
                msg_id,
                names[0],
            )
            self._reject(token)
            return None
        if len(text) > self.bridge.max_event_bytes:
            self.counters["too_large"] += 1
            log.error(
                "rejected a %d-byte event from exchange %r routing key %r Msg-ID %r: over "
                "kamailio.max_event_bytes = %d",
                len(text),
                exchange,
                routing_key,
                msg_id,
                self.bridge.max_event_bytes,
            )
            self._reject(token)
            return None
        headers = [("X-Kazoo-Route", route), ("Content-Type", "application/json")]
        if routing_key is not None:
            headers.append(("X-Kazoo-Routing-Key", routing_key))
        if msg_id is not None:
            headers.append(("X-Kazoo-Msg-ID", jsonc.render(msg_id)))
        return _Item(token, text, headers, exchange, routing_key, msg_id)

    def _reject(self, token: Any) -> None:
        self.counters["rejected"] += 1
        try:
            self.on_done(token, BAD)
        except Exception:
            log.exception("rejecting a delivery failed")

    # -- connections ------------------------------------------------------------------------
    async def _connect(self) -> HttpConnection:
        conn = await HttpConnection.open(self.bridge.host, self.bridge.port, _CONNECT_TIMEOUT)
        if not self.up:
            self.up = True
            log.info("Kamailio's bridge %s is reachable", self.bridge.bridge)
        return conn

    def _down(self, exc: BaseException) -> None:
        if self.up:
            self.up = False
            log.warning("Kamailio's bridge %s is unreachable: %s", self.bridge.bridge, exc)

    async def _lane(self, index: int) -> None:
        """Send lane ``index``'s events in order, up to ``_WINDOW`` at a time on one keep-alive
        connection (pipelined: Kamailio runs them one after the other, so a key's order holds),
        and report each outcome when its answer comes, i.e. after its route returned."""
        queue, wake = self._queues[index], self._wakes[index]
        backoff = _Backoff(*self.reconnect)
        conn: HttpConnection | None = None
        sent: collections.deque[_Item] = collections.deque()  # in flight, oldest first
        try:
            while True:
                if not queue and not sent:
                    wake.clear()
                    await wake.wait()
                    continue
                try:
                    if conn is None or conn.closed:
                        conn = await self._connect()
                        self.counters["reconnects"] += 1
                    while queue and len(sent) < _WINDOW:
                        item = queue.popleft()
                        if item.attempts:
                            self.counters["resends"] += 1
                        conn.send("/kazoo/event", item.headers, item.body)
                        sent.append(item)
                    status, _ = await conn.receive(self.timeout)
                except BridgeDown as exc:
                    # Nothing in flight was answered: all of it goes again, in order.
                    conn = None
                    for item in reversed(sent):
                        item.attempts += 1
                        queue.appendleft(item)
                    sent.clear()
                    self._down(exc)
                    await backoff.sleep()
                    continue
                except TimeoutError:
                    conn = None
                    self.counters["timeouts"] += 1
                    head = sent.popleft()
                    head.attempts += 1
                    log.error(
                        "Kamailio ran the event from exchange %r routing key %r Msg-ID %r for "
                        "more than %.1f s (kamailio.request_timeout_ms); attempt %d",
                        head.exchange,
                        head.routing_key,
                        head.msg_id,
                        self.timeout,
                        head.attempts,
                    )
                    for item in reversed(sent):  # not answered on the closed connection
                        queue.appendleft(item)
                    sent.clear()
                    if head.attempts <= self.max_redeliveries:
                        queue.appendleft(head)
                        continue
                    self.counters["gave_up"] += 1
                    self._outcome(head, 0)
                    continue
                backoff.reset()
                self._outcome(sent.popleft(), status)
        finally:
            for item in reversed(sent):  # unanswered: stop() reports them as not finished
                queue.appendleft(item)
            if conn is not None:
                conn.close()

    def _outcome(self, item: _Item, status: int) -> None:
        """Kamailio answered ``item`` with ``status`` (0: gave up): ack or reject it."""
        self._queued -= 1
        if 200 <= status < 300:
            self._finish(item, DONE)
        else:
            if status == 404:
                self.counters["no_route"] += 1
            log.warning(
                "Kamailio answered %s to the event from exchange %r routing key %r "
                "Msg-ID %r; rejected",
                status or "nothing",
                item.exchange,
                item.routing_key,
                item.msg_id,
            )
            self._finish(item, FAILED)
        if self._paused and self._queued <= self.low_water:
            self._paused = False
            self.on_pressure(False)

    # -- mod-init ---------------------------------------------------------------------------
    def watch_mod_init(
        self, on_subscriptions: Callable[[list[dict[str, Any]]], None]
    ) -> asyncio.Task[Any]:
        """Ask ``/kazoo/mod-init`` now and after every reconnect; ``on_subscriptions`` gets the
        list of ``kazoo_subscribe`` calls (``{"json": text}`` or ``{"args": [4 texts]}``)."""
        return self._spawn(self._mod_init_loop(on_subscriptions), "kamailio-mod-init")

    async def _mod_init_loop(
        self, on_subscriptions: Callable[[list[dict[str, Any]]], None]
    ) -> None:
        backoff = _Backoff(*self.reconnect)
        while True:
            conn: HttpConnection | None = None
            try:
                conn = await self._connect()
                status, body = await conn.request("/kazoo/mod-init", [], b"", self.timeout)
                if status != 200:
                    raise BridgeDown(f"mod-init answered {status}: {body[:200]!r}")
                subs = json.loads(body or b"[]")
                self.counters["mod_inits"] += 1
                backoff.reset()
                on_subscriptions(subs)
                await conn.wait_closed()
                self._down(BridgeDown("the mod-init connection closed (Kamailio restarted?)"))
            except (BridgeDown, TimeoutError, ValueError) as exc:
                self._down(exc)
            finally:
                if conn is not None:
                    conn.close()
            await backoff.sleep()

    # -- async-query answers ----------------------------------------------------------------
    def answer_later(self, outcome: asyncio.Future[str], resume: dict[str, Any]) -> None:
        """When ``outcome`` (the reply's JSON text; an exception means timeout, returned or
        failed) is settled, continue the suspended transaction ``resume`` names into its reply
        or timeout route: ``POST /kazoo/resume`` on one of the resume lanes."""
        outcome.add_done_callback(functools.partial(self._answered, resume))

    def _answered(self, resume: dict[str, Any], outcome: asyncio.Future[str]) -> None:
        exc = outcome.exception() if not outcome.cancelled() else asyncio.CancelledError()
        if exc is None:
            body, route = outcome.result().encode("utf-8", "surrogatepass"), resume["reply_route"]
        else:
            log.info(
                "async query for transaction %s:%s: %s; running %s",
                resume["tindex"],
                resume["tlabel"],
                exc,
                resume["timeout_route"],
            )
            body, route = b"", resume["timeout_route"]
        headers = [
            ("X-Kazoo-TIndex", str(resume["tindex"])),
            ("X-Kazoo-TLabel", str(resume["tlabel"])),
            ("X-Kazoo-Resume-Route", route),
        ]
        self._resumes.put_nowait(_Resume(headers, body, resume))

    async def _resume_lane(self) -> None:
        """Sends resumes on its own keep-alive connection, pipelined up to ``_WINDOW`` (several
        lanes run, so resumes run in parallel Kamailio processes; their order does not
        matter). A resume is tried on up to ``_RESUME_ATTEMPTS`` connections, then left to
        Kamailio's watchdog."""
        conn: HttpConnection | None = None
        todo: collections.deque[_Resume] = collections.deque()  # taken, not sent yet
        sent: collections.deque[_Resume] = collections.deque()  # sent, answer not read yet
        queue = self._resumes
        try:
            while True:
                if not todo and not sent:
                    todo.append(await queue.get())
                while len(todo) + len(sent) < _WINDOW and not queue.empty():
                    todo.append(queue.get_nowait())
                try:
                    if conn is None or conn.closed:
                        conn = await self._connect()
                    while todo:
                        item = todo[0]
                        conn.send("/kazoo/resume", item.headers, item.body)
                        sent.append(todo.popleft())
                    status, _ = await conn.receive(self.timeout)
                except (BridgeDown, TimeoutError) as exc:
                    conn = None
                    self._down(exc)
                    for item in reversed(sent):
                        todo.appendleft(item)
                    sent.clear()
                    for item in list(todo):
                        item.attempts += 1
                        if item.attempts >= _RESUME_ATTEMPTS:
                            todo.remove(item)
                            self._resume_failed(item.resume)
                    await asyncio.sleep(0.05)
                    continue
                item = sent.popleft()
                self.counters["resumes"] += 1
                if status != 200:
                    log.info(
                        "resume of transaction %s:%s answered %d (already continued by "
                        "Kamailio's watchdog?)",
                        item.resume["tindex"],
                        item.resume["tlabel"],
                        status,
                    )
        finally:
            for item in (*sent, *todo):
                self._resume_failed(item.resume)
            if conn is not None:
                conn.close()

    def _resume_failed(self, resume: dict[str, Any]) -> None:
        self.counters["resume_failed"] += 1
        log.error(
            "cannot resume transaction %s:%s in Kamailio; its watchdog will run %s",
            resume["tindex"],
            resume["tlabel"],
            resume["timeout_route"],
        )

    # -- status -------------------------------------------------------------------------------
    @property
    def inflight(self) -> int:
        return self._queued

    def status(self) -> dict[str, Any]:
        return {
            "kamailio": self.bridge.bridge,
            "up": self.up,
            "lanes": [len(q) for q in self._queues],
            "queued": self._queued,
            "paused": self._paused,
            **self.counters,
        }
