"""A Manager wired to a FakeNet, with recorders for events, failures and dispatched frames."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from kazoo_amqp.amqp.manager import Manager
from kazoo_amqp.amqp.publisher import Outgoing
from kazoo_amqp.core.broker_url import BrokerSpec
from kazoo_amqp.core.config import Settings, settings_from_mapping
from kazoo_amqp.core.subscription import Subscription
from tests.unit.amqp.fake_broker import FakeNet

HOST = "kz.test"


def make_settings(urls: list[str], **extra: Any) -> Settings:
    data = {
        "node_hostname": HOST,
        "amqp_connection": urls,
        "reconnect_min_ms": 10,
        "reconnect_max_ms": 50,
        **extra,
    }
    return settings_from_mapping(data, base_dir="/tmp", default_app_version="test")


class RecordingDispatcher:
    """A Dispatcher that records frames and tokens (the worker pool's role)."""

    def __init__(self) -> None:
        self.seq = 0
        self.frames: list[tuple[int, int, bytes, Any]] = []
        self.on_done: Callable[[Any, int], None] = lambda token, outcome: None

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def pick(self, key: bytes | None = None) -> int:
        return 0

    def dispatch(self, index: int, seq: int, frame: bytes, token: Any) -> None:
        self.frames.append((index, seq, frame, token))


class Rig:
    """Manager + FakeNet + recorders."""

    def __init__(
        self,
        *names: str,
        subscriptions: list[Subscription] | None = None,
        **config: Any,
    ) -> None:
        self.net = FakeNet(*names)
        self.settings = make_settings(self.net.urls(), **config)
        self.dispatcher = RecordingDispatcher()
        self.events: list[tuple[str, int]] = []
        self.failed: list[tuple[Outgoing, BaseException]] = []
        self.manager = Manager(
            self.settings,
            subscriptions=subscriptions or [],
            dispatcher=self.dispatcher,
            on_event=self._event,
            on_failed=lambda m, e: self.failed.append((m, e)),
            connect=self.net.connect,  # type: ignore[arg-type]
        )

    def _event(self, state: str, spec: BrokerSpec) -> None:
        self.events.append((state, spec.server_id))

    async def __aenter__(self) -> Rig:
        await self.manager.start()
        assert await self.manager.wait_connected(2.0)
        await until(lambda: all(link.up for link in self.manager.links))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.manager.stop()


class Outcomes:
    """``done`` callbacks that record (msg_id, result, error)."""

    def __init__(self) -> None:
        self.results: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, BaseException] = {}
        self.calls = 0

    def done_for(self, key: str) -> Callable[[dict[str, Any] | None, BaseException | None], None]:
        def done(result: dict[str, Any] | None, exc: BaseException | None) -> None:
            self.calls += 1
            assert key not in self.results and key not in self.errors, f"{key} reported twice"
            if exc is None:
                assert result is not None
                self.results[key] = result
            else:
                self.errors[key] = exc

        return done

    @property
    def settled(self) -> int:
        return len(self.results) + len(self.errors)


async def until(check: Callable[[], bool], timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


def msg_ids(published: list[Any]) -> list[str]:
    return [json.loads(p.body)["Msg-ID"] for p in published]
