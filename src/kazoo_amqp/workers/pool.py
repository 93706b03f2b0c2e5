"""The worker pool: spawns N worker processes, feeds them, supervises them.

Ownership: the pool owns the child processes, one socketpair each, and the supervision task.
Every delivery handed to ``dispatch`` stays in its worker's in-flight table until the worker
reports an outcome, so nothing accepted is lost when a worker dies or hangs:

* a worker that exits, or makes no progress for ``handler_timeout`` while it holds work, is
  killed and replaced at the same index (so ``consistent-worker`` keys keep their worker), and
  its in-flight deliveries are sent again to the new process in their original order;
* a delivery that was in flight in ``max_redeliveries`` + 1 dead workers is given up on
  (``on_done`` with ``GAVE_UP``) so one poison message cannot crash-loop the pool;
* when the total in flight passes the high-water mark, ``on_pressure(True)`` asks the manager to
  stop reading from the broker; below the low-water mark ``on_pressure(False)`` resumes it.

Writes to a worker are coalesced: deliveries dispatched in one event-loop iteration go out in
one ``send`` per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from kazoo_amqp.aio import WriteCoalescer
from kazoo_amqp.core import pipe
from kazoo_amqp.core.framing import FrameDecoder
from kazoo_amqp.core.hashing import pick_worker

log = logging.getLogger("kazoo_amqp.pool")

GAVE_UP = 100  # outcome code for deliveries abandoned after repeated worker deaths


class InFlight:
    """One delivery owned by the pool until its worker reports an outcome."""

    __slots__ = ("attempts", "frame", "token")

    def __init__(self, frame: bytes, token: Any) -> None:
        self.frame = frame
        self.token = token  # opaque to the pool: what the manager needs to ack
        self.attempts = 0


class _WorkerProtocol(asyncio.Protocol):
    def __init__(self, handle: WorkerHandle) -> None:
        self.handle = handle
        self.decoder = FrameDecoder()

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except Exception:
            log.exception("worker %d sent a malformed frame; replacing it", self.handle.index)
            self.handle.kill()
            return
        for frame in frames:
            self.handle.pool._outcomes(self.handle, pipe.decode_outcomes(frame))

    def connection_lost(self, exc: Exception | None) -> None:
        self.handle.connected = False


class WorkerHandle:
    """The manager's side of one worker process."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.transport: asyncio.Transport | None = None
        self.connected = False
        self.inflight: dict[int, InFlight] = {}
        # Deliveries written in one loop iteration leave in one write (set by WorkerPool.start).
        self.outbox: WriteCoalescer | None = None
        self.last_progress = time.monotonic()
        self.restarts = 0

    @property
    def alive(self) -> bool:
        return self.connected and self.proc is not None and self.proc.poll() is None

    def write(self, data: bytes) -> None:
        """The outbox's sink. Without a connection the bytes are dropped: every frame in the
        outbox is also in the in-flight table, which ``_spawn`` sends to the next process."""
        if self.connected and self.transport is not None:
            self.transport.write(data)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        if self.transport is not None:
            self.transport.abort()
        self.connected = False

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc else None
        return f"<worker {self.index} pid={pid} inflight={len(self.inflight)}>"


