"""The worker process: reads deliveries from its pipe, runs event routes, reports outcomes.

Run by ``kazoo_amqp.worker_main`` (the process's composition root) in each worker process, on
one end of a socketpair from ``workers.pool``. It never touches RabbitMQ: ``kz.publish`` and
``kz.query`` go through the daemon's local socket like any other client (via the injected
services), and the manager acks after the outcome when the subscription asks for it.

Rules of the loop:
* a delivery is parsed once (``core.jsonc``), augmented (§6.6), routed (§4.3) and handled;
* a bad body is logged with its identity and reported ``BAD_MESSAGE``, never routed;
* a handler that raises is logged with the message identity and reported ``HANDLER_ERROR``;
* a handler that returns a dict answers the query it handled with it (``Kz.reply``, after any
  ``kz.reply`` calls the handler made); ``None``, ``True``/``False`` and ints (Kamailio-style
  route return codes) are ignored; any other value is a ``UsageError`` (``HANDLER_ERROR``);
* outcomes are written at the end of each batch, and at least every 50 ms during a long batch,
  so the manager can tell a slow handler from a hung one;
* with metrics on (``stats``), the time each delivery took (parse, route, run; from the end of
  the previous frame, so one clock read per delivery, the one the loop makes anyway) is recorded
  by route name and outcome and sent as an ``M`` frame after a batch, at most once per
  ``STATS_EVERY`` s (and within that time after the last batch, so an idle worker's numbers
  still arrive); deliveries that ran no route (bad message, no route) are not recorded;
* with JSON logs, ``core.logctx`` holds the message's identity while a route runs (the text
  format does not show it, so it is not set then);
* EOF on the pipe (the manager is gone) or a stop frame ends the process;
* when the manager is gone (its end of the pipe hung up, seen at most every millisecond
  between deliveries, or a write of outcomes fails) the worker stops at once with one log line:
  the deliveries it still holds are not run, since their acks could no longer reach the broker
  (the broker delivers them again, to the restarted daemon).
"""

from __future__ import annotations

import inspect
import logging
import select
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from kazoo_amqp.core import jsonc, logctx, pipe
from kazoo_amqp.core.config import Settings
from kazoo_amqp.core.framing import FrameDecoder
from kazoo_amqp.core.message import augment_received
from kazoo_amqp.core.route_names import CONSUMER_EVENT, candidates
from kazoo_amqp.core.stats import Histogram, HistogramSet
from kazoo_amqp.errors import BadPayload, KazooError, UsageError
from kazoo_amqp.workers.context import Kz, Services
from kazoo_amqp.workers.router import Router

log = logging.getLogger("kazoo_amqp.worker")

_FLUSH_EVERY = 0.05
#: seconds between two handler-duration reports (``M`` frames) of a busy worker
STATS_EVERY = 1.0
#: Seconds between checks that the manager still holds its end of the pipe.
_HANGUP_CHECK_EVERY = 0.001
_HANGUP = select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0)


class _ManagerGone(Exception):
    """Internal: the manager's end of the pipe is closed."""


def _hung_up(poller: select.poll) -> bool:
    """True when the peer closed its end (readable data may still be buffered)."""
    return any(events & _HANGUP for _, events in poller.poll(0))


class WorkerServices(Services, Protocol):
    """What a worker needs around ``Kz``: the ``Kz`` services plus presence batching.

    ``kazoo_amqp.worker_main`` provides the real one (the daemon's socket and a presentity
    writer); tests provide fakes.
    """

    batching: bool
    current_seq: int

    def flush(self) -> set[int]:
        """Commit the batch's presence writes; return the seqs whose write failed."""

    def discard(self, seq: int) -> None:
        """Forget the presence writes of a delivery whose route failed."""

    def close(self) -> None: ...


