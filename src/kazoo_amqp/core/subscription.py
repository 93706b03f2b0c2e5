"""``kazoo_subscribe`` descriptions -> AMQP declarations (spec §3.4, §6.4, test vectors §15.11).

A subscription is recorded in ``kazoo:mod-init`` and replayed by every consume connection after
each (re)connect, in the order of §6.4: declare the exchange, declare each exchange-binding's
source exchange and bind it, declare the queue, bind it for every routing key, consume.

Fields are read the way the C module reads them, with json-c's lenient conversions:

* integer fields: ``true`` -> 1, ``false`` -> 0, ``"12x"`` -> 12, ``1.9`` -> 1, anything else
  that is not a number -> 0; ``null`` or a missing field keeps the default;
* string fields: numbers become their text, ``true``/``false`` their name, objects and arrays
  their spaced JSON; ``null`` or a missing field gives ``""``.

Declaration flags come from the ``exchange-def`` / ``queue-def`` objects when they exist,
otherwise from the root, so root ``durable``, ``auto_delete`` and ``passive`` apply to both the
exchange and the queue. Unknown keys (``name`` in the 2600hz configs) are ignored.

Deliberate differences from C (``docs/compat-config.md``):

* every ``exchange-bindings`` entry is kept (C keeps only the first usable one);
* a JSON ``null`` inside a ``routing`` array is skipped (C crashes);
* acknowledgement modes (:class:`AckMode`): ``no_ack: 0`` acks after the event route returned,
  unless ``wait_for_consumer_ack`` is explicitly 0 (then on receipt, as C does);
* a description with neither an exchange nor a queue, a ``exchange-def`` / ``queue-def`` /
  ``exchange-bindings`` that is not an object, and names or routing keys over 255 bytes are
  rejected with :class:`~kazoo_amqp.errors.UsageError` instead of failing at connect time;
* ``"queue-args"`` / ``"exchange-args"`` (objects) are passed as the ``arguments`` table of
  ``queue.declare`` / ``exchange.declare`` (quorum queues, dead-letter exchanges, …); C sends none.
  A quorum or stream queue (``"x-queue-type"``) must be durable, not exclusive and not
  auto-delete, as RabbitMQ requires: other flags are a :class:`~kazoo_amqp.errors.UsageError`
  naming the fix here, instead of a 406 from every broker at every connect.

This module is pure.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from kazoo_amqp.core.jsonc import get_int as _get_int
from kazoo_amqp.core.jsonc import get_str as _get_str
from kazoo_amqp.core.jsonc import loads as _jsonc_loads
from kazoo_amqp.errors import BadPayload, BadRoutingKey, UsageError

__all__ = [
    "AckMode",
    "ExchangeBinding",
    "ExchangeDecl",
    "QueueDecl",
    "Subscription",
    "parse_subscription",
    "subscription_from_args",
]

#: AMQP short strings (exchange and queue names, routing keys) hold at most 255 bytes.
MAX_NAME_BYTES = 255
#: ``basic.qos`` prefetch_count is an unsigned short.
MAX_PREFETCH = 65535


@dataclass(frozen=True, slots=True)
class ExchangeDecl:
    """Arguments of ``exchange.declare``; ``arguments`` from ``"exchange-args"`` (none in C)."""

    name: str
    type: str
    passive: bool = False
    durable: bool = False
    auto_delete: bool = False
    internal: bool = False
    arguments: Mapping[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, slots=True)
class QueueDecl:
    """Arguments of ``queue.declare``; an empty name lets the broker generate one.

    ``arguments`` come from ``"queue-args"`` (e.g. ``{"x-queue-type": "quorum"}``; none in C).
    """

    name: str
    passive: bool = False
    durable: bool = False
    exclusive: bool = False
    auto_delete: bool = True
    arguments: Mapping[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, slots=True)
class ExchangeBinding:
    """Declare ``source``, then bind the subscription's exchange to it once per routing key.

    The bind is ``exchange.bind(destination=<subscription's exchange>, source=source.name, key)``.
    """

    source: ExchangeDecl
    routing_keys: tuple[str, ...]


class AckMode(enum.Enum):
    """When a delivery of a subscription is acknowledged."""

    BROKER = "broker"  # no_ack=1, broker auto-ack
    ON_RECEIPT = "on_receipt"  # no_ack=0, ack as soon as received (C behaviour)
    AFTER_HANDLER = "after_handler"  # ack after the event route returned


@dataclass(frozen=True, slots=True)
class Subscription:
    """One ``kazoo_subscribe`` call, ready to be declared on every applicable connection.

    ``event_key`` / ``event_subkey`` of ``None`` mean "use ``amqp_consumer_event_key`` /
    ``_subkey``". ``federate`` also declares the subscription on brokers of non-primary zones.
    ``consistent_worker`` picks the worker by hashing the top-level field
    ``consistent_worker_key`` (or the routing key when the field is missing). ``prefetch`` of
    ``None`` means the config's ``prefetch``. ``warnings`` are for the log: things in the
    description that were accepted but have no effect.
    """

    exchange: ExchangeDecl
    queue: QueueDecl
    routing_keys: tuple[str, ...]
    exchange_bindings: tuple[ExchangeBinding, ...] = ()
    event_key: str | None = None
    event_subkey: str | None = None
    ack_mode: AckMode = AckMode.BROKER
    federate: bool = False
    consistent_worker: bool = False
    consistent_worker_key: str | None = None
    prefetch: int | None = None
    warnings: tuple[str, ...] = ()


def parse_subscription(desc: Mapping[str, Any] | str) -> Subscription:
    """Build a :class:`Subscription` from the JSON form of ``kazoo_subscribe``.

    Args:
        desc: the description as a mapping, or as JSON text, parsed with json-c's leniency
            (``core.jsonc``: single quotes, comments, trailing commas, …).

    Raises:
        UsageError: the text is not JSON, not an object, or describes something that cannot be
            declared (see the module docstring); :class:`~kazoo_amqp.errors.BadRoutingKey` for a
            routing key over 255 bytes.
    """
    root = _load(desc) if isinstance(desc, str) else desc
    if not isinstance(root, Mapping):
        raise UsageError(
            f"kazoo_subscribe: the description must be a JSON object, got {_kind(root)}"
        )
    _check_text(root, "description", 0)
    warnings: list[str] = []

    exchange_src = _def_object(root, "exchange-def")
    queue_src = _def_object(root, "queue-def")
    exchange = _exchange_decl(
        _get_str(root.get("exchange")), exchange_src, _arguments(root, "exchange-args")
    )
    queue = QueueDecl(
        name=_get_str(root.get("queue")),
        passive=_get_flag(queue_src, "passive", False),
        durable=_get_flag(queue_src, "durable", False),
        exclusive=_get_flag(queue_src, "exclusive", False),
        auto_delete=_get_flag(queue_src, "auto_delete", True),
        arguments=_arguments(root, "queue-args"),
    )
    routing_keys = _routing_keys(root.get("routing"))
    bindings = _exchange_bindings(root.get("exchange-bindings"), warnings)
    ack_mode = _ack_mode(root, warnings)
    subscription = Subscription(
        exchange=exchange,
        queue=queue,
        routing_keys=routing_keys,
        exchange_bindings=bindings,
        event_key=_get_str(root.get("event_key")) or None,
        event_subkey=_get_str(root.get("event_subkey")) or None,
        ack_mode=ack_mode,
        federate=_get_flag(root, "federate", False),
        consistent_worker=_get_flag(root, "consistent-worker", False),
        consistent_worker_key=_get_str(root.get("consistent-worker-key")) or None,
        prefetch=_prefetch(root.get("prefetch")),
        warnings=tuple(warnings),
    )
    _validate(subscription)
    return subscription


def subscription_from_args(
    exchange: str, exchange_type: str, queue: str, routing_key: str
) -> Subscription:
    """Build the :class:`Subscription` of the 4-argument ``kazoo_subscribe`` form.

    The exchange is declared with every flag off, the queue with ``auto_delete`` only, one
    routing key, broker auto-ack, not federated, no event-key overrides, round-robin workers.

    Raises:
        UsageError: an argument is not a string, or both exchange and queue are empty.
    """
    args = {
        "exchange": exchange,
        "exchange_type": exchange_type,
        "queue": queue,
        "routing_key": routing_key,
    }
    for name, value in args.items():
        if not isinstance(value, str):
            raise UsageError(f"kazoo_subscribe: {name} must be a string, got {_kind(value)}")
    subscription = Subscription(
        exchange=ExchangeDecl(name=exchange, type=exchange_type),
        queue=QueueDecl(name=queue),
        routing_keys=(routing_key,),
    )
    _validate(subscription)
    return subscription


# --------------------------------------------------------------------------------------------
# Pieces of the JSON form


def _load(text: str) -> object:
    try:
        return _jsonc_loads(text)
    except BadPayload as exc:
        raise UsageError(f"kazoo_subscribe: the description is not valid JSON ({exc})") from None


def _def_object(root: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = root.get(key)
    if value is None:
        return root
    if not isinstance(value, Mapping):
        raise UsageError(f"kazoo_subscribe: {key!r} must be an object, got {_kind(value)}")
    return value


def _exchange_decl(
    name: str, src: Mapping[str, Any], arguments: Mapping[str, Any] | None = None
) -> ExchangeDecl:
    return ExchangeDecl(
        arguments=arguments or {},
        name=name,
        type=_get_str(src.get("type")),
        passive=_get_flag(src, "passive", False),
        durable=_get_flag(src, "durable", False),
        auto_delete=_get_flag(src, "auto_delete", False),
        internal=_get_flag(src, "internal", False),
    )


#: AMQP field-table values a declare argument may hold (nested tables and arrays of them too).
_ARG_SCALARS = (str, bool, int, float)


def _arguments(root: Mapping[str, Any], key: str) -> dict[str, Any]:
    """``"queue-args"`` / ``"exchange-args"``: an object of x-arguments passed to the declare."""
    value = root.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise UsageError(
            f"kazoo_subscribe: {key!r} must be an object of declare arguments "
            f'(e.g. {{"x-queue-type": "quorum"}}), got {_kind(value)}'
        )
    for name, item in value.items():
        if not isinstance(name, str) or not name:
            raise UsageError(f"kazoo_subscribe: {key!r} has an empty or non-string name")
        if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise UsageError(f"kazoo_subscribe: {key!r} name {name[:40]!r}… is over 255 bytes")
        if not _is_table_value(item):
            raise UsageError(
                f"kazoo_subscribe: {key!r} value of {name!r} must be a string, number, boolean, "
                f"object or array, got {_kind(item)}"
            )
    return dict(value)


#: Nesting a description may have (objects and arrays); deeper is refused, not recursed into.
_MAX_DEPTH = 32


def _check_text(value: object, where: str, depth: int) -> None:
    """Every string (and key) must be sendable as UTF-8: a lone surrogate would otherwise fail
    deep in the AMQP layer, at every connect. Raises UsageError naming the field."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise UsageError(
                f"kazoo_subscribe: {where} {value[:40]!r} is not valid Unicode (a lone surrogate "
                f"at position {exc.start}); it cannot be declared on the broker: fix the text"
            ) from None
        return
    if depth >= _MAX_DEPTH and (isinstance(value, Mapping) or _is_array(value)):
        raise UsageError(f"kazoo_subscribe: {where} is nested over {_MAX_DEPTH} levels deep")
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_text(key, f"key in {where}", depth + 1)
            _check_text(item, repr(key) if depth == 0 else f"{where}.{key}", depth + 1)
    elif _is_array(value):
        for index, item in enumerate(value):
            _check_text(item, f"{where}[{index}]", depth + 1)