class WorkerPool:
    """N worker processes running event routes."""

    def __init__(
        self,
        *,
        size: int,
        config_path: str,
        on_done: Callable[[Any, int], None],
        on_pressure: Callable[[bool], None] = lambda paused: None,
        handler_timeout: float = 30.0,
        max_redeliveries: int = 2,
        high_water: int | None = None,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
    ) -> None:
        self.size = size
        self.config_path = config_path
        self.on_done = on_done
        self.on_pressure = on_pressure
        self.handler_timeout = handler_timeout
        self.max_redeliveries = max_redeliveries
        self.high_water = high_water or 2048 * size
        self.low_water = self.high_water // 2
        self.python = python
        self.env = env
        self.workers = [WorkerHandle(self, i) for i in range(size)]
        self.init_frame = pipe.encode_init([], {})
        self._seq = 0
        self._rr = 0
        self._inflight_total = 0
        self._paused = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._closing = False
        self.counters: dict[str, int] = {
            "dispatched": 0,
            "done": 0,
            "handler_error": 0,
            "bad_message": 0,
            "no_route": 0,
            "redelivered": 0,
            "gave_up": 0,
            "worker_restarts": 0,
            "hung_workers": 0,
        }

    # -- lifecycle ----------------------------------------------------------------------
    async def start(
        self, bindings: list[tuple[str | None, str | None]], zones: dict[int, str]
    ) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self.init_frame = pipe.encode_init(bindings, zones)
        for handle in self.workers:
            handle.outbox = WriteCoalescer(loop, handle.write)
        for handle in self.workers:
            await self._spawn(handle)
        self._monitor = self._loop.create_task(self._supervise(), name="worker-pool-monitor")

    async def _spawn(self, handle: WorkerHandle) -> None:
        assert self._loop is not None
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for s in (parent, child):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        try:
            handle.proc = subprocess.Popen(
                [
                    self.python,
                    "-m",
                    "kazoo_amqp.worker_main",
                    "--config",
                    self.config_path,
                    "--fd",
                    str(child.fileno()),
                    "--index",
                    str(handle.index),
                ],
                pass_fds=(child.fileno(),),
                env=self.env,
                start_new_session=True,
            )
        finally:
            child.close()
        parent.setblocking(False)
        transport, _ = await self._loop.create_connection(
            lambda: _WorkerProtocol(handle), sock=parent
        )
        handle.transport = transport  # type: ignore[assignment]
        handle.connected = True
        handle.last_progress = time.monotonic()
        # Every frame in the outbox is also in flight: send the in-flight table, in order.
        backlog = [f.frame for _, f in sorted(handle.inflight.items())]
        if handle.outbox is not None:
            handle.outbox.clear()
        transport.write(self.init_frame + b"".join(backlog))
        log.info("worker %d started (pid %d)", handle.index, handle.proc.pid)

    async def stop(self, grace: float) -> list[Any]:
        """Let workers finish what they hold, up to ``grace`` s; return tokens never finished."""
        self._closing = True
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        self._flush()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(h.inflight and h.alive for h in self.workers):
            await asyncio.sleep(0.02)
        for handle in self.workers:
            if handle.transport is not None and handle.connected:
                handle.transport.write(pipe.encode_stop())
        while time.monotonic() < deadline + 1.0 and any(
            h.proc is not None and h.proc.poll() is None for h in self.workers
        ):
            await asyncio.sleep(0.02)
        leftovers: list[Any] = []
        for handle in self.workers:
            if handle.proc is not None and handle.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    handle.proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(asyncio.to_thread(handle.proc.wait), 2.0)
                except TimeoutError:
                    handle.proc.kill()
            if handle.transport is not None:
                handle.transport.close()
            leftovers.extend(f.token for _, f in sorted(handle.inflight.items()))
            handle.inflight.clear()
        self._inflight_total = 0
        return leftovers

    # -- dispatch ---------------------------------------------------------------------
    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def pick(self, key: bytes | None = None) -> int:
        """Worker index: ``core_hash`` of ``key`` when given, else round-robin over live ones."""
        if key is not None:
            return pick_worker(key, self.size)
        for _ in range(self.size):
            self._rr = (self._rr + 1) % self.size
            if self.workers[self._rr].connected:
                return self._rr
        return self._rr

    def dispatch(self, index: int, seq: int, frame: bytes, token: Any) -> None:
        """Hand one encoded frame (``pipe.encode_delivery``/``encode_event``) to a worker."""
        handle = self.workers[index]
        if not handle.inflight:
            handle.last_progress = time.monotonic()
        handle.inflight[seq] = InFlight(frame, token)
        assert handle.outbox is not None, "WorkerPool.dispatch() before start()"
        handle.outbox.write(frame)
        self.counters["dispatched"] += 1
        self._inflight_total += 1
        if not self._paused and self._inflight_total >= self.high_water:
            self._paused = True
            self.on_pressure(True)

    def _flush(self) -> None:
        for handle in self.workers:
            if handle.outbox is not None:
                handle.outbox.flush()

    def _outcomes(self, handle: WorkerHandle, outcomes: list[tuple[int, int]]) -> None:
        handle.last_progress = time.monotonic()
        counters = self.counters
        names = ("done", "handler_error", "bad_message", "no_route")
        for seq, code in outcomes:
            item = handle.inflight.pop(seq, None)
            if item is None:
                continue
            self._inflight_total -= 1
            counters[names[code] if code < 4 else "done"] += 1
            try:
                self.on_done(item.token, code)
            except Exception:
                log.exception("acknowledging a delivery failed")
        if self._paused and self._inflight_total <= self.low_water:
            self._paused = False
            self.on_pressure(False)

    @property
    def inflight(self) -> int:
        return self._inflight_total

    # -- supervision --------------------------------------------------------------------
    async def _supervise(self) -> None:
        while not self._closing:
            await asyncio.sleep(0.2)
            now = time.monotonic()
            for handle in self.workers:
                dead = handle.proc is None or handle.proc.poll() is not None or not handle.connected
                hung = (
                    not dead
                    and handle.inflight
                    and now - handle.last_progress > self.handler_timeout
                )
                if hung:
                    self.counters["hung_workers"] += 1
                    log.error(
                        "worker %d made no progress for %.1f s with %d deliveries in flight: "
                        "killing and replacing it (handler_timeout_ms)",
                        handle.index,
                        now - handle.last_progress,
                        len(handle.inflight),
                    )
                if dead or hung:
                    await self._replace(handle)

    async def _replace(self, handle: WorkerHandle) -> None:
        code = handle.proc.returncode if handle.proc is not None else None
        handle.kill()
        if handle.proc is not None:
            with contextlib.suppress(Exception):
                handle.proc.wait(timeout=1.0)
        if self._closing:
            return
        self.counters["worker_restarts"] += 1
        handle.restarts += 1
        log.error(
            "worker %d (exit %s) died with %d deliveries in flight; restarting it and sending "
            "them again",
            handle.index,
            handle.proc.returncode if handle.proc else code,
            len(handle.inflight),
        )
        if handle.inflight:
            # A worker runs its deliveries in order, so only the oldest unfinished one can have
            # been running when it died; the others are innocent and just go to the new process.
            seq = min(handle.inflight)
            item = handle.inflight[seq]
            item.attempts += 1
            if item.attempts > self.max_redeliveries:
                del handle.inflight[seq]
                self._inflight_total -= 1
                self.counters["gave_up"] += 1
                log.error(
                    "delivery %d was running in %d workers that died or hung: giving up on it "
                    "(max_redeliveries = %d)",
                    seq,
                    item.attempts,
                    self.max_redeliveries,
                )
                self.on_done(item.token, GAVE_UP)
            self.counters["redelivered"] += len(handle.inflight)
        if handle.outbox is not None:
            handle.outbox.clear()  # everything in the outbox is also in inflight
        if handle.restarts > 1:
            await asyncio.sleep(min(0.1 * handle.restarts, 2.0))
        await self._spawn(handle)

    def status(self) -> dict[str, Any]:
        return {
            "workers": [
                {
                    "index": h.index,
                    "pid": h.proc.pid if h.proc else None,
                    "alive": h.alive,
                    "inflight": len(h.inflight),
                    "restarts": h.restarts,
                }
                for h in self.workers
            ],
            "inflight": self._inflight_total,
            "paused": self._paused,
            **self.counters,
        }

    def __repr__(self) -> str:
        return f"<WorkerPool {self.size} workers, {self._inflight_total} in flight>"


def default_env() -> dict[str, str]:
    """The environment for workers: ours, with the package importable."""
    env = dict(os.environ)
    src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
