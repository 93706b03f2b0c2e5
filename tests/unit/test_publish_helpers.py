"""Small pieces of the publish hot path: Msg-ID generation and callback confirms."""

from __future__ import annotations

import re
import uuid

from kazoo_amqp.amqp.channel import ConfirmCallback
from kazoo_amqp.amqp.publisher import MsgIds as _MsgIds
from kazoo_amqp.errors import PublishFailed

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_generated_msg_ids_are_lowercase_random_uuid4_text_like_the_c_module() -> None:
    """Msg-IDs are 36-char lowercase UUID v4 text (RFC 4122 variant), all distinct."""
    ids = _MsgIds()
    seen = {ids.next() for _ in range(10000)}  # crosses several 4 KiB random draws
    assert len(seen) == 10000
    for text in list(seen)[:500]:
        assert UUID4.match(text), text
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_confirm_callback_reports_success_once() -> None:
    """An ack calls back with None, once; later outcomes are ignored."""
    got: list[BaseException | None] = []
    confirm = ConfirmCallback(got.append)
    assert not confirm.done()
    confirm.set_result(None)
    confirm.set_exception(PublishFailed("late"))
    assert confirm.done() and got == [None]


def test_confirm_callback_reports_the_failure() -> None:
    """A nack, a return or a lost connection calls back with the error."""
    got: list[BaseException | None] = []
    confirm = ConfirmCallback(got.append)
    error = PublishFailed("nacked")
    confirm.set_exception(error)
    assert got == [error]


def test_confirm_callback_that_raises_is_contained() -> None:
    """A raising callback is logged, never propagated into the connection's data handling."""

    def boom(_: BaseException | None) -> None:
        raise RuntimeError("callback bug")

    confirm = ConfirmCallback(boom)
    confirm.set_result(None)  # must not raise
    assert confirm.done()