def _is_table_value(value: object) -> bool:
    if isinstance(value, _ARG_SCALARS):
        return True
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_table_value(v) for k, v in value.items())
    if _is_array(value):
        return all(_is_table_value(v) for v in value)
    return False


def _routing_keys(value: object) -> tuple[str, ...]:
    """A string -> one key; an array -> its items (nulls skipped); anything else -> ``("",)``."""
    if isinstance(value, str):
        return (value,)
    if _is_array(value):
        return tuple(_get_str(item) for item in value if item is not None)
    return ("",)


def _exchange_bindings(value: object, warnings: list[str]) -> tuple[ExchangeBinding, ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise UsageError(
            "kazoo_subscribe: 'exchange-bindings' must be an object "
            '{"<source exchange>": {"type": …, "routing": …}}, '
            f"got {_kind(value)}"
        )
    bindings: list[ExchangeBinding] = []
    for source, entry in value.items():
        if not isinstance(entry, Mapping) or entry.get("routing") is None:
            warnings.append(f"exchange-bindings entry {source!r} has no 'routing'; it is ignored")
            continue
        bindings.append(
            ExchangeBinding(
                source=_exchange_decl(str(source), entry),
                routing_keys=_routing_keys(entry["routing"]),
            )
        )
    return tuple(bindings)


def _ack_mode(root: Mapping[str, Any], warnings: list[str]) -> AckMode:
    no_ack_given = root.get("no_ack") is not None
    wait_given = root.get("wait_for_consumer_ack") is not None
    no_ack = _get_int(root.get("no_ack"), 1) != 0
    wait = _get_int(root.get("wait_for_consumer_ack"), 1) != 0
    if not no_ack_given:
        return AckMode.AFTER_HANDLER if wait_given and wait else AckMode.BROKER
    if no_ack:
        if wait_given and wait:
            warnings.append("wait_for_consumer_ack ignored because no_ack=1")
        return AckMode.BROKER
    return AckMode.AFTER_HANDLER if wait else AckMode.ON_RECEIPT


def _prefetch(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_PREFETCH:
        raise UsageError(
            f"kazoo_subscribe: 'prefetch' must be an integer from 1 to {MAX_PREFETCH} "
            f"(unacknowledged deliveries per consumer), got {value!r}"
        )
    return value


#: queue types RabbitMQ replicates; it refuses them unless durable, not exclusive, not auto-delete
_REPLICATED_QUEUE_TYPES = frozenset({"quorum", "stream"})


def _validate_queue_type(queue: QueueDecl) -> None:
    kind = queue.arguments.get("x-queue-type")
    if kind not in _REPLICATED_QUEUE_TYPES:
        return
    wrong = [
        flag
        for flag, bad in (
            ("durable must be 1", not queue.durable),
            ("exclusive must be 0", queue.exclusive),
            ("auto_delete must be 0", queue.auto_delete),
        )
        if bad
    ]
    if wrong and not queue.passive:
        raise UsageError(
            f"kazoo_subscribe: queue {queue.name!r} is a {kind} queue, which RabbitMQ only "
            f"declares durable, not exclusive and not auto-delete ({', '.join(wrong)}): add "
            '"durable": 1, "auto_delete": 0 (and no "exclusive") to the description or its '
            '"queue-def"'
        )


def _validate(subscription: Subscription) -> None:
    _validate_queue_type(subscription.queue)
    if not subscription.exchange.name and not subscription.queue.name:
        raise UsageError(
            "kazoo_subscribe: subscription needs an exchange or a queue "
            '(e.g. {"exchange": "presence", "type": "topic", "queue": "…", "routing": "…"})'
        )
    names = [("exchange", subscription.exchange.name), ("queue", subscription.queue.name)]
    names += [("exchange-bindings source", b.source.name) for b in subscription.exchange_bindings]
    for what, name in names:
        if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise UsageError(
                f"kazoo_subscribe: {what} name {name[:40]!r}… is over {MAX_NAME_BYTES} bytes"
            )
    keys = list(subscription.routing_keys)
    for binding in subscription.exchange_bindings:
        keys.extend(binding.routing_keys)
    for key in keys:
        if len(key.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise BadRoutingKey(
                f"kazoo_subscribe: routing key {key[:40]!r}… is over {MAX_NAME_BYTES} bytes"
            )


# --------------------------------------------------------------------------------------------
# Helpers


def _get_flag(src: Mapping[str, Any], key: str, default: bool) -> bool:
    return _get_int(src.get(key), int(default)) != 0


def _is_array(value: object) -> TypeGuard[Sequence[object]]:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if _is_array(value):
        return "an array"
    return type(value).__name__