class Worker:
    """One worker's dispatch logic, independent of the pipe (tests drive ``handle_*``)."""

    def __init__(
        self,
        *,
        index: int,
        settings: Settings,
        router: Router,
        callback: Callable[[Any], Any] | None,
        services: WorkerServices,
        stats: HistogramSet | None = None,
    ) -> None:
        self.index = index
        #: handler durations by (route, "ok"|"error"); None when metrics are off
        self.stats = stats
        self._stats_sent = time.monotonic()
        #: when ``handle_frames`` last asked the poller whether the manager hung up
        self._hangup_checked = 0.0
        self._stats_dirty = False
        #: route name -> (ok, error) histograms of ``stats`` (the objects survive a drain)
        self._hists: dict[str, tuple[Histogram, Histogram]] = {}
        #: the route run by the last handled frame, None when none ran
        self.last_route: str | None = None
        self._identity = settings.log_format == "json"
        self.settings = settings
        self.router = router
        self.callback = callback
        self.services = services
        self.bindings: list[tuple[str | None, str | None]] = []
        self.zones: dict[int, str] = {}
        self.default_key = settings.amqp_consumer_event_key
        self.default_subkey = settings.amqp_consumer_event_subkey
        self.counters = {o.name.lower(): 0 for o in pipe.Outcome}
        self._loop: Any = None  # an asyncio loop, created for the first async route
        #: the route that ran for the last delivery or event (None: no route) and what it
        #: raised (None: nothing); read by ``kazoo_amqp.testing``
        self.last_route: str | None = None
        self.last_error: BaseException | None = None

    # -- one message ------------------------------------------------------------------
    def handle_delivery(self, d: pipe.DeliveryFrame, now: int) -> int:
        self.services.current_seq = d.seq
        self.last_route = None
        try:
            doc = jsonc.loads_object(d.body)
        except BadPayload as exc:
            log.warning(
                "worker %d: dropped message from exchange %r routing key %r (%d bytes): %s",
                self.index,
                d.exchange,
                d.routing_key,
                len(d.body),
                exc,
            )
            return self._count(pipe.Outcome.BAD_MESSAGE)
        augment_received(
            doc,
            zone=self.zones.get(d.server_id, ""),
            server_id=d.server_id,
            now=now,
            render=jsonc.render,
        )
        if d.binding < len(self.bindings):
            bkey, bsub = self.bindings[d.binding]
        else:
            bkey = bsub = None
        return self._run(doc, d.routing_key, d.exchange, d.redelivered, bkey, bsub)

    def handle_event(self, e: pipe.EventFrame | pipe.NamedEventFrame) -> int:
        self.services.current_seq = e.seq
        self.last_route = None
        try:
            doc = jsonc.loads_object(e.body)
        except BadPayload as exc:  # pragma: no cover - we build these ourselves
            log.error("worker %d: bad synthetic event: %s", self.index, exc)
            return self._count(pipe.Outcome.BAD_MESSAGE)
        route = e.route if isinstance(e, pipe.NamedEventFrame) else None
        return self._run(doc, None, None, False, None, None, body=e.body.decode(), route=route)

    def _run(
        self,
        doc: dict[str, Any],
        routing_key: str | None,
        exchange: str | None,
        redelivered: bool,
        binding_key: str | None,
        binding_subkey: str | None,
        body: str | None = None,
        route: str | None = None,
    ) -> int:
        self.last_route = None
        self.last_error = None
        if self.callback is not None:
            name, handler = route or CONSUMER_EVENT, self.callback
        elif route is not None:
            named = self.router.get(route)
            if named is None:
                return self._count(pipe.Outcome.NO_ROUTE)
            name, handler = route, named
        else:
            names = candidates(
                doc,
                key=binding_key or self.default_key,
                subkey=binding_subkey or self.default_subkey,
                binding_key=binding_key,
                binding_subkey=binding_subkey,
            )
            hit = self.router.first(names)
            if hit is None:
                log.debug("worker %d: kazoo:consumer-event not found for %s", self.index, names[0])
                return self._count(pipe.Outcome.NO_ROUTE)
            name, handler = hit
        self.last_route = name
        kz = Kz(
            self.services,
            payload=doc,
            routing_key=routing_key,
            exchange=exchange,
            event_name=name,
            redelivered=redelivered,
            body=body,
        )
        identity = self._identity
        if identity:
            logctx.set_message(
                exchange=exchange,
                routing_key=routing_key,
                payload=doc,
                route=name,
                worker=self.index,
            )
        self.last_route = name
        try:
            result = handler(kz)
            if inspect.isawaitable(result):
                result = self._event_loop().run_until_complete(result)
            if result is not None:
                _returned(kz, name, result)
        except Exception as exc:
            self.last_error = exc
            self.services.discard(self.services.current_seq)
            level = logging.WARNING if isinstance(exc, KazooError) else logging.ERROR
            log.log(
                level,
                "worker %d: route %s raised %s: %s (exchange %r, routing key %r, Msg-ID %r)",
                self.index,
                name,
                type(exc).__name__,
                exc,
                exchange,
                routing_key,
                doc.get("Msg-ID"),
                exc_info=not isinstance(exc, KazooError),
            )
            return self._count(pipe.Outcome.HANDLER_ERROR)
        finally:
            if identity:
                logctx.clear()
        return self._count(pipe.Outcome.DONE)

    def _count(self, outcome: pipe.Outcome) -> int:
        self.counters[outcome.name.lower()] += 1
        return int(outcome)

    def _event_loop(self) -> Any:
        if self._loop is None:
            import asyncio  # only workers with async routes pay for asyncio

            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self.services.loop = self._loop
        return self._loop

    # -- the pipe loop ----------------------------------------------------------------
    def settle(self, outcomes: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Commit the batch's presence writes; deliveries whose write failed become
        ``HANDLER_ERROR``. Returns the outcomes to report."""
        failed = self.services.flush()
        if failed:
            error = int(pipe.Outcome.HANDLER_ERROR)
            outcomes = [(seq, error if seq in failed else code) for seq, code in outcomes]
        return outcomes

    def _send(self, sock: socket.socket, outcomes: list[tuple[int, int]]) -> None:
        frame = pipe.encode_outcomes(self.settle(outcomes))
        if self._stats_dirty and time.monotonic() - self._stats_sent >= STATS_EVERY:
            frame += self._stats_frame()
        try:
            sock.sendall(frame)
        except OSError as exc:
            raise _ManagerGone(str(exc)) from None

    def _stats_frame(self) -> bytes:
        assert self.stats is not None
        self._stats_sent = time.monotonic()
        self._stats_dirty = False
        rows = [(lab[0], lab[1], counts, total) for lab, counts, total in self.stats.drain()]
        return pipe.encode_stats(rows)

    def _recv_timeout_ms(self) -> int:
        """Milliseconds until the pending handler stats are due."""
        return max(0, int((STATS_EVERY - (time.monotonic() - self._stats_sent)) * 1000)) + 1

    def _observe(self, route: str, code: int, seconds: float) -> None:
        hists = self._hists.get(route)
        if hists is None:
            assert self.stats is not None
            hists = self._hists[route] = (
                self.stats.get((route, "ok")),
                self.stats.get((route, "error")),
            )
        hists[code != 0].observe(seconds)  # DONE is 0, HANDLER_ERROR 1
        self._stats_dirty = True

    def handle_frames(
        self, frames: list[bytes], sock: socket.socket, poller: select.poll | None = None
    ) -> bool:
        """Handle one read's frames and write their outcomes; False after a stop frame.

        With ``poller`` (``sock`` registered for hang-ups), raises ``_ManagerGone`` before running
        a frame once the manager's end is closed (checked at most every millisecond).
        """
        record = self.stats is not None
        outcomes: list[tuple[int, int]] = []
        mark = last_flush = time.monotonic()
        now = int(time.time())
        for frame in frames:
            if poller is not None and mark - self._hangup_checked > _HANGUP_CHECK_EVERY:
                self._hangup_checked = mark
                if _hung_up(poller):
                    raise _ManagerGone("its end of the pipe closed")
            msg = pipe.decode_to_worker(frame)
            if isinstance(msg, pipe.DeliveryFrame):
                code = self.handle_delivery(msg, now)
            elif isinstance(msg, pipe.EventFrame | pipe.NamedEventFrame):
                code = self.handle_event(msg)
            elif isinstance(msg, pipe.InitFrame):
                self.bindings, self.zones = msg.bindings, msg.zones
                continue
            else:
                if outcomes:
                    self._send(sock, outcomes)
                return False
            outcomes.append((msg.seq, code))
            mono = time.monotonic()
            if record and self.last_route is not None:
                self._observe(self.last_route, code, mono - mark)
            mark = mono
            if mono - last_flush > _FLUSH_EVERY:
                self._send(sock, outcomes)
                outcomes = []
                mark = last_flush = time.monotonic()
                now = int(time.time())
        if outcomes:
            self._send(sock, outcomes)
        return True

    def serve(self, sock: socket.socket) -> None:
        """Run deliveries from ``sock`` until a stop frame, EOF, or the manager is gone."""
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN | getattr(select, "POLLRDHUP", 0))
        try:
            self._serve(sock, poller)
        except _ManagerGone as gone:
            log.warning(
                "worker %d: the manager is gone (%s); exiting without running the deliveries "
                "still buffered: they were not acked and the broker delivers them again",
                self.index,
                gone,
            )

    def _serve(self, sock: socket.socket, poller: select.poll) -> None:
        decoder = FrameDecoder()
        self.services.batching = True
        self._hangup_checked = time.monotonic()
        while True:
            try:
                # With handler stats pending, wait no longer than they are due (one poll per
                # batch, only with metrics on).
                if self._stats_dirty and not poller.poll(self._recv_timeout_ms()):
                    sock.sendall(self._stats_frame())
                    continue
                data = sock.recv(1 << 18)
            except InterruptedError:  # pragma: no cover
                continue
            except OSError:
                return
            if not data or not self.handle_frames(decoder.feed(data), sock, poller):
                return


def _returned(kz: Kz, route: str, result: Any) -> None:
    """Carry out a handler's return value (see the module docstring)."""
    if isinstance(result, Mapping):
        kz.reply(result)
    elif not isinstance(result, bool | int):
        raise UsageError(
            f"route {route} returned a {type(result).__name__}; return a dict to answer the "
            "query being handled, or nothing"
        )
