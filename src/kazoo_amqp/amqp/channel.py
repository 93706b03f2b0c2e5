"""One AMQP channel: RPCs, consuming with coalesced acks, publishing with confirms.

Frames are built by :mod:`kazoo_amqp.amqp.codec` and written through the owning
:class:`~kazoo_amqp.amqp.connection.Connection`'s write coalescer; inbound events reach the
channel from the connection's frame sink.

Every future this module hands out (RPC replies, publisher confirms) is owned by its channel and
is failed with a typed error when the channel or connection goes away (see :meth:`Channel.publish`
for which error means what). Nothing is left hanging.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import re
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pamqp import commands as spec

from kazoo_amqp.amqp import codec
from kazoo_amqp.amqp.codec import (
    ACK_FRAME,
    CONTENT_TYPE_JSON,
    FRAME_BODY,
    FRAME_END,
    FRAME_END_B,
    FRAME_HEADER,
    P_CONTENT_TYPE,
    PLAIN_CONTENT,
    PLAIN_HDR_SIZE,
    Method,
)
from kazoo_amqp.errors import (
    BrokerRefused,
    ChannelClosedRetry,
    NotConnected,
    PublishFailed,
    PublishNacked,
    UsageError,
)

if TYPE_CHECKING:
    from kazoo_amqp.amqp.connection import Connection

__all__ = ["Channel", "ConfirmCallback", "Delivery", "Returned"]

log = logging.getLogger("kazoo_amqp.amqp")

_M = TypeVar("_M", bound=Method)

_plain_content = PLAIN_CONTENT.pack
_append_with_properties = codec.append_publish_with_properties
_PUBLISH_CACHE_MAX = 4096
_EXCHANGE_RUNS_MAX = 1024

# RabbitMQ names the exchange of a refused publish in the reply text, e.g.
# "NOT_FOUND - no exchange 'x' in vhost '/'" or "ACCESS_REFUSED - access to exchange 'x' in ..."
_EXCHANGE_IN_TEXT = re.compile(r"exchange '((?:[^']|'(?! in vhost))*)' in vhost")


# --------------------------------------------------------------------------- public records


@dataclass(slots=True)
class Delivery:
    """One ``basic.deliver``: built per message, so it only holds what the daemon reads."""

    channel: Channel
    consumer_tag: str
    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str
    body: bytes
    headers: dict[str, Any] | None
    message_id: str | None
    correlation_id: str | None


@dataclass(slots=True)
class Returned:
    """A ``basic.return``: a mandatory message the broker could not route."""

    reply_code: int
    reply_text: str
    exchange: str
    routing_key: str
    body: bytes
    message_id: str | None


class _Settleable(Protocol):
    """What the confirm bookkeeping needs of a future (or of a :class:`ConfirmCallback`)."""

    def done(self) -> bool: ...
    def set_result(self, result: None, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...


class ConfirmCallback:
    """A publisher confirm delivered to a plain callback instead of a future.

    It quacks like the part of a future the confirm bookkeeping uses (``done``, ``set_result``,
    ``set_exception``, ``exception``), so acks, nacks, returns and connection loss all reach it,
    but without creating a future and scheduling its callbacks for every message.
    ``callback(None)`` means confirmed; ``callback(exc)`` carries the failure. It runs inside
    the connection's data handling, so it must be quick and must not raise.
    """

    __slots__ = ("_callback", "_done")

    def __init__(self, callback: Callable[[BaseException | None], None]) -> None:
        self._callback = callback
        self._done = False

    def done(self) -> bool:
        return self._done

    def cancelled(self) -> bool:
        return False

    def exception(self) -> None:
        return None

    def set_result(self, _: object) -> None:
        self._finish(None)

    def set_exception(self, exc: BaseException) -> None:
        self._finish(exc)

    def _finish(self, exc: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._callback(exc)
        except Exception:
            log.exception("publish confirm callback raised")


def clone_error(exc: BaseException) -> BaseException:
    """A fresh copy of a close reason, so futures do not share one traceback."""
    if isinstance(exc, BrokerRefused):
        return BrokerRefused(str(exc), reply_code=exc.reply_code, exchange=exc.exchange)
    try:
        return type(exc)(str(exc))
    except TypeError:  # pragma: no cover - our errors all take one message
        return NotConnected(str(exc))


def fail_quietly(fut: asyncio.Future[Any] | _Settleable, exc: BaseException) -> None:
    """Fail a future that its caller may have dropped, without 'never retrieved' log noise."""
    if not fut.done():
        fut.set_exception(exc)
        if isinstance(fut, asyncio.Future):
            fut.exception()  # marks it retrieved; an awaiting caller still gets the exception


class _Rpc:
    __slots__ = ("expect", "future", "on_reply")

    def __init__(
        self,
        future: asyncio.Future[Any],
        expect: type[Method] | tuple[type[Method], ...],
        on_reply: Callable[[Any], None] | None,
    ) -> None:
        self.future = future
        self.expect = expect
        self.on_reply = on_reply


class Channel:
    """One AMQP channel of a :class:`Connection`. Create with ``await conn.channel()``."""

    number: int
    is_open: bool
    closed: asyncio.Future[BaseException | None]

    def __init__(
        self,
        conn: Connection,
        number: int,
        on_return: Callable[[Returned], None] | None,
    ) -> None:
        """Use :meth:`Connection.channel`."""
        self.number = number
        self.is_open = False
        self.closed = conn._loop.create_future()
        self.on_return = on_return
        #: called with the consumer tag when the broker cancels a consumer (queue deleted)
        self.on_cancel: Callable[[str], None] | None = None
        #: False while the broker has paused this channel's publishing with channel.flow
        #: (answered with flow-ok here; publishing is not stopped here: the owner decides)
        self.flow_active = True
        #: owner-set: called with the new state when channel.flow changes it
        self.on_flow: Callable[[bool], None] | None = None
        self._conn = conn
        self._loop = conn._loop
        self._closing = False
        self._close_reason: BaseException | None = None
        self._rpcs: deque[_Rpc] = deque()
        # raw consumer tag -> (tag, callback)
        self._consumers: dict[bytes, tuple[str, Callable[[Delivery], None]]] = {}
        # consumer acks: plain acks of one loop iteration are batched in _ack_batch; a run of
        # consecutive tags right above _ack_floor (every tag <= floor is settled by us) goes out
        # as one multiple=True ack. Only while the channel has no no_ack consumer, whose
        # deliveries also use up delivery tags.
        self._ack_batch: list[int] = []
        self._ack_floor = 0
        self._settled_above: set[int] = set()
        self._coalesce_acks = True
        # publisher confirms
        self._confirm = False
        self._next_tag = 1
        self._low = 1  # every tag below this is settled
        self._pending: dict[int, _Settleable] = {}
        self._mandatory: dict[int, tuple[str, str, bytes]] = {}
        # (first delivery tag, exchange) each time the exchange of publishes changes: which
        # pending publishes a broker channel.close naming an exchange refers to
        self._exchange_runs: list[tuple[int, str]] = []
        self._last_exchange: str | None = None
        # outbound publish frames cache
        self._publish_cache: dict[tuple[str, str, bool], bytes] = {}
        self._frame_max = conn.frame_max
        self._body_max = conn.frame_max - 8

    @property
    def writable(self) -> bool:
        """Open, not paused by channel.flow, and its connection not blocked by the broker.

        A publisher that honours back-pressure writes only while this is true; ``publish``
        itself does not check flow or blocked (it only refuses a closed channel).
        """
        return (
            self.is_open
            and not self._closing
            and self.flow_active
            and self._conn.blocked is None
            and self._conn.is_open
        )

    # ------------------------------------------------------------------ RPC

    def _check_open(self) -> None:
        if not self.is_open or self._closing:
            reason = self._close_reason
            detail = f": {reason}" if reason is not None else ""
            raise NotConnected(f"channel {self.number} is closed{detail}")

    async def _rpc(
        self,
        make: Callable[[], Method],
        expect: type[_M],
        on_reply: Callable[[Any], None] | None = None,
    ) -> _M:
        """Send a synchronous method (built by ``make``) and wait for its reply.

        One RPC at a time per channel: callers queue on the previous reply. If a caller is
        cancelled, its reply is still matched (and dropped) in order. Bad arguments (a name
        over 255 bytes, a value pamqp cannot encode) become ``UsageError``.
        """
        while self._rpcs:
            last = self._rpcs[-1].future
            if last.done():
                break  # its caller gave up; its reply is still matched (and dropped) in order
            await asyncio.wait((last,))
        self._conn._check_open()
        if self._closing:
            self._check_open()
        try:
            raw = codec.encode_method(self.number, make())
        except (ValueError, TypeError) as exc:
            what = expect.name.removesuffix("Ok").lower()
            raise UsageError(f"{what}: {exc}") from None
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._rpcs.append(_Rpc(fut, expect, on_reply))
        self._conn._outbox().append(raw)
        return await fut  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ declarations

    async def exchange_declare(
        self,
        exchange: str,
        type: str = "direct",
        *,
        passive: bool = False,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        await self._rpc(
            lambda: codec.build_method(
                spec.Exchange.Declare,
                exchange=exchange,
                exchange_type=type,
                passive=passive,
                durable=durable,
                auto_delete=auto_delete,
                internal=internal,
                arguments=dict(arguments) if arguments else None,
            ),
            spec.Exchange.DeclareOk,
        )

    async def exchange_bind(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        await self._rpc(
            lambda: codec.build_method(
                spec.Exchange.Bind,
                destination=destination,
                source=source,
                routing_key=routing_key,
                arguments=dict(arguments) if arguments else None,
            ),
            spec.Exchange.BindOk,
        )

    async def exchange_unbind(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        await self._rpc(
            lambda: codec.build_method(
                spec.Exchange.Unbind,
                destination=destination,
                source=source,
                routing_key=routing_key,
                arguments=dict(arguments) if arguments else None,
            ),
            spec.Exchange.UnbindOk,
        )

    async def exchange_delete(self, exchange: str) -> None:
        await self._rpc(
            lambda: codec.build_method(spec.Exchange.Delete, exchange=exchange),
            spec.Exchange.DeleteOk,
        )

    async def queue_declare(
        self,
        queue: str = "",
        *,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> tuple[str, int, int]:
        """Declare a queue; returns (name, message_count, consumer_count)."""
        ok = await self._rpc(
            lambda: codec.build_method(
                spec.Queue.Declare,
                queue=queue,
                passive=passive,
                durable=durable,
                exclusive=exclusive,
                auto_delete=auto_delete,
                arguments=dict(arguments) if arguments else None,
            ),
            spec.Queue.DeclareOk,
        )
        return str(ok.queue), int(ok.message_count or 0), int(ok.consumer_count or 0)

    async def queue_bind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        await self._rpc(
            lambda: codec.build_method(
                spec.Queue.Bind,
                queue=queue,
                exchange=exchange,
                routing_key=routing_key,
                arguments=dict(arguments) if arguments else None,
            ),
            spec.Queue.BindOk,
        )

    async def queue_unbind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        await self._rpc(
            lambda: codec.build_method(
                spec.Queue.Unbind,
                queue=queue,
                exchange=exchange,
                routing_key=routing_key,
                arguments=dict(arguments) if arguments else None,
            ),
            spec.Queue.UnbindOk,
        )

    async def queue_delete(self, queue: str) -> None:
        await self._rpc(
            lambda: codec.build_method(spec.Queue.Delete, queue=queue), spec.Queue.DeleteOk
        )

    async def queue_purge(self, queue: str) -> int:
        """Remove every ready message; returns how many were removed."""
        ok = await self._rpc(
            lambda: codec.build_method(spec.Queue.Purge, queue=queue), spec.Queue.PurgeOk
        )
        return int(ok.message_count or 0)

    # ------------------------------------------------------------------ consuming

    async def basic_qos(self, prefetch_count: int) -> None:
        """Limit unacked deliveries per consumer started after this call (RabbitMQ semantics)."""
        await self._rpc(lambda: spec.Basic.Qos(prefetch_count=prefetch_count), spec.Basic.QosOk)

    async def basic_consume(
        self,
        queue: str,
        on_delivery: Callable[[Delivery], None],
        *,
        no_ack: bool,
        consumer_tag: str = "",
        exclusive: bool = False,
    ) -> str:
        """Start a consumer; ``on_delivery`` runs synchronously per message. Returns the tag."""

        def register(ok: spec.Basic.ConsumeOk) -> None:
            tag = str(ok.consumer_tag)
            self._consumers[tag.encode("utf-8")] = (tag, on_delivery)

        if no_ack:
            self._stop_coalescing()

        ok = await self._rpc(
            lambda: codec.build_method(
                spec.Basic.Consume,
                queue=queue,
                consumer_tag=consumer_tag,
                no_ack=no_ack,
                exclusive=exclusive,
            ),
            spec.Basic.ConsumeOk,
            register,
        )
        return str(ok.consumer_tag)

    async def basic_cancel(self, consumer_tag: str) -> None:
        """Stop a consumer. Deliveries already on the wire for it are dropped."""
        await self._rpc(lambda: spec.Basic.Cancel(consumer_tag=consumer_tag), spec.Basic.CancelOk)
        self._consumers.pop(consumer_tag.encode("utf-8"), None)

    def ack(self, delivery_tag: int, multiple: bool = False) -> None:
        """Acknowledge; buffered and written with everything else of this loop iteration.

        Acks of consecutive delivery tags written in one iteration become one ``multiple=True``
        ack when that acks exactly the same messages. On a closed channel this does nothing:
        the broker has already requeued the message.
        """
        if not self.is_open:
            return
        if self._coalesce_acks and not multiple:
            batch = self._ack_batch
            if not batch:
                conn = self._conn
                conn._ack_channels.append(self)
                if not conn._flush_scheduled:
                    conn._outbox()
            batch.append(delivery_tag)
            return
        self._write_settle(80, delivery_tag, 1 if multiple else 0, multiple)

    def nack(self, delivery_tag: int, *, requeue: bool = True, multiple: bool = False) -> None:
        """Negative acknowledge (RabbitMQ extension); no-op on a closed channel."""
        if not self.is_open:
            return
        bits = (1 if multiple else 0) | (2 if requeue else 0)
        self._write_settle(120, delivery_tag, bits, multiple)

    def reject(self, delivery_tag: int, *, requeue: bool) -> None:
        """Reject one delivery; no-op on a closed channel."""
        if not self.is_open:
            return
        self._write_settle(90, delivery_tag, 1 if requeue else 0, False)

    def _write_settle(self, method_id: int, tag: int, bits: int, multiple: bool) -> None:
        """Write a basic.ack/nack/reject now (after the acks batched before it)."""
        if self._ack_batch:
            self._emit_acks()
        if self._coalesce_acks:
            self._settle_tag(tag, multiple)
        self._conn._outbox().append(
            ACK_FRAME.pack(1, self.number, 13, 60, method_id, tag, bits, FRAME_END)
        )

    def _settle_tag(self, tag: int, multiple: bool) -> None:
        """Record that ``tag`` (or every tag up to it) is settled, advancing the floor."""
        above = self._settled_above
        if multiple:
            if tag > self._ack_floor:
                self._ack_floor = tag
                if above:
                    self._settled_above = {t for t in above if t > tag}
        elif tag > self._ack_floor:
            above.add(tag)
        floor = self._ack_floor
        while above and floor + 1 in above:
            floor += 1
            above.remove(floor)
        self._ack_floor = floor
        if len(above) > 65536:  # a tag that is never settled: stop tracking
            self._stop_coalescing()

    def _stop_coalescing(self) -> None:
        if self._ack_batch:
            self._emit_acks()
        self._coalesce_acks = False
        self._settled_above = set()

    def _emit_acks(self) -> None:
        """Turn the batched plain acks into frames: runs right above the floor become one."""
        tags = self._ack_batch
        if not tags:
            return
        self._ack_batch = []
        if not self.is_open:
            return
        pack = ACK_FRAME.pack
        number = self.number
        out = self._conn._out
        above = self._settled_above
        floor = self._ack_floor
        run = 0  # batched tags in the pending run
        first = last = 0  # first and last batched tag of the run
        for tag in tags:
            if tag == floor + 1:
                if not run:
                    first = tag
                run += 1
                last = floor = tag
                while above and floor + 1 in above:  # acked one by one before
                    floor += 1
                    above.remove(floor)
                continue
            if run:
                # A multiple ack names the run's last *batched* tag: never one the broker no
                # longer holds (that is a 406 PRECONDITION_FAILED closing the channel).
                if run == 1:
                    out.append(pack(1, number, 13, 60, 80, first, 0, FRAME_END))
                else:
                    out.append(pack(1, number, 13, 60, 80, last, 1, FRAME_END))
                run = 0
            out.append(pack(1, number, 13, 60, 80, tag, 0, FRAME_END))
            if tag > floor:
                above.add(tag)
        if run:
            if run == 1:
                out.append(pack(1, number, 13, 60, 80, first, 0, FRAME_END))
            else:
                out.append(pack(1, number, 13, 60, 80, last, 1, FRAME_END))
        self._ack_floor = floor
        if len(above) > 65536:
            self._stop_coalescing()

    # ------------------------------------------------------------------ publishing

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        headers: Sequence[tuple[str, str]] | Mapping[str, Any] | None = None,
        mandatory: bool = False,
        message_id: str | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        persistent: bool = False,
        on_confirm: Callable[[BaseException | None], None] | None = None,
    ) -> asyncio.Future[None] | None:
        """Queue one message for writing in this loop iteration (no await).

        Content type is always ``application/json``. Raises ``UsageError`` at once (nothing
        is sent) for a name or property over AMQP's limits, or properties whose content header
        does not fit in one frame of the negotiated ``frame_max``; ``NotConnected`` on a closed
        channel.

        With confirms on, returns a future that resolves on ``basic.ack`` and fails with

        * ``PublishNacked`` on ``basic.nack``, ``PublishFailed`` on a return (mandatory);
        * ``BrokerRefused`` (``reply_code``, ``exchange``) when the broker closes the channel
          because of this publish (e.g. 404: its exchange does not exist);
        * ``ChannelClosedRetry`` when the broker closes the channel because of something else
          (another publish, an RPC): this one was not refused, send it again;
        * ``NotConnected`` (or its subclasses ``HeartbeatTimeout``, ``FrameError``) when the
          connection is lost or the channel is closed by the client.

        With ``on_confirm``, that callback gets the same outcome (None or the error) and the
        returned object is a ``ConfirmCallback`` (``done()`` tells whether it has fired): the
        cheap form for high rates.
        """
        if not self.is_open or self._closing:
            self._check_open()
        method = self._publish_cache.get((exchange, routing_key, mandatory))
        if method is None:
            method = self._publish_frame(exchange, routing_key, mandatory)
        conn = self._conn
        n = len(body)
        if (
            headers is None
            and message_id is None
            and correlation_id is None
            and reply_to is None
            and not persistent
            and 0 < n <= self._body_max
        ):
            # the common publish, packed right here (codec.PLAIN_CONTENT's layout): a call
            # into the codec per message costs ~10 % of the publish rate
            out = conn._out if conn._flush_scheduled else conn._outbox()
            out.append(method)
            number = self.number
            out.append(_plain_content(FRAME_HEADER, number, PLAIN_HDR_SIZE, 60, 0, n,
                                      P_CONTENT_TYPE, CONTENT_TYPE_JSON, FRAME_END,
                                      FRAME_BODY, number, n))  # fmt: skip
            out.append(body)
            out.append(FRAME_END_B)
        else:
            _append_with_properties(
                conn._out if conn._flush_scheduled else conn._outbox(),
                self.number, method, body, self._frame_max,
                headers, message_id, correlation_id, reply_to, persistent,
            )  # fmt: skip
        if not self._confirm:
            return None
        tag = self._next_tag
        self._next_tag = tag + 1
        if exchange != self._last_exchange:
            self._note_exchange(tag, exchange)
        if mandatory:
            self._mandatory[tag] = (exchange, routing_key, body)
        if on_confirm is not None:
            confirm = ConfirmCallback(on_confirm)
            self._pending[tag] = confirm
            return confirm  # type: ignore[return-value]
        fut: asyncio.Future[None] = self._loop.create_future()
        self._pending[tag] = fut
        return fut

    def _publish_frame(self, exchange: str, routing_key: str, mandatory: bool) -> bytes:
        raw = codec.publish_method_frame(self.number, exchange, routing_key, mandatory)
        cache = self._publish_cache
        if len(cache) >= _PUBLISH_CACHE_MAX:
            cache.clear()
        cache[(exchange, routing_key, mandatory)] = raw
        return raw

    def _note_exchange(self, tag: int, exchange: str) -> None:
        """Remember that publishes from ``tag`` on go to ``exchange`` (until the next change)."""
        self._last_exchange = exchange
        runs = self._exchange_runs
        if len(runs) >= _EXCHANGE_RUNS_MAX:
            # forget the runs that end below the lowest unsettled tag
            low = self._low
            keep = 0
            while keep + 1 < len(runs) and runs[keep + 1][0] <= low:
                keep += 1
            del runs[:keep]
        runs.append((tag, exchange))

    def _exchange_of(self, tag: int) -> str | None:
        runs = self._exchange_runs
        i = bisect.bisect_right(runs, tag, key=lambda run: run[0]) - 1
        return runs[i][1] if i >= 0 else None

    def _on_confirm(self, tag: int, multiple: bool, ok: bool) -> None:
        pending = self._pending
        mandatory = self._mandatory
        if multiple:
            low = self._low
            if tag < low:
                return
            for t in range(low, tag + 1):
                fut = pending.pop(t, None)
                if fut is not None:
                    self._settle(fut, t, ok)
            if mandatory:
                for t in range(low, tag + 1):
                    mandatory.pop(t, None)
            self._low = tag + 1
        else:
            fut = pending.pop(tag, None)
            if fut is not None:
                self._settle(fut, tag, ok)
            if mandatory:
                mandatory.pop(tag, None)
            if tag == self._low:
                low = tag + 1
                nxt = self._next_tag
                while low < nxt and low not in pending:
                    low += 1
                self._low = low

    def _settle(self, fut: _Settleable, tag: int, ok: bool) -> None:
        if fut.done():
            return
        if ok:
            fut.set_result(None)
        else:
            exchange = self._exchange_of(tag)
            fut.set_exception(
                PublishNacked(
                    f"RabbitMQ refused the message to exchange {exchange!r} (basic.nack, "
                    f"delivery tag {tag}): a queue rejected it (x-overflow reject-publish at "
                    "its length limit) or the broker could not take responsibility for it"
                )
            )

    def _on_returned(self, ret: Returned) -> None:
        if self._confirm and self._mandatory:
            # Returns arrive in publish order and before the message's ack; the earliest pending
            # mandatory publish with the same exchange, routing key and body is the one.
            found = None
            for tag, (ex, rk, body) in self._mandatory.items():
                if ex == ret.exchange and rk == ret.routing_key and body == ret.body:
                    found = tag
                    break
            if found is not None:
                del self._mandatory[found]
                fut = self._pending.pop(found, None)
                if fut is not None and not fut.done():
                    fut.set_exception(
                        PublishFailed(
                            f"no queue bound to exchange {ret.exchange!r} with routing key "
                            f"{ret.routing_key!r} (returned {ret.reply_code} {ret.reply_text})"
                        )
                    )
                if found == self._low:
                    self._on_confirm_advance()
        if self.on_return is not None:
            try:
                self.on_return(ret)
            except Exception:
                log.exception("on_return callback raised on channel %d", self.number)
        elif not self._confirm:
            log.warning(
                "message to exchange %r with routing key %r returned: %d %s",
                ret.exchange, ret.routing_key, ret.reply_code, ret.reply_text,
            )  # fmt: skip

    def _on_confirm_advance(self) -> None:
        low, nxt, pending = self._low, self._next_tag, self._pending
        while low < nxt and low not in pending:
            low += 1
        self._low = low

    # ------------------------------------------------------------------ inbound

    def _on_method(self, method: Method) -> None:
        if isinstance(method, spec.Channel.Close):
            self._on_broker_close(method)
            return
        if isinstance(method, spec.Channel.CloseOk):
            self._terminate(None, NotConnected(f"channel {self.number} was closed by the client"))
            return
        if self._closing:
            return  # after channel.close, everything but close/close-ok is discarded
        if isinstance(method, spec.Basic.Cancel):
            tag = str(method.consumer_tag)
            self._consumers.pop(tag.encode("utf-8"), None)
            if not method.nowait:  # RabbitMQ sends nowait=True; answer anyone else
                self._conn._write_method(self.number, spec.Basic.CancelOk(consumer_tag=tag))
            log.info("RabbitMQ cancelled consumer %r on channel %d", tag, self.number)
            if self.on_cancel is not None:
                try:
                    self.on_cancel(tag)
                except Exception:
                    log.exception("on_cancel callback raised on channel %d", self.number)
            return
        if isinstance(method, spec.Channel.Flow):
            active = bool(method.active)
            self._conn._write_method(self.number, spec.Channel.FlowOk(active=active))
            if active != self.flow_active:
                self.flow_active = active
                log.warning(
                    "RabbitMQ %s publishing on channel %d (channel.flow)",
                    "resumed" if active else "paused", self.number,
                )  # fmt: skip
                if self.on_flow is not None:
                    try:
                        self.on_flow(active)
                    except Exception:
                        log.exception("on_flow callback raised on channel %d", self.number)
            return
        rpcs = self._rpcs
        if rpcs and isinstance(method, rpcs[0].expect):
            rpc = rpcs.popleft()
            if rpc.on_reply is not None:
                rpc.on_reply(method)
            if not rpc.future.done():
                rpc.future.set_result(method)
            return
        log.warning("unexpected %s on channel %d ignored", method.name, self.number)

    def _on_broker_close(self, close: spec.Channel.Close) -> None:
        """The broker closed the channel: fail what it names, send the rest back for retry.

        When a publish caused the close and RabbitMQ's reply text names its exchange (404 no
        exchange, 403 access refused), the unconfirmed publishes to that exchange fail with
        ``BrokerRefused`` (``reply_code``, ``exchange``); every other unconfirmed publish fails
        with ``ChannelClosedRetry``: it was not refused and goes out again on a new channel.
        A close that names no exchange (an RPC's 406, a message over the broker's size limit)
        sends every unconfirmed publish back for retry; the publisher's deadline bounds that.
        Pending RPCs fail with ``BrokerRefused``.
        """
        code = int(close.reply_code or 0)
        text = str(close.reply_text or "")
        during = codec.method_name(close.class_id, close.method_id)
        suffix = f" (after {during})" if during else ""
        err = BrokerRefused(
            f"RabbitMQ closed channel {self.number}: {code} {text}{suffix}", reply_code=code
        )
        self._conn._write_method(self.number, spec.Channel.CloseOk())
        exchange: str | None = None
        if (close.class_id, close.method_id) == (60, 40):  # basic.publish
            named = _EXCHANGE_IN_TEXT.search(text)
            if named is not None:
                exchange = named.group(1)
        pending, self._pending = self._pending, {}
        if pending:
            retry = (
                f"RabbitMQ closed channel {self.number} ({code} {text}{suffix}) for another "
                "publish; this one was not refused and can be sent again"
            )
            refused = 0
            for tag, fut in pending.items():
                if exchange is not None and self._exchange_of(tag) == exchange:
                    refused += 1
                    fail_quietly(
                        fut,
                        BrokerRefused(
                            f"RabbitMQ refused the publish to exchange {exchange!r}: {code} "
                            f"{text}; declare the exchange or grant the user write access to it",
                            reply_code=code,
                            exchange=exchange,
                        ),
                    )
                else:
                    fail_quietly(fut, ChannelClosedRetry(retry))
            log.warning(
                "RabbitMQ closed channel %d: %d %s%s; %d unconfirmed publish(es) refused, %d to "
                "send again",
                self.number, code, text, suffix, refused, len(pending) - refused,
            )  # fmt: skip
        self._terminate(err, err)

    # ------------------------------------------------------------------ closing

    async def close(self) -> None:
        """``channel.close``: pending RPCs and confirms fail, then wait for close-ok."""
        if self.closed.done():
            return
        if self._closing or not self._conn.is_open:
            await asyncio.shield(self.closed)
            return
        self._emit_acks()  # acks batched in this iteration go out before the close
        self._closing = True
        self._consumers.clear()
        err = NotConnected(f"channel {self.number} was closed by the client")
        self._fail_pending(err)
        self._conn._write_method(self.number, spec.Channel.Close(200, "Normal shutdown", 0, 0))
        await asyncio.shield(self.closed)

    def _fail_pending(self, err: BaseException) -> None:
        rpcs, self._rpcs = self._rpcs, deque()
        for rpc in rpcs:
            fail_quietly(rpc.future, clone_error(err))
        pending, self._pending = self._pending, {}
        self._mandatory = {}
        for fut in pending.values():
            fail_quietly(fut, clone_error(err))
        self._low = self._next_tag
        self._exchange_runs = []
        self._last_exchange = None

    def _terminate(self, reason: BaseException | None, pending_error: BaseException) -> None:
        """The channel is gone (broker close, close-ok, or connection loss)."""
        if self.closed.done():
            return
        self.is_open = False
        self._closing = True
        self._close_reason = reason if reason is not None else pending_error
        self._consumers.clear()
        self._fail_pending(pending_error)
        self._conn._forget_channel(self)
        self.closed.set_result(reason)

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"<Channel {self.number} {state}{' confirms' if self._confirm else ''}>"
